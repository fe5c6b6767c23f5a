"""Proposing the mask of the part under a click (the DIFT correspondence idea, Tang et al. arXiv 2306.03881).

Diffusion decoder features of a lightly noised image are compared by cosine with the feature under the click;
cells similar enough are kept, then only the connected component under the click, dilated a little.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def check_proposal_settings(
    threshold: object, timestep: object, resolution: object, dilate_px: object, train_timesteps: int = 1000
) -> None:
    """Refuse mask-proposal settings that would give an empty or full mask silently, or fail deep in the model.

    Raises:
        SpecError: (``threshold``) not a finite number in [0, 1] (a cosine similarity threshold); (``timestep``) not
            an int in ``[0, train_timesteps)``; (``resolution``) not an int ≥ 64; (``dilate_px``) not an int ≥ 0.
    """
    import math

    from .errors import SpecError

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise SpecError("threshold", f"expected a cosine-similarity threshold in [0, 1], got {threshold!r}")
    if not is_int(timestep) or not 0 <= timestep < train_timesteps:  # type: ignore[operator]
        raise SpecError(
            "timestep", f"expected an integer timestep in [0, {train_timesteps - 1}], got {timestep!r}"
        )
    if not is_int(resolution) or resolution < 64:  # type: ignore[operator]
        raise SpecError(
            "resolution", f"expected an integer working resolution >= 64 pixels, got {resolution!r}"
        )
    if not is_int(dilate_px) or dilate_px < 0:  # type: ignore[operator]
        raise SpecError("dilate_px", f"expected a non-negative integer (pixels), got {dilate_px!r}")


def mask_from_features(features: torch.Tensor, cell: tuple[int, int], threshold: float = 0.6) -> torch.Tensor:
    """The region of cells similar to ``cell`` and connected to it.

    Similarity is the cosine with the feature at ``cell``, rescaled so the map's minimum is 0 and ``cell`` is 1;
    cells at or above ``threshold`` are candidates, and the 8-connected component containing ``cell`` is kept.

    Args:
        features: ``(C, h, w)`` feature map.
        cell: ``(col, row)`` of the click on that map.
        threshold: in [0, 1].

    Returns:
        ``(h, w)`` bool tensor; always contains ``cell``.
    """
    c, h, w = features.shape
    col, row = cell
    f = F.normalize(features.float(), dim=0)
    sim = (f * f[:, row, col][:, None, None]).sum(0)
    sim = (sim - sim.min()) / (sim[row, col] - sim.min()).clamp_min(1e-6)
    keep = (sim >= threshold).float()[None, None]
    labels = kornia.contrib.connected_components(keep, num_iterations=h + w)[0, 0]
    return (labels == labels[row, col]) & (keep[0, 0] > 0)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of an ``(H, W)`` mask by a ``(2r+1)²`` square (kornia morphology)."""
    if radius <= 0:
        return mask
    k = torch.ones(2 * radius + 1, 2 * radius + 1)
    return kornia.morphology.dilation(mask.float()[None, None], k)[0, 0] > 0.5
