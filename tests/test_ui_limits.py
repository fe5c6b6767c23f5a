"""The browser editor's server-side limits (issue 12, item 8), without a browser: which sample folders the page opens,
the caps on steps / resolution / uploads / run time, cancelling a run, and messages for uploads that are not
images."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app as cli_app
from dragsdk.ui import run as ui_run
from dragsdk.ui.run import RunControl, RunStopped, run_edit
from dragsdk.ui.state import (
    Inputs,
    Session,
    UIError,
    UILimits,
    add_click,
    build_spec,
    load_upload,
    open_sample,
)

from .conftest import EXAMPLE_SAMPLE


@pytest.fixture
def roots(tmp_path):
    """A sample root holding one sample (and a link to one outside it), and a sample outside every root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(EXAMPLE_SAMPLE, root / "cars" / "car")
    shutil.copytree(EXAMPLE_SAMPLE, outside / "car")
    (root / "cars" / "linked").symlink_to(outside / "car", target_is_directory=True)
    return root, outside


def _refusal(name, roots_, listed=None):
    with pytest.raises(UIError) as e:
        open_sample(name, roots_, listed or {})
    assert e.value.control == "image"
    return e.value.message.replace(repr(str(name)), "NAME")


def test_the_sample_box_opens_only_samples_under_its_roots_with_one_message_for_the_rest(roots, tmp_path):
    root, outside = roots
    folder, img, spec = open_sample(str(root / "cars" / "car"), [root], {})
    assert folder == (root / "cars" / "car").resolve() and img.size == (512, 384) and len(spec["points"]) == 2
    assert open_sample("root/cars/car", [root], {"root/cars/car": root / "cars" / "car"})[0] == folder
    refused = {
        "outside sample": _refusal(str(outside / "car"), [root]),
        "dot-dot": _refusal(str(root / "cars" / ".." / ".." / "outside" / "car"), [root]),
        "symlink out": _refusal(str(root / "cars" / "linked"), [root]),
        "system folder": _refusal("/etc", [root]),
        "absent": _refusal(str(root / "cars" / "nope"), [root]),
        "root itself, not a sample": _refusal(str(root), [root]),
        "a file": _refusal(str(root / "cars" / "car" / "meta_data.pkl"), [root]),
    }
    assert len(set(refused.values())) == 1, refused  # nothing tells an absent path from a forbidden one
    assert "no sample folder NAME under the sample folders" in next(iter(refused.values()))
    with pytest.raises(UIError, match="choose a sample folder"):
        open_sample("  ", [root], {})


def test_the_page_open_button_refuses_a_folder_outside_the_roots(editor, roots, tmp_path):
    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from dragsdk.ui.app import build_app

    root, outside = roots
    page = build_app(editor, sample_roots=[root], workdir=tmp_path / "work")
    on_open = next(f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "on_open")
    shown = {getattr(k, "elem_id", None): v for k, v in on_open(str(outside / "car"), Session()).items()}
    assert "no sample folder" in shown["image-msg"] and "canvas" not in shown
    shown = {
        getattr(k, "elem_id", None): v for k, v in on_open(str(root / "cars" / "car"), Session()).items()
    }
    assert "2 point pair(s)" in shown["image-msg"]


def test_a_non_image_or_oversized_upload_gets_a_message_beside_the_image_control(editor, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(UIError, match="notes.png is not an image this page can read") as e:
        load_upload(text, "notes.png", UILimits())
    assert e.value.control == "image"
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)).save(big)
    with pytest.raises(
        UIError, match=r"big.png is 800×600 pixels \(0.5 MP\), over this server's limit of 0.1 MP"
    ):
        load_upload(big, "big.png", UILimits(max_megapixels=0.1))
    with pytest.raises(UIError, match="MB, over this server's limit of 0.01 MB"):
        load_upload(big, "big.png", UILimits(max_upload_mb=0.01))
    assert load_upload(big, "big.png", UILimits()).size == (800, 600)

    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    from dragsdk.ui.app import build_app

    page = build_app(editor, workdir=tmp_path / "work")
    fns = [f for f in page.fns.values() if getattr(f.fn, "__name__", "") == "on_upload"]
    assert len(fns) == 2 and all(f.preprocess is False for f in fns)  # upload and clear
    fn = fns[0]
    # (Gradio's own decoding would end a non-image in a bare "Error": the handler decodes it)
    shown = {
        getattr(k, "elem_id", None): v
        for k, v in fn.fn({"path": str(text), "orig_name": "notes.txt"}, Session(), "drag").items()
    }
    assert (
        "notes.txt is not an image this page can read" in shown["image-msg"] and shown["image-input"] is None
    )
    shown = {
        getattr(k, "elem_id", None): v
        for k, v in fn.fn({"path": str(big), "orig_name": "big.png"}, Session(), "drag").items()
    }
    assert shown["image-msg"].startswith("big.png: 800×600 pixels")


