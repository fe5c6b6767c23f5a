"""Region drag: RegionDrag (Lu et al., ECCV 2024, arXiv 2407.18247), gradient-free and fast.

Reimplemented from the paper and from the observable behaviour of the official code (Visual-AI/RegionDrag
@5cf4922, ``region_utils/drag.py``, ``cycle_sde.py``, ``ui_utils.py``), compared on identical inputs; the
official repository has no licence and none of its code is used.
The default ``profile="official"`` computes what the official "Encode then CP" code computes, step by step, with
its bugs fixed (:data:`PROFILES`; docs/modes/region-drag.md has the item-by-item table):

1. Every input (region pairs, polygon pairs, a region plus a few handle → target points, or the dense point list of
   DragBench-SR/DR) becomes one dense target → source map on the latent grid (:mod:`dragsdk.plugins.region_drag.maps`, official
   rules: the cells of the official OpenCV calls — masks resized with 8-bit rounding, ``cv2.fillPoly`` — truncated
   sources, and for region + points the official contour warp with float16 1/d weights): each target cell gets
   exactly one source cell.
   Several pairs are merged; a later pair wins a cell.
2. ``z0`` = a seeded VAE posterior sample; Cycle-SDE inversion (:mod:`dragsdk.cycle_sde`, SDE-Drag arXiv
   2311.01410) of ``int(start_t·steps)`` steps on the official grid (:class:`~dragsdk.plugins.region_drag.grid.RegionDragGrid`:
   UNet at 100 … 550 for 20 steps, start 0.5), recording every latent, the reverse noise, and the self-attention
   K/V of **every** layer (encoder, mid, decoder).
3. The handle cells of the starting latent are re-noised, ``√(1−α²)·z + α·ε`` (α = ``handle_noise``).
   With ``rng="official"`` (the default) every random draw of steps 2–3 (posterior sample, forward noise, handle
   noise over the official point list) comes from one generator seeded as ``torch.manual_seed(seed)`` seeds the
   official code, in its order and shapes (docs row 6c).
4. Denoising at 549, 500, …, 100 (the official off-by-one at the first step; ``time_grid="recorded"`` uses 550).
   Before every step inside the copy window (official: ``t ≥ int(end_t·steps)``, i.e. every step) the target cells
   take the recorded inversion latent of the same step at their source cells; then the latent outside the editable
   mask (nearest-resampled; the whole image when none is given) is reset to that inversion latent; none after the
   last step. K/V of every self-attention layer are replaced by the recorded ones at every step (whole tensors).
   No CFG (scale 1, batch 1), no gradients.
5. Decode, truncate to uint8, and composite the original pixels back outside the pixel mask (``composite``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from dragsdk.authoring import (
    MAX_DENSE_POINTS,
    MAX_POINT_PAIRS,
    MAX_REGION_PAIRS,
    EditMode,
    EditPlan,
    EditSpec,
    HandleNoise,
    ImagePromptPlan,
    KVInjection,
    KVPlan,
    LatentPaste,
    MaskRef,
    MaskUI,
    ModeUI,
    PlanContext,
    Point,
    PointPair,
    ProfileTable,
    SamplerSettings,
    SourceMap,
    SpecError,
    SpecModel,
    StepPaste,
    hookimpl,
    list_cap,
    load_sample,
    mask_to_data_url,
    option,
    restricted_load,
)

from .grid import RegionDragGrid
from .maps import (
    dense_points_map,
    dense_points_sources,
    points_map,
    points_map_parts,
    polygon_map,
    region_pair_map,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "PROFILES",
    "REGION_DRAG_PROFILES",
    "RegionDragOptions",
    "PolygonPair",
    "RegionDragMode",
    "RegionDragSampler",
    "RegionDragSpec",
    "RegionPair",
    "spec_from_sample",
]

NUM_TRAIN_TIMESTEPS = 1000
"""Training timesteps of Stable Diffusion: ``end_t`` = 0.2 is timestep 200."""

DEFAULT_RADIUS_PX = 16.0
"""Half-side (pixels) of the square moved with each sparse handle point by :meth:`RegionDragSpec.from_points`."""


def _pair_from_sequence(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2:
        return {"handle": value[0], "target": value[1]}
    return value


class RegionPair(SpecModel):
    """A handle (source) region and the target region it is moved to; masks of the image's size. Also accepted as
    ``[handle, target]``."""

    handle: MaskRef = Field(
        ..., description="handle region: PNG path or data URL, white = inside, the image's size"
    )
    target: MaskRef = Field(
        ..., description="target region: PNG path or data URL, white = inside, the image's size"
    )

    _seq = model_validator(mode="before")(classmethod(lambda cls, v: _pair_from_sequence(v)))


class PolygonPair(SpecModel):
    """A handle polygon and its target: 3 vertices (affine map) or 4 (perspective map), in order around the polygon,
    image pixels; vertex ``i`` of the handle goes to vertex ``i`` of the target. Also accepted as
    ``[handle, target]``."""

    handle: list[Point] = Field(..., min_length=3, max_length=4, description="3 or 4 [x, y] vertices, pixels")
    target: list[Point] = Field(
        ..., min_length=3, max_length=4, description="as many [x, y] vertices as the handle (3 or 4), pixels"
    )

    _seq = model_validator(mode="before")(classmethod(lambda cls, v: _pair_from_sequence(v)))

    @model_validator(mode="after")
    def _same_count(self) -> PolygonPair:
        if len(self.handle) != len(self.target):
            raise ValueError(f"handle has {len(self.handle)} vertices but target has {len(self.target)}")
        return self


class RegionDragSampler(SamplerSettings):
    """Sampler settings with RegionDrag's defaults (``run_eval.py:23``, ``region_utils/drag.py:129``): 20
    steps, no CFG, 512² working area, K/V replaced from the first sampled step. ``schedule``, ``sde`` and
    ``time_travel`` (energy-guidance and DDIM settings) do not apply to Cycle-SDE sampling: a spec that sets
    them to other than their defaults is refused naming the field."""

    steps: int = Field(20, ge=2, le=1000, description="Cycle-SDE steps over the full schedule (20)")
    guidance_scale: float = Field(
        1.0,
        ge=1.0,
        le=1.0,
        description="fixed at 1: no classifier-free guidance (the recorded noise assumes it)",
    )
    resolution: int = Field(
        512,
        ge=64,
        le=2048,
        description="when given: working area ≈ resolution² pixels, sides multiples of 64; when not: the mode's working size, else the model family's default (768 on SD 1.x)",
    )
    kv_start: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="K/V replaced from this fraction of the steps (0: every sampled step)",
    )


_KINDS = ("regions", "polygons", "region + points", "dense_points")

Profile = Literal["official", "dragsdk"]


@dataclass(frozen=True)
class RegionDragOptions:
    """The fidelity options of region drag: ``official`` reproduces the official RegionDrag code ("Encode then CP",
    Visual-AI/RegionDrag @5cf4922) step by step, with its bugs fixed (docs/modes/region-drag.md); ``dragsdk`` is
    dragsdk's own choices. A spec field of the same name, when given, overrides its profile's value."""

    time_grid: Literal["official", "recorded", "ddim"] = option(
        "official",
        "ddim",
        "the model's DDIM grid (451 … 1) instead of DPMSolver's grid with the official "
        "off-by-one denoising start",
    )
    copy_window: Literal["official", "timestep"] = option(
        "official",
        "timestep",
        "latent copy while t ≥ end_t·1000 instead of a step count compared with timesteps",
    )
    mask_resampling: Literal["nearest", "area"] = option(
        "nearest", "area", "mask → latent grid by ≥ 50 % coverage, extended by the handle and target cells"
    )
    outside_reset: Literal["before", "after"] = option(
        "before", "after", "outside the mask the latent is reset after each step (the last time to z0)"
    )
    composite_mask: Literal["pixel", "latent"] = option(
        "pixel", "latent", "the final composite uses the latent mask upsampled"
    )
    default_mask: Literal["whole", "regions"] = option(
        "whole",
        "regions",
        "without `mask`, the regions grown by mask_margin are editable, not the whole image",
    )
    map_rules: Literal["official", "dragsdk"] = option(
        "official", "dragsdk", "inputs → latent map by cell centres, rounding and 1/d² weights"
    )
    vae_latent: Literal["sample", "mean"] = option(
        "sample", "mean", "z0 is the VAE posterior mean, not a seeded posterior sample"
    )
    to_uint8: Literal["truncate", "round"] = option(
        "truncate", "round", "the decoded image is rounded to 8 bits, not truncated"
    )
    working_size: Literal["image", "model"] = option(
        "image",
        "model",
        "without sampler.resolution, SD 1.x edits at the model's default resolution (area ≈ 768², sides multiples "
        "of 64), not the image's own size",
    )
    rng: Literal["official", "dragsdk"] = option(
        "official",
        "dragsdk",
        "independent seeded streams for the inversion and the handle noise, not one stream in the official order",
    )


REGION_DRAG_PROFILES = ProfileTable(RegionDragOptions)
"""The profile table of region drag."""

PROFILES: dict[str, dict[str, str]] = {p: REGION_DRAG_PROFILES.values(p) for p in ("official", "dragsdk")}
"""The option values of each ``profile`` (derived from :class:`RegionDragOptions`)."""


def _refuse_outside(canvas: Any, vertices: Sequence[Sequence[float]], field: str) -> None:
    """A polygon whose every vertex lies outside the image, named as such (before rasterisation would blame its
    size). A polygon partly outside is kept: the official rasteriser clips it to the grid."""
    w, h = canvas.image_size
    xs = [float(v[0]) for v in vertices]
    ys = [float(v[1]) for v in vertices]
    if max(xs) < 0 or min(xs) >= w or max(ys) < 0 or min(ys) >= h:
        raise SpecError(
            field,
            f"the polygon lies entirely outside the {w}×{h} image (x {min(xs):g}…{max(xs):g}, "
            f"y {min(ys):g}…{max(ys):g} pixels)",
        )


MIN_CYCLE_SDE_STEPS = 3
"""Fewest steps on RegionDrag's own time grids: with DPM-Solver's linspace grid of 2 steps ``[999, 500]`` the one
inversion step is ``500 + 1000 // 2 = 1000``, past timestep 999 (:class:`~dragsdk.plugins.region_drag.grid.RegionDragGrid`)."""


