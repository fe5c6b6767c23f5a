"""The browser editor's runs without a browser: the downloaded spec gives the same result from the CLI and the API,
a second edit reuses the inversion, errors become messages, and the page builds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app as cli_app
from dragsdk.ui.run import run_edit
from dragsdk.ui.state import Inputs, Session, add_click, build_spec

from .conftest import EXAMPLE_SAMPLE, SHARED_DATA


def _photo() -> Image.Image:
    folder = SHARED_DATA / "DragBench/building_city_view/YAN_2023-09-15-2231-44"
    return Image.open((folder if folder.is_dir() else EXAMPLE_SAMPLE) / "original_image.png").convert("RGB")


@pytest.mark.slow
def test_the_downloaded_spec_gives_the_same_result_from_the_cli_and_the_api(tiny_model, tmp_path):
    from dragsdk import Editor

    editor = Editor(tiny_model)  # its own cache: the first run must invert, whatever ran before
    img = _photo()
    s = Session()
    s.set_image(img, "car")
    for xy in [(131, 264), (200, 313)]:
        add_click(s, "drag", xy)
    mask = np.zeros((img.size[1], img.size[0]), bool)
    mask[200:340, 90:420] = True
    spec = build_spec("drag", s, Inputs(prompt="a car", mask=mask, steps="4", resolution="128"))
    first = run_edit(editor, img, spec, tmp_path / "run1")
    assert first.result.size == img.size
    assert set(first.files) == {"result.png", "spec.json", "report.json"}
    downloaded = json.loads(first.files["spec.json"].read_text())
    assert downloaded["points"] == [{"handle": [131.0, 264.0], "target": [200.0, 313.0]}]
    assert downloaded["sampler"]["steps"] == 4 and downloaded["sampler"]["seed"] == 42  # defaults pinned
    assert Image.open(first.files["result.png"]).size == img.size

    # the same image again with other points: the inversion is reused
    add_click(s, "drag", (359, 180))
    add_click(s, "drag", (323, 140))
    second = run_edit(
        editor,
        img,
        build_spec("drag", s, Inputs(prompt="a car", mask=mask, steps="4", resolution="128")),
        tmp_path / "run2",
    )
    assert second.report.inversion_reused and not first.report.inversion_reused
    assert second.report.phase_seconds["invert"] < first.report.phase_seconds["invert"]

    # the API with a fresh editor, and the CLI, on the downloaded spec
    img.save(tmp_path / "input.png")
    api = Editor("tiny").edit(tmp_path / "input.png", downloaded)
    res = CliRunner().invoke(
        cli_app,
        [
            "edit",
            str(tmp_path / "input.png"),
            "--spec",
            str(first.files["spec.json"]),
            "--out",
            str(tmp_path / "cli.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    ui_px = np.asarray(Image.open(first.files["result.png"]).convert("RGB")).astype(int)
    assert np.abs(np.asarray(api.image).astype(int) - ui_px).max() == 0
    assert np.abs(np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")).astype(int) - ui_px).max() == 0


@pytest.mark.slow
def test_a_paste_run_writes_the_reference_beside_the_spec(editor, tmp_path):
    img = _photo()
    s = Session()
    s.set_image(img)
    ref = Image.open(EXAMPLE_SAMPLE.parent / "reference-cat" / "cat.jpg").convert("RGB")
    ref_mask = (
        np.asarray(Image.open(EXAMPLE_SAMPLE.parent / "reference-cat" / "cat_mask.png").convert("L")) > 127
    )
    folder = tmp_path / "run"
    folder.mkdir()
    ref.save(folder / "reference.png")
    add_click(s, "paste", (350, 260))
    spec = build_spec(
        "paste",
        s,
        Inputs(
            reference=ref,
            reference_mask=ref_mask,
            scale=0.5,
            reference_path=str(folder / "reference.png"),
            steps=4,
            resolution=128,
        ),
    )
    out = run_edit(editor, img, spec, folder)
    assert out.result.size == img.size and out.files["reference.png"] == folder / "reference.png"
    assert json.loads(out.files["spec.json"].read_text())["reference"] == "reference.png"
    img.save(tmp_path / "input.png")
    res = CliRunner().invoke(
        cli_app,
        [
            "edit",
            str(tmp_path / "input.png"),
            "--spec",
            str(out.files["spec.json"]),
            "--out",
            str(tmp_path / "cli.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "cli.png").size == img.size


def test_the_ui_command_is_listed_with_its_options():
    res = CliRunner().invoke(cli_app, ["ui", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--model", "--backend", "--port", "--host", "--samples"):
        assert opt in res.output
    assert "127.0.0.1" in res.output


def test_the_page_builds_with_every_control(editor, tmp_path):
    gr = pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from dragsdk.ui.app import build_app

    page = build_app(editor, sample_roots=[EXAMPLE_SAMPLE.parent], steps=4, resolution=128, workdir=tmp_path)
    assert isinstance(page, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in page.blocks.values()}
    for elem in (
        "image-input",
        "sample",
        "prompt",
        "mode",
        "canvas",
        "undo",
        "clear",
        "mask-editor",
        "handle-editor",
        "target-editor",
        "reference-editor",
        "scale",
        "steps",
        "run",
        "original",
        "result",
        "report",
        "download-result",
        "download-spec",
        "points-msg",
        "mask-msg",
        "reference-msg",
        "run-msg",
    ):
        assert elem in ids, elem
    # the settings start with the values given (`dragsdk ui --steps 4 --resolution 128`), not the model's default
    start = {
        b.elem_id: b.value
        for b in page.blocks.values()
        if getattr(b, "elem_id", None) in ("steps", "resolution")
    }
    assert str(start["resolution"]) == "128" and str(start["steps"]) == "4", start


def test_an_installed_third_party_mode_is_offered_by_the_page_and_runs_through_it(tiny_model, tmp_path):
    """The page of an editor whose registry holds the rotate example (installed: found through its entry point)
    offers rotate with an `angle` box built from its schema, and its run handler turns the brushed object, the angle
    and the scale into a RotateSpec the editor runs (a 2-step edit)."""
    gr = pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from types import SimpleNamespace

    from dragsdk import Editor
    from dragsdk.ui.app import build_app
    from dragsdk.ui.state import mask_layer

    from .example_registry import example_registry

    with example_registry(tmp_path / "site") as reg:
        editor = Editor(tiny_model, registry=reg)
        page = build_app(editor, steps=2, resolution=64, workdir=tmp_path / "runs")
        blocks = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
        assert "rotate" in [c[0] for c in blocks["mode"].choices]
        assert blocks["mode"].value == "drag"  # the built-ins' order is kept: drag first
        angle = blocks["field-rotate-angle"]
        assert (
            isinstance(angle, gr.Textbox) and angle.placeholder == "required" and "[-360, 360]" in angle.info
        )
        assert not blocks["fields-rotate"].visible  # shown with its mode only

        (on_run,) = [f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "on_run"]
        img = _photo().resize((128, 96))
        s = Session()
        s.set_image(img, "car")
        obj = np.zeros((96, 128), bool)
        obj[30:70, 20:70] = True
        editor_value = {
            "background": np.asarray(img),
            "layers": [np.asarray(mask_layer(obj))],
            "composite": None,
        }
        values = {  # the page's controls as the browser sends them (a 2-step edit at resolution 64)
            "mode_v": "rotate", "prompt_v": "a car", "mask_v": editor_value, "handle_v": None, "target_v": None,
            "region_v": "brush regions", "vertices_v": 4, "ref_v": None, "ref_prompt_v": "", "scale_v": 0.9,
            "steps_v": "2", "res_v": "64", "seed_v": "",
        }  # fmt: skip
        # the modes' own settings controls, in the page's order: dragdiffusion's LoRA and Adam steps, rotate's angle
        fields = [e for e in blocks if str(e).startswith("field-")]
        assert fields == [
            "field-dragdiffusion-lora_steps",
            "field-dragdiffusion-n_pix_step",
            "field-rotate-angle",
        ]
        request = SimpleNamespace(session_hash="test")
        out = on_run(s, *values.values(), request, lambda *a, **k: None, "", "", "45")
        by_id = {getattr(k, "elem_id", None): v for k, v in out.items()}
        assert "done in" in by_id["run-msg"], by_id
        assert by_id["result"].size == img.size
        spec = json.loads(by_id["spec-json"].replace("…", ""))
        assert spec["mode"] == "rotate" and spec["angle"] == 45.0 and spec["scale"] == 0.9
        assert spec["sampler"]["steps"] == 2 and by_id["report-json"]["mode"] == "rotate"

        out = on_run(s, *values.values(), request, lambda *a, **k: None, "", "", "400")
        by_id = {getattr(k, "elem_id", None): v for k, v in out.items()}
        assert "angle" in by_id["settings-msg"] and "360" in by_id["settings-msg"], by_id
