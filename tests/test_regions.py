"""Tests for dragsdk.regions: RegionDrag inputs → dense target→source latent maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dragsdk.geometry import Canvas
from dragsdk.regions import (
    SourceMap,
    dense_points_map,
    points_map,
    polygon_map,
    region_pair_map,
    translate_map,
)

# Non-square images; 512×344 @256 → latent 40×24, 400×640 @512 → latent 48×80 (cells are not whole pixels).
CANVASES = [
    Canvas.fit((512, 344), resolution=256),
    Canvas.fit((400, 640), resolution=512),
    Canvas.fit((512, 344), resolution=512),
    Canvas.fit((400, 640), resolution=256),
]
IDS = [f"{c.image_size[0]}x{c.image_size[1]}@{c.size}" for c in CANVASES]


# ---------------------------------------------------------------------------------------------- helpers
def px_per_cell(canvas: Canvas) -> tuple[float, float]:
    """Image pixels per latent cell, computed from the sizes (independent of Canvas.scale)."""
    gw, gh = canvas.size[0] // 8, canvas.size[1] // 8
    return canvas.image_size[0] / gw, canvas.image_size[1] / gh


def cell_rect_mask(canvas: Canvas, c0: int, r0: int, c1: int, r1: int) -> np.ndarray:
    """(H, W) image mask of the pixels whose centres fall in latent cells [c0, c1) × [r0, r1)."""
    W, H = canvas.image_size
    ux, uy = px_per_cell(canvas)
    gx = (np.arange(W) + 0.5) / ux
    gy = (np.arange(H) + 0.5) / uy
    mx = (gx >= c0) & (gx < c1)
    my = (gy >= r0) & (gy < r1)
    return (my[:, None] & mx[None, :]).astype(np.uint8)


def rect_cells(canvas: Canvas, c0: int, r0: int, c1: int, r1: int) -> torch.Tensor:
    gw, gh = canvas.grid_size("latent")
    m = torch.zeros(gh, gw, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def assert_valid(sm: SourceMap) -> None:
    w, h = sm.grid_size
    t = sm.target_rows * w + sm.target_cols
    assert torch.unique(t).numel() == len(sm), "one source per target"
    for rows, cols in ((sm.target_rows, sm.target_cols), (sm.source_rows, sm.source_cols)):
        assert sm.target_rows.dtype == torch.long
        assert bool(((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).all())


def centres_to_image(canvas: Canvas, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Latent cell centres → continuous image coordinates, (N, 2)."""
    ux, uy = px_per_cell(canvas)
    return np.stack([(cols + 0.5) * ux, (rows + 0.5) * uy], axis=1)


def image_to_grid(canvas: Canvas, xy: np.ndarray) -> np.ndarray:
    ux, uy = px_per_cell(canvas)
    return np.stack([xy[:, 0] / ux, xy[:, 1] / uy], axis=1)


def inside_convex(p: np.ndarray, poly: np.ndarray, margin: float) -> np.ndarray:
    """Points strictly inside a convex polygon by at least ``margin`` (image pixels), either orientation."""
    n = len(poly)
    cross = []
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        e = b - a
        cross.append((e[0] * (p[:, 1] - a[1]) - e[1] * (p[:, 0] - a[0])) / np.hypot(*e))
    cross = np.stack(cross, 1)
    return (cross > margin).all(1) | (cross < -margin).all(1)


# ---------------------------------------------------------------------------------------------- region pair
@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
def test_translated_square_is_a_pure_shift(canvas: Canvas) -> None:
    gw, gh = canvas.grid_size("latent")
    c0, r0, side = 2, 3, min(gw, gh) // 4
    dc, dr = gw // 3, -1
    src = cell_rect_mask(canvas, c0, r0, c0 + side, r0 + side)
    tgt = cell_rect_mask(canvas, c0 + dc, r0 + dr, c0 + dc + side, r0 + dr + side)
    sm = region_pair_map(canvas, src, tgt)
    assert_valid(sm)
    assert torch.equal(sm.target_mask(), rect_cells(canvas, c0 + dc, r0 + dr, c0 + dc + side, r0 + dr + side))
    assert torch.equal(sm.target_mask(), canvas.mask_to_grid(tgt, "latent"))
    assert torch.equal(sm.source_rows, sm.target_rows - dr)
    assert torch.equal(sm.source_cols, sm.target_cols - dc)
    assert torch.equal(sm.source_mask(), rect_cells(canvas, c0, r0, c0 + side, r0 + side))
    # Same as the translation helper with the shift in image pixels.
    ux, uy = px_per_cell(canvas)
    tm = translate_map(canvas, src, (dc * ux, dr * uy))
    for a in ("target_rows", "target_cols", "source_rows", "source_cols"):
        assert torch.equal(getattr(sm, a), getattr(tm, a))


@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
def test_region_pair_target_has_no_holes(canvas: Canvas) -> None:
    W, H = canvas.image_size
    yy, xx = np.mgrid[:H, :W]
    # A small square source, a larger ellipse target (stretch + shape change).
    src = ((xx > W * 0.1) & (xx < W * 0.25) & (yy > H * 0.1) & (yy < H * 0.3)).astype(np.uint8)
    tgt = (((xx - W * 0.6) / (W * 0.25)) ** 2 + ((yy - H * 0.6) / (H * 0.3)) ** 2 < 1).astype(np.uint8)
    sm = region_pair_map(canvas, src, tgt)
    assert_valid(sm)
    assert torch.equal(sm.target_mask(), canvas.mask_to_grid(tgt, "latent"))
    src_grid = canvas.mask_to_grid(src, "latent")
    assert bool(src_grid[sm.source_rows, sm.source_cols].all()), "convex source: every read cell is inside"
    # Monotone in x: columns further right read columns no further left.
    order = torch.argsort(sm.target_cols, stable=True)
    assert bool((torch.diff(sm.source_cols[order]) >= 0).all())


