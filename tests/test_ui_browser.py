"""End to end in a real browser: Debian's Chromium driven by Playwright (nothing downloaded) against `dragsdk ui`'s
page served on 127.0.0.1 with the tiny model.

Upload a DragBench photograph, click a handle and a target on the (scaled-down) image, brush the editable mask,
run; the result appears at the input's size, the downloaded spec has the clicked points in image pixels and the
brushed mask where it was brushed, a second run reuses the inversion, invalid input is a message beside its control,
and the downloaded spec gives the same pixels from the CLI. ``DRAGSDK_UI_SCREENSHOT=path`` saves the page after the
edit (docs/ui.png is made so).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import EXAMPLE_SAMPLE, SHARED_DATA

CHROMIUM = os.environ.get("DRAGSDK_CHROMIUM", "/usr/bin/chromium")
# The flags the machine's probe used: no sandbox as root, no GPU, no network chatter from the browser itself.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 240_000

try:
    import gradio  # noqa: F401

    _gradio = ""
except ImportError as e:
    _gradio = f"gradio is not installed (pip install 'dragsdk[ui]'): {e}"
try:
    from playwright.sync_api import sync_playwright
except ImportError as e:
    _playwright = f"playwright is not installed (pip install playwright): {e}"
else:
    _playwright = ""
_chromium = (
    ""
    if (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK))
    else (f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
)

pytestmark = [
    pytest.mark.slow,  # a browser per test: make test-fast skips the module
    pytest.mark.skipif(
        bool(_gradio or _playwright or _chromium), reason=_gradio or _playwright or _chromium or "ready"
    ),
]


def _sample() -> Path:
    folder = SHARED_DATA / "DragBench/building_city_view/YAN_2023-09-15-2231-44"
    return folder if folder.is_dir() else EXAMPLE_SAMPLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(editor, tmp_path_factory):
    from dragsdk.ui.app import build_app, launch

    page = build_app(
        editor,
        sample_roots=[EXAMPLE_SAMPLE.parent],
        steps=4,
        resolution=128,
        workdir=tmp_path_factory.mktemp("ui-runs"),
    )
    port = _free_port()
    launch(page, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()


@pytest.fixture
def browser_page(tmp_path):
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
            accept_downloads=True,
        )
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def _image_geometry(page, selector: str) -> tuple[float, float, float, tuple[int, int]]:
    """Left, top and scale of the picture drawn by an <img> with object-fit (contain / scale-down), and its
    natural size: a page point is ``(left + x·scale, top + y·scale)`` for the image position ``(x, y)``."""
    img = page.locator(selector)
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    nat = page.evaluate(
        f"() => {{ const i = document.querySelector('{selector}'); "
        "return [i.naturalWidth, i.naturalHeight]; }"
    )
    fit = page.evaluate(f"() => getComputedStyle(document.querySelector('{selector}')).objectFit")
    r = min(box["width"] / nat[0], box["height"] / nat[1])
    if fit == "scale-down":
        r = min(r, 1.0)
    left = box["x"] + (box["width"] - nat[0] * r) / 2
    top = box["y"] + (box["height"] - nat[1] * r) / 2
    return left, top, r, (nat[0], nat[1])


def _download_json(page, selector: str, tmp_path: Path) -> dict:
    with page.expect_download() as info:
        page.click(selector)
    dest = tmp_path / info.value.suggested_filename
    info.value.save_as(dest)
    return json.loads(dest.read_text())


def _slots(page) -> dict[str, str]:
    """Every message slot's text (what a failing wait shows)."""
    return {
        s: page.inner_text(s)
        for s in ("#image-msg", "#points-msg", "#mask-msg", "#reference-msg", "#settings-msg", "#run-msg")
    }


def _wait_text(page, selector: str, text: str, timeout: float = 60_000) -> None:
    """Wait until ``selector``'s text contains ``text``; on timeout, fail showing every message slot."""
    try:
        page.wait_for_function(
            f"() => (document.querySelector({json.dumps(selector)}) || {{innerText: ''}})"
            f".innerText.includes({json.dumps(text)})",
            timeout=timeout,
        )
    except Exception as e:  # playwright's TimeoutError
        raise AssertionError(f"{selector} never showed {text!r}: {_slots(page)}") from e


def _wait_result(page) -> None:
    """Wait for the result image; on timeout, fail showing every message slot (an error beside a control, not a
    slow run, is what usually keeps the result away)."""
    try:
        page.wait_for_function(
            "() => { const i = document.querySelector('#result img'); "
            "return i && i.complete && i.naturalWidth > 0; }",
            timeout=RUN_TIMEOUT_MS,
        )
    except Exception as e:  # playwright's TimeoutError
        raise AssertionError(f"no result image after {RUN_TIMEOUT_MS / 1000:.0f} s: {_slots(page)}") from e


