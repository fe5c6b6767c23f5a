"""Silent and misleading cases of issue 22 (Specs and geometry): mask-proposal settings, timesteps, long prompts,
the author API's latent_paste, polygons outside the image, model-level validator messages, multi-page TIFFs and
--frame, and a region-drag spec's relative paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk import authoring
from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.io import load_image
from dragsdk.specfile import read_spec_file

from .conftest import EXAMPLE_SAMPLE
from .test_outputs import no_work  # noqa: F401  (fixture)

IMAGE = EXAMPLE_SAMPLE / "original_image.png"
SQUARE = [[100, 100], [160, 100], [160, 160], [100, 160]]


@pytest.mark.parametrize("threshold", [5, -1, float("nan"), "0.5"])
def test_suggest_mask_refuses_a_threshold_outside_0_1(editor, threshold):
    with pytest.raises(SpecError) as err:
        editor.suggest_mask(str(IMAGE), (200, 200), threshold=threshold)
    assert err.value.field == "threshold"


@pytest.mark.parametrize("timestep", [5000, -1, 1000, 2.5])
def test_suggest_mask_refuses_a_timestep_off_the_schedule(editor, timestep):
    with pytest.raises(SpecError) as err:
        editor.suggest_mask(str(IMAGE), (200, 200), timestep=timestep)
    assert err.value.field == "timestep" and "[0, 999]" in str(err.value)


def test_the_mask_command_refuses_a_bad_threshold_before_the_model_loads(tmp_path, no_work):  # noqa: F811
    res = CliRunner().invoke(
        app, ["mask", str(IMAGE), "200", "200", "--threshold", "5", "--out", str(tmp_path / "m.png")]
    )
    assert res.exit_code == 2 and "error: threshold:" in res.output, res.output


@pytest.mark.slow
def test_a_prompt_longer_than_the_text_encoder_reads_gets_a_note(editor, car_sample):
    image, spec = car_sample
    long = " ".join(["a red sports car parked on a wet cobbled street at dusk"] * 12)
    notes = editor.edit(
        image, {**spec, "prompt": long, "sampler": {"steps": 2, "resolution": 64}}
    ).report.notes
    cut = [n for n in notes if n.startswith("prompt:")]
    assert len(cut) == 1 and "the text encoder reads 77" in cut[0] and "the rest was cut" in cut[0]
    short = editor.edit(
        image, {**spec, "prompt": "a car", "sampler": {"steps": 2, "resolution": 64}}
    ).report.notes
    assert not [n for n in short if n.startswith("prompt:")]


@pytest.mark.parametrize("value", [None, "cells", 3])
def test_latent_paste_names_what_it_expected(value):
    with pytest.raises(TypeError, match="smap must be a SourceMap"):
        authoring.latent_paste(value)  # type: ignore[arg-type]


def test_a_polygon_entirely_outside_the_image_is_named_as_outside(editor):
    far = [[x + 5000, y] for x, y in SQUARE]
    spec = {
        "mode": "region-drag",
        "prompt": "a car",
        "sampler": {"steps": 4, "resolution": 64},
        "polygons": [{"handle": far, "target": [[x + 40, y] for x, y in far]}],
    }
    with pytest.raises(SpecError) as err:
        editor.plan(str(IMAGE), spec)
    assert err.value.field == "polygons[0].handle" and "entirely outside the 512×384 image" in str(err.value)
    assert "too small" not in str(err.value)


def test_a_model_level_validator_error_names_the_spec_not_an_empty_field(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(
        json.dumps({"mode": "region-drag", "prompt": "x", "sampler": {"steps": 4, "resolution": 64}})
    )
    res = CliRunner().invoke(app, ["edit", str(IMAGE), "--spec", str(spec), "--out", str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "give exactly one input kind" in res.output
    assert "spec field :" not in res.output and "error: spec (RegionDragSpec):" in res.output, res.output


@pytest.fixture
def tiff(tmp_path):
    pages = [Image.fromarray(np.full((64, 96, 3), v, np.uint8)) for v in (40, 200)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def test_a_multi_page_tiff_is_called_one_and_a_page_can_be_chosen(tiff):
    with pytest.raises(SpecError) as err:
        load_image(tiff)
    assert "multi-page TIFF (2 pages)" in str(err.value) and "animated" not in str(err.value)
    assert np.asarray(load_image(tiff, frame=1)).mean() == pytest.approx(200, abs=1)


def test_the_cli_takes_frame(tmp_path, tiff, no_work):  # noqa: F811
    spec = tmp_path / "s.json"
    spec.write_text(
        json.dumps(
            {
                "mode": "drag",
                "prompt": "x",
                "points": [[[10, 10], [20, 12]]],
                "sampler": {"steps": 2, "resolution": 64},
            }
        )
    )
    args = ["edit", str(tiff), "--spec", str(spec), "--out", str(tmp_path / "o.png"), "--quiet"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--frame K" in refused.output
    chosen = CliRunner().invoke(app, [*args, "--frame", "1"])
    assert isinstance(chosen.exception, AssertionError) and "model was loaded" in str(
        chosen.exception
    )  # decoded


def test_region_drag_spec_paths_relative_to_a_relative_spec_folder_resolve_once(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    mask = np.zeros((384, 512), np.uint8)
    mask[100:200, 100:200] = 255
    for name in ("m.png", "h.png", "t.png"):
        Image.fromarray(mask).save(folder / name)
    (folder / "s.json").write_text(
        json.dumps(
            {
                "mode": "region-drag",
                "prompt": "x",
                "mask": "m.png",
                "regions": [{"handle": "h.png", "target": "t.png"}],
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    spec = read_spec_file("specs/s.json")
    for path in (spec["mask"], spec["regions"][0]["handle"], spec["regions"][0]["target"]):
        assert "specs/specs" not in path and (tmp_path / path).resolve().is_file(), path
