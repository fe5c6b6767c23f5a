"""Object placement geometry for move, resize and paste, computed once in one coordinate system.

An object (a mask in image pixels) is scaled by ``s`` about **its own centroid** ``c`` and shifted by
``d = (dx, dy)`` pixels: ``x' = c + s·(x − c) + d``. Every grid (latent, feature, pixels for the paste preview)
applies this same map, through :class:`~dragsdk.geometry.Canvas`, as a backward map: each target cell takes the
source cell ``c + (x' − c − d)/s``, so the placed object has no holes. Content that leaves the canvas is clipped
(no wrap-around); an object that would leave it entirely is refused. (The official DragonDiffusion code scales
about the image centre, multiplies the shift by ``s`` and wraps with ``torch.roll``; dossier §7.)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import SpecError
from .geometry import Canvas, Grid
from .regions import SourceMap


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """Centroid ``(x, y)`` of an ``(H, W)`` mask in image pixels (pixel centres at ``i + 0.5``)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise SpecError("mask", "mask is empty: it must cover at least one pixel")
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5)


def placement_map(
    canvas: Canvas, mask: np.ndarray, scale: float, shift: tuple[float, float], grid: Grid, field: str = "mask"
) -> SourceMap:
    """Target ← source cells of the object placed by ``scale`` about its centroid and ``shift`` (image pixels).

    Args:
        mask: ``(H, W)`` object mask in image pixels.
        scale: > 0.
        shift: ``(dx, dy)`` in image pixels.
        grid: which grid the map is on.

    Raises:
        SpecError: ``scale`` ≤ 0, or the placed object leaves the canvas entirely (field ``dx``/``scale``).
    """
    if scale <= 0:
        raise SpecError("scale", f"must be > 0, got {scale}")
    obj = canvas.mask_to_grid(mask, grid)
    if not obj.any():
        obj = canvas.mask_to_grid(mask, grid, threshold=1e-6)
    gw, gh = canvas.grid_size(grid)
    cx, cy = canvas.to_grid(centroid(mask), grid)
    dx, dy = canvas.vector_to_grid(shift, grid)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    sx = cx + ((cols + 0.5) - cx - dx) / scale
    sy = cy + ((rows + 0.5) - cy - dy) / scale
    sc, sr = torch.floor(sx).long(), torch.floor(sy).long()
    inside = (sc >= 0) & (sc < gw) & (sr >= 0) & (sr < gh)
    keep = inside.clone()
    keep[inside] = obj[sr[inside], sc[inside]]
    if not keep.any():
        # Blame the shift when the scaled object alone would stay on the canvas, else the scale.
        field = "dx, dy" if (shift != (0, 0) and placement_map(canvas, mask, scale, (0, 0), grid).target_rows.numel()) else "scale"
        raise SpecError(field, f"the placed object (scale {scale}, shift {shift} px) leaves the image entirely")
    return SourceMap(rows[keep], cols[keep], sr[keep], sc[keep], (gw, gh))


def place_image(image: Image.Image, mask: np.ndarray, scale: float, shift: tuple[float, float]) -> tuple[Image.Image, np.ndarray]:
    """The image and mask with the object placed (pixel grid of the same map), e.g. a paste reference in the base frame.

    Outside the placed object the returned image is the unchanged input (only the object moves).
    """
    canvas = Canvas(image.size, image.size)
    m = placement_map(canvas, mask, scale, shift, "working")
    src = np.asarray(image)
    out = src.copy()
    out[m.target_rows.numpy(), m.target_cols.numpy()] = src[m.source_rows.numpy(), m.source_cols.numpy()]
    placed = m.target_mask().numpy()
    return Image.fromarray(out), placed


def paste_preview(base: Image.Image, reference: Image.Image, reference_mask: np.ndarray, scale: float,
                  shift: tuple[float, float]) -> tuple[Image.Image, np.ndarray]:
    """What a paste will put where: the reference object placed on the base by the same map the edit uses.

    Returns:
        the preview image and the placed object mask ``(H, W)`` in base pixels.
    """
    ref = reference if reference.size == base.size else reference.resize(base.size, Image.Resampling.LANCZOS)
    placed, m = place_image(ref, reference_mask, scale, shift)
    preview = Image.composite(placed, base, Image.fromarray((m * 255).astype(np.uint8), "L"))
    return preview, m


def official_placement_map(
    canvas: Canvas, mask: np.ndarray, scale: float, shift: tuple[float, float], grid: Grid
) -> SourceMap:
    """Target ← source cells of the object placed as the official DragonDiffusion move / resize does it.

    The whole map is scaled about the **image centre** (nearest, ``F.interpolate`` to ``int(G·s)`` cells, then
    centre-cropped or zero-padded by ``|int(G·s) − G| // 2``) after a ``torch.roll`` by the shift, which **wraps**
    inside the scaled map (``utils.py:52-66``, ``model.py:93-114``, ``Sampler.py:185-186``). Shift in cells:
    feature grid ``int(floor(d/4)·s)``, latent grid ``int(d/8·s)``, with ``d`` the shift in working pixels, each
    axis scaled on its own (the official code scales both by the x ratio). A cell is in the placed object when the
    working-size mask pixel it samples is set (the nearest rasterisation of
    :meth:`~dragsdk.geometry.Canvas.mask_to_grid`).

    Raises:
        SpecError: (field ``scale``) the scaled object leaves the canvas (the official ``ValueError('Resize out of
            bounds')``), or nothing of it is left on the canvas.
    """
    import torch.nn.functional as F

    if scale <= 0:
        raise SpecError("scale", f"must be > 0, got {scale}")
    gw, gh = canvas.grid_size(grid)
    ww, wh = canvas.size
    m = torch.as_tensor(np.asarray(mask)).float()
    m = (m > 0.5).float() if m.max() <= 1 else (m > 0).float()
    up = F.interpolate(m[None, None], size=(wh, ww), mode="bilinear", align_corners=False)[0, 0] * 255 >= 0.5
    sx, sy = canvas.scale("working")
    dxw, dyw = shift[0] * sx, shift[1] * sy
    d = ww // gw
    if grid == "latent":
        cx, cy = int(dxw / d * scale), int(dyw / d * scale)
    else:
        cx, cy = int((dxw // d) * scale), int((dyw // d) * scale)
    out_w, out_h = int(gw * scale), int(gh * scale)
    pad_x, pad_y = abs(out_w - gw) // 2, abs(out_h - gh) // 2
    sign = 1 if scale > 1 else -1
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    jr, jc = rows + sign * pad_y, cols + sign * pad_x
    valid = (jr >= 0) & (jr < out_h) & (jc >= 0) & (jc < out_w)
    jr, jc = (jr - cy) % out_h, (jc - cx) % out_w
    keep = valid & up[(jr * wh) // out_h, (jc * ww) // out_w]
    whole = up[(torch.arange(out_h) * wh // out_h)[:, None], (torch.arange(out_w) * ww // out_w)[None, :]]
    if scale > 1 and int(keep.sum()) != int(whole.sum()):
        raise SpecError("scale", f"the object scaled by {scale} about the image centre leaves the image "
                                 "(official profile; the centroid-placement improvement scales about the object)")
    if not keep.any():
        raise SpecError("scale", f"the placed object (scale {scale}, shift {shift} px) leaves the image entirely")
    return SourceMap(rows[keep], cols[keep], (jr[keep] * gh) // out_h, (jc[keep] * gw) // out_w, (gw, gh))
