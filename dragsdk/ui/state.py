"""The browser editor's bookkeeping, free of Gradio so it can be unit-tested.

- Coordinates: the page shows the image at a *display* size (the image itself, or a copy whose longer side is at
  most :data:`MAX_DISPLAY_SIDE`); Gradio reports a click in the pixels of that displayed copy, whatever size the
  browser draws it at. :func:`display_to_image` turns it into image pixels, the only coordinates a spec holds.
- Modes: every mode of the registry, each as its UI description says (:mod:`dragsdk.ui.forms`: declared in
  :attr:`dragsdk.modes.EditMode.ui`, or derived from its spec schema); nothing here names a mode.
- Clicks are kept per mode (:class:`Session`): point pairs alternate handle, target; polygons take the handle
  polygon's vertices, then the target's; a placement keeps one click, the object's new centre.
- :func:`build_spec` turns clicks, brushed masks and settings into a spec dict, or raises :class:`UIError` naming
  the control whose message slot shows what is wrong.
- :func:`render_overlay` draws the clicks (arrows, polygons, the placed object) on the displayed copy.

``MODES`` (read on access) is the tuple of the process registry's modes in the order of the page's selector.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dragsdk.errors import DragSDKError
from dragsdk.io import load_image, load_mask, mask_to_data_url
from dragsdk.modes import ModeUI

from .forms import REGION_INPUTS, FieldControl, PageMode, page_mode, page_modes

MAX_DISPLAY_SIDE = 1024
"""The click view shows a copy whose longer side is at most this many pixels."""

CONTROLS = ("image", "prompt", "points", "mask", "reference", "settings", "run")
"""Message slots on the page, one beside each group of controls."""

Point = tuple[int, int]

HANDLE_RGB = (230, 40, 40)
TARGET_RGB = (40, 110, 240)
OBJECT_RGB = (40, 200, 90)


class UIError(ValueError):
    """Input the page cannot run, with the message slot that shows it.

    Attributes:
        control: one of :data:`CONTROLS`.
        message: what is wrong and what to do, in words for the person at the page.
    """

    def __init__(self, control: str, message: str) -> None:
        if control not in CONTROLS:
            raise ValueError(f"unknown control {control!r}")
        self.control = control
        self.message = message
        super().__init__(f"{control}: {message}")


def __getattr__(name: str) -> Any:
    if name == "MODES":
        return tuple(page_modes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mode_page(mode: str, registry: Any = None) -> PageMode:
    """The page's view of ``mode`` in ``registry`` (default: the process registry).

    Raises:
        UIError: (run) no such mode.
    """
    try:
        return page_mode(mode, registry)
    except KeyError:
        names = ", ".join(page_modes(registry))
        raise UIError("run", f"unknown mode {mode!r}; choose one of {names}") from None


def control_for_field(field_path: str, page: PageMode | None = None) -> str:
    """The message slot of a spec field named by a :class:`~dragsdk.errors.SpecError` or a pydantic error: the
    input of ``page``'s UI description that fills it, else by the field's usual name."""
    head = field_path.split(".")[0].split("[")[0].split(":")[0].strip()
    if page is not None:
        ui = page.ui
        if head in {c.name for c in page.controls}:
            return "settings"
        place = ui.placement
        if head in (ui.points, ui.polygons, ui.scale) or (place is not None and head in (place.dx, place.dy)):
            return "points"
        if head == ui.regions or (ui.mask is not None and head == ui.mask.field):
            return "mask"
        ref = ui.reference
        if ref is not None and head in (ref.image, ref.mask, ref.prompt):
            return "reference"
    if head in ("points", "polygons", "dense_points", "handle", "dx", "dy", "scale", "dx, dy"):
        return "points"
    if head in ("mask", "region", "regions", "fill_region"):
        return "mask"
    if head in ("reference", "reference_mask", "references", "reference_prompt"):
        return "reference"
    if head in ("image", "input"):
        return "image"
    if head in ("prompt", "negative_prompt"):
        return "prompt"
    if head == "sampler":
        return "settings"
    return "run"


@dataclass
class Session:
    """One browser tab's editing state (kept in a ``gr.State``).

    Attributes:
        image: the base image (RGB, its own size), or None before one is given.
        name: where it came from (file name or sample folder), for the page.
        clicks: per mode, clicked points in image pixels.
        mask, handle_region, target_region, reference, reference_mask: what the brush editors last reported (each
            editor's change event stores it here; previews and runs read it from here).
    """

    image: Image.Image | None = None
    name: str = ""
    clicks: dict[str, list[Point]] = field(default_factory=dict)
    mask: np.ndarray | None = None
    handle_region: np.ndarray | None = None
    target_region: np.ndarray | None = None
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None if self.image is None else self.image.size

    @property
    def display_size(self) -> tuple[int, int] | None:
        return None if self.image is None else display_size(self.image.size)

    def points(self, mode: str) -> list[Point]:
        return self.clicks.setdefault(mode, [])

    def set_image(self, image: Image.Image, name: str = "", mask: np.ndarray | None = None) -> None:
        """A new base image: every click and the base mask are dropped (``mask``: the new image's mask)."""
        self.image = image.convert("RGB")
        self.name = name
        self.clicks = {}
        self.mask = mask
        self.handle_region = self.target_region = None

    def inputs(
        self,
        scale: float | None = 1.0,
        vertices: Any = 4,
        region_input: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Inputs:
        """The inputs of a preview or a run: what the editors last reported (masks, reference) and the controls
        (``fields``: the values of the mode's settings controls, by spec field)."""
        return Inputs(
            mask=self.mask,
            handle_region=self.handle_region,
            target_region=self.target_region,
            reference=self.reference,
            reference_mask=self.reference_mask,
            scale=float(scale if scale is not None else 1.0),
            vertices=int(vertices or 4),
            region_input=region_input or REGION_INPUTS[0],
            fields=dict(fields or {}),
        )


# -- coordinates ------------------------------------------------------------------------------------------------
def display_size(image_size: tuple[int, int], max_side: int = MAX_DISPLAY_SIDE) -> tuple[int, int]:
    """The size of the copy the click view shows: the image's own, or scaled so the longer side is ``max_side``."""
    w, h = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    k = max_side / max(w, h)
    if k >= 1:
        return w, h
    return max(1, round(w * k)), max(1, round(h * k))


def display_to_image(xy: Sequence[float] | None, display: tuple[int, int], image: tuple[int, int]) -> Point:
    """A click in displayed-copy pixels → the image pixel under it.

    Gradio reports ``[x, y]`` in the pixels of the image it was given (here the displayed copy), rounded, whatever
    size the browser draws it at. The image pixel is ``floor(x · W / w)``; a click on the far edge (``x = w``, which
    rounding can give) maps to the last pixel.

    Raises:
        UIError: (points) no position, or one outside the displayed image.
    """
    if xy is None or len(xy) != 2 or any(v is None or not math.isfinite(float(v)) for v in xy):
        raise UIError("points", "that click was not on the image: click inside the picture")
    x, y = float(xy[0]), float(xy[1])
    dw, dh = display
    w, h = image
    if not (0 <= x <= dw and 0 <= y <= dh):
        raise UIError("points", f"the click ({x:g}, {y:g}) is outside the {w}×{h} image")
    return min(int(math.floor(x * w / dw)), w - 1), min(int(math.floor(y * h / dh)), h - 1)


def image_to_display(
    xy: Sequence[float], display: tuple[int, int], image: tuple[int, int]
) -> tuple[float, float]:
    """The centre of image pixel ``xy`` in displayed-copy coordinates (for drawing)."""
    return (xy[0] + 0.5) * display[0] / image[0], (xy[1] + 0.5) * display[1] / image[1]


def check_point(xy: Sequence[float], image: tuple[int, int], what: str = "point") -> None:
    """Raise :class:`UIError` (points) for a point off the image (``0 ≤ x < W``, ``0 ≤ y < H``)."""
    w, h = image
    if not (0 <= xy[0] < w and 0 <= xy[1] < h):
        raise UIError(
            "points",
            f"the {what} ({xy[0]:g}, {xy[1]:g}) is outside the {w}×{h} image "
            f"(0 ≤ x < {w}, 0 ≤ y < {h}): undo it or clear the points",
        )


# -- clicks -----------------------------------------------------------------------------------------------------
def pairs(clicks: Sequence[Point]) -> tuple[list[tuple[Point, Point]], Point | None]:
    """Alternating handle, target clicks → complete pairs and a pending handle (or None)."""
    full = [(clicks[i], clicks[i + 1]) for i in range(0, len(clicks) - 1, 2)]
    return full, (clicks[-1] if len(clicks) % 2 else None)


def polygon_pairs(
    clicks: Sequence[Point], vertices: int
) -> tuple[list[tuple[list[Point], list[Point]]], list[Point]]:
    """Polygon clicks (``vertices`` handle corners, then as many target corners, repeated) → complete pairs and the
    clicks of the pair being drawn."""
    if vertices not in (3, 4):
        raise UIError("points", f"a polygon has 3 or 4 vertices, got {vertices}")
    n = 2 * vertices
    done = len(clicks) // n * n
    full = [(list(clicks[i : i + vertices]), list(clicks[i + vertices : i + n])) for i in range(0, done, n)]
    return full, list(clicks[done:])


def add_click(
    session: Session,
    mode: str,
    xy: Sequence[float] | None,
    vertices: int = 4,
    region_input: str = REGION_INPUTS[0],
    registry: Any = None,
) -> str:
    """Record a click of the click view (``xy`` in displayed pixels) for ``mode`` of ``registry`` (default: the
    process registry); returns what to do next.

    Raises:
        UIError: no image yet, a click off the image, or a mode that takes no clicks.
    """
    if session.image is None:
        raise UIError("image", "upload an image or open a sample folder first")
    page = mode_page(mode, registry)
    size = session.image.size
    p = display_to_image(xy, display_size(size), size)
    pts = session.points(mode)
    ui = page.ui
    if page.region_kind(region_input) == "regions" and ui.polygons is not None:
        raise UIError(
            "points",
            f"{mode} with brushed regions takes no clicks: brush the handle and target "
            "regions, or choose 'polygon vertices'",
        )
    if not page.takes_clicks(region_input):
        brushed = [f"the {page.mask_name}"] if ui.mask is not None else []
        brushed += ["the object on the reference image"] if ui.reference is not None else []
        hint = "brush " + " and ".join(brushed) if brushed else "set its settings and run"
        raise UIError("points", f"{mode} takes no points: {hint}")
    if ui.placement is not None:
        pts[:] = [p]
        return f"the object's centre goes to ({p[0]}, {p[1]})"
    pts.append(p)
    return describe_clicks(session, mode, vertices, region_input, registry)


def undo(session: Session, mode: str) -> Point | None:
    """Remove the last click of ``mode`` (None when there was none)."""
    pts = session.points(mode)
    return pts.pop() if pts else None


def clear(session: Session, mode: str | None = None) -> None:
    """Drop the clicks of ``mode``, or of every mode."""
    if mode is None:
        session.clicks = {}
    else:
        session.clicks[mode] = []


def describe_clicks(
    session: Session,
    mode: str,
    vertices: int = 4,
    region_input: str = REGION_INPUTS[0],
    registry: Any = None,
) -> str:
    """One line saying what has been clicked and what the next click does."""
    page = mode_page(mode, registry)
    pts = session.points(mode)
    if page.ui.points is not None:
        full, pending = pairs(pts)
        if pending is not None:
            return f"pair {len(full) + 1}: handle ({pending[0]}, {pending[1]}) — now click its target"
        if not full:
            return "click a handle point, then its target"
        (h, t) = full[-1]
        return f"{len(full)} pair(s); last: ({h[0]}, {h[1]}) → ({t[0]}, {t[1]}). Click another handle, or run"
    kind = page.region_kind(region_input)
    if kind == "regions":
        return "brush the handle region and the target region"
    if kind == "polygons":
        full_p, cur = polygon_pairs(pts, vertices)
        if len(cur) < vertices:
            return f"{len(full_p)} polygon pair(s); handle polygon: {len(cur)}/{vertices} vertices"
        return f"{len(full_p)} polygon pair(s); target polygon: {len(cur) - vertices}/{vertices} vertices"
    place = page.ui.placement
    if place is not None:
        if pts:
            return f"the object's centre goes to ({pts[-1][0]}, {pts[-1][1]})"
        return "click where the object's centre should go" + ("" if place.required else " (optional)")
    return ""


# -- masks ------------------------------------------------------------------------------------------------------
def _as_array(img: Any) -> np.ndarray | None:
    if img is None:
        return None
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGBA"))
    if isinstance(img, str | Path):
        with Image.open(img) as im:
            return np.asarray(im.convert("RGBA"))
    return np.asarray(img)


def mask_from_layers(layers: Iterable[Any] | None, size: tuple[int, int]) -> np.ndarray | None:
    """The union of brushed layers as an ``(H, W)`` bool mask of an image of ``size`` = ``(W, H)``.

    Each layer is read by the one mask rule of :func:`dragsdk.io.load_mask` (files, arrays and data URLs alike): on
    a layer with transparency, inside where alpha exceeds :data:`dragsdk.io.MASK_THRESHOLD` (brush strokes on a
    transparent layer); on an opaque layer, where the brightest channel does. Layers of another size (a canvas the
    browser scaled) are resampled to ``size`` (nearest). None when nothing is brushed.
    """
    w, h = size
    out = np.zeros((h, w), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        m = load_mask(
            layer if isinstance(layer, Image.Image | str | Path) else np.asarray(layer), field="mask"
        )
        if m.shape != (h, w):
            m = (
                np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST))
                > 127
            )
        out |= m
    return out if out.any() else None


def editor_mask(value: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The brushed mask of a ``gr.ImageEditor`` value (``{"background", "layers", "composite"}``)."""
    if not value or not isinstance(value, dict):
        return None
    return mask_from_layers(value.get("layers"), size)


def editor_background(value: Any) -> Image.Image | None:
    """The background image of a ``gr.ImageEditor`` value, RGB."""
    if not value or not isinstance(value, dict) or value.get("background") is None:
        return None
    a = _as_array(value["background"])
    if a is None or a.size == 0:
        return None
    img = Image.fromarray(a.astype(np.uint8))
    return img.convert("RGB")


def describe_mask(mask: np.ndarray | None, what: str) -> str:
    """One line saying how much a brushed mask covers (shown when an editor reports a change)."""
    if mask is None or not np.asarray(mask).any():
        return f"{what}: nothing brushed"
    m = np.asarray(mask, bool)
    return f"{what}: {int(m.sum())} px brushed ({100 * m.mean():.1f}% of the image)"


def mask_layer(mask: np.ndarray, rgb: tuple[int, int, int] = HANDLE_RGB, alpha: int = 150) -> Image.Image:
    """An RGBA layer showing ``mask`` in a translucent colour (how a loaded mask appears in a brush editor)."""
    m = np.asarray(mask, dtype=bool)
    a = np.zeros((*m.shape, 4), dtype=np.uint8)
    a[m] = (*rgb, alpha)
    return Image.fromarray(a, "RGBA")


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """Centroid ``(x, y)`` of a mask in image pixels, as the placement uses it (pixel centres at ``i + 0.5``)."""
    from dragsdk.objects import centroid as _centroid

    return _centroid(mask)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask resampled (nearest) to ``size`` = ``(W, H)``, as a reference mask is brought to the base size."""
    if mask.shape == (size[1], size[0]):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def shift_to(
    click: Point, mask: np.ndarray, scale: float = 1.0, placement: str = "centroid"
) -> tuple[float, float]:
    """``(dx, dy)`` that brings the placed object's centroid onto the pixel ``click`` (its centre), for the way the
    mode places it (:attr:`dragsdk.modes.PlacementUI.about`; ``c``: the object's centroid, ``C``: the image centre,
    ``s``: ``scale``, ``p``: the click, all in image pixels):

    - ``centroid`` (about the object's own centroid; the ``centroid-placement`` improvement): ``c' = c + d``, so
      ``d = p − c``;
    - ``image-centre-scaled-shift`` (scaled about the image centre, the shift scaled too: the official move and
      resize, :func:`dragsdk.objects.official_placement_map`): ``c' = C + s·(c − C + d)``, so
      ``d = (p − C)/s − (c − C)``;
    - ``image-centre`` (scaled about the image centre, then shifted: the official paste):
      ``c' = C + s·(c − C) + d``, so ``d = p − C − s·(c − C)``.
    """
    cx, cy = centroid(mask)
    px, py = click[0] + 0.5, click[1] + 0.5
    h, w = mask.shape
    ox, oy = w / 2, h / 2
    if placement == "image-centre-scaled-shift":
        dx, dy = (px - ox) / scale - (cx - ox), (py - oy) / scale - (cy - oy)
    elif placement == "image-centre":
        dx, dy = px - ox - scale * (cx - ox), py - oy - scale * (cy - oy)
    elif placement == "centroid":
        dx, dy = px - cx, py - cy
    else:
        raise ValueError(f"unknown placement rule {placement!r}")
    return round(dx, 2), round(dy, 2)


def placement_rule(page: PageMode, profile: str | list[str] | None) -> str:
    """The :func:`shift_to` rule of a mode's placement under ``profile``: ``centroid`` when the mode's profile
    table has a ``placement`` option that the profile resolves to ``centroid`` (the ``centroid-placement``
    improvement, in ``dragsdk`` and listable), else :attr:`~dragsdk.modes.PlacementUI.about`."""
    from dragsdk.fidelity import OFFICIAL

    place = page.ui.placement
    if place is None:
        raise ValueError(f"mode {page.name!r} has no placement input")
    table = getattr(page.mode, "profiles", None)
    if table is not None and getattr(table.resolve(profile or OFFICIAL), "placement", None) == "centroid":
        return "centroid"
    return place.about


# -- specs ------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Everything the page holds for one run besides the clicks.

    Attributes:
        mask: the brushed base-image mask (editable region, or the object), or None.
        handle_region / target_region: the brushed handle and target regions, or None.
        region_input, vertices: which region input is chosen (:data:`REGION_INPUTS`), and the vertices of a polygon.
        reference: the reference image and ``reference_mask`` brushed on it.
        reference_path: the path the reference image is saved at (the spec names it).
        scale: the scale slider.
        steps, resolution, seed: the sampler settings typed (empty: the mode's default).
        fields: the values of the mode's own settings controls, by spec field (:class:`~dragsdk.ui.forms.FieldControl`;
            empty text: the field's default).
        profile: the spec's ``profile`` (``official``, ``dragsdk`` or a list of improvements), None = the mode's
            default (the page has no control for it; a host embedding the page logic may set it).
    """

    prompt: str = ""
    mask: np.ndarray | None = None
    handle_region: np.ndarray | None = None
    target_region: np.ndarray | None = None
    region_input: str = REGION_INPUTS[0]
    vertices: int = 4
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None
    reference_path: str | None = None
    reference_prompt: str = ""
    scale: float = 1.0
    steps: int | str | None = None
    resolution: int | str | None = None
    seed: int | str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    profile: str | list[str] | None = None


def _need_mask(m: np.ndarray | None, what: str, control: str = "mask") -> np.ndarray:
    if m is None or not np.asarray(m).any():
        raise UIError(control, f"the {what} is empty: brush over it with the brush tool")
    return np.asarray(m, dtype=bool)


def _check_mask_size(m: np.ndarray, size: tuple[int, int], what: str, control: str = "mask") -> None:
    if m.shape != (size[1], size[0]):
        raise UIError(
            control, f"the {what} is {m.shape[1]}×{m.shape[0]} pixels, the image is {size[0]}×{size[1]}"
        )


def sampler_defaults(mode: str, registry: Any = None) -> dict[str, Any]:
    """The sampler settings a ``mode``'s spec gets when none are given (shown as placeholders on the page)."""
    from dragsdk.registry import get_registry

    model = (registry or get_registry()).spec_models().get(mode)
    if model is None:
        return {}
    info = model.model_fields["sampler"]
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return value.model_dump() if value is not None else {}


def parse_setting(value: Any, name: str) -> int | None:
    """A whole-number setting typed on the page: empty → None (the mode's default).

    Raises:
        UIError: (settings) not a whole number.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isnan(value):
            return None
        if float(value) != int(value):
            raise UIError("settings", f"{name} must be a whole number, got {value:g}")
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        f = float(text)
    except ValueError:
        raise UIError("settings", f"{name} must be a whole number, got {text!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise UIError("settings", f"{name} must be a whole number, got {text!r}")
    return int(f)


def _sampler(inputs: Inputs) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in ("steps", "resolution", "seed"):
        v = parse_setting(getattr(inputs, key), key)
        if v is not None:
            out[key] = v
    return out


def parse_field(control: FieldControl, value: Any) -> Any:
    """The value of a mode's settings control for its spec: None (left out, the field's default) for an empty box or
    a default left as it is.

    Raises:
        UIError: (settings) a required field left empty, or a number box holding something else.
    """
    name = control.name
    if control.kind in ("boolean", "choice"):
        if value is None or value == control.default:
            return None
        return bool(value) if control.kind == "boolean" else str(value)
    empty = value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
    if empty:
        if control.required:
            raise UIError("settings", f"{name} is required for this mode: type a value ({control.info})")
        return None
    if control.kind == "integer":
        return parse_setting(value, name)
    try:
        number = float(str(value).strip())
    except ValueError:
        raise UIError("settings", f"{name} must be a number, got {str(value).strip()!r}") from None
    if not math.isfinite(number):
        raise UIError("settings", f"{name} must be a finite number, got {str(value).strip()!r}")
    return number


def _point_pairs(clicks: list[Point], size: tuple[int, int]) -> list[dict[str, list[int]]]:
    full, pending = pairs(clicks)
    if pending is not None:
        raise UIError(
            "points",
            f"the handle ({pending[0]}, {pending[1]}) has no target: click its target or undo it",
        )
    if not full:
        raise UIError("points", "no points: click a handle on the image, then its target")
    for k, (h, t) in enumerate(full):
        check_point(h, size, f"handle of pair {k + 1}")
        check_point(t, size, f"target of pair {k + 1}")
    return [{"handle": list(h), "target": list(t)} for h, t in full]


def _polygons(clicks: list[Point], vertices: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    full_p, cur = polygon_pairs(clicks, vertices)
    if cur:
        raise UIError(
            "points",
            f"the last polygon pair has {len(cur)} of {2 * vertices} vertices: finish it or undo its clicks",
        )
    if not full_p:
        raise UIError(
            "points",
            f"no polygons: click the {vertices} corners of the handle polygon, "
            f"then the {vertices} of the target polygon",
        )
    for k, (hp, tp) in enumerate(full_p):
        for p in [*hp, *tp]:
            check_point(p, size, f"vertex of polygon pair {k + 1}")
    return [{"handle": [list(p) for p in hp], "target": [list(p) for p in tp]} for hp, tp in full_p]


def _regions(inputs: Inputs, size: tuple[int, int]) -> list[dict[str, str]]:
    h = _need_mask(inputs.handle_region, "handle region")
    t = _need_mask(inputs.target_region, "target region")
    _check_mask_size(h, size, "handle region")
    _check_mask_size(t, size, "target region")
    return [{"handle": mask_to_data_url(h), "target": mask_to_data_url(t)}]


def _reference(spec: dict[str, Any], page: PageMode, inputs: Inputs) -> np.ndarray:
    """Write the reference fields into ``spec``; the mask brushed on the reference."""
    ref = page.ui.reference
    assert ref is not None
    if inputs.reference is None:
        raise UIError("reference", "upload a reference image in the reference editor")
    ref_mask = _need_mask(inputs.reference_mask, "reference mask", "reference")
    _check_mask_size(ref_mask, inputs.reference.size, "reference mask", "reference")
    if not inputs.reference_path:
        raise UIError("reference", "the reference image was not saved; upload it again")
    spec[ref.image] = inputs.reference_path
    spec[ref.mask] = mask_to_data_url(ref_mask)
    if ref.prompt is not None:
        spec[ref.prompt] = (inputs.reference_prompt or "").strip()
    return ref_mask


def build_spec(mode: str, session: Session, inputs: Inputs, registry: Any = None) -> dict[str, Any]:
    """The spec dict of the page's current input for ``mode`` of ``registry`` (default: the process registry), as
    its UI description says (masks embedded as PNG data URLs).

    Raises:
        UIError: no image, no points, a pending handle or polygon, a point off the image, an empty mask, no
            reference, a settings value that is not a number, a required field the page cannot offer; the control
            whose slot shows it is named.
    """
    if session.image is None:
        raise UIError("image", "upload an image or open a sample folder first")
    page = mode_page(mode, registry)
    if page.missing:
        raise UIError("run", page.missing_note())
    ui = page.ui
    size = session.image.size
    clicks = list(session.points(mode))
    spec: dict[str, Any] = {"mode": mode, "prompt": (inputs.prompt or "").strip()}
    mask = inputs.mask if inputs.mask is not None and np.asarray(inputs.mask).any() else None
    if mask is not None and ui.mask is not None:
        _check_mask_size(np.asarray(mask), size, "mask")
    if ui.points is not None:
        spec[ui.points] = _point_pairs(clicks, size)
    kind = page.region_kind(inputs.region_input)
    if kind == "polygons":
        spec[str(ui.polygons)] = _polygons(clicks, inputs.vertices, size)
    elif kind == "regions":
        spec[str(ui.regions)] = _regions(inputs, size)
    ref_mask = _reference(spec, page, inputs) if ui.reference is not None else None
    if ui.mask is not None:
        if page.mask_required:
            mask = _need_mask(mask, page.mask_name)
        if mask is not None:
            spec[ui.mask.field] = mask_to_data_url(mask)
    place = ui.placement
    if place is not None:
        if clicks:
            check_point(clicks[-1], size, "new position")
            if place.object == "reference":
                obj = resize_mask(np.asarray(ref_mask, bool), size)
            else:
                obj = _need_mask(mask, page.mask_name)
            spec[place.dx], spec[place.dy] = shift_to(
                clicks[-1], obj, float(inputs.scale), placement_rule(page, inputs.profile)
            )
        elif place.required:
            raise UIError("points", "click where the object's centre should go")
    if ui.scale is not None:
        spec[ui.scale] = float(inputs.scale)
    for control in page.controls:
        value = parse_field(control, inputs.fields.get(control.name))
        if value is not None:
            spec[control.name] = value
    sampler = _sampler(inputs)
    if sampler:
        spec["sampler"] = sampler
    if inputs.profile is not None:
        spec["profile"] = inputs.profile
    return spec


def portable_spec(
    spec: dict[str, Any], reference_name: str = "reference.png", reference_field: str | None = "reference"
) -> dict[str, Any]:
    """The spec to download: its reference image field (the mode's ``ReferenceUI.image``; None: it has none) names
    the file by ``reference_name``, kept beside the spec (the CLI resolves it there)."""
    out = dict(spec)
    if reference_field is not None and isinstance(out.get(reference_field), str):
        out[reference_field] = reference_name
    return out


def pydantic_message(error: Any, page: PageMode | None = None) -> tuple[str, str]:
    """``(control, message)`` for a pydantic ``ValidationError``: its first error, the field named (its slot as
    ``page``'s UI description says, :func:`control_for_field`)."""
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg", str(error))
    more = error.error_count() - 1
    return control_for_field(loc, page), f"{loc}: {msg}" + (f" (and {more} more)" if more > 0 else "")


# -- drawing ----------------------------------------------------------------------------------------------------
def _arrow(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    rgb: tuple[int, int, int],
    width: int,
) -> None:
    draw.line([a, b], fill=rgb, width=width)
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = math.hypot(dx, dy)
    if n < 1e-6:
        return
    ux, uy = dx / n, dy / n
    head = min(max(3.0 * width, 8.0), n * 0.6)
    left = (b[0] - head * ux + 0.5 * head * uy, b[1] - head * uy - 0.5 * head * ux)
    right = (b[0] - head * ux - 0.5 * head * uy, b[1] - head * uy + 0.5 * head * ux)
    draw.polygon([b, left, right], fill=rgb)


def _dot(draw: ImageDraw.ImageDraw, c: tuple[float, float], r: float, rgb: tuple[int, int, int]) -> None:
    draw.ellipse(
        [c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=rgb, outline=(255, 255, 255), width=max(1, int(r / 3))
    )


def _tint(img: Image.Image, mask: np.ndarray, rgb: tuple[int, int, int], alpha: float = 0.35) -> Image.Image:
    m = resize_mask(np.asarray(mask, dtype=bool), img.size)
    a = np.asarray(img.convert("RGB")).astype(np.float32)
    a[m] = (1 - alpha) * a[m] + alpha * np.asarray(rgb, np.float32)
    return Image.fromarray(a.astype(np.uint8))


def render_overlay(
    session: Session,
    mode: str,
    inputs: Inputs | None = None,
    registry: Any = None,
    default_resolution: int | None = None,
    family: str | None = None,
) -> Image.Image | None:
    """The click view: the displayed copy with the mode's clicks drawn (arrows from handles to targets, polygons,
    the object at its new place for a mode with a placement input, as :func:`placement_preview` plans it with
    ``registry``, ``default_resolution`` and ``family``)."""
    if session.image is None:
        return None
    try:
        page = mode_page(mode, registry)
    except UIError:  # a mode this registry lacks: the image alone
        page = PageMode(name=mode, ui=ModeUI(), declared=False)
    ui = page.ui
    inputs = inputs or Inputs()
    size = session.image.size
    disp = display_size(size)
    base = session.image
    pts = session.points(mode)
    place = None
    on_base = ui.placement is not None and ui.placement.object == "mask"
    if ui.placement is not None:
        place = placement_preview(mode, session, inputs, registry, default_resolution, family)
        obj = inputs.mask if on_base and inputs.mask is not None and np.asarray(inputs.mask).any() else None
        base = _preview_placement(base, on_base, obj, place)
    img = (
        base.convert("RGB").resize(disp, Image.Resampling.LANCZOS)
        if base.size != disp
        else base.convert("RGB")
    )
    draw = ImageDraw.Draw(img)
    r = max(5.0, min(disp) / 55)
    width = max(2, int(round(r / 2)))

    def d(p: Sequence[float]) -> tuple[float, float]:
        return image_to_display(p, disp, size)

    if ui.points is not None:
        full, pending = pairs(pts)
        for h, t in full:
            _arrow(draw, d(h), d(t), (255, 255, 255), width + 2)
            _arrow(draw, d(h), d(t), (250, 200, 40), width)
            _dot(draw, d(h), r, HANDLE_RGB)
            _dot(draw, d(t), r, TARGET_RGB)
        if pending is not None:
            _dot(draw, d(pending), r, HANDLE_RGB)
    elif ui.polygons is not None:
        full_p, cur = polygon_pairs(pts, inputs.vertices)
        for hp, tp in full_p:
            draw.polygon([d(p) for p in hp], outline=HANDLE_RGB, width=width)
            draw.polygon([d(p) for p in tp], outline=TARGET_RGB, width=width)
            for a, b in zip(hp, tp, strict=True):
                _arrow(draw, d(a), d(b), (250, 200, 40), max(1, width - 1))
        for k, p in enumerate(cur):
            _dot(draw, d(p), r * 0.8, HANDLE_RGB if k < inputs.vertices else TARGET_RGB)
        if len(cur) > 1:
            hv = cur[: inputs.vertices]
            draw.line([d(p) for p in hv], fill=HANDLE_RGB, width=width)
            if len(cur) > inputs.vertices + 1:
                draw.line([d(p) for p in cur[inputs.vertices :]], fill=TARGET_RGB, width=width)
    elif ui.placement is not None and pts:
        obj = None
        if not on_base and inputs.reference_mask is not None and np.asarray(inputs.reference_mask).any():
            obj = resize_mask(np.asarray(inputs.reference_mask, bool), size)
        elif on_base and inputs.mask is not None and np.asarray(inputs.mask).any():
            obj = np.asarray(inputs.mask, bool)
        if obj is not None and place is not None and place.region.any():
            # from the object's centre to where the plan puts it (the click, unless the profile places it
            # about the image centre)
            (cx, cy), (px, py) = centroid(obj), centroid(place.region)
            _arrow(draw, d((cx - 0.5, cy - 0.5)), d((px - 0.5, py - 0.5)), (250, 200, 40), width)
        _dot(draw, d(pts[-1]), r, TARGET_RGB)
    return img


PREVIEW_REFERENCE = "reference.png"
"""The name a preview's spec gives the reference image it holds in memory (:attr:`PlanContext.images`)."""


@dataclass
class Placement:
    """Where a mode with a placement input puts the object, read from the mode's own plan.

    Attributes:
        image: ``(W, H)`` RGB, the object's content at its new place over the base image (each latent cell of the
            plan's latent paste shows the image pixels of its source cell, from the bank image the paste reads).
        region: ``(H, W)`` bool, image pixels: the plan's edit mask (latent cells) drawn on the image, each pixel
            taking the cell that holds its centre.
        plan: the :class:`~dragsdk.plan.EditPlan` it was drawn from.
    """

    image: Image.Image
    region: np.ndarray
    plan: Any


def _cell_index(n_pixels: int, n_cells: int) -> np.ndarray:
    """The cell of each pixel along one axis: ``floor((i + 0.5)·n_cells / n_pixels)`` (the cell holding its centre)."""
    return np.minimum(((np.arange(n_pixels) + 0.5) * n_cells / n_pixels).astype(np.int64), n_cells - 1)


def placement_preview(
    mode: str,
    session: Session,
    inputs: Inputs,
    registry: Any = None,
    default_resolution: int | None = None,
    family: str | None = None,
) -> Placement | None:
    """The placement of a mode with a placement input (:attr:`dragsdk.modes.ModeUI.placement`) as the edit will
    make it, from the mode's own planner.

    The page's input becomes a spec (:func:`build_spec`), validated by the mode's spec model and planned by
    :func:`dragsdk.modes.build_plan` on the canvas the Editor would use (:func:`dragsdk.modes.working_canvas`),
    so every profile (e.g. ``official``: about the image centre; ``centroid-placement``) is drawn as it runs.

    Args:
        registry: the Editor's registry (default the process registry).
        default_resolution: the working resolution when the page sets none (the Editor's model default; else the
            spec's default).
        family: the Editor's model family (``sd1``, ``sd2``, ``sdxl``), for a mode with its own working size.

    Returns:
        the :class:`Placement`, or None when there is nothing to place yet or the plan refuses the input (the run
        reports why).
    """
    from pydantic import ValidationError

    from dragsdk.errors import SpecError
    from dragsdk.geometry import Canvas
    from dragsdk.modes import PlanContext, build_plan, working_canvas
    from dragsdk.registry import get_registry

    registry = registry or get_registry()
    try:
        page = mode_page(mode, registry)
    except UIError:
        return None
    if session.image is None or page.ui.placement is None:
        return None
    held = {}
    if page.ui.reference is not None and inputs.reference is not None:
        held = {PREVIEW_REFERENCE: inputs.reference}
        inputs = Inputs(**{**inputs.__dict__, "reference_path": PREVIEW_REFERENCE})
    try:
        spec = registry.spec_models()[mode].model_validate(build_spec(mode, session, inputs, registry))
        s = spec.sampler
        canvas = working_canvas(
            registry.modes[mode], spec, session.image.size, family, default_resolution
        ) or Canvas.fit(session.image.size, s.resolution)
        plan = build_plan(
            registry.modes[mode], spec, PlanContext(canvas, session.image, s.steps, images=held)
        )
    except (UIError, SpecError, ValidationError):
        return None
    w, h = session.image.size
    lw, lh = canvas.latent_size
    rows, cols = _cell_index(h, lh)[:, None], _cell_index(w, lw)[None, :]
    region = plan.edit_mask.numpy()[rows, cols]
    banks = [np.asarray(session.image.convert("RGB"))] + [
        np.asarray(r.image.convert("RGB")) for r in plan.references
    ]
    out = banks[0].copy()
    for paste in plan.init:
        # Each target cell shows its source cell's pixels: a per-cell shift by (source − target) cells.
        off_x, off_y, on = np.zeros((lh, lw)), np.zeros((lh, lw)), np.zeros((lh, lw), bool)
        tr, tc = paste.target_rows.numpy(), paste.target_cols.numpy()
        off_x[tr, tc] = (paste.source_cols.numpy() - tc) * w / lw
        off_y[tr, tc] = (paste.source_rows.numpy() - tr) * h / lh
        on[tr, tc] = True
        ys, xs = np.nonzero(on[rows, cols])
        sx = np.clip(np.round(xs + off_x[rows[ys, 0], cols[0, xs]]).astype(np.int64), 0, w - 1)
        sy = np.clip(np.round(ys + off_y[rows[ys, 0], cols[0, xs]]).astype(np.int64), 0, h - 1)
        out[ys, xs] = banks[paste.bank][sy, sx]
    return Placement(Image.fromarray(out), region, plan)


def _preview_placement(
    image: Image.Image, on_base: bool, obj: np.ndarray | None, place: Placement | None
) -> Image.Image:
    """The base image with the placed object tinted green (an object of the base image, ``on_base``: its old place
    greyed)."""
    shown = _tint(image, obj, (120, 120, 120), 0.45) if on_base and obj is not None else image
    if place is None:
        return _tint(image, obj, OBJECT_RGB) if on_base and obj is not None else image
    alpha = 0.25 if on_base else 0.2
    region = Image.fromarray((place.region * 255).astype(np.uint8))
    return Image.composite(_tint(place.image, place.region, OBJECT_RGB, alpha), shown.convert("RGB"), region)


# -- report -----------------------------------------------------------------------------------------------------
def format_report(report: Any, seconds: float | None = None) -> str:
    """Markdown for the page: time per phase, backend, UNet evaluations, whether the inversion was reused."""
    r = report
    phases = r.phase_seconds
    total = sum(phases.values())
    if r.inversion_reused:
        head = (
            "**Inversion reused** from the previous edit of this image (same prompt and settings): "
            f"inversion took {phases.get('invert', 0.0):.2f} s."
        )
    else:
        head = (
            "Image inverted in {:.2f} s; the next edit of this image with the same prompt and settings "
            "reuses it."
        ).format(phases.get("invert", 0.0))
    names = " | ".join(phases)
    times = " | ".join(f"{v:.2f} s" for v in phases.values())
    unet = ", ".join(f"{k} {v}" for k, v in r.unet_evaluations.items()) or "none"
    lines = [
        head,
        "",
        f"| {names} | total |",
        "|" + " --- |" * (len(phases) + 1),
        f"| {times} | **{total:.2f} s** |",
        "",
        f"Backend **{r.backend}** on {r.device}, {r.dtype}; model {r.model}; {r.image_size[0]}×{r.image_size[1]} "
        f"edited at {r.working_size[0]}×{r.working_size[1]}, {r.steps} steps, seed {r.seed}. "
        f"UNet evaluations: {unet}."
        + (f" Image-encoder forwards: {r.image_encoder_forwards}." if r.image_encoder_forwards else "")
        + (f" Wall time of the run: {seconds:.2f} s." if seconds is not None else ""),
        "",
        f"<small>Why this backend: {r.backend_reason.split('; cannot:')[0]}</small>",
    ]
    if r.notes:
        lines += ["", *[f"- {n}" for n in r.notes]]
    return "\n".join(lines)


# -- sample folders ---------------------------------------------------------------------------------------------
def find_samples(roots: Iterable[str | Path], limit: int = 2000) -> dict[str, Path]:
    """DragBench and Drag100 sample folders under ``roots`` (name → folder), names relative to their root."""
    from dragsdk.samples import detect_sample

    found: dict[str, Path] = {}
    for root in roots:
        r = Path(root)
        if not r.is_dir():
            continue
        candidates = [r] + [p.parent for pat in ("meta_data.pkl", "points.json") for p in r.rglob(pat)]
        for folder in sorted(set(candidates)):
            if detect_sample(folder) is None:
                continue
            rel = folder.relative_to(r).as_posix()
            name = f"{r.name}/{rel}" if rel != "." else r.name
            found.setdefault(name, folder)
            if len(found) >= limit:
                return found
    return dict(sorted(found.items()))


# -- server-side limits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UILimits:
    """What one request of the page may ask of the server (``dragsdk ui --max-*`` flags), checked on the server
    whatever the page sends.

    Attributes:
        max_steps: sampling steps of one edit (the mode's default counts too).
        max_resolution: working resolution of one edit (area ≈ resolution² pixels).
        max_upload_mb: size of one uploaded file, megabytes (Gradio refuses larger uploads before they are stored;
            :func:`load_upload` checks again).
        max_megapixels: pixels of an uploaded or opened image, millions (checked before it is decoded).
        max_run_seconds: wall time of one edit; a longer one stops after its current sampling step, so one client
            cannot hold the run slot.
        queue_size: runs waiting for the slot; further ones are refused by Gradio's queue.
    """

    max_steps: int = 100
    max_resolution: int = 1024
    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    max_run_seconds: float = 120.0
    queue_size: int = 16

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "max_resolution",
            "max_upload_mb",
            "max_megapixels",
            "max_run_seconds",
            "queue_size",
        ):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"UILimits.{name} must be a positive number, got {value!r}")


def check_sampler_limits(steps: int, resolution: int, limits: UILimits) -> None:
    """Refuse an edit over the server's caps.

    Raises:
        UIError: (settings) steps or resolution over :class:`UILimits`, naming the flag that raises it.
    """
    if steps > limits.max_steps:
        raise UIError(
            "settings",
            f"steps {steps} is over this server's limit of {limits.max_steps} (dragsdk ui --max-steps)",
        )
    if resolution > limits.max_resolution:
        raise UIError(
            "settings",
            f"resolution {resolution} is over this server's limit of {limits.max_resolution} "
            "(dragsdk ui --max-resolution)",
        )


def _check_pixels(size: tuple[int, int], name: str, limits: UILimits) -> None:
    mp = size[0] * size[1] / 1e6
    if mp > limits.max_megapixels:
        raise UIError(
            "image",
            f"{name} is {size[0]}×{size[1]} pixels ({mp:.1f} MP), over this server's limit of "
            f"{limits.max_megapixels:g} MP (dragsdk ui --max-megapixels)",
        )


def upload_path(payload: Any) -> tuple[Path, str] | None:
    """The stored file and the original name of a Gradio image upload taken without preprocessing (a dict or an
    object with ``path`` and ``orig_name``); None when there is no file."""
    if payload is None:
        return None
    get = payload.get if isinstance(payload, dict) else lambda k, d=None: getattr(payload, k, d)
    path = get("path")
    if not path:
        return None
    return Path(path), Path(get("orig_name") or "").name or Path(path).name


def load_upload(path: str | Path, name: str, limits: UILimits) -> Image.Image:
    """Open an uploaded file as an RGB image, within the server's limits.

    Raises:
        UIError: (image) the file is over :attr:`UILimits.max_upload_mb` or :attr:`UILimits.max_megapixels`, or is
            not an image Pillow can read; the message names the file and what is accepted.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise UIError("image", f"{name}: the upload is gone; upload it again") from None
    if size > limits.max_upload_mb * 1e6:
        raise UIError(
            "image",
            f"{name} is {size / 1e6:.1f} MB, over this server's limit of {limits.max_upload_mb:g} MB "
            "(dragsdk ui --max-upload-mb)",
        )
    try:
        with Image.open(p) as im:
            _check_pixels(im.size, name, limits)
        return load_image(p, field="image")  # EXIF orientation, 16-bit and float scaling, animation refused
    except DragSDKError as e:
        raise UIError("image", f"{name}: {e}") from None
    except UIError:
        raise
    except Image.DecompressionBombError:
        raise UIError(
            "image",
            f"{name} has more pixels than this server decodes (limit "
            f"{limits.max_megapixels:g} MP, dragsdk ui --max-megapixels)",
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UIError(
            "image", f"{name} is not an image this page can read (PNG, JPEG, WebP, BMP, TIFF): {reason}"
        ) from None


def open_sample(
    name: str | None, roots: Iterable[str | Path], listed: dict[str, Path], limits: UILimits | None = None
) -> tuple[Path, Image.Image, dict[str, Any]]:
    """Open a sample folder typed or picked on the page: only DragBench / Drag100 samples under ``roots``.

    ``name`` is a listed name (:func:`find_samples`) or a folder path. Anything else (a folder outside every root,
    through ``..`` or a symbolic link, a folder that is not a sample, a path that does not exist) gets the *same*
    message, so the box cannot be used to learn which paths exist on the server.

    Returns:
        ``(folder, image, spec)``: the resolved folder, its image (RGB) and its ``drag`` spec.

    Raises:
        UIError: (image) nothing named, not an allowed sample, or a sample whose files cannot be read.
    """
    from dragsdk.samples import detect_sample, load_sample

    if not name or not str(name).strip():
        raise UIError("image", "choose a sample folder from the list or type a folder path")
    resolved_roots = [Path(r).resolve() for r in roots if Path(r).is_dir()]
    refused = UIError("image", f"no sample folder {name!r} under the sample folders this server offers")

    def allowed(p: Path) -> bool:
        return any(p == r or r in p.parents for r in resolved_roots)

    try:
        folder = (listed.get(name) or Path(name).expanduser()).resolve()
        ok = allowed(folder) and folder.is_dir() and detect_sample(folder) is not None
    except (OSError, RuntimeError, ValueError):
        ok = False
    if not ok:
        raise refused
    try:
        image_path, spec = load_sample(folder)
        files = [image_path] + (
            [Path(spec["mask"])]
            if isinstance(spec.get("mask"), str) and not spec["mask"].startswith("data:")
            else []
        )
        if not all(allowed(f.resolve()) for f in files):  # a file linked to outside the roots
            raise refused
        with Image.open(image_path) as im:
            _check_pixels(im.size, folder.name, limits or UILimits())
        img = load_image(image_path)
    except UIError:
        raise
    except (DragSDKError, OSError, ValueError) as e:
        raise UIError("image", f"{folder.name}: {e}") from None
    return folder, img, spec
