"""The working canvas: one place for every coordinate conversion.

Three grids are in play for an image of ``W×H`` pixels edited at a working size of ``W'×H'`` pixels
(both multiples of 64):

- **image pixels**: the coordinates the user gives (``x`` right, ``y`` down, origin at the top-left
  pixel's corner, so pixel ``(i, j)`` covers ``[i, i+1) × [j, j+1)``);
- **latent cells**: the VAE latent grid, ``W'/8 × H'/8`` (VAE factor 8);
- **feature cells**: the energy-guidance grid, ``W'/4 × H'/4``, i.e. twice the finest decoder map
  (DragonDiffusion, arXiv 2307.02421, code ``up_scale = 2``, ``src/demo/model.py:29``).

Every conversion goes through :class:`Canvas`, so a mode never multiplies by 8 or 4 itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Grid = Literal["latent", "feature", "working"]
PointConvention = Literal["corner", "centre"]
"""How an image-pixel point picks its grid cell: ``corner`` = ``floor(x·s)`` (the official DragonDiffusion code,
``utils.py:139-142``), ``centre`` = ``floor((x+0.5)·s)``, the cell holding the pixel's centre."""
MaskResampling = Literal["area", "nearest"]

_GRID_DIVISOR = {"working": 1, "latent": 8, "feature": 4}


