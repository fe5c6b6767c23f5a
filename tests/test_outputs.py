"""Inputs are never overwritten (issue 12 item 3): every file an edit reads is protected from --out and --report,
the two outputs differ, all of it is checked before any work starts, and SIGTERM during a write leaves nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.editor import EditResult
from dragsdk.errors import OutputError, SpecError
from dragsdk.io import atomic_write, check_outputs
from dragsdk.report import EditReport

runner = CliRunner()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the outputs were not checked before the work")

    monkeypatch.setattr("dragsdk.editor.Editor.from_pretrained", classmethod(refuse))


def _inputs(tmp_path):
    """An image, a mask, a reference image, its mask and an appearance spec naming them relative to itself."""
    rng = np.random.default_rng(0)
    for name in ("in.png", "ref.png"):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    for name in ("mask.png", "ref_mask.png"):
        Image.fromarray(m).save(tmp_path / name)
    spec = {
        "mode": "appearance",
        "mask": "mask.png",
        "reference": "ref.png",
        "reference_mask": "ref_mask.png",
        "sampler": {"steps": 2, "resolution": 64},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    "out,report,field",
    [
        ("mask.png", None, "out"),
        ("ref.png", None, "out"),
        ("ref_mask.png", None, "out"),
        ("spec.json", None, "out"),
        ("in.png", None, "out"),
        ("o.png", "mask.png", "report"),
        ("o.png", "in.png", "report"),
        ("o.png", "spec.json", "report"),
    ],
)
def test_no_input_of_an_edit_can_be_an_output_and_nothing_runs(tmp_path, no_work, out, report, field):
    before = _inputs(tmp_path)
    args = [
        "edit",
        str(tmp_path / "in.png"),
        "--spec",
        str(tmp_path / "spec.json"),
        "--out",
        str(tmp_path / out),
        "--quiet",
    ] + (["--report", str(tmp_path / report)] if report else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and f"error: {field}: refusing to overwrite the input" in res.output, res.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_hard_link_to_an_input_is_the_input(tmp_path, no_work):
    before = _inputs(tmp_path)
    os.link(tmp_path / "mask.png", tmp_path / "alias.png")
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "alias.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and "refusing to overwrite the input" in res.output
    assert (tmp_path / "mask.png").read_bytes() == before["mask.png"]


def test_the_report_and_the_image_must_be_different_files(tmp_path, no_work):
    _inputs(tmp_path)
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "o.png"),
            "--report",
            str(tmp_path / "." / "o.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and "report:" in res.output and "the two outputs must differ" in res.output
    assert not (tmp_path / "o.png").exists()


def test_sample_folder_files_are_protected_before_any_work(tmp_path, no_work):
    from .test_cli import _sample

    folder = _sample()
    for name in ("meta_data.pkl", "original_image.png"):
        res = runner.invoke(app, ["edit", str(folder), "--out", str(folder / name), "--quiet"])
        assert res.exit_code == 2 and "refusing to overwrite the input" in res.output


def _result():
    report = EditReport(
        mode="drag",
        model="m",
        backend="eager",
        backend_reason="",
        device="cpu",
        dtype="float32",
        image_size=(8, 8),
        working_size=(64, 64),
        steps=2,
        seed=0,
    )
    return EditResult(Image.new("RGB", (8, 8)), None, report, None, None)  # type: ignore[arg-type]


def test_python_save_checks_both_outputs_before_writing_either(tmp_path):
    with pytest.raises(SpecError, match="report: .* the two outputs must differ"):
        _result().save(tmp_path / "x.png", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "in.png").write_bytes(b"input")
    with pytest.raises(SpecError, match="report: refusing to overwrite the input"):
        _result().save(tmp_path / "x.png", tmp_path / "in.png", protect=(tmp_path / "in.png",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_check_outputs_refuses_folders_and_unwritable_places(tmp_path):
    with pytest.raises(SpecError, match="out: .* is a folder"):
        check_outputs({"out": tmp_path})
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError, match="out: cannot create .* is not a folder"):
        check_outputs({"out": tmp_path / "file" / "o.png"})
    check_outputs({"out": tmp_path / "new" / "deeper" / "o.png", "report": tmp_path / "r.json"})


def test_a_failed_write_is_an_output_error_and_leaves_nothing(tmp_path):
    def full_disk(tmp):
        tmp.write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="out: cannot write .*No space left on device"):
        atomic_write(tmp_path / "o.txt", full_disk)
    assert list(tmp_path.iterdir()) == []


_WRITER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from dragsdk.io import atomic_write

    if sys.argv[2] == "handler":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))

    def slow(tmp):
        tmp.write_text("partial")
        print("writing", flush=True)
        time.sleep(120)

    atomic_write(Path(sys.argv[1]) / "out.txt", slow)
""")


@pytest.mark.parametrize("previous,expected_rc", [("default", -signal.SIGTERM), ("handler", 3)])
def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path, previous, expected_rc):
    out = tmp_path / "outdir"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out), previous], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(out.iterdir())) == 1  # the hidden temporary file exists while writing
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == expected_rc  # the signal still ends the process as it would have (or as its handler says)
    assert list(out.iterdir()) == []
