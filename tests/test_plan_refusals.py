"""Specs an image cannot take are SpecErrors at plan time, before the model loads (issue 22, Specs and geometry):
a resize below one grid cell, a drag patch larger than the feature grid, RegionDrag's time grid at 2 steps."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.models import peek_default_resolution

from .conftest import EXAMPLE_SAMPLE
from .test_outputs import no_work  # noqa: F401  (fixture)

IMAGE = EXAMPLE_SAMPLE / "original_image.png"
MASK = str(EXAMPLE_SAMPLE / "mask.png")
SQUARE = [[100, 100], [160, 100], [160, 160], [100, 160]]
CASES = {
    "scale": {
        "mode": "resize",
        "prompt": "a car",
        "mask": MASK,
        "scale": 1e-6,
        "sampler": {"steps": 4, "resolution": 64},
    },
    "patch_radius": {
        "mode": "drag",
        "prompt": "a car",
        "points": [[[100, 100], [140, 100]]],
        "patch_radius": 8,
        "sampler": {"steps": 4, "resolution": 64},
    },
    "sampler.steps": {
        "mode": "region-drag",
        "prompt": "a car",
        "sampler": {"steps": 2, "resolution": 64},
        "polygons": [{"handle": SQUARE, "target": [[x + 40, y + 20] for x, y in SQUARE]}],
    },
}


@pytest.mark.parametrize("field", sorted(CASES))
@pytest.mark.parametrize("model", ["tiny", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_the_cli_refuses_before_the_model_loads(tmp_path, no_work, field, model):  # noqa: F811
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(CASES[field]))
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(IMAGE),
            "--spec",
            str(spec),
            "--out",
            str(tmp_path / "o.png"),
            "--model",
            model,
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and f"error: {field}: " in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("field", sorted(CASES))
def test_the_api_raises_a_named_spec_error_at_plan_time(editor, field):
    steps = []
    with pytest.raises(SpecError) as err:
        editor.edit(str(IMAGE), CASES[field], callback_on_step_end=lambda e: steps.append(e))
    assert err.value.field == field and steps == []
    with pytest.raises(SpecError):
        editor.plan(str(IMAGE), CASES[field])


def test_a_patch_that_fits_and_a_scale_of_one_cell_still_plan(editor):
    ok = {**CASES["patch_radius"], "patch_radius": 7, "mask": MASK}
    assert editor.plan(str(IMAGE), ok).plan is not None
    cell = {**CASES["scale"], "scale": 0.25}
    assert editor.plan(str(IMAGE), cell).plan is not None
    three = {**CASES["sampler.steps"], "sampler": {"steps": 3, "resolution": 64}}
    assert editor.plan(str(IMAGE), three).plan is not None


def test_the_default_resolution_is_read_without_loading(tmp_path):
    assert peek_default_resolution("tiny") == 768 and peek_default_resolution("tiny-sdxl") == 1024
    folder = tmp_path / "sd21"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(
        json.dumps({"sample_size": 96, "use_linear_projection": True, "cross_attention_dim": 1024})
    )
    assert peek_default_resolution(str(folder)) == 768
    (folder / "unet" / "config.json").write_text(json.dumps({"sample_size": 64, "cross_attention_dim": 768}))
    assert peek_default_resolution(str(folder)) == 768  # SD 1.x: the fixed default of its layout
    assert peek_default_resolution(str(tmp_path / "model.safetensors")) is None
    assert peek_default_resolution("nobody/not-in-the-cache") is None
