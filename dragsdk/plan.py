"""The edit plan: everything a mode hands the engine. The engine knows nothing about modes.

Grids: latent masks and pastes are on the latent grid ``(h, w)`` = working size / 8; energy terms work on the
feature grid = working size / 4 (see :mod:`dragsdk.geometry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from .attention import KVInjection

Features = list[torch.Tensor]
"""Decoder features, one ``(B, C_l, h_l, w_l)`` tensor per feature block."""


@dataclass
class LatentPaste:
    """Copy latent cells: ``z[..., target] = source_latent[..., source]``.

    Attributes:
        target_rows, target_cols, source_rows, source_cols: ``(K,)`` long tensors of latent cells.
        bank: which inverted image the source cells come from (0 = the base image).
    """

    target_rows: torch.Tensor
    target_cols: torch.Tensor
    source_rows: torch.Tensor
    source_cols: torch.Tensor
    bank: int = 0

    def apply(self, z: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Return ``z`` (``(1, C, h, w)``) with the target cells taken from ``source`` (``(B_bank, C, h, w)``)."""
        out = z.clone()
        out[0, :, self.target_rows, self.target_cols] = source[self.bank, :, self.source_rows, self.source_cols].to(z)
        return out


@dataclass
class EnergyTerm:
    """One energy term of the guidance.

    Attributes:
        name: shown in the report.
        region: ``edit`` (its gradient is applied inside the edit mask) or ``content`` (outside it);
            DiffEditor's regional score-based gradient guidance, arXiv 2402.02583 Eq. 8.
        fn: ``fn(current, reference) -> scalar`` where ``current`` are the features of the latent being sampled
            (batch 1, differentiable) and ``reference`` those recorded at inversion (batch ``B_bank``).
    """

    name: str
    region: Literal["edit", "content"]
    fn: Callable[[Features, Features], torch.Tensor]


@dataclass
class KVPlan:
    """Cross-branch K/V injection at sampling steps ``start ≤ i < end``."""

    injection: KVInjection
    start: int
    end: int

    def active(self, step: int) -> bool:
        return self.start <= step < self.end

    def steps(self) -> list[int]:
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
class EditPlan:
    """What a mode supplies for one edit.

    Attributes:
        edit_mask: ``(h, w)`` bool on the latent grid: where edit-term gradients apply (content terms outside).
        energies: energy terms; empty for gradient-free modes.
        energy_scale: λ, the multiplier of the energy gradient (DragonDiffusion UI "energy" × 1000).
        guidance_step: c, a further multiplier (0.04 drag, 0.08 move; dossier §2).
        guided_steps: sampling step indices that take energy guidance.
        init: latent pastes applied to z_T before sampling.
        kv: cross-branch K/V injection, or None.
        sde: regional SDE window, or None (deterministic DDIM).
        composite: paste the original pixels back outside ``edit_mask`` after decoding.
        notes: human-readable facts for the report (e.g. "no mask given: whole image editable").
    """

    edit_mask: torch.Tensor
    energies: list[EnergyTerm] = field(default_factory=list)
    energy_scale: float = 0.0
    guidance_step: float = 0.0
    guided_steps: list[int] = field(default_factory=list)
    init: list[LatentPaste] = field(default_factory=list)
    kv: KVPlan | None = None
    sde: SDEPlan | None = None
    composite: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def needs_gradients(self) -> bool:
        return bool(self.energies) and self.energy_scale * self.guidance_step > 0 and bool(self.guided_steps)

    def kv_modes(self) -> list[str]:
        return [self.kv.injection.mode] if self.kv else []
