"""Region inputs turned into dense target→source cell maps (RegionDrag).

RegionDrag (Lu et al., ECCV 2024, arXiv 2407.18247, §3; official code ``region_utils/ui_utils.py``) turns
every input — two brush regions, a pair of triangles or quads, a region plus a few point pairs, or the dense
point list of DragBench-SR/DR — into one dense correspondence: for **every** cell of the target region,
exactly one source cell whose latent is copied there. Because the map is built backwards (target → source),
the target region has no holes.

Conventions (see :mod:`dragsdk.geometry`):

- every input is given in **image pixels** (``x`` right, ``y`` down); a point ``(x, y)`` names the pixel
  ``(x, y)``, i.e. the continuous position ``(x + 0.5, y + 0.5)``, as in :meth:`Canvas.to_cell`;
- the map lives on a grid of the canvas (``"latent"`` cells by default); internally positions are in
  *cell-index coordinates*, where cell ``(col, row)`` has its centre at ``(col, row)``;
- rounding to a cell is half-up (``floor(v + 0.5)``) for forward maps and half-down (``ceil(v - 0.5)``)
  for the matching backward maps, so a forward shift and its inverse agree even on half-cell ties.

Two rule sets exist for region pairs, polygons and region + points (``rules``): ``"official"`` computes what the
official code (Visual-AI/RegionDrag @5cf4922, ``region_utils/ui_utils.py``) computes — the cells its OpenCV calls
give (8-bit bilinear resize rounding at 0.5, ``cv2.fillPoly``, ``cv2.findContours``, cv2's transforms), truncation
to cells, the contour warp of region + points with float16 1/d weights — with its bugs fixed (no NaN sources from
empty handle columns, no off-grid or negative, wrapping sources); ``"dragsdk"`` is dragsdk's own cell-centre,
round-half-up construction. No code was taken from the RegionDrag repository (it has no licence): the official
rules were re-derived from reading it and from its behaviour on identical inputs. The OpenCV calls are
re-implemented (OpenCV is not a run-time dependency) from the OpenCV 4.8.0 sources that the official code pins and
checked against cv2 bit for bit (section "OpenCV primitives").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import kornia
import numpy as np
import torch

from dragsdk.authoring import Canvas, Grid, SourceMap

__all__ = [
    "MapRules",
    "dense_points_map",
    "dense_points_sources",
    "fill_polygon_cells",
    "points_map",
    "points_map_parts",
    "polygon_map",
    "region_pair_map",
    "translate_map",
]

_F = torch.float64

MapRules = Literal["official", "dragsdk"]
"""Which input → map rules to follow (module docstring)."""


_from_pairs = SourceMap.from_pairs


def _grid_mask(canvas: Canvas, mask: np.ndarray | torch.Tensor, grid: Grid, name: str) -> torch.Tensor:
    """``(h, w)`` bool grid mask of an image-pixel mask; errors name the argument."""
    try:
        m = canvas.mask_to_grid(mask, grid)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if not bool(m.any()):
        if not bool(torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).any()):
            raise ValueError(f"{name} is empty")
        raise ValueError(f"{name} covers no {grid} cell (region smaller than half a cell)")
    return m


def _points_array(points: object, name: str) -> np.ndarray:
    """``(N, 2)`` float64 array of image-pixel points; refuses other shapes and non-finite values."""
    try:
        a = np.asarray(
            points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of [x, y] points: {e}") from None
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite coordinates")
    return a


def _to_index_coords(canvas: Canvas, pts: np.ndarray, grid: Grid) -> torch.Tensor:
    """Image-pixel points (pixel ``(x, y)`` = centre ``(x+.5, y+.5)``) → ``(N, 2)`` cell-index coords (x, y)."""
    gx, gy = canvas.to_grid((pts[:, 0] + 0.5, pts[:, 1] + 0.5), grid)
    return torch.stack([torch.as_tensor(gx, dtype=_F), torch.as_tensor(gy, dtype=_F)], dim=1) - 0.5


def _round_half_up(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(v + 0.5).to(torch.long)


def _round_half_down(v: torch.Tensor) -> torch.Tensor:
    return torch.ceil(v - 0.5).to(torch.long)


def _in_grid(rows: torch.Tensor, cols: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    w, h = grid_size
    return (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)


def _require_nonempty(sm: SourceMap, what: str) -> SourceMap:
    if len(sm) == 0:
        raise ValueError(f"{what} leaves no target cell on the grid")
    return sm


# --------------------------------------------------------------------------------------------------------------
# OpenCV primitives of the official rules, re-implemented (OpenCV is not needed at run time)
#
# The official code builds its maps with cv2 calls (opencv-python==4.8.0.76, its requirements.txt:11). Each
# function below computes what one of those calls computes, re-derived from the OpenCV 4.8.0 sources (paths and
# lines are those of the opencv-python-headless 4.8.0.76 source distribution, ``opencv/modules/...``) and checked
# bit for bit against the cv2 4.8.0.76 and 4.10.0.84 wheels (tests/test_regions.py runs the latter). OpenCV 4.11
# changed cv2.fillPoly's rasterisation (the 4.11-4.14 and 5.x wheels cover other cells), so the reference is the
# version the official code pins.

_CV_COEF_BITS = 11  # INTER_RESIZE_COEF_BITS, imgproc/src/resize.cpp:905
_CV_XY_SHIFT = 16  # XY_SHIFT, imgproc/src/drawing.cpp:46: polygon edges are 16.16 fixed point
_FLT_EPSILON = float(np.finfo(np.float32).eps)


def _cv_linear_taps(n_src: int, n_dst: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """``cv2.resize`` INTER_LINEAR taps along one axis: ``(i0, i1, w0, w1)`` with integer weights summing to 2¹¹.

    OpenCV 4.8 ``imgproc/src/resize.cpp``: ``scale = 1/(n_dst/n_src)`` in double (3819, 4072); per output index
    ``d``, ``f = (float)((d + 0.5)·scale − 0.5)`` (pixel centres aligned), ``i0 = floor(f)``, ``frac = f − i0``
    (3955-3957, 4012-4014); weights ``saturate_cast<short>((1 − frac)·2048)`` and ``saturate_cast<short>(frac·2048)``,
    i.e. float products rounded half to even (3989-3996, 4030-4038). Along x (``clamp``) a tap left of the image
    or on/after its last pixel becomes that border pixel with weights (2048, 0) (3966-3978); along y the weights
    stay and the two row indices are clipped into the image (2160): border replication either way.
    """
    scale = 1.0 / (n_dst / n_src)
    f = ((np.arange(n_dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= n_src - 1
        frac[low | high] = 0
        i0 = np.where(low, 0, np.where(high, n_src - 1, i0))
    one = np.float32(1 << _CV_COEF_BITS)
    w0 = np.rint((np.float32(1) - frac) * one).astype(np.int64)
    w1 = np.rint(frac * one).astype(np.int64)
    return np.clip(i0, 0, n_src - 1), np.clip(i0 + 1, 0, n_src - 1), w0, w1


def _cv_resize_nonzero(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(mask, size) != 0`` for a 0/1 ``uint8`` mask: OpenCV 4.8's INTER_LINEAR (the default), exactly.

    ``size`` is ``(w, h)``. Horizontal pass in integers, ``S = m[i0]·w0 + m[i1]·w1`` (``HResizeLinear``,
    resize.cpp:1827-1878). Vertical pass: the 8-bit specialisation of ``VResizeLinear`` (resize.cpp:1912-1938) and
    its SIMD body ``VResizeLinearVec_32s8u`` (1255-1282) both compute
    ``((b0·(S0 >> 4)) >> 16) + ((b1·(S1 >> 4)) >> 16) + 2) >> 2``, i.e. the bilinear value in 2⁻²² units with each
    row's product truncated to 2⁻²⁰ and the sum rounded half up. The cell is nonzero iff the two truncated terms
    add up to at least 2 (two quarters): **bilinear value ≥ 0.5**, up to those truncations. At the official grid
    (image/8, both sides multiples of 8) every cell samples the 2×2 pixels ``8c+3 … 8c+4`` with weights exactly ½,
    and the rule is exact: a cell is in iff at least 2 of those 4 pixels are. Equal sizes copy the mask
    (4091-4096) and an exact 2× reduction switches to INTER_AREA (3865), whose ``(a+b+c+d+2) >> 2`` gives the same
    cells for a 0/1 mask. IPP is not used for 8-bit linear resizing (by default, 3596-3600).
    """
    m = (np.asarray(mask) != 0).astype(np.int64)
    h, w = m.shape
    dw, dh = int(size[0]), int(size[1])
    if (dw, dh) == (w, h):
        return m != 0
    x0, x1, a0, a1 = _cv_linear_taps(w, dw, clamp=True)
    y0, y1, b0, b1 = _cv_linear_taps(h, dh, clamp=False)
    rows = m[:, x0] * a0 + m[:, x1] * a1  # (h, dw)
    s0, s1 = rows[y0] >> 4, rows[y1] >> 4
    t = ((b0[:, None] * s0) >> 16) + ((b1[:, None] * s1) >> 16)
    return ((t + 2) >> 2) != 0


