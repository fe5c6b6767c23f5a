"""Object placement geometry for move, resize, paste (and plugin modes such as rotate), in one coordinate system.

An object (a mask in image pixels) is transformed by an affine map about **its own centroid** ``c`` and shifted by
``d = (dx, dy)`` pixels: ``x' = c + A·(x − c) + d``, with ``A`` any invertible ``2×2`` matrix (scale, rotation,
shear, flip: :func:`affine`); move and resize use ``A = s·I``. Every grid (latent, feature, pixels for the paste preview)
applies this same map, through :class:`~dragsdk.geometry.Canvas`, as a backward map: each target cell takes the
source cell ``c + A⁻¹·(x' − c − d)``, so the placed object has no holes. Content that leaves the canvas is clipped
(no wrap-around); an object that would leave it entirely is refused. (The official DragonDiffusion code scales
about the image centre, multiplies the shift by ``s`` and wraps with ``torch.roll``: ``process_move``,
``process_paste``, ``src/utils/utils.py:29-87, 199-240``.)
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


def affine(
    scale: float | tuple[float, float] = 1.0,
    rotation: float = 0.0,
    shear: float = 0.0,
    flip_x: bool = False,
    flip_y: bool = False,
) -> np.ndarray:
    """The ``2×2`` linear part ``A`` of a placement, in image pixels (``x`` right, ``y`` down).

    ``A = R(rotation) · H(shear) · F · diag(scale)``: the object is first scaled (``scale`` or ``(sx, sy)``),
    flipped (``flip_x`` mirrors left-right, ``flip_y`` top-bottom), sheared (``x += shear · y``) and then rotated
    by ``rotation`` degrees counter-clockwise as seen on screen.
    """
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    th = np.deg2rad(rotation)
    rot = np.array(
        [[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]
    )  # y down: counter-clockwise on screen
    sh = np.array([[1.0, shear], [0.0, 1.0]])
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
    return rot @ sh @ flip @ np.diag([float(sx), float(sy)])


def affine_map(
    canvas: Canvas,
    mask: np.ndarray,
    matrix: np.ndarray,
    shift: tuple[float, float],
    grid: Grid,
    field: str = "transform",
) -> SourceMap:
    """Target ← source cells of the object placed by ``x' = c + A·(x − c) + d`` (image pixels), ``c`` its centroid.

    The map is backward (each target cell takes the source cell ``c + A⁻¹·(x' − c − d)``, floor of the continuous
    position), so the placed object has no holes; on a grid with per-axis scale ``S`` the matrix is ``S·A·S⁻¹``.

    Args:
        mask: ``(H, W)`` object mask in image pixels.
        matrix: ``A``, ``2×2`` acting on ``(x, y)`` (:func:`affine` builds one); must be invertible.
        shift: ``d = (dx, dy)`` in image pixels.
        grid: which grid the map is on.
        field: the spec field blamed when ``A`` is singular or the object leaves the canvas.

    Returns:
        a :class:`~dragsdk.regions.SourceMap` on ``grid`` (size ``(w, h)``).

    Raises:
        SpecError: ``A`` singular (|det A| < 1e-6, field ``field``), or the placed object leaves the canvas
            entirely (field ``dx, dy`` when the unshifted object would stay on it, else ``field``).
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape != (2, 2) or not np.isfinite(a).all() or abs(np.linalg.det(a)) < 1e-6:
        raise SpecError(field, f"the placement must be an invertible finite 2×2 map, got {a.tolist()}")
    obj = canvas.mask_to_grid(mask, grid)
    if not obj.any():
        obj = canvas.mask_to_grid(mask, grid, threshold=1e-6)
    gw, gh = canvas.grid_size(grid)
    sx, sy = canvas.scale(grid)
    inv = np.linalg.inv(np.diag([sx, sy]) @ a @ np.diag([1 / sx, 1 / sy])).tolist()
    cx, cy = canvas.to_grid(centroid(mask), grid)
    dx, dy = canvas.vector_to_grid(shift, grid)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    u, v = (cols + 0.5) - cx - dx, (rows + 0.5) - cy - dy
    src_x = cx + inv[0][0] * u + inv[0][1] * v
    src_y = cy + inv[1][0] * u + inv[1][1] * v
    sc, sr = torch.floor(src_x).long(), torch.floor(src_y).long()
    inside = (sc >= 0) & (sc < gw) & (sr >= 0) & (sr < gh)
    keep = inside.clone()
    keep[inside] = obj[sr[inside], sc[inside]]
    if not keep.any():
        # Blame the shift when the transformed object alone would stay on the canvas, else the transform.
        stays = (
            tuple(shift) != (0, 0) and affine_map(canvas, mask, a, (0, 0), grid, field).target_rows.numel()
        )
        raise SpecError(
            "dx, dy" if stays else field,
            f"the placed object (map {np.round(a, 4).tolist()}, shift {tuple(shift)} px) leaves the image entirely",
        )
    return SourceMap(rows[keep], cols[keep], sr[keep], sc[keep], (gw, gh))


def placement_map(
    canvas: Canvas,
    mask: np.ndarray,
    scale: float,
    shift: tuple[float, float],
    grid: Grid,
    field: str = "mask",
) -> SourceMap:
    """:func:`affine_map` with ``A = scale · I``: the object scaled about its centroid and shifted (image pixels).

    Raises:
        SpecError: ``scale`` ≤ 0 (field ``scale``), or the placed object leaves the canvas entirely (field
            ``dx, dy`` / ``scale``).
    """
    if scale <= 0:
        raise SpecError("scale", f"must be > 0, got {scale}")
    return affine_map(canvas, mask, affine(scale), shift, grid, "scale")


def place_image(
    image: Image.Image, mask: np.ndarray, scale: float | np.ndarray, shift: tuple[float, float]
) -> tuple[Image.Image, np.ndarray]:
    """The image and mask with the object placed (pixel grid of the same map), e.g. a paste reference in the base
    frame, or the preview of a placement.

    Args:
        scale: a scale about the centroid, or a ``2×2`` matrix ``A`` (:func:`affine`).

    Returns:
        the image (RGB, unchanged outside the placed object: only the object moves) and the placed object mask
        ``(H, W)`` bool in image pixels.
    """
    canvas = Canvas(image.size, image.size)
    if isinstance(scale, int | float):
        m = placement_map(canvas, mask, float(scale), shift, "working")
    else:
        m = affine_map(canvas, mask, scale, shift, "working")
    src = np.asarray(image)
    out = src.copy()
    out[m.target_rows.numpy(), m.target_cols.numpy()] = src[m.source_rows.numpy(), m.source_cols.numpy()]
    placed = m.target_mask().numpy()
    return Image.fromarray(out), placed


def paste_preview(
    base: Image.Image,
    reference: Image.Image,
    reference_mask: np.ndarray,
    scale: float,
    shift: tuple[float, float],
) -> tuple[Image.Image, np.ndarray]:
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
    centre-cropped or zero-padded by ``|int(G·s) − G| // 2``) after a ``torch.roll`` by the shift
    (``utils.py:52-66``, ``model.py:93-114``, ``Sampler.py:185-186``). The official roll **wraps** content that leaves
    one edge round to the opposite edge; that bug is fixed: such content is clipped. Shift in cells:
    feature grid ``int(floor(d/4)·s)``, latent grid ``int(d/8·s)``, with ``d`` the shift in working pixels, each
    axis scaled on its own (the official code scales both by the x ratio). A cell is in the placed object when the
    working-size mask pixel it samples is set (the nearest rasterisation of
    :meth:`~dragsdk.geometry.Canvas.mask_to_grid`).

    Raises:
        SpecError: (field ``scale``) the scaled object leaves the canvas (the official ``ValueError('Resize out of
            bounds')``), or is smaller than one grid cell (the official divides by zero there); (field ``dx, dy``)
            nothing of it is left on the canvas.
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
    if out_w < 1 or out_h < 1:
        raise SpecError(
            "scale",
            f"the object scaled by {scale:g} about the image centre is smaller than one cell of "
            f"the {gw}×{gh} {grid} grid, so nothing of it is left; use scale >= "
            f"{1 / min(gw, gh):.3g}",
        )
    pad_x, pad_y = abs(out_w - gw) // 2, abs(out_h - gh) // 2
    sign = 1 if scale > 1 else -1
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    jr, jc = rows + sign * pad_y, cols + sign * pad_x
    valid = (jr >= 0) & (jr < out_h) & (jc >= 0) & (jc < out_w)
    # The official torch.roll wraps content that leaves one edge around to the opposite one; that is a bug
    # (an object pushed off the right edge reappears on the left), fixed here: off-map sources are dropped.
    jr, jc = jr - cy, jc - cx
    valid &= (jr >= 0) & (jr < out_h) & (jc >= 0) & (jc < out_w)
    jr, jc = jr.clamp(0, out_h - 1), jc.clamp(0, out_w - 1)
    keep = valid & up[(jr * wh) // out_h, (jc * ww) // out_w]
    whole = up[(torch.arange(out_h) * wh // out_h)[:, None], (torch.arange(out_w) * ww // out_w)[None, :]]
    if scale > 1 and int(keep.sum()) != int(whole.sum()):
        raise SpecError(
            "scale",
            f"the object scaled by {scale} about the image centre leaves the image "
            "(official profile; the centroid-placement improvement scales about the object)",
        )
    if not keep.any():
        raise SpecError(
            "dx, dy", f"the placed object (scale {scale}, shift {shift} px) leaves the image entirely"
        )
    return SourceMap(rows[keep], cols[keep], (jr[keep] * gh) // out_h, (jc[keep] * gw) // out_w, (gw, gh))


def official_scale_about_centre(
    image: Image.Image, mask: np.ndarray, scale: float
) -> tuple[Image.Image, np.ndarray]:
    """Image and mask scaled about the **image centre** as the official paste does it (``model.py:362-372``,
    ``utils.py`` ``process_paste``): nearest resampling to ``(int(W·s), int(H·s))``, then centre-cropped (``s > 1``)
    or padded (``s < 1``) by ``|int(G·s) − G| // 2``. The padding is the zero of the VAE's ``[-1, 1]`` range, grey
    ``(128, 128, 128)`` here (official 127.5), and empty in the mask.

    Returns:
        the scaled RGB image and ``(H, W)`` bool mask, both at the input's size.

    Raises:
        SpecError: (field ``scale``) ``scale`` ≤ 0, or nothing of the object is left.
    """
    if scale <= 0:
        raise SpecError("scale", f"must be > 0, got {scale}")
    w, h = image.size
    ow, oh = max(1, int(w * scale)), max(1, int(h * scale))
    px, py = abs(ow - w) // 2, abs(oh - h) // 2
    img = np.asarray(image.convert("RGB").resize((ow, oh), Image.Resampling.NEAREST))
    m = np.asarray(Image.fromarray(np.asarray(mask, dtype=bool)).resize((ow, oh), Image.Resampling.NEAREST))
    out_img = np.full((h, w, 3), 128, dtype=np.uint8)
    out_mask = np.zeros((h, w), dtype=bool)
    if scale > 1:
        out_img[:] = img[py : py + h, px : px + w][:h, :w]
        out_mask[:] = m[py : py + h, px : px + w][:h, :w]
    else:
        out_img[py : py + oh, px : px + ow] = img
        out_mask[py : py + oh, px : px + ow] = m
    if not out_mask.any():
        raise SpecError("scale", f"the object scaled by {scale} about the image centre leaves the image")
    return Image.fromarray(out_img), out_mask


def shift_cells(mask: torch.Tensor, dx: int, dy: int) -> SourceMap:
    """Target ← source cells of a whole-cell shift of a grid mask ``(h, w)`` by ``(dx, dy)`` cells: the official
    ``torch.roll`` of the paste (``model.py:394-396``, ``utils.py`` ``process_paste``) with its wrap-around fixed as in
    :func:`official_placement_map` (content shifted off the grid is clipped).

    Raises:
        SpecError: (field ``dx, dy``) nothing of the mask is left on the grid.
    """
    h, w = mask.shape
    sr, sc = torch.nonzero(mask, as_tuple=True)
    tr, tc = sr + dy, sc + dx
    keep = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
    if not keep.any():
        raise SpecError("dx, dy", f"the placed object (shift ({dx}, {dy}) cells) leaves the image entirely")
    return SourceMap(tr[keep], tc[keep], sr[keep], sc[keep], (w, h))
