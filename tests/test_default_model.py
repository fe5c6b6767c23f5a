"""No silent random weights (issue 14 item 11): without a model named, the Editor and the CLI load real SD 1.5
weights or fail saying how to provide them; a random-weight model is used only by name, and its outputs say so."""

from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk import Editor, ModelNotFoundError
from dragsdk.cli import app
from dragsdk.defaults import DEFAULT_MODEL, MODEL_ENV, RANDOM_MODELS, default_model
from dragsdk.io import mask_to_data_url

from .conftest import EXAMPLE_SAMPLE


@pytest.fixture
def no_model_named(monkeypatch, tmp_path):
    """No DRAGSDK_MODEL, offline, and an empty Hugging Face cache: the default model is absent."""
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _image_and_spec(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype("uint8")).save(tmp_path / "in.png")
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:80] = 1
    spec = {
        "mode": "drag",
        "prompt": "noise",
        "points": [[[50, 40], [70, 45]]],
        "mask": mask_to_data_url(mask),
        "sampler": {"steps": 2, "resolution": 64},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path / "in.png", tmp_path / "spec.json"


def test_the_default_model_is_real_sd15_and_the_variable_names_another(monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model() == DEFAULT_MODEL and DEFAULT_MODEL not in RANDOM_MODELS
    monkeypatch.setenv(MODEL_ENV, "  ")
    assert default_model() == DEFAULT_MODEL
    monkeypatch.setenv(MODEL_ENV, "/models/sd21")
    assert default_model() == "/models/sd21"


def test_editor_without_a_model_loads_sd15_or_says_how_to_provide_one(no_model_named):
    with pytest.raises(ModelNotFoundError) as err:
        Editor()
    text = str(err.value)
    assert (
        DEFAULT_MODEL in text and "HF_HUB_OFFLINE" in text and "tiny" in text
    )  # how to provide one, and the test models


def test_cli_without_a_model_fails_clearly_and_writes_nothing(no_model_named, tmp_path):
    image, spec = _image_and_spec(tmp_path)
    out = tmp_path / "out.png"
    res = CliRunner().invoke(app, ["edit", str(image), "--spec", str(spec), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and DEFAULT_MODEL in lines[0], res.output
    assert "random weights" not in res.output and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "variable"])
def test_a_random_model_is_used_only_by_name_and_every_output_says_so(how, monkeypatch, tmp_path):
    image, spec = _image_and_spec(tmp_path)
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    args = [
        "edit",
        str(image),
        "--spec",
        str(spec),
        "--out",
        str(out),
        "--report",
        str(report),
        "--quiet",
        "--json",
    ]
    if how == "flag":
        monkeypatch.delenv(MODEL_ENV, raising=False)
        args += ["--model", "tiny-sd2"]
    else:
        monkeypatch.setenv(MODEL_ENV, "tiny-sd2")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "warning: model 'tiny-sd2' has random weights" in res.stderr  # stdout stays pure JSON
    assert json.loads(res.stdout)["random_weights"] is True
    rep = json.loads(report.read_text())
    assert rep["model"] == "tiny-sd2" and rep["random_weights"] is True
    assert any("random weights" in n for n in rep["notes"])


@pytest.mark.slow
def test_reports_of_real_weights_carry_no_random_flag(tiny_model):
    from dataclasses import replace

    real = replace(
        tiny_model, name="/models/some-sd15", random_weights=False
    )  # same modules, as a loaded folder
    image = Image.open(EXAMPLE_SAMPLE / "original_image.png").convert("RGB").resize((128, 96))
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:80] = 1
    spec = {
        "mode": "drag",
        "prompt": "x",
        "points": [[[50, 40], [70, 45]]],
        "mask": mask_to_data_url(mask),
        "sampler": {"steps": 2, "resolution": 64},
    }
    r_real = Editor(real).edit(image, spec).report
    r_tiny = Editor(tiny_model).edit(image, spec).report
    assert tiny_model.random_weights and (r_real.random_weights, r_tiny.random_weights) == (False, True)
    assert not any("random weights" in n for n in r_real.notes) and any(
        "random weights" in n for n in r_tiny.notes
    )


@pytest.mark.slow
def test_a_benchmark_run_with_a_random_model_warns_and_records_it(tmp_path):
    from dragsdk.eval.bench import BenchConfig, run_bench

    said: list[str] = []
    config = BenchConfig(
        dataset=str(EXAMPLE_SAMPLE.parent),
        out=str(tmp_path / "run"),
        limit=1,
        steps=2,
        resolution=64,
        metrics=("psnr_ssim",),
    )
    assert config.model == "tiny"  # from DRAGSDK_MODEL, as the test suite names it
    result = run_bench(config, progress=False, echo=said.append)
    assert result.summary["random_weights"] is True
    assert any(s.startswith("warning: model 'tiny' has random weights") for s in said)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["random_weights"] is True


@pytest.mark.slow
def test_the_browser_page_says_when_its_model_has_random_weights(tiny_model, tmp_path):
    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from dataclasses import replace

    from dragsdk.ui.app import build_app

    def head(model):
        page = build_app(Editor(model), sample_roots=[], workdir=tmp_path / model.name.strip("/"))
        return next(b.value for b in page.blocks.values() if getattr(b, "elem_id", None) == "page-head")

    assert "**Random weights**" in head(tiny_model)
    assert "Random weights" not in head(replace(tiny_model, name="/models/some-sd15", random_weights=False))