class RegionDragSpec(EditSpec):
    """Region drag (RegionDrag, arXiv 2407.18247). Exactly one input kind:

    - ``regions``: handle / target mask pairs;
    - ``polygons``: triangle (affine) or quad (perspective) pairs;
    - ``region`` + ``points``: a region warped by a few handle → target points (inverse-distance weighting);
    - ``dense_points``: the dense alternating handle, target list of DragBench-SR/DR ``meta_data_region.pkl``.

    All geometry in image pixels. ``mask`` (editable region) defaults to the union of the handle and target regions
    grown by ``mask_margin`` pixels; a given mask is extended by the handle and target cells.
    """

    mode: Literal["region-drag"] = "region-drag"
    regions: Annotated[list[RegionPair] | None, list_cap(MAX_REGION_PAIRS, "region pairs")] = Field(
        None,
        min_length=1,
        max_length=MAX_REGION_PAIRS,
        description=f"handle / target region pairs (1 to {MAX_REGION_PAIRS})",
    )
    polygons: Annotated[list[PolygonPair] | None, list_cap(MAX_POINT_PAIRS, "polygon pairs")] = Field(
        None,
        min_length=1,
        max_length=MAX_POINT_PAIRS,
        description=f"triangle or quad pairs (1 to {MAX_POINT_PAIRS})",
    )
    region: MaskRef | None = Field(None, description="region moved by `points` (PNG path or data URL)")
    points: Annotated[list[PointPair] | None, list_cap(MAX_POINT_PAIRS, "pairs")] = Field(
        None,
        min_length=1,
        max_length=MAX_POINT_PAIRS,
        description=f"handle → target points warping `region` (inverse-distance weighting; 1 to {MAX_POINT_PAIRS} "
        "pairs)",
    )
    dense_points: Annotated[list[Point] | None, list_cap(MAX_DENSE_POINTS, "points")] = Field(
        None,
        min_length=2,
        max_length=MAX_DENSE_POINTS,
        description="[h0, t0, h1, t1, ...] [x, y] pixels (DragBench-SR/DR meta_data_region.pkl; 2 to "
        f"{MAX_DENSE_POINTS} points: one pair per latent cell of the largest canvas)",
    )
    mask: MaskRef | None = Field(
        None,
        description="editable region (PNG path or data URL); absent = handle ∪ target grown by mask_margin",
    )
    mask_margin: float = Field(
        8.0, ge=0.0, le=512.0, description="pixels the default mask grows around the regions"
    )
    start_t: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="inversion depth: int(start_t·steps) inverted steps (20 · 0.5 → 10: the UNet at t = 550 … 100 "
        "on the official grid, 451 … 1 on the ddim grid)",
    )
    end_t: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="latent copy window: copy while t ≥ int(end_t·steps) (copy_window official: every step) or "
        "while t ≥ end_t·1000 (copy_window timestep: t″ = 200)",
    )
    handle_noise: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="α: handle cells become √(1−α²)·z + α·ε (1.0 evaluation, 0.6 interactive)",
    )
    composite: bool = Field(
        True, description="paste the original pixels back outside the mask after decoding"
    )
    profile: Profile = Field(  # REGION_DRAG_PROFILES.spec_type(); the per-option fields below override it
        "official",
        description="official: reproduce the official RegionDrag code step by step (its bugs fixed); dragsdk: "
        "dragsdk's own choices. Each option below, when given, overrides the profile's value",
    )
    time_grid: Literal["official", "recorded", "ddim"] | None = Field(
        None,
        description="official: DPMSolver set_timesteps grid, inversion to 550, denoising from 549 (the official "
        "off-by-one); recorded: the same grid, denoising at the recorded levels (550); ddim: the model's DDIM grid "
        "(451 … 1, z0 at ᾱ=0.99915). dragsdk: ddim",
    )
    copy_window: Literal["official", "timestep"] | None = Field(
        None,
        description="official: t ≥ int(end_t·steps) (copies at every step); timestep: t ≥ end_t·1000. dragsdk: timestep",
    )
    mask_resampling: Literal["nearest", "area"] | None = Field(
        None,
        description="mask → latent grid: nearest (F.interpolate default); area: ≥ 50 % coverage, extended by the "
        "handle and target cells. dragsdk: area",
    )
    outside_reset: Literal["before", "after"] | None = Field(
        None,
        description="outside the mask the latent is reset to the inversion: before each step (none after the last) "
        "or after each step (the last time to z0). dragsdk: after",
    )
    composite_mask: Literal["pixel", "latent"] | None = Field(
        None,
        description="mask of the final composite: the pixel mask, or the latent mask upsampled. dragsdk: latent",
    )
    default_mask: Literal["whole", "regions"] | None = Field(
        None,
        description="without `mask`: the whole image is editable (official UI), or the regions grown by "
        "mask_margin. dragsdk: regions",
    )
    map_rules: Literal["official", "dragsdk"] | None = Field(
        None,
        description="inputs → latent map: official (truncation, boundary-inclusive polygon fill, 1/d weights; bugs "
        "fixed) or dragsdk (cell centres, rounding, 1/d² weights). dragsdk: dragsdk",
    )
    vae_latent: Literal["sample", "mean"] | None = Field(
        None,
        description="z0: a posterior sample seeded by sampler.seed, or the posterior mean. dragsdk: mean",
    )
    to_uint8: Literal["truncate", "round"] | None = Field(
        None, description="decoded image to 8 bits: truncate (astype) or round. dragsdk: round"
    )
    working_size: Literal["image", "model"] | None = Field(
        None,
        description="without sampler.resolution on SD 1.x: the image's own size, sides floored to multiples of 8 "
        "(official), or the model's default resolution. dragsdk: model",
    )
    rng: Literal["official", "dragsdk"] | None = Field(
        None,
        description="random draws: official = one generator seeded as torch.manual_seed(sampler.seed), on the "
        "model's device, drawn in the official order (VAE posterior sample, the forward noise of each inversion "
        "step, the handle noise of the official point list); dragsdk = independent streams (inversion, "
        "sampler). dragsdk: dragsdk",
    )
    sampler: RegionDragSampler = Field(default_factory=RegionDragSampler)

    def options(self) -> RegionDragOptions:
        """The effective options: the ``profile``'s (:class:`RegionDragOptions`), overridden by the fields given."""
        return REGION_DRAG_PROFILES.resolve(
            self.profile, {k: getattr(self, k) for k in REGION_DRAG_PROFILES.names}
        )

    @model_validator(mode="after")
    def _one_kind(self) -> RegionDragSpec:
        if (self.region is None) != (self.points is None):
            raise ValueError("`region` and `points` go together: a region warped by handle → target points")
        given = [
            k
            for k, v in zip(
                _KINDS, (self.regions, self.polygons, self.region, self.dense_points), strict=True
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one input kind of {', '.join(_KINDS)}; got {', '.join(given) if given else 'none'}"
            )
        if self.dense_points is not None and len(self.dense_points) % 2:
            raise ValueError(
                f"dense_points alternates handle and target: an even count, got {len(self.dense_points)}"
            )
        return self

    @classmethod
    def from_points(
        cls,
        points: Sequence[Any],
        mask: Any = None,
        radius_px: float = DEFAULT_RADIUS_PX,
        **fields: Any,
    ) -> RegionDragSpec:
        """A region-drag spec from sparse handle → target points (e.g. a DragBench sample's ``meta_data.pkl``).

        Each handle becomes a square of half-side ``radius_px`` pixels centred on it, moved rigidly to the same
        square around its target (a polygon pair: the perspective map of two equal squares is a translation).

        Args:
            points: ``[[handle, target], ...]`` or :class:`~dragsdk.spec.PointPair` s, image pixels.
            mask: the editable region (as ``mask``), or None for the default.
            radius_px: half-side of the squares, pixels (> 0).
            fields: any other spec field (``prompt``, ``sampler``, ``handle_noise``, ...).

        Raises:
            pydantic.ValidationError: malformed points; ValueError: ``radius_px`` not positive.
        """
        if not radius_px > 0:
            raise ValueError(f"radius_px must be positive, got {radius_px}")
        pairs = [p if isinstance(p, PointPair) else PointPair.model_validate(p) for p in points]
        r = float(radius_px)

        def square(xy: Point) -> list[Point]:
            x, y = float(xy[0]), float(xy[1])
            return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]

        polygons = [PolygonPair(handle=square(p.handle), target=square(p.target)) for p in pairs]
        return cls(polygons=polygons, mask=mask, **fields)


