"""Point drag: DragonDiffusion content dragging (arXiv 2307.02421 §3.4; official ``guidance_drag``,
``src/models/Sampler.py:236-303``).

For each handle → target pair, on the feature grid (image/4):

- edit: ``w_edit / (1 + 4·S_local(F_cur[target patch], F_ref[handle patch]))``: the target patch takes the
  handle's guidance feature;
- contrast: ``w_contrast · S_local(F_cur, F_ref)`` on the handle patch minus its overlap with the target patch:
  the vacated handle location must stop looking like before;
- content: ``w_content / (1 + 4·S(F_cur, F_ref))`` averaged outside the editable mask.

Edit and contrast are averaged over layers and pairs, content over layers (official normalisation). Edit and
contrast gradients apply inside the mask, content outside. Before sampling, the 3×3 latent patch at each handle
of ``z_T`` is copied to its target, pair after pair, in place as the official code does (``utils.py:149``: a
target cell whose source cell an earlier cell or pair already overwrote reads the new value; ``snapshot-copy``:
every patch from ``z_T`` as it was); K/V are concatenated ``[own; bank]`` from step 5 of 50; DiffEditor's regional
SDE (inside the mask) and time travel run with the sampler settings. Without a mask, one is proposed around each
handle (:meth:`dragsdk.editor.Editor.suggest_mask`) plus the target's latent cell. Patches are shifted
inward at borders rather than clipped, and rows/columns are clipped by height/width respectively (the official
code clips x by the height, ``src/utils/utils.py:140,142``).

Profile ``official`` (the default) reproduces the official code step by step (MC-E/DragonDiffusion @f9b5bdf,
``run_drag`` ``src/demo/model.py:265-333``): step-0 reference = the pasted ``z_T`` (``utils.py:149``),
guidance features ``F(z_{t_i}, t_i)``, points ``floor(x·s)`` per axis, masks sampled nearest, roll-back at
``t_prev``. The options of its profiles (:data:`DRAG_PROFILES`) are listed in ``docs/modes/dragondiffusion.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from dragsdk.authoring import (
    MAX_POINT_PAIRS,
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
    PlanContext,
    PointPair,
    ProfileTable,
    SpecError,
    SpecModel,
    correspondence_energy,
    energy_scale_field,
    guidance_step_field,
    hookimpl,
    list_cap,
    local_similarity,
    option,
    region_similarity,
    weight_field,
)


class DragWeights(SpecModel):
    """Energy weights of content dragging (DragonDiffusion ``guidance_drag``,
    ``src/models/Sampler.py:236-303``; defaults ``src/demo/demo.py:475-513``)."""

    edit: float = weight_field(4.0, "pulls the target patch toward the handle's guidance feature")
    content: float = weight_field(6.0, "keeps features outside the mask")
    contrast: float = weight_field(0.2, "pushes the vacated handle patch away from its old feature")


@dataclass(frozen=True)
class DragOptions(DiffEditorOptions):
    """The options of point drag."""

    step0_guidance: Literal["init", "inversion"] = option(
        "init",
        "inversion",
        "step-0 guidance features of the inverted z_T instead of the handle-pasted z_T",
        improvement="unpasted-step0",
    )
    point_convention: Literal["corner", "centre"] = option(
        "corner",
        "centre",
        "a point falls in the cell holding its pixel's centre, floor((x+0.5)·s), instead of floor(x·s)",
        improvement="pixel-centre",
    )
    latent_copy: Literal["in-place", "snapshot"] = option(
        "in-place",
        "snapshot",
        "each pair's 3×3 latent patch copied from the inverted z_T as it was, instead of the official in-place copy "
        "that reads cells already overwritten when a handle and target patch (or two pairs' patches) overlap",
        improvement="snapshot-copy",
    )


DRAG_PROFILES = ProfileTable(DragOptions)
"""The profile table of point drag."""
DRAG_IMPROVEMENTS = DRAG_PROFILES.improvements


class DragSpec(EditSpec):
    """Point drag (DragonDiffusion content dragging, arXiv 2307.02421 §3.4; ``guidance_drag``,
    ``src/models/Sampler.py:236-303``).

    Each handle's feature is pulled to its target on the image/4 feature grid, with the region outside
    ``mask`` held to its inverted features.
    """

    mode: str = Field("drag", pattern="^drag$")
    points: Annotated[list[PointPair], list_cap(MAX_POINT_PAIRS, "pairs")] = Field(
        ...,
        min_length=1,
        max_length=MAX_POINT_PAIRS,
        description=f"handle → target pairs, image pixels (1 to {MAX_POINT_PAIRS} pairs)",
    )
    mask: MaskRef | None = Field(
        None, description="editable region (PNG path or data URL, white = may change); absent = whole image"
    )
    weights: DragWeights = Field(default_factory=DragWeights)
    energy_scale: float = energy_scale_field(2.0)
    guidance_step: float = guidance_step_field(0.04, "c, multiplier of λ·∇E (0.04 for drag)")
    patch_radius: int = Field(1, ge=0, le=8, description="patch half-size in feature cells (1 → 3×3)")
    profile: DRAG_PROFILES.spec_type() = DRAG_PROFILES.spec_field()  # type: ignore[valid-type]


class DragMode(EditMode[DragSpec]):
    name = "drag"
    spec_model = DragSpec
    profiles = DRAG_PROFILES
    description = "point drag: move handle points to target points (DragonDiffusion content dragging)"
    ui = ModeUI(
        help="Click a **handle**, then its **target**; repeat for more pairs. Brush the editable region in the mask "
        "(optional: without one a mask is proposed around each handle).",
        order=10,
        points="points",
        mask=MaskUI(name="editable region", label="Editable region (optional): brush it"),
    )

    def plan(self, spec: DragSpec, ctx: PlanContext) -> EditPlan:
        canvas = ctx.canvas
        ctx.check_points(spec.points)
        grid, r = canvas.feature_size, spec.patch_radius
        if 2 * r + 1 > min(grid):  # before any mask proposal: refused without running the model
            raise SpecError(
                "patch_radius",
                f"a {2 * r + 1}×{2 * r + 1} patch (radius {r}) does not fit the "
                f"{grid[0]}×{grid[1]} feature grid at working size {canvas.size[0]}×"
                f"{canvas.size[1]}; use patch_radius <= {(min(grid) - 1) // 2} or a "
                "larger resolution",
            )
        notes: list[str] = []
        opts = DRAG_PROFILES.resolve(spec.profile)
        method, convention = opts.mask_resampling, opts.point_convention
        if spec.mask is None and ctx.suggest_mask is not None:
            mask_px = np.zeros((canvas.image_size[1], canvas.image_size[0]), dtype=bool)
            for p in spec.points:
                mask_px |= ctx.object_mask(None, p.handle, "mask", notes)
                x, y = int(p.target[0]), int(p.target[1])
                r = max(
                    4, int(round(8 / canvas.scale("latent")[0]))
                )  # about one latent cell around the target
                mask_px[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
        elif spec.mask is None:
            w, h = canvas.image_size
            mask_px = np.ones((h, w), dtype=bool)
            notes.append("no mask given: the whole image is editable and the content term is off")
        else:
            mask_px = ctx.mask(spec.mask, "mask")
        edit_latent = canvas.mask_to_grid(mask_px, "latent", method=method)
        keep_feature = ~canvas.mask_to_grid(mask_px, "feature", method=method)
        if not edit_latent.any():
            edit_latent = canvas.mask_to_grid(mask_px, "latent", threshold=1e-6)
            notes.append("mask covers no latent cell when resampled: cells touching it are editable")

        grid = canvas.feature_size
        r = spec.patch_radius
        handles = [canvas.patch(p.handle, "feature", r, convention) for p in spec.points]
        targets = [canvas.patch(p.target, "feature", r, convention) for p in spec.points]
        vacated = []
        for (hr, hc), (tr, tc) in zip(handles, targets, strict=True):
            tgt = set(zip(tr.tolist(), tc.tolist(), strict=True))
            keep = torch.tensor([(a, b) not in tgt for a, b in zip(hr.tolist(), hc.tolist(), strict=True)])
            vacated.append((hr[keep], hc[keep]))
        weights = spec.weights
        n_pairs = len(spec.points)

        def edit_energy(cur: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
            total = cur[0].new_zeros((), dtype=torch.float32)
            for hcells, tcells, vcells in zip(handles, targets, vacated, strict=True):
                s = local_similarity(cur, ref, tcells, hcells, grid)
                total = total + correspondence_energy(weights.edit, s).sum()
                if weights.contrast > 0 and vcells[0].numel():
                    total = (
                        total + (weights.contrast * local_similarity(cur, ref, vcells, vcells, grid)).sum()
                    )
            return total / (len(cur) * n_pairs)

        def content_energy(cur: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
            return correspondence_energy(weights.content, region_similarity(cur, ref, keep_feature)).mean()

        energies = [EnergyTerm("edit", "edit", edit_energy)]
        if weights.content > 0 and keep_feature.any():
            energies.append(EnergyTerm("content", "content", content_energy))

        init = []
        for p in spec.points:
            hr, hc = canvas.patch(p.handle, "latent", 1, convention)
            tr, tc = canvas.patch(p.target, "latent", 1, convention)
            init.append(LatentPaste(tr, tc, hr, hc, in_place=opts.latent_copy == "in-place"))
        n = ctx.steps
        kv_start = int(round(spec.sampler.kv_start * n))
        guided = spec.sampler.schedule.steps(n)
        return EditPlan(
            edit_mask=edit_latent,
            energies=energies,
            energy_scale=spec.energy_scale,
            guidance_step=spec.guidance_step,
            guided_steps=guided,
            init=init,
            kv=KVPlan(KVInjection("concat"), kv_start, n),
            notes=notes,
            **ctx.fidelity(DRAG_PROFILES, spec.profile, opts),  # type: ignore[arg-type]
            **ctx.diffeditor(spec.sampler, guided, edit_latent),  # type: ignore[arg-type]
        )


@hookimpl
def dragsdk_register_modes(register):
    register(DragMode())
