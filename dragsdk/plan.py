"""The edit plan: everything a mode hands the engine. The engine knows nothing about modes.

Grids: latent masks and pastes are on the latent grid ``(h, w)`` = working size / 8; energy terms work on the
feature grid = working size / 4 (see :mod:`dragsdk.geometry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .attention import KVInjection
from .fidelity import Fidelity
from .image_prompt import ImagePromptPlan
from .keys import inverts, no_inversion, plan_field

Features = list[torch.Tensor]
"""Decoder features, one ``(B, C_l, h_l, w_l)`` tensor per feature block."""


@dataclass
class LatentPaste:
    """Copy latent cells: ``z[..., target] = source_latent[..., source]``.

    Attributes:
        target_rows, target_cols, source_rows, source_cols: ``(K,)`` long tensors of latent cells.
        bank: which inverted image the source cells come from (0 = the base image).
        in_place: copy from ``z`` itself, one cell at a time in the target's raster order (row by row, column by
            column), each cell reading ``z`` as the earlier cells (and earlier pastes) left it: what the official
            drag's in-place slice copy ``latent_in[..., tgt] = latent_in[..., src]`` (``src/utils/utils.py:149``)
            computes on the CPU, where torch copies overlapping views element by element in memory order, so a
            target cell whose source cell was already written reads the new value. Equal to the plain copy when
            the source and target cells do not overlap and no earlier paste wrote the source cells. ``bank`` and
            ``source`` are then unused.
    """

    target_rows: torch.Tensor
    target_cols: torch.Tensor
    source_rows: torch.Tensor
    source_cols: torch.Tensor
    bank: int = 0
    in_place: bool = False

    def apply(self, z: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Return ``z`` (``(1, C, h, w)``) with the target cells taken from ``source`` (``(B_bank, C, h, w)``), or
        from ``z`` itself, cell by cell, with ``in_place``."""
        out = z.clone()
        if self.in_place:
            width = z.shape[-1]
            order = torch.argsort(self.target_rows * width + self.target_cols, stable=True).tolist()
            tr, tc = self.target_rows.tolist(), self.target_cols.tolist()
            sr, sc = self.source_rows.tolist(), self.source_cols.tolist()
            for k in order:  # channels never alias one another: one cell of every channel at a time
                out[0, :, tr[k], tc[k]] = out[0, :, sr[k], sc[k]]
            return out
        out[0, :, self.target_rows, self.target_cols] = source[
            self.bank, :, self.source_rows, self.source_cols
        ].to(z)
        return out


@dataclass
class EnergyTerm:
    """One energy term of the guidance.

    Attributes:
        name: shown in the report.
        region: ``edit`` (its gradient is applied inside the edit mask) or ``content`` (outside it);
            DiffEditor's regional score-based gradient guidance, arXiv 2402.02583 Eq. 8.
        fn: ``fn(current, guidance) -> scalar`` where ``current`` are the features of the latent being sampled
            (batch 1, differentiable) and ``guidance`` the guidance features of the inverted latents (batch
            ``B_bank``: row 0 the base image, row k the plan's k-th reference image).
    """

    name: str
    region: Literal["edit", "content"]
    fn: Callable[[Features, Features], torch.Tensor]


@dataclass
class KVPlan:
    """Cross-branch K/V injection at sampling steps ``start ≤ i < end``.

    ``start=None`` (the usual choice) lets the engine take it from ``sampler.kv_start``; ``end=None`` is the step
    count (:func:`dragsdk.modes.apply_sampler_settings`).
    """

    injection: KVInjection
    start: int | None = None
    end: int | None = None

    def active(self, step: int) -> bool:
        return self.start is not None and self.end is not None and self.start <= step < self.end

    def steps(self) -> list[int]:
        if self.start is None or self.end is None:
            raise ValueError(
                "KVPlan window not resolved: the engine sets start / end from the sampler settings"
            )
        return list(range(self.start, self.end))


@dataclass
class SDEPlan:
    """Regional SDE (DiffEditor arXiv 2402.02583 §3.3): η inside / outside the edit mask on steps ``start ≤ i < end``."""

    start: int
    end: int
    eta_inside: float
    eta_outside: float
    mask: torch.Tensor | None = None  # (h, w) latent bool; None = the plan's edit mask


