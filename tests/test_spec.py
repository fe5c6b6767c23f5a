import json

import pytest
from pydantic import ValidationError

from dragsdk.errors import SpecError
from dragsdk.spec import DragSpec, GuidanceSchedule
from dragsdk.specfile import spec_from_json


def test_drag_spec_json_round_trip_preserves_everything():
    spec = DragSpec(
        points=[((10, 20), (30, 40)), ((1.5, 2), (3, 4))],
        prompt="a cat",
        sampler={"steps": 20, "seed": 7},
        weights={"edit": 3},
    )
    again = spec_from_json(spec.model_dump_json(), {"drag": DragSpec})
    assert again == spec
    assert again.points[1].handle == (1.5, 2.0)
    assert again.sampler.steps == 20 and again.weights.edit == 3 and again.weights.content == 6


def test_defaults_are_the_published_ones():
    spec = DragSpec(points=[((0, 0), (1, 1))])
    s = spec.sampler
    assert (s.steps, s.guidance_scale, s.seed, s.resolution) == (50, 4.0, 42, 768)
    assert (spec.weights.edit, spec.weights.content, spec.weights.contrast) == (4, 6, 0.2)
    assert spec.energy_scale == 2.0 and spec.guidance_step == 0.04 and spec.patch_radius == 1
    # DragonDiffusion guided steps at 50: 0..9 then even steps to 28 -> 20 steps.
    steps = GuidanceSchedule().steps(50)
    assert steps == list(range(10)) + list(range(10, 30, 2)) and len(steps) == 20
    assert round(s.kv_start * 50) == 5


def test_json_schema_exports_fields_with_descriptions():
    schema = DragSpec.model_json_schema()
    assert {"points", "mask", "prompt", "sampler", "weights"} <= set(schema["properties"])
    assert schema["properties"]["mask"]["description"]
    json.dumps(schema)


def test_mask_array_is_embedded_as_png_data_url():
    import numpy as np

    from dragsdk.io import load_mask

    m = np.zeros((12, 16), np.uint8)
    m[2:5, 3:9] = 1
    spec = DragSpec(points=[((0, 0), (1, 1))], mask=m)
    assert spec.mask.startswith("data:image/png;base64,")
    assert (load_mask(spec.mask) == m.astype(bool)).all()


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"mode": "drag", "points": []}, "points"),
        ({"mode": "drag", "points": [[[0, 0], [1, 1]]], "sampler": {"steps": 0}}, "sampler.steps"),
        ({"mode": "drag", "points": [[[0, 0], [1, 1]]], "patch_radius": -1}, "patch_radius"),
        ({"mode": "drag", "points": [[[0, 0], [1, 1]]], "bogus": 1}, "bogus"),
    ],
)
def test_invalid_fields_are_refused_naming_the_field(payload, field):
    with pytest.raises(ValidationError) as e:
        spec_from_json(payload, {"drag": DragSpec})
    locs = [".".join(map(str, err["loc"])) for err in e.value.errors()]
    assert any(loc.startswith(field) for loc in locs), locs


def test_unknown_or_missing_mode_is_refused():
    with pytest.raises(SpecError, match="mode: unknown mode 'warp'"):
        spec_from_json({"mode": "warp"}, {"drag": DragSpec})
    with pytest.raises(SpecError, match="mode: missing"):
        spec_from_json({}, {"drag": DragSpec})


# -- --set FIELD=VALUE (dragsdk.specfile.apply_overrides) ---------------------------------------------------------
def test_set_assignments_parse_json_values_follow_dotted_paths_and_leave_the_input_alone():
    from dragsdk.specfile import apply_overrides

    spec = {"mode": "dragdiffusion", "sampler": {"steps": 3}, "prompt": "a car"}
    out = apply_overrides(
        spec,
        [
            "lora_steps=0",
            "sampler.eta=0.5",
            "prompt=a red car",
            "mask=null",
            'profile=["model-size"]',
            "x.y.z=true",
        ],
    )
    assert out == {
        "mode": "dragdiffusion",
        "sampler": {"steps": 3, "eta": 0.5},
        "prompt": "a red car",  # not JSON: the text as written
        "lora_steps": 0,
        "mask": None,
        "profile": ["model-size"],
        "x": {"y": {"z": True}},
    }
    assert spec == {"mode": "dragdiffusion", "sampler": {"steps": 3}, "prompt": "a car"}
    assert apply_overrides(spec, ['prompt="12"', "prompt=12"])["prompt"] == 12  # in order: the last wins
    for bad, says in [
        ("lora_steps", "expected FIELD=VALUE"),
        ("=1", "expected FIELD=VALUE"),
        ("a..b=1", "expected FIELD=VALUE"),
        ("prompt.x=1", "prompt is not an object"),
    ]:
        with pytest.raises(SpecError) as err:
            apply_overrides(spec, [bad])
        assert err.value.field == "--set" and says in str(err.value)
