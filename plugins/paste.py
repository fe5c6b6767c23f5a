"""Object pasting (DiffEditor arXiv 2402.02583; DragonDiffusion code ``guidance_paste``; dossier §2).

An object cut from a reference image (``reference_mask``) is placed on the base image by ``scale`` about its own
centroid and a shift ``(dx, dy)`` pixels, with :func:`dragsdk.objects.place_image`, the same map that
:func:`dragsdk.objects.paste_preview` draws, so the preview and the result agree (the official UI previews about the
object centre but processes about the image centre; dossier §7). The placed reference is inverted in the same batch
as the base (bank row 1). On the feature grid, with ``P`` the placed object:

- edit (local): ``w_edit / (1 + 4·S(F_cur, F_placed-reference))`` over ``P``;
- content (local): ``w_content / (1 + 4·S(F_cur, F_base))`` outside ``P``.

Layers summed; c = 0.04, energy 1.5. Before sampling, the placed reference's inverted latent is pasted inside
``P``; K/V are composited per token (base outside ``P``, reference inside) for steps 0–35 of 50.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from dragsdk.attention import KVInjection, token_mask
from dragsdk.energy import correspondence_energy, region_similarity
from dragsdk.hookspecs import hookimpl
from dragsdk.io import load_image
from dragsdk.modes import EditMode, PlanContext
from dragsdk.objects import place_image
from dragsdk.plan import EditPlan, EnergyTerm, KVPlan, LatentPaste, Reference
from dragsdk.spec import (
    DIFFEDITOR_IMPROVEMENTS,
    Coordinate,
    EditSpec,
    SpecModel,
    _as_mask_ref,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    profile_field,
    profile_options,
    profile_type,
    weight_field,
)


class PasteWeights(SpecModel):
    edit: float = weight_field(4.0)
    content: float = weight_field(6.0)


class PasteSpec(EditSpec):
    """Paste the reference object onto the base image at ``(dx, dy)`` pixels, scaled by ``scale``."""

    mode: Literal["paste"] = "paste"
    reference: str = Field(..., description="reference image path")
    reference_mask: str = Field(..., description="object mask in the reference image's pixels")
    dx: Coordinate = displacement_field("shift of the object, base-image pixels")
    dy: Coordinate = displacement_field("shift of the object, base-image pixels")
    scale: float = Field(1.0, gt=0.0, le=1.5, description="scale about the object's centroid (official slider 0–1.5)")
    reference_prompt: str = Field("", description="prompt describing the reference image")
    weights: PasteWeights = Field(default_factory=PasteWeights)
    energy_scale: float = energy_scale_field(1.5)
    guidance_step: float = guidance_step_field(0.04, "c")
    kv_end: float = Field(0.72, ge=0.0, le=1.0, description="composite K/V until this fraction of the steps (36/50)")
    profile: profile_type(DIFFEDITOR_IMPROVEMENTS) = profile_field(DIFFEDITOR_IMPROVEMENTS)  # type: ignore[valid-type]

    _mask_ref = field_validator("reference_mask", mode="before")(classmethod(lambda cls, v: _as_mask_ref(v)))


class PasteMode(EditMode):
    name = "paste"
    spec_model = PasteSpec
    description = "paste an object from a reference image onto the base image (DiffEditor object pasting)"
    unsupported_settings = frozenset({"kv_start"})  # composite K/V from step 0 to kv_end (DiffEditor code)

    def plan(self, spec: PasteSpec, ctx: PlanContext) -> EditPlan:  # type: ignore[override]
        canvas = ctx.canvas
        options = profile_options(spec.profile, DIFFEDITOR_IMPROVEMENTS)
        method = "area" if "area-masks" in options else "nearest"
        ref_img = ctx.load_reference(spec.reference, "reference")
        ref_mask = ctx.reference_mask(spec.reference_mask, "reference_mask", load_image(spec.reference).size)
        placed_img, placed = place_image(ref_img, ref_mask, spec.scale, (spec.dx, spec.dy))
        p_g = canvas.mask_to_grid(placed, "feature", method=method)
        p_l = canvas.mask_to_grid(placed, "latent", method=method)
        if not p_l.any():
            p_l = canvas.mask_to_grid(placed, "latent", threshold=1e-6)
        outside = ~p_g
        w = spec.weights

        def edit(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(w.edit, region_similarity(c, r, p_g, reference_row=1)).sum()

        def content(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(w.content, region_similarity(c, r, outside)).sum()

        energies = [EnergyTerm("edit", "edit", edit)] if p_g.any() else []
        if outside.any() and w.content > 0:
            energies.append(EnergyTerm("content", "content", content))
        rows, cols = torch.nonzero(p_l, as_tuple=True)
        n = ctx.steps
        guided = spec.sampler.schedule.steps(n)
        kv = KVInjection("composite", banks=(0, 1), token_masks=(token_mask(p_l, invert=True), token_mask(p_l)))
        return EditPlan(
            edit_mask=p_l,
            energies=energies,
            energy_scale=spec.energy_scale,
            guidance_step=spec.guidance_step,
            guided_steps=guided,
            init=[LatentPaste(rows, cols, rows, cols, bank=1)],
            kv=KVPlan(kv, 0, int(round(spec.kv_end * n))),
            references=[Reference(placed_img, spec.reference_prompt)],
            **ctx.fidelity(spec.profile, options),  # type: ignore[arg-type]
            **ctx.diffeditor(spec.sampler, guided, p_l),  # type: ignore[arg-type]
        )


@hookimpl
def dragsdk_register_modes(register):
    register(PasteMode())
