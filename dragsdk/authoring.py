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

from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import BeforeValidator, Field

from .attention import KVInjection
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
from .geometry import Canvas, Grid
from .hookspecs import hookimpl
from .io import load_mask as _load_mask
from .io import mask_to_data_url
from .modes import EditMode, PlanContext
from .objects import affine, affine_map, centroid, place_image, placement_map
from .plan import EditPlan, EnergyTerm, Features, KVPlan, LatentPaste
from .regions import SourceMap
from .spec import (
    ENERGY_UNIT,
    Coordinate,
    EditSpec,
    Point,
    PointPair,
    SpecModel,
    displacement_field,
    energy_scale_field,
    guidance_step_field,
    weight_field,
)

MaskInput = str | np.ndarray | Image.Image
"""What a mask may be given as: a PNG path, a ``data:image/png;base64,...`` URL, a PIL image or an ``(H, W)``
array (nonzero, or > 0.5 for floats, = inside)."""


def _to_mask_ref(value: Any) -> Any:
    if isinstance(value, Image.Image | np.ndarray):
        return mask_to_data_url(value)
    return value


MaskRef = Annotated[str, BeforeValidator(_to_mask_ref)]
"""A spec field type for a mask: accepts any :data:`MaskInput` and stores a path or a data URL (so the spec stays
JSON). Use as ``mask: MaskRef`` or ``mask: MaskRef | None = mask_field(...)``; read it with :func:`load_mask` or
``ctx.mask(spec.mask, "mask")`` (which also checks the image size)."""


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
    "ENERGY_UNIT",
    "Canvas",
    "Cells",
    "Coordinate",
    "EditMode",
    "EditPlan",
    "EditSpec",
    "EnergyTerm",
    "Features",
    "Grid",
    "KVInjection",
    "KVPlan",
    "LatentPaste",
    "MaskInput",
    "MaskRef",
    "PlanContext",
    "Point",
    "PointPair",
    "SourceMap",
    "SpecError",
    "SpecModel",
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
    "load_mask",
    "local_similarity",
    "mask_field",
    "mask_to_data_url",
    "place_image",
    "placement_map",
    "pooled_similarity",
    "region_similarity",
    "similarity",
    "weight_field",
]
