"""Object pasting (DiffEditor arXiv 2402.02583; DragonDiffusion code ``guidance_paste``,
``src/models/Sampler.py:422-488``).

An object cut from a reference image (``reference_mask``) is placed on the base image by ``scale`` and a shift
``(dx, dy)`` pixels.

- Profile ``official`` (the official ``run_paste``, ``model.py:335-413``, ``process_paste``): the reference is scaled
  about the **image centre** (:func:`dragsdk.objects.official_scale_about_centre`) and inverted unshifted (bank
  row 1); its inverted latent is shifted by ``int(d/8)`` latent cells into the placed object ``P`` (the official
  ``torch.roll``, with its wrap-around fixed as in move: content shifted off the image is clipped), and the edit
  term pairs each placed feature cell with the reference-frame cell ``int(d/4)`` feature cells back.
- ``centroid-placement``: the object is placed in pixels about its own centroid with
  :func:`dragsdk.objects.place_image`, the map :func:`dragsdk.objects.paste_preview` draws (the official UI
  previews about the object centre but processes about the image centre, ``process_paste``
  ``src/utils/utils.py:199-240``), and the placed reference is inverted.

On the feature grid, with ``P`` the placed object:

- edit (local): ``w_edit / (1 + 4·mean S(F_cur[P], F_ref[P − d]))``;
- content (local): ``w_content / (1 + 4·S(F_cur, F_base))`` outside ``P``.

Layers summed; c = 0.04, energy 1.5. Before sampling, the reference's inverted latent is pasted inside ``P``; K/V
are composited per token (base outside ``P``, reference inside its reference-frame object) for steps 0–35 of 50, with
key masks sampled nearest at each layer's token grid (official ``attention_processor.py:84-92``; ``area-masks``: by
area coverage). In the official profile the sampling calls' text context also holds the base image's image-prompt
tokens (``text_context``, :func:`dragsdk.image_prompt.context_image_tokens`; ``text-only-context`` drops them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from dragsdk.authoring import (
    Canvas,
    Coordinate,
    EditMode,
    EditPlan,
    EditSpec,
    EnergyTerm,
    Grid,
    KVInjection,
    KVPlan,
    LatentPaste,
    MaskRef,
    ModeUI,
    PlacementUI,
    PlanContext,
    ProfileTable,
    Reference,
    ReferenceOptions,
    ReferenceUI,
    SpecModel,
    correspondence_energy,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    hookimpl,
    local_similarity,
    official_scale_about_centre,
    option,
    place_image,
    region_similarity,
    shift_cells,
    token_mask,
    weight_field,
)


@dataclass(frozen=True)
class PasteOptions(ReferenceOptions):
    """The fidelity options of paste (``docs/modes/dragondiffusion.md``)."""

    placement: Literal["image-centre", "centroid"] = option(
        "image-centre",
        "centroid",
        "the object placed in pixels about its own centroid (as the preview draws it) "
        "and the placed reference inverted, instead of the official scaling about the image centre and shifted "
        "inverted latent",
        improvement="centroid-placement",
    )


PASTE_PROFILES = ProfileTable(PasteOptions)
"""The profile table of paste."""
PASTE_IMPROVEMENTS = PASTE_PROFILES.improvements


class PasteWeights(SpecModel):
    edit: float = weight_field(4.0)
    content: float = weight_field(6.0)


class PasteSpec(EditSpec):
    """Paste the reference object onto the base image at ``(dx, dy)`` pixels, scaled by ``scale``."""

    mode: Literal["paste"] = "paste"
    reference: str = Field(..., description="reference image path")
    reference_mask: MaskRef = Field(..., description="object mask in the reference image's pixels")
    dx: Coordinate = displacement_field("shift of the object, base-image pixels")
    dy: Coordinate = displacement_field("shift of the object, base-image pixels")
    scale: float = Field(
        1.0,
        gt=0.0,
        le=1.5,
        description="scale about the image centre (profile official) or the "
        "object's centroid (centroid-placement); official slider 0–1.5",
    )
    reference_prompt: str = Field("", description="prompt describing the reference image")
    weights: PasteWeights = Field(default_factory=PasteWeights)
    energy_scale: float = energy_scale_field(1.5)
    guidance_step: float = guidance_step_field(0.04, "c")
    kv_end: float = Field(
        0.72, ge=0.0, le=1.0, description="composite K/V until this fraction of the steps (36/50)"
    )
    profile: PASTE_PROFILES.spec_type() = PASTE_PROFILES.spec_field()  # type: ignore[valid-type]


class PasteMode(EditMode[PasteSpec]):
    name = "paste"
    spec_model = PasteSpec
    profiles = PASTE_PROFILES
    description = "paste an object from a reference image onto the base image (DiffEditor object pasting)"
    ui = ModeUI(
        help="Upload a **reference image** and brush the object on it, then click where its centre goes on this "
        "image; set the scale.",
        order=50,
        reference=ReferenceUI(),
        placement=PlacementUI(object="reference", required=False, about="image-centre"),
        scale="scale",
    )
    unsupported_settings = frozenset({"kv_start"})  # composite K/V from step 0 to kv_end (DiffEditor code)

    def plan(self, spec: PasteSpec, ctx: PlanContext) -> EditPlan:
        canvas = ctx.canvas
        opts = PASTE_PROFILES.resolve(spec.profile)
        method = opts.mask_resampling
        ref_img = ctx.load_reference(spec.reference, "reference")
        ref_mask = ctx.reference_mask(
            spec.reference_mask, "reference_mask", ctx.reference_size(spec.reference, "reference")
        )
        if opts.placement == "centroid":
            ref_used, placed = place_image(ref_img, ref_mask, spec.scale, (spec.dx, spec.dy))
            p_g = canvas.mask_to_grid(placed, "feature", method=method)
            p_l = canvas.mask_to_grid(placed, "latent", method=method)
            if not p_l.any():
                p_l = canvas.mask_to_grid(placed, "latent", threshold=1e-6)
            rows, cols = torch.nonzero(p_l, as_tuple=True)
            init = LatentPaste(rows, cols, rows, cols, bank=1)
            ref_l = p_l
            feature_rows, feature_cols = torch.nonzero(p_g, as_tuple=True)
            f_cells = (feature_rows, feature_cols)
            r_cells = f_cells
        else:
            ref_used, scaled = official_scale_about_centre(ref_img, ref_mask, spec.scale)
            fmap, lmap = (
                shift_cells(
                    _grid(canvas, scaled, g, method),
                    *(int(v) for v in canvas.vector_to_grid((spec.dx, spec.dy), g)),
                )
                for g in ("feature", "latent")
            )
            p_g, p_l, ref_l = fmap.target_mask(), lmap.target_mask(), lmap.source_mask()
            init = LatentPaste(lmap.target_rows, lmap.target_cols, lmap.source_rows, lmap.source_cols, bank=1)
            f_cells = (fmap.target_rows, fmap.target_cols)
            r_cells = (fmap.source_rows, fmap.source_cols)
        outside = ~p_g
        w = spec.weights

        def edit(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            s = local_similarity(c, r, f_cells, r_cells, canvas.feature_size, bank_row=1)
            return correspondence_energy(w.edit, s).sum()

        def content(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(w.content, region_similarity(c, r, outside)).sum()

        energies = [EnergyTerm("edit", "edit", edit)] if p_g.any() else []
        if outside.any() and w.content > 0:
            energies.append(EnergyTerm("content", "content", content))
        n = ctx.steps
        guided = spec.sampler.schedule.steps(n)
        kv = KVInjection(
            "composite",
            banks=(0, 1),
            token_masks=(token_mask(p_l, invert=True, method=method), token_mask(ref_l, method=method)),
        )
        return EditPlan(
            edit_mask=p_l,
            energies=energies,
            energy_scale=spec.energy_scale,
            guidance_step=spec.guidance_step,
            guided_steps=guided,
            init=[init],
            kv=KVPlan(kv, 0, int(round(spec.kv_end * n))),
            references=[Reference(ref_used, spec.reference_prompt)],
            **ctx.fidelity(PASTE_PROFILES, spec.profile, opts, image_prompt_source="reference"),  # type: ignore[arg-type]
            **ctx.diffeditor(spec.sampler, guided, p_l),  # type: ignore[arg-type]
        )


def _grid(canvas: Canvas, mask: np.ndarray, grid: Grid, method: str) -> torch.Tensor:
    """A pixel mask on a grid, never empty when the mask is not (cells touching it, as a last resort)."""
    g = canvas.mask_to_grid(mask, grid, method=method)  # type: ignore[arg-type]
    return g if g.any() else canvas.mask_to_grid(mask, grid, threshold=1e-6)


@hookimpl
def dragsdk_register_modes(register):
    register(PasteMode())
