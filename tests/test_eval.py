"""dragsdk.eval: dataset loaders, metrics against hand computations, the DIFT extractor, and resumable bench runs."""

import atexit
import functools
import json
import math
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.eval import (
    DIFT,
    BenchConfig,
    ImageFidelity,
    MetricUnavailable,
    ResultsLog,
    comparable,
    dai_all,
    detect_format,
    discover,
    drag_accuracy_index,
    fidelity_in_out,
    iter_samples,
    lpips_status,
    mean_distance_dragdiffusion,
    mean_distance_regiondrag,
    psnr,
    run_bench,
    ssim,
)
from dragsdk.eval.bench import format_table
from dragsdk.io import mask_to_data_url

from .conftest import EXAMPLE_SAMPLE, SHARED_DATA

DRAGBENCH = SHARED_DATA / "DragBench"
DRAG100 = SHARED_DATA / "Drag100"
needs_shared = pytest.mark.skipif(not DRAGBENCH.is_dir(), reason="../shared/data is not beside the checkout")

# -- datasets -------------------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("root, fmt, count", [(DRAGBENCH, "dragbench", 20), (DRAG100, "drag100", 10)])
def test_every_loader_reads_every_shared_sample(root, fmt, count):
    errors = []
    samples = list(iter_samples(root, on_error=lambda ref, why: errors.append((ref.id, why))))
    assert errors == [] and len(samples) == count and detect_format(root) == fmt
    sizes = {s.image.size for s in samples}
    assert any(w != h for w, h in sizes), "expected non-square images"
    assert max(len(s.meta["points"]) for s in samples) >= 2, "expected samples with several pairs"
    for sid, image, spec, meta in samples:
        w, h = image.size
        assert spec["mode"] == "drag" and meta["dataset"] == fmt and sid
        assert meta["mask"].shape == (h, w) and meta["mask"].any()
        assert len(spec["points"]) == len(meta["points"]) >= 1
        assert all(0 <= x < w and 0 <= y < h for pair in meta["points"] for x, y in pair)
    if fmt == "dragbench":
        assert {s.meta["category"] for s in samples} == {p.name for p in root.iterdir() if p.is_dir()}
        assert all(s.meta["prompt"] for s in samples)


def _region_dataset(tmp_path, name="DragBench-SR"):
    """Two DragBench samples with a meta_data_region.pkl each (dense pairs, a mask), as DragBench-SR/DR ship."""
    root = tmp_path / name
    for k, src in enumerate([EXAMPLE_SAMPLE, EXAMPLE_SAMPLE]):
        dst = root / "cat" / f"s{k}"
        shutil.copytree(src, dst)
        w, h = Image.open(dst / "original_image.png").size
        mask = np.zeros((h, w), np.uint8)
        mask[100:200, 100:300] = 1
        dense = [
            [120.0 + k, 120.0],
            [160.0, 130.0],
            [128.0, 120.0],
            [168.0, 130.0],
            [136.0, 124.0],
            [176.0, 134.0],
        ]
        with open(dst / "meta_data_region.pkl", "wb") as f:
            pickle.dump({"prompt": "a car", "points": dense, "mask": mask}, f)
    return root


def test_region_datasets_drive_with_dense_points_and_score_with_sparse_ones(tmp_path):
    root = _region_dataset(tmp_path)
    assert (
        detect_format(root) == "dragbench-sr"
        and detect_format(_region_dataset(tmp_path, "DR")) == "dragbench-dr"
    )
    samples = list(iter_samples(root))
    assert [s.id for s in samples] == ["cat/s0", "cat/s1"]
    s = samples[0]
    assert s.spec["mode"] == "region-drag" and len(s.spec["dense_points"]) == 6
    assert s.spec["dense_points"][0] == [120.0, 120.0]
    assert len(s.meta["points"]) == 2  # the sparse pairs of meta_data.pkl score the edit
    assert s.meta["mask"][150, 150] and not s.meta["mask"][0, 0]


