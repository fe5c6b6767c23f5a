"""The ``official`` profile of drag / move / resize / appearance / paste reproduces the official DragonDiffusion /
DiffEditor code item by item (issue 11; parity report ``shared/research/parity/dragondiffusion.md``), and the trace
records what each sampling pass did."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.energy import region_similarity
from dragsdk.errors import SpecError
from dragsdk.features import FeatureTap
from dragsdk.geometry import Canvas
from dragsdk.modes import PlanContext
from dragsdk.objects import official_placement_map
from dragsdk.plugins.move import MoveSpec, plan_move
from dragsdk.spec import DragSpec
from dragsdk.trace import read_trace

TINY = {"steps": 10, "resolution": 64}


@pytest.fixture(scope="module")
def car(car_sample):
    image, spec = car_sample
    return image, spec


def _drag(spec, **kw):
    return {**spec, "sampler": {**TINY, **kw.pop("sampler", {})}, **kw}


# -- the profile setting -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["drag", "move", "resize", "appearance", "paste"])
def test_every_dragondiffusion_mode_has_an_official_default_profile_in_its_schema(mode):
    from dragsdk.registry import get_registry

    model = get_registry().modes[mode].spec_model
    prop = model.model_json_schema()["properties"]["profile"]
    assert prop["default"] == "official"
    enums = [
        e for branch in prop["anyOf"] for e in (branch.get("enum") or branch.get("items", {}).get("enum", []))
    ]
    assert {"official", "dragsdk", "recorded-guidance", "area-masks", "rollback-at-t"} <= set(enums)


# -- item 1: move / resize energies ---------------------------------------------------------------------------------
def _constant_features(cos: float, shapes=((8, 8, 8), (4, 16, 16))):
    """Current / guidance features equal to one vector everywhere, with the given cosine between the two."""
    cur, ref = [], []
    for c, h, w in shapes:
        a = torch.zeros(c)
        a[0] = 1.0
        b = torch.zeros(c)
        b[0], b[1] = cos, math.sqrt(1 - cos * cos)
        cur.append(a[None, :, None, None].expand(1, c, h, w).clone())
        ref.append(b[None, :, None, None].expand(1, c, h, w).clone())
    return cur, ref


@pytest.mark.parametrize("profile", ["official", ["bounded-similarity"]])
def test_move_energies_follow_the_official_formulas_on_features_of_known_cosine(profile):
    w, h = 64, 64
    mask = np.zeros((h, w), bool)
    mask[16:32, 16:32] = True
    ctx = PlanContext(Canvas((w, h), (w, h)), image=None, steps=10)  # type: ignore[arg-type]
    spec = MoveSpec(mask=mask, dx=16, dy=0, profile=profile)
    plan = plan_move(spec, ctx)
    cur, ref = _constant_features(0.5)  # cos 0.5 everywhere → S = 0.75
    values = {t.name: float(t.fn(cur, ref)) for t in plan.energies}
    if profile == "official":
        # Σ_l 0.5·w/(1+4·cos) for edit and content; Σ_l 0.5·w·S contrast; Σ_l w/(1+4·S) fill (Sampler.py:196-223)
        expected = {
            "edit": 2 * 0.5 * 4 / 3,
            "content": 2 * 0.5 * 6 / 3,
            "contrast": 0.2 * 0.75,
            "fill": 2 * 0.8 / 4,
        }
    else:
        expected = {"edit": 4 / 4, "content": 6 / 4, "contrast": 0.2 * 0.75, "fill": 0.8 / 4}
    assert values == pytest.approx(expected, rel=1e-5)


def test_official_move_guidance_is_stronger_than_the_bounded_one_on_the_same_features():
    mask = np.zeros((64, 64), bool)
    mask[16:32, 16:32] = True
    ctx = PlanContext(Canvas((64, 64), (64, 64)), image=None, steps=10)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(1, 8, 8, 8, generator=gen), torch.randn(1, 4, 16, 16, generator=gen)]
    norms = {}
    for name, profile in (("official", "official"), ("bounded", ["bounded-similarity"])):
        plan = plan_move(MoveSpec(mask=mask, dx=16, profile=profile), ctx)
        cur = [
            (r + 1.5 * torch.randn(r.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
            for r in ref
        ]
        edit = next(t for t in plan.energies if t.name == "edit").fn(cur, ref)
        norms[name] = float(torch.cat([g.flatten() for g in torch.autograd.grad(edit, cur)]).norm())
    # ∂/∂cos of w/(1+4cos) vs w/(3+2cos): several times larger at the cosines of a moved object
    assert norms["official"] > 2.5 * norms["bounded"]


# -- item 2: drag step-0 reference ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_drag_step0_guidance_is_the_pasted_start_latent(tiny_model, car):
    from dragsdk import Editor

    image, spec = car
    editor = Editor(tiny_model)
    official = editor.edit(image, _drag(spec))
    first = official.report.energies[0]
    # content S = 1 exactly: w_content / (1 + 4) — the official estimator reads the pasted z_T as its reference
    assert first.step == 0 and first.terms["content"] == pytest.approx(6.0 / 5.0, abs=1e-5)
    assert official.report.profile == "official"
    assert "step0_guidance=init" in official.report.profile_options
    unpasted_run = editor.edit(image, _drag(spec, profile=["unpasted-step0"]))
    unpasted = unpasted_run.report.energies[0]
    assert unpasted.terms["content"] > 6.0 / 5.0 + 1e-4
    # one report format: the label and every option as name=value, only the listed improvement changed
    assert unpasted_run.report.profile == "official+unpasted-step0"
    changed = set(unpasted_run.report.profile_options) ^ set(official.report.profile_options)
    assert changed == {"step0_guidance=init", "step0_guidance=inversion"}
    # step 0 needs no guidance forward: one per other guided step
    n_guided = len(DragSpec.model_validate(_drag(spec)).sampler.schedule.steps(TINY["steps"]))
    assert official.report.unet_evaluations["guidance"] == n_guided - 1


# -- item 3: guidance features F(z_{t_i}, t_i) ------------------------------------------------------------------------
def _features(unet, z, t, cond, grad=False):
    tap = FeatureTap(unet)
    try:
        with torch.set_grad_enabled(grad), tap.capture(stop=True):
            unet(z, t, encoder_hidden_states=cond)
        return tap.features()
    finally:
        tap.remove()


@pytest.mark.slow
def test_guidance_features_are_the_inverted_latent_at_its_own_timestep(tiny_model, car):
    from dragsdk import Editor

    image, spec = car
    editor = Editor(tiny_model)
    editor.edit(image, _drag(spec))
    traj = editor.invert(image, _drag(spec))  # the inversion the edit used (cached: no UNet call)
    assert traj.reused
    unet, cond = tiny_model.unet, traj.cond
    for i in (1, 4):
        t = traj.timesteps[i]
        direct = _features(unet, traj.latents[i], t, cond)  # one latent per call, scalar timestep
        for got, want in zip(traj.guidance_features[i], direct, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # the un-edited trajectory sits at the content energy's minimum: zero content gradient (official);
        # the recorded reference (one DDIM step off) pulls it
        keep = torch.ones(traj.guidance_features[i][1].shape[-2:], dtype=torch.bool)  # the whole feature grid
        grads = {}
        recorded = _features(unet, traj.latents[i + 1], t, cond)
        for name, ref in (("official", traj.guidance_features[i]), ("recorded", recorded)):
            z = traj.latents[i].clone().requires_grad_(True)
            e = (6.0 / (1 + 4 * region_similarity(_features(unet, z, t, cond, grad=True), ref, keep))).mean()
            (grads[name],) = torch.autograd.grad(e, z)
        assert grads["official"].norm() < 1e-3 * grads["recorded"].norm()


@pytest.mark.slow
def test_recorded_reference_option_runs_no_reference_forward(tiny_model, car):
    from dragsdk import Editor

    image, spec = car
    r = Editor(tiny_model).edit(image, _drag(spec, profile=["recorded-guidance"])).report
    assert "reference" not in r.unet_evaluations and r.profile == "official+recorded-guidance"


# -- item 4: point → feature cell -------------------------------------------------------------------------------------
def test_points_take_floor_of_x_times_scale_per_axis_on_non_square_images():
    canvas = Canvas((512, 384), (576, 448))  # working size of a 512×384 image at resolution 512
    sx, sy = canvas.scale("feature")
    for xy in ((131.0, 264.0), (200.0, 313.0), (3.0, 382.0), (511.0, 0.0)):
        col, row = canvas.to_cell(xy, "feature", "corner")
        assert (col, row) == (min(math.floor(xy[0] * sx), 143), min(math.floor(xy[1] * sy), 111))
    # the official code scales y by the x ratio (576/512): int(300·1.125) // 4 = 84, three rows off
    assert canvas.to_cell((0.0, 300.0), "feature", "corner")[1] == math.floor(300 * sy) == 87
    # the corner and pixel-centre conventions differ by one cell where x·s is just below an integer
    square = Canvas((512, 512), (768, 768))  # s = 0.375 feature cells per pixel
    assert square.to_cell((5.0, 5.0), "feature", "corner") == (1, 1)
    assert square.to_cell((5.0, 5.0), "feature", "centre") == (2, 2)


# -- item 5: masks by nearest resampling ---------------------------------------------------------------------------------
def test_nearest_masks_sample_the_top_left_working_pixel_of_each_cell():
    mask = np.zeros((64, 64), bool)
    mask[5:30, 3:17] = True  # edges inside cells: area and nearest disagree there
    canvas = Canvas((64, 64), (64, 64))
    for grid, d in (("feature", 4), ("latent", 8)):
        near = canvas.mask_to_grid(mask, grid, method="nearest")
        want = (
            F.interpolate(torch.from_numpy(mask).float()[None, None], scale_factor=1 / d, mode="nearest")[
                0, 0
            ]
            > 0.5
        )
        assert torch.equal(near, want)
        assert not torch.equal(near, canvas.mask_to_grid(mask, grid, method="area"))


# -- item 6: time travel ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_time_travel_rolls_back_at_t_prev_between_passes(tiny_model, car, tmp_path):
    from dragsdk import Editor

    image, spec = car
    editor = Editor(tiny_model)
    tt = {"start": 0.4, "end": 0.6, "repeats": 3}  # at 10 steps: step 4 (guided), three passes
    out = {}
    for name, profile in (("official", "official"), ("at_t", ["rollback-at-t"])):
        editor.edit(
            image, _drag(spec, profile=profile, sampler={"time_travel": tt}), trace=tmp_path / f"{name}.npz"
        )
        out[name] = read_trace(tmp_path / f"{name}.npz")
    ts = out["official"][0]["timestep"]
    arrays, meta = out["official"]
    steps = list(arrays["step"])
    timesteps = sorted(set(ts.tolist()), reverse=True)
    # two roll-backs (the official third one after the last pass is discarded work), UNet at t_prev = t_5
    assert steps.count(4) == 3 and meta["rollback_timesteps"] == [timesteps[5]] * 2
    assert out["at_t"][1]["rollback_timesteps"] == [timesteps[4]] * 2
    # each pass after the first starts from the roll-back of the previous one, at the same timestep
    k = steps.index(4)
    assert not np.array_equal(arrays["latent_before"][k + 1], arrays["latent_before"][k])


# -- the trace -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_trace_records_every_pass_with_chained_latents_and_guided_energies(tiny_model, car, tmp_path):
    from dragsdk import Editor

    image, spec = car
    path = tmp_path / "trace.npz"
    r = Editor(tiny_model).edit(image, _drag(spec), trace=path)
    arrays, meta = read_trace(path)
    n = TINY["steps"]
    assert list(arrays["step"]) == list(range(n)) and meta["profile"] == "official" and meta["mode"] == "drag"
    assert np.array_equal(arrays["latent_after"][:-1], arrays["latent_before"][1:])
    assert np.array_equal(arrays["latent_after"][-1], r.latent.float().numpy()[0])
    guided = {e.step: e for e in r.report.energies}
    for k, i in enumerate(arrays["step"]):
        if i in guided:
            assert arrays["energy_total"][k] == pytest.approx(guided[i].total)
            assert arrays["guidance_norm"][k] == pytest.approx(guided[i].grad_norm)
        else:
            assert math.isnan(arrays["energy_total"][k]) and math.isnan(arrays["guidance_norm"][k])
    assert not list(tmp_path.glob(".trace*"))  # written atomically: no temporary left behind


@pytest.mark.slow
def test_trace_of_the_cli_and_of_two_profiles_differ_only_where_the_profiles_do(tmp_path, car):
    image, spec = car
    paths = {}
    for name, profile in (("official", "official"), ("dragsdk", "dragsdk")):
        spec_path = tmp_path / f"{name}.json"
        spec_path.write_text(json.dumps(_drag(spec, profile=profile)))
        paths[name] = tmp_path / f"{name}.npz"
        res = CliRunner().invoke(
            app,
            [
                "edit",
                str(image),
                "--spec",
                str(spec_path),
                "--quiet",
                "--out",
                str(tmp_path / f"{name}.png"),
                "--trace",
                str(paths[name]),
            ],
        )
        assert res.exit_code == 0, res.output
    a, meta_a = read_trace(paths["official"])
    b, meta_b = read_trace(paths["dragsdk"])
    assert meta_b["profile"] == "dragsdk" and np.array_equal(a["timestep"], b["timestep"])
    # the same inversion start (only the pastes' cells differ in convention), different guidance from step 0
    assert not np.allclose(a["energy_total"][0], b["energy_total"][0])


# -- official placement (move / resize) ---------------------------------------------------------------------------------
def test_official_placement_scales_about_the_image_centre_and_clips_instead_of_wrapping():
    canvas = Canvas((64, 64), (64, 64))  # feature grid 16×16
    mask = np.zeros((64, 64), bool)
    mask[24:40, 24:40] = True  # feature cells 6..9, centred
    m = official_placement_map(canvas, mask, 2.0, (0, 0), "feature").target_mask()
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (4, 11, 4, 11)
    edge = np.zeros((64, 64), bool)
    edge[0:8, 56:64] = True  # feature cells rows 0..1, cols 14..15
    moved = official_placement_map(
        canvas, edge, 1.0, (4, 0), "feature"
    )  # 1 cell right: col 15 stays, 16 is off
    assert sorted(set(moved.target_cols.tolist())) == [15]  # the official roll would also write col 0 (wrap)
    assert sorted(set(moved.source_cols.tolist())) == [14]
    with pytest.raises(SpecError, match="dx, dy"):  # 3 cells right: nothing left (the official roll wraps it)
        official_placement_map(canvas, edge, 1.0, (12, 0), "feature")


def test_guidance_features_use_the_base_prompt_in_the_official_profile(tiny_model, one_thread):
    """Official appearance / paste: the reference row's features are computed with the base prompt
    (``Sampler.py:371-383``), its inversion with its own prompt; ``own-reference-prompt`` uses its own for both."""
    from pathlib import Path

    from dragsdk import Editor

    ref = Path(__file__).parents[1] / "examples" / "reference-cat"
    image = str(ref / "cat.jpg")
    spec = {
        "mode": "appearance",
        "prompt": "a photo of a cat",
        "mask": str(ref / "cat_mask.png"),
        "reference": image,
        "reference_mask": str(ref / "cat_mask.png"),
        "reference_prompt": "a painting",
        "sampler": {"steps": 6, "resolution": 64},
    }
    editor = Editor(tiny_model)
    official = editor.edit(image, spec)
    traj, base = editor.invert(image, spec), tiny_model.encode_prompt(spec["prompt"])[0]
    assert traj.reused and torch.equal(traj.feature_cond[1], base)
    assert not torch.equal(traj.cond[1], base)  # the inversion keeps the reference's own prompt
    own = Editor(tiny_model).edit(image, {**spec, "profile": ["own-reference-prompt"]})
    assert (official.latent - own.latent).abs().max() > 1e-5
    same = {**spec, "reference_prompt": spec["prompt"]}
    a = Editor(tiny_model).edit(image, same).latent
    b = Editor(tiny_model).edit(image, {**same, "profile": ["own-reference-prompt"]}).latent
    assert torch.equal(a, b)


def test_official_paste_scales_about_the_image_centre_and_shifts_the_inverted_reference_latent(tiny_model):
    """Official paste: the reference (and its mask) scaled about the image centre is inverted unshifted; the placed
    object is its latent mask shifted by int(d/8) cells, filled from the reference's inverted latent d/8 cells back;
    the edit term pairs placed feature cells with reference cells int(d/4) back; K/V reference keys come from the
    reference-frame object."""
    from pathlib import Path

    from PIL import Image

    from dragsdk.objects import official_scale_about_centre
    from dragsdk.plugins.paste import PasteSpec
    from dragsdk.registry import get_registry

    ref = Path(__file__).parents[1] / "examples" / "reference-cat"
    base = Image.open(ref / "cat.jpg").convert("RGB")
    mask = np.asarray(Image.open(ref / "cat_mask.png")) > 127
    spec = PasteSpec(
        prompt="a cat",
        reference=str(ref / "cat.jpg"),
        reference_mask=str(ref / "cat_mask.png"),
        dx=-40,
        dy=24,
        scale=0.6,
        sampler={"steps": 4, "resolution": 256},
    )
    canvas = Canvas.fit(base.size, 256)
    plan = get_registry().modes["paste"].plan(spec, PlanContext(canvas, base, 4))
    scaled_img, scaled = official_scale_about_centre(base, mask, 0.6)
    assert np.array_equal(np.asarray(plan.references[0].image), np.asarray(scaled_img))
    # the scaled object sits about the image centre, not about its own centroid
    w, h = base.size
    assert abs(np.nonzero(scaled)[1].mean() - (w / 2 + 0.6 * (np.nonzero(mask)[1].mean() - w / 2))) < 2
    sdx, sdy = (int(v) for v in canvas.vector_to_grid((-40, 24), "latent"))
    ref_l = canvas.mask_to_grid(scaled, "latent", method="nearest")
    p = plan.init[0]
    assert p.bank == 1 and torch.equal(p.target_rows - p.source_rows, torch.full_like(p.target_rows, sdy))
    assert torch.equal(p.target_cols - p.source_cols, torch.full_like(p.target_cols, sdx))
    assert ref_l[p.source_rows, p.source_cols].all() and plan.edit_mask[p.target_rows, p.target_cols].all()
    assert int(plan.edit_mask.sum()) == len(p.target_rows)
    centroid = (
        get_registry()
        .modes["paste"]
        .plan(spec.model_copy(update={"profile": ["centroid-placement"]}), PlanContext(canvas, base, 4))
    )
    assert not torch.equal(centroid.edit_mask, plan.edit_mask)
