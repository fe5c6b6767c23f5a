"""Numbers (issue 12, item 4): every float of every spec is finite and bounded, JSON NaN / Infinity and boolean
coordinates are refused, the seed fits torch, and a latent that goes non-finite stops the edit naming the step —
in the Python API, the CLI and `dragsdk bench` — with nothing written."""

from __future__ import annotations

import json
import math
import typing

import pytest
import torch
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

import dragsdk.sampler
from dragsdk import Editor, NonFiniteError
from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.registry import get_registry
from dragsdk.spec import (
    MAX_DENSE_POINTS,
    MAX_POINT_PAIRS,
    MAX_REGION_PAIRS,
    SEED_MAX,
    DragSpec,
    SamplerSettings,
    spec_from_json,
)

from .conftest import EXAMPLE_SAMPLE

DRAG = {"mode": "drag", "points": [[[131, 264], [200, 313]]], "sampler": {"steps": 4, "resolution": 128}}


def _models(cls: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """``cls`` and every pydantic model reachable through its fields' annotations."""
    seen.setdefault(cls.__name__, cls)

    def walk(t: object) -> None:
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t.__name__ not in seen:
                _models(t, seen)
            return
        for arg in typing.get_args(t):
            walk(arg)

    for f in cls.model_fields.values():
        walk(f.annotation)
    return seen


def _with_number(schema: dict, value: float) -> object | None:
    """A value for a property schema with ``value`` at its first number position (None: no number in it)."""
    if schema.get("type") == "number":
        return value
    for sub in schema.get("anyOf", []):
        if (v := _with_number(sub, value)) is not None:
            return v
    if "prefixItems" in schema:
        first = _with_number(schema["prefixItems"][0], value)
        return None if first is None else [first] + [0.0] * (len(schema["prefixItems"]) - 1)
    if isinstance(schema.get("items"), dict) and (v := _with_number(schema["items"], value)) is not None:
        return [v] * max(1, schema.get("minItems", 1))
    return None


def _float_fields():
    models: dict[str, type[BaseModel]] = {}
    for spec_model in get_registry().spec_models().values():
        _models(spec_model, models)
    for name, cls in sorted(models.items()):
        for field, prop in cls.model_json_schema()["properties"].items():
            if _with_number(prop, 0.0) is not None:
                yield pytest.param(cls, field, prop, id=f"{name}.{field}")


FLOAT_FIELDS = list(_float_fields())


def test_the_walk_finds_the_fields_of_the_issue():
    ids = {p.id for p in FLOAT_FIELDS}
    assert {
        "DragSpec.energy_scale",
        "DragSpec.guidance_step",
        "DragWeights.edit",
        "PointPair.handle",
        "MoveSpec.dx",
        "RegionDragSpec.dense_points",
        "SamplerSettings.guidance_scale",
    } <= ids
    assert len(ids) > 40


@pytest.mark.parametrize("cls, field, prop", FLOAT_FIELDS)
def test_every_float_field_refuses_nan_and_infinities_and_has_a_documented_upper_bound(cls, field, prop):
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError) as e:
            cls.model_validate({field: _with_number(prop, bad)})
        assert any(err["loc"][0] == field and err["type"] == "finite_number" for err in e.value.errors()), (
            field,
            bad,
            e.value.errors(),
        )
    text = json.dumps(prop)
    assert '"maximum"' in text or '"exclusiveMaximum"' in text, f"{cls.__name__}.{field} has no upper bound"
    assert prop.get("description", "").endswith("]"), "the range is stated in the description"


@pytest.mark.parametrize(
    "field, value",
    [("energy_scale", 1e308), ("guidance_step", 1e308), ("energy_scale", 101.0), ("guidance_step", 1.5)],
)
def test_huge_finite_values_of_the_issue_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        DragSpec.model_validate({**DRAG, field: value})
    with pytest.raises(ValidationError, match=r"weights\.edit"):
        DragSpec.model_validate({**DRAG, "weights": {"edit": 1e6}})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_literals_are_refused(literal):
    models = get_registry().spec_models()
    text = json.dumps(DRAG)[:-1] + f', "energy_scale": {literal}}}'
    with pytest.raises(SpecError, match=literal):
        spec_from_json(text, models)
    # even where a literal sits in a field that is not a float
    with pytest.raises(SpecError, match=literal):
        spec_from_json(json.dumps(DRAG)[:-1] + f', "prompt": {literal}}}', models)