def test_region_pair_errors() -> None:
    canvas = CANVASES[0]
    W, H = canvas.image_size
    full = np.ones((H, W), np.uint8)
    with pytest.raises(ValueError, match="target_mask is empty"):
        region_pair_map(canvas, full, np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="handle_mask is empty"):
        region_pair_map(canvas, np.zeros((H, W), np.uint8), full)
    with pytest.raises(ValueError, match="handle_mask"):
        region_pair_map(canvas, np.ones((W, H), np.uint8), full)
    tiny = np.zeros((H, W), np.uint8)
    tiny[5, 5] = 1
    with pytest.raises(ValueError, match="target_mask covers no latent cell"):
        region_pair_map(canvas, full, tiny)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ci=st.sampled_from(range(len(CANVASES))),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
    fw=st.floats(0, 1),
    fh=st.floats(0, 1),
    fdx=st.floats(0, 1),
    fdy=st.floats(0, 1),
)
def test_random_rectangle_translations(ci, fx, fy, fw, fh, fdx, fdy) -> None:
    canvas = CANVASES[ci]
    gw, gh = canvas.grid_size("latent")
    w = 1 + int(fw * (gw // 2 - 1))
    h = 1 + int(fh * (gh // 2 - 1))
    c0 = int(fx * (gw - w))
    r0 = int(fy * (gh - h))
    tc0 = int(fdx * (gw - w))
    tr0 = int(fdy * (gh - h))
    src = cell_rect_mask(canvas, c0, r0, c0 + w, r0 + h)
    tgt = cell_rect_mask(canvas, tc0, tr0, tc0 + w, tr0 + h)
    sm = region_pair_map(canvas, src, tgt)
    assert torch.equal(sm.target_mask(), rect_cells(canvas, tc0, tr0, tc0 + w, tr0 + h))
    assert len(sm) == w * h
    assert bool((sm.target_cols - sm.source_cols == tc0 - c0).all())
    assert bool((sm.target_rows - sm.source_rows == tr0 - r0).all())


# ---------------------------------------------------------------------------------------------- polygons
def _check_against(canvas: Canvas, sm: SourceMap, tv: np.ndarray, transform) -> None:
    """Every mapped source centre is within half a cell (per axis) of the independent preimage."""
    assert_valid(sm)
    tc, tr = sm.target_cols.numpy(), sm.target_rows.numpy()
    pre = image_to_grid(canvas, transform(centres_to_image(canvas, tc, tr)))
    src_c = np.stack([sm.source_cols.numpy() + 0.5, sm.source_rows.numpy() + 0.5], 1)
    err = np.abs(src_c - pre).max()
    assert err <= 0.5 + 1e-6, err
    # Rasterisation: cells well inside the target polygon are all present, cells well outside absent.
    gw, gh = canvas.grid_size("latent")
    rows, cols = np.mgrid[:gh, :gw]
    centres = centres_to_image(canvas, cols.ravel(), rows.ravel())
    tm = sm.target_mask().numpy().ravel()
    ux, uy = px_per_cell(canvas)
    margin = 1e-3 * min(ux, uy)
    assert tm[inside_convex(centres, tv, margin)].all()
    # Outside: not inside the polygon grown by the margin (test by shrinking nothing: use the negative side).
    outside = ~inside_convex(centres, tv, -margin)
    assert not tm[outside].any()


@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
def test_scaled_triangle_matches_numpy_affine(canvas: Canvas) -> None:
    W, H = canvas.image_size
    hv = np.array([[0.2 * W, 0.2 * H], [0.45 * W, 0.25 * H], [0.3 * W, 0.5 * H]])
    centre = hv.mean(0)
    tv = centre + 1.6 * (hv - centre) + np.array([0.15 * W, 0.1 * H])
    sm = polygon_map(canvas, hv.tolist(), tv)
    # Independent affine, in continuous image coordinates (vertex (x, y) = centre (x+.5, y+.5)).
    a = np.hstack([tv + 0.5, np.ones((3, 1))])
    m = np.linalg.solve(a, hv + 0.5)  # (3, 2): [x y 1] @ m = source

    def affine(p: np.ndarray) -> np.ndarray:
        return np.hstack([p, np.ones((len(p), 1))]) @ m

    _check_against(canvas, sm, tv + 0.5, affine)
    # Scaled up by 1.6 in area terms ≈ 2.56× as many target cells as the source triangle covers.
    ux, uy = px_per_cell(canvas)
    e1, e2 = tv[1] - tv[0], tv[2] - tv[0]
    area_cells = 0.5 * abs(e1[0] * e2[1] - e1[1] * e2[0]) / (ux * uy)
    assert abs(len(sm) - area_cells) < 0.25 * area_cells + 4


def _dlt(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    _, _, vt = np.linalg.svd(np.asarray(rows, dtype=np.float64))
    return vt[-1].reshape(3, 3)


@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
def test_quad_matches_numpy_homography(canvas: Canvas) -> None:
    W, H = canvas.image_size
    hv = np.array([[0.1 * W, 0.1 * H], [0.4 * W, 0.15 * H], [0.45 * W, 0.45 * H], [0.12 * W, 0.4 * H]])
    tv = np.array([[0.5 * W, 0.3 * H], [0.9 * W, 0.35 * H], [0.8 * W, 0.9 * H], [0.55 * W, 0.75 * H]])
    sm = polygon_map(canvas, torch.tensor(hv), tv.tolist())
    hom = _dlt(tv + 0.5, hv + 0.5)

    def persp(p: np.ndarray) -> np.ndarray:
        q = np.hstack([p, np.ones((len(p), 1))]) @ hom.T
        return q[:, :2] / q[:, 2:]

    # Sanity of the independent homography at the vertices.
    np.testing.assert_allclose(persp(tv + 0.5), hv + 0.5, atol=1e-6)
    _check_against(canvas, sm, tv + 0.5, persp)


def test_concave_quad_accepted_and_rasterised() -> None:
    canvas = CANVASES[1]
    W, H = canvas.image_size
    # An arrow-head ("dart"): vertex 2 pushed inside.
    tv = np.array([[0.1 * W, 0.1 * H], [0.9 * W, 0.5 * H], [0.4 * W, 0.5 * H], [0.1 * W, 0.9 * H]])
    sm = polygon_map(canvas, tv, tv)
    assert_valid(sm)
    assert torch.equal(sm.source_rows, sm.target_rows) and torch.equal(sm.source_cols, sm.target_cols)
    # The notch (right of vertex 2, below the 1→2 edge) is empty, the solid part is filled.
    gx, gy = canvas.to_grid((0.7 * W, 0.7 * H), "latent")
    assert not bool(sm.target_mask()[int(gy), int(gx)])
    gx, gy = canvas.to_grid((0.25 * W, 0.5 * H), "latent")
    assert bool(sm.target_mask()[int(gy), int(gx)])


def test_polygon_errors() -> None:
    canvas = CANVASES[0]
    quad = [[10, 10], [200, 10], [200, 200], [10, 200]]
    bowtie = [[10, 10], [200, 10], [10, 200], [200, 200]]
    with pytest.raises(ValueError, match="target_vertices: quad vertices self-intersect"):
        polygon_map(canvas, quad, bowtie)
    with pytest.raises(ValueError, match="handle_vertices: quad vertices self-intersect"):
        polygon_map(canvas, [[10, 10], [200, 200], [200, 10], [10, 200]], quad)
    with pytest.raises(ValueError, match="3 \\(affine\\) or 4 \\(perspective\\)"):
        polygon_map(canvas, quad[:2], quad[:2])
    with pytest.raises(ValueError, match="handle_vertices must hold 3"):
        polygon_map(canvas, [*quad, [5, 5]], quad)
    with pytest.raises(ValueError, match="target_vertices must hold 3"):
        polygon_map(canvas, quad, [*quad, [5, 5]])
    with pytest.raises(ValueError, match="has 4 vertices but target_vertices has 3"):
        polygon_map(canvas, quad, quad[:3])
    with pytest.raises(ValueError, match="degenerate"):
        polygon_map(canvas, quad[:3], [[0, 0], [10, 10], [20, 20]])
    with pytest.raises(ValueError, match="degenerate"):
        polygon_map(canvas, quad, [[10, 10], [100, 10], [200, 10], [10, 200]])
    with pytest.raises(ValueError, match="non-finite"):
        polygon_map(canvas, quad, [[10, 10], [100, np.nan], [200, 10], [10, 200]])


def test_polygon_drops_sources_off_grid() -> None:
    canvas = CANVASES[0]
    W, H = canvas.image_size
    tv = np.array([[0.1 * W, 0.1 * H], [0.5 * W, 0.1 * H], [0.1 * W, 0.5 * H]])
    hv = tv + np.array([0.8 * W, 0.0])  # source mostly right of the image
    sm = polygon_map(canvas, hv, tv)
    assert_valid(sm)
    full = polygon_map(canvas, tv, tv)
    assert 0 < len(sm) < len(full)


# ---------------------------------------------------------------------------------------------- points
@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
@pytest.mark.parametrize("whole_cells", [True, False])
def test_points_map_single_pair_is_translation(canvas: Canvas, whole_cells: bool) -> None:
    W, H = canvas.image_size
    yy, xx = np.mgrid[:H, :W]
    region = (((xx - 0.35 * W) / (0.15 * W)) ** 2 + ((yy - 0.4 * H) / (0.2 * H)) ** 2 < 1).astype(np.uint8)
    ux, uy = px_per_cell(canvas)
    dxy = (5 * ux, -3 * uy) if whole_cells else (0.31 * W, 0.17 * H)
    h = np.array([[0.3 * W, 0.45 * H]])
    t = h + np.array(dxy)
    sm = points_map(canvas, region, h, t)
    tm = translate_map(canvas, region, dxy)
    assert_valid(sm)
    for a in ("target_rows", "target_cols", "source_rows", "source_cols"):
        assert torch.equal(getattr(sm, a), getattr(tm, a)), a
    shift_r = (sm.target_rows - sm.source_rows).unique()
    shift_c = (sm.target_cols - sm.source_cols).unique()
    assert shift_r.numel() == 1 and shift_c.numel() == 1
    if whole_cells:
        assert (int(shift_c), int(shift_r)) == (5, -3)
        grid_region = canvas.mask_to_grid(region, "latent")
        assert torch.equal(sm.target_mask(), torch.roll(grid_region, shifts=(-3, 5), dims=(0, 1)))


def test_points_map_stretch_has_no_holes() -> None:
    canvas = CANVASES[0]
    W, H = canvas.image_size
    region = np.zeros((H, W), np.uint8)
    region[100:200, 100:200] = 1
    # Left edge fixed, right edge dragged 100 px right: the region doubles in width.
    sm = points_map(canvas, region, [[100, 150], [200, 150]], [[100, 150], [300, 150]])
    assert_valid(sm)
    src_grid = canvas.mask_to_grid(region, "latent")
    assert bool(src_grid[sm.source_rows, sm.source_cols].all())
    tm = sm.target_mask()
    widths = []
    for r in torch.nonzero(tm.any(1)).flatten():
        cols = torch.nonzero(tm[r]).flatten()
        assert int(cols.max() - cols.min()) + 1 == cols.numel(), "row has a hole"
        widths.append(cols.numel())
    src_w = int(src_grid.any(0).sum())
    assert min(widths) >= int(1.8 * src_w)
    # The fixed handle stays put: the leftmost target column equals the leftmost source column.
    assert int(sm.target_cols.min()) == int(torch.nonzero(src_grid.any(0)).min())


def test_points_map_subsamples_and_errors() -> None:
    canvas = CANVASES[0]
    W, H = canvas.image_size
    region = np.zeros((H, W), np.uint8)
    region[100:200, 100:200] = 1
    hs = np.stack([np.linspace(100, 200, 500), np.full(500, 150.0)], 1)
    sm = points_map(canvas, region, hs, hs + [40.0, 0.0], max_handles=7)
    tm = translate_map(canvas, region, (40.0, 0.0))
    assert torch.equal(sm.target_mask(), tm.target_mask())
    with pytest.raises(ValueError, match="region_mask is empty"):
        points_map(canvas, np.zeros((H, W)), [[1, 1]], [[2, 2]])
    with pytest.raises(ValueError, match="handles has 2 points but targets has 1"):
        points_map(canvas, region, [[1, 1], [3, 3]], [[2, 2]])
    with pytest.raises(ValueError, match="handles must have shape"):
        points_map(canvas, region, [1, 1], [[2, 2]])
    with pytest.raises(ValueError, match="k must be at least 1"):
        points_map(canvas, region, [[1, 1]], [[2, 2]], k=0)
    with pytest.raises(ValueError, match="off the grid"):
        points_map(canvas, region, [[150, 150]], [[150 + 2 * W, 150]])


# ---------------------------------------------------------------------------------------------- dense points
@pytest.mark.parametrize("canvas", CANVASES, ids=IDS)
def test_dense_points_round_trip(canvas: Canvas) -> None:
    gw, gh = canvas.grid_size("latent")
    rng = np.random.default_rng(0)
    ux, uy = px_per_cell(canvas)
    pairs = [
        ((int(rng.integers(gw)), int(rng.integers(gh))), (int(rng.integers(gw)), int(rng.integers(gh))))
        for _ in range(12)
    ]
    pairs.append(((0, 0), pairs[3][1]))  # duplicate target: this later pair must win

    def px(cell: tuple[int, int]) -> list[float]:  # a pixel whose centre lies in the cell
        return [float(np.floor((cell[0] + 0.5) * ux)), float(np.floor((cell[1] + 0.5) * uy))]

    flat = [p for hc, tc in pairs for p in (px(hc), px(tc))]
    for points in (flat, np.asarray(flat)):
        sm = dense_points_map(canvas, points)
        assert_valid(sm)
        expected = {}
        for hc, tc in pairs:
            expected[tc] = hc
        got = {
            (int(c), int(r)): (int(sc), int(sr))
            for r, c, sr, sc in zip(
                sm.target_rows, sm.target_cols, sm.source_rows, sm.source_cols, strict=True
            )
        }
        # Each pair's own cells map exactly (the later pair wins a shared target) ...
        assert {tc: got[tc] for tc in expected} == expected
        assert got[pairs[3][1]] == (0, 0)
        # ... and any other cell written has its centre in the 8-px block of a target point (the no-holes fill).
        blocks = {(int(t[0] // 8), int(t[1] // 8)) for t in np.asarray(flat)[1::2]}
        for c, r in set(got) - set(expected):
            assert (int((c + 0.5) * ux // 8), int((r + 0.5) * uy // 8)) in blocks


def test_dense_points_errors() -> None:
    canvas = CANVASES[0]
    with pytest.raises(ValueError, match="odd count"):
        dense_points_map(canvas, [[1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError, match="points is empty"):
        dense_points_map(canvas, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="points must have shape"):
        dense_points_map(canvas, [1, 2, 3, 4])


# ---------------------------------------------------------------------------------------------- SourceMap
def test_source_map_merge_and_validation() -> None:
    canvas = CANVASES[0]
    gs = canvas.grid_size("latent")
    a = dense_points_map(canvas, [[0, 0], [100, 100], [0, 0], [150, 150]])
    b = dense_points_map(canvas, [[300, 200], [100, 100]])
    m = a.merge(b)
    assert len(m) == 2
    tgt = canvas.to_cell((100, 100), "latent")
    i = int(torch.nonzero((m.target_cols == tgt[0]) & (m.target_rows == tgt[1])).item())
    assert (int(m.source_cols[i]), int(m.source_rows[i])) == canvas.to_cell((300, 200), "latent")
    t, s = m.flat_indices()
    assert torch.equal(t, m.target_rows * gs[0] + m.target_cols)
    assert torch.equal(m.target_mask().sum(), torch.tensor(2))
    other = dense_points_map(CANVASES[1], [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="grid"):
        a.merge(other)
    one = torch.tensor([1, 1])
    with pytest.raises(ValueError, match="target cells repeat"):
        SourceMap(one, one, one, one, gs)
    with pytest.raises(ValueError, match="outside"):
        SourceMap(torch.tensor([gs[1]]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), gs)


# ---------------------------------------------------------------------------------------------- official rules
NATIVE = Canvas((320, 192), (320, 192))  # the official code's own working size: latent 40×24, 8 px per cell


def _cells(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """An image mask covering latent cells ``[x0, x1] × [y0, y1]`` of NATIVE (whole 8-px blocks)."""
    m = np.zeros((192, 320), np.uint8)
    m[8 * y0 : 8 * y1 + 8, 8 * x0 : 8 * x1 + 8] = 1
    return m


def _as_dict(sm: SourceMap) -> dict[tuple[int, int], tuple[int, int]]:
    """``{(row, col) target: (row, col) source}``."""
    return {
        (int(r), int(c)): (int(sr), int(sc))
        for r, c, sr, sc in zip(sm.target_rows, sm.target_cols, sm.source_rows, sm.source_cols, strict=True)
    }


def test_official_region_pair_truncates_where_dragsdk_rounds() -> None:
    # Handle columns 0..2, target columns 10..14, same rows: x' = (c − 10)·2/4 = 0, .5, 1, 1.5, 2.
    handle, target = _cells(0, 2, 2, 4), _cells(10, 14, 2, 4)
    off = _as_dict(region_pair_map(NATIVE, handle, target, rules="official"))
    sdk = _as_dict(region_pair_map(NATIVE, handle, target, rules="dragsdk"))
    assert set(off) == set(sdk) == {(r, c) for r in range(2, 5) for c in range(10, 15)}
    assert [off[(3, c)][1] for c in range(10, 15)] == [0, 0, 1, 1, 2]  # truncation
    assert [sdk[(3, c)][1] for c in range(10, 15)] == [0, 1, 1, 2, 2]  # round half up
    assert all(off[(r, c)][0] == r for r, c in off)  # equal heights: rows map 1:1
    # A one-cell-wide target reads the handle's first column (official), its middle one (dragsdk).
    line = _cells(20, 20, 2, 4)
    assert {s[1] for s in _as_dict(region_pair_map(NATIVE, handle, line, rules="official")).values()} == {0}
    assert {s[1] for s in _as_dict(region_pair_map(NATIVE, handle, line, rules="dragsdk")).values()} == {1}


def test_official_region_pair_never_reads_an_empty_handle_column() -> None:
    """Fixed official bug: a handle with empty columns inside its x-range gave NaN sources (copied from row 0)."""
    handle = _cells(0, 1, 2, 4) | _cells(5, 6, 2, 4)  # columns 2..4 empty
    target = _cells(10, 16, 8, 10)  # x' = c − 10: columns 12, 13, 14 land on empty handle columns
    sm = region_pair_map(NATIVE, handle, target, rules="official")
    d = _as_dict(sm)
    assert len(d) == 21 and sm.source_mask()[torch.as_tensor(handle[::8, ::8] == 0)].sum() == 0
    # nearest handle column with cells (ties: the lower one), rows on that column's range
    assert [d[(9, c)] for c in (12, 13, 14)] == [(3, 1), (3, 1), (3, 5)]


def test_official_polygon_fill_includes_the_boundary_and_truncates_sources() -> None:
    # Target triangle with grid vertices (10, 2), (14, 2), (10, 6); the handle is it moved by −12 px = −1.5 cells.
    target = [[80, 16], [112, 16], [80, 48]]
    handle = [[x - 12, y] for x, y in target]
    d = _as_dict(polygon_map(NATIVE, handle, target, rules="official"))
    expected_cells = {(r, c) for r in range(2, 7) for c in range(10, 15) if (c - 10) + (r - 2) <= 4}
    assert len(expected_cells) == 15 and set(d) == expected_cells  # the hypotenuse cells are included
    assert all(d[(r, c)] == (r, c - 2) for r, c in d)  # trunc(c − 1.5) = c − 2
    sdk = polygon_map(NATIVE, handle, target, rules="dragsdk")
    assert len(sdk) < len(d)  # cell centres strictly inside: fewer cells


def test_official_polygon_drops_sources_off_the_image() -> None:
    """Fixed official bug: sources left of the image wrapped to the right edge, past the right edge raised."""
    target = [[8, 16], [47, 16], [47, 55], [8, 55]]  # cells 1..5 × 2..6
    handle = [[x - 24, y] for x, y in target]  # 3 cells to the left: columns −2 … 2
    d = _as_dict(polygon_map(NATIVE, handle, target, rules="official"))
    assert set(d) == {(r, c) for r in range(2, 7) for c in range(3, 6)}
    assert all(s == (r, c - 3) for (r, c), s in d.items())
    # target cells 31..35, sources 6 cells right: 37..41, of which 40 and 41 are past the right edge
    right = _as_dict(
        polygon_map(
            NATIVE, [[x + 288, y] for x, y in target], [[x + 240, y] for x, y in target], rules="official"
        )
    )
    assert {c for _, c in right} == {31, 32, 33} and max(s[1] for s in right.values()) == 39


def test_official_region_points_weights_by_inverse_distance() -> None:
    # Region: cells 0..4 of row 0. Handle (0, 0) stays, handle (4, 0) moves 4 cells right.
    region = _cells(0, 4, 0, 0)
    handles, targets = [[3.5, 3.5], [35.5, 3.5]], [[3.5, 3.5], [67.5, 3.5]]
    off = _as_dict(points_map(NATIVE, region, handles, targets, rules="official"))
    sdk = _as_dict(points_map(NATIVE, region, handles, targets, rules="dragsdk"))
    # Cell 1: distances 1 and 3. 1/d: (0·1 + 4·⅓)/(1 + ⅓) = 1 → lands on cell 2.
    # 1/d²: (4·1/9)/(1 + 1/9) = 0.4 → stays on cell 1 (cell 2 is back-filled from cell 2 − 0.4·… → 2).
    assert off[(0, 2)] == (0, 1) and sdk[(0, 1)] == (0, 1) and sdk[(0, 2)] != (0, 1)
    # Cell 3: 1/d: (4·1)/(⅓ + 1) = 3 → cell 6; 1/d²: 4/(1/9 + 1) = 3.6 → cell 7.
    assert off[(0, 6)] == (0, 3) and sdk[(0, 7)] == (0, 3)
    assert off[(0, 8)] == sdk[(0, 8)] == (0, 4) and off[(0, 0)] == sdk[(0, 0)] == (0, 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(64, 960),
    h=st.integers(64, 960),
    res=st.integers(64, 768),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
    fw=st.floats(0, 1),
    fh=st.floats(0, 1),
    fdx=st.floats(0, 1),
    fdy=st.floats(0, 1),
)
def test_dense_points_write_every_target_cell_at_any_working_size(
    w, h, res, fx, fy, fw, fh, fdx, fdy
) -> None:
    """DragBench-SR/DR dense points (one pair per 8-px block) leave no target cell unwritten at any size."""
    nbx, nby = w // 8, h // 8  # whole blocks on the image
    if nbx < 1 or nby < 1:
        return
    bw, bh = 1 + int(fw * (nbx - 1) * 0.5), 1 + int(fh * (nby - 1) * 0.5)
    x0, y0 = int(fx * (nbx - bw)), int(fy * (nby - bh))
    dx, dy = int(fdx * (nbx - bw)) - x0, int(fdy * (nby - bh)) - y0  # the handle blocks stay on the image
    pts = []
    for by in range(y0, y0 + bh):
        for bx in range(x0, x0 + bw):
            pts += [[8 * (bx + dx), 8 * (by + dy)], [8 * bx, 8 * by]]
    for canvas in (Canvas.fit((w, h), max(res, 64)), Canvas((w, h), (8 * nbx, 8 * nby))):
        sm = dense_points_map(canvas, pts)
        written = sm.target_mask()
        gw, gh = canvas.latent_size
        sx, sy = canvas.scale("latent")
        rows, cols = np.mgrid[0:gh, 0:gw]
        bxc, byc = np.floor((cols + 0.5) / sx / 8), np.floor((rows + 0.5) / sy / 8)
        in_target = (bxc >= x0) & (bxc < x0 + bw) & (byc >= y0) & (byc < y0 + bh)
        assert written[torch.as_tensor(in_target)].all()  # every cell whose centre lies in a target block
        for t in pts[1::2]:  # and every cell holding a target point
            c, r = canvas.to_cell(tuple(t), "latent")
            assert bool(written[r, c])
        if canvas.size == (8 * nbx, 8 * nby) and canvas.image_size == canvas.size:  # native: the official map
            d = _as_dict(sm)
            pairs = zip(pts[0::2], pts[1::2], strict=True)
            assert d == {(t[1] // 8, t[0] // 8): (s[1] // 8, s[0] // 8) for s, t in pairs}


# ---------------------------------------------------------------------------------------------- official rules = cv2
# The official code (Visual-AI/RegionDrag @5cf4922) builds its maps with OpenCV (opencv-python==4.8.0.76). dragsdk
# re-implements those calls without OpenCV; these tests compare them with the real cv2 (a test-only dependency,
# pinned in requirements/lock.txt) on random inputs, and the whole maps with the official steps written out on cv2.
def _cv2():
    cv2 = pytest.importorskip("cv2")
    version = tuple(int(v) for v in cv2.__version__.split(".")[:2])
    if not (4, 8) <= version < (4, 11):  # 4.11 changed cv2.fillPoly's cells; the official code pins 4.8.0
        pytest.skip(f"cv2 {cv2.__version__}: the official rasterisation is that of OpenCV 4.8-4.10")
    return cv2


def _blob(rng: np.random.Generator, w: int, h: int, kind: int | None = None) -> np.ndarray:
    """A random ellipse, rectangle or rotated rectangle, ``(h, w)`` uint8 0/1."""
    yy, xx = np.mgrid[0:h, 0:w]
    kind = int(rng.integers(0, 3)) if kind is None else kind
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    if kind == 0:
        a, b = rng.uniform(6, w / 4), rng.uniform(6, h / 4)
        m = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    elif kind == 1:
        m = (abs(xx - cx) <= rng.uniform(4, w / 4)) & (abs(yy - cy) <= rng.uniform(4, h / 4))
    else:
        r, th = rng.uniform(8, min(w, h) / 4), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = (yy - cy) * np.cos(th) - (xx - cx) * np.sin(th)
        m = (abs(u) <= r) & (abs(v) <= r * rng.uniform(0.3, 1))
    return m.astype(np.uint8)


def _noise_mask(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Speckle, rings (nested objects and holes) or overlapping rectangles: hard cases for contours and resizing."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8)
    m = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 6))):
        if kind == 1:
            d = (yy - rng.random() * h) ** 2 + (xx - rng.random() * w) ** 2
            r1 = rng.random() * max(w, h) / 3
            m ^= ((d < r1**2) & (d >= (r1 * rng.uniform(0.2, 0.9)) ** 2)).astype(np.uint8)
        else:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            m[y0 : y0 + int(rng.integers(1, 10)), x0 : x0 + int(rng.integers(1, 10))] ^= 1
    return m


def _map_of(src: np.ndarray, tgt: np.ndarray, gs: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
    """``{(row, col) target: (row, col) source}`` of official ``(x, y)`` cell lists; the last pair of a target wins
    (the official dense copy); pairs with a cell off the grid are dropped (dragsdk's fix of the official bug)."""
    w, h = gs
    out = {}
    for (sx, sy), (tx, ty) in zip(
        np.asarray(src).reshape(-1, 2).tolist(), np.asarray(tgt).reshape(-1, 2).tolist(), strict=True
    ):
        if 0 <= sx < w and 0 <= sy < h and 0 <= tx < w and 0 <= ty < h:
            out[(ty, tx)] = (sy, sx)
    return out


def test_official_grid_mask_is_cv2_resize_rounding_at_half() -> None:
    """Mask → grid = ``cv2.resize(uint8 0/1 mask) != 0``: the 8-bit bilinear value rounded, so a cell is in iff its
    value is ≥ 0.5, not > 0. At the official grid (image/8) that is: ≥ 2 of the 4 pixels around the cell centre."""
    cv2 = _cv2()
    from dragsdk.regions import _cv_resize_nonzero, _official_grid_mask

    rng = np.random.default_rng(0)
    differs_from_any = 0
    # random image and grid sizes: downscales by non-integer factors, exact 2× and 8×, upscales
    for i in range(40):
        w, h = (int(v) for v in rng.integers(1, 160, 2))
        dw, dh = (int(v) for v in rng.integers(1, 60, 2))
        if i % 4 == 0:
            dw, dh = max(w // 8, 1), max(h // 8, 1)
        elif i % 4 == 1:
            dw, dh = max(w // 2, 1), max(h // 2, 1)
        m = _noise_mask(rng, w, h) if i % 2 else _blob(rng, max(w, 32), max(h, 32))[:h, :w]
        ref = cv2.resize(m, (dw, dh)) != 0
        assert np.array_equal(_cv_resize_nonzero(m, (dw, dh)), ref), (w, h, dw, dh)
    for _ in range(20):  # the official grid, through the map builders' mask function
        gw, gh = (int(v) for v in rng.integers(8, 48, 2))
        canvas = Canvas((8 * gw, 8 * gh), (8 * gw, 8 * gh))
        m = _blob(rng, 8 * gw, 8 * gh)
        grid = _official_grid_mask(canvas, m, "latent", "m").numpy()
        assert np.array_equal(grid, cv2.resize(m, (gw, gh)) != 0)
        quads = m[3::8, 3::8].astype(int) + m[4::8, 3::8] + m[3::8, 4::8] + m[4::8, 4::8]
        assert np.array_equal(grid, quads >= 2)
        differs_from_any += int((grid != (quads >= 1)).sum())
    assert differs_from_any > 0  # the former "bilinear > 0" rule marked more cells


def test_official_polygon_fill_is_cv2_fillpoly() -> None:
    """cv2.fillPoly / drawContours(FILLED) cells of integer polygons, inside and crossing the image edges."""
    cv2 = _cv2()
    from dragsdk.regions import _cv_fill_poly, fill_polygon_cells

    rng = np.random.default_rng(1)
    for i in range(60):
        n = int(rng.integers(1, 9)) if i % 3 == 0 else int(rng.choice([3, 4]))
        v = rng.integers(-15, 60, (n, 2)).astype(np.int32)  # convex or not, self-intersecting, off the image
        w, h = (int(x) for x in rng.integers(5, 50, 2))
        ref = np.zeros((h, w), np.uint8)
        cv2.fillPoly(ref, [v], 1)
        assert np.array_equal(_cv_fill_poly(v, (w, h)), ref == 1), (v.tolist(), w, h)
        drawn = np.zeros((h, w), np.uint8)
        cv2.drawContours(drawn, [v.reshape(-1, 1, 2)], -1, color=255, thickness=cv2.FILLED)
        assert np.array_equal(_cv_fill_poly(v, (w, h)), drawn != 0)
        # the official polygon mask spans [0, max] of the vertices; fill_polygon_cells cuts it to the grid
        if (v.max(0) >= 0).all():
            canvas_ref = np.zeros((v[:, 1].max() + 1, v[:, 0].max() + 1), np.uint8)
            cv2.fillPoly(canvas_ref, [v], 1)
            rows, cols = fill_polygon_cells(v, (w, h))
            ry, rx = np.nonzero(canvas_ref[:h, :w])
            assert np.array_equal(rows.numpy(), ry) and np.array_equal(cols.numpy(), rx)


def test_official_contours_are_cv2_findcontours() -> None:
    """RETR_EXTERNAL / CHAIN_APPROX_SIMPLE: same contours, same points, same order (objects in holes skipped)."""
    cv2 = _cv2()
    from dragsdk.regions import _cv_external_contours

    rng = np.random.default_rng(2)
    for _ in range(60):
        w, h = (int(v) for v in rng.integers(3, 40, 2))
        m = _noise_mask(rng, w, h)
        ref = cv2.findContours(m.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        mine = _cv_external_contours(m)
        assert len(mine) == len(ref)
        assert all(np.array_equal(a, b.reshape(-1, 2)) for a, b in zip(mine, ref, strict=True))


def test_official_transforms_are_cv2() -> None:
    """getAffineTransform / getPerspectiveTransform (bit for bit) and cv2.transform / perspectiveTransform of grid
    points (bit for bit, as the FMA builds of cv2 compute them)."""
    cv2 = _cv2()
    from dragsdk.regions import _cv_apply_transform, _cv_transform_matrix

    rng = np.random.default_rng(3)
    q = np.stack(np.meshgrid(np.arange(40), np.arange(30)), -1).reshape(-1, 2).astype(np.float32)
    probe = np.float32([[3, 7], [11, 2], [5, 13]]), np.float32([[4.125, 7.5], [12.75, 2.375], [5.5, 14.875]])
    m = cv2.getAffineTransform(*probe)
    f = m.astype(np.float32).ravel()
    fused = _cv_apply_transform(q, m)
    unfused = np.stack(
        [(f[0] * q[:, 0] + f[1] * q[:, 1]) + f[2], (f[3] * q[:, 0] + f[4] * q[:, 1]) + f[5]], 1
    )
    got = cv2.transform(q[None], m)[0]
    if np.array_equal(got, unfused) and not np.array_equal(got, fused):
        pytest.skip(
            "this CPU's cv2 does not fuse multiply-adds (no FMA): the official results are the unfused ones"
        )
    for i in range(60):
        n = 3 if i % 2 else 4
        d = rng.integers(0, 320, (n, 2)).astype(np.float32) * np.float32(0.125)
        if i % 3 == 0:  # a translation: cv2.transform's diagonal path
            s = d + (rng.integers(-80, 80, 2) * 0.125).astype(np.float32)
        else:
            s = (d + rng.integers(-80, 80, (n, 2)) * 0.125).astype(np.float32)
        try:
            ref = cv2.getAffineTransform(d, s) if n == 3 else cv2.getPerspectiveTransform(d, s)
        except cv2.error:
            continue
        mine = _cv_transform_matrix(d, s)
        if mine is None:  # singular: cv2 returns zeros (and 1 at [2, 2])
            continue
        assert np.array_equal(mine, ref)
        pts = cv2.transform(q[None], ref)[0] if n == 3 else cv2.perspectiveTransform(q[None], ref)[0]
        assert np.array_equal(_cv_apply_transform(q, ref), pts)


def test_official_region_pair_maps_equal_the_official_formula() -> None:
    """Random region pairs at the native grid: the map is the official ``region_pair_to_pts`` (ui_utils.py:141-186)
    written out on cv2 + float32 torch, cell for cell."""
    cv2 = _cv2()
    rng = np.random.default_rng(4)
    done = 0
    while done < 25:
        gw, gh = int(rng.integers(24, 64)), int(rng.integers(16, 48))
        canvas = Canvas((8 * gw, 8 * gh), (8 * gw, 8 * gh))
        handle, target = _blob(rng, 8 * gw, 8 * gh), _blob(rng, 8 * gw, 8 * gh)
        src = torch.from_numpy(cv2.resize(handle, (gw, gh))).bool()
        tgt = torch.from_numpy(cv2.resize(target, (gw, gh))).bool()
        cols = torch.nonzero(src.any(0)).flatten()
        if not bool(tgt.any()) or len(cols) != int(cols.max() - cols.min()) + 1:
            continue  # empty, or a handle column without cells: the official NaN sources (tested above)
        gy, gx = torch.meshgrid(torch.arange(gh).float(), torch.arange(gw).float(), indexing="ij")
        inf = torch.tensor(float("inf"))
        sx0, sx1 = gx[src].min(), gx[src].max()
        tx0, tx1 = gx[tgt].min(), gx[tgt].max()
        x = ((gx - tx0) * ((sx1 - sx0) / (tx1 - tx0).clamp(min=1e-4)) + sx0) * tgt
        sy0 = torch.where(src, gy, inf).min(0).values[x.int()]
        sy1 = torch.where(src, gy, -inf).max(0).values[x.int()]
        ty0, ty1 = torch.where(tgt, gy, inf).min(0).values, torch.where(tgt, gy, -inf).max(0).values
        y = (gy - ty0) * ((sy1 - sy0) / (ty1 - ty0).clamp(min=1e-4)) + sy0
        ref = _map_of(
            torch.stack([x[tgt], y[tgt]], 1).int().numpy(),
            torch.stack([gx[tgt], gy[tgt]], 1).int().numpy(),
            (gw, gh),
        )
        assert _as_dict(region_pair_map(canvas, handle, target, rules="official")) == ref
        done += 1


def test_official_polygon_maps_equal_the_official_formula() -> None:
    """Random triangle / quad pairs at the native grid: the map is the official ``transform_polygon``
    (ui_utils.py:286-305) written out on cv2, cell for cell (sources off the grid dropped)."""
    cv2 = _cv2()
    rng = np.random.default_rng(5)
    done = 0
    while done < 30:
        w, h = 8 * int(rng.integers(24, 64)), 8 * int(rng.integers(16, 48))
        n = int(rng.choice([3, 4]))
        c, r = rng.uniform(0.2, 0.8, 2) * [w, h], rng.uniform(10, min(w, h) / 3)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        tv = np.round(c + r * np.stack([np.cos(ang), np.sin(ang)], 1)).astype(int)
        hv = tv + rng.integers(-40, 40, 2) if done % 2 else tv + rng.integers(-20, 20, (n, 2))
        if (np.minimum(tv, hv) < 0).any() or (np.maximum(tv, hv) >= [w, h]).any():
            continue
        canvas = Canvas((w, h), (w, h))
        try:
            sm = polygon_map(canvas, hv, tv, rules="official")
        except (
            ValueError
        ) as e:  # dragsdk refuses degenerate or self-intersecting polygons (the official UI too)
            assert "degenerate" in str(e) or "self-intersect" in str(e)
            continue
        hs, ts = np.float32(hv) * 0.125, np.float32(tv) * 0.125
        m = (cv2.getAffineTransform if n == 3 else cv2.getPerspectiveTransform)(ts, hs)
        iv = ts.astype(np.int32)
        mask = np.zeros((iv[:, 1].max() + 1, iv[:, 0].max() + 1), np.uint8)
        cv2.fillPoly(mask, [iv], 1)
        cells = np.column_stack(np.nonzero(mask == 1))[:, ::-1]
        q = (cv2.transform if n == 3 else cv2.perspectiveTransform)(cells[None].astype(np.float32), m)[0]
        assert _as_dict(sm) == _map_of(q.astype(np.int32), cells, canvas.latent_size)
        done += 1


def _official_idw(points: np.ndarray, anchors: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """The official ``interpolate_points`` (ui_utils.py:469-496) step by step: float16, 4 nearest by torch.sort,
    weights 1/(d + 1e-4), at most 100 anchors (linspace), rounded; one anchor: shift, truncated."""
    p, a, mv = (
        torch.from_numpy(np.ascontiguousarray(v, dtype=np.int32)).half() for v in (points, anchors, moves)
    )
    if len(a) < 2:
        return (p + mv).int().numpy()
    if len(a) > 100:
        pick = torch.linspace(0, len(a) - 1, steps=100).long()
        a, mv = a[pick], mv[pick]
    dist = torch.norm(p[:, None] - a[None], dim=-1)
    near = torch.sort(dist, dim=1)[1][:, : min(4, len(a))]
    inv = 1 / (dist.gather(1, near) + 1e-4)
    wts = inv / inv.sum(1, keepdim=True)
    step = (
        wts[..., None] * mv[None].expand(len(p), -1, -1).gather(1, near[..., None].expand(-1, -1, 2))
    ).sum(1)
    return (p + step).round().int().numpy()


def test_official_region_points_maps_equal_the_official_formula() -> None:
    """Random regions (several objects, holes) and 1-5 point pairs at the native grid: the map is the official
    ``region_to_points`` (ui_utils.py:420-525) written out on cv2 — the contour warped by the points, filled, mapped
    back — cell for cell."""
    cv2 = _cv2()
    rng = np.random.default_rng(6)
    done = 0
    while done < 25:
        w, h = 8 * int(rng.integers(24, 64)), 8 * int(rng.integers(16, 48))
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            mask |= _blob(rng, w, h)
        if done % 3 == 0:
            mask &= 1 - _blob(rng, w, h, 0)
        ys, xs = np.nonzero(mask)
        if len(xs) < 10:
            continue
        picks = rng.integers(0, len(xs), int(rng.integers(1, 6)))
        handles = np.stack([xs[picks], ys[picks]], 1)
        targets = np.clip(handles + rng.integers(-60, 60, handles.shape), 0, [w - 1, h - 1])
        gw, gh = w // 8, h // 8
        small = cv2.resize(mask, (gw, gh))
        hs, ts = (handles * 0.125).astype(np.int32), (targets * 0.125).astype(np.int32)
        src, tgt = [], []
        for contour in cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]:
            region = np.zeros((gh, gw), np.uint8)
            cv2.drawContours(region, [contour], -1, color=255, thickness=cv2.FILLED)
            cells = np.column_stack(np.nonzero(region))[:, ::-1].astype(np.int32)
            inside = np.array([(cells == p).all(1).any() for p in hs])
            if not inside.any():
                continue
            a, mv = hs[inside], ts[inside] - hs[inside]
            outline = _official_idw(contour[:, 0], a, mv)
            moved = _official_idw(cells, a, mv)
            moved_region = np.zeros((gh, gw), np.uint8)
            cv2.drawContours(moved_region, [outline[:, None]], -1, color=255, thickness=cv2.FILLED)
            target_cells = np.column_stack(np.nonzero(moved_region))[:, ::-1].astype(np.int32)
            src.append(_official_idw(target_cells, moved, cells - moved))
            tgt.append(target_cells)
        if not src:
            with pytest.raises(ValueError, match="none lies on a latent cell"):
                points_map(Canvas((w, h), (w, h)), mask, handles, targets, rules="official")
            continue
        sm = points_map(Canvas((w, h), (w, h)), mask, handles, targets, rules="official")
        assert _as_dict(sm) == _map_of(np.concatenate(src), np.concatenate(tgt), (gw, gh))
        done += 1
