"""Outputs that are not files (issue 22, Outputs): an existing device, FIFO or socket named as any output is refused
before any work, naming the option, and is left as it was; ``--trace`` is checked with the other outputs."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.io import atomic_write, check_outputs

from .test_outputs import _inputs, no_work  # noqa: F401  (fixture)

runner = CliRunner()


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _special(kind: str, tmp_path: Path) -> tuple[Path, object]:
    """A non-regular file of ``kind`` in ``tmp_path``. The device is a node made in ``tmp_path`` (behind a symbolic
    link), never a system device: a broken check would rename over the link's target, as atomic_write resolves it."""
    path = tmp_path / f"special-{kind}"
    keep: object = None
    if kind == "fifo":
        _fifo(path)
    elif kind == "socket":
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.bind(str(path))  # type: ignore[attr-defined]
    else:  # a character-device node of its own (the null device's numbers) inside tmp_path, behind a link
        node = tmp_path / "chardev"
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError) as e:
            pytest.skip(f"cannot create a device node here ({e})")
        path.symlink_to(node)
    return path, keep


def _is_still(kind: str, path: Path) -> bool:
    mode = os.lstat(path).st_mode
    return {"fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK, "device": stat.S_ISLNK}[kind](mode) and (
        kind != "device" or stat.S_ISCHR(os.stat(path).st_mode)
    )


@pytest.mark.parametrize("option", ["--out", "--report", "--trace"])
@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_an_existing_non_regular_output_is_refused_before_the_model_loads(tmp_path, no_work, option, kind):  # noqa: F811
    _inputs(tmp_path)
    target, keep = _special(kind, tmp_path)
    args = [
        "edit",
        str(tmp_path / "in.png"),
        "--spec",
        str(tmp_path / "spec.json"),
        "--quiet",
        "--out",
        str(tmp_path / "o.png"),
    ]
    args += [option, str(target)]
    res = runner.invoke(app, args)
    field = option.removeprefix("--")
    assert res.exit_code == 2, res.output
    assert f"error: {field}: {target}" in res.output and "exists and is" in res.output, res.output
    assert _is_still(kind, target)
    assert not (tmp_path / "o.png").exists()
    if keep is not None:
        keep.close()  # type: ignore[attr-defined]


def test_the_trace_cannot_be_the_out_path(tmp_path, no_work):  # noqa: F811
    _inputs(tmp_path)
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--quiet",
            "--out",
            str(tmp_path / "o.png"),
            "--trace",
            str(tmp_path / "o.png"),
        ],
    )
    assert res.exit_code == 2 and "error: trace:" in res.output and "must differ" in res.output, res.output


def test_an_unwritable_trace_path_is_refused_up_front_as_trace(tmp_path, no_work):  # noqa: F811
    _inputs(tmp_path)
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--quiet",
            "--out",
            str(tmp_path / "o.png"),
            "--trace",
            str(tmp_path / "afile" / "t.npz"),
        ],
    )
    assert res.exit_code == 2 and "error: trace: cannot create" in res.output, res.output


def test_editor_edit_refuses_a_fifo_trace_before_any_work(editor, car_sample, tmp_path):
    image, spec = car_sample
    fifo = _fifo(tmp_path / "t.npz")
    steps = []
    with pytest.raises(SpecError) as err:
        editor.edit(
            image,
            {**spec, "sampler": {"steps": 2, "resolution": 64}},
            trace=fifo,
            callback_on_step_end=lambda e: steps.append(e.phase),
        )
    assert err.value.field == "trace" and "FIFO" in str(err.value)
    assert steps == [] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_atomic_writes_never_replace_a_non_regular_file(tmp_path, kind):
    target, keep = _special(kind, tmp_path)
    with pytest.raises(SpecError) as err:
        atomic_write(target, lambda tmp: tmp.write_bytes(b"x"), field="report")
    assert err.value.field == "report"
    assert _is_still(kind, target) and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".")
    ]  # no temp file
    with pytest.raises(SpecError):
        check_outputs({"out": target})
    if keep is not None:
        keep.close()  # type: ignore[attr-defined]


def test_a_bench_output_file_that_is_a_fifo_is_refused_before_any_work(tmp_path):
    from dragsdk.eval.bench import RESULTS, BenchConfig, run_bench

    from .conftest import EXAMPLE_SAMPLE

    out = tmp_path / "bench"
    out.mkdir()
    _fifo(out / RESULTS)
    with pytest.raises(SpecError) as err:
        run_bench(BenchConfig(EXAMPLE_SAMPLE, out, steps=2, resolution=64))
    assert err.value.field == "out" and "FIFO" in str(err.value)
    assert stat.S_ISFIFO(os.lstat(out / RESULTS).st_mode)


def test_the_browser_editor_refuses_a_fifo_download_before_the_edit(tmp_path, editor, car_sample):
    from PIL import Image

    from dragsdk.ui.run import run_edit

    image, spec = car_sample
    _fifo(tmp_path / "result.png")
    with pytest.raises(SpecError) as err:
        run_edit(editor, Image.open(image), {**spec, "sampler": {"steps": 2, "resolution": 64}}, tmp_path)
    assert err.value.field == "out" and stat.S_ISFIFO(os.lstat(tmp_path / "result.png").st_mode)
