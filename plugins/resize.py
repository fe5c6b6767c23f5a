"""Object resizing (DragonDiffusion arXiv 2307.02421 §3.4): the object is scaled by ``scale``, optionally also
shifted by ``(dx, dy)`` pixels. Profile ``official``: about the **image centre**, the shift multiplied by the scale,
wrapping around, an object scaled off the canvas refused (:func:`dragsdk.objects.official_placement_map`, as the
official code). Improvement ``centroid-placement``: about **its own centroid**, content leaving the canvas clipped,
never wrapped; a placement leaving it entirely is refused. Energies, latent paste, K/V and SDE region are those of
:mod:`dragsdk.plugins.move` (profiles included).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dragsdk.hookspecs import hookimpl
from dragsdk.modes import EditMode, PlanContext
from dragsdk.plan import EditPlan
from dragsdk.plugins.move import MOVE_PROFILES, MoveSpec, plan_move


class ResizeSpec(MoveSpec):
    """Resize an object by ``scale`` (optionally also moving it); the profile says about which centre."""

    mode: Literal["resize"] = "resize"  # type: ignore[assignment]
    scale: float = Field(
        ...,
        gt=0.0,
        le=10.0,
        description="scale about the image centre (profile official) or the "
        "object's centroid (centroid-placement)",
    )


class ResizeMode(EditMode):
    name = "resize"
    spec_model = ResizeSpec
    profiles = MOVE_PROFILES
    description = "resize an object, optionally moving it (DragonDiffusion object resizing)"

    def plan(self, spec: ResizeSpec, ctx: PlanContext) -> EditPlan:  # type: ignore[override]
        return plan_move(spec, ctx)


@hookimpl
def dragsdk_register_modes(register):
    register(ResizeMode())
