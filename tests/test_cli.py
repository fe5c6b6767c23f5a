import json
import pickle

import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app

from .conftest import EXAMPLE_SAMPLE, SHARED_DATA

runner = CliRunner()


def _sample():
    folder = SHARED_DATA / "DragBench/human_head/SY_2023-09-15-1735-10"
    return folder if folder.is_dir() else EXAMPLE_SAMPLE


@pytest.mark.slow
def test_cli_edits_a_dragbench_sample_end_to_end(tmp_path):
    folder = _sample()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "edit",
            str(folder),
            "--steps",
            "6",
            "--resolution",
            "128",
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    src = Image.open(folder / "original_image.png")
    assert Image.open(out).size == src.size
    rep = json.loads(report.read_text())
    assert set(rep["phase_seconds"]) == {"encode", "invert", "sample", "decode"}
    assert rep["unet_evaluations"]["backward"] > 0 and rep["energies"] and rep["peak_memory_bytes"] > 0
    assert rep["device"] == "cpu" and rep["backend"] == "eager"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_cli_edits_an_image_with_a_spec_and_a_relative_mask(tmp_path):
    import numpy as np

    img = Image.fromarray((np.random.default_rng(0).random((200, 300, 3)) * 255).astype("uint8"))
    img.save(tmp_path / "in.png")
    mask = np.zeros((200, 300), np.uint8)
    mask[50:150, 100:250] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    spec = {
        "mode": "drag",
        "prompt": "noise",
        "points": [[[120, 100], [160, 110]]],
        "mask": "mask.png",
        "sampler": {"steps": 4, "resolution": 128},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "out.png"),
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["image_size"] == [300, 200]
    assert Image.open(tmp_path / "out.png").size == (300, 200)


def test_cli_refuses_a_point_outside_the_image_naming_the_field(tmp_path):
    Image.new("RGB", (128, 96)).save(tmp_path / "in.png")
    (tmp_path / "spec.json").write_text(json.dumps({"mode": "drag", "points": [[[10, 10], [10, 500]]]}))
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "o.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 2
    assert "points[0].target" in res.output and not (tmp_path / "o.png").exists()


def test_cli_refuses_to_overwrite_its_input(tmp_path):
    Image.new("RGB", (128, 96)).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    (tmp_path / "spec.json").write_text(
        json.dumps(
            {"mode": "drag", "points": [[[10, 10], [20, 10]]], "sampler": {"steps": 2, "resolution": 64}}
        )
    )
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "in.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and "refusing to overwrite the input" in res.output
    assert (tmp_path / "in.png").read_bytes() == before


def test_cli_refuses_a_malicious_sample_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    Image.new("RGB", (64, 64)).save(tmp_path / "original_image.png")
    (tmp_path / "meta_data.pkl").write_bytes(pickle.dumps({"points": Exploit()}))
    res = runner.invoke(app, ["edit", str(tmp_path), "--out", str(tmp_path / "o.png"), "--quiet"])
    assert res.exit_code == 2 and "allow-list" in res.output and not marker.exists()


def test_cli_absent_model_gives_the_clear_error(tmp_path):
    res = runner.invoke(
        app,
        [
            "edit",
            str(_sample()),
            "--model",
            str(tmp_path / "missing"),
            "--quiet",
            "--out",
            str(tmp_path / "o.png"),
        ],
    )
    assert res.exit_code == 2 and "does not exist" in res.output and "diffusers layout" in res.output


@pytest.mark.parametrize(
    "command", [["modes", "--json"], ["plugins", "--json"], ["schema", "drag"], ["backends", "--json"]]
)
def test_listing_commands_print_json(command):
    res = runner.invoke(app, command)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    if command[0] == "modes":
        assert any(m["name"] == "drag" and "points" in m["schema"]["properties"] for m in data)
        ui = {m["name"]: m["ui"] for m in data}  # each built-in's browser-editor description, as data
        assert ui["drag"]["points"] == "points" and ui["region-drag"]["polygons"] == "polygons"
        assert ui["paste"]["placement"]["object"] == "reference"
    elif command[0] == "plugins":
        assert {p["name"] for p in data["plugins"]} >= {"drag", "eager"}
    elif command[0] == "schema":
        assert data["properties"]["mode"]
    else:
        assert any(b["name"] == "eager" and b["available"] for b in data)