def _click(page, x: float, y: float, expect: str) -> None:
    """Click the click view and wait for its message and for the redrawn image to load (a click on an image that
    is still loading has no pixel position, so Gradio sends none)."""
    page.mouse.click(x, y)
    _wait_text(page, "#points-msg", expect)
    page.wait_for_function(
        "() => { const i = document.querySelector('#canvas img'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )


def _mask(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L")) > 127


def _no_trace(page) -> None:
    text = page.inner_text("body")
    assert "Traceback" not in text and 'File "' not in text


def test_edit_in_the_browser_end_to_end(server, browser_page, tmp_path):
    page = browser_page
    sample = _sample()
    photo = Image.open(sample / "original_image.png")
    page.goto(server)
    page.wait_for_selector("#run")

    # upload the photograph
    page.set_input_files("#image-input input[type=file]", str(sample / "original_image.png"))
    page.wait_for_function(
        "() => { const i = document.querySelector('#canvas img'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )
    assert f"{photo.size[0]}×{photo.size[1]}" in page.inner_text("#image-msg")
    page.locator("#prompt textarea").fill("a black car on a cobbled street")

    # click a handle and a target on the image, which the page draws smaller than its pixels
    left, top, r, natural = _image_geometry(page, "#canvas img")
    assert natural == photo.size
    assert r < 0.95, f"the click view is not scaled down (scale {r:.2f}): the test would not cover it"
    clicks = [(131, 264), (200, 313)]
    for k, (x, y) in enumerate(clicks):
        _click(
            page, left + (x + 0.5) * r, top + (y + 0.5) * r, "now click its target" if k == 0 else "1 pair"
        )
    tol = 1.0 / r + 1.0  # one screen pixel is 1/r image pixels

    # brush the editable mask: the brush tool, then a stroke across the middle of the editor's canvas
    page.locator("#mask-editor canvas").first.scroll_into_view_if_needed()
    page.click("#mask-editor button[aria-label=Brush]")
    cb = page.locator("#mask-editor canvas").first.bounding_box()
    cx, cy = cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] / 2
    zoom_text = page.locator("#mask-editor").inner_text()
    zoom = re.search(r"(\d+)%", zoom_text)
    page.mouse.move(cx - 80, cy + 20)
    page.mouse.down()
    for k in range(17):
        page.mouse.move(cx - 80 + 10 * k, cy + 20, steps=2)
    page.mouse.up()

    # run: the result appears at the input's size, with the report
    page.click("#run")
    _wait_result(page)
    _wait_text(page, "#run-msg", "done in", RUN_TIMEOUT_MS)
    size = page.evaluate(
        "() => { const i = document.querySelector('#result img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert tuple(size) == photo.size
    report = page.inner_text("#report")
    assert "Backend eager" in report and "invert" in report and "sample" in report
    assert "Image inverted" in report
    _no_trace(page)
    shot = os.environ.get("DRAGSDK_UI_SCREENSHOT")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if shot:
        shutil.copyfile(tmp_path / "page.png", shot)

    # the downloaded spec: the clicked points in image pixels, the brushed mask where it was brushed
    spec = _download_json(page, "#download-spec", tmp_path)
    assert (
        spec["mode"] == "drag"
        and len(spec["points"]) == 1
        and spec["prompt"] == "a black car on a cobbled street"
    )
    got = [spec["points"][0]["handle"], spec["points"][0]["target"]]
    for (x, y), (gx, gy) in zip(clicks, got, strict=True):
        assert abs(gx - x) <= tol and abs(gy - y) <= tol, (clicks, got, r)
    mask = _mask(spec["mask"])
    assert mask.shape == (photo.size[1], photo.size[0]) and mask.any()
    ys, xs = np.nonzero(mask)
    if zoom:  # the editor centres the image at this zoom: the stroke's centre is known in image pixels
        z = int(zoom.group(1)) / 100
        ex, ey = photo.size[0] / 2, photo.size[1] / 2 + 20 / z
        assert abs(xs.mean() - ex) < 20 and abs(ys.mean() - ey) < 20, (xs.mean(), ys.mean(), ex, ey)
    with page.expect_download() as info:
        page.click("#download-result")
    info.value.save_as(tmp_path / "result.png")
    assert Image.open(tmp_path / "result.png").size == photo.size

    # the same spec from the CLI gives the same pixels
    from typer.testing import CliRunner

    from dragsdk.cli import app as cli_app

    (tmp_path / "spec.json").write_text(json.dumps(spec))  # the spec as downloaded
    res = CliRunner().invoke(
        cli_app,
        [
            "edit",
            str(sample / "original_image.png"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--out",
            str(tmp_path / "cli.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")).astype(int)
    b = np.asarray(Image.open(tmp_path / "result.png").convert("RGB")).astype(int)
    assert np.abs(a - b).max() == 0

    # a second edit of the same image, another target: the inversion is reused and the page says so
    page.locator("#canvas img").scroll_into_view_if_needed()
    page.click("#undo")
    _wait_text(page, "#points-msg", "now click its target")
    left, top, r, _ = _image_geometry(page, "#canvas img")
    _click(page, left + 230.5 * r, top + 300.5 * r, "1 pair")
    page.click("#run")
    _wait_text(page, "#report", "Inversion reused", RUN_TIMEOUT_MS)
    assert "inversion reused" in page.inner_text("#run-msg")
    spec2 = _download_json(page, "#download-spec", tmp_path / "second")
    assert abs(spec2["points"][0]["target"][0] - 230) <= tol
    assert spec2["points"][0]["handle"] == spec["points"][0]["handle"]
    assert np.array_equal(_mask(spec2["mask"]), mask)  # the brushed mask is read again, unchanged

    # invalid input: a message beside the control, never a stack trace
    page.click("#clear")
    _wait_text(page, "#points-msg", "cleared")
    page.click("#run")
    _wait_text(page, "#points-msg", "no points")
    assert page.inner_text("#run-msg").strip() == ""
    page.locator("#mode label", has_text="move").click()
    _wait_text(page, "#mode-help", "object")
    page.click("#run")
    _wait_text(page, "#mask-msg", "empty")
    _no_trace(page)


def test_open_a_sample_folder(server, browser_page):
    page = browser_page
    page.goto(server)
    page.wait_for_selector("#run")
    page.locator("#sample input").fill(str(EXAMPLE_SAMPLE))
    page.keyboard.press("Enter")
    page.click("#open-sample")
    _wait_text(page, "#image-msg", "loaded")
    assert "2 point pair(s) and its mask loaded" in page.inner_text("#image-msg")
    assert page.input_value("#prompt textarea") == "black car on the road"
    _wait_text(page, "#points-msg", "2 pair")
    page.locator("#sample input").fill("/no/such/folder")
    page.keyboard.press("Enter")
    page.click("#open-sample")
    _wait_text(page, "#image-msg", "no sample folder")
    _no_trace(page)


@pytest.fixture(scope="module")
def rotate_server(tiny_model, tmp_path_factory):
    """The page of an editor whose registry holds the rotate example, installed (found through its entry point)."""
    from dragsdk import Editor
    from dragsdk.ui.app import build_app, launch

    from .example_registry import example_registry

    with example_registry(tmp_path_factory.mktemp("site")) as reg:
        page = build_app(
            Editor(tiny_model, registry=reg), steps=2, resolution=128, workdir=tmp_path_factory.mktemp("runs")
        )
        port = _free_port()
        launch(page, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            page.close()


def test_a_third_party_mode_in_the_browser(rotate_server, browser_page, tmp_path):
    """Pick the installed rotate mode, brush the object, type the angle its schema asks for, click where the
    object's centre goes, run a 2-step edit: the downloaded spec is a rotate spec with what was brushed, typed and
    clicked."""
    page = browser_page
    sample = _sample()
    photo = Image.open(sample / "original_image.png")
    page.goto(rotate_server)
    page.wait_for_selector("#run")
    page.set_input_files("#image-input input[type=file]", str(sample / "original_image.png"))
    page.wait_for_function(
        "() => { const i = document.querySelector('#canvas img'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )
    page.locator("#mode label", has_text="rotate").click()
    _wait_text(page, "#mode-help", "angle")
    page.wait_for_selector("#field-rotate-angle textarea", state="visible")  # its schema's box, shown with it
    assert page.locator("#scale").is_visible()
    assert page.locator("#mask-editor").is_visible() and not page.locator("#reference-editor").is_visible()

    # brush the object: a stroke across the middle of the mask editor
    page.locator("#mask-editor canvas").first.scroll_into_view_if_needed()
    page.click("#mask-editor button[aria-label=Brush]")
    cb = page.locator("#mask-editor canvas").first.bounding_box()
    cx, cy = cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    for k in range(13):
        page.mouse.move(cx - 60 + 10 * k, cy, steps=2)
    page.mouse.up()

    # the angle (a box built from the spec's schema: required, -360 to 360), then a click for the object's centre
    page.locator("#field-rotate-angle textarea").fill("30")
    page.keyboard.press("Tab")
    left, top, r, _ = _image_geometry(page, "#canvas img")
    click = (300, 220)
    _click(page, left + (click[0] + 0.5) * r, top + (click[1] + 0.5) * r, "the object's centre goes to")
    _wait_text(page, "#mask-msg", "px brushed")  # the placement preview read the brushed object
    page.click("#run")
    _wait_result(page)
    _wait_text(page, "#run-msg", "done in", RUN_TIMEOUT_MS)
    _no_trace(page)

    spec = _download_json(page, "#download-spec", tmp_path)
    assert spec["mode"] == "rotate" and spec["angle"] == 30.0 and spec["sampler"]["steps"] == 2
    mask = _mask(spec["mask"])
    assert mask.shape == (photo.size[1], photo.size[0]) and mask.any()
    ys, xs = np.nonzero(mask)
    tol = 1.0 / r + 1.0
    # the shift puts the object's centroid (pixel centres) under the clicked pixel's centre
    assert abs(xs.mean() + 0.5 + spec["dx"] - (click[0] + 0.5)) <= tol, (spec["dx"], xs.mean())
    assert abs(ys.mean() + 0.5 + spec["dy"] - (click[1] + 0.5)) <= tol, (spec["dy"], ys.mean())
    with page.expect_download() as info:
        page.click("#download-result")
    info.value.save_as(tmp_path / "result.png")
    assert Image.open(tmp_path / "result.png").size == photo.size
