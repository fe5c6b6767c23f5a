"""Cycle-SDE inversion: a stochastic inversion whose reverse steps land exactly back on the recorded latents.

The scheduler of SDE-Drag (Nie et al., ICLR 2024, arXiv 2311.01410, §3 "Cycle-SDE"), used by RegionDrag (Lu et
al., ECCV 2024, arXiv 2407.18247, §3.2; official ``cycle_sde.py:111-149``). Reimplemented from those
descriptions; no code was copied.

With ``ᾱ_t`` (``a_t``) the noise level of sampling step ``i`` and ``ᾱ_prev`` (``a_prev``) that of the step after it
(:class:`~dragsdk.inversion.DDIMSchedule`), one **forward step** ``z_prev → z_t`` is

1. fresh noise (DDPM forward marginal ratio, Ho et al. 2020 Eq. 4 applied between two levels)::

       z_t = √(ᾱ_t/ᾱ_prev)·z_prev + √(1 − ᾱ_t/ᾱ_prev)·ε,   ε ~ N(0, I)

2. ``ε̂ = ε_θ(z_t, t, c)`` (this UNet call records the K/V bank entries of sampling step ``i``);
3. the noise ``w`` for which the DDIM step with η = 1 (Song et al. 2021, arXiv 2010.02502 Eq. 12) from ``z_t`` lands
   exactly on ``z_prev``::

       x̂₀ = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t,   σ = √((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)
       w  = (z_prev − √ᾱ_prev·x̂₀ − √(1−ᾱ_prev−σ²)·ε̂) / σ

The **reverse step** is that DDIM step with the stored ``w`` (:func:`reverse_step`), so an unedited latent (with the
same ε̂, e.g. K/V replaced by the recorded ones) reconstructs every recorded latent up to float rounding, while an
edited latent is denoised by a DDPM-like stochastic step. The reverse step reuses
:func:`~dragsdk.inversion.ddim_step`, and ``w`` is solved against exactly that function's output, so the two agree
to the last bit of the arithmetic they share.

A trajectory may start part-way: with ``start`` = the first sampling step, only steps ``start … n−1`` are inverted
(RegionDrag: 20 steps, start at t = 0.5 → 10 forward steps reaching ``t ≈ 451``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .attention import AttentionController
from .inversion import DDIMSchedule, UNetCounter, ddim_step

__all__ = [
    "cycle_sde_invert",
    "cycle_sigma",
    "forward_step",
    "inversion_generator",
    "official_generator",
    "reverse_noise",
    "reverse_step",
]

_SEED_SALT = 0x5DE_C7C1
"""Mixed into the edit seed for the inversion noise, so it never repeats the sampler's draws (handle noise)."""


def inversion_generator(seed: int) -> torch.Generator:
    """The CPU generator of the forward noise of an edit with ``seed`` (independent of the sampler's stream)."""
    return torch.Generator("cpu").manual_seed((int(seed) ^ _SEED_SALT) & 0xFFFF_FFFF_FFFF)


