"""The latent-optimisation stage (dragsdk.optimise, EditRun.optimise) and the dragdiffusion mode: motion supervision
and point tracking against hand-computed values, the stage's step count, early stop, cancellation, progress and
cost, and the mode end to end through Editor.edit, the CLI and `dragsdk modes --json`."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.attention import AttentionController
from dragsdk.cli import app
from dragsdk.errors import EditCancelled, SpecError
from dragsdk.inversion import DDIMSchedule, UNetCounter
from dragsdk.optimise import optimisation_cost, optimise_latent
from dragsdk.plan import LatentOptimisation
from dragsdk.plugins.dragdiffusion import (
    feature_point,
    motion_supervision,
    point_tracking,
    reached,
    shifted_patch,
)
from dragsdk.registry import Registry

from .conftest import EXAMPLE_SAMPLE, ROOT

IMAGE = EXAMPLE_SAMPLE / "original_image.png"
SMALL = {"steps": 6, "resolution": 64, "seed": 7}


def _spec(**kw):
    base = {
        "mode": "dragdiffusion",
        "prompt": "a car",
        "points": [[[131, 264], [200, 313]]],
        "n_pix_step": 3,
        "lora_steps": 0,
        "sampler": SMALL,
    }
    return {**base, **kw}


# -- motion supervision, point tracking: hand-computed ------------------------------------------------------------
def _field(a: float, b: float, size: int = 5) -> torch.Tensor:
    """(1, 1, size, size) with value a·row + b·col: bilinear sampling of it is exact."""
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (a * r + b * c).float()[None, None]


def test_motion_supervision_of_a_straight_drag_is_nine_times_the_unit_shift():
    # the 3×3 patch at (2, 2) against itself shifted one column right: every value differs by b = 1
    assert float(motion_supervision(_field(0, 1), [(2.0, 2.0)], [(2.0, 4.0)], 1)) == pytest.approx(9.0)


def test_motion_supervision_of_a_diagonal_drag_follows_the_unit_direction():
    # d = (3, 4)/5: the shifted patch differs by 2·0.6 + 3·0.8 = 3.6 everywhere, weighted (2·1 + 1)² = 9
    loss = motion_supervision(_field(2, 3, 8), [(2.0, 2.0)], [(5.0, 6.0)], 1)
    assert float(loss) == pytest.approx(9 * 3.6, rel=1e-6)


def test_motion_supervision_skips_a_handle_within_two_cells_and_sums_the_others():
    f = _field(0, 1)
    assert float(motion_supervision(f, [(2.0, 2.0)], [(2.0, 3.9)], 1)) == 0.0
    both = motion_supervision(f, [(2.0, 2.0), (2.0, 2.0)], [(2.0, 4.0), (2.0, 3.0)], 1)
    assert float(both) == pytest.approx(9.0)


def test_a_patch_shifted_across_the_border_samples_the_border_instead_of_failing():
    # handle (2, 3), target (4, 4): columns 2..4 shifted by 1/√5 reach column 4.447, past the 5-column map (the
    # official slices come out one column short there and raise); the border column is read instead
    f = _field(0, 1)
    dx = 1 / 5**0.5
    expected = 9 * np.mean([dx, dx, 0.0])  # columns 2+dx, 3+dx, then the border value 4 against 4
    loss = motion_supervision(f, [(2.0, 3.0)], [(4.0, 4.0)], 1)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_shifted_patch_is_bilinear_inside_the_map():
    f = torch.arange(16.0).reshape(1, 1, 4, 4)
    got = shifted_patch(f, torch.tensor(0.5), torch.tensor(1.25), 2, 2)
    # value = 4·row + col: a linear field is reproduced exactly by bilinear weights
    assert got.flatten().tolist() == pytest.approx(
        [0.5 * 4 + 1.25, 0.5 * 4 + 2.25, 1.5 * 4 + 1.25, 1.5 * 4 + 2.25]
    )


def test_shifted_patch_uses_the_official_single_set_of_corner_weights():
    # utils/drag_utils.py:54-77: four weights from the patch's first cell, one set for every cell, float32
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 3, 9, 9, generator=g)
    top, left = torch.tensor(2.0) + torch.tensor(0.3), torch.tensor(1.0) + torch.tensor(-0.7)
    y0, x0 = int(torch.floor(top)), int(torch.floor(left))
    xc, yc = torch.floor(left) + 1, torch.floor(top) + 1
    wa, wb = (xc - left) * (yc - top), (xc - left) * (top - torch.floor(top))
    wc, wd = (left - torch.floor(left)) * (yc - top), (left - torch.floor(left)) * (top - torch.floor(top))
    expected = (
        f[:, :, y0 : y0 + 3, x0 : x0 + 3] * wa
        + f[:, :, y0 + 1 : y0 + 4, x0 : x0 + 3] * wb
        + f[:, :, y0 : y0 + 3, x0 + 1 : x0 + 4] * wc
        + f[:, :, y0 + 1 : y0 + 4, x0 + 1 : x0 + 4] * wd
    )
    assert torch.equal(shifted_patch(f, top, left, 3, 3), expected)


def test_point_tracking_moves_a_handle_to_the_nearest_feature_in_its_window():
    f0 = torch.zeros(1, 2, 8, 8)
    f0[0, :, 1, 1] = torch.tensor([1.0, 2.0])
    f1 = torch.full((1, 2, 8, 8), 10.0)
    f1[0, :, 3, 2] = torch.tensor([1.0, 2.5])  # L1 0.5 from the initial feature, within r_p = 3 of (1, 1)
    f1[0, :, 7, 7] = torch.tensor([1.0, 2.0])  # exact, but outside the window
    assert point_tracking(f0, f1, [(1.0, 1.0)], [(1.0, 1.0)], 3) == [(3.0, 2.0)]


def test_point_tracking_clips_its_window_at_the_border_and_takes_the_first_tie():
    f0 = torch.zeros(1, 1, 4, 4)
    f1 = torch.ones(1, 1, 4, 4)
    f1[0, 0, 0, 2] = 0.0
    f1[0, 0, 1, 0] = 0.0  # tie: row-major order picks (0, 2)
    assert point_tracking(f0, f1, [(0.0, 0.0)], [(0.0, 0.0)], 3) == [(0.0, 2.0)]


def test_reached_means_every_handle_strictly_within_two_cells():
    assert reached([(0.0, 0.0), (5.0, 5.0)], [(1.0, 1.0), (5.0, 6.9)])
    assert not reached([(0.0, 0.0)], [(0.0, 2.0)])


def test_feature_points_round_half_to_even_and_stay_on_the_grid():
    # (x, y) = (131, 264) on 512×384 → 32×32: row 264/384·32 = 22, col 131/512·32 = 8.19 → 8
    assert feature_point((131, 264), (512, 384), (32, 32)) == (22.0, 8.0)
    assert feature_point((4, 12), (64, 64), (8, 8)) == (2.0, 0.0)  # 1.5 → 2, 0.5 → 0
    assert feature_point((63.9, 63.9), (64, 64), (32, 32)) == (31.0, 31.0)  # round → 32: clipped


# -- the stage, on the tiny model's UNet ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage(tiny_model):
    """What optimise_latent needs: the tiny UNet, a latent, a timestep, a text embedding."""
    m = tiny_model
    sched = DDIMSchedule(m.scheduler, 10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, m.unet.config.cross_attention_dim, generator=g)
    ctl = AttentionController(attend=None, bank_layers=frozenset(), latent_size=(8, 8))
    return m.unet, ctl, z, sched.timesteps[3], sched.alpha(3), sched.alpha_prev(3), cond


def _run(stage, opt):
    unet, ctl, z, t, a, ap, cond = stage
    counter = UNetCounter()
    calls = []
    hook = unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out = optimise_latent(unet, unet, ctl, z, t, a, ap, cond, opt, counter)
    finally:
        hook.remove()
    return out, counter, len(calls)


@pytest.mark.slow
def test_the_stage_runs_the_objective_max_steps_times_and_counts_what_the_dry_run_counts(stage):
    seen = []

    def objective(state):
        seen.append(state.iteration)
        return state.features[0].square().mean()

    out, counter, calls = _run(stage, LatentOptimisation(objective, 4, 0.05))
    assert seen == [0, 1, 2, 3] and out.steps == 4 and not out.stopped
    assert (counter.forward, counter.forward_grad, counter.backward) == optimisation_cost(
        LatentOptimisation(objective, 4, 0.05)
    )
    assert calls == counter.forward + counter.forward_grad  # every UNet call counted, no other
    assert not torch.equal(out.latent, stage[2])  # Adam moved the latent
    assert [r["iteration"] for r in out.records] == [0, 1, 2, 3]


def test_the_stage_stops_when_the_tracker_says_done_before_the_loss(stage):
    seen = []

    def tracker(state):
        state.record["k"] = state.iteration
        return state.iteration == 2

    def objective(state):
        seen.append(state.iteration)
        return state.latent.square().sum()

    out, counter, calls = _run(stage, LatentOptimisation(objective, 10, 0.05, tracker))
    assert seen == [0, 1] and out.steps == 2 and out.stopped
    assert (counter.forward, counter.forward_grad, counter.backward) == (1, 3, 2) and calls == 4
    assert out.records[-1] == {"iteration": 2, "loss": None, "k": 2}


def test_the_initial_state_is_the_unoptimised_latent_and_memo_persists(stage):
    got = {}

    def objective(state):
        state.memo["n"] = state.memo.get("n", 0) + 1
        got["initial_latent"] = state.initial.latent
        got["n"] = state.memo["n"]
        assert torch.allclose(state.initial.x_prev, state.x_prev) or state.iteration > 0
        return state.latent.sum()

    _run(stage, LatentOptimisation(objective, 3, 0.01))
    assert torch.equal(got["initial_latent"], stage[2]) and got["n"] == 3


def test_an_objective_that_ignores_the_latent_is_refused(stage):
    with pytest.raises(ValueError, match="does not depend on the latent"):
        _run(stage, LatentOptimisation(lambda s: torch.tensor(1.0), 2, 0.01))


def test_a_latent_optimisation_with_bad_settings_is_refused():
    with pytest.raises(ValueError, match="max_steps"):
        LatentOptimisation(lambda s: s.latent.sum(), -1, 0.01)
    with pytest.raises(ValueError, match="lr"):
        LatentOptimisation(lambda s: s.latent.sum(), 1, 0.0)


# -- the stage in an edit ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def editor(tiny_model):
    return Editor(tiny_model)


@pytest.mark.slow
def test_the_edit_reports_optimise_progress_and_its_dry_run_cost_equals_the_unet_calls(editor, tiny_model):
    spec = _spec(points=[[[131, 264], [480, 40]]])  # far: the tracker cannot end the 3 steps early
    dry = editor.plan(IMAGE, spec)
    events, calls = [], []
    hook = tiny_model.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        result = editor.edit(IMAGE, spec, callback_on_step_end=lambda e: events.append(e) and None)
    finally:
        hook.remove()
    rep = result.report
    # inversion 4, the stage's initial forward 1, sampling 4 and the source branch 4
    expected = {"forward": 4 + 1 + 4 + 4, "forward_grad": 3, "backward": 3}
    assert rep.unet_evaluations == dry.cost.to_dict() == expected
    assert len(calls) == rep.unet_evaluations["forward"] + rep.unet_evaluations["forward_grad"]
    opt = [e for e in events if e.phase == "optimise"]
    assert [(e.step, e.total) for e in opt] == [(1, 3), (2, 3), (3, 3)]
    assert {e.index for e in opt} == {dry.plan.start_step} == {2}  # 6 − round(0.7·6)
    assert [e.phase for e in events].index("optimise") > [e.phase for e in events].index("invert")
    assert "optimise" in rep.phase_seconds and len(rep.optimisation) == 3
    assert all(len(r["handles"]) == 1 for r in rep.optimisation)


def test_cancelling_inside_the_optimise_stage_raises_the_editors_cancellation(editor, tiny_model):
    before = dict(tiny_model.unet.attn_processors)
    with pytest.raises(EditCancelled) as err:
        editor.edit(IMAGE, _spec(), callback_on_step_end=lambda e: e.phase == "optimise" and e.step == 2)
    assert err.value.phase == "optimise"
    assert dict(tiny_model.unet.attn_processors) == before


@pytest.mark.slow
def test_dragdiffusion_edits_end_to_end_and_keeps_the_input_size(editor):
    result = editor.edit(IMAGE, _spec(mask=str(EXAMPLE_SAMPLE / "mask.png")))
    assert result.image.size == Image.open(IMAGE).size
    assert result.latent.shape == (1, 4, 8, 8) and torch.isfinite(result.latent).all()
    assert result.report.profile == "official" and result.report.mode == "dragdiffusion"
    plan = result.plan
    assert plan.kv.injection.mode == "replace" and plan.kv_layers == 10 and plan.optimise.max_steps == 3


def test_dragdiffusion_plans_the_official_defaults(editor, tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path))  # no cached LoRA: the dry run counts the training
    default = {"mode": "dragdiffusion", "prompt": "a car", "points": [[[131, 264], [200, 313]]]}
    dry = editor.plan(IMAGE, default)
    plan = dry.plan
    assert dry.steps == 50 and plan.start_step == 15 and (plan.kv.start, plan.kv.end) == (15, 50)
    assert plan.optimise.max_steps == 80 and plan.optimise.lr == 0.01 and plan.optimise.feature_blocks == (2,)
    lora = plan.finetune  # the official DragBench LoRA (run_lora_training.py:86-89)
    assert (lora.steps, lora.rank, lora.lr, lora.batch_size, lora.resolution, lora.seed) == (
        80,
        16,
        5e-4,
        4,
        512,
        0,
    )
    without = editor.plan(IMAGE, {**default, "lora_steps": 0})
    assert without.plan.finetune is None
    assert (
        dry.cost.forward_grad - without.cost.forward_grad == 80
        and dry.cost.backward - without.cost.backward == 80
    )
    assert dry.cost.inversion_forward == 35 and dry.cost.forward == 35 + 1 + 2 * 35  # + the source branch
    assert plan.fidelity.kv_source == "reconstruction"
    assert editor.resolve_spec(_spec()).sampler.guidance_scale == 1.0


def test_the_inversion_kv_improvement_drops_the_source_branch_forwards(editor):
    official = editor.plan(IMAGE, _spec())
    cheaper = editor.plan(IMAGE, _spec(profile=["inversion-kv"]))
    assert cheaper.plan.fidelity.kv_source == "inversion"
    assert cheaper.plan.fidelity.profile == "official+inversion-kv"
    assert official.cost.forward - cheaper.cost.forward == SMALL["steps"] - official.plan.start_step


@pytest.mark.slow
def test_the_source_branch_changes_the_edit_and_is_counted(editor):
    a = editor.edit(IMAGE, _spec(n_pix_step=1))
    b = editor.edit(IMAGE, _spec(n_pix_step=1, profile=["inversion-kv"]))
    assert a.report.unet_evaluations["forward"] - b.report.unet_evaluations["forward"] == 4
    assert not torch.allclose(a.latent, b.latent)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lora_resolution": 100}, "lora_resolution"),
        ({"points": [[[131, 264], [600, 10]]]}, "points[0].target"),
        ({"points": [[[-1, 264], [100, 10]]]}, "points[0].handle"),
    ],
)
def test_refusals_name_the_field(editor, change, field):
    with pytest.raises((SpecError, ValidationError)) as err:
        editor.plan(IMAGE, _spec(**change))
    if isinstance(err.value, ValidationError):
        assert err.value.errors()[0]["loc"][0] == field
    else:
        assert err.value.field == field


# -- the CLI and the example plugin ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_cli_lists_and_runs_dragdiffusion(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["modes", "--json"])
    assert res.exit_code == 0, res.output
    (mode,) = [m for m in json.loads(res.stdout) if m["name"] == "dragdiffusion"]
    assert {"points", "lora_steps", "n_pix_step"} <= set(mode["schema"]["properties"])
    (tmp_path / "spec.json").write_text(json.dumps(_spec()))
    out = tmp_path / "out.png"
    args = ["edit", str(IMAGE), "--spec", str(tmp_path / "spec.json"), "--out", str(out), "--json", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unet_evaluations"]["forward_grad"] >= 1
    assert Image.open(out).size == Image.open(IMAGE).size


def test_the_cli_dry_run_counts_the_official_lora_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out.png"
    base = ["edit", str(EXAMPLE_SAMPLE), "--mode", "dragdiffusion", "--model", "tiny", "--out", str(out)]
    runs = {}
    for name, extra in {"official": [], "no-lora": ["--set", "lora_steps=0"]}.items():
        res = CliRunner().invoke(app, [*base, *extra, "--dry-run", "--json"])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads(res.stdout[res.stdout.index("{") :])
    official, plain = runs["official"], runs["no-lora"]
    assert official["finetune"] == {
        "steps": 80,
        "rank": 16,
        "lr": 5e-4,
        "weight_decay": 0.01,
        "batch_size": 4,
        "resolution": 512,
        "seed": 0,
        "cached": False,
    }
    assert plain["finetune"] is None and official["optimisation_steps"] == plain["optimisation_steps"] == 80
    assert official["unet_evaluations"]["backward"] - plain["unet_evaluations"]["backward"] == 80
    assert official["working_size"] == [512, 384] and official["kv_window"] == [15, 50]
    assert not out.exists() and not (tmp_path / "cache").exists()
    text = CliRunner().invoke(app, [*base, "--dry-run"])
    assert text.exit_code == 0 and "a per-image LoRA trained for 80 steps (batch 4)" in text.stdout


@pytest.fixture
def pull_registry(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "dragsdk-pull-plugin"))
    sys.modules.pop("dragsdk_pull_plugin", None)
    reg = Registry()
    reg.load_entry_points()
    reg.register_plugin(importlib.import_module("dragsdk_pull_plugin"), "pull")
    try:
        yield reg
    finally:
        reg.unregister_plugin("pull")
        sys.modules.pop("dragsdk_pull_plugin", None)


@pytest.mark.slow
@pytest.mark.parametrize(("tolerance", "steps"), [(0.0, 4), (1.0, 0)])
def test_the_pull_example_optimises_until_its_tracker_stops_it(tiny_model, pull_registry, tolerance, steps):
    editor = Editor(tiny_model, registry=pull_registry)
    spec = {
        "mode": "pull",
        "prompt": "a car",
        "point": [[131, 264], [200, 313]],
        "steps": 4,
        "tolerance": tolerance,
        "sampler": SMALL,
    }
    result = editor.edit(IMAGE, spec)
    rep = result.report
    assert rep.unet_evaluations["backward"] == steps  # tolerance 1: done at once, before any Adam step
    assert len(rep.optimisation) == (4 if steps else 1) and "distance" in rep.optimisation[0]
    assert result.image.size == Image.open(IMAGE).size


# -- the parity script ----------------------------------------------------------------------------------------------
def _parity_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "parity_dd", ROOT / "benchmarks" / "parity" / "dragdiffusion.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_parity_script_skips_with_a_reason_without_an_official_checkout(tmp_path, capsys):
    assert _parity_module().main(["--official", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 0
    assert "skipped: no official DragDiffusion checkout" in capsys.readouterr().out
    assert not (tmp_path / "r.json").exists()


def test_the_parity_scripts_einops_shim_splits_and_merges_heads():
    rearrange = _parity_module()._einops_shim().rearrange
    x = torch.arange(2 * 3 * 8.0).reshape(2, 3, 8)
    heads = rearrange(x, "b n (h d) -> b h n d", h=4)
    assert heads.shape == (2, 4, 3, 2) and torch.equal(heads[1, 2, 0], x[1, 0, 4:6])
    assert torch.equal(rearrange(heads, "b h n d -> b n (h d)"), x)


# -- DragBench samples: the point-drag spec converted --------------------------------------------------------------
def test_a_drag_spec_converts_to_dragdiffusion_keeping_prompt_points_mask_and_seed():
    from dragsdk.registry import get_registry
    from dragsdk.samples import load_sample

    _, drag = load_sample(EXAMPLE_SAMPLE)
    mode = get_registry().modes["dragdiffusion"]
    out = mode.convert_spec(
        {**drag, "sampler": {"seed": 3, "steps": 50, "guidance_scale": 4.0}}, EXAMPLE_SAMPLE
    )
    spec = mode.spec_model.model_validate(out)
    assert [[list(p.handle), list(p.target)] for p in spec.points] == drag["points"]
    assert spec.prompt == drag["prompt"] and spec.mask is not None
    # DragDiffusion's own settings, not DragonDiffusion's: guidance 1, its 50 steps; the seed carried
    assert spec.sampler.seed == 3 and spec.sampler.guidance_scale == 1.0
    with pytest.raises(SpecError) as err:
        mode.convert_spec({"mode": "move", "dx": 1}, None)
    assert err.value.field == "mode"


@pytest.mark.slow
def test_a_dragbench_sample_edits_end_to_end_from_the_cli_and_in_the_bench(tmp_path):
    from dragsdk.eval.bench import BenchConfig, run_bench

    out = tmp_path / "out.png"
    args = ["edit", str(EXAMPLE_SAMPLE), "--mode", "dragdiffusion", "--steps", "4", "--resolution", "128"]
    args += ["--set", "lora_steps=0", "--set", "n_pix_step=2"]
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["mode"] == "dragdiffusion" and 1 <= report["unet_evaluations"]["backward"] <= 2
    assert report["finetune"] is None  # --set lora_steps=0
    assert Image.open(out).size == Image.open(IMAGE).size
    r = run_bench(
        BenchConfig(
            EXAMPLE_SAMPLE,
            tmp_path / "bench",
            mode="dragdiffusion",
            steps=4,
            resolution=128,
            overrides=("lora_steps=0", "n_pix_step=2"),
            metrics=("dai",),
        ),
        progress=False,
        echo=None,
    )
    (rec,) = r.records
    assert rec["status"] == "ok" and rec["mode"] == "dragdiffusion" and len(rec["spec"]["points"]) == 2
    assert rec["spec"]["lora_steps"] == 0 and rec["spec"]["n_pix_step"] == 2


# -- model families --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-sd2", "tiny-sdxl"])
def test_dragdiffusion_with_its_lora_edits_sd2_and_sdxl_and_leaves_the_unet_as_it_was(
    family, tmp_path, monkeypatch
):
    """SD 2.x (v-prediction: the LoRA trains against v) and SDXL (two text encoders, pooled conditioning) run the
    whole method: LoRA training, inversion, latent optimisation and mutual self-attention sampling."""
    from dragsdk.models import load_model

    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path))
    model = load_model(family, device="cpu")
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    editor = Editor(model)
    spec = _spec(lora_steps=2, lora_rank=2, lora_batch_size=1, lora_resolution=64, n_pix_step=2)
    result = editor.edit(IMAGE, spec)
    rep = result.report
    assert (
        rep.finetune["steps"] == 2
        and not rep.finetune["cached"]
        and np.isfinite(rep.finetune["losses"]).all()
    )
    assert rep.unet_evaluations["backward"] == 2 + len([r for r in rep.optimisation if r["loss"] is not None])
    assert torch.isfinite(result.latent).all() and result.image.size == Image.open(IMAGE).size
    plain = editor.edit(IMAGE, _spec(n_pix_step=2))
    assert not torch.equal(plain.latent, result.latent)  # the LoRA took part in the edit
    after = model.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
