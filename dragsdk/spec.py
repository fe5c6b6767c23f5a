"""Edit specs: pydantic v2 models, one per mode, discriminated by ``mode``.

Geometry is in the pixel coordinates of the image the user gave (``x`` right, ``y`` down). Masks are a PNG
path or a ``data:image/png;base64,...`` URL (a spec can carry its mask inside the JSON); the Python API also
takes a PIL image or an ``(H, W)`` array, stored as a data URL. A spec with only the geometry is a complete
edit: every sampler setting has the published default (the DragonDiffusion / DiffEditor code defaults of
MC-E/DragonDiffusion @f9b5bdf: ``src/models/Sampler.py``, ``src/demo/demo.py``).

Specs round-trip through JSON (``model_dump_json`` / :func:`parse_spec`) and export a JSON Schema
(``model_json_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .fidelity import ALL_IMPROVEMENTS as _ALL_IMPROVEMENTS
from .fidelity import OFFICIAL as _OFFICIAL
from .fidelity import ProfileTable, option
from .io import mask_to_data_url
from .keys import inverts, no_inversion

COORDINATE_LIMIT = 100_000.0
"""Largest ``|x|`` or ``|y|`` of a point, and of a displacement (``dx``, ``dy``), in image pixels."""
WEIGHT_LIMIT = 100.0
"""Largest energy weight (``weights.*``; the published defaults are 0.2–12)."""
ENERGY_UNIT = 1000.0
"""The unit of ``energy_scale``: λ, the multiplier of the energy gradient, is ``ENERGY_UNIT · energy_scale``. A spec
and a plan hold the same number (the DragonDiffusion UI's "energy" value, e.g. 2 for drag = λ 2000); only the
sampler multiplies by the unit."""
ENERGY_SCALE_LIMIT = 100.0
"""Largest ``energy_scale`` (in units of :data:`ENERGY_UNIT`; the published defaults are 0.5–3)."""
GUIDANCE_STEP_LIMIT = 1.0
"""Largest ``guidance_step`` c (the published defaults are 0.04 and 0.08)."""
SEED_MAX = 2**64 - 1
"""Largest ``sampler.seed``: what ``torch.Generator.manual_seed`` accepts (an unsigned 64-bit integer)."""

# The profile names live in dragsdk.fidelity (one mechanism for every mode); re-exported here for old imports.
OFFICIAL = _OFFICIAL
ALL_IMPROVEMENTS = _ALL_IMPROVEMENTS


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Coordinate = Annotated[
    float,
    Field(ge=-COORDINATE_LIMIT, le=COORDINATE_LIMIT, allow_inf_nan=False),
    BeforeValidator(_not_a_bool),
]
"""A finite pixel coordinate or displacement in ``[-COORDINATE_LIMIT, COORDINATE_LIMIT]``; booleans are refused."""

Point = tuple[Coordinate, Coordinate]

MAX_POINT_PAIRS = 4096
"""Most handle → target pairs in a list of point pairs (``points`` of drag and region-drag) or of polygon pairs
(region-drag ``polygons``). Published inputs hold 1–20 pairs (DragBench 349 pairs over 205 images); each pair adds
energy or map work, so a longer list is a mistake or an attack, refused before its items are validated."""
MAX_DENSE_POINTS = 2 * (2048 // 8) ** 2
"""Most entries of a dense ``[h0, t0, h1, t1, ...]`` list (region-drag ``dense_points``, the DragBench-SR/DR
``meta_data_region.pkl`` format): one pair per latent cell of the largest working canvas (resolution 2048, 256×256
cells), 131072 points. RegionDrag builds the list on the 1/8 latent grid, one pair per covered cell
(``utils/ui_utils.py`` ``region_pair_to_pts``), so a longer one repeats cells (the last pair wins); a region pair
on a 512×384 DragBench image gives about a hundred."""
MAX_REGION_PAIRS = 64
"""Most handle / target region pairs (region-drag ``regions``): each pair is two masks of the image's size held in
memory."""


def list_cap(limit: int, unit: str) -> Any:
    """A before-validator refusing a list (or tuple) longer than ``limit``, before its items are validated, with
    ``"N <unit>, more than the limit of <limit>"`` (pydantic names the field); use with ``max_length=limit`` on the
    field so the JSON Schema has ``maxItems``."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) > limit:
            raise ValueError(f"{len(value)} {unit}, more than the limit of {limit}")
        return value

    return BeforeValidator(check)


def weight_field(default: float, description: str = "") -> Any:
    """A bounded energy-weight field: finite, ``0 ≤ w ≤ WEIGHT_LIMIT``."""
    return Field(default, ge=0.0, le=WEIGHT_LIMIT, description=description or None)


ENERGY_SCALE_UNIT_TEXT = "unit: 1000 × λ, the energy-gradient multiplier (DragonDiffusion UI 'energy')"


def energy_scale_field(default: float, description: str = "scale of the energy gradient") -> Any:
    """The ``energy_scale`` field: finite, ``0 ≤ energy_scale ≤ ENERGY_SCALE_LIMIT``, in units of
    :data:`ENERGY_UNIT` (λ = 1000 · energy_scale). The unit is appended to the description and stated in the
    JSON Schema as ``"unit"``."""
    return Field(
        default,
        ge=0.0,
        le=ENERGY_SCALE_LIMIT,
        description=f"{description}; {ENERGY_SCALE_UNIT_TEXT}",
        json_schema_extra={"unit": "1000·λ"},
    )


def guidance_step_field(default: float, description: str = "c, multiplier of λ·∇E") -> Any:
    """The ``guidance_step`` field: finite, ``0 ≤ c ≤ GUIDANCE_STEP_LIMIT``."""
    return Field(default, ge=0.0, le=GUIDANCE_STEP_LIMIT, description=description)


def displacement_field(description: str) -> Any:
    """A ``dx`` / ``dy`` field in image pixels, default 0, within ``±COORDINATE_LIMIT``."""
    return Field(0.0, description=description)


def _bounds(schema: dict[str, Any]) -> tuple[Any, Any] | None:
    """``(lowest, highest)`` of a number schema, of the items of an array of numbers, or of a nullable number."""
    for key in ("anyOf", "prefixItems"):
        for sub in schema.get(key, []):
            if (b := _bounds(sub)) is not None:
                return b
    if isinstance(schema.get("items"), dict):
        return _bounds(schema["items"])
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    return None if lo is None and hi is None else (lo, hi)


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _describe_bounds(schema: dict[str, Any], cls: type) -> None:
    """Append each numeric property's allowed range to its schema description, e.g. ``"… [0, 100]"``."""
    for prop in schema.get("properties", {}).values():
        b = _bounds(prop)
        if b is not None:
            lo, hi = ("−∞" if b[0] is None else _number(b[0])), ("∞" if b[1] is None else _number(b[1]))
            prop["description"] = f"{prop.get('description', '')} [{lo}, {hi}]".strip()


class SpecModel(BaseModel):
    """Base of every spec model and sub-model: unknown fields are refused, and so are NaN and ±inf in every float
    field (``allow_inf_nan=False``), whether from Python or from the JSON literals ``NaN`` / ``Infinity``. The JSON
    Schema of each numeric field states its range in the description as well as in ``minimum`` / ``maximum``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_describe_bounds)


class GuidanceSchedule(SpecModel):
    """Which sampling steps take energy guidance, as fractions of the step count.

    Published schedule at 50 steps (DragonDiffusion/DiffEditor ``src/models/Sampler.py:74``): every step
    ``i < 10``, then even steps up to ``i < 30``. With ``n`` steps, step ``i`` is guided when
    ``i < end·n`` and (``i < dense_end·n`` or ``i % stride == 0``).
    """

    end: float = Field(0.6, ge=0.0, le=1.0, description="guidance stops at this fraction of the steps")
    dense_end: float = Field(0.2, ge=0.0, le=1.0, description="every step is guided before this fraction")
    stride: int = Field(2, ge=1, description="after dense_end, every stride-th step is guided")

    def steps(self, n: int) -> list[int]:
        """The guided step indices for ``n`` sampling steps."""
        return [i for i in range(n) if i < self.end * n and (i < self.dense_end * n or i % self.stride == 0)]


class RegionalSDE(SpecModel):
    """DiffEditor regional SDE (arXiv 2402.02583 §3.3): stochastic steps with η inside / outside the edit region.

    Official code defaults (DragonDiffusion ``src/models/Sampler.py:98-105``): steps 11–19 of 50
    (``start ≤ i/n < end``), η 0.4 inside, 0 outside; the paper's 0.2 outside is a setting. ``enabled=False``
    gives deterministic DDIM everywhere.
    """

    enabled: bool = True
    start: float = Field(0.22, ge=0.0, le=1.0, description="first step as a fraction of the steps (11/50)")
    end: float = Field(0.4, ge=0.0, le=1.0, description="end (exclusive) as a fraction of the steps (20/50)")
    eta_inside: float = Field(0.4, ge=0.0, le=1.0, description="η inside the edit region")
    eta_outside: float = Field(0.0, ge=0.0, le=1.0, description="η outside it (paper: 0.2)")

    def window(self, n: int) -> tuple[int, int]:
        return int(round(self.start * n)), int(round(self.end * n))


class TimeTravel(SpecModel):
    """DiffEditor time travel (arXiv 2402.02583 Alg. 1): a guided step is repeated ``repeats`` times, each pass
    after the first starting from a deterministic DDIM roll-back of the previous pass's result.

    Code defaults: steps 22, 24, 26, 28 of 50 (``start ≤ i/n < end`` and ``i % stride == 0``), 3 passes. Only
    ``repeats − 1`` roll-backs run: the official code's last roll-back of each repeat is wasted work.
    """

    enabled: bool = True
    start: float = Field(0.44, ge=0.0, le=1.0, description="first step as a fraction of the steps (22/50)")
    end: float = Field(0.6, ge=0.0, le=1.0, description="end (exclusive) as a fraction of the steps (30/50)")
    stride: int = Field(2, ge=1)
    repeats: int = Field(3, ge=1, le=10, description="passes per repeated step (U)")

    def steps(self, n: int) -> list[int]:
        if not self.enabled or self.repeats < 2:
            return []
        return [i for i in range(n) if self.start * n <= i < self.end * n and i % self.stride == 0]


class SamplerSettings(SpecModel):
    """Settings shared by every mode, with the published defaults (DragonDiffusion / DiffEditor code:
    ``src/models/Sampler.py:21,74,98-101``, UI ``src/demo/demo.py:475-513``)."""

    steps: Annotated[int, inverts("steps")] = Field(
        50, ge=2, le=1000, description="DDIM inversion and sampling steps"
    )
    guidance_scale: Annotated[float, no_inversion()] = Field(
        4.0, ge=1.0, le=30.0, description="classifier-free guidance scale"
    )
    seed: Annotated[int, inverts("cycle_seed, vae_seed: a stochastic inversion or a sampled VAE latent")] = (
        Field(42, ge=0, le=SEED_MAX, description="seed of every random draw of the edit")
    )
    resolution: Annotated[int, inverts("working_size")] = Field(
        768,
        ge=64,
        le=2048,
        description="when given: working area ≈ resolution² pixels, sides multiples of 64; when not: the mode's working size, else the model family's default (768 on SD 1.x)",
    )
    schedule: Annotated[GuidanceSchedule, inverts("feature_steps: plan.guided_steps")] = Field(
        default_factory=GuidanceSchedule
    )
    kv_start: Annotated[float, inverts("kv_steps: plan.kv")] = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="cross-branch K/V injection starts at this fraction of the steps (5/50)",
    )
    sde: Annotated[RegionalSDE, no_inversion()] = Field(default_factory=RegionalSDE)
    time_travel: Annotated[TimeTravel, no_inversion()] = Field(default_factory=TimeTravel)


class EditSpec(SpecModel):
    """Fields common to every mode. A mode's spec subclasses this and fixes ``mode`` to a literal."""

    mode: Annotated[str, inverts("through the plan the mode builds")]
    prompt: Annotated[str, inverts("prompt")] = Field(
        "", description="text describing the image (used for inversion and sampling)"
    )
    negative_prompt: Annotated[str, no_inversion()] = Field(
        "", description="the unconditional prompt of classifier-free guidance"
    )
    sampler: Annotated[SamplerSettings, inverts("through its own fields")] = Field(
        default_factory=SamplerSettings
    )

    @field_validator("sampler", mode="before")
    @classmethod
    def _keep_mode_sampler_defaults(cls, value: Any) -> Any:
        """A partial ``sampler`` block keeps the mode's own sampler defaults (appearance: guidance 5) for the
        settings it does not name, instead of falling back to :class:`SamplerSettings`' shared defaults: a spec
        ``{"sampler": {"steps": 30}}``, the CLI's ``--steps / --seed / --resolution`` and the UI's settings only
        change what they name."""
        factory = cls.model_fields["sampler"].default_factory
        if factory is None:
            return value
        if isinstance(value, SamplerSettings):
            given = value.model_dump(exclude_unset=True)
        elif isinstance(value, dict):
            given = value
        else:
            return value
        base = factory()  # type: ignore[call-arg]
        defaults = base.model_dump(exclude_unset=True) if isinstance(base, SamplerSettings) else {}
        missing = {k: v for k, v in defaults.items() if k not in given}
        if not missing:
            return value
        return {**missing, **given}


def _as_mask_ref(value: Any) -> Any:
    if isinstance(value, Image.Image | np.ndarray):
        return mask_to_data_url(value)
    return value


MaskInput = str | np.ndarray | Image.Image
"""What a mask may be given as: a PNG path, a ``data:image/png;base64,...`` URL, a PIL image or an ``(H, W)``
array (nonzero, or > 0.5 for floats, = inside)."""

MaskRef = Annotated[str, BeforeValidator(_as_mask_ref)]
"""A spec field type for a mask: accepts any :data:`MaskInput` and stores a path or a data URL (so the spec stays
JSON; the JSON Schema type is ``string``). Use as ``mask: MaskRef`` or ``mask: MaskRef | None = mask_field(...)``;
read it with :func:`dragsdk.authoring.load_mask` or ``ctx.mask(spec.mask, "mask")`` (which also checks the image
size)."""


class PointPair(SpecModel):
    """One handle → target pair in image pixels. Also accepted as ``((hx, hy), (tx, ty))``."""

    handle: Point
    target: Point

    @model_validator(mode="before")
    @classmethod
    def _from_sequence(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"handle": value[0], "target": value[1]}
        return value


@dataclass(frozen=True)
class DiffEditorOptions:
    """The fidelity options every DragonDiffusion / DiffEditor mode has (``docs/modes/dragondiffusion.md``); each
    field's default is the official code's behaviour (:mod:`dragsdk.fidelity`)."""

    guidance_features: Literal["inverted", "recorded"] = option(
        "inverted",
        "recorded",
        "guidance features F(z_{t_{i+1}}, t_i) recorded during inversion instead of "
        "F(z_{t_i}, t_i) recomputed (saves one truncated no-grad forward per guided step; one DDIM step off)",
        improvement="recorded-guidance",
        aliases=("recorded-reference",),
    )
    mask_resampling: Literal["nearest", "area"] = option(
        "nearest",
        "area",
        "masks rasterised by >= 50 % area coverage instead of nearest (top-left pixel) sampling (the composite "
        "K/V key masks of appearance / paste too)",
        improvement="area-masks",
    )
    rollback_at: Literal["prev", "t"] = option(
        "prev",
        "t",
        "time-travel roll-back UNet evaluated at t (as in the inversion) instead of t_prev",
        improvement="rollback-at-t",
    )


@dataclass(frozen=True)
class ReferenceOptions(DiffEditorOptions):
    """The options of the modes with a reference image (appearance, paste)."""

    reference_prompt: Literal["base", "own"] = option(
        "base",
        "own",
        "the reference image's features computed with its own prompt (the one it is inverted "
        "with) instead of the base prompt the official code uses for both rows",
        improvement="own-reference-prompt",
    )
    text_context: Literal["text+image", "text"] = option(
        "text+image",
        "text",
        "the text cross-attention sees the prompt's 77 tokens only, instead of the official context that also "
        "holds the base image's 64 image-prompt tokens (zeros without an IP-Adapter), left in it because the "
        "official IP-Adapter processor splits off only the last 64 of the 2x64 appended",
        improvement="text-only-context",
    )


DIFFEDITOR_PROFILES = ProfileTable(DiffEditorOptions)
"""The profile table shared by every DragonDiffusion / DiffEditor mode."""
REFERENCE_PROFILES = ProfileTable(ReferenceOptions)
"""The profile table of the modes with a reference image (appearance; paste extends its options)."""

DIFFEDITOR_IMPROVEMENTS = DIFFEDITOR_PROFILES.improvements
"""Improvement name → help of every DragonDiffusion / DiffEditor mode (derived from :class:`DiffEditorOptions`)."""
REFERENCE_IMPROVEMENTS = REFERENCE_PROFILES.improvements


_MOVED = {"spec_from_json": "dragsdk.specfile"}
"""Names that moved to a higher module; still importable from here (imported on first use)."""

_MOVED_TO_DRAG = ("DragSpec", "DragWeights", "DragOptions", "DRAG_PROFILES", "DRAG_IMPROVEMENTS")
"""Names that moved beside the drag mode (:mod:`dragsdk.plugins.drag`); still importable from here."""


def __getattr__(name: str) -> Any:
    """``dragsdk.spec.DragSpec`` and the other drag names: they live in :mod:`dragsdk.plugins.drag` (a mode's spec
    lives beside its mode); imported on first use so that the core never imports a plugin at import time."""
    import importlib

    if name in _MOVED_TO_DRAG:
        return getattr(importlib.import_module("dragsdk.plugins.drag"), name)
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def loads_spec_json(text: str | bytes) -> Any:
    """Parse spec JSON, refusing the non-standard literals ``NaN``, ``Infinity`` and ``-Infinity`` that Python's
    ``json`` accepts (RFC 8259 has no such numbers), and text longer than a spec file may be
    (:func:`dragsdk.io.max_sample_bytes`: ``DRAGSDK_MAX_SAMPLE_MB``, default 32 MiB; characters of a str, bytes of
    bytes), refused before it is parsed.

    Raises:
        SpecError: (field ``spec``) too long, one of those literals, or text that is not JSON (the position is
            named).
    """
    from .errors import SpecError
    from .io import MAX_SAMPLE_MB_ENV, max_sample_bytes, parse_json

    cap = max_sample_bytes()
    if len(text) > cap:
        unit = "bytes" if isinstance(text, bytes) else "characters"
        raise SpecError(
            "spec",
            f"the JSON text is {len(text)} {unit} long, more than the limit of {cap} "
            f"({cap / 2**20:g} MiB; raise it with {MAX_SAMPLE_MB_ENV})",
        )
    return parse_json(text, "spec", allow_nan=False)