def _cv_clip_line(
    size: tuple[int, int], p1: tuple[int, int], p2: tuple[int, int]
) -> tuple[bool, tuple[int, int], tuple[int, int]]:
    """``cv::clipLine(Size, Point&, Point&)`` (imgproc/src/drawing.cpp:80-149): Cohen-Sutherland on the closed
    pixel box, each moved coordinate ``(int64)((double)Δ·slope)`` (truncated toward zero). Returns
    ``(inside, p1, p2)``."""
    w, h = size
    (x1, y1), (x2, y2) = p1, p2
    right, bottom = w - 1, h - 1
    if w <= 0 or h <= 0:
        return False, p1, p2
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int(float(a - y1) * (x2 - x1) / (y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int(float(a - y2) * (x2 - x1) / (y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int(float(a - x1) * (y2 - y1) / (x2 - x1))
                x1, c1 = a, 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int(float(a - x2) * (y2 - y1) / (x2 - x1))
                x2, c2 = a, 0
    return (c1 | c2) == 0, (x1, y1), (x2, y2)


def _cv_line(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int]) -> None:
    """Set the pixels of ``cv::Line(img, p1, p2, color, 8)`` (drawing.cpp:263-297): the 8-connected
    ``LineIterator`` (drawing.cpp:159-260, imgproc.hpp:4986-5000), endpoints clipped to the image first, walked
    left to right; ``err = dx − 2dy``, every step advances the major axis and, when ``err < 0`` before the step,
    the minor one."""
    h, w = img.shape
    if not (0 <= p1[0] < w and 0 <= p2[0] < w and 0 <= p1[1] < h and 0 <= p2[1] < h):
        inside, p1, p2 = _cv_clip_line((w, h), p1, p2)
        if not inside:
            return
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    if dx < 0:  # leftToRight
        dx, dy, p1 = -dx, -dy, p2
    step_y = -1 if dy < 0 else 1
    dy = abs(dy)
    vertical = dy > dx
    if vertical:
        dx, dy = dy, dx
    err = dx - 2 * dy
    x, y = p1
    for _ in range(dx + 1):
        img[y, x] = True
        minor = err < 0
        err += -2 * dy + (2 * dx if minor else 0)
        if vertical:
            y += step_y
            x += 1 if minor else 0
        else:
            x += 1
            y += step_y if minor else 0


def _cv_fill_poly(vertices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.fillPoly(zeros(h, w), [vertices], 1) == 1`` for integer vertices (LINE_8, shift 0), as OpenCV 4.8-4.10.

    ``size`` is ``(w, h)``; returns an ``(h, w)`` bool mask. ``CollectPolyEdges`` (drawing.cpp:1261-1336) draws
    every edge with :func:`_cv_line` (so the outline is always in) and turns each non-horizontal edge into a 16.16
    fixed-point edge: unclipped, it starts at ``x + ½`` with slope ``dx = ((x1 − x0)·2¹⁶) / (y1 − y0)``
    (truncating integer division); an edge leaving the image is clipped first and starts at its clipped integer
    ``x``. ``FillEdgeCollection`` (drawing.cpp:1350-1501, ``delta = 0`` for LINE_8) scans rows ``y0 ≤ y < y1`` of
    every edge, pairs the active edges in x order (even-odd) and fills ``[x_l >> 16, x_r >> 16]``, i.e. from
    ``floor`` to ``floor`` of the half-shifted crossings. ``cv2.drawContours(…, thickness=FILLED)`` fills the same
    way (``cvDrawContours``, drawing.cpp:2589-2708).
    """
    w, h = int(size[0]), int(size[1])
    img = np.zeros((h, w), dtype=bool)
    v = [(int(a), int(b)) for a, b in np.asarray(vertices).reshape(-1, 2)]
    if not v or w <= 0 or h <= 0:
        return img
    edges = []
    pt0 = v[-1]
    for pt1 in v:
        _cv_line(img, pt0, pt1)
        (x0c, y0c), (x1c, y1c) = pt0, pt1
        fx0, fx1 = (pt0[0] << _CV_XY_SHIFT) + (1 << 15), (pt1[0] << _CV_XY_SHIFT) + (1 << 15)
        if not (0 <= pt0[0] < w and 0 <= pt1[0] < w and 0 <= pt0[1] < h and 0 <= pt1[1] < h):
            _, (x0c, y0c), (x1c, y1c) = _cv_clip_line((w, h), pt0, pt1)
            if y0c != y1c:
                fx0, fx1 = x0c << _CV_XY_SHIFT, x1c << _CV_XY_SHIFT
            else:  # the clipped edge is horizontal: the unshifted, unclipped x and y are kept
                fx0, fx1 = pt0[0] << _CV_XY_SHIFT, pt1[0] << _CV_XY_SHIFT
                y0c, y1c = pt0[1], pt1[1]
        if pt0[1] != pt1[1]:
            num, den = fx1 - fx0, y1c - y0c
            slope = abs(num) // abs(den) * (1 if (num >= 0) == (den > 0) else -1)  # C division truncates
            if pt0[1] < pt1[1]:
                edges.append((pt0[1], pt1[1], fx0 + (pt0[1] - y0c) * slope, slope))
            else:
                edges.append((pt1[1], pt0[1], fx1 + (pt1[1] - y1c) * slope, slope))
        pt0 = pt1
    if len(edges) < 2:
        return img
    e = np.array(edges, dtype=np.int64)  # (y0, y1, x at y0, dx)
    x_end = e[:, 2] + (e[:, 1] - e[:, 0]) * e[:, 3]
    x_min, x_max = min(e[:, 2].min(), x_end.min()), max(e[:, 2].max(), x_end.max())
    if e[:, 1].max() < 0 or e[:, 0].min() >= h or x_max < 0 or x_min >= (w << _CV_XY_SHIFT):
        return img
    for y in range(max(int(e[:, 0].min()), 0), min(int(e[:, 1].max()), h)):
        act = (e[:, 0] <= y) & (y < e[:, 1])
        xs = np.sort(e[act, 2] + (y - e[act, 0]) * e[act, 3])
        for xl, xr in zip(xs[0::2], xs[1::2], strict=False):
            a, b = int(xl) >> _CV_XY_SHIFT, int(xr) >> _CV_XY_SHIFT
            if a < w and b >= 0:
                img[y, max(a, 0) : min(b, w - 1) + 1] = True
    return img


# Chain codes of contours.cpp:53 (x right, y down): E, NE, N, NW, W, SW, S, SE.
_CV_CHAIN = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
_CV_RIGHT_EDGE = -126  # (schar)(nbd | -128) with nbd = 2: a border pixel whose right is outside


def _cv_follow_border(img: np.ndarray, y0: int, x0: int) -> list[tuple[int, int]]:
    """``icvFetchContour`` (imgproc/src/contours.cpp:512-622) on an outer border starting at ``(x0, y0)`` with
    CHAIN_APPROX_SIMPLE: the Suzuki-Abe border following of 8-connected pixels, marking visited border pixels 2
    (or −126 where the border leaves to the right), keeping a point where the chain code changes. Returns
    ``[(x, y), …]`` in ``img`` coordinates."""
    s = s_end = 4
    while True:  # first nonzero neighbour, clockwise from west
        s = (s - 1) & 7
        if img[y0 + _CV_CHAIN[s][1], x0 + _CV_CHAIN[s][0]] != 0 or s == s_end:
            break
    if s == s_end:  # a single pixel
        img[y0, x0] = _CV_RIGHT_EDGE
        return [(x0, y0)]
    first = (x0 + _CV_CHAIN[s][0], y0 + _CV_CHAIN[s][1])
    cur, prev_s, pos, out = (x0, y0), s ^ 4, (x0, y0), []
    while True:
        s_end = s
        while s < 15:  # next nonzero neighbour, counter-clockwise
            s += 1
            nxt = (cur[0] + _CV_CHAIN[s & 7][0], cur[1] + _CV_CHAIN[s & 7][1])
            if img[nxt[1], nxt[0]] != 0:
                break
        s &= 7
        if 0 <= s - 1 < s_end:
            img[cur[1], cur[0]] = _CV_RIGHT_EDGE
        elif img[cur[1], cur[0]] == 1:
            img[cur[1], cur[0]] = 2
        if s != prev_s:
            out.append(pos)
            prev_s = s
        pos = (pos[0] + _CV_CHAIN[s][0], pos[1] + _CV_CHAIN[s][1])
        if nxt == (x0, y0) and cur == first:
            return out
        cur, s = nxt, (s + 4) & 7


def _cv_external_contours(mask: np.ndarray) -> list[np.ndarray]:
    """``cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]`` as ``(N, 2)`` int ``[x, y]`` arrays.

    The mask is padded with a zero border (contours.cpp:1835) and scanned row by row (``cvFindNextContour``,
    contours.cpp:1032-1305): a pixel 1 after a 0 starts an outer border, which is followed
    (:func:`_cv_follow_border`) unless the last marked border pixel left of it on the row is positive, i.e. the
    start lies inside a hole of an already traced object (RETR_EXTERNAL, contours.cpp:1133). Each new contour is
    inserted at the head of the list (``cvInsertNodeIntoTree``, core/src/datastructs.cpp:3386-3402, called at
    contours.cpp:479), so the contours come out in reverse order of discovery: the last found first.
    """
    m = np.asarray(mask) != 0
    h, w = m.shape
    img = np.zeros((h + 2, w + 2), dtype=np.int16)
    img[1:-1, 1:-1] = m
    found: list[list[tuple[int, int]]] = []
    for y in range(1, h + 1):
        row, prev, lnbd, x = img[y], 0, 0, 1
        while x <= w:
            run = np.flatnonzero(row[x : w + 1] != prev)
            if run.size == 0:
                break
            x += int(run[0])
            p = int(row[x])
            outer = prev == 0 and p == 1
            hole = not outer and p == 0 and prev >= 1
            if outer and row[lnbd] <= 0:
                found.append(_cv_follow_border(img, y, x))
                prev = int(row[x])  # the scan resumes after the start pixel, now marked; lnbd is kept
                x += 1
                continue
            if hole and prev & -2:
                lnbd = x - 1
            prev = p
            if prev & -2:
                lnbd = x
            x += 1
    return [np.array(c, dtype=np.int64).reshape(-1, 2) - 1 for c in reversed(found)]


def _cv_lu_solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """``cv::solve(A, B, X, DECOMP_LU)`` for 6×6 and 8×8 systems (core/src/lapack.cpp:1082-1376, LU at 1298-1303): OpenCV's own
    ``LUImpl`` in double (core/src/matrix_decomp.cpp:14-70, the LAPACK HAL declines below 100 rows,
    core/src/hal_internal.cpp:64, 538-550): partial pivoting on the largest magnitude (first one on ties), row
    updates ``A[j][k] += (A[j][i]·(−1/A[i][i]))·A[i][k]``, back substitution dividing by the pivot. ``None`` when
    a pivot is below 100·DBL_EPSILON (the system is singular)."""
    a = [list(r) for r in a]
    b = list(b)
    m = len(a)
    for i in range(m):
        k = i
        for j in range(i + 1, m):
            if abs(a[j][i]) > abs(a[k][i]):
                k = j
        if abs(a[k][i]) < 100 * 2.220446049250313e-16:
            return None
        if k != i:
            a[i], a[k] = a[k], a[i]
            b[i], b[k] = b[k], b[i]
        d = -1.0 / a[i][i]
        for j in range(i + 1, m):
            alpha = a[j][i] * d
            for c in range(i + 1, m):
                a[j][c] += alpha * a[i][c]
            b[j] += alpha * b[i]
    for i in range(m - 1, -1, -1):
        s = b[i]
        for c in range(i + 1, m):
            s -= a[i][c] * b[c]
        b[i] = s / a[i][i]
    return b


def _cv_transform_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """``cv2.getAffineTransform(src, dst)`` (3 points, 2×3) or ``cv2.getPerspectiveTransform(src, dst)`` (4 points,
    3×3) for float32 points (imgproc/src/imgwarp.cpp:3461-3482 and 3413-3440): the 6×6 / 8×8 system of the
    point pairs solved by :func:`_cv_lu_solve`; the perspective system's products ``−x·x'`` are float32 products
    (imgwarp.cpp:3428-3431). ``None`` when singular."""
    s, d = np.asarray(src, np.float32), np.asarray(dst, np.float32)
    n = len(s)
    a = [[0.0] * (2 * n) for _ in range(2 * n)]
    b = [0.0] * (2 * n)
    for i in range(n):
        x, y = float(s[i, 0]), float(s[i, 1])
        if n == 3:
            a[2 * i][0:3] = a[2 * i + 1][3:6] = [x, y, 1.0]
            b[2 * i], b[2 * i + 1] = float(d[i, 0]), float(d[i, 1])
        else:
            a[i][0:3] = a[i + 4][3:6] = [x, y, 1.0]
            a[i][6], a[i][7] = float(-s[i, 0] * d[i, 0]), float(-s[i, 1] * d[i, 0])
            a[i + 4][6], a[i + 4][7] = float(-s[i, 0] * d[i, 1]), float(-s[i, 1] * d[i, 1])
            b[i], b[i + 4] = float(d[i, 0]), float(d[i, 1])
    sol = _cv_lu_solve(a, b)
    if sol is None:
        return None
    return np.array(sol, dtype=np.float64).reshape(2, 3) if n == 3 else np.array([*sol, 1.0]).reshape(3, 3)


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add ``a·b + c``, rounded once (half to even), elementwise."""
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    p = a.astype(np.float64) * b.astype(np.float64)  # exact (24 + 24 bits)
    c64 = c.astype(np.float64)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)  # s + err == p + c exactly (Knuth's TwoSum)
    r = s.astype(np.float32)
    up = s > r.astype(np.float64)
    other = np.nextafter(r, np.where(up, np.float32(np.inf), np.float32(-np.inf)))
    mid = (r.astype(np.float64) + other.astype(np.float64)) / 2
    # s rounds correctly unless it sits exactly on a float32 midpoint, where the sign of err decides
    flip = (s == mid) & (err != 0) & ((err > 0) == up)
    return np.where(flip, other, r)


def _fma_f64(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 fused multiply-add ``a·b + c`` for float32 ``a``, rounded once: ``b`` is split into two 26-bit
    halves (Veltkamp) so that both partial products are exact, and :func:`math.fsum` rounds their exact sum."""
    a64, b64, c64 = np.broadcast_arrays(
        np.asarray(a, dtype=np.float32).astype(np.float64),
        np.asarray(b, np.float64),
        np.asarray(c, np.float64),
    )
    t = b64 * 134217729.0  # 2**27 + 1
    hi = t - (t - b64)
    lo = b64 - hi
    return np.array(
        [math.fsum(v) for v in zip((a64 * hi).ravel(), (a64 * lo).ravel(), c64.ravel(), strict=True)]
    ).reshape(b64.shape)


def _cv_apply_transform(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``cv2.transform`` (2×3 ``m``) or ``cv2.perspectiveTransform`` (3×3) of float32 points, as the x86-64 wheel
    of 4.8.0.76 computes them on a CPU with FMA (every x86-64 CPU since 2013, measured here on AVX-512).

    ``cv::transform`` (core/src/matmul.dispatch.cpp:452-529) rounds ``m`` to float32; when both off-diagonal
    entries are ≤ FLT_EPSILON it takes ``diagtransform_`` (``x' = m₀·x + m₂``), else ``transform_``
    (``x' = m₀·x + m₁·y + m₂``, core/src/matmul.simd.hpp:1393-1406), in float. ``perspectiveTransform_``
    (matmul.simd.hpp:1823-1843) works in double: ``w = x·m₆ + y·m₇ + m₈``; ``(x·m₀ + y·m₁ + m₂)/w`` cast to float
    when ``|w| > FLT_EPSILON``, else 0. These kernels are dispatched to the AVX2 / AVX-512 builds, where the
    compiler fuses the first product into the sum: ``fma(m₀, x, m₁·y) + m₂`` (and ``fma(m₀, x, m₂)``); fused
    is what cv2 returns (bit for bit on 1.8 M points); unfused, the float affine result differs in the last bit
    for about 1 point in 6 (the double perspective one rarely), which moves a truncated source at an integer.
    """
    x, y = pts[:, 0].astype(np.float32), pts[:, 1].astype(np.float32)
    if m.shape == (2, 3):
        f = m.astype(np.float32).ravel()
        if abs(float(f[1])) <= _FLT_EPSILON and abs(float(f[3])) <= _FLT_EPSILON:
            return np.stack([_fma_f32(f[0], x, f[2]), _fma_f32(f[4], y, f[5])], axis=1)
        gx = _fma_f32(f[0], x, (f[1] * y).astype(np.float32)) + f[2]
        gy = _fma_f32(f[3], x, (f[4] * y).astype(np.float32)) + f[5]
        return np.stack([gx, gy], axis=1).astype(np.float32)
    k = m.astype(np.float64).ravel()
    y64 = y.astype(np.float64)
    w = _fma_f64(x, k[6], y64 * k[7]) + k[8]
    ok = np.abs(w) > _FLT_EPSILON
    inv = np.where(ok, 1.0 / np.where(ok, w, 1.0), 0.0)
    px = ((_fma_f64(x, k[0], y64 * k[1]) + k[2]) * inv).astype(np.float32)
    py = ((_fma_f64(x, k[3], y64 * k[4]) + k[5]) * inv).astype(np.float32)
    return np.where(ok[:, None], np.stack([px, py], axis=1), np.float32(0))


def _idw_official(
    points: np.ndarray, anchors: np.ndarray, moves: np.ndarray, k: int = 4, max_anchors: int = 100
) -> np.ndarray:
    """The official ``interpolate_points`` (``ui_utils.py:469-496``): each point moved by the inverse-distance
    weighted moves of its ``k`` nearest anchors, in **float16** as there, rounded half to even.

    Points, anchors and moves are cast to float16; with one anchor the point moves by it, truncated
    (``ui_utils.py:478-479``); over ``max_anchors`` anchors, those at ``torch.linspace(0, n−1, max_anchors).long()``
    are kept (481-484); distances ``torch.norm`` of the differences, ``torch.sort`` per point, the first ``k``;
    weights ``1/(d + 1e-4)`` normalised (486-495). Returns ``(N, 2)`` int64.
    """
    p = torch.from_numpy(np.asarray(points, dtype=np.int32)).half()
    a = torch.from_numpy(np.asarray(anchors, dtype=np.int32)).half()
    mv = torch.from_numpy(np.asarray(moves, dtype=np.int32)).half()
    if a.shape[0] < 2:
        return (p + mv).int().numpy().astype(np.int64)
    if a.shape[0] > max_anchors:
        keep = torch.linspace(0, a.shape[0] - 1, steps=max_anchors).long()
        a, mv = a[keep], mv[keep]
    dist = torch.norm(p.unsqueeze(1) - a.unsqueeze(0), dim=-1)
    order = torch.sort(dist, dim=1).indices[:, : min(k, a.shape[0])]
    inv = 1 / (torch.gather(dist, 1, order) + 1e-4)
    weight = inv / inv.sum(dim=1, keepdim=True)
    moved = p + (weight.unsqueeze(-1) * mv[order]).sum(dim=1)
    return moved.round().int().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# translation


def translate_map(
    canvas: Canvas, mask: np.ndarray | torch.Tensor, dxy: tuple[float, float], grid: Grid = "latent"
) -> SourceMap:
    """Move a region by ``dxy`` image pixels: every cell ``c`` of the region goes to ``c + round(dxy)``.

    The shift is ``dxy`` converted with :meth:`Canvas.vector_to_grid` and rounded half-up to whole cells;
    target cells off the grid are dropped. This is the case :func:`region_pair_map` reduces to for two
    regions of the same shape (RegionDrag arXiv 2407.18247 §3).

    Args:
        canvas: the working canvas.
        mask: ``(H, W)`` region in image pixels (nonzero = inside).
        dxy: ``(dx, dy)`` displacement in image pixels.
        grid: grid of the map.

    Returns:
        A :class:`SourceMap` with ``source = target − shift`` for every pair.

    Raises:
        ValueError: ``mask`` of the wrong shape or empty on the grid, a non-finite ``dxy``, or a shift
            that moves the whole region off the grid.
    """
    if len(dxy) != 2 or not all(np.isfinite(float(v)) for v in dxy):
        raise ValueError(f"dxy must be two finite numbers, got {dxy}")
    region = _grid_mask(canvas, mask, grid, "mask")
    gs = canvas.grid_size(grid)
    dx, dy = canvas.vector_to_grid((float(dxy[0]), float(dxy[1])), grid)
    sx, sy = int(np.floor(dx + 0.5)), int(np.floor(dy + 0.5))
    sr, sc = torch.nonzero(region, as_tuple=True)
    tr, tc = sr + sy, sc + sx
    ok = _in_grid(tr, tc, gs)
    return _require_nonempty(_from_pairs(tr[ok], tc[ok], sr[ok], sc[ok], gs), "dxy")


# --------------------------------------------------------------------------------------------------------------
# region pair


def _column_ranges(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of an ``(h, w)`` bool mask: (has cells, first row, last row)."""
    h = m.shape[0]
    has = m.any(0)
    mi = m.to(torch.int8)
    first = torch.argmax(mi, dim=0)
    last = h - 1 - torch.argmax(torch.flip(mi, dims=[0]), dim=0)
    return has, first, last


def _linear_map(v: torch.Tensor, a0: int | torch.Tensor, a1: int | torch.Tensor, b0, b1) -> torch.Tensor:
    """Map ``v`` from integer range ``[a0, a1]`` onto ``[b0, b1]`` (float64); a one-cell range maps to the middle.

    The product ``(v − a0)·(b1 − b0)`` is formed in integers before dividing, so equal-length ranges give an
    exact shift.
    """
    v = torch.as_tensor(v, dtype=torch.long)
    a0, a1, b0, b1 = (torch.as_tensor(t, dtype=torch.long) for t in (a0, a1, b0, b1))
    span = a1 - a0
    num = ((v - a0) * (b1 - b0)).to(_F)
    out = b0.to(_F) + num / torch.clamp(span, min=1).to(_F)
    mid = (b0 + b1).to(_F) / 2
    return torch.where(span > 0, out, mid)


def region_pair_map(
    canvas: Canvas,
    handle_mask: np.ndarray | torch.Tensor,
    target_mask: np.ndarray | torch.Tensor,
    grid: Grid = "latent",
    rules: MapRules = "dragsdk",
) -> SourceMap:
    """Map a target region back onto a handle (source) region, RegionDrag's region-pair rule.

    With ``rules="official"`` see :func:`_region_pair_official`; the rest of this docstring is the ``dragsdk`` rule.

    Both masks are resampled onto the grid (:meth:`Canvas.mask_to_grid`). With ``[tx0, tx1]`` / ``[sx0, sx1]``
    the column ranges of the target / source regions and ``[ty0(c), ty1(c)]`` / ``[sy0(c), sy1(c)]`` the row
    ranges inside column ``c``, each target cell ``(row r, col c)`` reads source cell ``(r', c')`` with
    (RegionDrag arXiv 2407.18247 §3; official ``region_pair_to_pts``, ``ui_utils.py:141-205``)::

        c' = round(sx0 + (c − tx0)·(sx1 − sx0)/(tx1 − tx0))          then the nearest source column with cells
        r' = round(sy0(c') + (r − ty0(c))·(sy1(c') − sy0(c'))/(ty1(c) − ty0(c)))

    rounded half-up and clipped into the source ranges; a one-cell target range maps to the middle of the
    source range. Every target cell gets one source, so the target has no holes; two regions of the same
    shape give a pure cell-wise shift (:func:`translate_map`).

    Args:
        canvas: the working canvas.
        handle_mask: ``(H, W)`` source region in image pixels.
        target_mask: ``(H, W)`` target region in image pixels.
        grid: grid of the map.

    Returns:
        A :class:`SourceMap` whose ``target_mask()`` is exactly the gridded ``target_mask``.

    Raises:
        ValueError: a mask of the wrong shape, empty, or covering no grid cell.
    """
    if rules == "official":
        return _region_pair_official(canvas, handle_mask, target_mask, grid)
    src = _grid_mask(canvas, handle_mask, grid, "handle_mask")
    tgt = _grid_mask(canvas, target_mask, grid, "target_mask")
    gs = canvas.grid_size(grid)
    w = gs[0]

    s_has, s_first, s_last = _column_ranges(src)
    t_has, t_first, t_last = _column_ranges(tgt)
    s_cols = torch.nonzero(s_has).flatten()
    t_cols = torch.nonzero(t_has).flatten()
    sx0, sx1 = int(s_cols.min()), int(s_cols.max())
    tx0, tx1 = int(t_cols.min()), int(t_cols.max())

    # Nearest source column holding cells, for every column index (ties → the lower column).
    dist = (torch.arange(w)[:, None] - s_cols[None, :]).abs()
    nearest_src_col = s_cols[torch.argmin(dist, dim=1)]

    tr, tc = torch.nonzero(tgt, as_tuple=True)
    sc = _round_half_up(_linear_map(tc, tx0, tx1, sx0, sx1)).clamp(sx0, sx1)
    sc = nearest_src_col[sc]
    sy0, sy1 = s_first[sc], s_last[sc]
    sr = _round_half_up(_linear_map(tr, t_first[tc], t_last[tc], sy0, sy1))
    sr = torch.minimum(torch.maximum(sr, sy0), sy1)
    return _from_pairs(tr, tc, sr, sc, gs)


def _official_grid_mask(
    canvas: Canvas, mask: np.ndarray | torch.Tensor, grid: Grid, name: str
) -> torch.Tensor:
    """``(h, w)`` bool: the official ``cv2.resize(mask, (W/8, H/8)) != 0`` of a 0/1 ``uint8`` mask (region pairs
    ``ui_utils.py:159-164``, region + points ``ui_utils.py:425-429, 498-500``), the image mask resized straight to
    the grid by :func:`_cv_resize_nonzero`. cv2's 8-bit bilinear resize rounds the interpolated value to an
    integer, so a cell is in when its bilinear value is **≥ 0.5** (not > 0); at the official grid that means at
    least 2 of the 4 pixels ``8c+3 … 8c+4`` around the cell centre. A float mask is binarised at 0.5 first."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    w_img, h_img = canvas.image_size
    if m.ndim != 2 or tuple(m.shape) != (h_img, w_img):
        raise ValueError(f"{name}: mask must be (H, W) = {(h_img, w_img)} pixels, got {tuple(m.shape)}")
    if not bool(m.any()):
        raise ValueError(f"{name} is empty")
    m = (m.float() > 0.5) if m.is_floating_point() else (m != 0)
    out = _cv_resize_nonzero(m.cpu().numpy(), canvas.grid_size(grid))
    if not out.any():
        raise ValueError(f"{name} covers no {grid} cell (region too thin for the grid)")
    return torch.from_numpy(out)


def _region_pair_official(
    canvas: Canvas, handle_mask: np.ndarray | torch.Tensor, target_mask: np.ndarray | torch.Tensor, grid: Grid
) -> SourceMap:
    """The official region-pair rule (``region_pair_to_pts``, ``ui_utils.py:141-186``), in float32 as there.

    Masks: :func:`_official_grid_mask` (bilinear value ≥ 0.5). With ``[tx0, tx1]`` / ``[sx0, sx1]`` the column ranges of the target and
    handle regions and ``[ty0(c), ty1(c)]`` / ``[sy0(c), sy1(c)]`` the row ranges in column ``c``::

        x' = (c − tx0)·(sx1 − sx0)/max(tx1 − tx0, 1e-4) + sx0,          c' = trunc(x')
        y' = (r − ty0(c))·(sy1(c') − sy0(c'))/max(ty1(c) − ty0(c), 1e-4) + sy0(c'),   r' = trunc(y')

    so a one-cell-wide target reads the handle's first column and a one-cell-tall target column its first row.
    **Fixed official bug:** when handle column ``c'`` holds no cell (a handle with gaps, e.g. two blobs), the
    official range is (+inf, −inf) and the source becomes NaN, cast to row 0; here ``c'`` becomes the nearest
    handle column with cells (ties: the lower one), as in the ``dragsdk`` rule.
    """
    src = _official_grid_mask(canvas, handle_mask, grid, "handle_mask")
    tgt = _official_grid_mask(canvas, target_mask, grid, "target_mask")
    gs = canvas.grid_size(grid)
    w = gs[0]
    f32 = torch.float32
    s_has, s_first, s_last = _column_ranges(src)
    t_has, t_first, t_last = _column_ranges(tgt)
    s_cols = torch.nonzero(s_has).flatten()
    t_cols = torch.nonzero(t_has).flatten()
    sx0, sx1 = s_cols.min().to(f32), s_cols.max().to(f32)
    tx0, tx1 = t_cols.min().to(f32), t_cols.max().to(f32)
    tr, tc = torch.nonzero(tgt, as_tuple=True)
    scale_x = (sx1 - sx0) / (tx1 - tx0).clamp(min=1e-4)
    sc = ((tc.to(f32) - tx0) * scale_x + sx0).to(torch.int32).to(torch.long)
    dist = (torch.arange(w)[:, None] - s_cols[None, :]).abs()
    sc = s_cols[torch.argmin(dist, dim=1)][sc]  # the fix: a column with handle cells
    sy0, sy1 = s_first[sc].to(f32), s_last[sc].to(f32)
    ty0, ty1 = t_first[tc].to(f32), t_last[tc].to(f32)
    scale_y = (sy1 - sy0) / (ty1 - ty0).clamp(min=1e-4)
    sr = ((tr.to(f32) - ty0) * scale_y + sy0).to(torch.int32).to(torch.long)
    return _from_pairs(tr, tc, sr, sc, gs)


# --------------------------------------------------------------------------------------------------------------
# polygons


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray, eps: float) -> bool:
    """Whether two closed segments meet (proper crossing, or touching within ``eps`` of collinearity)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > eps and d2 < -eps) or (d1 < -eps and d2 > eps)) and (
        (d3 > eps and d4 < -eps) or (d3 < -eps and d4 > eps)
    ):
        return True

    def on_seg(a: np.ndarray, b: np.ndarray, p: np.ndarray, d: float) -> bool:
        return (
            abs(d) <= eps
            and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
            and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])
        )

    return (
        on_seg(q1, q2, p1, d1) or on_seg(q1, q2, p2, d2) or on_seg(p1, p2, q1, d3) or on_seg(p1, p2, q2, d4)
    )


def _check_polygon(v: np.ndarray, name: str) -> None:
    """Refuse self-intersecting quads and degenerate polygons (≈ zero area, three collinear vertices)."""
    diag2 = float(np.sum((v.max(0) - v.min(0)) ** 2))
    if diag2 == 0:
        raise ValueError(f"{name} are degenerate: all vertices coincide")
    eps = 1e-9 * diag2
    if len(v) == 4 and (
        _segments_cross(v[0], v[1], v[2], v[3], eps) or _segments_cross(v[1], v[2], v[3], v[0], eps)
    ):
        raise ValueError(f"{name}: quad vertices self-intersect (give them in order around the quad)")
    x, y = v[:, 0], v[:, 1]
    area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    if abs(area) <= 1e-6 * diag2:
        raise ValueError(f"{name} are degenerate: the polygon has (almost) zero area")
    n = len(v)
    for i in range(n):
        if abs(_cross(v[i], v[(i + 1) % n], v[(i + 2) % n])) <= eps:
            raise ValueError(f"{name} are degenerate: three consecutive vertices are collinear")


def _inside_polygon(px: torch.Tensor, py: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """Even-odd (crossing number) point-in-polygon test; works for concave simple polygons."""
    inside = torch.zeros_like(px, dtype=torch.bool)
    n = poly.shape[0]
    for i in range(n):
        ax, ay = poly[i]
        bx, by = poly[(i + 1) % n]
        if float(by - ay) == 0.0:
            continue  # a horizontal edge is never crossed by the horizontal ray
        straddles = (ay > py) != (by > py)
        x_at = ax + (bx - ax) * (py - ay) / (by - ay)
        inside ^= straddles & (px < x_at)
    return inside


def _affine_3pts(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Exact ``3×3`` affine matrix with ``dst_i = M · [src_i, 1]`` for three point pairs (float64)."""
    a = torch.cat([src, torch.ones(3, 1, dtype=_F)], dim=1)  # rows [x y 1]
    m_t = torch.linalg.solve(a, dst)  # (3, 2): a @ m_t = dst
    m = torch.eye(3, dtype=_F)
    m[:2, :] = m_t.T
    return m


def polygon_map(
    canvas: Canvas,
    handle_vertices: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    target_vertices: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    grid: Grid = "latent",
    rules: MapRules = "dragsdk",
) -> SourceMap:
    """Map a target triangle / quad back onto the handle one by an affine / perspective transform.

    With ``rules="official"`` the cells and sources follow :func:`_polygon_official` (cv2.fillPoly's cells, cv2's
    transforms); the validation is shared. The rest of this docstring describes the ``dragsdk`` rule.

    Vertices are image pixels, in order around the polygon, vertex ``i`` of the target corresponding to vertex
    ``i`` of the handle. In cell-index coordinates the transform ``M`` (target → source) is solved exactly:
    for 3 points an affine map from the 3×3 system ``[x y 1]·Mᵀ = [x' y']`` (torch.linalg.solve), for 4 points
    the homography of :func:`kornia.geometry.transform.get_perspective_transform` (DLT). Every cell whose
    centre lies inside the target polygon (even-odd test, so concave quads work) reads the cell holding
    ``M(centre)`` (RegionDrag arXiv 2407.18247 §3; official ``transform_polygon``, ``ui_utils.py:286-305``);
    cells whose source is off the grid (or, for a homography, behind the line at infinity) are dropped.

    Args:
        canvas: the working canvas.
        handle_vertices: ``(N, 2)`` source polygon, ``N`` = 3 or 4, image pixels.
        target_vertices: ``(N, 2)`` target polygon, same ``N``.
        grid: grid of the map.

    Returns:
        A :class:`SourceMap`.

    Raises:
        ValueError: a vertex count other than 3 or 4 or differing between the two polygons, non-finite
            coordinates, a degenerate polygon (≈ zero area or three collinear vertices), a self-intersecting
            quad, or a target polygon covering no cell with an on-grid source.
    """
    hv = _points_array(handle_vertices, "handle_vertices")
    tv = _points_array(target_vertices, "target_vertices")
    for name, v in (("handle_vertices", hv), ("target_vertices", tv)):
        if len(v) not in (3, 4):
            raise ValueError(f"{name} must hold 3 (affine) or 4 (perspective) vertices, got {len(v)}")
    if len(hv) != len(tv):
        raise ValueError(f"handle_vertices has {len(hv)} vertices but target_vertices has {len(tv)}")
    _check_polygon(hv, "handle_vertices")
    _check_polygon(tv, "target_vertices")

    gs = canvas.grid_size(grid)
    w, h = gs
    hs = _to_index_coords(canvas, hv, grid)
    ts = _to_index_coords(canvas, tv, grid)
    if len(hv) == 3:
        m = _affine_3pts(ts, hs)
    else:
        m = kornia.geometry.transform.get_perspective_transform(ts[None], hs[None])[0].to(_F)
    if not bool(torch.isfinite(m).all()):
        raise ValueError("target_vertices / handle_vertices give a singular transform")
    if rules == "official":
        return _polygon_official(canvas, hv, tv, grid)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    px, py = cols.reshape(-1).to(_F), rows.reshape(-1).to(_F)
    inside = _inside_polygon(px, py, ts)
    tr, tc = rows.reshape(-1)[inside], cols.reshape(-1)[inside]
    pts = torch.stack([px[inside], py[inside], torch.ones_like(px[inside])], dim=0)
    q = m @ pts
    # Sign of the homogeneous coordinate at the target vertices: points with the other sign lie beyond
    # the line at infinity of the source plane.
    wref = torch.sign((m @ torch.cat([ts, torch.ones(len(ts), 1, dtype=_F)], 1).T)[2].sum())
    ok = q[2] * wref > 1e-12
    qx = q[0] / torch.where(ok, q[2], torch.ones_like(q[2]))
    qy = q[1] / torch.where(ok, q[2], torch.ones_like(q[2]))
    sc, sr = _round_half_up(qx), _round_half_up(qy)
    ok &= _in_grid(sr, sc, gs)
    sm = _from_pairs(tr[ok], tc[ok], sr[ok], sc[ok], gs)
    if len(sm) == 0:
        raise ValueError("target_vertices cover no grid cell with a source on the grid (polygon too small?)")
    return sm


def fill_polygon_cells(vertices: np.ndarray, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells ``(rows, cols)``, in raster order, that the official polygon fill covers for integer vertices.

    The official ``get_points_inside_polygon`` (``ui_utils.py:290-295``) fills the polygon with ``cv2.fillPoly``
    on a mask spanning ``[0, max x] × [0, max y]`` of the vertices and lists the cells ``== 1``
    (:func:`_cv_fill_poly`: the 8-connected outline plus the even-odd scanline fill of the half-shifted edges;
    an axis-aligned rectangle ``[x0, x1] × [y0, y1]`` fills ``(x1−x0+1)·(y1−y0+1)`` cells). Only negative
    coordinates are clipped there; cells off the ``(w, h)`` grid are dropped here.

    Args:
        vertices: ``(N, 2)`` integer ``[x, y]`` cell coordinates, in order around the polygon.
        grid_size: ``(w, h)``.
    """
    v = np.asarray(vertices, dtype=np.int64).reshape(-1, 2)
    cw, ch = int(v[:, 0].max()) + 1, int(v[:, 1].max()) + 1
    w, h = grid_size
    if cw <= 0 or ch <= 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    rows, cols = np.nonzero(_cv_fill_poly(v, (cw, ch))[:h, :w])
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def _polygon_official(canvas: Canvas, hv: np.ndarray, tv: np.ndarray, grid: Grid) -> SourceMap:
    """The official polygon rule (``transform_polygon``, ``ui_utils.py:286-305``).

    Vertices scaled to the grid in float32 (``np.float32(v)·scale``, no half-cell offset, ``ui_utils.py:300``);
    ``M`` = target → source ``cv2.getAffineTransform`` (3 vertices) or ``cv2.getPerspectiveTransform`` (4) of
    those vertices (:func:`_cv_transform_matrix`, ``ui_utils.py:301``); the target cells are
    :func:`fill_polygon_cells` of the vertices truncated to int32 (``ui_utils.py:291, 302``); each source is
    ``cv2.transform`` / ``cv2.perspectiveTransform`` of the cell (:func:`_cv_apply_transform`, float32,
    ``ui_utils.py:303``) truncated toward zero (``astype(np.int32)``, ``ui_utils.py:305``). **Fixed official bug:**
    sources off the grid are dropped (the official code raises an IndexError for sources past the right / bottom
    edge and wraps negative ones to the opposite edge); so are target cells off the grid.
    """
    gs = canvas.grid_size(grid)
    scale = np.asarray(canvas.scale(grid), dtype=np.float32)
    hs = hv.astype(np.float32) * scale
    ts = tv.astype(np.float32) * scale
    m = _cv_transform_matrix(ts, hs)
    if m is None:
        raise ValueError("target_vertices / handle_vertices give a singular transform")
    tr, tc = fill_polygon_cells(ts.astype(np.int32), gs)
    q = _cv_apply_transform(np.stack([tc.numpy(), tr.numpy()], axis=1).astype(np.float32), m).astype(
        np.float64
    )
    ok = np.isfinite(q).all(axis=1) & (np.abs(q) < 2.0**31).all(axis=1)
    q = np.trunc(np.where(ok[:, None], q, 0.0)).astype(np.int64)
    sc, sr = torch.as_tensor(q[:, 0]), torch.as_tensor(q[:, 1])
    keep = torch.as_tensor(ok) & _in_grid(sr, sc, gs)
    sm = _from_pairs(tr[keep], tc[keep], sr[keep], sc[keep], gs)
    if len(sm) == 0:
        raise ValueError("target_vertices cover no grid cell with a source on the grid (polygon too small?)")
    return sm


# --------------------------------------------------------------------------------------------------------------
# region + points


def _idw(query: torch.Tensor, anchors: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse-distance weighting (Shepard 1968) over the ``k`` nearest anchors, weights ``1/dist²`` (the
    ``dragsdk`` rule; the official one is :func:`_idw_official`).

    Args:
        query: ``(N, 2)`` positions; anchors: ``(M, 2)``; values: ``(M, 2)``; all float64.

    Returns:
        ``(N, 2)`` interpolated values, exact at an anchor. Weights are normalised before use, so a single
        anchor (or ``k = 1``) returns its value bit for bit.
    """
    k = min(k, anchors.shape[0])
    d2 = torch.cdist(query, anchors).square()
    d2k, idx = torch.topk(d2, k, dim=1, largest=False)  # ascending
    vals = values[idx]  # (N, k, 2)
    wts = 1.0 / d2k.clamp(min=1e-300)
    wts = wts / wts.sum(dim=1, keepdim=True)
    out = (wts[..., None] * vals).sum(dim=1)
    exact = d2k[:, 0] <= 1e-18
    return torch.where(exact[:, None], vals[:, 0], out)


def points_map(
    canvas: Canvas,
    region_mask: np.ndarray | torch.Tensor,
    handles: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    targets: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    grid: Grid = "latent",
    k: int = 4,
    max_handles: int = 100,
    rules: MapRules = "dragsdk",
) -> SourceMap:
    """Warp a region by a few handle → target point pairs (RegionDrag's region-plus-points input).

    With ``rules="official"`` see :func:`_points_official` (the official contour warp); the rest of this docstring
    is the ``dragsdk`` rule. The displacement field is inverse-distance weighted (Shepard 1968) over the ``k``
    nearest handles, ``d(p) = Σ wᵢ dᵢ / Σ wᵢ`` with ``wᵢ = 1/|p − hᵢ|²`` (exact at a handle), ``dᵢ = tᵢ − hᵢ`` in
    cells (RegionDrag arXiv 2407.18247 §3; official ``region_to_points``: 4 nearest, at most 100 handles).

    1. *Forward*: every region cell ``p`` goes to the cell ``round(p + d(p))``; where several land on one
       cell, the one landing nearest its centre is the source.
    2. *Backward fill* (no holes): every other cell ``c`` of the forward image's bounding box (grown by one
       cell) takes the source ``round(c − d̃(c))``, ``d̃`` being the same IDW with the displacements placed
       at the targets ``tᵢ``; ``c`` is kept when that source is a region cell.

    Cells off the grid are dropped. With one pair the map is exactly :func:`translate_map` by ``t − h``.

    Args:
        canvas: the working canvas.
        region_mask: ``(H, W)`` region in image pixels.
        handles: ``(N, 2)`` handle points ``[x, y]``, image pixels.
        targets: ``(N, 2)`` target points, same ``N``.
        grid: grid of the map.
        k: number of nearest handles in the weighting (``≥ 1``; official: 4).
        max_handles: pairs kept (evenly subsampled, deterministic) when more are given (``≥ 1``); official rule:
            the number of anchors each interpolation keeps (100), as ``interpolate_points`` does.
        rules: ``"dragsdk"`` or ``"official"``.

    Returns:
        A :class:`SourceMap`.

    Raises:
        ValueError: a bad ``region_mask`` (shape, empty), ``handles`` / ``targets`` not ``(N, 2)`` with
            the same ``N ≥ 1`` or non-finite, ``k`` or ``max_handles`` below 1, a region moved entirely
            off the grid, or (official rule) no handle on a cell of the region.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if int(max_handles) < 1:
        raise ValueError(f"max_handles must be at least 1, got {max_handles}")
    hp = _points_array(handles, "handles")
    tp = _points_array(targets, "targets")
    if len(hp) == 0:
        raise ValueError("handles is empty")
    if len(hp) != len(tp):
        raise ValueError(f"handles has {len(hp)} points but targets has {len(tp)}")
    if rules == "official":
        return _points_official(canvas, region_mask, hp, tp, grid, int(k), int(max_handles))
    if len(hp) > max_handles:
        keep = np.unique(np.round(np.linspace(0, len(hp) - 1, int(max_handles))).astype(np.int64))
        hp, tp = hp[keep], tp[keep]
    region = _grid_mask(canvas, region_mask, grid, "region_mask")
    gs = canvas.grid_size(grid)
    w, h = gs

    h_cells = _to_index_coords(canvas, hp, grid)
    dx, dy = canvas.vector_to_grid((tp[:, 0] - hp[:, 0], tp[:, 1] - hp[:, 1]), grid)
    disp = torch.stack([torch.as_tensor(dx, dtype=_F), torch.as_tensor(dy, dtype=_F)], dim=1)
    t_cells = h_cells + disp

    # 1. forward
    sr, sc = torch.nonzero(region, as_tuple=True)
    p = torch.stack([sc, sr], dim=1).to(_F)
    fwd = p + _idw(p, h_cells, disp, int(k))
    tc, tr = _round_half_up(fwd[:, 0]), _round_half_up(fwd[:, 1])
    ok = _in_grid(tr, tc, gs)
    if not bool(ok.any()):
        raise ValueError("targets move region_mask entirely off the grid")
    resid = (fwd - torch.stack([tc, tr], 1).to(_F)).square().sum(1)
    tr, tc, sr, sc, resid = tr[ok], tc[ok], sr[ok], sc[ok], resid[ok]
    # Of several region cells landing on one target, keep the nearest: order by residual descending so
    # the nearest comes last and wins in _from_pairs.
    order = torch.argsort(resid, descending=True, stable=True)
    fwd_map = _from_pairs(tr[order], tc[order], sr[order], sc[order], gs)

    # 2. backward fill inside the forward image's bounding box, grown by one cell
    r0, r1 = max(int(fwd_map.target_rows.min()) - 1, 0), min(int(fwd_map.target_rows.max()) + 1, h - 1)
    c0, c1 = max(int(fwd_map.target_cols.min()) - 1, 0), min(int(fwd_map.target_cols.max()) + 1, w - 1)
    cr, cc = torch.meshgrid(torch.arange(r0, r1 + 1), torch.arange(c0, c1 + 1), indexing="ij")
    cr, cc = cr.reshape(-1), cc.reshape(-1)
    cand = ~fwd_map.target_mask()[cr, cc]
    cr, cc = cr[cand], cc[cand]
    if cr.numel():
        c = torch.stack([cc, cr], dim=1).to(_F)
        back = c - _idw(c, t_cells, disp, int(k))
        bc, br = _round_half_down(back[:, 0]), _round_half_down(back[:, 1])
        okb = _in_grid(br, bc, gs)
        okb[okb.clone()] = region[br[okb], bc[okb]]
        fill = _from_pairs(cr[okb], cc[okb], br[okb], bc[okb], gs)
        return fwd_map.merge(fill)
    return fwd_map


def points_map_parts(
    canvas: Canvas,
    region_mask: np.ndarray | torch.Tensor,
    handles: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    targets: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    grid: Grid = "latent",
    k: int = 4,
    max_handles: int = 100,
) -> list[SourceMap]:
    """The official region + points rule outline by outline (:func:`_points_official_parts`): one map per outline
    of the region that moves, in the official order; :func:`points_map` with ``rules="official"`` is their merge.
    The concatenation of their pairs is the official point list (its order decides which handle-noise draw lands
    on which cell).

    Raises:
        ValueError: as :func:`points_map`.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if int(max_handles) < 1:
        raise ValueError(f"max_handles must be at least 1, got {max_handles}")
    hp = _points_array(handles, "handles")
    tp = _points_array(targets, "targets")
    if len(hp) == 0 or len(hp) != len(tp):
        raise ValueError(
            f"handles and targets must be non-empty and of one length, got {len(hp)} and {len(tp)}"
        )
    return _points_official_parts(canvas, region_mask, hp, tp, grid, int(k), int(max_handles))


def _points_official(
    canvas: Canvas,
    region_mask: np.ndarray | torch.Tensor,
    hp: np.ndarray,
    tp: np.ndarray,
    grid: Grid,
    k: int,
    max_anchors: int,
) -> SourceMap:
    """The official region + points map: :func:`_points_official_parts` merged (a later outline wins a cell)."""
    parts = _points_official_parts(canvas, region_mask, hp, tp, grid, k, max_anchors)
    sm = parts[0]
    for part in parts[1:]:
        sm = sm.merge(part)
    return _require_nonempty(sm, "targets")


def _points_official_parts(
    canvas: Canvas,
    region_mask: np.ndarray | torch.Tensor,
    hp: np.ndarray,
    tp: np.ndarray,
    grid: Grid,
    k: int,
    max_anchors: int,
) -> list[SourceMap]:
    """The official region + points rule (``region_to_points``, ``ui_utils.py:420-525``): the region's outline is
    moved by the points' transform, filled, and mapped back.

    1. The region mask goes to the grid as for region pairs (:func:`_official_grid_mask`, ``ui_utils.py:498``);
       handles and targets become cells by truncation, ``int(p·scale)`` (``ui_utils.py:435-437, 501-502``).
    2. Per external contour of the gridded mask (``cv2.findContours`` RETR_EXTERNAL / CHAIN_APPROX_SIMPLE,
       :func:`_cv_external_contours`, ``ui_utils.py:431-433, 500``, in OpenCV's order): its region is the filled
       contour (:func:`_cv_fill_poly`, holes included, ``ui_utils.py:439-448, 508``), and the pairs used are those
       whose handle cell lies in it (``ui_utils.py:464-467, 509``); a contour without one stays put (512-513).
    3. With the moves ``t − h`` of those pairs, :func:`_idw_official` (1/d weights over the 4 nearest, float16)
       moves the contour's vertices (the warped outline) and every cell of its region (``ui_utils.py:514-515``).
    4. The target cells are the filled warped outline (``ui_utils.py:518``); each reads the source given by the
       same interpolation run backwards, anchored at the moved region cells with the moves back to where they came
       from (``ui_utils.py:519``). Pairs with the source or target off the grid are dropped (521, 450-462).

    One map per outline that moves, in OpenCV's contour order, each in raster order of its targets: the official
    point list is their concatenation (``ui_utils.py:522-524``); merged, a later outline wins a target cell they
    share (the official dense copy).
    """
    region = _official_grid_mask(canvas, region_mask, grid, "region_mask").numpy()
    gw, gh = canvas.grid_size(grid)
    scale = np.asarray(canvas.scale(grid), dtype=np.float64)
    src, dst = np.trunc(hp * scale).astype(np.int64), np.trunc(tp * scale).astype(np.int64)
    on_grid = (src[:, 0] >= 0) & (src[:, 0] < gw) & (src[:, 1] >= 0) & (src[:, 1] < gh)
    parts: list[SourceMap] = []
    for outline in _cv_external_contours(region):
        inside = _cv_fill_poly(outline, (gw, gh))
        use = on_grid.copy()
        use[on_grid] = inside[src[on_grid, 1], src[on_grid, 0]]
        if not use.any():
            continue
        s, move = src[use], dst[use] - src[use]
        ry, rx = np.nonzero(inside)
        cells = np.stack([rx, ry], axis=1)
        moved_outline = _idw_official(outline, s, move, k, max_anchors)
        moved_cells = _idw_official(cells, s, move, k, max_anchors)
        ty, tx = np.nonzero(_cv_fill_poly(moved_outline, (gw, gh)))
        targets = np.stack([tx, ty], axis=1)
        back = _idw_official(targets, moved_cells, cells - moved_cells, k, max_anchors)
        ok = (back[:, 0] >= 0) & (back[:, 0] < gw) & (back[:, 1] >= 0) & (back[:, 1] < gh)
        t_ok, b_ok = (
            torch.as_tensor(targets[ok], dtype=torch.long),
            torch.as_tensor(back[ok], dtype=torch.long),
        )
        parts.append(_from_pairs(t_ok[:, 1], t_ok[:, 0], b_ok[:, 1], b_ok[:, 0], (gw, gh)))
    if not parts:
        raise ValueError(
            f"handles: none lies on a {grid} cell of region_mask (official rule: a region moves "
            "only with the handles inside it)"
        )
    return parts


# --------------------------------------------------------------------------------------------------------------
# dense point list (DragBench-SR/DR meta_data_region.pkl)


def dense_points_sources(
    canvas: Canvas, points: Sequence[Sequence[float]] | np.ndarray | torch.Tensor, grid: Grid = "latent"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)``, ``(K,)`` long: the cell of each handle ``hᵢ`` of a dense point list, in the list's order with
    its repeats (the cells of :func:`dense_points_map`'s direct pairs; at the native size the official
    ``source // 8``, ``drag.py:189``): the official point list of the handle noise.

    Raises:
        ValueError: as :func:`dense_points_map`.
    """
    pts = _points_array(points, "points")
    if len(pts) == 0 or len(pts) % 2:
        raise ValueError(f"points must alternate handle and target, got {len(pts)} points")
    w, h = canvas.grid_size(grid)
    sx, sy = canvas.scale(grid)
    hp = pts[0::2]
    rows = torch.as_tensor(np.clip(np.floor((hp[:, 1] + 0.5) * sy), 0, h - 1), dtype=torch.long)
    cols = torch.as_tensor(np.clip(np.floor((hp[:, 0] + 0.5) * sx), 0, w - 1), dtype=torch.long)
    return rows, cols


def dense_points_map(
    canvas: Canvas,
    points: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    grid: Grid = "latent",
    block_px: int = 8,
) -> SourceMap:
    """Map from the dense point list of DragBench-SR/DR ``meta_data_region.pkl`` (read by the official
    ``get_meta_data``, ``region_utils/drag.py:39-59``).

    ``points`` alternates handle and target ``[x, y]`` image pixels: ``[h₀, t₀, h₁, t₁, …]``, one pair per
    ``block_px``-pixel block of the target region (the official ``region_pair_to_pts(…, 1/8)·8``). The official
    code edits at the image's own size and maps pair ``i`` to the cells ``hᵢ//8 → tᵢ//8`` (``drag.py:189``).

    At any working size every target cell is written (at another size than the native one a per-point map
    leaves holes: measured, 38 of 118 target cells for a 512×384 image edited at 576×448):

    1. *fill*: each grid cell whose centre (in image pixels) falls in the ``block_px`` block of a target ``tᵢ``
       (``floor(p/block_px)``) reads the cell holding that centre moved by ``hᵢ − tᵢ`` (clipped to the grid);
    2. *direct*: the cell of each ``tᵢ`` reads the cell of ``hᵢ`` (cells as :meth:`Canvas.to_cell`), and wins.

    At the native size (working grid = image/8) the fill adds nothing the direct pairs do not write for the
    DragBench format, so the map is the official one. Where several pairs share a target cell, the last wins.

    Args:
        canvas: the working canvas.
        points: ``(2K, 2)`` array or list of ``[x, y]`` pairs, image pixels.
        grid: grid of the map.
        block_px: side of the image-pixel block each pair stands for (8: one native latent cell).

    Returns:
        A :class:`SourceMap` with one source per target cell.

    Raises:
        ValueError: ``points`` not ``(2K, 2)`` with ``K ≥ 1``, or non-finite; ``block_px`` below 1.
    """
    if int(block_px) < 1:
        raise ValueError(f"block_px must be at least 1, got {block_px}")
    pts = _points_array(points, "points")
    if len(pts) == 0:
        raise ValueError("points is empty")
    if len(pts) % 2:
        raise ValueError(f"points must alternate handle and target, got an odd count {len(pts)}")
    gs = canvas.grid_size(grid)
    w, h = gs
    sx, sy = canvas.scale(grid)

    def cells(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(np.clip(np.floor(y * sy), 0, h - 1), dtype=torch.long),
            torch.as_tensor(np.clip(np.floor(x * sx), 0, w - 1), dtype=torch.long),
        )

    hp, tp = pts[0::2], pts[1::2]
    # 1. fill: every cell centre inside a target block (last pair of a block wins)
    b = float(block_px)
    iw, ih = canvas.image_size
    nbx, nby = int(np.ceil(iw / b)) + 1, int(np.ceil(ih / b)) + 1
    owner = np.full(nbx * nby, -1, dtype=np.int64)
    bx = np.clip(np.floor(tp[:, 0] / b), 0, nbx - 1).astype(np.int64)
    by = np.clip(np.floor(tp[:, 1] / b), 0, nby - 1).astype(np.int64)
    owner[by * nbx + bx] = np.arange(len(tp))  # numpy fancy assignment: the last index wins
    rr, cc = np.mgrid[0:h, 0:w]
    cx, cy = (cc.ravel() + 0.5) / sx, (rr.ravel() + 0.5) / sy  # cell centres in image pixels
    cbx = np.clip(np.floor(cx / b), 0, nbx - 1).astype(np.int64)
    cby = np.clip(np.floor(cy / b), 0, nby - 1).astype(np.int64)
    k = owner[cby * nbx + cbx]
    inside = k >= 0
    k = k[inside]
    fr, fc = torch.as_tensor(rr.ravel()[inside]), torch.as_tensor(cc.ravel()[inside])
    d = hp[k] - tp[k]
    fsr, fsc = cells(cx[inside] + d[:, 0], cy[inside] + d[:, 1])
    # 2. direct pairs, as Canvas.to_cell (pixel centres), written last so they win
    tr, tc = cells(tp[:, 0] + 0.5, tp[:, 1] + 0.5)
    sr, sc = cells(hp[:, 0] + 0.5, hp[:, 1] + 0.5)
    return _from_pairs(
        torch.cat([fr, tr]), torch.cat([fc, tc]), torch.cat([fsr, sr]), torch.cat([fsc, sc]), gs
    )
