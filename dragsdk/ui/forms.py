"""Every registered mode as the browser editor offers it, free of Gradio.

A mode declares what the page's inputs mean for it in :attr:`dragsdk.modes.EditMode.ui` (a
:class:`~dragsdk.modes.ModeUI`); a mode without one gets a description derived from its spec schema
(:func:`derive_ui`). Its settings controls are built from the spec's JSON Schema (:class:`FieldControl`), and the
required fields no input of the page fills are listed (:attr:`PageMode.missing`), so a mode is always listed and
the page says what it cannot offer instead of failing.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

from dragsdk.modes import EditMode, MaskUI, ModeUI
from dragsdk.spec import MaskRef, PointPair

BASE_FIELDS = ("mode", "prompt", "negative_prompt", "sampler")
"""Spec fields every mode has (:class:`~dragsdk.spec.EditSpec`): the prompt box and the settings fill ``prompt`` and
``sampler``; they are never offered as a mode's own controls."""

REGION_INPUTS = ("brush regions", "polygon vertices")
"""The choice the page offers a mode with both ``regions`` and ``polygons`` inputs."""

_MASK_VALIDATORS = tuple(MaskRef.__metadata__)


@dataclass(frozen=True)
class FieldControl:
    """A settings control of one spec field, built from its JSON Schema.

    Attributes:
        name: the spec field.
        kind: ``number`` and ``integer`` (a text box: empty = the default), ``boolean`` (a check box), ``choice``
            (a drop-down of string values).
        label: the control's label.
        info: the field's description (with its range, as the schema states it).
        default: the field's default (None when required or without one).
        required: the spec needs a value.
        choices: the values of a ``choice``.
    """

    name: str
    kind: Literal["number", "integer", "boolean", "choice"]
    label: str
    info: str = ""
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()

    @property
    def placeholder(self) -> str:
        return "required" if self.required else f"default {self.default}"


@dataclass(frozen=True)
class PageMode:
    """One mode as the page offers it.

    Attributes:
        name: the mode's name (its specs' ``mode``).
        ui: its UI description: declared by the mode, or derived from its schema (``declared`` False).
        controls: its settings controls (``ui.fields`` the page can offer).
        missing: required spec fields no input of the page fills: a run is refused naming them.
        defaults_only: optional fields of a mode without a UI description that the page leaves at their defaults.
        help: the line shown under the mode selector.
        mask_label, mask_required: the mask editor's label and whether a run needs the mask.
        scale_max: the top of the scale slider.
        mode: the :class:`~dragsdk.modes.EditMode` itself.
    """

    name: str
    ui: ModeUI
    declared: bool
    controls: tuple[FieldControl, ...] = ()
    missing: tuple[str, ...] = ()
    defaults_only: tuple[str, ...] = ()
    help: str = ""
    mask_label: str = ""
    mask_required: bool = False
    scale_max: float = 2.0
    mode: Any = field(default=None, compare=False, repr=False)

    @property
    def mask_name(self) -> str:
        return _mask_name(self.ui.mask) if self.ui.mask is not None else "mask"

    def region_kind(self, region_input: str | None) -> Literal["regions", "polygons"] | None:
        """Which region input a run reads: with both, the one chosen (``"polygon vertices"`` → polygons)."""
        ui = self.ui
        if ui.regions is not None and ui.polygons is not None:
            return "polygons" if region_input == REGION_INPUTS[1] else "regions"
        return "regions" if ui.regions is not None else "polygons" if ui.polygons is not None else None

    def takes_clicks(self, region_input: str | None = None) -> bool:
        return (
            self.ui.points is not None
            or self.ui.placement is not None
            or self.region_kind(region_input) == "polygons"
        )

    def missing_note(self) -> str:
        fields = ", ".join(f"`{n}`" for n in self.missing)
        return (
            f"the page cannot offer {fields} (required by {self.name}): run this mode from the CLI or the API "
            "with a spec file"
        )


def _mask_name(mask: MaskUI) -> str:
    return mask.name or mask.field.replace("_", " ")


