"""The region-drag mode (RegionDrag, arXiv 2407.18247) and its Cycle-SDE engine path, on the tiny model (CPU)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.attention import AttentionController, self_attention_layers
from dragsdk.cycle_sde import RegionDragGrid, cycle_sde_invert, inversion_generator, reverse_step
from dragsdk.errors import SpecError
from dragsdk.geometry import Canvas
from dragsdk.inversion import DDIMSchedule, UNetCounter
from dragsdk.io import mask_to_data_url
from dragsdk.modes import PlanContext
from dragsdk.plugins.region_drag import RegionDragMode, RegionDragSpec, spec_from_sample

from .conftest import EXAMPLE_SAMPLE, SHARED_DATA, dragbench_samples

FAST = {"resolution": 128}


def _square_mask(size: tuple[int, int], x0: int, y0: int, side: int) -> np.ndarray:
    m = np.zeros((size[1], size[0]), np.uint8)
    m[y0 : y0 + side, x0 : x0 + side] = 1
    return m


def _car():
    """A real non-square DragBench photograph (512×384)."""
    path = SHARED_DATA / "DragBench/building_city_view/YAN_2023-09-15-2231-44"
    return (path if path.is_dir() else EXAMPLE_SAMPLE) / "original_image.png"


# -- Cycle-SDE -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cycle_sde_inversion_then_reverse_steps_return_every_latent(tiny_model):
    """Inverting then sampling with no edit returns the starting latent within 1e-4 (float32), step by step."""
    unet = tiny_model.unet
    schedule = DDIMSchedule(tiny_model.scheduler, 20)
    ctl = AttentionController(
        attend=lambda q, s, scale: q, bank_layers=frozenset()
    )  # no processors installed
    z0 = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    cond = tiny_model.encode_prompt("a car")
    counter = UNetCounter()
    latents, noises = cycle_sde_invert(
        unet, z0, cond, schedule, 10, ctl, set(), counter, inversion_generator(42)
    )
    assert counter.forward == 10 and sorted(noises) == list(range(10, 20))
    assert all(latents[i].numel() == 0 for i in range(10))
    assert schedule.timesteps[10] == 451
    z = latents[10]
    with torch.no_grad():
        for i in range(10, 20):
            eps = unet(z, schedule.timesteps[i], encoder_hidden_states=cond, return_dict=False)[0]
            z = reverse_step(z, eps, schedule.alpha(i), schedule.alpha_prev(i), noises[i])
            torch.testing.assert_close(z, latents[i + 1], rtol=0, atol=1e-5)
    assert (z - z0).abs().max() < 1e-4
    # The forward steps are stochastic (not DDIM): another seed gives another trajectory.
    other, _ = cycle_sde_invert(
        unet, z0, cond, schedule, 10, ctl, set(), UNetCounter(), inversion_generator(7)
    )
    assert (other[10] - latents[10]).abs().max() > 0.1


def test_official_time_grid_lists(tiny_model):
    """The official grid (region_utils/cycle_sde.py:23, drag.py:125-146): DPMSolver timesteps, Δ = 1000 // steps."""
    sched = tiny_model.scheduler
    g = RegionDragGrid(sched, 20, 10)
    assert g.inversion_timesteps[10:] == [550, 500, 450, 400, 350, 300, 250, 200, 150, 100]
    assert g.timesteps[10:] == [549, 500, 450, 400, 350, 300, 250, 200, 150, 100]  # the official off-by-one
    ac = sched.alphas_cumprod.double()
    assert g.clean_alpha == pytest.approx(float(ac[50])) and g.alpha_prev(19) == g.clean_alpha
    assert (g.alpha(10), g.alpha_prev(10)) == (pytest.approx(float(ac[549])), pytest.approx(float(ac[499])))
    assert g.inversion_step(10) == (550, pytest.approx(float(ac[550])), pytest.approx(float(ac[500])))
    r = RegionDragGrid(sched, 20, 10, first_step="recorded")
    assert r.timesteps[10:] == r.inversion_timesteps[10:]
    assert all(r.inversion_step(i)[1:] == (r.alpha(i), r.alpha_prev(i)) for i in range(10, 20))
    # 50 steps, start_t 0.5: Δ = 20; linspace grid round(k·19.98): G[24:] = 519, 500, 480, …, 20
    g50 = RegionDragGrid(sched, 50, 25)
    assert g50.inversion_timesteps[25:] == [520, *range(500, 20, -20)]
    assert g50.timesteps[25:] == [519, *range(500, 20, -20)] and g50.clean_alpha == pytest.approx(
        float(ac[20])
    )
    with pytest.raises(ValueError, match="past the last training timestep"):
        RegionDragGrid(sched, 20, 0)
    assert DDIMSchedule(sched, 20).inversion_step(10) == (
        451,
        DDIMSchedule(sched, 20).alpha(10),
        DDIMSchedule(sched, 20).alpha_prev(10),
    )
    # The plan: int(start_t·steps) inverted steps, the official copy threshold int(end_t·steps) = 4 (every step),
    # the timestep window 200 (8 of the 10 official steps, 6 of the 10 ddim ones).
    corners = [[32, 16], [63, 16], [63, 47], [32, 47]]
    spec = RegionDragSpec(polygons=[[corners, [[x + 80, y + 48] for x, y in corners]]])
    plan = _plan(spec)
    (sp,) = plan.step_pastes
    grid = plan.schedule(sched, 20)
    assert plan.start_step == 10 and plan.schedule_key == "regiondrag-official"
    assert [sp.active(t) for t in grid.timesteps[10:]] == [True] * 10
    plan = _plan(spec.model_copy(update={"copy_window": "timestep"}))
    assert sum(plan.step_pastes[0].active(t) for t in grid.timesteps[10:]) == 8
    plan = _plan(spec.model_copy(update={"start_t": 0.99}))
    assert plan.start_step == 1  # int(0.99·20) = 19 steps: 550 … 999 − never past 999
    plan = _plan(spec.model_copy(update={"profile": "dragsdk"}))
    assert (
        plan.schedule is None
        and sum(plan.step_pastes[0].active(t) for t in DDIMSchedule(sched, 20).timesteps[10:]) == 6
    )


