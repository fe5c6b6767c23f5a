"""The API for mode-plugin authors: everything a mode imports, from one module (see docs/plugins.md).

A mode subclasses :class:`EditMode`, declares a pydantic spec (a subclass of :class:`EditSpec`) and returns an
:class:`EditPlan` from ``plan(spec, ctx)``. The engine applies the shared :class:`~dragsdk.spec.SamplerSettings`
(``schedule``, ``kv_start``, ``sde``, ``time_travel``, plus ``steps``, ``guidance_scale``, ``seed``, ``resolution``)
and the spec's ``energy_scale`` / ``guidance_step`` to every plan entry the mode leaves ``None``; a mode that cannot
honour a setting lists it in ``EditMode.unsupported_settings`` and specs setting it are refused naming the field.

Conventions, the same in every function here:

- **coordinates** in image pixels: ``x`` right, ``y`` down; points are ``(x, y)``;
- **sizes** are ``(w, h)`` (like PIL and :class:`Canvas`: ``canvas.image_size``, ``canvas.latent_size``,
  ``canvas.feature_size``, the ``grid_size`` of the energy helpers); **array and tensor shapes** are ``(h, w)``
  (masks ``(H, W)`` in image pixels, latent masks ``(h, w)``), and cells are ``(rows, cols)``;
- grids: ``latent`` (working size / 8, where masks, pastes, K/V and the SDE live) and ``feature`` (working
  size / 4, where energies are computed); convert only through :class:`Canvas`;
- ``energy_scale`` is in units of :data:`ENERGY_UNIT` (λ = 1000 · energy_scale) in the spec and the plan alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from .attention import KVInjection, token_mask
from .energy import (
    Cells,
    correspondence_energy,
    gather_cells,
    local_similarity,
    pooled_similarity,
    region_similarity,
    similarity,
)
from .errors import SpecError
from .fidelity import ALL_IMPROVEMENTS, OFFICIAL, Fidelity, ProfileTable, option
from .geometry import Canvas, Grid
from .hookspecs import hookimpl
from .image_prompt import ImagePromptPlan
from .inversion import DDIMSchedule
from .io import load_mask as _load_mask
from .io import mask_to_data_url
from .modes import EditMode, MaskUI, ModeUI, PlacementUI, PlanContext, ReferenceUI
from .objects import (
    affine,
    affine_map,
    centroid,
    official_placement_map,
    official_scale_about_centre,
    place_image,
    placement_map,
    shift_cells,
)
from .plan import (
    EditPlan,
    EnergyTerm,
    Features,
    HandleNoise,
    ImageLoRA,
    KVPlan,
    LatentOptimisation,
    LatentPaste,
    OptimisationState,
    Reference,
    StepPaste,
)
from .regions import SourceMap
from .safe_pickle import restricted_load
from .samples import load_sample
from .spec import (
    DIFFEDITOR_PROFILES,
    ENERGY_UNIT,
    MAX_DENSE_POINTS,
    MAX_POINT_PAIRS,
    MAX_REGION_PAIRS,
    REFERENCE_PROFILES,
    Coordinate,
    DiffEditorOptions,
    EditSpec,
    MaskInput,
    MaskRef,
    Point,
    PointPair,
    ReferenceOptions,
    SamplerSettings,
    SpecModel,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    list_cap,
    weight_field,
)


def mask_field(description: str, required: bool = False) -> Any:
    """A pydantic ``Field`` for a :data:`MaskRef` (default ``None`` unless ``required``); the description says what
    the accepted forms are."""
    text = f"{description} (PNG path or data:image/png;base64 URL; white = inside)"
    return Field(... if required else None, description=text)


def load_mask(
    ref: MaskInput, field: str = "mask", size: tuple[int, int] | None = None, allow_empty: bool = False
) -> np.ndarray:
    """Decode a mask given in any :data:`MaskInput` form.

    Args:
        ref: the mask.
        field: the spec field named in errors.
        size: ``(w, h)`` the mask must have, in pixels (None: any).
        allow_empty: accept a mask with no pixel inside.

    Returns:
        ``(H, W)`` bool array in image pixels.

    Raises:
        SpecError: unreadable, not two-dimensional, of another size than ``size``, or empty (field ``field``).
    """
    m = _load_mask(ref, field)
    if size is not None and m.shape != (size[1], size[0]):
        raise SpecError(field, f"mask is {m.shape[1]}×{m.shape[0]} pixels, expected {size[0]}×{size[1]}")
    if not allow_empty and not m.any():
        raise SpecError(field, "mask is empty: it must cover at least one pixel")
    return m


def latent_paste(smap: SourceMap, bank: int = 0) -> LatentPaste:
    """The :class:`LatentPaste` that copies each source cell of a latent-grid :class:`SourceMap` (e.g. from
    :func:`affine_map` on ``"latent"``) to its target cell, before sampling.

    Raises:
        TypeError: ``smap`` is not a :class:`SourceMap` (e.g. None from a mode that found no cells), or ``bank``
            not a non-negative int.
    """
    if not isinstance(smap, SourceMap):
        raise TypeError(
            f"latent_paste: smap must be a SourceMap (from affine_map / placement_map), got "
            f"{type(smap).__name__}"
        )
    if isinstance(bank, bool) or not isinstance(bank, int) or bank < 0:
        raise TypeError(
            f"latent_paste: bank must be a non-negative int (the reference latent's index), got {bank!r}"
        )
    return LatentPaste(smap.target_rows, smap.target_cols, smap.source_rows, smap.source_cols, bank)


__all__ = [
    "ALL_IMPROVEMENTS",
    "Canvas",
    "Cells",
    "Coordinate",
    "DDIMSchedule",
    "DIFFEDITOR_PROFILES",
    "DiffEditorOptions",
    "ENERGY_UNIT",
    "EditMode",
    "EditPlan",
    "EditSpec",
    "EnergyTerm",
    "Features",
    "Fidelity",
    "Grid",
    "HandleNoise",
    "ImageLoRA",
    "ImagePromptPlan",
    "KVInjection",
    "KVPlan",
    "LatentOptimisation",
    "LatentPaste",
    "MAX_DENSE_POINTS",
    "MAX_POINT_PAIRS",
    "MAX_REGION_PAIRS",
    "MaskInput",
    "MaskRef",
    "MaskUI",
    "ModeUI",
    "OFFICIAL",
    "OptimisationState",
    "PlacementUI",
    "PlanContext",
    "Point",
    "PointPair",
    "ProfileTable",
    "REFERENCE_PROFILES",
    "Reference",
    "ReferenceUI",
    "ReferenceOptions",
    "SamplerSettings",
    "SourceMap",
    "SpecError",
    "SpecModel",
    "StepPaste",
    "affine",
    "affine_map",
    "centroid",
    "correspondence_energy",
    "displacement_field",
    "energy_scale_field",
    "gather_cells",
    "guidance_step_field",
    "hookimpl",
    "latent_paste",
    "list_cap",
    "load_mask",
    "load_sample",
    "local_similarity",
    "mask_field",
    "mask_to_data_url",
    "official_placement_map",
    "official_scale_about_centre",
    "option",
    "place_image",
    "placement_map",
    "pooled_similarity",
    "region_similarity",
    "restricted_load",
    "shift_cells",
    "similarity",
    "token_mask",
    "weight_field",
]