def test_plain_folder_of_specs_and_images(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((80, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "pic.jpg")
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 20:80] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    (tmp_path / "a.json").write_text(
        json.dumps(
            {"mode": "drag", "points": [[[30, 30], [50, 40]]], "mask": "a_mask.png", "category": "toys"}
        )
    )
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.json").write_text(
        json.dumps(
            {
                "mode": "region-drag",
                "image": "../pic.jpg",
                "polygons": [
                    [[[10, 10], [30, 10], [30, 30], [10, 30]], [[20, 10], [40, 10], [40, 30], [20, 30]]]
                ],
                "eval_points": [[[20, 20], [30, 20]]],
            }
        )
    )
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "noimage.json").write_text(json.dumps({"mode": "drag", "points": [[[1, 1], [2, 2]]]}))
    errors = []
    samples = {s.id: s for s in iter_samples(tmp_path, on_error=lambda r, why: errors.append(r.id))}
    assert detect_format(tmp_path) == "folder" and sorted(errors) == ["broken", "noimage"]
    a, b = samples["a"], samples["more/b"]
    assert a.meta["category"] == "toys" and a.image.size == (128, 96) and a.meta["mask"][30, 30]
    assert a.spec["mask"] == str(tmp_path / "a_mask.png") and a.meta["points"] == [
        [[30.0, 30.0], [50.0, 40.0]]
    ]
    assert (
        b.image.size == (80, 80)
        and b.spec["mode"] == "region-drag"
        and b.meta["points"] == [[[20, 20], [30, 20]]]
    )
    assert b.meta["category"] == "more" and "image" not in b.spec and "eval_points" not in b.spec


def test_broken_samples_are_reported_and_skipped(tmp_path):
    root = tmp_path / "bench"
    for name in ("good", "evil", "noimage", "offimage"):
        shutil.copytree(EXAMPLE_SAMPLE, root / "cat" / name)
    with open(root / "cat/evil/meta_data.pkl", "wb") as f:
        f.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run os.system
    (root / "cat/noimage/original_image.png").unlink()
    (root / "cat/noimage/user_drag.png").rename(root / "cat/noimage/other.png")
    with open(root / "cat/offimage/meta_data.pkl", "wb") as f:
        pickle.dump(
            {"prompt": "p", "points": [[10, 10], [900, 10]], "mask": np.ones((384, 512), np.uint8)}, f
        )
    errors = {}
    found = [s.id for s in iter_samples(root, on_error=lambda r, why: errors.__setitem__(r.id, why))]
    assert found == ["cat/good"] and len(discover(root)) == 4  # noimage is still discovered (meta_data.pkl)
    assert "UnsafePickleError" in errors["cat/evil"] and "os.system" not in str(errors.get("cat/good"))
    assert "original_image.png: missing" in errors["cat/noimage"]
    assert "points[0].target" in errors["cat/offimage"]
    with pytest.warns(UserWarning, match="skipped sample cat/evil"):
        assert len(list(iter_samples(root))) == 1


# -- metrics: MD with features that make the match exact ------------------------------------------------------


def _unique_colour_image(w=96, h=64, seed=0):
    """Every pixel a different colour, so a per-pixel feature identifies the pixel exactly."""
    codes = np.random.default_rng(seed).choice(2**24, size=w * h, replace=False)
    rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8)
    return rgb.reshape(h, w, 3)


_PROJ = torch.randn(32, 3, generator=torch.Generator().manual_seed(1)) * 40.0
_PHASE = torch.rand(32, 1, 1, generator=torch.Generator().manual_seed(2)) * 6.28


def exact_features(image, prompt=""):
    """Random Fourier features of each pixel's colour: cosine 1 exactly for the same colour, < 1 otherwise."""
    return torch.cos(torch.einsum("dc,bchw->bdhw", _PROJ, image.float()) + _PHASE)