@dataclass(frozen=True)
class Canvas:
    """Maps between image pixels, working pixels, latent cells and feature cells.

    Attributes:
        image_size: ``(W, H)`` of the user's image, in pixels.
        size: ``(W', H')`` working size in pixels, multiples of 64.
    """

    image_size: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def fit(cls, image_size: tuple[int, int], resolution: int = 768, multiple: int = 64) -> Canvas:
        """Working size with area ≈ ``resolution²`` and the image's aspect ratio.

        Each side is ``round(side · sqrt(resolution² / (W·H)) / multiple) · multiple`` and at least
        ``multiple`` (DragonDiffusion ``resize_numpy_image``, ``src/utils/utils.py:7-19``).

        Raises:
            ValueError: a non-positive image side or resolution.
        """
        w, h = image_size
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if resolution < multiple:
            raise ValueError(f"resolution must be at least {multiple} pixels, got {resolution}")
        k = math.sqrt(resolution * resolution / (w * h))
        ww = max(multiple, int(round(w * k / multiple)) * multiple)
        hh = max(multiple, int(round(h * k / multiple)) * multiple)
        return cls((int(w), int(h)), (ww, hh))

    def grid_size(self, grid: Grid) -> tuple[int, int]:
        """``(w, h)`` of a grid: ``working`` pixels, ``latent`` cells (/8) or ``feature`` cells (/4)."""
        d = _GRID_DIVISOR[grid]
        return self.size[0] // d, self.size[1] // d

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.grid_size("latent")

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.grid_size("feature")

    def scale(self, grid: Grid) -> tuple[float, float]:
        """Grid units per image pixel along ``(x, y)``."""
        gw, gh = self.grid_size(grid)
        return gw / self.image_size[0], gh / self.image_size[1]

    def to_grid(self, xy: tuple[float, float], grid: Grid) -> tuple[float, float]:
        """Continuous grid coordinates of an image-pixel point (no rounding, no clipping)."""
        sx, sy = self.scale(grid)
        return xy[0] * sx, xy[1] * sy

    def to_cell(
        self, xy: tuple[float, float], grid: Grid, convention: PointConvention = "centre"
    ) -> tuple[int, int]:
        """``(col, row)`` of the grid cell of image pixel ``xy``, clipped to the grid.

        ``centre``: the cell holding the pixel's centre, ``floor((x + 0.5)·s)``; ``corner``: ``floor(x·s)``, the
        official DragonDiffusion convention (``utils.py:139-142``). Each axis uses its own scale ``s``, the column
        is clipped by the grid *width* and the row by its *height*: the official code scales y by the x ratio
        (``model.py:292-296``) and clips x by the height (``utils.py:140``), both wrong on non-square images.
        """
        gw, gh = self.grid_size(grid)
        off = 0.5 if convention == "centre" else 0.0
        gx, gy = self.to_grid((xy[0] + off, xy[1] + off), grid)
        return min(max(int(math.floor(gx)), 0), gw - 1), min(max(int(math.floor(gy)), 0), gh - 1)

    def vector_to_grid(self, dxy: tuple[float, float], grid: Grid) -> tuple[float, float]:
        """A displacement in image pixels expressed in grid units (each axis scaled on its own)."""
        sx, sy = self.scale(grid)
        return dxy[0] * sx, dxy[1] * sy

    def contains(self, xy: tuple[float, float]) -> bool:
        """Whether an image-pixel point lies on the image: ``0 ≤ x < W`` and ``0 ≤ y < H``."""
        return 0 <= xy[0] < self.image_size[0] and 0 <= xy[1] < self.image_size[1]

    def mask_to_grid(
        self,
        mask: np.ndarray | torch.Tensor,
        grid: Grid,
        threshold: float = 0.5,
        method: MaskResampling = "area",
    ) -> torch.Tensor:
        """Resample an image-size mask onto a grid.

        The mask is first resampled bilinearly to the working size. Then ``area``: a cell is inside when the
        covered fraction of its area is at least ``threshold``. ``nearest``: a cell takes the working pixel at its
        top-left corner, inside when that pixel is nonzero at 8-bit precision (bilinear value ≥ 0.5/255) — the
        official DragonDiffusion rasterisation (``cv2.resize`` then ``> 0.5`` on 0–255 values, then
        ``F.interpolate`` nearest; ``utils.py:127-133``, ``Sampler.py:298``); ``threshold`` is then unused.

        Args:
            mask: ``(H, W)`` array in image pixels; nonzero (or ``> 0.5`` for floats in [0, 1]) = inside.
            grid: target grid.
            threshold: ``area`` only: the covered fraction that makes a cell inside.
            method: ``area`` or ``nearest``.

        Returns:
            ``(h, w)`` bool tensor on the CPU.

        Raises:
            ValueError: the mask is not ``(H, W)`` of this canvas's image.
        """
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if m.ndim != 2 or tuple(m.shape) != (self.image_size[1], self.image_size[0]):
            raise ValueError(
                f"mask must be (H, W) = {(self.image_size[1], self.image_size[0])} pixels, got {tuple(m.shape)}"
            )
        m = (m.float() > 0.5).float() if m.is_floating_point() else (m != 0).float()
        gw, gh = self.grid_size(grid)
        # Area resampling through the working size keeps thin structures proportionally.
        up = F.interpolate(
            m[None, None], size=(self.size[1], self.size[0]), mode="bilinear", align_corners=False
        )
        d = _GRID_DIVISOR[grid]
        if method == "nearest":
            return (up[0, 0, : gh * d : d, : gw * d : d] * 255 >= 0.5).cpu()
        cov = F.avg_pool2d(up, d) if d > 1 else up
        return (cov[0, 0, :gh, :gw] >= threshold).cpu()

    def patch(
        self, xy: tuple[float, float], grid: Grid, radius: int = 1, convention: PointConvention = "centre"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells of the ``(2·radius+1)²`` patch centred on the cell of ``xy``, clamped to the grid.

        The patch is shifted inward at borders (never truncated), so every patch has the same cell count
        and two patches can be paired cell by cell.

        Returns:
            ``(rows, cols)``: two ``((2r+1)²,)`` long tensors in raster order.
        """
        gw, gh = self.grid_size(grid)
        side = 2 * radius + 1
        if side > gw or side > gh:
            raise ValueError(f"a {side}×{side} patch does not fit a {gw}×{gh} {grid} grid")
        cx, cy = self.to_cell(xy, grid, convention)
        x0 = min(max(cx - radius, 0), gw - side)
        y0 = min(max(cy - radius, 0), gh - side)
        rows = torch.arange(y0, y0 + side).repeat_interleave(side)
        cols = torch.arange(x0, x0 + side).repeat(side)
        return rows, cols
