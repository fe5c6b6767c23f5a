"""Every built-in mode passes the conformance check plugin authors run (:mod:`dragsdk.testing`), and the check
catches the faults it names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dragsdk import Editor
from dragsdk.testing import (
    ConformanceError,
    assert_slice_close,
    check_dry_run_cost,
    check_mode,
    check_plan,
    latent_slice,
    sample_image,
)

from .builtin_specs import BUILTIN_MODES, IMAGE, builtin_specs

TWO_STEPS = {"steps": 2, "resolution": 128}
STEPS = {"region-drag": 4}
"""Official region-drag inverts int(start_t·n) steps on DPMSolver's grid; at n = 2 that first inverted level is
1000 > 999, refused as the official code fails there (dragsdk.cycle_sde), so it runs the check at 4 steps."""


@pytest.mark.slow
@pytest.mark.parametrize("mode", BUILTIN_MODES)
def test_each_builtin_mode_passes_the_conformance_check(tiny_model, mode):
    steps = STEPS.get(mode, 2)
    out = check_mode(Editor(tiny_model), IMAGE, builtin_specs(TWO_STEPS)[mode], steps=steps)
    assert out.checked == [
        "schema",
        "json round-trip",
        "plan shapes",
        "edit",
        "dry-run cost",
        "profiles",
        "cancellation",
    ]
    assert out.result.report.mode == mode and out.result.report.steps == steps


def test_the_plan_check_refuses_a_mask_off_the_latent_grid(tiny_model):
    dry = Editor(tiny_model).plan(IMAGE, builtin_specs(TWO_STEPS)["move"])
    h, w = dry.plan.edit_mask.shape
    bad = dataclasses.replace(
        dry, plan=dataclasses.replace(dry.plan, edit_mask=torch.zeros(h + 1, w, dtype=torch.bool))
    )
    with pytest.raises(ConformanceError, match="plan shapes: edit_mask"):
        check_plan(bad)


@pytest.mark.slow
def test_the_cost_check_refuses_a_dry_run_that_disagrees_with_the_report(tiny_model):
    editor = Editor(tiny_model)
    spec = builtin_specs(TWO_STEPS)["drag"]
    dry = editor.plan(IMAGE, spec)
    result = editor.edit(IMAGE, spec)
    check_dry_run_cost(dry, result)
    off = dataclasses.replace(dry, cost=dataclasses.replace(dry.cost, forward=dry.cost.forward + 1))
    with pytest.raises(ConformanceError, match="dry-run cost"):
        check_dry_run_cost(off, result)


def test_the_golden_slice_is_the_centre_window_and_the_comparison_names_the_worst_value():
    z = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(1, 4, 6, 8)
    s = latent_slice(z)
    assert len(s) == 4 * 9 and s[0] == float(z[0, 0, 2, 3]) and s[-1] == float(z[0, 3, 4, 5])
    assert_slice_close(s, [v + 5e-6 for v in s], atol=1e-5)
    with pytest.raises(ConformanceError, match="index 3"):
        assert_slice_close(s, [v + (1.0 if k == 3 else 0.0) for k, v in enumerate(s)], atol=1e-5)


def test_the_sample_image_is_deterministic_rgb_of_the_asked_size():
    a, b = sample_image((96, 64), seed=3), sample_image((96, 64), seed=3)
    assert a.size == (96, 64) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert sample_image((96, 64), seed=4).tobytes() != a.tobytes()
