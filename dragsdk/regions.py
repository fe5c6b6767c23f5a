"""Dense target → source cell maps (:class:`SourceMap`): what a latent paste or a correspondence energy reads.

A map is built backwards (for every target cell, exactly one source cell), so a target region has no holes; the
object placements of :mod:`dragsdk.objects` and the region-drag mode's inputs (its package
``dragsdk.plugins.region_drag.maps``, RegionDrag arXiv 2407.18247) produce them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SourceMap"]


@dataclass(frozen=True, eq=False)
class SourceMap:
    """Target cell → source cell on a grid of size ``grid_size = (w, h)`` (cells indexed ``(row, col)``).

    Pair ``i`` says: the content at cell ``(source_rows[i], source_cols[i])`` goes to cell
    ``(target_rows[i], target_cols[i])``. Targets are unique (one source per target); sources may repeat
    (a region being stretched reads a cell several times). Every constructor in this module returns the
    pairs sorted by target in raster order.

    Attributes:
        target_rows, target_cols, source_rows, source_cols: ``(K,)`` long tensors of cell indices.
        grid_size: ``(w, h)`` of the grid, in cells.

    Raises:
        ValueError: tensors of different lengths or not 1-D, an index outside the grid, or a repeated
            target cell.
    """

    target_rows: torch.Tensor
    target_cols: torch.Tensor
    source_rows: torch.Tensor
    source_cols: torch.Tensor
    grid_size: tuple[int, int]

    def __post_init__(self) -> None:
        w, h = self.grid_size
        if w <= 0 or h <= 0:
            raise ValueError(f"grid_size must be positive, got {self.grid_size}")
        names = ("target_rows", "target_cols", "source_rows", "source_cols")
        tensors = []
        for n in names:
            t = torch.as_tensor(getattr(self, n))
            if t.ndim != 1:
                raise ValueError(f"{n} must be 1-D, got shape {tuple(t.shape)}")
            t = t.to(torch.long)
            object.__setattr__(self, n, t)
            tensors.append(t)
        k = tensors[0].numel()
        if any(t.numel() != k for t in tensors):
            raise ValueError(f"target/source index tensors differ in length: {[t.numel() for t in tensors]}")
        for n, t, lim in zip(names, tensors, (h, w, h, w), strict=True):
            if k and (int(t.min()) < 0 or int(t.max()) >= lim):
                raise ValueError(f"{n} has indices outside the {w}×{h} grid")
        if k and torch.unique(tensors[0] * w + tensors[1]).numel() != k:
            raise ValueError("target cells repeat: a SourceMap needs exactly one source per target")

    def __len__(self) -> int:
        return int(self.target_rows.numel())

    def target_mask(self) -> torch.Tensor:
        """``(h, w)`` bool: the cells written."""
        w, h = self.grid_size
        m = torch.zeros(h, w, dtype=torch.bool)
        m[self.target_rows, self.target_cols] = True
        return m

    def source_mask(self) -> torch.Tensor:
        """``(h, w)`` bool: the cells read."""
        w, h = self.grid_size
        m = torch.zeros(h, w, dtype=torch.bool)
        m[self.source_rows, self.source_cols] = True
        return m

    def flat_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, source)`` raster indices ``row · w + col`` for copying on a flattened ``(…, h·w)`` grid."""
        w = self.grid_size[0]
        return self.target_rows * w + self.target_cols, self.source_rows * w + self.source_cols

    def merge(self, other: SourceMap) -> SourceMap:
        """Union of two maps; where both write a cell, ``other`` (the later one) wins.

        Raises:
            ValueError: the maps are on grids of different sizes.
        """
        if tuple(other.grid_size) != tuple(self.grid_size):
            raise ValueError(f"other is on a {other.grid_size} grid, this map on {self.grid_size}")
        return SourceMap.from_pairs(
            torch.cat([self.target_rows, other.target_rows]),
            torch.cat([self.target_cols, other.target_cols]),
            torch.cat([self.source_rows, other.source_rows]),
            torch.cat([self.source_cols, other.source_cols]),
            self.grid_size,
        )

    # --------------------------------------------------------------------------------------------------------------
    # helpers

    @classmethod
    def from_pairs(
        cls,
        tr: torch.Tensor,
        tc: torch.Tensor,
        sr: torch.Tensor,
        sc: torch.Tensor,
        grid_size: tuple[int, int],
    ) -> SourceMap:
        """A map from target / source cell index pairs ``(rows, cols)`` that may repeat a target: the last pair for a
        target wins; cells in raster order. ``grid_size`` is ``(w, h)`` in cells."""
        w, h = grid_size
        lin = tr * w + tc
        if lin.numel():
            idx = torch.arange(lin.numel())
            last = torch.full((w * h,), -1, dtype=torch.long).scatter_reduce(0, lin, idx, reduce="amax")
            keep = last[lin] == idx
            tr, tc, sr, sc, lin = tr[keep], tc[keep], sr[keep], sc[keep], lin[keep]
            order = torch.argsort(lin)
            tr, tc, sr, sc = tr[order], tc[order], sr[order], sc[order]
        return cls(tr, tc, sr, sc, (int(w), int(h)))


_MOVED = (
    "MapRules",
    "dense_points_map",
    "fill_polygon_cells",
    "points_map",
    "polygon_map",
    "region_pair_map",
    "translate_map",
)
"""The region-drag map builders, moved into the mode's package (``dragsdk.plugins.region_drag.maps``)."""


def __getattr__(name: str) -> object:
    """The region-drag map builders (and their private helpers) stay importable from here for old imports; they
    live in :mod:`dragsdk.plugins.region_drag.maps` (imported on first use: the core never imports a plugin)."""
    import importlib

    if name in _MOVED or (name.startswith("_") and not name.startswith("__")):  # never dunders (``__path__``)
        maps = importlib.import_module("dragsdk.plugins.region_drag.maps")
        if hasattr(maps, name):
            return getattr(maps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