@dataclass
class Reference:
    """An extra image inverted alongside the base (appearance, paste). It must have the base image's size;
    its bank row is its position in :attr:`EditPlan.references` plus one."""

    image: Image.Image
    prompt: str = ""


@dataclass
class StepPaste:
    """A latent paste repeated during sampling (RegionDrag latent copy, arXiv 2407.18247 §3.2).

    Before sampling step ``i`` at timestep ``t``, when ``t ≥ min_timestep`` (an explicit timestep comparison, 0..999):
    ``z[..., target] = latents[i][bank, :, source]``, the recorded inversion latent of the same step.
    """

    paste: LatentPaste
    min_timestep: int = 0

    def active(self, timestep: int) -> bool:
        return timestep >= self.min_timestep


@dataclass
class HandleNoise:
    """Re-noise cells of the starting latent: ``z ← √(1−α²)·z + α·ε`` (RegionDrag handle noise scale α, §3.2).

    Attributes:
        rows, cols: ``(K,)`` long tensors of latent cells.
        alpha: α in [0, 1]; 1 replaces the cells with pure noise ε ~ N(0, I).
        draw_rows, draw_cols: ``(N,)`` long tensors, or None: the official point list (RegionDrag ``blur_source``,
            ``region_utils/drag.py:105-109``), sources in the official order with their repeats. Given, ε is drawn
            as one ``(C, N)`` tensor in the latent's dtype, column ``k`` for point ``k``, and a cell named several
            times takes the last column naming it (the official indexed assignment, run serially); the cells
            re-noised are those of the list and ``rows`` / ``cols`` are not used. None: ε is drawn with the
            latent's whole shape and read at ``rows`` / ``cols``.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    alpha: float
    draw_rows: torch.Tensor | None = None
    draw_cols: torch.Tensor | None = None

    def apply(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``z`` (``(1, C, h, w)``) with the cells re-noised; ε is drawn on ``generator``'s device."""
        device = generator.device if generator else "cpu"
        out = z.clone()
        a = float(self.alpha)
        keep = (1 - a * a) ** 0.5 if a < 1 else 0.0  # official: img_scale 0 at α ≥ 1
        if self.draw_rows is not None and self.draw_cols is not None:
            h, w = z.shape[-2:]
            lin = self.draw_rows.long() * w + self.draw_cols.long()
            n = lin.numel()
            eps = torch.randn((z.shape[1], n), generator=generator, device=device, dtype=z.dtype).to(z)
            last = torch.full((h * w,), -1, dtype=torch.long).scatter_reduce(
                0, lin, torch.arange(n), reduce="amax"
            )
            cells = torch.nonzero(last >= 0).flatten()  # each cell named, with the last column naming it
            r, c = cells // w, cells % w
            out[0, :, r, c] = z[0, :, r, c] * keep + eps[:, last[cells].to(eps.device)] * a
            return out
        eps = torch.randn(z.shape, generator=generator, device=device).to(z)
        r, c = self.rows, self.cols
        out[..., r, c] = (1 - a * a) ** 0.5 * z[..., r, c] + a * eps[..., r, c]
        return out


@dataclass
class OptimisationState:
    """What a :class:`LatentOptimisation`'s ``objective`` and ``tracker`` see at one iteration.

    Attributes:
        iteration: ``0 … max_steps − 1``.
        latent: ``(1, 4, h, w)`` the latent being optimised (a leaf with ``requires_grad``; the objective's loss
            must depend on it).
        features: the outputs of the decoder blocks ``LatentOptimisation.feature_blocks`` for ``latent``, one
            ``(1, C_l, h_l, w_l)`` tensor each, differentiable.
        x_prev: ``(1, 4, h, w)`` the DDIM step ``z_{t_prev}`` predicted from ``latent`` (η = 0), differentiable.
        initial: the state of the unoptimised latent (detached; ``initial.initial`` is None): ``F0`` and
            ``x_prev_0`` of DragDiffusion (official ``utils/drag_utils.py:94-98``).
        memo: a dict kept across the iterations of one run of the stage (a mode's tracked points live here); it
            starts empty, so a plan can be run again.
        record: what the mode wants kept for this iteration in the edit's report (``EditReport.optimisation``),
            e.g. ``{"handles": [[y, x], ...]}``; JSON-serialisable values only.
    """

    iteration: int
    latent: torch.Tensor
    features: list[torch.Tensor]
    x_prev: torch.Tensor
    initial: OptimisationState | None
    memo: dict[str, Any]
    record: dict[str, Any]