def _shift(img, dx, dy):
    return np.roll(img, (dy, dx), axis=(0, 1))


HANDLES = [(40, 30), (60, 20), (20, 45)]


@pytest.mark.parametrize("protocol", ["dragdiffusion", "regiondrag"])
def test_md_is_zero_for_the_original_with_targets_on_handles(protocol):
    img = _unique_colour_image()
    fn = mean_distance_dragdiffusion if protocol == "dragdiffusion" else mean_distance_regiondrag
    r = fn(img, img.copy(), [[h, h] for h in HANDLES], exact_features)
    assert r.value == 0.0 and r.matches == HANDLES and r.protocol == protocol


@pytest.mark.parametrize("protocol", ["dragdiffusion", "regiondrag"])
def test_md_grows_with_a_known_shift_by_its_length(protocol):
    img = _unique_colour_image()
    fn = mean_distance_dragdiffusion if protocol == "dragdiffusion" else mean_distance_regiondrag
    w, h = 96, 64
    # RegionDrag searches discs of radius max(|h−t|/√2, 5) around the handle: the shift must stay inside
    shifts = [(2, 1), (3, 2), (3, -3)] if protocol == "regiondrag" else [(2, 1), (7, -5), (13, 9)]
    values = []
    for dx, dy in shifts:
        edited = _shift(img, dx, dy)
        r = fn(img, edited, [[hp, hp] for hp in HANDLES], exact_features)
        expect = math.hypot(dx, dy) if protocol == "dragdiffusion" else math.hypot(dx / w, dy / h)
        assert r.value == pytest.approx(expect, abs=1e-12)
        assert r.matches == [(x + dx, y + dy) for x, y in HANDLES]
        moved = fn(img, edited, [[hp, (hp[0] + dx, hp[1] + dy)] for hp in HANDLES], exact_features)
        assert moved.value == 0.0  # the content went exactly where it was asked to
        values.append(r.value)
    assert values == sorted(values)


def test_md_regiondrag_search_is_restricted_to_discs_and_normalised():
    img = _unique_colour_image()
    edited = _shift(img, 20, 0)  # the content moved 20 px, far outside a 5 px disc around the handle
    handle = (40, 30)
    r = mean_distance_regiondrag(img, edited, [[handle, handle]], exact_features)
    assert math.hypot(r.matches[0][0] - 40, r.matches[0][1] - 30) < 5  # never the true (far) match
    dd = mean_distance_dragdiffusion(img, edited, [[handle, handle]], exact_features)
    assert dd.matches == [(60, 30)] and dd.value == 20.0
    # a target 20 px away widens the discs (radius 20/√2) but the distance is still divided by (W, H)
    r = mean_distance_regiondrag(img, edited, [[handle, (60, 30)]], exact_features)
    assert r.value == 0.0


def test_md_resizes_an_edited_image_of_another_size():
    img = _unique_colour_image()
    big = np.asarray(Image.fromarray(img).resize((192, 128), Image.Resampling.NEAREST))
    r = mean_distance_dragdiffusion(img, big, [[(40, 30), (40, 30)]], exact_features)
    back = np.asarray(
        Image.fromarray(big).resize((96, 64), Image.Resampling.BILINEAR)
    )  # what the protocol does
    assert r == mean_distance_dragdiffusion(img, back, [[(40, 30), (40, 30)]], exact_features)


def test_md_refuses_points_off_the_image():
    img = _unique_colour_image()
    with pytest.raises(ValueError, match=r"handle\[0\]"):
        mean_distance_dragdiffusion(img, img, [[(200, 30), (40, 30)]], exact_features)
    with pytest.raises(ValueError, match="pairs must be"):
        mean_distance_regiondrag(img, img, [], exact_features)


# -- the DIFT extractor ---------------------------------------------------------------------------------------