def spec_from_sample(
    folder: str | Path, drag_spec: dict[str, Any] | None = None, radius_px: float = DEFAULT_RADIUS_PX
) -> dict[str, Any]:
    """A ``region-drag`` spec dict for a benchmark sample folder.

    With ``meta_data_region.pkl`` (DragBench-SR/DR, as the official ``get_meta_data`` reads it,
    ``region_utils/drag.py:39-59``: prompt, dense alternating points, mask) the dense point list drives the
    edit (read through :func:`dragsdk.safe_pickle.restricted_load`). Otherwise the sample's sparse points
    (``drag_spec``, default :func:`dragsdk.samples.load_sample`) become squares
    (:meth:`RegionDragSpec.from_points`). The sample's mask is the editable mask.

    Raises:
        SpecError: not a sample folder or a malformed pickle; UnsafePickleError: a pickle outside the allow-list.
    """
    f = Path(folder)
    region_pkl = f / "meta_data_region.pkl"
    if region_pkl.is_file():
        meta = restricted_load(region_pkl)
        if not isinstance(meta, dict) or "points" not in meta:
            raise SpecError("meta_data_region.pkl", "expected a dict with 'prompt', 'points' and 'mask'")
        try:
            pts = np.asarray(meta["points"], dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise SpecError(
                "meta_data_region.pkl:points", "expected a flat list of [x, y] pixel points"
            ) from None
        out: dict[str, Any] = {
            "mode": "region-drag",
            "prompt": str(meta.get("prompt", "")).strip(),
            "dense_points": pts.tolist(),
        }
        if meta.get("mask") is not None:
            try:
                mask = np.asarray(meta["mask"])
            except (TypeError, ValueError):
                raise SpecError(
                    "meta_data_region.pkl:mask", "expected an (H, W) array, 1 = editable"
                ) from None
            out["mask"] = mask_to_data_url(mask, "meta_data_region.pkl:mask")
        return out
    if drag_spec is None:
        _, drag_spec = load_sample(f)
    return _from_drag_dict(drag_spec, radius_px)


def _from_drag_dict(spec: dict[str, Any], radius_px: float = DEFAULT_RADIUS_PX) -> dict[str, Any]:
    if not spec.get("points"):
        raise SpecError("points", "a point-drag spec needs points to be converted to regions")
    fields: dict[str, Any] = {"prompt": spec.get("prompt", "")}
    sampler = {
        k: v for k, v in dict(spec.get("sampler") or {}).items() if k in ("steps", "seed", "resolution")
    }
    if sampler:
        fields["sampler"] = sampler
    converted = RegionDragSpec.from_points(spec["points"], spec.get("mask"), radius_px, **fields)
    return converted.model_dump(mode="json", exclude_none=True)


_INTERNAL_NAMES = {
    "handle_vertices": "the handle vertices",
    "target_vertices": "the target vertices",
    "handle_mask": "the handle region",
    "target_mask": "the target region",
    "region_mask": "the region",
}


def _spec_error(field: str, e: ValueError) -> SpecError:
    """A map-building error (:mod:`dragsdk.plugins.region_drag.maps`) re-raised naming the spec field, internal argument names made readable."""
    msg = str(e)
    for internal, readable in _INTERNAL_NAMES.items():
        msg = msg.removeprefix(f"{internal}: ").replace(internal, readable)
    return SpecError(field, msg)


def _which(e: ValueError) -> str:
    msg = str(e)
    if msg.startswith(("handle_vertices", "handle_mask")):
        return ".handle"
    if msg.startswith(("target_vertices", "target_mask")):
        return ".target"
    return ""


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return m
    return F.max_pool2d(m.float()[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] > 0


class RegionDragMode(EditMode[RegionDragSpec]):
    name = "region-drag"
    spec_model = RegionDragSpec
    profiles = REGION_DRAG_PROFILES
    description = "region drag: move regions, polygons or dense point sets (RegionDrag, gradient-free)"
    unsupported_settings = frozenset({"schedule", "sde", "time_travel"})
    ui = ModeUI(  # the browser editor's inputs
        help="Brush a **handle region** and a **target region**, or pick *polygon vertices* and click the handle "
        "polygon's corners, then the target polygon's (3 or 4 each). The mask is optional.",
        order=20,
        regions="regions",
        polygons="polygons",
        mask=MaskUI(name="editable region", label="Editable region (optional)"),
    )

    def working_size(
        self, spec: RegionDragSpec, image_size: tuple[int, int], family: str
    ) -> tuple[int, int] | None:
        """The official working size on SD 1.x: the image's own size, each side floored to a multiple of 8 pixels
        (one latent cell; at least 8). The official evaluation encodes the image as it is (``run_eval.py`` →
        ``drag.py:198`` ``get_img_latent(ori_image, vae)`` with no ``size``, ``cycle_sde.py:61``) and the UI fits
        its long side to 512 for v1-5 with sides ``int(side / 8) · 8`` (``ui.py:10``, ``ui_utils.py:27-32``).
        Other families, and ``working_size: model``: None, the model's default resolution."""
        if spec.options().working_size != "image" or family != "sd1":
            return None
        return max(8, int(image_size[0]) // 8 * 8), max(8, int(image_size[1]) // 8 * 8)

    # -- inputs → one map -------------------------------------------------------------------------------------
    def source_map(
        self, spec: RegionDragSpec, ctx: PlanContext, rules: str | None = None
    ) -> tuple[SourceMap, str]:
        """The merged target → source map on the latent grid and the input kind.

        Raises:
            SpecError: naming the field: a mask of the wrong size or empty, a region covering no latent cell, a
                degenerate or self-intersecting polygon, a point off the image, a map with no target cell.
        """
        smap, kind, _ = self._maps(spec, ctx, rules)
        return smap, kind

    def _maps(
        self, spec: RegionDragSpec, ctx: PlanContext, rules: str | None = None
    ) -> tuple[SourceMap, str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`source_map` and the official point list's sources ``(rows, cols)``: every pair of every input
        (region pair, polygon pair, moved outline, dense point) in the official order with repeats, before the merge
        drops the targets a later pair overwrites (``drag.py:105-109`` noises them all)."""
        canvas = ctx.canvas
        rules = rules or spec.options().map_rules
        maps: list[SourceMap] = []
        if spec.regions is not None:
            kind = "regions"
            for k, pair in enumerate(spec.regions):
                h = ctx.mask(pair.handle, f"regions[{k}].handle")
                t = ctx.mask(pair.target, f"regions[{k}].target")
                try:
                    maps.append(region_pair_map(canvas, h, t, rules=rules))  # type: ignore[arg-type]
                except ValueError as e:
                    raise _spec_error(f"regions[{k}]{_which(e)}", e) from None
        elif spec.polygons is not None:
            kind = "polygons"
            for k, poly in enumerate(spec.polygons):
                _refuse_outside(canvas, poly.handle, f"polygons[{k}].handle")
                _refuse_outside(canvas, poly.target, f"polygons[{k}].target")
                try:
                    maps.append(polygon_map(canvas, poly.handle, poly.target, rules=rules))  # type: ignore[arg-type]
                except ValueError as e:
                    raise _spec_error(f"polygons[{k}]{_which(e)}", e) from None
        elif spec.dense_points is not None:
            kind = "dense_points"
            w, h = canvas.image_size
            for j, xy in enumerate(spec.dense_points):
                if not canvas.contains(xy):
                    raise SpecError(f"dense_points[{j}]", f"({xy[0]}, {xy[1]}) is outside the {w}×{h} image")
            try:
                maps.append(dense_points_map(canvas, spec.dense_points))
            except ValueError as e:
                raise _spec_error("dense_points", e) from None
        else:
            kind = "region + points"
            assert spec.region is not None and spec.points is not None
            ctx.check_points(spec.points)
            region = ctx.mask(spec.region, "region")
            handles = [p.handle for p in spec.points]
            targets = [p.target for p in spec.points]
            try:
                if rules == "official":
                    maps.extend(points_map_parts(canvas, region, handles, targets))
                else:
                    maps.append(points_map(canvas, region, handles, targets, rules=rules))  # type: ignore[arg-type]
            except ValueError as e:
                raise _spec_error("region" if str(e).startswith("region_mask") else "points", e) from None
        smap = maps[0]
        for m in maps[1:]:
            smap = smap.merge(m)
        if len(smap) == 0:
            raise SpecError(kind.split(" ")[0], "the regions leave no target cell on the latent grid")
        if spec.dense_points is not None:
            draw = dense_points_sources(canvas, spec.dense_points)
        else:
            draw = (torch.cat([m.source_rows for m in maps]), torch.cat([m.source_cols for m in maps]))
        return smap, kind, draw

    # -- the plan ---------------------------------------------------------------------------------------------
    def plan(self, spec: RegionDragSpec, ctx: PlanContext) -> EditPlan:
        canvas = ctx.canvas
        opt = spec.options()
        smap, kind, draw = self._maps(spec, ctx, opt.map_rules)
        n = ctx.steps
        grid = opt.time_grid
        if grid != "ddim" and n < MIN_CYCLE_SDE_STEPS:
            raise SpecError(
                "sampler.steps",
                f"RegionDrag's {grid} time grid needs at least {MIN_CYCLE_SDE_STEPS} "
                f"steps, got {n}: at 2 its one inversion step goes past the last "
                "training timestep 999 (the official code fails with an IndexError)",
            )
        if grid == "ddim":
            n_inv = min(n, max(1, round(spec.start_t * n)))
        else:  # official drag.py:126 int(start_t·steps); all n steps would run the UNet past t = 999
            n_inv = min(n - 1, max(1, int(spec.start_t * n)))
        start = n - n_inv
        if opt.copy_window == "official":  # drag.py:137,144: a step count compared with raw timesteps
            min_t = int(spec.end_t * n)
            window = (
                f"latent copy while t ≥ int(end_t·steps) = {min_t} (official: a step count against timesteps)"
            )
        else:
            min_t = int(round(spec.end_t * NUM_TRAIN_TIMESTEPS))
            window = f"latent copy while t ≥ end_t·1000 = {min_t}"
        moved = smap.target_mask() | smap.source_mask()
        notes = [
            f"profile {spec.profile}: " + ", ".join(f"{k}={v}" for k, v in asdict(opt).items()),
            f"region map from {kind}: {len(smap)} target latent cells from {int(smap.source_mask().sum())} source cells",
            f"Cycle-SDE over steps {start}..{n - 1} of {n} ({grid} time grid); {window}",
        ]
        composite_mask = None
        if spec.mask is not None:
            pixel = ctx.mask(spec.mask, "mask")
            if opt.mask_resampling == "nearest":  # drag.py:217-218, F.interpolate's default mode
                gw, gh = canvas.latent_size
                m = torch.as_tensor(pixel, dtype=torch.float32)[None, None]
                edit = F.interpolate(m, size=(gh, gw), mode="nearest")[0, 0] > 0.5
                outside = moved & ~edit
                if bool(outside.any()):
                    notes.append(
                        f"{int(outside.sum())} handle/target latent cells lie outside the mask: the outside "
                        "reset undoes their copy or noise (official behaviour)"
                    )
            else:
                user = canvas.mask_to_grid(pixel, "latent")
                outside = moved & ~user
                if bool(outside.any()):
                    notes.append(
                        f"{int(outside.sum())} handle/target latent cells outside the mask were made editable"
                    )
                edit = user | moved
            if opt.composite_mask == "pixel":
                composite_mask = np.asarray(pixel, dtype=bool)
        elif opt.default_mask == "whole":  # the official UI passes mask = ones (ui_utils.py:109)
            edit = torch.ones(canvas.latent_size[1], canvas.latent_size[0], dtype=torch.bool)
            notes.append("no mask given: the whole image is editable (no outside reset, no composite)")
        else:
            sx, sy = canvas.scale("latent")
            r = max(1, round(spec.mask_margin * max(sx, sy))) if spec.mask_margin > 0 else 0
            edit = _dilate(moved, r)
            notes.append(
                f"no mask given: editable = handle ∪ target regions grown by {spec.mask_margin:g} px ({r} cells)"
            )
        src_rows, src_cols = torch.nonzero(smap.source_mask(), as_tuple=True)
        handle_noise = None
        # rng official: drag.py:105-109, one (C, N) draw over the official point list
        if spec.handle_noise > 0:
            handle_noise = HandleNoise(
                src_rows, src_cols, spec.handle_noise, *(draw if opt.rng == "official" else (None, None))
            )
        if opt.rng == "official":
            notes.append(
                f"rng official: one generator seeded with {spec.sampler.seed} as torch.manual_seed seeds the "
                f"official code, drawn in its order; handle noise over its list of {int(draw[0].numel())} points"
            )
        paste = LatentPaste(smap.target_rows, smap.target_cols, smap.source_rows, smap.source_cols)
        kv_start = max(start, int(math.ceil(spec.sampler.kv_start * n - 1e-9)))
        kv = KVPlan(KVInjection("replace"), kv_start, n) if kv_start < n else None
        schedule, schedule_key = None, "ddim"
        if grid != "ddim":
            first = "official" if grid == "official" else "recorded"
            schedule = partial(RegionDragGrid, start=start, first_step=first)
            schedule_key = f"regiondrag-{first}"
        plan = EditPlan(
            edit_mask=edit,
            composite=spec.composite,
            notes=notes,
            sampling="cycle-sde",
            start_step=start,
            step_pastes=[StepPaste(paste, min_t)],
            follow_outside=True,
            handle_noise=handle_noise,
            kv=kv,
            kv_layers="all",
            schedule=schedule,
            schedule_key=schedule_key,
            composite_mask=composite_mask,
            fidelity=REGION_DRAG_PROFILES.fidelity(spec.profile, opt),
            image_prompt=ImagePromptPlan(
                scale=0.5, inversion=True
            ),  # official IP-Adapter-Plus at every UNet call
        )
        return plan

    # -- CLI helpers ------------------------------------------------------------------------------------------
    def resolve_paths(self, spec: dict[str, Any], base: Path) -> dict[str, Any]:
        """Mask paths in ``regions[k].handle / .target`` joined to ``base``. The top-level ``region`` and ``mask``
        are joined by the caller (:data:`dragsdk.specfile.PATH_KEYS`); joining them here too made a relative spec
        path count twice (``specs/specs/m.png``)."""

        def fix(v: Any) -> Any:
            if isinstance(v, str) and not v.startswith("data:") and not Path(v).is_absolute():
                return str(base / v)
            return v

        out = dict(spec)
        if isinstance(out.get("regions"), list):
            out["regions"] = [
                {k: fix(v) for k, v in r.items()} if isinstance(r, dict) else [fix(v) for v in r]
                for r in out["regions"]
            ]
        return out

    def convert_spec(self, spec: dict[str, Any], sample: Path | None = None) -> dict[str, Any]:
        """A benchmark sample (dense points of ``meta_data_region.pkl`` when present) or a point-drag spec as a
        region-drag spec (:func:`spec_from_sample`, :meth:`RegionDragSpec.from_points`)."""
        if sample is not None:
            return spec_from_sample(sample, spec if spec.get("mode") == "drag" else None)
        if spec.get("mode") == "drag":
            return _from_drag_dict(spec)
        return super().convert_spec(spec, sample)


@hookimpl
def dragsdk_register_modes(register):
    register(RegionDragMode())