@dataclass(frozen=True)
class ImageLoRA:
    """Fine-tune a LoRA on the edited image before inverting it (DragDiffusion's per-image LoRA, arXiv 2306.14435
    §3.1; official ``train_lora``, ``utils/lora_utils.py:108-358``, run by
    ``drag_bench_evaluation/run_lora_training.py:86-89``).

    The engine (:mod:`dragsdk.finetune`, stage ``finetune`` of :class:`~dragsdk.session.EditRun`) trains a rank-``rank``
    LoRA on the UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``; ``lora_utils.py:169-203``)
    with AdamW (``lr``, β = (0.9, 0.999), ``weight_decay``, ε = 1e-8, constant rate; ``:232-247``) for ``steps``
    steps of ``batch_size`` random ``resolution``² crops of the working-size image (shorter side resized to
    ``resolution``, bilinear; ``:268-273``), the ε / v loss of a random timestep (``:298-326``); or loads it from
    the on-disk cache, then edits with it (inversion, optimisation and sampling) and removes it.

    Attributes:
        steps: training steps (≥ 1; official DragBench 80, ``run_lora_training.py:89``).
        rank: the LoRA rank (official 16).
        lr: AdamW's learning rate (official 5e-4).
        batch_size: crops per step (official DragBench and UI 4: ``run_lora_training.py:89``, ``drag_ui.py:107``).
        resolution: crop side in pixels, a multiple of 8 (official 512); None trains on the working-size image as
            it is (no resize, no crop).
        seed: the seed of the training's own random stream (official ``set_seed(0)``, ``lora_utils.py:124``).
        weight_decay: AdamW's decoupled weight decay (official 1e-2, ``lora_utils.py:236``).
    """

    steps: int
    rank: int = 16
    lr: float = 5e-4
    batch_size: int = 4
    resolution: int | None = 512
    seed: int = 0
    weight_decay: float = 1e-2

    def __post_init__(self) -> None:
        for name, lo in (("steps", 1), ("rank", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ImageLoRA.{name} must be an int >= {lo}, got {v!r}")
        if self.resolution is not None and (
            isinstance(self.resolution, bool)
            or not isinstance(self.resolution, int)
            or self.resolution < 8
            or self.resolution % 8
        ):
            raise ValueError(
                f"ImageLoRA.resolution must be None or a multiple of 8 >= 8, got {self.resolution!r}"
            )
        if not (0 < float(self.lr) < float("inf")):
            raise ValueError(f"ImageLoRA.lr must be a finite number > 0, got {self.lr!r}")
        if not (0 <= float(self.weight_decay) < float("inf")):
            raise ValueError(
                f"ImageLoRA.weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ImageLoRA.seed must be an int >= 0, got {self.seed!r}")

    def settings(self) -> dict[str, Any]:
        """Every training setting by name (the cache key's and the report's)."""
        return dataclasses.asdict(self)


@dataclass
class LatentOptimisation:
    """Optimise the inverted latent of one timestep before sampling (DragDiffusion's motion supervision and point
    tracking, arXiv 2306.14435 §3.2; official ``drag_diffusion_update``, ``utils/drag_utils.py:79-161``).

    The engine (:mod:`dragsdk.optimise`, stage ``optimise`` of :class:`~dragsdk.session.EditRun`) runs, on the
    inverted latent of sampling step ``EditPlan.start_step``:

    1. one forward without a graph: the ``initial`` state (features and ``x_prev``);
    2. for ``k`` in ``0 … max_steps − 1``: a forward with a graph (state ``k``); ``tracker(state)`` (when given)
       updates what the mode tracks and returns True when the goal is reached, which ends the loop before the
       loss; else ``loss = objective(state)``, one backward and one Adam step (``lr``) on the latent.

    Sampling then starts from the optimised latent. UNet evaluations: 1 forward, at most ``max_steps`` graph
    forwards and ``max_steps`` backwards (the dry run counts the maximum; a tracker that stops early makes fewer).

    Attributes:
        objective: ``objective(state) -> scalar`` tensor.
        max_steps: the most Adam steps (≥ 0).
        lr: Adam's learning rate.
        tracker: ``tracker(state) -> bool``, or None (always ``max_steps`` steps).
        feature_blocks: indices of ``unet.up_blocks`` whose outputs are ``state.features`` (SD 1.5:
            ``up_blocks[2]`` is 640 channels at the latent size).
    """

    objective: Callable[[OptimisationState], torch.Tensor]
    max_steps: int
    lr: float
    tracker: Callable[[OptimisationState], bool] | None = None
    feature_blocks: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ValueError(f"LatentOptimisation.max_steps must be an int >= 0, got {self.max_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"LatentOptimisation.lr must be > 0, got {self.lr!r}")
        if not self.feature_blocks:
            raise ValueError("LatentOptimisation.feature_blocks must name at least one decoder block")


@dataclass
class EditPlan:
    """What a mode supplies for one edit.

    Each field declares whether the inversion depends on it (:func:`~dragsdk.keys.inverts` /
    :func:`~dragsdk.keys.no_inversion`, read by :func:`~dragsdk.keys.inversion_key`'s test).

    Attributes:
        edit_mask: ``(h, w)`` bool on the latent grid: where edit-term gradients apply (content terms outside).
        energies: energy terms; empty for gradient-free modes.
        energy_scale: the energy gradient's scale in the spec's unit, the DragonDiffusion UI "energy": λ =
            :data:`~dragsdk.spec.ENERGY_UNIT` · ``energy_scale`` (the sampler multiplies). ``None``: the spec's
            ``energy_scale`` field.
        guidance_step: c, a further multiplier (0.04 drag, 0.08 move; DragonDiffusion code defaults). ``None``:
            the spec's ``guidance_step`` field.
        guided_steps: sampling step indices that take energy guidance; ``None``: ``sampler.schedule``.
        init: latent pastes applied to z_T before sampling.
        kv: cross-branch K/V injection, or None.
        sde: regional SDE window, or None: the engine builds it from ``sampler.sde`` (deterministic DDIM when
            that is disabled) on ``sde_mask``.
        sde_mask: ``(h, w)`` latent bool region of the regional SDE; None = ``edit_mask``.
        composite: paste the original pixels back outside ``edit_mask`` after decoding.
        time_travel: ``{step: passes}`` for DiffEditor time travel on guided steps; None: ``sampler.time_travel``.
        references: extra images inverted in the same batch as the base (bank rows 1, 2, ...).
        notes: human-readable facts for the report (e.g. "no mask given: whole image editable").
        sampling: ``ddim`` (DDIM inversion and sampling) or ``cycle-sde`` (:mod:`dragsdk.cycle_sde`: stochastic
            inversion recording the reverse noise; the sampler runs η = 1 steps with it).
        start_step: first sampling step; inversion covers steps ``start_step … n−1`` only (cycle-sde).
        step_pastes: latent copies repeated before every sampling step inside their timestep window.
        follow_outside: reset the latent outside ``edit_mask`` to the inversion latent of the same level.
        handle_noise: cells of the starting latent re-noised before sampling, or None.
        kv_layers: self-attention layers that record / inject K/V: ``decoder`` (up blocks), ``all``, or an int
            ``n``: the self-attention layers from the ``n``-th on in forward order (encoder, mid, decoder; MasaCtrl's
            ``start_layer``; SD 1.5 has 16, so ``10`` is the last six, in ``up_blocks[2]`` and ``[3]``).
        schedule: ``schedule(scheduler, steps)`` builds the time grid of both passes (default: the model's DDIM
            schedule, :class:`~dragsdk.inversion.DDIMSchedule`); ``schedule_key`` names it in the inversion cache key.
        composite_mask: ``(H, W)`` bool in image pixels used by ``composite`` instead of ``edit_mask`` upsampled.
        fidelity: the fidelity options the engine branches on (guidance features, step-0 guidance, roll-back
            timestep, reference prompt, outside reset, VAE latent, 8-bit conversion) and the report's profile, in
            one place (:class:`~dragsdk.fidelity.Fidelity`, built by a mode's
            :meth:`~dragsdk.fidelity.ProfileTable.fidelity`).
        optimise: a :class:`LatentOptimisation` of the latent at ``start_step`` run between inversion and
            sampling, or None.
        image_prompt: the official image prompt (IP-Adapter scale and step window), used when the editor has an
            adapter loaded (:meth:`dragsdk.editor.Editor.load_ip_adapter`); None = the mode has none.
        finetune: an :class:`ImageLoRA` trained on the image (or loaded from the cache) before ``encode`` and used
            by the whole edit, or None.
    """

    edit_mask: torch.Tensor = plan_field(no_inversion())
    energies: list[EnergyTerm] = plan_field(
        inverts("feature_steps: energies make the plan guided"), default_factory=list
    )
    energy_scale: float | None = plan_field(
        inverts("feature_steps: a zero scale leaves the plan unguided"), default=None
    )
    guidance_step: float | None = plan_field(
        inverts("feature_steps: a zero step leaves the plan unguided"), default=None
    )
    guided_steps: list[int] | None = plan_field(inverts("feature_steps"), default=None)
    init: list[LatentPaste] = plan_field(no_inversion(), default_factory=list)
    kv: KVPlan | None = plan_field(inverts("kv_steps: its window"), default=None)
    sde: SDEPlan | None = plan_field(no_inversion(), default=None)
    sde_mask: torch.Tensor | None = plan_field(no_inversion(), default=None)
    composite: bool = plan_field(no_inversion(), default=False)
    time_travel: dict[int, int] | None = plan_field(no_inversion(), default=None)
    references: list[Reference] = plan_field(inverts("references"), default_factory=list)
    notes: list[str] = plan_field(no_inversion(), default_factory=list)
    sampling: Literal["ddim", "cycle-sde"] = plan_field(inverts("sampling"), default="ddim")
    start_step: int = plan_field(inverts("start_step"), default=0)
    step_pastes: list[StepPaste] = plan_field(no_inversion(), default_factory=list)
    follow_outside: bool = plan_field(no_inversion(), default=False)
    handle_noise: HandleNoise | None = plan_field(no_inversion(), default=None)
    kv_layers: Literal["decoder", "all"] | int = plan_field(inverts("kv_layers"), default="decoder")
    schedule: Callable[[Any, int], Any] | None = plan_field(
        inverts("schedule: named by schedule_key"), default=None
    )
    schedule_key: str = plan_field(inverts("schedule"), default="ddim")
    composite_mask: np.ndarray | None = plan_field(no_inversion(), default=None)
    fidelity: Fidelity = plan_field(
        inverts(
            "guidance_features, feature_steps, reference_prompt, vae_latent, vae_seed, arithmetic: its "
            "guidance_features, step0_guidance, reference_prompt, vae_latent, ddim_arithmetic and attention_math"
        ),
        default_factory=Fidelity,
    )
    image_prompt: ImagePromptPlan | None = plan_field(
        inverts("image_prompt: when the inversion uses it"), default=None
    )

    optimise: LatentOptimisation | None = plan_field(no_inversion(), default=None)
    finetune: ImageLoRA | None = plan_field(
        inverts("weights: the per-image LoRA is on the UNet while the edit inverts"), default=None
    )

    @property
    def needs_gradients(self) -> bool:
        return (
            bool(self.energies)
            and (self.energy_scale or 0.0) * (self.guidance_step or 0.0) > 0
            and bool(self.guided_steps)
        )

    def energy_steps(self) -> set[int]:
        """The sampling steps that take energy guidance (none when the plan has no gradient to follow)."""
        return set(self.guided_steps or ()) if self.needs_gradients else set()

    def kv_modes(self) -> list[str]:
        return [self.kv.injection.mode] if self.kv else []