def test_dift_protocol_defaults_and_settings(tiny_model):
    d = DIFT(tiny_model)
    assert d.settings() == {
        "model": "tiny",
        "timestep": 261,
        "up_block": 1,
        "ensemble": 8,
        "prompt": None,
        "seed": 42,
        "latent": "sample",
    }
    assert DIFT().model_name == "stabilityai/stable-diffusion-2-1"
    img = Image.fromarray(_unique_colour_image(128, 96))
    f = DIFT(tiny_model, ensemble=2)(img, "a prompt")
    # up_blocks[1] of the tiny UNet: 64 channels at 1/16 of the image
    assert f.shape == (1, 64, 6, 8) and f.dtype == torch.float32
    same = DIFT(tiny_model, ensemble=2, batch_size=1)(img, "a prompt")
    torch.testing.assert_close(f, same, rtol=1e-4, atol=1e-5)  # batching the ensemble changes nothing
    assert torch.equal(f, DIFT(tiny_model, ensemble=2)(img, "a prompt"))  # seeded: the same every call
    assert not torch.allclose(f, DIFT(tiny_model, ensemble=2, timestep=600)(img, "a prompt"))
    assert not torch.allclose(f, DIFT(tiny_model, ensemble=2, latent="mode")(img, "a prompt"))
    fixed = DIFT(tiny_model, ensemble=2, prompt="a prompt")
    assert torch.equal(fixed(img, "ignored"), f)
    assert DIFT(tiny_model, ensemble=1, up_block=2)(img).shape[1] == 64
    with pytest.raises(ValueError, match="timestep"):
        DIFT(tiny_model, timestep=1000)


def test_md_with_tiny_dift_finds_the_handle_in_the_unedited_image(tiny_model):
    img = np.asarray(Image.open(EXAMPLE_SAMPLE / "original_image.png").convert("RGB"))
    d = DIFT(tiny_model, ensemble=1)
    r = mean_distance_dragdiffusion(
        img, img.copy(), [[(200, 150), (200, 150)], [(300, 100), (300, 100)]], d, "a car"
    )
    assert r.value <= 1.0 and len(r.distances) == 2  # identical features: the match is the handle


# -- PSNR / SSIM / DAI ----------------------------------------------------------------------------------------


def test_psnr_and_ssim_inside_and_outside_the_mask():
    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 10:30] = True
    assert psnr(img, img.copy(), mask, "outside") == math.inf
    assert psnr(img, img.copy(), mask, "outside", cap_db=100.0) == 100.0
    assert ssim(img, img.copy(), mask, "outside") == 1.0
    edited = img.copy()
    edited[mask] = 255 - edited[mask]
    out = fidelity_in_out(img, edited, mask)
    assert out["psnr_outside"] == 100.0 and out["psnr_inside"] < 10
    assert out["ssim_inside"] < 0.5 < out["ssim_outside"] < 1.0  # windows near the border see the change
    d = (img[mask].astype(float) - edited[mask].astype(float)) / 255.0
    assert out["psnr_inside"] == pytest.approx(10 * math.log10(1 / np.mean(d**2)))
    assert psnr(img, edited, np.ones((40, 50), bool), "outside") is None  # nothing outside a full mask
    with pytest.raises(ValueError, match="mask"):
        psnr(img, edited, np.ones((5, 5), bool), "inside")
    with pytest.raises(ValueError, match="resize"):
        psnr(img, edited[:20], mask, "inside")