def test_json_infinity_in_a_spec_file_is_refused_by_the_cli_and_nothing_is_written(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**DRAG, "mask": None})[:-1] + ', "energy_scale": Infinity}')
    out = tmp_path / "out.png"
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE / "original_image.png"),
            "--spec",
            str(spec),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code != 0 and "energy_scale" in res.output and not out.exists()


@pytest.mark.parametrize(
    "points",
    [[[[True, 264], [200, 313]]], [[[131, 264], [200, False]]], [{"handle": [131, True], "target": [1, 2]}]],
)
def test_booleans_are_not_coordinates(points):
    with pytest.raises(ValidationError, match="not a boolean"):
        DragSpec.model_validate({**DRAG, "points": points})


def test_boolean_displacements_and_dense_points_are_refused():
    models = get_registry().spec_models()
    with pytest.raises(ValidationError, match="not a boolean"):
        models["move"].model_validate({"mode": "move", "mask": "m.png", "dx": True})
    with pytest.raises(ValidationError, match="not a boolean"):
        models["region-drag"].model_validate({"mode": "region-drag", "dense_points": [[1, 2], [True, 4]]})


def test_seed_is_bounded_to_what_torch_accepts_at_validation_time():
    torch.Generator().manual_seed(SamplerSettings(seed=SEED_MAX).seed)  # the largest accepted seed works
    for bad in (SEED_MAX + 1, 2**70, -1):
        with pytest.raises(ValidationError, match="seed"):
            SamplerSettings(seed=bad)
        with pytest.raises(ValidationError, match=r"sampler\.seed"):
            DragSpec.model_validate({**DRAG, "sampler": {"seed": bad}})


@pytest.fixture
def nan_at_step_2(monkeypatch):
    """The DDIM update returns NaN from sampling step 2 on (as an fp16 overflow or a huge energy would)."""
    real = dragsdk.sampler.ddim_step
    calls = {"n": 0}

    def step(z, *args, **kwargs):
        out = real(z, *args, **kwargs)
        calls["n"] += 1
        return out * torch.nan if calls["n"] >= 3 else out

    monkeypatch.setattr(dragsdk.sampler, "ddim_step", step)
    return calls


@pytest.mark.slow
def test_a_latent_going_non_finite_stops_the_edit_naming_the_step(tiny_model, nan_at_step_2):
    editor = Editor(tiny_model)
    spec = DragSpec.model_validate(
        {**DRAG, "sampler": {"steps": 4, "resolution": 128, "time_travel": {"enabled": False}}}
    )
    with pytest.raises(NonFiniteError, match=r"sampling step 2 \(timestep \d+\)") as e:
        editor.edit(EXAMPLE_SAMPLE / "original_image.png", spec)
    assert e.value.phase == "sampling" and e.value.step == 2 and isinstance(e.value, ArithmeticError)
    dry = editor.plan(EXAMPLE_SAMPLE / "original_image.png", spec, propose_mask=True)  # the edit's mask too
    assert not dry.inversion_cached  # the failed edit cached nothing


@pytest.mark.slow
def test_the_cli_writes_no_black_image_when_the_latent_goes_non_finite(tmp_path, nan_at_step_2):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({**DRAG, "sampler": {"steps": 4, "resolution": 128, "time_travel": {"enabled": False}}})
    )
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE / "original_image.png"),
            "--spec",
            str(spec),
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert res.exit_code != 0 and "sampling step 2" in res.output
    assert not out.exists() and not report.exists() and list(tmp_path.iterdir()) == [spec]


@pytest.mark.slow
def test_bench_records_a_non_finite_edit_as_an_error(tmp_path, nan_at_step_2):
    from dragsdk.eval.bench import BenchConfig, run_bench

    r = run_bench(
        BenchConfig(
            EXAMPLE_SAMPLE, tmp_path / "out", model="tiny", steps=4, resolution=128, metrics=("dai",)
        ),
        progress=False,
        echo=None,
    )
    (rec,) = r.records
    assert rec["status"] == "error" and "NonFiniteError" in rec["error"] and "sampling step" in rec["error"]
    assert not rec["metrics"] and rec["id"] in r.summary["errors"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.suffix in (".png", ".jpg")]