@pytest.mark.slow
def test_null_region_edit_reconstructs_the_encoded_latent_at_twenty_unet_evaluations(tiny_model):
    """On the recorded levels an unedited latent cycles back to z0; the official first step (549 with the noise of
    550) does not, by a small documented amount."""
    same = [[100, 100], [160, 100], [160, 160], [100, 160]]
    spec = RegionDragSpec(
        polygons=[{"handle": same, "target": same}], handle_noise=0.0, sampler=FAST, time_grid="recorded"
    )
    editor = Editor(tiny_model)  # its own cache: the inversion is counted too, whatever ran before
    r = editor.edit(_car(), spec)
    traj = editor.invert(_car(), spec)  # the inversion the edit used (cached)
    assert traj.reused and (r.latent - traj.latents[-1]).abs().max() < 1e-4
    rep = r.report
    assert rep.unet_evaluations == {"forward": 20, "forward_grad": 0, "backward": 0}
    assert rep.steps == 20 and r.image.size == (512, 384) and not rep.energies
    assert set(rep.phase_seconds) == {"encode", "invert", "sample", "decode"}
    assert rep.profile == "official" and "time_grid=recorded" in rep.profile_options
    official_spec = spec.model_copy(update={"time_grid": None})
    official = editor.edit(_car(), official_spec)
    # The same inversion (same grid, same seed; cached under its own key), only the first step's levels differ.
    official_inv = editor.invert(_car(), official_spec)
    assert official_inv.reused and torch.equal(official_inv.latents[10], traj.latents[10])
    assert 1e-4 < (official.latent - traj.latents[-1]).abs().max() < 0.5


# -- the edit --------------------------------------------------------------------------------------------------


