"""Appearance replacement (DragonDiffusion arXiv 2307.02421 §3.4 "appearance replacing"; official
``guidance_appearance``, ``src/models/Sampler.py:354-420``).

The object in the base image takes the appearance of the object in a reference image. The reference is resized to
the base size and inverted in the same batch (bank row 1). On the feature grid:

- edit (global): ``w_edit / (1 + 4·S(mean F_cur[base object], mean F_ref[reference object]))``: mask-mean-pooled
  features, so the two objects may differ in shape;
- content (local): ``w_content / (1 + 4·S(F_cur, F_base))`` outside the base object.

Layers are summed (official); c = 0.04, energy 2, classifier-free guidance 5. K/V are composited per token for
steps 0–35 of 50: the base bank outside the base object, the reference bank inside the reference object, with key
masks sampled nearest at each layer's token grid (official ``attention_processor.py:84-92``; ``area-masks``: by area
coverage). In the official profile the sampling calls' text context also holds the base image's image-prompt tokens
(``text_context``, :func:`dragsdk.image_prompt.context_image_tokens`; ``text-only-context`` drops them).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dragsdk.authoring import (
    REFERENCE_PROFILES,
    EditMode,
    EditPlan,
    EditSpec,
    EnergyTerm,
    KVInjection,
    KVPlan,
    MaskRef,
    MaskUI,
    ModeUI,
    PlanContext,
    Reference,
    ReferenceUI,
    SamplerSettings,
    SpecModel,
    correspondence_energy,
    energy_scale_field,
    guidance_step_field,
    hookimpl,
    pooled_similarity,
    region_similarity,
    token_mask,
    weight_field,
)


class AppearanceWeights(SpecModel):
    edit: float = weight_field(3.5)
    content: float = weight_field(5.0)


class AppearanceSpec(EditSpec):
    """Give the base object (``mask``) the appearance of the reference object (``reference_mask``)."""

    mode: Literal["appearance"] = "appearance"
    mask: MaskRef = Field(..., description="base object mask (PNG path or data URL)")
    reference: str = Field(..., description="reference image path")
    reference_mask: MaskRef = Field(..., description="reference object mask, in the reference image's pixels")
    reference_prompt: str = Field("", description="prompt describing the reference image")
    weights: AppearanceWeights = Field(default_factory=AppearanceWeights)
    energy_scale: float = energy_scale_field(2.0)
    guidance_step: float = guidance_step_field(0.04, "c")
    kv_end: float = Field(
        0.72, ge=0.0, le=1.0, description="composite K/V until this fraction of the steps (36/50)"
    )
    profile: REFERENCE_PROFILES.spec_type() = REFERENCE_PROFILES.spec_field()  # type: ignore[valid-type]
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(guidance_scale=5.0))


class AppearanceMode(EditMode[AppearanceSpec]):
    name = "appearance"
    spec_model = AppearanceSpec
    profiles = REFERENCE_PROFILES
    description = "give an object the appearance of an object in a reference image (DragonDiffusion)"
    ui = ModeUI(
        help="Brush the **object** in the mask, upload a **reference image** and brush the object whose look "
        "it should take.",
        order=60,
        mask=MaskUI(name="object mask", label="Object mask: brush the object"),
        reference=ReferenceUI(),
    )
    unsupported_settings = frozenset({"kv_start"})  # composite K/V from step 0 to kv_end (DiffEditor code)

    def plan(self, spec: AppearanceSpec, ctx: PlanContext) -> EditPlan:
        canvas = ctx.canvas
        opts = REFERENCE_PROFILES.resolve(spec.profile)
        method = opts.mask_resampling
        base_mask = ctx.mask(spec.mask, "mask")
        ref_img = ctx.load_reference(spec.reference, "reference")
        ref_mask = ctx.reference_mask(
            spec.reference_mask, "reference_mask", ctx.reference_size(spec.reference, "reference")
        )
        base_g = canvas.mask_to_grid(base_mask, "feature", method=method)
        ref_g = canvas.mask_to_grid(ref_mask, "feature", method=method)
        outside = ~base_g
        w = spec.weights

        def edit(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(w.edit, pooled_similarity(c, r, base_g, ref_g, bank_row=1)).sum()

        def content(c: list[torch.Tensor], r: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(w.content, region_similarity(c, r, outside)).sum()

        energies = [EnergyTerm("edit", "edit", edit)]
        if outside.any() and w.content > 0:
            energies.append(EnergyTerm("content", "content", content))
        base_l = canvas.mask_to_grid(base_mask, "latent", method=method)
        ref_l = canvas.mask_to_grid(ref_mask, "latent", method=method)
        n = ctx.steps
        guided = spec.sampler.schedule.steps(n)
        kv = KVInjection(
            "composite",
            banks=(0, 1),
            token_masks=(token_mask(base_l, invert=True, method=method), token_mask(ref_l, method=method)),
        )
        return EditPlan(
            edit_mask=base_l,
            energies=energies,
            energy_scale=spec.energy_scale,
            guidance_step=spec.guidance_step,
            guided_steps=guided,
            kv=KVPlan(kv, 0, int(round(spec.kv_end * n))),
            references=[Reference(ref_img, spec.reference_prompt)],
            **ctx.fidelity(REFERENCE_PROFILES, spec.profile, opts, image_prompt_source="reference"),  # type: ignore[arg-type]
            **ctx.diffeditor(spec.sampler, guided, base_l),  # type: ignore[arg-type]
        )


@hookimpl
def dragsdk_register_modes(register):
    register(AppearanceMode())
