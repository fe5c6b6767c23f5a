"""Reusable pieces of correspondence energies (DragonDiffusion arXiv 2307.02421 §3.2, Eq. 3–6;
official ``guidance_move`` / ``guidance_drag`` / ``guidance_appearance`` / ``guidance_paste``,
``src/models/Sampler.py:150-234, 236-303, 354-420, 422-488``).

Conventions:

- Features are a list of ``(B, C_l, h_l, w_l)`` maps (one per decoder block). Geometry is given on the
  **feature grid** of size ``(W_G, H_G)`` = working size / 4 (a *size* is ``(w, h)`` everywhere in dragsdk, as
  :attr:`dragsdk.geometry.Canvas.feature_size` gives it; tensor *shapes* are ``(h, w)``), which is an integer multiple of every map. A feature-grid
  cell ``(r, c)`` reads map cell ``(r·h_l // H_G, c·w_l // W_G)``: exactly what nearest upsampling of the map to
  the grid gives (the official code upsamples; gathering instead gives the same numbers without materialising
  the upsampled maps).
- Similarity is ``S = (cos + 1) / 2`` ∈ [0, 1], as in the official drag, appearance and paste terms. Only the
  official move / resize edit and content terms use the raw cosine in ``w / (1 + 4·cos)`` (``Sampler.py:200-212``),
  which diverges at cos = −1/4; since every function here averages linearly, the mean cosine is ``2·S − 1``
  (:mod:`dragsdk.plugins.move` does that in its official profile).
- Each function returns one similarity per layer, shape ``(L,)``; modes combine layers.
- ``current`` are the features of the latent being sampled (batch 1); ``guidance`` the guidance features
  (DragonDiffusion's guidance branch: features of the inverted latents), one batch row per bank row (0: the base
  image, k ≥ 1: the plan's k-th reference image), selected by ``bank_row``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Cells = tuple[torch.Tensor, torch.Tensor]
"""``(rows, cols)``: two ``(K,)`` long tensors of feature-grid cells, in pairing order."""


def similarity(a: torch.Tensor, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``S = (cos(a, b) + 1) / 2`` along ``dim``, computed in float32."""
    return (F.cosine_similarity(a.float(), b.float(), dim=dim, eps=1e-6) + 1.0) / 2.0


def gather_cells(
    feature: torch.Tensor, cells: Cells, grid_size: tuple[int, int], row: int = 0
) -> torch.Tensor:
    """Features ``(C, K)`` of batch row ``row`` at feature-grid ``cells`` (nearest map cell); ``grid_size`` is
    ``(W_G, H_G)``."""
    wg, hg = grid_size
    h, w = feature.shape[-2:]
    rows = (cells[0].to(feature.device) * h) // hg
    cols = (cells[1].to(feature.device) * w) // wg
    return feature[row][:, rows, cols]


def local_similarity(
    current: list[torch.Tensor],
    guidance: list[torch.Tensor],
    current_cells: Cells,
    guidance_cells: Cells,
    grid_size: tuple[int, int],
    bank_row: int = 0,
) -> torch.Tensor:
    """Mean over paired cells of ``S(F_cur[current_cells[k]], F_gd[guidance_cells[k]])``, per layer ``(L,)``.

    The local correspondence of DragonDiffusion Eq. 4 (pixels of two equal-size regions paired in order).
    ``grid_size`` is the feature grid's ``(W_G, H_G)`` (``canvas.feature_size``).
    """
    return torch.stack(
        [
            similarity(
                gather_cells(c, current_cells, grid_size),
                gather_cells(r, guidance_cells, grid_size, bank_row),
            ).mean()
            for c, r in zip(current, guidance, strict=True)
        ]
    )


def region_similarity(
    current: list[torch.Tensor], guidance: list[torch.Tensor], mask: torch.Tensor, bank_row: int = 0
) -> torch.Tensor:
    """Mean of ``S(F_cur, F_gd)`` at the same positions over a feature-grid mask, per layer ``(L,)``.

    Computed at each map's own resolution, every map cell weighted by the fraction of its grid cells inside
    ``mask`` (identical to averaging over the nearest-upsampled maps). Content preservation, Eq. 5.

    Args:
        mask: ``(H_G, W_G)`` bool on the feature grid; must not be empty.
    """
    out = []
    m = mask.float()[None, None]
    for c, r in zip(current, guidance, strict=True):
        h, w = c.shape[-2:]
        weight = F.adaptive_avg_pool2d(m.to(c.device), (h, w))[0, 0]
        s = similarity(c[0], r[bank_row], dim=0)
        out.append((s * weight).sum() / weight.sum().clamp_min(1e-12))
    return torch.stack(out)


def pooled_similarity(
    current: list[torch.Tensor],
    guidance: list[torch.Tensor],
    current_mask: torch.Tensor,
    guidance_mask: torch.Tensor,
    bank_row: int = 0,
) -> torch.Tensor:
    """``S`` between mask-mean-pooled features, per layer ``(L,)``: the global correspondence of DragonDiffusion
    (appearance replacement and the move inpaint term), which lets the two regions differ in shape."""
    out = []
    for c, r in zip(current, guidance, strict=True):
        h, w = c.shape[-2:]
        wc = F.adaptive_avg_pool2d(current_mask.float()[None, None].to(c.device), (h, w))[0, 0]
        wr = F.adaptive_avg_pool2d(guidance_mask.float()[None, None].to(r.device), (h, w))[0, 0]
        pc = (c[0].float() * wc).sum((-1, -2)) / wc.sum().clamp_min(1e-12)
        pr = (r[bank_row].float() * wr).sum((-1, -2)) / wr.sum().clamp_min(1e-12)
        out.append(similarity(pc, pr, dim=0))
    return torch.stack(out)


def correspondence_energy(weight: float, s: torch.Tensor) -> torch.Tensor:
    """``E = w / (1 + 4·S)``: low when the correspondence is strong (DragonDiffusion code, α = 1, β = 4)."""
    return weight / (1.0 + 4.0 * s)
