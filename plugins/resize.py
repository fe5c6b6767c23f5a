"""Object resizing (DragonDiffusion arXiv 2307.02421 §3.4): the object is scaled by ``scale`` about **its own
centroid** (the official code scales about the image centre and multiplies the shift by the scale; dossier §7),
optionally also shifted by ``(dx, dy)`` pixels. Content leaving the canvas is clipped, never wrapped; a placement
leaving it entirely is refused. Energies, latent paste, K/V and SDE region are those of :mod:`dragsdk.plugins.move`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dragsdk.hookspecs import hookimpl
from dragsdk.modes import EditMode, PlanContext
from dragsdk.plan import EditPlan
from dragsdk.plugins.move import MoveSpec, plan_move


class ResizeSpec(MoveSpec):
    """Resize an object by ``scale`` about its own centroid (optionally also moving it)."""

    mode: Literal["resize"] = "resize"  # type: ignore[assignment]
    scale: float = Field(..., gt=0.0, le=10.0, description="scale about the object's centroid")


class ResizeMode(EditMode):
    name = "resize"
    spec_model = ResizeSpec
    description = "resize an object about its own centre, optionally moving it (DragonDiffusion object resizing)"

    def plan(self, spec: ResizeSpec, ctx: PlanContext) -> EditPlan:  # type: ignore[override]
        return plan_move(spec, ctx)


@hookimpl
def dragsdk_register_modes(register):
    register(ResizeMode())