OFFICIAL_INVERSION_T = [100, 150, 200, 250, 300, 350, 400, 450, 500, 550]
OFFICIAL_DENOISE_T = [549, 500, 450, 400, 350, 300, 250, 200, 150, 100]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("profile", "inversion_t", "denoise_t", "copied"),
    [
        # official: DPMSolver grid; inversion 50 → 550, denoising 549 → 50; int(0.2·20) = 4 ≤ every t: copies at all.
        ("official", OFFICIAL_INVERSION_T, OFFICIAL_DENOISE_T, OFFICIAL_DENOISE_T),
        # dragsdk: the model's DDIM grid 451 … 1, copy while t ≥ 200.
        (
            "dragsdk",
            [1, 51, 101, 151, 201, 251, 301, 351, 401, 451],
            [451, 401, 351, 301, 251, 201, 151, 101, 51, 1],
            [451, 401, 351, 301, 251, 201],
        ),
    ],
)
def test_timesteps_copy_steps_and_reset_order_of_each_profile(
    tiny_model, profile, inversion_t, denoise_t, copied
):
    w, h = Image.open(_car()).size
    mask = np.zeros((h, w), np.uint8)
    mask[80:272, 48:400] = 1  # covers the handle and target squares, not the image
    spec = RegionDragSpec(
        polygons=[
            {
                "handle": [[64, 96], [192, 96], [192, 224], [64, 224]],
                "target": [[256, 128], [384, 128], [384, 256], [256, 256]],
            }
        ],
        mask=mask_to_data_url(mask),
        profile=profile,
        sampler=FAST,
    )
    seen: list[tuple[int, torch.Tensor]] = []
    attention: list[tuple[str, str | None, int]] = []

    def capture(mod, args, kwargs):
        seen.append((int(args[1]), args[0].detach().clone()))
        procs = list(mod.attn_processors.values())
        ctl = procs[0].controller
        mode = ctl.injection.mode if ctl.injection is not None else None
        attention.append((ctl.mode, mode, sum(p.is_bank_layer for p in procs)))

    editor = Editor(tiny_model)  # no cached inversion: the first 10 UNet calls are the inversion
    hook = editor.model.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        r = editor.edit(_car(), spec)
    finally:
        hook.remove()
    traj, plan = editor.invert(_car(), spec), r.plan  # the inversion the edit used (cached)
    assert traj.reused
    assert len(seen) == 20
    assert [t for t, _ in seen[:10]] == inversion_t
    assert [t for t, _ in seen[10:]] == denoise_t == list(traj.timesteps[10:])
    # Inversion records, sampling replaces K/V, at all 16 self-attention layers (encoder, mid, decoder).
    assert attention == [("record", None, 16)] * 10 + [("inject", "replace", 16)] * 10
    sampling = seen[10:]  # the first 10 UNet calls are the inversion
    (sp,) = plan.step_pastes
    p = sp.paste
    assert sp.min_timestep == (4 if profile == "official" else 200) and len(p.target_rows) > 4
    keep = ~plan.edit_mask
    assert 0 < int(keep.sum()) < keep.numel()
    got = []
    for k, (t, z) in enumerate(sampling):
        i = 10 + k
        src = traj.latents[i][0][:, p.source_rows, p.source_cols]
        tgt = z[0][:, p.target_rows, p.target_cols]
        if t in copied:
            assert torch.equal(tgt, src), (i, t)  # exactly, bit for bit
            got.append(t)
        else:
            assert not torch.equal(tgt, src), (i, t)
        # Outside the editable mask the UNet sees the inversion latent of the same step: reset before the step
        # (official) or after the previous one (dragsdk) give the same input.
        assert torch.equal(z[0][:, keep], traj.latents[i][0][:, keep])
    assert got == copied
    # After the last step: official leaves the outside as the last step made it, dragsdk resets it to z0.
    outside_equals_z0 = torch.equal(r.latent[0][:, keep], traj.latents[-1][0][:, keep])
    assert outside_equals_z0 == (profile == "dragsdk")
    # Handle noise α = 1: handle cells that are not targets (and inside the mask) start as noise.
    hn = plan.handle_noise
    assert hn is not None and hn.alpha == 1.0
    tset = set(zip(p.target_rows.tolist(), p.target_cols.tolist(), strict=True))
    only = [
        (a, b)
        for a, b in zip(hn.rows.tolist(), hn.cols.tolist(), strict=True)
        if (a, b) not in tset and bool(plan.edit_mask[a, b])
    ]
    rows, cols = torch.tensor(only).T
    assert (sampling[0][1][0][:, rows, cols] - traj.latents[10][0][:, rows, cols]).abs().min() > 0
    # K/V of all 16 self-attention layers recorded at every sampled step (and replaced there: round trip test).
    layers = self_attention_layers(editor.model.unet)
    assert len(layers) == 16 and traj.kv_layers == dict.fromkeys(range(10, 20), frozenset(layers))
    assert r.report.unet_evaluations["backward"] == 0 and r.report.unet_evaluations["forward_grad"] == 0