def official_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The one generator of an edit under ``rng="official"`` (:class:`~dragsdk.fidelity.Fidelity`): a fresh
    ``torch.Generator`` on ``device``'s type (``cuda`` for a CUDA device, else ``cpu``) seeded with ``seed``.

    ``torch.manual_seed(seed)`` (the official RegionDrag ``set_seed``, ``cycle_sde.py:66-72``) seeds the default
    generator of the CPU and of every CUDA device the same way, so this generator yields the draws the official
    code's global stream yields, as long as the same shapes and dtypes are drawn in the same order; it is the
    edit's own object, so concurrent edits never share or disturb a stream (nor the process's global one).
    """
    dev = torch.device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    g = torch.Generator(torch.device(kind, dev.index) if kind == "cuda" and dev.index is not None else kind)
    return g.manual_seed(int(seed))


def cycle_sigma(a_t: float, a_prev: float) -> float:
    """σ of the η = 1 DDIM step from ``ᾱ_t`` to ``ᾱ_prev`` (arXiv 2010.02502 Eq. 16 with η = 1), a float ≥ 0."""
    return ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5


def forward_step(z_prev: torch.Tensor, a_t: float, a_prev: float, noise: torch.Tensor) -> torch.Tensor:
    """Noise ``z_prev`` (at ``ᾱ_prev``) up to ``ᾱ_t < ᾱ_prev``: ``√(ᾱ_t/ᾱ_prev)·z_prev + √(1−ᾱ_t/ᾱ_prev)·noise``.

    Args:
        z_prev: ``(B, 4, h, w)`` latent.
        a_t, a_prev: ᾱ of the higher and the lower noise level (``0 < a_t < a_prev ≤ 1``).
        noise: standard normal, same shape as ``z_prev``.

    Raises:
        ValueError: ``a_t`` not below ``a_prev``.
    """
    if not 0 < a_t < a_prev <= 1:
        raise ValueError(f"a forward step needs 0 < a_t < a_prev <= 1, got a_t={a_t}, a_prev={a_prev}")
    r = a_t / a_prev
    return r**0.5 * z_prev + (1 - r) ** 0.5 * noise.to(z_prev)


def reverse_noise(
    z_prev: torch.Tensor, z_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float
) -> torch.Tensor:
    """The noise ``w`` with ``reverse_step(z_t, eps, a_t, a_prev, w) == z_prev`` (up to rounding).

    ``w = (z_prev − DDIM_η=1(z_t, ε̂) without noise) / σ``, σ from :func:`cycle_sigma` (module docstring, step 3).

    Args:
        z_prev: ``(B, 4, h, w)`` latent the reverse step must land on (at ``ᾱ_prev``).
        z_t: the forward step's output (at ``ᾱ_t``); eps: ``ε_θ(z_t, t)``.

    Returns:
        ``(B, 4, h, w)`` in ``z_t``'s dtype.
    """
    base = ddim_step(z_t, eps, a_t, a_prev, eta=1.0, noise=None)
    # σ evaluated exactly as ddim_step evaluates it (same dtype, same order of operations).
    eta = torch.as_tensor(1.0, dtype=z_t.dtype, device=z_t.device)
    sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
    return (z_prev.to(base) - base) / sigma


def reverse_step(
    z: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float, w: torch.Tensor
) -> torch.Tensor:
    """One Cycle-SDE reverse step ``z_t → z_prev``: the DDIM step with η = 1 and the recorded noise ``w``.

    Args:
        z: ``(1, 4, h, w)`` latent at ``ᾱ_t``; eps: ``ε_θ(z, t)``; w: the noise recorded at this step.
    """
    return ddim_step(z, eps, a_t, a_prev, eta=1.0, noise=w.to(z))


@torch.no_grad()
def cycle_sde_invert(
    unet: Callable[..., Any],
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    start: int,
    controller: AttentionController,
    kv_steps: set[int],
    counter: UNetCounter,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
    noise_dtype: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """Cycle-SDE inversion of ``z0`` over sampling steps ``start … n−1`` (``n = len(schedule)``).

    Step ``i`` runs from ``latents[i+1]`` (``latents[n] = z0``, at the schedule's last ``ᾱ_prev``) to ``latents[i]``
    at the levels of ``schedule.inversion_step(i)`` (timestep ``t_i``), evaluating the UNet once at
    ``(latents[i], t_i)`` conditioned on ``cond`` only (no CFG) and
    recording the controller's bank layers there when ``i`` is in ``kv_steps``.

    Args:
        unet: UNet callable with the diffusers signature.
        z0: ``(B, 4, h, w)`` encoded image.
        cond: ``(B, 77, D)`` text embedding.
        schedule: the sampling schedule.
        start: first sampling step (``0 ≤ start < n``); ``n − start`` UNet evaluations.
        controller: the attention controller (processors installed); left in ``plain`` mode.
        kv_steps: sampling steps whose K/V are recorded into ``controller.bank``.
        counter: ``forward`` is incremented per UNet evaluation.
        generator: source of the forward noise (:func:`inversion_generator`, or :func:`official_generator`);
            each step draws one tensor of ``z0``'s shape on the generator's device, the noisiest step last.
        on_step: called with ``i`` after each step.
        noise_dtype: dtype of those draws (float32; the official ``randn_like`` draws in the latent's dtype).

    Returns:
        ``(latents, noises)``: ``latents[i]`` for ``start ≤ i ≤ n`` (``(B, 4, h, w)``; entries below ``start`` are
        empty tensors) and ``noises[i]`` = ``w`` of step ``i`` for the reverse step (:func:`reverse_step`).

    Raises:
        ValueError: ``start`` outside ``[0, n)``.
    """
    n = len(schedule)
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n}), got {start}")
    latents: list[torch.Tensor] = [torch.empty(0)] * (n + 1)
    latents[n] = z0
    noises: dict[int, torch.Tensor] = {}
    z = z0
    controller.mode = "record"
    controller.record_steps = frozenset(kv_steps)
    try:
        for i in reversed(range(start, n)):
            t, a_t, a_prev = schedule.inversion_step(i)
            eps_fwd = torch.randn(z.shape, generator=generator, device=generator.device, dtype=noise_dtype)
            z_t = forward_step(z, a_t, a_prev, eps_fwd.to(z.device))
            controller.step = i
            eps = unet(z_t, t, encoder_hidden_states=cond, return_dict=False)[0]
            counter.forward += 1
            noises[i] = reverse_noise(z, z_t, eps, a_t, a_prev)
            latents[i] = z_t
            z = z_t
            if on_step:
                on_step(i)
    finally:
        controller.mode = "plain"
        controller.record_steps = None
    return latents, noises


def __getattr__(name: str) -> Any:
    """``RegionDragGrid``: kept importable from here for old imports; it lives in the region-drag mode's package
    (:mod:`dragsdk.plugins.region_drag.grid`), imported on first use (the core never imports a plugin)."""
    if name == "RegionDragGrid":
        import importlib

        return importlib.import_module("dragsdk.plugins.region_drag.grid").RegionDragGrid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
