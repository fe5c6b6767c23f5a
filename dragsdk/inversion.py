"""DDIM inversion that builds the memory bank: latents per step, self-attention K/V, guidance features.

Deterministic DDIM inversion (Song et al. 2021, arXiv 2010.02502 Eq. 12 with η = 0, run backwards; as used by
DragonDiffusion, ``src/utils/inversion.py:47-58``): from ``z`` at ``ᾱ_prev`` to ``ᾱ_t``,

    ε = ε_θ(z, t, c),  x̂₀ = (z − √(1−ᾱ_prev)·ε) / √ᾱ_prev,  z_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε.

Conditioned on the text prompt only (no classifier-free guidance). The UNet call that produces ``z_{t_i}`` is
evaluated at timestep ``t_i`` and records the K/V used at sampling step ``i`` (which runs at ``t_i`` too).

Guidance features for the energies at step ``i`` come either from that same call (``recorded``:
``F(z_{t_{i+1}}, t_i)``, the input of the call, one DDIM step less noisy than the latent being sampled; no extra
forward) or from :func:`guidance_features` after the inversion (``inverted``: ``F(z_{t_i}, t_i)``, what the
official estimator computes, ``Sampler.py:255-260``; one truncated no-grad forward row per guided step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch

from .attention import AttentionController, KVBank
from .features import FeatureTap
from .keys import InversionKey

Level: TypeAlias = "float | torch.Tensor"
"""A noise level ᾱ as the DDIM step functions take it: a Python float or a 0-dim tensor (:meth:`DDIMSchedule.levels`)."""


@dataclass
class UNetCounter:
    """UNet evaluations by kind: ``forward`` (no gradient), ``forward_grad`` (feature forward with a graph),
    ``backward`` (one autograd pass), ``guidance`` (batch rows of truncated no-grad guidance-feature forwards,
    :func:`guidance_features`; reported only when nonzero). ``image_encoder`` counts the image-prompt encoder's
    forwards (the IP-Adapter's CLIP vision model, :meth:`~dragsdk.image_prompt.ImagePromptAdapter.tokens`): not UNet
    evaluations, so not in :meth:`to_dict` (the report's ``image_encoder_forwards``)."""

    forward: int = 0
    forward_grad: int = 0
    backward: int = 0
    guidance: int = 0
    image_encoder: int = 0

    def to_dict(self) -> dict[str, int]:
        out = {"forward": self.forward, "forward_grad": self.forward_grad, "backward": self.backward}
        if self.guidance:
            out["guidance"] = self.guidance
        return out


class DDIMSchedule:
    """Timesteps and ᾱ of an ``n``-step DDIM schedule from a diffusers ``DDIMScheduler``.

    ``timesteps[i]`` is the timestep of sampling step ``i`` (descending, e.g. 981, 961, …, 1 for 50 steps);
    ``alpha_prev(i)`` is ᾱ of the step after it (the scheduler's final ᾱ after the last step).
    The given scheduler is not modified (a copy is set to ``steps``), so a host's pipeline keeps its own timesteps.
    """

    def __init__(
        self, scheduler: Any, steps: int, arithmetic: Literal["float64", "float32"] = "float64"
    ) -> None:
        scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it: never touch the host's scheduler
        scheduler.set_timesteps(steps)
        self.timesteps: list[int] = [int(t) for t in scheduler.timesteps]
        self._ac = scheduler.alphas_cumprod.double()
        self._final = float(scheduler.final_alpha_cumprod)
        self.arithmetic: Literal["float64", "float32"] = arithmetic
        """How :meth:`levels` hands ᾱ to the DDIM step (:attr:`dragsdk.fidelity.Fidelity.ddim_arithmetic`)."""

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha(self, i: int) -> float:
        return float(self._ac[self.timesteps[i]])

    def alpha_prev(self, i: int) -> float:
        return float(self._ac[self.timesteps[i + 1]]) if i + 1 < len(self.timesteps) else self._final

    def levels(self, i: int) -> tuple[Level, Level]:
        """``(ᾱ_t, ᾱ_prev)`` of sampling step ``i`` as the DDIM step functions take them: Python floats (their
        square roots taken in float64) or, under ``arithmetic="float32"``, 0-dim float32 tensors (square roots in
        float32, as the official DragDiffusion's ``alphas_cumprod[t] ** 0.5``, ``drag_pipeline.py:383-389``). The
        values are the same float32 numbers either way; only the rounding of ``√ᾱ`` and ``√(1−ᾱ)`` differs."""
        a_t, a_prev = self.alpha(i), self.alpha_prev(i)
        if self.arithmetic == "float32":
            return torch.tensor(a_t, dtype=torch.float32), torch.tensor(a_prev, dtype=torch.float32)
        return a_t, a_prev

    def inversion_step(self, i: int) -> tuple[int, float, float]:
        """``(t, ᾱ_t, ᾱ_prev)`` of the inversion step that records sampling step ``i``: the sampling step's own
        levels here; a schedule whose two passes differ (region-drag's ``RegionDragGrid``) overrides it."""
        return self.timesteps[i], self.alpha(i), self.alpha_prev(i)


def ddim_step(
    z: torch.Tensor,
    eps: torch.Tensor,
    a_t: Level,
    a_prev: Level,
    guidance: torch.Tensor | None = None,
    eta: torch.Tensor | float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM sampling step ``z_t → z_{t_prev}`` with energy guidance in the x̂₀ term only.

    ``x̂₀ = (z − √(1−ᾱ_t)(ε + g)) / √ᾱ_t``;  ``σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``;
    ``z_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ²)·ε + σ·n`` (DDIM arXiv 2010.02502 Eq. 12; guidance placement of
    DragonDiffusion/DiffEditor code, ``src/models/Sampler.py:88-108``). ``eta`` may be a ``(1, 1, h, w)`` map
    (regional SDE). ``a_t`` / ``a_prev`` are floats or 0-dim tensors (:meth:`DDIMSchedule.levels`).
    """
    x0 = (z - (1 - a_t) ** 0.5 * (eps if guidance is None else eps + guidance)) / a_t**0.5
    eta_t = torch.as_tensor(eta, dtype=z.dtype, device=z.device)
    sigma = eta_t * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
    direction = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
    out = a_prev**0.5 * x0 + direction
    if noise is not None and bool((sigma > 0).any()):
        out = out + sigma * noise
    return out


def ddim_inversion_step(z: torch.Tensor, eps: torch.Tensor, a_t: Level, a_prev: Level) -> torch.Tensor:
    """One deterministic DDIM inversion step ``z`` (at ᾱ_prev) → ``z_t`` (at ᾱ_t), with ε evaluated at ``t``:
    ``x̂₀ = (z − √(1−ᾱ_prev)·ε) / √ᾱ_prev``, ``z_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε`` (DDIM arXiv 2010.02502 Eq. 12 run
    backwards). ``a_t`` / ``a_prev``: floats or 0-dim tensors (:meth:`DDIMSchedule.levels`)."""
    x0 = (z - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps


@dataclass
class Trajectory:
    """The inversion of one image (or a batch: base + references), reusable across edits.

    Attributes:
        schedule: the DDIM schedule.
        latents: ``latents[i]`` is ``(B_bank, 4, h, w)`` at timestep ``timesteps[i]`` (the input of sampling step
            ``i``); ``latents[n]`` is the encoded image ``z_0``.
        bank: recorded decoder self-attention K/V per step.
        features: guidance features per sampling step (``(B_bank, C_l, h_l, w_l)`` per block).
        cond: ``(B_bank, 77, D)`` text embeddings the inversion used.
        key: what it was computed from (:class:`~dragsdk.keys.InversionKey`, for caching).
        noises: Cycle-SDE reverse noise ``w`` per sampling step (``(B_bank, 4, h, w)``), empty for DDIM
            (:mod:`dragsdk.cycle_sde`).
        feature_cond: ``(B_bank, 77, D)`` text embeddings of the guidance-feature forwards when they differ from
            ``cond`` (the official appearance / paste use the base prompt for every row, ``Sampler.py:371-383``).
        rng_state: under ``rng="official"`` the state of the edit's one generator after the inversion's draws
            (``torch.Generator.get_state()``), so an edit that reuses this inversion draws what follows them; None
            otherwise.
    """

    schedule: DDIMSchedule
    latents: list[torch.Tensor]
    bank: KVBank
    features: dict[int, list[torch.Tensor]]
    cond: torch.Tensor
    key: InversionKey | None = None
    counter: UNetCounter = field(default_factory=UNetCounter)
    seconds: float = 0.0
    noises: dict[int, torch.Tensor] = field(default_factory=dict)
    feature_cond: torch.Tensor | None = None
    rng_state: torch.Tensor | None = None


@dataclass(frozen=True)
class Inversion:
    """A read-only copy of the inversion an edit uses (:meth:`dragsdk.editor.Editor.invert`).

    Every tensor is a copy, on the model's device and in its dtype: changing one changes nothing in the Editor, and
    another thread's edit never changes this object. ``n`` is the spec's ``sampler.steps``; ``B_bank`` is one row
    per image the inversion ran on (row 0 the base image, then the plan's references); ``(h, w)`` is the latent grid
    (the working size / 8).

    Attributes:
        timesteps: ``timesteps[i]`` is the diffusion timestep (0…999) of sampling step ``i`` (``n`` entries,
            descending).
        latents: ``n + 1`` entries. ``latents[i]`` ``(B_bank, 4, h, w)`` is the inverted latent at ``timesteps[i]``,
            the latent sampling step ``i`` starts from; ``latents[n]`` is the encoded image ``z_0`` (VAE latent ×
            the VAE's scaling factor). None for the steps an inversion skips: those below the plan's
            ``start_step`` (region-drag's Cycle-SDE inversion, dragdiffusion's partial DDIM inversion).
        guidance_features: ``{i: (F_1, F_2, …)}``, the decoder features (one ``(B_bank, C_l, h_l, w_l)`` per feature
            block) the energies of sampling step ``i`` compare against; empty for a mode without energy guidance
            (an ``Editor(official_cost=True)`` recomputes them from ``latents`` and ``feature_cond`` instead).
        cond: ``(B_bank, 77, D)`` text embeddings the inversion was conditioned on (each image its own prompt).
        feature_cond: ``(B_bank, 77, D)`` text embeddings of the guidance-feature forwards: ``cond``, except where
            a profile gives every row the base prompt (the official appearance / paste).
        kv_layers: ``{i: layer names}``, the self-attention layers whose K/V were recorded at sampling step ``i``
            (the K/V bank itself is not copied).
        reused: whether the Editor's cached inversion answered (no UNet evaluation), as
            ``EditReport.inversion_reused``.
    """

    timesteps: tuple[int, ...]
    latents: tuple[torch.Tensor | None, ...]
    guidance_features: dict[int, tuple[torch.Tensor, ...]]
    cond: torch.Tensor
    feature_cond: torch.Tensor
    kv_layers: dict[int, frozenset[str]]
    reused: bool

    @classmethod
    def of(cls, trajectory: Trajectory, reused: bool) -> Inversion:
        """A copy of ``trajectory`` (``trajectory`` itself is never modified after the inversion, so copying it
        needs no lock)."""
        bank = trajectory.bank
        return cls(
            timesteps=tuple(trajectory.schedule.timesteps),
            latents=tuple(None if z.numel() == 0 else z.clone() for z in trajectory.latents),
            guidance_features={
                i: tuple(f.clone() for f in fs) for i, fs in sorted(trajectory.features.items())
            },
            cond=trajectory.cond.clone(),
            feature_cond=(
                trajectory.cond if trajectory.feature_cond is None else trajectory.feature_cond
            ).clone(),
            kv_layers={i: bank.layers(i) for i in bank.steps},
            reused=reused,
        )


@torch.no_grad()
def invert(
    unet: Callable[..., Any],
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    controller: AttentionController,
    tap: FeatureTap,
    kv_steps: set[int],
    feature_steps: set[int],
    counter: UNetCounter,
    on_step: Callable[[int], None] | None = None,
    stop: int = 0,
) -> tuple[list[torch.Tensor], dict[int, list[torch.Tensor]]]:
    """Run DDIM inversion from ``z0`` (``(B, 4, h, w)``) over the steps ``n − 1 … stop`` of ``schedule``: ``stop``
    is the plan's ``start_step`` (sampling never reads the latents below it, which stay empty; DragDiffusion inverts
    35 of 50 steps, official ``drag_pipeline.py:600-601``).

    Records K/V of the bank layers at ``kv_steps`` into ``controller.bank`` and the decoder features at
    ``feature_steps``. Returns ``(latents, features)`` as described in :class:`Trajectory`.
    """
    n = len(schedule)
    latents: list[torch.Tensor] = [torch.empty(0)] * (n + 1)
    latents[n] = z0
    features: dict[int, list[torch.Tensor]] = {}
    z = z0
    controller.mode = "record"
    controller.record_steps = frozenset(kv_steps)
    try:
        for i in reversed(range(stop, n)):
            controller.step = i
            t = schedule.timesteps[i]
            if i in feature_steps:
                with tap.capture():
                    eps = unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
                features[i] = [f.detach() for f in tap.features()]
            else:
                eps = unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
            counter.forward += 1
            z = ddim_inversion_step(z, eps, *schedule.levels(i))
            latents[i] = z
            if on_step:
                on_step(i)
    finally:
        controller.mode = "plain"
        controller.record_steps = None
    return latents, features


@torch.no_grad()
def guidance_features(
    unet: Callable[..., Any],
    latents: list[torch.Tensor],
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    controller: AttentionController,
    tap: FeatureTap,
    steps: set[int],
    counter: UNetCounter,
    rows_per_call: int = 4,
) -> dict[int, list[torch.Tensor]]:
    """Decoder features ``F(z_{t_i}, t_i)`` of the inverted latents at their own timesteps, for each step in ``steps``.

    The official DragonDiffusion estimator's reference (``Sampler.py:255-260``, ``latent_noise_ref[-(i+1)]``):
    plain attention, text conditioning ``cond`` (``(B_bank, 77, D)``), forward stopped after the last feature block.
    Several steps share one UNet call (per-row timesteps, at most ``rows_per_call`` latent rows per call); the
    results are computed once per step, however many passes the step has. ``counter.guidance`` counts rows.

    Args:
        latents: the trajectory's latents, ``latents[i]`` ``(B_bank, 4, h, w)`` at ``schedule.timesteps[i]``.

    Returns:
        ``{i: [(B_bank, C_l, h_l, w_l) per feature block]}``.
    """
    out: dict[int, list[torch.Tensor]] = {}
    order = sorted(steps)
    bank = latents[order[0]].shape[0] if order else 1
    per_call = max(1, rows_per_call // bank)
    prev = controller.mode
    controller.mode = "plain"
    try:
        for k in range(0, len(order), per_call):
            chunk = order[k : k + per_call]
            z = torch.cat([latents[i] for i in chunk])
            t = torch.tensor([schedule.timesteps[i] for i in chunk for _ in range(bank)], device=z.device)
            with tap.capture(stop=True):
                unet(z, t, encoder_hidden_states=cond.repeat(len(chunk), 1, 1), return_dict=False)
            feats = tap.features()
            counter.guidance += len(chunk) * bank
            for j, i in enumerate(chunk):
                out[i] = [f[j * bank : (j + 1) * bank].detach() for f in feats]
    finally:
        controller.mode = prev
    return out