@pytest.mark.slow
def test_pixels_outside_the_mask_are_the_original_when_compositing(editor):
    orig = np.asarray(Image.open(_car()).convert("RGB"))
    mask = np.zeros(orig.shape[:2], np.uint8)
    mask[150:230, 170:283] = 1  # not aligned to 8-px blocks: the pixel and the latent composite differ
    # official: the pixel mask itself
    spec = RegionDragSpec.from_points([[[200, 200], [240, 180]]], mask=mask_to_data_url(mask), sampler=FAST)
    r = editor.edit(_car(), spec)
    outside = mask == 0
    assert np.array_equal(np.asarray(r.image)[outside], orig[outside])
    assert not np.array_equal(np.asarray(r.image)[~outside], orig[~outside])
    # dragsdk: the latent edit mask, nearest-upsampled (blocky)
    r = editor.edit(_car(), spec.model_copy(update={"profile": "dragsdk"}))
    m = torch.nn.functional.interpolate(
        r.plan.edit_mask.float()[None, None], size=orig.shape[:2], mode="nearest"
    )
    outside = ~m[0, 0].bool().numpy()
    assert outside.mean() > 0.5 and (outside != (mask == 0)).any()
    assert np.array_equal(np.asarray(r.image)[outside], orig[outside])
    assert not np.array_equal(np.asarray(r.image)[~outside], orig[~outside])


@pytest.mark.slow
def test_vae_posterior_sample_and_uint8_truncation(tiny_model):
    """official: z0 is a seeded posterior sample (not the mean) and the image is truncated to uint8 (never above
    the rounded one, at most one grey level below it)."""
    img = (
        Image.open(_car()).convert("RGB").crop((150, 120, 278, 248))
    )  # 128×128: edited at its own size, no resize
    spec = RegionDragSpec.from_points([[[50, 60], [80, 50]]], sampler=FAST)
    editor = Editor(tiny_model)  # its own cache: which edits reuse an inversion is asserted
    a = editor.edit(img, spec)
    first_inv = editor.invert(img, spec)
    assert first_inv.reused
    z0 = first_inv.latents[-1]
    b = editor.edit(img, spec.model_copy(update={"to_uint8": "round"}))
    assert b.report.inversion_reused and torch.equal(a.latent, b.latent)
    ta, rb = np.asarray(a.image).astype(int), np.asarray(b.image).astype(int)
    assert (ta <= rb).all() and (rb - ta).max() == 1
    c = editor.edit(img, spec.model_copy(update={"vae_latent": "mean"}))
    assert not c.report.inversion_reused
    mean_inv = editor.invert(img, spec.model_copy(update={"vae_latent": "mean"}))
    assert mean_inv.reused  # c's inversion
    mean = mean_inv.latents[-1]
    assert (z0 - mean).abs().max() > 1e-3
    editor.clear_cache()
    again = editor.edit(img, spec)  # the same seed draws the same sample
    assert not again.report.inversion_reused
    assert torch.equal(editor.invert(img, spec).latents[-1], z0) and torch.equal(again.latent, a.latent)


# -- inputs → one map, on a non-square image -------------------------------------------------------------------

