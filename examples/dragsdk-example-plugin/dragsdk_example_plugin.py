"""A third-party edit mode in one file: ``copy-rect`` copies a rectangle of the inverted latent to another place
and lets the sampler blend it in, with the generation branch attending to its own and the inversion's K/V.

It needs no gradients, so any backend can run it. Install with ``pip install -e examples/dragsdk-example-plugin``;
``dragsdk modes`` then lists ``copy-rect``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dragsdk import hookimpl
from dragsdk.attention import KVInjection
from dragsdk.errors import SpecError
from dragsdk.modes import EditMode, PlanContext
from dragsdk.plan import EditPlan, KVPlan, LatentPaste
from dragsdk.spec import EditSpec


class CopyRectSpec(EditSpec):
    """Copy the rectangle ``box`` (x0, y0, x1, y1 in image pixels) by ``offset`` (dx, dy pixels)."""

    mode: Literal["copy-rect"] = "copy-rect"
    box: tuple[int, int, int, int] = Field(..., description="x0, y0, x1, y1 in image pixels, x1 > x0, y1 > y0")
    offset: tuple[int, int] = Field(..., description="dx, dy in image pixels")


class CopyRectMode(EditMode):
    name = "copy-rect"
    spec_model = CopyRectSpec
    description = "copy a rectangle of the image elsewhere (example plugin)"

    def plan(self, spec: CopyRectSpec, ctx: PlanContext) -> EditPlan:  # type: ignore[override]
        canvas = ctx.canvas
        x0, y0, x1, y1 = spec.box
        if not (x1 > x0 and y1 > y0):
            raise SpecError("box", f"expected x1 > x0 and y1 > y0, got {spec.box}")
        (c0, r0), (c1, r1) = canvas.to_cell((x0, y0), "latent"), canvas.to_cell((x1 - 1, y1 - 1), "latent")
        dc, dr = (round(v) for v in canvas.vector_to_grid(spec.offset, "latent"))
        w, h = canvas.latent_size
        rows, cols = torch.meshgrid(torch.arange(r0, r1 + 1), torch.arange(c0, c1 + 1), indexing="ij")
        tr, tc = rows.flatten() + dr, cols.flatten() + dc
        keep = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
        if not keep.any():
            raise SpecError("offset", "the moved rectangle leaves the image entirely")
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[tr[keep], tc[keep]] = True
        paste = LatentPaste(tr[keep], tc[keep], rows.flatten()[keep], cols.flatten()[keep])
        n = ctx.steps
        return EditPlan(edit_mask=mask, init=[paste], kv=KVPlan(KVInjection("concat"), int(0.1 * n), n))


@hookimpl
def dragsdk_register_modes(register):
    register(CopyRectMode())
