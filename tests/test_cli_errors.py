"""User mistakes print one line naming the file or field and exit 2, never a traceback (issue 12 item 9);
``--debug`` shows the traceback; the Python API raises SpecError for them."""

import json
import os
import pickle
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.errors import DragSDKError, SpecError

from .conftest import EXAMPLE_SAMPLE

runner = CliRunner()

SPEC = {"mode": "drag", "points": [[[10, 10], [20, 12]]], "sampler": {"steps": 2, "resolution": 64}}


def _image(path, size=(64, 64)):
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(
        path
    )
    return path


def _spec_text(tmp, text: str | bytes, name="spec.json"):
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _edit(tmp, spec_path=None, image=None, *extra):
    image = image or _image(tmp / "in.png")
    spec_path = spec_path or _spec_text(tmp, json.dumps(SPEC))
    return ["edit", str(image), "--spec", str(spec_path), "--out", str(tmp / "o.png"), "--quiet", *extra]


def _sample(tmp, meta: bytes | None = None, points: bytes | None = None):
    folder = tmp / "sample"
    folder.mkdir()
    if meta is not None:
        _image(folder / "original_image.png")
        (folder / "meta_data.pkl").write_bytes(meta)
    else:
        _image(folder / "original.jpg")
        (folder / "points.json").write_bytes(points or b"")
    return ["edit", str(folder), "--out", str(tmp / "o.png"), "--quiet"]


def _png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _bytes_bomb():
    return b"\x80\x02cbuiltins\nbytes\nJ" + struct.pack("<i", 2 * 10**8) + b"\x85R."


def _animated(tmp):
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    return tmp / "anim.gif"


def _bench_dataset(tmp):
    root = tmp / "bench-data"
    shutil.copytree(EXAMPLE_SAMPLE, root / "cat" / "s0")
    return root


def _corrupt_run(tmp):
    out = tmp / "bench-out"
    out.mkdir()
    (out / "run.json").write_text('{"model": "tiny", ')
    return ["bench", str(_bench_dataset(tmp)), "--out", str(out), "--quiet"]


def _bench_out_file(tmp):
    (tmp / "results.txt").write_text("x")
    return ["bench", str(_bench_dataset(tmp)), "--out", str(tmp / "results.txt"), "--quiet"]


CASES = {
    # the spec file
    "spec missing": (lambda t: _edit(t, t / "nope.json"), "spec: no file at"),
    "spec is a folder": (lambda t: _edit(t, t), "is a folder, expected a file"),
    "spec is a JSON array": (lambda t: _edit(t, _spec_text(t, "[1, 2]")), "spec: expected a JSON object"),
    "spec is a JSON string": (lambda t: _edit(t, _spec_text(t, '"drag"')), "got a string"),
    "spec is a number": (lambda t: _edit(t, _spec_text(t, "42")), "got a number"),
    "spec is null": (lambda t: _edit(t, _spec_text(t, "null")), "got null"),
    "spec is not UTF-8": (
        lambda t: _edit(t, _spec_text(t, b'{"mode": "drag", "prompt": "caf\xe9"}')),
        "not UTF-8",
    ),
    "spec is not JSON": (lambda t: _edit(t, _spec_text(t, "{mode: drag}")), "not valid JSON (Expecting"),
    "spec nested 100000 deep": (
        lambda t: _edit(t, _spec_text(t, "[" * 100_000)),
        "nested more than 64 levels",
    ),
    "spec nested 200 deep": (
        lambda t: _edit(t, _spec_text(t, '{"mode": "drag", "prompt": ' + "[" * 200 + "]" * 200 + "}")),
        "nested more than 64 levels",
    ),
    "sampler is a string": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "sampler": "fast"}))),
        "sampler: expected an object",
    ),
    "sampler is a list": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "sampler": [1]}))),
        "sampler: expected an object",
    ),
    "mode is a list": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "mode": ["drag"]}))),
        "mode: unknown mode a list",
    ),
    "mode missing": (
        lambda t: _edit(t, _spec_text(t, json.dumps({"points": SPEC["points"]}))),
        "mode: missing",
    ),
    "points not a list": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "points": "left"}))),
        "spec field points",
    ),
    # the image
    "image missing": (lambda t: _edit(t, None, t / "nope.png"), "no such image or sample folder"),
    "image not an image": (
        lambda t: _edit(t, None, _spec_text(t, "hello", "notes.png")),
        "is not a readable image",
    ),
    "image bomb over Pillow's limit": (
        lambda t: _edit(t, None, _spec_text(t, _png_header_only(40_000, 40_000), "bomb.png")),
        "megapixels",
    ),
    "image over the megapixel cap": (
        lambda t: _edit(t, None, _spec_text(t, _png_header_only(10_000, 9_000), "big.png")),
        "90 megapixels",
    ),
    "image animated": (lambda t: _edit(t, None, _animated(t)), "animated (2 frames)"),
    # files the spec names
    "mask missing": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "mask": "nope.png"}))),
        "mask: no mask file",
    ),
    "mask not an image": (
        lambda t: _edit(t, _spec_text(t, json.dumps({**SPEC, "mask": "spec.json"}))),
        "mask: ",
    ),
    # --set
    "set without =": (lambda t: _edit(t) + ["--set", "lora_steps"], "--set: expected FIELD=VALUE"),
    "set through a non-object": (lambda t: _edit(t) + ["--set", "mode.x=1"], "mode is not an object"),
    "set an unknown field": (lambda t: _edit(t) + ["--set", "no_such_field=1"], "no_such_field"),
    "bench set without =": (
        lambda t: ["bench", str(t), "--out", str(t / "o"), "--set", "=3"],
        "--set: expected FIELD=VALUE",
    ),
    # sample folders
    "sample pickle truncated": (
        lambda t: _sample(t, pickle.dumps({"points": [[1, 2]] * 50})[:40]),
        "meta_data.pkl: not a readable pickle",
    ),
    "sample pickle a list": (lambda t: _sample(t, pickle.dumps([1, 2])), "meta_data.pkl: expected a dict"),
    "sample pickle bytes bomb": (
        lambda t: _sample(t, _bytes_bomb()),
        "meta_data.pkl: builtins.bytes is called",
    ),
    "sample pickle bad points": (
        lambda t: _sample(t, pickle.dumps({"points": "abc"})),
        "meta_data.pkl:points",
    ),
    "sample points.json not JSON": (lambda t: _sample(t, points=b"{points"), "points.json"),
    "sample points.json not UTF-8": (lambda t: _sample(t, points=b'{"points": "\xff"}'), "not UTF-8"),
    "sample points.json an array": (
        lambda t: _sample(t, points=b"[[1, 2], [3, 4]]"),
        "points.json: expected an object",
    ),
    # outputs
    "out is a folder": (lambda t: _edit(t) + ["--out", str(t)], "out: "),
    "out under a file": (
        lambda t: _edit(t) + ["--out", str(_image(t / "x.png")) + "/o.png"],
        "is not a folder",
    ),
    "report is a folder": (lambda t: _edit(t) + ["--report", str(t)], "report: "),
    "report is the out": (lambda t: _edit(t) + ["--report", str(t / "o.png")], "the two outputs must differ"),
    "bench out is a file": (_bench_out_file, "bench --out is a folder"),
    "bench run.json corrupt": (_corrupt_run, "run.json"),
    "bench dataset missing": (lambda t: ["bench", str(t / "nope"), "--out", str(t / "o")], "dataset: "),
    # limits set wrong
    "megapixel limit not a number": (
        lambda t: [
            "edit",
            str(_image(t / "in.png")),
            "--spec",
            str(_spec_text(t, json.dumps(SPEC))),
            "--out",
            str(t / "o.png"),
        ],
        "DRAGSDK_MAX_MEGAPIXELS: expected a positive number",
    ),
}