IMG = (320, 192)  # non-square; resolution 256 → working 320×192 (latent 40×24, 1/8 per pixel)


def _plan(spec: RegionDragSpec):
    canvas = Canvas.fit(IMG, 256)
    assert canvas.size == (320, 192)
    return RegionDragMode().plan(spec, PlanContext(canvas, Image.new("RGB", IMG), 20))


@pytest.mark.parametrize("kind", ["regions", "polygons", "region+points", "dense_points"])
def test_every_input_kind_moves_a_square_by_a_pure_shift(kind):
    # Square of 4×4 latent cells at cells (4..7, 2..5), moved by (+10, +6) cells = (+80, +48) pixels.
    handle = _square_mask(IMG, 32, 16, 32)
    target = _square_mask(IMG, 112, 64, 32)
    corners = [[32, 16], [63, 16], [63, 47], [32, 47]]
    if kind == "regions":
        spec = RegionDragSpec(regions=[{"handle": handle, "target": target}])
    elif kind == "polygons":
        spec = RegionDragSpec(
            polygons=[{"handle": corners, "target": [[x + 80, y + 48] for x, y in corners]}]
        )
    elif kind == "region+points":
        spec = RegionDragSpec(region=handle, points=[[[40, 30], [120, 78]]])
    else:
        dense = []
        for y in range(16, 48, 8):
            for x in range(32, 64, 8):
                dense += [[x, y], [x + 80, y + 48]]
        spec = RegionDragSpec(dense_points=dense)
    p = _plan(spec).step_pastes[0].paste
    assert len(p.target_rows) == 16
    assert torch.equal(p.target_rows - p.source_rows, torch.full((16,), 6))
    assert torch.equal(p.target_cols - p.source_cols, torch.full((16,), 10))
    assert set(p.source_rows.tolist()) == {2, 3, 4, 5} and set(p.source_cols.tolist()) == {4, 5, 6, 7}


def test_plan_defaults_and_mask():
    corners = [[32, 16], [63, 16], [63, 47], [32, 47]]
    spec = RegionDragSpec(polygons=[[corners, [[x + 80, y + 48] for x, y in corners]]])
    plan = _plan(spec)
    assert plan.sampling == "cycle-sde" and plan.start_step == 10 and plan.kv_layers == "all"
    assert (
        plan.kv is not None and plan.kv.injection.mode == "replace" and plan.kv.steps() == list(range(10, 20))
    )
    assert plan.follow_outside and plan.composite and not plan.needs_gradients
    f = plan.fidelity
    assert f.outside_reset == "before" and f.vae_latent == "sample" and f.to_uint8 == "truncate"
    assert plan.fidelity.profile == "official" and any(n.startswith("profile official:") for n in plan.notes)
    # official, no mask: the whole image is editable (the official UI's mask = ones).
    assert bool(plan.edit_mask.all()) and plan.composite_mask is None
    # official, a given mask: nearest resampling (F.interpolate picks each cell's top-left pixel), not extended.
    small = _square_mask(IMG, 0, 0, 16)
    small[84:88, 240:248] = (
        1  # the bottom half of cell (row 10, col 30): area 0.5, its top-left pixel is outside
    )
    plan = _plan(spec.model_copy(update={"mask": mask_to_data_url(small)}))
    assert int(plan.edit_mask.sum()) == 4 and not bool(plan.edit_mask[10, 30])
    assert plan.composite_mask is not None and np.array_equal(plan.composite_mask, small.astype(bool))
    assert any("undoes their copy" in n for n in plan.notes)
    # dragsdk: default mask = handle ∪ target grown by one latent cell (8 px) ...
    plan = _plan(spec.model_copy(update={"profile": "dragsdk"}))
    f = plan.fidelity
    assert f.outside_reset == "after" and f.vae_latent == "mean" and f.to_uint8 == "round"
    assert (
        int(plan.edit_mask.sum()) == 2 * 36 and bool(plan.edit_mask[1, 3]) and not bool(plan.edit_mask[0, 3])
    )
    # ... and a given mask resampled by area (≥ 0.5) and extended by the handle and target cells.
    plan = _plan(spec.model_copy(update={"profile": "dragsdk", "mask": mask_to_data_url(small)}))
    assert int(plan.edit_mask.sum()) == 4 + 1 + 32 and bool(plan.edit_mask[10, 30])
    assert any("made editable" in n for n in plan.notes) and plan.composite_mask is None
    # A single option overrides its profile's value.
    plan = _plan(spec.model_copy(update={"mask_resampling": "area", "mask": mask_to_data_url(small)}))
    assert bool(plan.edit_mask[10, 30]) and "mask_resampling=area" in plan.fidelity.options
    assert plan.fidelity.to_uint8 == "truncate"


