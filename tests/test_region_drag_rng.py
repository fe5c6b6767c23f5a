"""Region drag's random streams (``rng``): ``official`` draws what the official RegionDrag code draws from its global
stream after ``set_seed(seed)`` (Visual-AI/RegionDrag @5cf4922), ``dragsdk`` keeps independent streams; both are
repeatable from the seed alone."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dragsdk.plugins.region_drag import RegionDragSpec
from dragsdk.trace import TracePass, read_trace, write_trace

from .test_region_drag import _car

H0, T0, T1 = [200, 200], [240, 216], [264, 232]
"""One handle named twice (to two targets): the official list has a repeated source."""


def _spec(rng: str, seed: int = 42, steps: int = 20, **fields) -> dict:
    return {
        "mode": "region-drag",
        "prompt": "a car",
        "dense_points": [H0, T0, H0, T1],
        "rng": rng,
        "sampler": {"steps": steps, "resolution": 128, "seed": seed},
        **fields,
    }


def _official_draws(seed: int, latent_shape: tuple[int, ...], n_forward: int, n_points: int):
    """The official code's draws, literally: ``set_seed`` then ``randn_like`` on the CPU's global stream, in
    ``drag()``'s order (``get_img_latent``'s posterior sample, each ``forward_sde``, then ``blur_source``), with the
    process's global stream restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = torch.randn(latent_shape)
        forward = [torch.randn(latent_shape) for _ in range(n_forward)]
        handle = torch.randn(latent_shape[1], n_points)
    return vae, forward, handle


def _official_levels(scheduler, steps: int, n_inv: int) -> list[tuple[float, float]]:
    """``(ᾱ_t, ᾱ_prev)`` of each official ``forward_sde`` call in order (``region_utils/drag.py:116-123``,
    ``cycle_sde.py:131-137``): DPM-Solver's timesteps, the last ``n_inv`` flipped, each noised to ``t + 1000//n``."""
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler.from_config(scheduler.config)
    with (
        warnings.catch_warnings()
    ):  # diffusers' sigma table passes a tensor through np.array (numpy 2 notice)
        warnings.simplefilter("ignore", DeprecationWarning)
        dpm.set_timesteps(steps)
    ac = dpm.alphas_cumprod
    delta = dpm.config.num_train_timesteps // steps
    return [(float(ac[int(t)]), float(ac[int(t) + delta])) for t in dpm.timesteps[steps - n_inv :].flip(0)]


@pytest.mark.parametrize("vae_latent", ["sample", "mean"])
def test_rng_official_inversion_noise_is_the_official_global_stream_after_the_vae_sample(
    editor, one_thread, vae_latent
):
    """With ``vae_latent="mean"`` the posterior draw is still taken (and dropped): the forward noise stays official."""
    seed, n = 1234, 20
    before = torch.get_rng_state()
    inv = editor.invert(_car(), _spec("official", seed, vae_latent=vae_latent))
    assert torch.equal(torch.get_rng_state(), before)  # the process's global stream is never drawn from
    z = inv.latents
    n_inv = sum(x is not None for x in z) - 1
    levels = _official_levels(editor.model.scheduler, n, n_inv)
    _, forward, _ = _official_draws(seed, tuple(z[n].shape), n_inv, 2)
    _, other, _ = _official_draws(seed + 1, tuple(z[n].shape), n_inv, 2)
    for k, (a_t, a_prev) in enumerate(levels):  # z_next = √(ᾱ_prev/ᾱ_t)·z + √(1 − ᾱ_prev/ᾱ_t)·ε (official)
        r = a_prev / a_t
        eps = (z[n - 1 - k].float() - r**0.5 * z[n - k].float()) / (1 - r) ** 0.5
        assert float((eps - forward[k]).abs().max()) < 1e-4, f"forward step {k}"
        assert float((eps - other[k]).abs().max()) > 1.0


def test_rng_official_handle_noise_is_the_next_official_draw_and_the_last_repeat_wins(
    editor, one_thread, tmp_path
):
    seed = 1234
    spec = _spec("official", seed)
    dry = editor.plan(_car(), spec)
    hn = dry.plan.handle_noise
    assert hn.draw_rows.tolist() == [int(hn.draw_rows[0])] * 2  # H0 twice, in the list's order
    r, c = int(hn.draw_rows[0]), int(hn.draw_cols[0])
    editor.edit(_car(), spec, trace=tmp_path / "t.npz")
    arrays, meta = read_trace(tmp_path / "t.npz")
    start = arrays["latent_before"][0]
    n_inv = 20 - dry.plan.start_step
    _, _, handle = _official_draws(seed, (1, *start.shape), n_inv, 2)
    got = torch.from_numpy(start[:, r, c])
    assert torch.allclose(got, handle[:, 1], atol=1e-6)  # α = 1: the cell is ε of its last list entry
    assert not torch.allclose(got, handle[:, 0], atol=1e-2)
    assert meta["rng"] == "official" and meta["seed"] == seed


@pytest.mark.parametrize("rng", ["official", "dragsdk"])
def test_same_seed_is_bit_identical_and_another_seed_differs(editor, one_thread, rng):
    img = _car()
    a = editor.edit(img, _spec(rng, 7, steps=8), reuse_inversion=False)
    b = editor.edit(img, _spec(rng, 7, steps=8))  # reuses a's inversion: the stream continues as it left it
    c = editor.edit(img, _spec(rng, 7, steps=8), reuse_inversion=False)
    d = editor.edit(img, _spec(rng, 8, steps=8), reuse_inversion=False)
    assert b.report.inversion_reused and not c.report.inversion_reused
    assert torch.equal(a.latent, b.latent) and torch.equal(a.latent, c.latent)
    assert float((a.latent - d.latent).norm() / a.latent.norm()) > 0.1
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))


def test_the_two_rng_values_draw_different_noise_from_one_seed(editor, one_thread):
    a = editor.edit(_car(), _spec("official", steps=8), reuse_inversion=False)
    b = editor.edit(_car(), _spec("dragsdk", steps=8), reuse_inversion=False)
    assert float((a.latent - b.latent).norm() / a.latent.norm()) > 0.1


def test_rng_defaults_official_in_the_official_profile_and_dragsdk_in_the_dragsdk_profile():
    base = {"dense_points": [H0, T0]}
    assert RegionDragSpec(**base).options().rng == "official"
    assert RegionDragSpec(**base, profile="dragsdk").options().rng == "dragsdk"
    assert RegionDragSpec(**base, profile="dragsdk", rng="official").options().rng == "official"


def test_a_trace_written_before_the_rng_option_reads_as_dragsdk(tmp_path):
    z = torch.zeros(1, 4, 2, 2)
    write_trace(tmp_path / "old.npz", [TracePass(0, 0, 999, z, z)], {"mode": "region-drag", "seed": 3})
    _, meta = read_trace(tmp_path / "old.npz")
    assert meta["rng"] == "dragsdk" and meta["seed"] == 3
