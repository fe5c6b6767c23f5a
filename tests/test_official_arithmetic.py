"""The official arithmetic a profile can ask for: diffusers' classic attention, float32 DDIM coefficients, the NCHW
image tensor. Each is checked against the official expression it reproduces (retyped here from the cited lines), bit
for bit, and against dragsdk's own choice, which must differ only by rounding."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor
from PIL import Image

from dragsdk import Editor
from dragsdk.attention import classic_attention, split_heads
from dragsdk.backends.eager import sdpa_over_sources
from dragsdk.geometry import Canvas
from dragsdk.inversion import DDIMSchedule, ddim_inversion_step, ddim_step
from dragsdk.kernels.oracle import KVSource

from .builtin_specs import IMAGE


def _scheduler() -> DDIMScheduler:
    # run_drag_diffusion.py:74-77
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# -- attention ------------------------------------------------------------------------------------------------------
def test_classic_attention_is_diffusers_attn_processor_bit_for_bit():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    attn.set_processor(AttnProcessor())
    x = torch.randn(2, 20, 32)
    expected = attn(x)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    out = classic_attention(split_heads(q, 4), [KVSource(split_heads(k, 4), split_heads(v, 4))], attn.scale)
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(2, 20, 32)))
    assert torch.equal(out, expected)


def test_classic_attention_equals_sdpa_up_to_rounding_with_masks_and_several_sources():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 16, 8, generator=g)
    own = KVSource(torch.randn(2, 4, 16, 8, generator=g), torch.randn(2, 4, 16, 8, generator=g))
    mask = torch.rand(12, generator=g) > 0.4
    bank = KVSource(torch.randn(1, 4, 12, 8, generator=g), torch.randn(1, 4, 12, 8, generator=g), mask)
    for sources in ([own], [own, bank], [bank]):
        a, b = classic_attention(q, sources, 0.3), sdpa_over_sources(q, sources, 0.3)
        assert a.shape == b.shape == q.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a hidden key takes no weight: changing its value changes nothing
    hidden = int((~mask).nonzero()[0])
    v2 = bank.v.clone()
    v2[:, :, hidden] += 100.0
    moved = classic_attention(q, [KVSource(bank.k, v2, mask)], 0.3)
    assert torch.equal(moved, classic_attention(q, [bank], 0.3))


# -- DDIM coefficients ----------------------------------------------------------------------------------------------
def _official_inv_step(sched, eps, t, x):
    """drag_pipeline.py:369-390, retyped: ᾱ as float32 tensor entries, powers in float32."""
    prev = min(t - sched.config.num_train_timesteps // sched.num_inference_steps, 999)
    a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    a_next = sched.alphas_cumprod[t]
    pred_x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_next**0.5 * pred_x0 + (1 - a_next) ** 0.5 * eps


def _official_step(sched, eps, t, x):
    """drag_pipeline.py:392-408 (``step``), retyped."""
    prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
    a_t = sched.alphas_cumprod[t]
    a_prev = sched.alphas_cumprod[prev] if prev > 0 else sched.final_alpha_cumprod
    pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * eps


def test_float32_levels_reproduce_the_official_ddim_steps_bit_for_bit_and_float64_only_rounds_differently():
    sched = _scheduler()
    sched.set_timesteps(50)
    official = DDIMSchedule(_scheduler(), 50, arithmetic="float32")
    ours = DDIMSchedule(_scheduler(), 50)
    g = torch.Generator().manual_seed(2)
    differs = 0
    for i in range(len(official)):
        t = official.timesteps[i]
        x, eps = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
        a32 = official.levels(i)
        assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.dim() == 0 for a in a32)
        assert torch.equal(ddim_inversion_step(x, eps, *a32), _official_inv_step(sched, eps, t, x))
        assert torch.equal(ddim_step(x, eps, *a32), _official_step(sched, eps, t, x))
        a64 = ours.levels(i)
        assert a64 == (ours.alpha(i), ours.alpha_prev(i)) and float(a32[0]) == a64[0]
        theirs = ddim_inversion_step(x, eps, *a64)
        torch.testing.assert_close(theirs, _official_inv_step(sched, eps, t, x), rtol=1e-5, atol=1e-6)
        differs += not torch.equal(theirs, _official_inv_step(sched, eps, t, x))
    assert (
        differs > 0
    )  # the two arithmetics are distinguishable, so the float32 equality above means something


# -- the image tensor -----------------------------------------------------------------------------------------------
def test_the_preprocessed_image_is_contiguous_nchw_with_the_official_values(tiny_model):
    import numpy as np

    editor = Editor(tiny_model)
    img = Image.open(IMAGE).convert("RGB").resize((64, 48))
    x = editor._preprocess(img, Canvas((64, 48), (64, 48)))
    assert x.shape == (1, 3, 48, 64) and x.is_contiguous()
    official = torch.from_numpy(np.array(img)).float() / 127.5 - 1  # run_drag_diffusion.py:47-52
    torch.testing.assert_close(x[0], official.permute(2, 0, 1), rtol=0, atol=1e-6)


# -- the profile ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "arithmetic", "attention"),
    [
        ("official", "float32", "classic"),
        (["backend-attention"], "float32", "backend"),
        ("dragsdk", "float64", "backend"),
    ],
)
def test_dragdiffusion_profiles_choose_the_arithmetic(editor, profile, arithmetic, attention):
    spec = {
        "mode": "dragdiffusion",
        "prompt": "a car",
        "points": [[[131, 264], [200, 313]]],
        "profile": profile,
    }
    fid = editor.plan(IMAGE, spec).plan.fidelity
    assert (fid.ddim_arithmetic, fid.attention_math) == (arithmetic, attention)
    assert f"attention_math={attention}" in fid.options and f"ddim_arithmetic={arithmetic}" in fid.options


@pytest.mark.parametrize("mode", ["drag", "move", "region-drag"])
def test_other_modes_keep_dragsdk_arithmetic(editor, mode):
    from .builtin_specs import builtin_specs

    fid = editor.plan(IMAGE, builtin_specs({"steps": 6, "resolution": 64})[mode]).plan.fidelity
    assert (fid.ddim_arithmetic, fid.attention_math) == ("float64", "backend")


def test_the_arithmetic_is_part_of_the_inversion_key(tiny_model):
    from dragsdk.keys import inversion_key

    editor = Editor(tiny_model)
    img = Image.open(IMAGE).convert("RGB")
    spec = {
        "mode": "dragdiffusion",
        "prompt": "a car",
        "points": [[[131, 264], [200, 313]]],
        "sampler": {"steps": 6, "resolution": 64},
    }

    def key(data):
        dry = editor.plan(IMAGE, data)
        return inversion_key(img, editor.resolve_spec(data), dry.plan, dry.canvas.size, "tiny", "w")

    official, backend = key(spec), key({**spec, "profile": ["backend-attention"]})
    assert official.arithmetic == "float32/classic" and backend.arithmetic == "float32/backend"
    assert official != backend


@pytest.mark.slow
def test_classic_attention_changes_the_dragdiffusion_edit_only_by_rounding(editor):
    spec = {
        "mode": "dragdiffusion",
        "prompt": "a car",
        "points": [[[131, 264], [200, 313]]],
        "n_pix_step": 2,
        "lora_steps": 0,
        "sampler": {"steps": 6, "resolution": 64, "seed": 7},
    }
    a = editor.edit(IMAGE, spec).latent
    b = editor.edit(IMAGE, {**spec, "profile": ["backend-attention"]}).latent
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