def test_from_points_and_sample_conversion(tmp_path):
    spec = RegionDragSpec.from_points([[[100, 80], [140, 60]]], radius_px=8, prompt="p")
    (poly,) = spec.polygons
    assert poly.handle == [(92, 72), (108, 72), (108, 88), (92, 88)] and poly.target[0] == (132, 52)
    # A DragBench-SR/DR folder: the dense list of meta_data_region.pkl drives the edit.
    folder = tmp_path / "sample"
    shutil.copytree(EXAMPLE_SAMPLE, folder)
    mask = np.zeros((384, 512), np.uint8)
    mask[100:200, 100:300] = 1
    pts = [[120.0, 120.0], [160.0, 130.0], [128.0, 120.0], [168.0, 130.0]]
    with open(folder / "meta_data_region.pkl", "wb") as f:
        pickle.dump({"prompt": "a car ", "points": pts, "mask": mask}, f)
    converted = RegionDragSpec.model_validate(spec_from_sample(folder))
    assert converted.dense_points == [tuple(p) for p in pts] and converted.prompt == "a car"
    (folder / "meta_data_region.pkl").unlink()
    converted = RegionDragSpec.model_validate(spec_from_sample(folder))
    assert (
        converted.polygons is not None and len(converted.polygons) == 2 and converted.mask.startswith("data:")
    )


# -- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, match",
    [
        (
            {"polygons": [[[[10, 10], [60, 60], [60, 10], [10, 60]], [[0, 0], [50, 0], [50, 50], [0, 50]]]]},
            r"polygons\[0\]\.handle: .*self-intersect",
        ),
        (
            {"polygons": [[[[10, 10], [60, 10], [60, 60]], [[10, 10], [20, 20], [30, 30]]]]},
            r"polygons\[0\]\.target: .*degenerate",
        ),
        ({"regions": [{"handle": "SQUARE", "target": "EMPTY"}]}, r"regions\[0\]\.target: mask is empty"),
        (
            {"regions": [{"handle": "SMALL", "target": "SQUARE"}]},
            r"regions\[0\]\.handle: mask is 64×64 pixels, the image is 512×384",
        ),
        ({"region": "SQUARE", "points": [[[10, 10], [600, 10]]]}, r"points\[0\]\.target"),
        ({"dense_points": [[10, 10], [10, 400]]}, r"dense_points\[1\]"),
        (
            {"polygons": [[[[10, 10], [60, 10], [60, 60]], [[10, 10], [60, 10], [60, 60]]]], "mask": "SMALL"},
            r"mask: mask is 64×64",
        ),
    ],
)
def test_invalid_geometry_is_refused_naming_the_field(editor, fields, match):
    masks = {
        "SQUARE": _square_mask((512, 384), 100, 100, 50),
        "EMPTY": np.zeros((384, 512), np.uint8),
        "SMALL": np.ones((64, 64), np.uint8),
    }

    def sub(v):
        if isinstance(v, str):
            return mask_to_data_url(masks[v])
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    with pytest.raises(SpecError, match=match):
        editor.edit(_car(), RegionDragSpec(**sub(fields), sampler=FAST))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({}, "exactly one input kind"),
        (
            {
                "polygons": [[[[0, 0], [9, 0], [9, 9]], [[0, 0], [9, 0], [9, 9]]]],
                "dense_points": [[1, 1], [2, 2]],
            },
            "exactly one input kind",
        ),
        ({"region": "x.png"}, "`region` and `points` go together"),
        ({"dense_points": [[1, 1], [2, 2], [3, 3]]}, "even count"),
        (
            {"polygons": [[[[0, 0], [9, 0], [9, 9]], [[0, 0], [9, 0], [9, 9], [0, 9]]]]},
            "3 vertices but target has 4",
        ),
        ({"polygons": [[[[0, 0], [9, 0]], [[0, 0], [9, 0]]]]}, "at least 3"),
        ({"handle_noise": 1.5, "dense_points": [[1, 1], [2, 2]]}, "handle_noise"),
        ({"sampler": {"guidance_scale": 4.0}, "dense_points": [[1, 1], [2, 2]]}, "guidance_scale"),
    ],
)
def test_malformed_specs_are_refused_by_validation(fields, match):
    with pytest.raises(ValidationError, match=match):
        RegionDragSpec(**fields)


