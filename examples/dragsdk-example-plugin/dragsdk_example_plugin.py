"""A third-party edit mode in one file: ``copy-rect`` copies a rectangle of the inverted latent to another place
and lets the sampler blend it in, with the generation branch attending to its own and the inversion's K/V.

It needs no gradients, so any backend can run it. It imports only :mod:`dragsdk.authoring`. The engine applies
``sampler.kv_start`` (the K/V window) and ``sampler.sde`` (the regional SDE on the pasted cells); the energy
settings ``schedule`` and ``time_travel`` cannot take effect without energies, so the mode declares them and specs
that set them are refused. Install with ``pip install -e examples/dragsdk-example-plugin``; ``dragsdk modes`` then
lists ``copy-rect``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from dragsdk.authoring import (
    EditMode,
    EditPlan,
    EditSpec,
    KVInjection,
    KVPlan,
    PlanContext,
    SpecError,
    affine,
    affine_map,
    hookimpl,
    latent_paste,
)


class CopyRectSpec(EditSpec):
    """Copy the rectangle ``box`` (x0, y0, x1, y1 in image pixels) by ``offset`` (dx, dy pixels)."""

    mode: Literal["copy-rect"] = "copy-rect"
    box: tuple[int, int, int, int] = Field(
        ..., description="x0, y0, x1, y1 in image pixels, x1 > x0, y1 > y0"
    )
    offset: tuple[int, int] = Field(..., description="dx, dy in image pixels")


class CopyRectMode(EditMode[CopyRectSpec]):
    name = "copy-rect"
    spec_model = CopyRectSpec
    description = "copy a rectangle of the image elsewhere (example plugin)"
    unsupported_settings = frozenset({"schedule", "time_travel"})

    def plan(self, spec: CopyRectSpec, ctx: PlanContext) -> EditPlan:
        x0, y0, x1, y1 = spec.box
        w, h = ctx.canvas.image_size
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise SpecError("box", f"expected 0 ≤ x0 < x1 ≤ {w} and 0 ≤ y0 < y1 ≤ {h}, got {spec.box}")
        rect = np.zeros((h, w), dtype=bool)
        rect[y0:y1, x0:x1] = True
        cells = affine_map(ctx.canvas, rect, affine(), spec.offset, "latent", field="offset")
        # No energies: the engine fills the K/V window (sampler.kv_start) and the regional SDE (sampler.sde).
        return EditPlan(
            edit_mask=cells.target_mask(), init=[latent_paste(cells)], kv=KVPlan(KVInjection("concat"))
        )


@hookimpl
def dragsdk_register_modes(register):
    register(CopyRectMode())
