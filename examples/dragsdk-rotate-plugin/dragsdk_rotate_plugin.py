"""``rotate``: turn an object about its centroid (optionally scaling and moving it), energy-guided like move; written
against :mod:`dragsdk.authoring` alone. The object is placed by ``x' = c + R(angle)·s·(x − c) + d``; the edit term
``w_edit / (1 + 4·S_local)`` pulls each placed cell toward its source cell's guidance feature, the content term
``w_content / (1 + 4·S)`` keeps the rest (DragonDiffusion arXiv 2307.02421 Eq. 4–6, S = (cos + 1)/2). Its inverted
latent is pasted at its new place; K/V are replaced by the inversion's."""

from typing import Literal

import torch
from pydantic import Field

from dragsdk.authoring import (
    Coordinate,
    EditMode,
    EditPlan,
    EditSpec,
    EnergyTerm,
    Features,
    KVInjection,
    KVPlan,
    MaskRef,
    MaskUI,
    ModeUI,
    PlacementUI,
    PlanContext,
    SpecModel,
    affine,
    affine_map,
    correspondence_energy,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    hookimpl,
    latent_paste,
    local_similarity,
    mask_field,
    region_similarity,
    weight_field,
)


class RotateWeights(SpecModel):  # the energy weights of DragonDiffusion object moving
    edit: float = weight_field(4.0, "pulls the placed object toward the rotated guidance features")
    content: float = weight_field(6.0, "keeps features outside the object and its new place")


class RotateSpec(EditSpec):
    """Rotate the object in ``mask`` by ``angle`` degrees (counter-clockwise on screen) about its centroid."""

    mode: Literal["rotate"] = "rotate"
    mask: MaskRef = mask_field("the object to rotate", required=True)
    angle: float = Field(..., ge=-360.0, le=360.0, description="degrees, counter-clockwise on screen")
    scale: float = Field(1.0, gt=0.0, le=10.0, description="scale about the object's centroid")
    dx: Coordinate = displacement_field("horizontal displacement, image pixels")
    dy: Coordinate = displacement_field("vertical displacement, image pixels")
    weights: RotateWeights = Field(default_factory=RotateWeights)
    energy_scale: float = energy_scale_field(0.5)
    guidance_step: float = guidance_step_field(0.08)


class RotateMode(EditMode[RotateSpec]):
    name = "rotate"
    spec_model = RotateSpec
    description = "rotate an object about its centre, energy-guided (example plugin)"
    ui = ModeUI(  # the browser editor's inputs: the object, a click for its centre, the scale slider, the angle
        mask=MaskUI(name="object"), placement=PlacementUI(required=False), scale="scale", fields=("angle",)
    )

    def plan(self, spec: RotateSpec, ctx: PlanContext) -> EditPlan:
        canvas, obj = ctx.canvas, ctx.mask(spec.mask, "mask")
        a, d = affine(spec.scale, spec.angle), (spec.dx, spec.dy)
        fmap = affine_map(canvas, obj, a, d, "feature", field="angle")
        lmap = affine_map(canvas, obj, a, d, "latent", field="angle")
        placed, source = (fmap.target_rows, fmap.target_cols), (fmap.source_rows, fmap.source_cols)
        keep = ~(fmap.target_mask() | canvas.mask_to_grid(obj, "feature"))
        w, grid = spec.weights, canvas.feature_size

        def edit(cur: Features, ref: Features) -> torch.Tensor:
            return correspondence_energy(w.edit, local_similarity(cur, ref, placed, source, grid)).mean()

        def content(cur: Features, ref: Features) -> torch.Tensor:
            return correspondence_energy(w.content, region_similarity(cur, ref, keep)).mean()

        energies = [EnergyTerm("edit", "edit", edit)]
        if keep.any() and w.content > 0:
            energies.append(EnergyTerm("content", "content", content))
        return EditPlan(
            edit_mask=lmap.target_mask(),
            energies=energies,
            init=[latent_paste(lmap)],
            kv=KVPlan(KVInjection("replace")),
            sde_mask=lmap.target_mask() | canvas.mask_to_grid(obj, "latent"),  # the object and its new place
        )


@hookimpl
def dragsdk_register_modes(register):
    register(RotateMode())