# -- CLI on real DragBench samples ----------------------------------------------------------------------------

runner = CliRunner()


def _real_sample():
    samples = [s for s in dragbench_samples() if s.parent.name == "animals"] or dragbench_samples()
    return samples[0]


@pytest.mark.slow
def test_cli_edits_a_real_sample_with_a_region_spec_and_relative_mask_paths(tmp_path):
    from dragsdk.cli import app
    from dragsdk.samples import load_sample

    folder = _real_sample()
    image, drag = load_sample(folder)
    size = Image.open(image).size
    (hx, hy), (tx, ty) = drag["points"][0]
    r = 24
    for name, (x, y) in (("handle.png", (hx, hy)), ("target.png", (tx, ty))):
        m = np.zeros((size[1], size[0]), np.uint8)
        m[max(int(y) - r, 0) : int(y) + r, max(int(x) - r, 0) : int(x) + r] = 255
        Image.fromarray(m).save(tmp_path / name)
    spec = {
        "mode": "region-drag",
        "prompt": drag["prompt"],
        "regions": [["handle.png", "target.png"]],
        "sampler": {"steps": 8},
    }
    (tmp_path / "region.json").write_text(json.dumps(spec))
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "edit",
            str(image),
            "--spec",
            str(tmp_path / "region.json"),
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
    assert Image.open(out).size == size
    rep = json.loads(report.read_text())
    assert rep["mode"] == "region-drag" and rep["unet_evaluations"] == {
        "forward": 8,
        "forward_grad": 0,
        "backward": 0,
    }


@pytest.mark.slow
def test_cli_runs_a_points_only_sample_as_region_drag(tmp_path):
    from dragsdk.cli import app

    folder = _real_sample()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "edit",
            str(folder),
            "--mode",
            "region-drag",
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
    assert Image.open(out).size == Image.open(folder / "original_image.png").size
    rep = json.loads(report.read_text())
    assert rep["mode"] == "region-drag" and rep["unet_evaluations"]["backward"] == 0
    assert any("from polygons" in n for n in rep["notes"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_cli_reads_dense_points_of_a_region_sample_and_refuses_unknown_modes(tmp_path):
    from dragsdk.cli import app

    folder = tmp_path / "sample"
    shutil.copytree(EXAMPLE_SAMPLE, folder)
    mask = np.zeros((384, 512), np.uint8)
    mask[200:300, 100:250] = 1
    pts = [[x, y] for y in range(230, 270, 8) for x in range(120, 160, 8)]
    dense = [c for p in pts for c in (p, [p[0] + 40, p[1] + 16])]
    with open(folder / "meta_data_region.pkl", "wb") as f:
        pickle.dump({"prompt": "black car", "points": np.array(dense), "mask": mask}, f)
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "edit",
            str(folder),
            "--mode",
            "region-drag",
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
    assert Image.open(out).size == (512, 384)
    assert any("from dense_points" in n for n in json.loads(report.read_text())["notes"])
    res = runner.invoke(app, ["edit", str(folder), "--mode", "no-such-mode", "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "unknown mode 'no-such-mode'" in res.output