def _spec(img, steps=None, resolution=64):
    s = Session()
    s.set_image(img, "noise")
    add_click(s, "drag", (20, 20))
    add_click(s, "drag", (30, 24))
    mask = np.zeros((48, 64), bool)
    mask[10:40, 10:50] = True  # given, so no mask is proposed (a DIFT pass) before the run
    return build_spec("drag", s, Inputs(prompt="noise", mask=mask, steps=steps, resolution=resolution))


def test_steps_and_resolution_are_capped_on_the_server_before_anything_runs(editor, tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8))
    for spec, limits, field in (
        (_spec(img, steps=500), UILimits(), "steps 500 is over this server's limit of 100"),
        (_spec(img, resolution=1536), UILimits(), "resolution 1536 is over"),
        (_spec(img), UILimits(max_steps=10), "steps 50 is over"),
    ):  # the mode's default
        with pytest.raises(UIError, match=field) as e:
            run_edit(editor, img, spec, tmp_path / "run", limits=limits)
        assert e.value.control == "settings" and "--max-" in e.value.message
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="max_steps must be a positive number"):
        UILimits(max_steps=0)


@pytest.mark.slow
def test_a_run_can_be_cancelled_or_stopped_at_the_time_limit_and_frees_the_slot(editor, tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 64, 3), np.uint8))
    spec = _spec(img, steps=3)
    cancel = threading.Event()
    seen = []

    def press_cancel(i, n):
        seen.append(i)
        cancel.set()  # as the page's Cancel button does, from another thread, during step 1

    with pytest.raises(RunStopped, match="cancelled after sampling step 1/3"):
        run_edit(editor, img, spec, tmp_path / "a", on_step=press_cancel, cancel=cancel)
    assert seen == [0] and not (tmp_path / "a" / "result.png").exists()
    with pytest.raises(
        RunStopped, match="stopped after sampling step 1/3: this server allows 1e-06 s per edit"
    ):
        run_edit(editor, img, spec, tmp_path / "b", limits=UILimits(max_run_seconds=1e-6))
    assert not ui_run._LOCK.locked()  # the slot is free again

    ui_run._LOCK.acquire()  # another client's edit holds the slot
    try:
        with pytest.raises(UIError, match="another edit is still running") as e:
            run_edit(editor, img, spec, tmp_path / "c", limits=UILimits(max_run_seconds=0.05))
        assert e.value.control == "run"
    finally:
        ui_run._LOCK.release()

    control = RunControl()
    assert control.cancel("tab") is False
    ev = control.start("tab")
    assert control.cancel("tab") is True and ev.is_set()
    control.finish("tab", ev)
    assert control.cancel("tab") is False


def test_the_ui_command_offers_the_limit_flags():
    res = CliRunner().invoke(cli_app, ["ui", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for opt in (
        "--max-steps",
        "--max-resolution",
        "--max-upload-mb",
        "--max-megapixels",
        "--max-run-seconds",
        "--queue-size",
    ):
        assert opt in res.output, opt


def test_brushed_layers_follow_the_one_mask_rule():
    """A faint stroke (alpha 40 of 255) is outside, a firm one (alpha 200) inside, as for every other mask
    (dragsdk.io.load_mask, threshold 0.5); an opaque layer is judged by its brightest channel."""
    from dragsdk.ui.state import mask_from_layers

    layer = np.zeros((8, 8, 4), np.uint8)
    layer[0:4, :, 3] = 40
    layer[4:8, :, 3] = 200
    m = mask_from_layers([layer], (8, 8))
    assert m is not None and not m[:4].any() and m[4:].all()
    opaque = np.full((8, 8, 4), 255, np.uint8)
    opaque[..., :3] = 0
    opaque[:, :2, 0] = 255
    m = mask_from_layers([opaque], (8, 8))
    assert m is not None and m[:, :2].all() and not m[:, 2:].any()


def test_an_upload_is_decoded_as_viewers_show_it(tmp_path):
    """EXIF orientation is honoured (a phone photo rotated by its tag) and 16-bit images are scaled."""
    from dragsdk.ui.state import UILimits, load_upload

    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_upload(tmp_path / "phone.jpg", "phone.jpg", UILimits()).size == (20, 40)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(load_upload(tmp_path / "deep.png", "deep.png", UILimits())).min() == 255
