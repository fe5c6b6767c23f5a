"""The edit-mode interface. A mode turns a validated spec into an :class:`~dragsdk.plan.EditPlan`: masks,
latent pastes, K/V injection and energy terms. Modes register through ``dragsdk_register_modes``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from .errors import SpecError
from .fidelity import ProfileTable
from .geometry import Canvas
from .io import load_image, load_mask
from .plan import EditPlan, SDEPlan
from .spec import EditSpec, PointPair, SamplerSettings


@dataclass
class PlanContext:
    """What a mode may use while planning.

    Attributes:
        canvas: the working canvas of the base image.
        image: the base image (RGB, its original size).
        steps: the number of sampling steps.
        images: images already in memory, by the name a spec's image field gives (e.g. the browser UI's preview
            plans a paste whose reference it holds but has not saved); other names are read as paths.
    """

    canvas: Canvas
    image: Image.Image
    steps: int
    suggest_mask: Callable[[tuple[float, float]], np.ndarray] | None = None
    mask_proposed: bool = False
    images: dict[str, Image.Image] = dataclass_field(default_factory=dict)

    def _image(self, ref: object, field: str) -> Image.Image:
        held = self.images.get(ref) if isinstance(ref, str) else None
        try:
            return load_image(held if held is not None else ref, field)  # type: ignore[arg-type]
        except SpecError as e:
            raise SpecError(field, str(e).split(": ", 1)[-1]) from e

    def reference_size(self, ref: object, field: str) -> tuple[int, int]:
        """``(W, H)`` of a reference image as given (before :meth:`load_reference` resizes it), pixels.

        Raises:
            SpecError: missing or unreadable (the field is named).
        """
        return self._image(ref, field).size

    def load_reference(self, ref: object, field: str) -> Image.Image:
        """A reference image resized to the base image's size (DragonDiffusion resizes references to the base).

        Raises:
            SpecError: missing or unreadable (the field is named).
        """
        img = self._image(ref, field)
        return img if img.size == self.image.size else img.resize(self.image.size, Image.Resampling.LANCZOS)

    def reference_mask(self, ref: object, field: str, reference_size: tuple[int, int]) -> np.ndarray:
        """A mask drawn on a reference image, checked against that image and resized to the base size."""
        m = load_mask(ref, field)  # type: ignore[arg-type]
        if m.shape != (reference_size[1], reference_size[0]):
            raise SpecError(
                field,
                f"mask is {m.shape[1]}×{m.shape[0]} pixels, the reference image is "
                f"{reference_size[0]}×{reference_size[1]}",
            )
        if not m.any():
            raise SpecError(field, "mask is empty: it must cover at least one pixel")
        if reference_size != self.image.size:
            m = (
                np.asarray(
                    Image.fromarray(m.astype(np.uint8) * 255).resize(
                        self.image.size, Image.Resampling.NEAREST
                    )
                )
                > 127
            )
        return m

    def object_mask(
        self, ref: object | None, point: tuple[float, float] | None, field: str, notes: list[str]
    ) -> np.ndarray:
        """The given mask, or one proposed from a click on the object (``Editor.suggest_mask``)."""
        if ref is not None:
            return self.mask(ref, field)
        if point is None or self.suggest_mask is None:
            raise SpecError(field, "give a mask, or a point on the object so one can be proposed")
        m = self.suggest_mask(point)
        self.mask_proposed = True
        notes.append(f"mask proposed from the point {tuple(point)} (DIFT-style feature similarity)")
        return m

    def diffeditor(
        self, settings: SamplerSettings, guided: list[int], sde_mask: torch.Tensor
    ) -> dict[str, object]:
        """The regional SDE and time-travel entries of a plan (DiffEditor defaults from the settings).

        A mode need not call this: :func:`apply_sampler_settings` fills the same entries when a plan leaves them
        ``None`` (set ``EditPlan.sde_mask`` for an SDE region other than the edit mask)."""
        n = self.steps
        out: dict[str, object] = {}
        if settings.sde.enabled:
            a, b = settings.sde.window(n)
            out["sde"] = SDEPlan(a, b, settings.sde.eta_inside, settings.sde.eta_outside, sde_mask)
        out["time_travel"] = {
            i: settings.time_travel.repeats for i in settings.time_travel.steps(n) if i in guided
        }
        return out

    def fidelity(
        self,
        table: ProfileTable[Any],
        profile: str | list[str],
        options: object,
        image_prompt_source: Literal["input", "reference"] = "input",
    ) -> dict[str, object]:
        """The plan entries shared by the DragonDiffusion / DiffEditor modes: the plan's
        :class:`~dragsdk.fidelity.Fidelity` from the mode's resolved ``options`` (``table.resolve(profile)``) and
        the image prompt (DiffEditor's IP-Adapter at scale 0.1 on sampling steps 10–19, ``model.py:25``,
        ``attn_proc.py:220-221``; used only when an adapter is loaded)."""
        from .image_prompt import ImagePromptPlan

        return {
            "image_prompt": ImagePromptPlan(scale=0.1, start=10, end=20, source=image_prompt_source),
            "fidelity": table.fidelity(profile, options),
        }

    def mask(self, ref: object, field: str, allow_empty: bool = False) -> np.ndarray:
        """Load a mask reference and check it against the image.

        Returns:
            ``(H, W)`` bool array in image pixels.

        Raises:
            SpecError: unreadable, not the image's size, or empty (unless ``allow_empty``).
        """
        m = load_mask(ref, field)  # type: ignore[arg-type]
        w, h = self.canvas.image_size
        if m.shape != (h, w):
            raise SpecError(field, f"mask is {m.shape[1]}×{m.shape[0]} pixels, the image is {w}×{h}")
        if not allow_empty and not m.any():
            raise SpecError(field, "mask is empty: it must cover at least one pixel")
        return m

    def check_points(self, pairs: list[PointPair], field: str = "points") -> None:
        """Raise :class:`SpecError` naming ``points[k].handle`` / ``.target`` for a point off the image."""
        w, h = self.canvas.image_size
        for k, pair in enumerate(pairs):
            for which, xy in (("handle", pair.handle), ("target", pair.target)):
                if not self.canvas.contains(xy):
                    raise SpecError(
                        f"{field}[{k}].{which}",
                        f"({xy[0]}, {xy[1]}) is outside the {w}×{h} image (0 ≤ x < {w}, 0 ≤ y < {h})",
                    )


# -- the browser editor's description of a mode -----------------------------------------------------------------
@dataclass(frozen=True)
class MaskUI:
    """A mask brushed on the base image in the browser editor's mask editor, sent as a PNG data URL.

    Attributes:
        field: the spec field it fills (a :data:`~dragsdk.spec.MaskRef`).
        name: what the page's messages call it (``"object mask"``: "the object mask is empty: brush over it ...");
            empty: the field's name.
        label: the editor's label; empty: ``"<Name>: brush it"``, with ``" (optional)"`` when not required.
        required: whether a run needs it; None: as the spec schema says (required when the field has no default).
    """

    field: str = "mask"
    name: str = ""
    label: str = ""
    required: bool | None = None


@dataclass(frozen=True)
class ReferenceUI:
    """A reference image uploaded in the browser editor's reference editor, a mask brushed on it and its prompt.

    Attributes:
        image: the spec field naming the reference image's file (the page saves the upload as the run's
            ``reference.png`` and names it there; the downloaded spec names ``reference.png``).
        mask: the spec field of the mask brushed on the reference (in the reference's pixels).
        prompt: the spec field of the "Reference prompt" box, or None (no box).
    """

    image: str = "reference"
    mask: str = "reference_mask"
    prompt: str | None = "reference_prompt"


@dataclass(frozen=True)
class PlacementUI:
    """A click on the base image saying where the object's centre goes: the page writes the shift fields so that
    the placed object's centroid lands under the click, and previews the placement drawn from the mode's own plan
    (its edit mask and latent pastes).

    Attributes:
        dx, dy: the shift fields, image pixels.
        object: whose centroid is placed: ``"mask"`` (the :class:`MaskUI` mask on the base image) or
            ``"reference"`` (the :class:`ReferenceUI` mask, brought to the base image's size).
        required: whether a run needs the click (without one the shift stays at its default).
        about: how the mode places the object, with ``c`` its centroid, ``C`` the image centre, ``s`` the scale
            and ``d`` the shift: ``"centroid"`` ``c' = c + d`` (scaled or rotated about its own centroid);
            ``"image-centre"`` ``c' = C + s·(c − C) + d`` (scaled about the image centre, then shifted);
            ``"image-centre-scaled-shift"`` ``c' = C + s·(c − C + d)`` (the shift scaled too). When the mode's
            profile table has a ``placement`` option and the spec's profile resolves it to ``"centroid"``, the
            ``"centroid"`` rule is used.
    """

    dx: str = "dx"
    dy: str = "dy"
    object: Literal["mask", "reference"] = "mask"
    required: bool = True
    about: Literal["centroid", "image-centre", "image-centre-scaled-shift"] = "centroid"


@dataclass(frozen=True)
class ModeUI:
    """How the browser editor (``dragsdk ui``) offers a mode: which of the page's inputs it uses and the spec field
    each one fills (:attr:`EditMode.ui`). A mode without one still appears, with a description derived from its spec
    schema (``docs/ui.md``). The types, bounds and defaults of ``fields`` come from the spec's JSON Schema.

    Attributes:
        help: the line under the mode selector (Markdown): what to click and brush; empty: one made from the inputs.
        order: place in the page's mode selector, lowest first (ties by name); the first is selected at start.
        points: the spec field filled by handle → target clicks (a list of ``PointPair``; clicks alternate handle,
            target).
        polygons: the spec field filled by polygon pairs clicked corner by corner (3 or 4 handle vertices, then as
            many target vertices: ``[{"handle": [[x, y], ...], "target": [...]}]``).
        regions: the spec field filled by a brushed handle region and target region
            (``[{"handle": mask, "target": mask}]``); with ``polygons`` too, the page offers the choice.
        mask: the base image's mask editor (:class:`MaskUI`), or None: hidden.
        reference: the reference image editor (:class:`ReferenceUI`), or None: hidden.
        placement: a click for the object's new centre (:class:`PlacementUI`), or None.
        scale: the spec field of the "Scale of the object" slider (0.1 to the field's maximum, at most 2), or None.
        fields: further spec fields offered as settings controls built from the schema: numbers and whole numbers
            as boxes showing the range and default, booleans as check boxes, string choices as drop-downs.

    Raises:
        ValueError: more than one click input (``points``, ``polygons``, ``placement``), or a placement whose object
            has no input.
    """

    help: str = ""
    order: int = 100
    points: str | None = None
    polygons: str | None = None
    regions: str | None = None
    mask: MaskUI | None = None
    reference: ReferenceUI | None = None
    placement: PlacementUI | None = None
    scale: str | None = None
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        clicks = [n for n in ("points", "polygons", "placement") if getattr(self, n) is not None]
        if len(clicks) > 1:
            raise ValueError(f"ModeUI: at most one click input, got {' and '.join(clicks)}")
        p = self.placement
        if p is not None and getattr(self, p.object) is None:
            raise ValueError(
                f"ModeUI: the placement's object is the {p.object}, but there is no {p.object} input"
            )
        if isinstance(self.fields, str):
            raise ValueError(f"ModeUI: fields is a tuple of field names, got the string {self.fields!r}")

    def field_names(self) -> list[str]:
        """Every spec field the description names (the registry checks each is a field of the mode's spec)."""
        names = [self.points, self.polygons, self.regions, self.scale, *self.fields]
        if self.mask is not None:
            names.append(self.mask.field)
        if self.reference is not None:
            names += [self.reference.image, self.reference.mask, self.reference.prompt]
        if self.placement is not None:
            names += [self.placement.dx, self.placement.dy]
        return [n for n in names if n is not None]


SpecT = TypeVar("SpecT", bound=EditSpec)
"""The spec type of a mode (:class:`EditMode` is generic in it)."""


class EditMode(ABC, Generic[SpecT]):
    """Base class of edit modes.

    Attributes:
        name: the ``mode`` value of its specs.
        spec_model: its pydantic spec model (a subclass of :class:`~dragsdk.spec.EditSpec`).
        description: one line for ``dragsdk modes``.
    """

    name: str = ""
    spec_model: type[SpecT] = EditSpec  # type: ignore[assignment]
    description: str = ""
    profiles: ProfileTable[Any] | None = None
    """The mode's fidelity profiles (:class:`~dragsdk.fidelity.ProfileTable`), or None for a mode without an
    official code to reproduce; read by the docs, the browser editor and ``dragsdk modes --json``."""
    ui: ModeUI | None = None
    """How the browser editor offers the mode (:class:`ModeUI`); None: a description derived from its spec schema."""
    unsupported_settings: frozenset[str] = frozenset()
    """Fields of :class:`~dragsdk.spec.SamplerSettings` this mode cannot honour (e.g. ``{"sde"}``); a spec that
    sets one to a value other than its default is refused naming ``sampler.FIELD`` (:func:`check_settings`)."""

    @abstractmethod
    def plan(self, spec: SpecT, ctx: PlanContext) -> EditPlan:
        """Build the plan of ``spec`` on ``ctx.canvas``.

        Raises:
            SpecError: geometry that does not fit the image (the field is named).
        """

    def describe(self) -> dict[str, object]:
        """The mode for ``dragsdk modes --json``: name, description, spec schema, unsupported settings, its fidelity
        profile table (each option's official and ``dragsdk`` value, improvement name and help; empty without one)
        and its browser-editor description (:class:`ModeUI` as a dict; None: derived from the schema)."""
        rows = self.profiles.rows() if self.profiles is not None else []
        profiles = [
            {"option": o, "improvement": i, "official": a, "dragsdk": b, "help": h} for o, i, a, b, h in rows
        ]
        return {
            "name": self.name,
            "description": self.description,
            "schema": self.spec_model.model_json_schema(),
            "unsupported_settings": sorted(self.unsupported_settings),
            "profiles": profiles,
            "ui": asdict(self.ui) if self.ui is not None else None,
        }

    def working_size(self, spec: SpecT, image_size: tuple[int, int], family: str) -> tuple[int, int] | None:
        """The working size this mode's profile edits ``spec`` at when the spec sets no ``sampler.resolution``
        (an explicit resolution always wins, :func:`working_canvas`).

        Args:
            spec: the validated spec.
            image_size: ``(W, H)`` of the user's image, pixels.
            family: the model family, ``sd1``, ``sd2`` or ``sdxl`` (:mod:`dragsdk.families`).

        Returns:
            ``(W', H')`` in pixels, each a positive multiple of 8 (one latent cell), e.g. the image's own size where
            the official code edits at it (region-drag on SD 1.x); None (the default): the model family's rule,
            :meth:`Canvas.fit` at its default resolution (area ≈ resolution², sides multiples of 64: DragonDiffusion's
            ``resize_numpy_image``, ``src/utils/utils.py:7-19``, max area 768² on SD 1.x).
        """
        return None

    def resolve_paths(self, spec: dict[str, object], base: Path) -> dict[str, object]:
        """Make file references of a spec read from a file in ``base`` absolute (the CLI calls this; the top-level
        ``mask`` is already resolved). Default: the spec unchanged."""
        return spec

    def convert_spec(self, spec: dict[str, object], sample: Path | None = None) -> dict[str, object]:
        """Turn a spec of another mode (e.g. the point-drag spec of a benchmark sample) into one of this mode.

        Args:
            spec: the other mode's spec as a dict (``mode`` names it).
            sample: the benchmark sample folder the spec was read from, if any (a mode may read more files).

        Raises:
            SpecError: (field ``mode``) this mode cannot convert it (the default).
        """
        raise SpecError(
            "mode", f"mode {self.name!r} cannot run a {spec.get('mode')!r} spec; give a {self.name!r} spec"
        )


def working_canvas(
    mode: EditMode[Any],
    spec: EditSpec,
    image_size: tuple[int, int],
    family: str | None,
    default_resolution: int | None,
) -> Canvas | None:
    """The canvas an edit of ``spec`` on an image of ``image_size`` runs on, in this order: the spec's
    ``sampler.resolution`` when given (:meth:`Canvas.fit`: area ≈ resolution², sides multiples of 64); else the
    mode's own rule (:meth:`EditMode.working_size`, when ``family`` is known); else :meth:`Canvas.fit` at the model
    family's ``default_resolution``; None when that is unknown too (a planner before the model loads).

    Raises:
        SpecError: (``sampler.resolution``) a mode's working size that is not a positive multiple of 8 pixels.
    """
    s = spec.sampler
    if "resolution" in s.model_fields_set:
        return Canvas.fit(image_size, s.resolution)
    own = mode.working_size(spec, image_size, family) if family is not None else None
    if own is not None:
        w, h = (int(v) for v in own)
        if w <= 0 or h <= 0 or w % 8 or h % 8:
            raise SpecError(
                "sampler.resolution",
                f"mode {mode.name!r} asked for a working size of {own}; sides must be positive multiples of 8 "
                "pixels: give sampler.resolution",
            )
        return Canvas((int(image_size[0]), int(image_size[1])), (w, h))
    return Canvas.fit(image_size, default_resolution) if default_resolution is not None else None


APPLIED_SETTINGS = ("schedule", "kv_start", "sde", "time_travel")
"""The :class:`~dragsdk.spec.SamplerSettings` fields :func:`apply_sampler_settings` puts into a plan; the Editor
applies the others (``steps``, ``guidance_scale``, ``seed``, ``resolution``) to every mode itself."""


def check_settings(mode: EditMode, spec: EditSpec) -> None:
    """Refuse a spec that sets a sampler field its mode declares it cannot honour.

    A field counts as set when the spec gives it explicitly with a value other than the default of the mode's
    sampler model (so a host may always send the defaults).

    Raises:
        SpecError: (field ``sampler.NAME``) the mode cannot honour it.
        ValueError: the mode declares a name that is not a ``SamplerSettings`` field (an authoring error).
    """
    sampler = spec.sampler
    fields = type(sampler).model_fields
    defaults = type(sampler)()
    for name in sorted(mode.unsupported_settings):
        if name not in fields:
            raise ValueError(
                f"mode {mode.name!r} declares unsupported_settings {name!r}, which is not a sampler "
                f"field; expected one of {sorted(fields)}"
            )
        if name in sampler.model_fields_set and getattr(sampler, name) != getattr(defaults, name):
            raise SpecError(
                f"sampler.{name}",
                f"mode {mode.name!r} cannot honour this setting; leave it out (its default applies)",
            )


def apply_sampler_settings(plan: EditPlan, spec: EditSpec, mode: EditMode, steps: int) -> EditPlan:
    """Fill every plan entry the mode left ``None`` from the spec, so each sampler setting takes effect for every
    mode without the mode doing anything. Entries the mode set are kept; settings in ``mode.unsupported_settings``
    are not applied.

    - ``guided_steps`` ← ``sampler.schedule.steps(n)`` (empty when ``schedule`` is unsupported);
    - ``kv.start`` ← ``round(sampler.kv_start · n)``, ``kv.end`` ← ``n``;
    - ``sde`` ← ``sampler.sde`` (window, η inside / outside) on ``plan.sde_mask`` (default the edit mask), or none
      when disabled (DiffEditor regional SDE, arXiv 2402.02583 §3.3);
    - ``time_travel`` ← ``sampler.time_travel.repeats`` on its steps that are guided (DiffEditor Alg. 1);
    - ``energy_scale`` / ``guidance_step`` ← the spec's fields of those names (0 when it has none).

    Returns:
        a new plan; ``plan`` itself is not changed.
    """
    s, n, skip = spec.sampler, steps, mode.unsupported_settings
    updates: dict[str, object] = {}
    for name in ("energy_scale", "guidance_step"):
        if getattr(plan, name) is None:
            updates[name] = float(getattr(spec, name, 0.0))
    guided = plan.guided_steps
    if guided is None:
        guided = [] if "schedule" in skip else s.schedule.steps(n)
        updates["guided_steps"] = guided
    if plan.kv is not None and (plan.kv.start is None or plan.kv.end is None):
        start = plan.kv.start
        if start is None:
            start = 0 if "kv_start" in skip else int(round(s.kv_start * n))
        updates["kv"] = replace(plan.kv, start=start, end=n if plan.kv.end is None else plan.kv.end)
    if plan.sde is None and "sde" not in skip and s.sde.enabled:
        a, b = s.sde.window(n)
        updates["sde"] = SDEPlan(a, b, s.sde.eta_inside, s.sde.eta_outside, plan.sde_mask)
    if plan.time_travel is None:
        updates["time_travel"] = (
            {}
            if "time_travel" in skip
            else {i: s.time_travel.repeats for i in s.time_travel.steps(n) if i in guided}
        )
    return replace(plan, **updates)  # type: ignore[arg-type]


def build_plan(mode: EditMode, spec: EditSpec, ctx: PlanContext) -> EditPlan:
    """The engine's plan of an edit: :func:`check_settings`, ``mode.plan``, then :func:`apply_sampler_settings`.

    Raises:
        SpecError: an unsupported sampler setting, or the mode's own refusals (the field is named).
    """
    check_settings(mode, spec)
    return apply_sampler_settings(mode.plan(spec, ctx), spec, mode, ctx.steps)