def _arms(annotation: Any) -> list[Any]:
    """The arms of a union (``X | None``), or the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_mask(info: Any) -> bool:
    """A :data:`~dragsdk.spec.MaskRef` field (or ``MaskRef | None``)."""
    if any(m in _MASK_VALIDATORS for m in info.metadata):
        return True
    for arm in _arms(info.annotation):
        if typing.get_origin(arm) is typing.Annotated and any(
            m in _MASK_VALIDATORS for m in arm.__metadata__
        ):
            return True
    return False


def _is_point_pairs(info: Any) -> bool:
    """A list of :class:`~dragsdk.spec.PointPair` (or one that may be None)."""
    for arm in _arms(info.annotation):
        if typing.get_origin(arm) is typing.Annotated:
            arm = typing.get_args(arm)[0]
        for inner in _arms(arm):
            if typing.get_origin(inner) is list and typing.get_args(inner) == (PointPair,):
                return True
    return False


def _property(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """A property of a JSON Schema with its ``$ref`` resolved and ``X | None`` reduced to ``X``."""
    prop = dict(schema.get("properties", {}).get(name, {}))
    arms = [a for a in prop.pop("anyOf", []) if a.get("type") != "null"]
    if len(arms) == 1:
        prop = {**arms[0], **prop}
    ref = prop.pop("$ref", None)
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        prop = {**schema.get("$defs", {}).get(ref.rsplit("/", 1)[1], {}), **prop}
    return prop


def field_control(schema: dict[str, Any], name: str) -> FieldControl | None:
    """The settings control of a spec field, or None when the page has none for its type (a string, a list, a nested
    model: a path typed into a box could name any file on the server, so free strings are never offered)."""
    prop = _property(schema, name)
    required = name in schema.get("required", [])
    label = name.replace("_", " ").capitalize()
    common = {"name": name, "label": label, "info": prop.get("description", ""), "required": required}
    default = None if required else prop.get("default")
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return FieldControl(kind="choice", choices=tuple(enum), default=default, **common)
    kind = prop.get("type")
    if kind in ("number", "integer", "boolean"):
        return FieldControl(kind=kind, default=default, **common)
    return None


def derive_ui(spec_model: type) -> ModeUI:
    """The UI description of a mode that declares none, read from its spec model: the first mask field
    (:data:`~dragsdk.spec.MaskRef`) → the mask editor; the first list of point pairs → handle → target clicks;
    every number, whole number, boolean and string-choice field → a settings control."""
    schema = spec_model.model_json_schema()
    mask = points = None
    fields = []
    for name, info in spec_model.model_fields.items():
        if name in BASE_FIELDS:
            continue
        if mask is None and _is_mask(info):
            mask = MaskUI(field=name)
        elif points is None and _is_point_pairs(info):
            points = name
        elif field_control(schema, name) is not None:
            fields.append(name)
    return ModeUI(mask=mask, points=points, fields=tuple(fields))


def _help(page: PageMode, description: str) -> str:
    ui = page.ui
    if ui.help:
        parts = [ui.help]
    else:
        parts = []
        if ui.points is not None:
            parts.append("Click a **handle**, then its **target**; repeat for more pairs.")
        if ui.polygons is not None:
            parts.append("Click the handle polygon's corners, then the target polygon's (3 or 4 each).")
        if ui.regions is not None:
            parts.append("Brush a **handle region** and a **target region**.")
        if ui.mask is not None:
            optional = "" if page.mask_required else " (optional)"
            parts.append(f"Brush the **{page.mask_name}**{optional}.")
        if ui.reference is not None:
            parts.append("Upload a **reference image** and brush the object on it.")
        if ui.placement is not None:
            optional = "" if ui.placement.required else " (optional)"
            parts.append(f"Click where the object's centre should go{optional}.")
        if ui.scale is not None:
            parts.append("Set the scale.")
        if page.controls:
            names = ", ".join(f"*{c.name}*" for c in page.controls)
            parts.append(f"Set {names} under Settings.")
    if not page.declared:
        head = f"{description}. " if description else ""
        parts.insert(0, f"{head}*(No UI description: the inputs are read from its spec schema.)*")
        if page.defaults_only:
            parts.append("Left at their defaults: " + ", ".join(f"`{n}`" for n in page.defaults_only) + ".")
    if page.missing:
        parts.append(f"**{page.missing_note()[0].upper()}{page.missing_note()[1:]}.**")
    return " ".join(parts)


def describe(mode: EditMode) -> PageMode:
    """How the page offers ``mode``: its declared UI description, else one derived from its schema (cached per mode
    object)."""
    try:
        return _describe_cached(mode)
    except TypeError:  # an unhashable mode object
        return _describe(mode)


@lru_cache(maxsize=256)
def _describe_cached(mode: EditMode) -> PageMode:
    return _describe(mode)


def _describe(mode: EditMode) -> PageMode:
    model = mode.spec_model
    schema = model.model_json_schema()
    declared = getattr(mode, "ui", None)
    ui = declared if declared is not None else derive_ui(model)
    controls = tuple(c for c in (field_control(schema, n) for n in ui.fields) if c is not None)
    unoffered = set(ui.fields) - {
        c.name for c in controls
    }  # named in fields, but of a type the page has no control for
    filled = set(BASE_FIELDS) | (set(ui.field_names()) - unoffered)
    missing = tuple(n for n in model.model_fields if n in schema.get("required", []) and n not in filled)
    defaults_only = () if declared is not None else tuple(n for n in model.model_fields if n not in filled)
    mask_required = False
    if ui.mask is not None:
        required = ui.mask.required
        mask_required = ui.mask.field in schema.get("required", []) if required is None else required
    scale_max = 2.0
    if ui.scale is not None:
        prop = _property(schema, ui.scale)
        top = prop.get("maximum", prop.get("exclusiveMaximum"))
        scale_max = min(2.0, float(top)) if isinstance(top, int | float) else 2.0
    page = PageMode(
        name=mode.name,
        ui=ui,
        declared=declared is not None,
        controls=controls,
        missing=missing,
        defaults_only=defaults_only,
        mask_required=mask_required,
        scale_max=scale_max,
        mode=mode,
    )
    label = ""
    if ui.mask is not None:
        label = ui.mask.label or (
            page.mask_name.capitalize() + ": brush it" + ("" if mask_required else " (optional)")
        )
    return replace(page, help=_help(page, getattr(mode, "description", "")), mask_label=label)


def page_mode(name: str, registry: Any = None) -> PageMode:
    """The page's view of the mode ``name`` of ``registry`` (default: the process registry).

    Raises:
        KeyError: no such mode.
    """
    from dragsdk.registry import get_registry

    return describe((registry or get_registry()).modes[name])


def page_modes(registry: Any = None) -> dict[str, PageMode]:
    """Every mode of ``registry`` (default: the process registry), built-ins and third-party alike, in the order of
    the page's selector (:attr:`ModeUI.order`, then the name)."""
    from dragsdk.registry import get_registry

    modes: Mapping[str, Any] = (registry or get_registry()).modes
    pages = [describe(mode) for mode in modes.values()]
    return {p.name: p for p in sorted(pages, key=lambda p: (p.ui.order, p.name))}