@pytest.fixture
def cached_editor(monkeypatch, editor):
    """Commands that get as far as the model reuse the session's tiny editor instead of loading one each."""
    monkeypatch.setattr("dragsdk.editor.Editor.from_pretrained", classmethod(lambda cls, *a, **k: editor))


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_mistakes_print_one_line_naming_the_file_or_field(tmp_path, monkeypatch, cached_editor, case):
    build, expected = CASES[case]
    if case == "megapixel limit not a number":
        monkeypatch.setenv("DRAGSDK_MAX_MEGAPIXELS", "lots")
    res = runner.invoke(app, build(tmp_path))
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 1100, res.output
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "o.png").exists()


def test_an_unwritable_out_folder_is_one_line(tmp_path, cached_editor):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = runner.invoke(app, _edit(tmp_path) + ["--out", str(ro / "o.png")])
    finally:
        ro.chmod(0o700)
    assert (
        res.exit_code == 2 and "out: cannot write" in res.output and len(res.output.strip().splitlines()) == 1
    )


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, cached_editor):
    def full(self, fp, *args, **kwargs):
        raise OSError(28, "No space left on device")

    args = _edit(tmp_path)
    monkeypatch.setattr(Image.Image, "save", full)
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.output.strip().startswith("error: out: cannot write")
    assert "No space left on device" in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "spec.json"]


def test_debug_shows_the_traceback(tmp_path):
    args = _edit(tmp_path, _spec_text(tmp_path, "[1, 2]"))
    res = runner.invoke(app, ["--debug", *args])
    assert isinstance(res.exception, SpecError) and res.exception.field == "spec"


@pytest.mark.parametrize(
    "spec,match",
    [
        ([1, 2], "spec: expected an EditSpec, a dict"),
        (42, "spec: expected an EditSpec"),
        ("[1, 2]", "spec: expected a JSON object"),
        ('"drag"', "spec: expected a JSON object"),
        ({"mode": "drag", "points": [[[1, 1], [2, 2]]], "sampler": "fast"}, "sampler: expected an object"),
        ({"mode": ["drag"]}, "mode: unknown mode a list"),
        ("missing-spec.json", "spec: no file at missing-spec.json"),
    ],
)
def test_the_python_api_raises_spec_errors_for_bad_specs(editor, spec, match):
    with pytest.raises(SpecError, match=match):
        editor.resolve_spec(spec)


def test_the_python_api_raises_spec_errors_for_bad_images(editor):
    for bad in (42, None, b"bytes"):
        with pytest.raises(DragSDKError, match="image: expected a path, a PIL image or an array"):
            editor.edit(bad, dict(SPEC))


def test_edit_with_a_spec_path_reads_the_file_and_its_relative_mask(tmp_path, editor):
    img = _image(tmp_path / "in.png")
    m = np.zeros((64, 64), np.uint8)
    m[:, :32] = 255
    (tmp_path / "sub").mkdir()
    Image.fromarray(m).save(tmp_path / "sub" / "mask.png")
    (tmp_path / "sub" / "spec.json").write_text(json.dumps({**SPEC, "mask": "mask.png"}))
    for spec in (str(tmp_path / "sub" / "spec.json"), tmp_path / "sub" / "spec.json"):
        assert editor.resolve_spec(spec).mask == str(tmp_path / "sub" / "mask.png")
    result = editor.edit(img, tmp_path / "sub" / "spec.json")
    assert result.spec.mask == str(tmp_path / "sub" / "mask.png") and result.image.size == (64, 64)
