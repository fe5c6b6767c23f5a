"""Object moving and resizing: two modes, one planner (:func:`plan_move`).

DragonDiffusion arXiv 2307.02421 §3.4 "object moving"; official ``guidance_move``, ``src/models/Sampler.py:150-234``.

On the feature grid (image/4), with the object placed by :func:`dragsdk.objects.placement_map` (scale about its
own centroid, then shift; clipped at the borders):

- edit: ``w_edit / (1 + 4·S_local(F_cur[placed], F_ref[object]))``, cells paired by the placement map;
- content: ``w_content / (1 + 4·S(F_cur, F_ref))`` over ``¬(placed ∪ object)``;
- contrast: ``w_contrast · S(F_cur, F_ref)`` on the vacated cells (object minus placed), minimised: the old place must
  stop looking like the object;
- fill: ``w_fill / (1 + 4·S_global(F_cur[vacated], F_ref[fill region]))``: the hole looks like the fill region (the
  user's reference region, else the unchanged background) on average.

Profile ``official`` (the default) uses the official ``guidance_move`` formulas (``Sampler.py:196-223``): the
**raw cosine** in the edit and content terms, ``Σ_l 0.5·w/(1 + 4·mean cos)``; contrast ``Σ_l 0.5·w·mean S``
with ``S = (cos+1)/2``; fill ``Σ_l w/(1 + 4·S_pooled)``, summed over the two layers without the 0.5.
``w/(1+4·cos)`` diverges at cos = −1/4, which the official code does not guard against (neither does this
profile: on real features cos stays far above it). The ``bounded-similarity`` improvement uses ``S`` in every
term and averages every term over layers: a bounded energy, but about 3.7× weaker guidance at the same c and λ
(measured on identical features). The official profile places the object about the image centre (shift ×
scale, wrapping, :func:`dragsdk.objects.official_placement_map`); ``centroid-placement`` scales about the
object's centroid without wrap-around (:func:`dragsdk.objects.placement_map`). Edit gradients apply inside the
placed object, the others outside it; c = 0.08, energy 0.5. Before sampling the object's inverted latent is
pasted at its new place; K/V are replaced by the bank's from step 5 of 50; the regional SDE mask is placed ∪
original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from dragsdk.authoring import (
    Coordinate,
    DiffEditorOptions,
    EditMode,
    EditPlan,
    EditSpec,
    EnergyTerm,
    KVInjection,
    KVPlan,
    LatentPaste,
    MaskRef,
    MaskUI,
    ModeUI,
    PlacementUI,
    PlanContext,
    Point,
    ProfileTable,
    SpecError,
    SpecModel,
    correspondence_energy,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    hookimpl,
    local_similarity,
    official_placement_map,
    option,
    placement_map,
    pooled_similarity,
    region_similarity,
    weight_field,
)


@dataclass(frozen=True)
class MoveOptions(DiffEditorOptions):
    """The fidelity options of move and resize (``docs/modes/dragondiffusion.md``; official ``guidance_move``)."""

    similarity: Literal["cosine", "bounded"] = option(
        "cosine",
        "bounded",
        "S = (cos+1)/2 in every term and every term averaged over layers (bounded energy, "
        "about 3.7x weaker guidance at the official c and λ)",
        improvement="bounded-similarity",
    )
    placement: Literal["image-centre", "centroid"] = option(
        "image-centre",
        "centroid",
        "scale about the object's centroid, shift not multiplied by the scale, no "
        "wrap-around (official: image centre, shift × scale, wraps)",
        improvement="centroid-placement",
    )


MOVE_PROFILES = ProfileTable(MoveOptions)
"""The profile table of move and resize."""
MOVE_IMPROVEMENTS = MOVE_PROFILES.improvements
OBJECT_MASK = MaskUI(name="object mask", label="Object mask: brush the object", required=True)
"""The browser editor's mask of move and resize: the object (required there, though a spec may give a ``handle``
click instead)."""


class MoveWeights(SpecModel):
    """Energy weights of object moving (DragonDiffusion demo defaults, ``src/demo/demo.py:189-241``)."""

    edit: float = weight_field(4.0)
    content: float = weight_field(6.0)
    contrast: float = weight_field(0.2)
    fill: float = weight_field(0.8, "the official 'inpaint' weight")


class MoveSpec(EditSpec):
    """Move an object by ``(dx, dy)`` pixels (optionally scaling it about its own centre)."""

    mode: Literal["move"] = "move"
    mask: MaskRef | None = Field(
        None, description="object mask (PNG path or data URL); absent = proposed from `handle`"
    )
    handle: Point | None = Field(
        None, description="a click on the object, image pixels (used to propose a mask)"
    )
    dx: Coordinate = displacement_field("horizontal displacement, image pixels")
    dy: Coordinate = displacement_field("vertical displacement, image pixels")
    scale: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="scale about the image centre (profile official) or the "
        "object's centroid (centroid-placement)",
    )
    fill_region: MaskRef | None = Field(
        None, description="region whose look fills the vacated area (mask); default: background"
    )
    weights: MoveWeights = Field(default_factory=MoveWeights)
    energy_scale: float = energy_scale_field(0.5)
    guidance_step: float = guidance_step_field(0.08, "c (0.08 for move)")
    profile: MOVE_PROFILES.spec_type() = MOVE_PROFILES.spec_field()  # type: ignore[valid-type]


def plan_move(spec: MoveSpec, ctx: PlanContext) -> EditPlan:
    canvas = ctx.canvas
    notes: list[str] = []
    if spec.handle is not None and not canvas.contains(spec.handle):
        raise SpecError(
            "handle", f"{spec.handle} is outside the {canvas.image_size[0]}×{canvas.image_size[1]} image"
        )
    obj = ctx.object_mask(spec.mask, spec.handle, "mask", notes)
    opts = MOVE_PROFILES.resolve(spec.profile)
    method = opts.mask_resampling
    bounded = opts.similarity == "bounded"
    shift = (spec.dx, spec.dy)
    if opts.placement == "centroid":
        fmap = placement_map(canvas, obj, spec.scale, shift, "feature")
        lmap = placement_map(canvas, obj, spec.scale, shift, "latent")
    else:
        fmap = official_placement_map(canvas, obj, spec.scale, shift, "feature")
        lmap = official_placement_map(canvas, obj, spec.scale, shift, "latent")
    grid = canvas.feature_size
    org = canvas.mask_to_grid(obj, "feature", method=method)
    cur = fmap.target_mask()
    other = ~(cur | org)
    vacated = org & ~cur
    fill = ctx.mask(spec.fill_region, "fill_region") if spec.fill_region is not None else None
    fill_g = canvas.mask_to_grid(fill, "feature", method=method) if fill is not None else other
    w = spec.weights
    tcells, scells = (fmap.target_rows, fmap.target_cols), (fmap.source_rows, fmap.source_cols)

    def inverse(weight: float, s: torch.Tensor, raw_cosine: bool) -> torch.Tensor:
        """``Σ_l 0.5·w/(1+4·mean cos)`` (official, ``Sampler.py:200-202, 211-212``; mean cos = 2·mean S − 1)
        or ``mean_l w/(1+4·mean S)`` (bounded-similarity)."""
        if bounded:
            return correspondence_energy(weight, s).mean()
        return 0.5 * correspondence_energy(weight, 2.0 * s - 1.0 if raw_cosine else s).sum()

    def edit(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
        return inverse(w.edit, local_similarity(c, r, tcells, scells, grid), raw_cosine=True)

    def content(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
        return inverse(w.content, region_similarity(c, r, other), raw_cosine=True)

    def contrast(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
        # official Σ_l 0.5·w·mean S (Sampler.py:214-218) = the layer mean for two layers
        return (w.contrast * region_similarity(c, r, vacated)).mean()

    def fill_term(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
        e = correspondence_energy(w.fill, pooled_similarity(c, r, vacated, fill_g))
        return e.mean() if bounded else e.sum()  # official: summed over layers, no 0.5 (Sampler.py:220-223)

    energies = [EnergyTerm("edit", "edit", edit)]
    if other.any() and w.content > 0:
        energies.append(EnergyTerm("content", "content", content))
    if vacated.any():
        if w.contrast > 0:
            energies.append(EnergyTerm("contrast", "content", contrast))
        if w.fill > 0 and fill_g.any():
            energies.append(EnergyTerm("fill", "content", fill_term))
    placed_latent = lmap.target_mask()
    n = ctx.steps
    guided = spec.sampler.schedule.steps(n)
    sde_mask = placed_latent | canvas.mask_to_grid(obj, "latent", method=method)
    return EditPlan(
        edit_mask=placed_latent,
        energies=energies,
        energy_scale=spec.energy_scale,
        guidance_step=spec.guidance_step,
        guided_steps=guided,
        init=[LatentPaste(lmap.target_rows, lmap.target_cols, lmap.source_rows, lmap.source_cols)],
        kv=KVPlan(KVInjection("replace"), int(round(spec.sampler.kv_start * n)), n),
        notes=notes,
        **ctx.fidelity(MOVE_PROFILES, spec.profile, opts),  # type: ignore[arg-type]
        **ctx.diffeditor(spec.sampler, guided, sde_mask),  # type: ignore[arg-type]
    )


class MoveMode(EditMode[MoveSpec]):
    name = "move"
    spec_model = MoveSpec
    profiles = MOVE_PROFILES
    description = (
        "move an object by (dx, dy) pixels, filling the place it leaves (DragonDiffusion object moving)"
    )
    ui = ModeUI(
        help="Brush the **object** in the mask, then click where its centre should go. The scale slider also "
        "resizes it.",
        order=30,
        mask=OBJECT_MASK,
        placement=PlacementUI(about="image-centre-scaled-shift"),
        scale="scale",
    )

    def plan(self, spec: MoveSpec, ctx: PlanContext) -> EditPlan:
        return plan_move(spec, ctx)


class ResizeSpec(MoveSpec):
    """Resize an object by ``scale`` (optionally also moving it); the profile says about which centre."""

    mode: Literal["resize"] = "resize"  # type: ignore[assignment]
    scale: float = Field(
        ...,
        gt=0.0,
        le=10.0,
        description="scale about the image centre (profile official) or the object's centroid (centroid-placement)",
    )


class ResizeMode(EditMode[ResizeSpec]):
    """Object resizing (DragonDiffusion arXiv 2307.02421 §3.4): the object is scaled by ``scale``, optionally also
    shifted by ``(dx, dy)`` pixels. Profile ``official``: about the **image centre**, the shift multiplied by the
    scale, wrapping around, an object scaled off the canvas refused (``official_placement_map``, as the official
    code). Improvement ``centroid-placement``: about **its own centroid**, content leaving the canvas clipped, never
    wrapped; a placement leaving it entirely is refused. Energies, latent paste, K/V and SDE region are move's
    (profiles included): one planner, :func:`plan_move`."""

    name = "resize"
    spec_model = ResizeSpec
    profiles = MOVE_PROFILES
    description = "resize an object, optionally moving it (DragonDiffusion object resizing)"
    ui = ModeUI(
        help="Brush the **object** in the mask and set the scale; a click moves its centre too (optional).",
        order=40,
        mask=OBJECT_MASK,
        placement=PlacementUI(required=False, about="image-centre-scaled-shift"),
        scale="scale",
    )

    def plan(self, spec: ResizeSpec, ctx: PlanContext) -> EditPlan:
        return plan_move(spec, ctx)


@hookimpl
def dragsdk_register_modes(register):
    register(MoveMode())
    register(ResizeMode())