# -- list lengths ---------------------------------------------------------------------------------------------------
def _point_lists():
    """Every spec field (of every model reachable from a mode's spec) holding a list of points, point pairs, polygon
    pairs or region pairs."""
    models: dict[str, type[BaseModel]] = {}
    for spec_model in get_registry().spec_models().values():
        _models(spec_model, models)
    pair_refs = ("PointPair", "PolygonPair", "RegionPair")
    for name, cls in sorted(models.items()):
        for field, prop in cls.model_json_schema()["properties"].items():
            for arr in [prop, *prop.get("anyOf", [])]:
                if arr.get("type") != "array" or not isinstance(arr.get("items"), dict):
                    continue
                items = arr["items"]
                if "prefixItems" in items or items.get("$ref", "").endswith(pair_refs):
                    yield pytest.param(cls, field, prop, arr, id=f"{name}.{field}")


POINT_LISTS = list(_point_lists())


def test_every_list_of_points_or_pairs_has_a_documented_length_cap():
    ids = {p.id for p in POINT_LISTS}
    assert {
        "DragSpec.points",
        "RegionDragSpec.points",
        "RegionDragSpec.polygons",
        "RegionDragSpec.dense_points",
        "RegionDragSpec.regions",
        "PolygonPair.handle",
        "PolygonPair.target",
    } <= ids
    for p in POINT_LISTS:
        _, _, prop, arr = p.values
        assert "maxItems" in arr, f"{p.id} has no length cap"
        cap = arr["maxItems"]
        assert str(cap) in prop["description"] or (cap == 4 and "3 or 4" in prop["description"]), p.id


@pytest.mark.parametrize(
    "mode, field, limit, unit",
    [
        ("drag", "points", MAX_POINT_PAIRS, "pairs"),
        ("region-drag", "points", MAX_POINT_PAIRS, "pairs"),
        ("region-drag", "polygons", MAX_POINT_PAIRS, "polygon pairs"),
        ("region-drag", "dense_points", MAX_DENSE_POINTS, "points"),
        ("region-drag", "regions", MAX_REGION_PAIRS, "region pairs"),
    ],
)
def test_an_over_long_list_is_refused_before_its_items_naming_field_count_and_limit(mode, field, limit, unit):
    model = get_registry().spec_models()[mode]
    with pytest.raises(ValidationError) as e:
        model.model_validate({"mode": mode, field: [None] * (limit + 1)})  # items never validated: one error
    (err,) = e.value.errors()
    assert err["loc"] == (field,) and f"{limit + 1} {unit}, more than the limit of {limit}" in err["msg"]
    with pytest.raises(ValidationError, match=f"{limit + 1} {unit}, more than the limit of {limit}"):
        spec_from_json(json.dumps({"mode": mode, field: [None] * (limit + 1)}), get_registry().spec_models())


def test_the_dense_cap_holds_one_pair_per_latent_cell_of_the_largest_canvas():
    from dragsdk.geometry import Canvas

    largest = max(m.le for m in SamplerSettings.model_fields["resolution"].metadata if hasattr(m, "le"))
    w, h = Canvas.fit((largest, largest), largest).latent_size
    assert 2 * w * h == MAX_DENSE_POINTS
    model = get_registry().spec_models()["region-drag"]
    spec = model.model_validate(
        {"mode": "region-drag", "dense_points": [[x % 2048, x // 2048] for x in range(MAX_DENSE_POINTS)]}
    )
    assert len(spec.dense_points) == MAX_DENSE_POINTS


def test_spec_json_over_the_size_cap_is_refused_before_parsing(tmp_path, monkeypatch):
    from dragsdk.specfile import read_spec_file

    big = tmp_path / "huge.json"
    with open(big, "wb") as f:  # a 2 GiB sparse file: refused from its size, never read
        f.truncate(2 * 2**30)
    with pytest.raises(SpecError, match=r"2048\.0 MiB, more than the 32 MiB limit"):
        read_spec_file(big)
    with pytest.raises(SpecError, match="2048.0 MiB"):
        spec_from_json(big, get_registry().spec_models())
    monkeypatch.setenv("DRAGSDK_MAX_SAMPLE_MB", "1")
    text = json.dumps({**DRAG, "prompt": "x" * 2**20})
    with pytest.raises(SpecError, match=rf"{len(text)} characters long, more than the limit of {2**20}"):
        spec_from_json(text, get_registry().spec_models())
    with pytest.raises(SpecError, match=rf"{len(text)} bytes long"):
        spec_from_json(text.encode(), get_registry().spec_models())