def test_dai_matches_a_hand_computation_without_the_double_division():
    rng = np.random.default_rng(1)
    a = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    b = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    pairs = [[(10, 12), (20, 15)], [(5, 5), (30, 20)]]

    def hand(radius):
        total = 0.0
        for (hx, hy), (tx, ty) in pairs:
            pa = a[hy - radius : hy + radius + 1, hx - radius : hx + radius + 1] / 255.0
            pb = b[ty - radius : ty + radius + 1, tx - radius : tx + radius + 1] / 255.0
            total += np.sum((pa - pb) ** 2) / (2 * radius + 1) ** 2
        return total / len(pairs)  # GoodDrag divides by len(pairs) a second time

    assert drag_accuracy_index(a, b, pairs, 1) == pytest.approx(hand(1))
    assert drag_accuracy_index(a, b, pairs, 4) == pytest.approx(hand(4))
    assert drag_accuracy_index(a, a, [[(10, 12), (10, 12)]], 5) == 0.0
    # at the border the patch keeps the offsets inside the image and divides by their count
    near = drag_accuracy_index(a, b, [[(0, 0), (0, 0)]], 1)
    assert near == pytest.approx(np.sum((a[:2, :2] / 255.0 - b[:2, :2] / 255.0) ** 2) / 4)
    assert set(dai_all(a, b, pairs)) == {"dai_1", "dai_5", "dai_10", "dai_20"}


# -- IF (LPIPS) -----------------------------------------------------------------------------------------------

LPIPS_OK, LPIPS_WHY = lpips_status()


@pytest.mark.skipif(not LPIPS_OK, reason=f"lpips cannot import here: {LPIPS_WHY}")
def test_image_fidelity_is_one_for_identical_images():
    img = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    try:
        fid = ImageFidelity()
        assert fid(img, img.copy()) == pytest.approx(1.0, abs=1e-6)
        assert fid(img, 255 - img) < 0.9
    except MetricUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.skipif(LPIPS_OK, reason="lpips imports here")
def test_image_fidelity_says_why_it_cannot_run():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(MetricUnavailable, match="lpips"):
        ImageFidelity()(img, img)


# -- bench ----------------------------------------------------------------------------------------------------

BENCH_SETTINGS = dict(
    model="tiny",
    steps=4,
    resolution=128,
    dift_model="tiny",
    dift_ensemble=1,
    metrics=("md", "dai", "psnr_ssim", "if"),
)


def _bench_root():
    """The shared DragBench, or (a checkout without ../shared/data) three brightened copies of the example sample laid
    out as DragBench: the resume and kill tests need at least three samples."""
    return DRAGBENCH if DRAGBENCH.is_dir() else _example_dataset()


@functools.cache
def _example_dataset():
    root = Path(tempfile.mkdtemp(prefix="dragsdk-bench-"))
    atexit.register(shutil.rmtree, root, True)
    for k in range(3):
        folder = root / "examples" / f"car-{k}"
        shutil.copytree(EXAMPLE_SAMPLE, folder)
        image = folder / "original_image.png"  # three different images: no edit reuses another's inversion
        pixels = np.asarray(Image.open(image).convert("RGB"), np.int16)
        Image.fromarray(np.clip(pixels + 9 * k, 0, 255).astype(np.uint8)).save(image)
    return root


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-full")
    result = run_bench(BenchConfig(_bench_root(), out, limit=3, **BENCH_SETTINGS), progress=False, echo=None)
    return result


@pytest.mark.slow
def test_bench_writes_results_summary_plots_and_report(uninterrupted):
    r, out = uninterrupted, uninterrupted.out
    assert r.ran == len(r.records) == min(3, len(discover(_bench_root()))) and r.skipped == 0
    assert r.workers == [{"pid": r.workers[0]["pid"], "model_loads": 1, "samples": r.ran}]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [x.id for x in discover(_bench_root())[:3]]
    rec = r.records[0]
    assert rec["status"] == "ok" and rec["mode"] == "drag" and rec["spec"]["sampler"]["steps"] == 4
    assert set(rec["phase_seconds"]) == {"encode", "invert", "sample", "decode"}
    assert rec["unet_evaluations"]["forward"] > 0 and rec["peak_memory_bytes"] > 0
    m = rec["metrics"]
    assert {"md", "md_pairs", "dai_1", "dai_20", "psnr_inside", "ssim_outside"} <= set(m)
    assert len(m["md_pairs"]) == len(rec["points"]) and len(rec["matches"]["md"]) == len(rec["points"])
    if not LPIPS_OK:
        assert "lpips" in rec["metric_notes"]["if"] and "if" in r.summary["unavailable"]
    for key in ("edited", "original", "arrows"):
        assert (out / rec["files"][key]).is_file()
    assert Image.open(out / rec["files"]["edited"]).size == tuple(rec["image_size"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["samples"] == len(r.records) and summary["all"]["md"] is not None
    assert summary["all"]["pairs"] == sum(len(x["points"]) for x in r.records)
    assert set(summary["categories"]) == {x["category"] for x in r.records}
    assert (out / "summary.txt").read_text().startswith("category")
    assert {p for p in r.paths["plots"]} == {"plots/metrics.png", "plots/phases.png"}
    for p in r.paths["plots"]:
        assert Image.open(out / p).format == "PNG"
    html = (out / "report.html").read_text()
    assert html.count("<div class='sample'>") == len(r.records)
    for x in r.records:
        assert all(x["files"][k] in html for k in ("original", "edited", "arrows"))


@pytest.mark.slow
def test_bench_killed_part_way_and_resumed_writes_the_same_jsonl(uninterrupted, tmp_path):
    cfg = BenchConfig(_bench_root(), tmp_path, limit=3, **BENCH_SETTINGS)

    def kill_after_first(rec):
        raise _Stop

    with pytest.raises(_Stop):
        run_bench(cfg, progress=False, echo=None, on_record=kill_after_first)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    seen = []
    resumed = run_bench(cfg, progress=False, echo=None, on_record=lambda rec: seen.append(rec["id"]))
    first = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["id"]
    assert resumed.skipped == 1 and resumed.ran == len(seen) == len(uninterrupted.records) - 1
    assert first not in seen  # no sample edited twice
    mine = [comparable(json.loads(x)) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    full = [comparable(json.loads(x)) for x in (uninterrupted.out / "results.jsonl").read_text().splitlines()]
    assert mine == full
    # a third run has nothing left to do
    again = run_bench(cfg, progress=False, echo=None)
    assert again.ran == 0 and again.skipped == len(full)


@pytest.mark.slow
def test_bench_drops_a_line_cut_short_by_a_kill(uninterrupted, tmp_path):
    cfg = BenchConfig(_bench_root(), tmp_path, limit=2, **BENCH_SETTINGS)
    full = (uninterrupted.out / "results.jsonl").read_text().splitlines()
    shutil.copy(uninterrupted.out / "run.json", tmp_path / "run.json")
    (tmp_path / "results.jsonl").write_text(full[0] + "\n" + full[1][:40])  # killed while writing line 2
    resumed = run_bench(cfg, progress=False, echo=None)
    assert resumed.ran == 1 and resumed.skipped == 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [comparable(json.loads(x)) for x in lines] == [comparable(json.loads(x)) for x in full[:2]]


@pytest.mark.slow
def test_bench_refuses_to_resume_with_other_settings(uninterrupted):
    with pytest.raises(SpecError, match="steps: 4 → 5"):
        run_bench(
            BenchConfig(_bench_root(), uninterrupted.out, limit=3, **{**BENCH_SETTINGS, "steps": 5}),
            progress=False,
            echo=None,
        )


def test_results_log_appends_whole_lines(tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append({"id": "a", "metrics": {"psnr": float("inf")}, "x": np.float32(1.5)})
    log.append({"id": "b"})
    assert [r["id"] for r in log.read()] == ["a", "b"]
    assert log.read()[0]["metrics"]["psnr"] is None and log.read()[0]["x"] == 1.5  # strict JSON


def _tiny_folder_dataset(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    root.mkdir()
    for k in range(2):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(root / f"im{k}.png")
        mask = np.zeros((96, 128), np.uint8)
        mask[20:70, 30:100] = 1
        spec = {
            "mode": "drag",
            "prompt": "noise",
            "points": [[[50, 40], [70, 45]]],
            "mask": mask_to_data_url(mask),
        }
        (root / f"im{k}.json").write_text(json.dumps(spec))
    (root / "bad.json").write_text(
        json.dumps({"mode": "drag", "image": "im0.png", "points": [[[1, 1], [999, 1]]]})
    )
    return root


def test_bench_reports_absent_weights_and_broken_samples_and_goes_on(tmp_path):
    root = _tiny_folder_dataset(tmp_path)
    messages = []
    cfg = BenchConfig(
        root,
        tmp_path / "out",
        model="tiny",
        steps=4,
        resolution=128,
        dift_model=str(tmp_path / "no-such-model"),
    )
    r = run_bench(cfg, progress=False, echo=messages.append)
    by_id = {x["id"]: x for x in r.records}
    assert by_id["bad"]["status"] == "error" and "points[0].target" in by_id["bad"]["error"]
    ok = by_id["im0"]
    assert ok["status"] == "ok" and "dai_1" in ok["metrics"] and "psnr_inside" in ok["metrics"]
    for name in ("md", "md_regiondrag"):
        assert "weights are absent" in ok["metric_notes"][name] and name not in ok["metrics"]
    assert "weights are absent" in r.summary["unavailable"]["md"] and "bad" in r.summary["errors"]
    text = "\n".join(messages)
    assert "weights are absent" in text and "sample bad skipped" in text and "category" in text
    assert "—" in format_table(r.summary)


def test_bench_with_an_injected_feature_function_and_region_drag_mode(tmp_path):
    root = _region_dataset(tmp_path)
    r = run_bench(
        BenchConfig(
            root, tmp_path / "out", steps=4, resolution=128, limit=1, metrics=("md", "md_regiondrag")
        ),
        progress=False,
        echo=None,
        features=exact_features,
    )
    (rec,) = r.records
    assert rec["status"] == "ok" and rec["mode"] == "region-drag" and len(rec["spec"]["dense_points"]) == 6
    assert rec["metrics"]["md"] >= 0 and rec["metrics"]["md_regiondrag"] >= 0
    r2 = run_bench(
        BenchConfig(root, tmp_path / "out2", mode="drag", steps=4, resolution=128, limit=1, metrics=("dai",)),
        progress=False,
        echo=None,
    )
    assert r2.records[0]["mode"] == "drag" and len(r2.records[0]["spec"]["points"]) == 2
    # a point-drag sample run as region drag: its pairs become polygon pairs
    r3 = run_bench(
        BenchConfig(
            EXAMPLE_SAMPLE, tmp_path / "out3", mode="region-drag", steps=4, resolution=128, metrics=("dai",)
        ),
        progress=False,
        echo=None,
    )
    assert r3.records[0]["mode"] == "region-drag" and len(r3.records[0]["spec"]["polygons"]) == 2
    assert r3.records[0]["unet_evaluations"]["backward"] == 0


def test_cli_bench(tmp_path):
    root = _tiny_folder_dataset(tmp_path)
    out = tmp_path / "out"
    args = [
        "bench",
        str(root),
        "--out",
        str(out),
        "--limit",
        "2",
        "--steps",
        "4",
        "--resolution",
        "128",
        "--metrics",
        "dai,psnr_ssim",
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "category" in res.output and "2 sample(s) run, 0 already done" in res.output
    assert "sample bad skipped" in res.output and (out / "edited/im0.png").is_file()
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "0 sample(s) run, 2 already done" in res.output
    res = CliRunner().invoke(app, ["bench", str(root), "auto", "--out", str(out)])
    assert res.exit_code == 2 and "after --ray" in res.output
    res = CliRunner().invoke(app, ["bench", str(root), "--out", str(out), "--metrics", "nope"])
    assert res.exit_code == 2 and "metrics" in res.output
