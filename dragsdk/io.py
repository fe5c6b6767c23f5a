"""Reading inputs safely and writing outputs atomically.

- Limits: images and masks are at most :func:`max_megapixels` (``DRAGSDK_MAX_MEGAPIXELS``, default 64), sample and
  spec files at most :func:`max_sample_bytes` (``DRAGSDK_MAX_SAMPLE_MB``, default 32 MiB); both checked before
  anything is decoded.
- Images: any Pillow-readable still image, turned as its EXIF orientation says, converted to RGB. 16-bit and float
  data are scaled to 8 bits (:func:`to_uint8`); an animated image is refused unless a frame is chosen.
- Masks: a PNG path, a ``data:image/png;base64,...`` URL (so a spec is one self-contained JSON), a PIL image or an
  array, all decoded by one rule (:func:`load_mask`).
- Pickles (DragBench ``meta_data.pkl``): only through :func:`restricted_load` (:mod:`dragsdk.safe_pickle`).
- JSON files: :func:`read_json` (size cap, UTF-8, nesting depth, one-line errors).
- Outputs: :func:`check_outputs` before any work; written to a temporary file in the destination folder, then
  moved into place with ``os.replace``; an input is never overwritten, and a SIGTERM during the write removes the
  temporary file before the process ends.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import OutputError, SpecError

__all__ = [
    "MASK_THRESHOLD",
    "atomic_write",
    "check_outputs",
    "load_image",
    "load_mask",
    "mask_to_data_url",
    "max_megapixels",
    "max_sample_bytes",
    "read_capped",
    "read_json",
    "save_image_atomic",
    "size_note",
    "to_uint8",
    "write_text_atomic",
]

_DATA_URL_PREFIX = "data:image/png;base64,"

MAX_MEGAPIXELS_ENV = "DRAGSDK_MAX_MEGAPIXELS"
MAX_SAMPLE_MB_ENV = "DRAGSDK_MAX_SAMPLE_MB"
DEFAULT_MAX_MEGAPIXELS = 64.0
DEFAULT_MAX_SAMPLE_MB = 32.0
MAX_JSON_DEPTH = 64
"""Nesting depth a JSON spec or sample file may have (a spec needs about six)."""
MASK_THRESHOLD = 0.5
"""A mask pixel is inside where its value (or its alpha, when the mask has transparency) exceeds this fraction
of full scale."""
FAR_LARGER = 4.0
"""An input with this many times the working area's pixels gets a note in the report."""


# -- limits ----------------------------------------------------------------------------------------------------


def _env_limit(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(name, f"expected a positive number, got {raw[:40]!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise SpecError(name, f"expected a positive number, got {raw[:40]!r}")
    return value


def max_megapixels(override: float | None = None) -> float:
    """The image and mask size cap in megapixels: ``override``, else ``DRAGSDK_MAX_MEGAPIXELS``, else 64.

    Raises:
        SpecError: the environment variable is not a positive number.
    """
    return float(override) if override is not None else _env_limit(MAX_MEGAPIXELS_ENV, DEFAULT_MAX_MEGAPIXELS)


def max_sample_bytes(override: int | None = None) -> int:
    """The size cap of sample files (``meta_data.pkl``, ``points.json``) and spec JSON, in bytes: ``override``,
    else ``DRAGSDK_MAX_SAMPLE_MB`` (MiB), else 32 MiB.

    Raises:
        SpecError: the environment variable is not a positive number.
    """
    return (
        int(override)
        if override is not None
        else int(_env_limit(MAX_SAMPLE_MB_ENV, DEFAULT_MAX_SAMPLE_MB) * 2**20)
    )


def _check_pixels(size: tuple[int, int], field: str, what: str, cap_mp: float | None) -> None:
    cap = max_megapixels(cap_mp)
    mp = size[0] * size[1] / 1e6
    if mp > cap:
        raise SpecError(
            field,
            f"{what} is {size[0]}×{size[1]} ({mp:.3g} megapixels), more than the {cap:g}-megapixel "
            f"limit (raise it with {MAX_MEGAPIXELS_ENV} or max_megapixels=)",
        )


def size_note(image_size: tuple[int, int], working_size: tuple[int, int]) -> str | None:
    """A report note when the input has at least :data:`FAR_LARGER` times the working area's pixels, else None."""
    ratio = image_size[0] * image_size[1] / max(1, working_size[0] * working_size[1])
    if ratio < FAR_LARGER:
        return None
    return (
        f"the input {image_size[0]}×{image_size[1]} has {ratio:.0f}× the pixels of the working size "
        f"{working_size[0]}×{working_size[1]}: the edit runs at the working size and is resized back, so detail "
        "finer than that is not edited (raise sampler.resolution to keep more)"
    )


# -- files -----------------------------------------------------------------------------------------------------


def read_capped(path: str | os.PathLike[str], field: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a small input file (a sample pickle or JSON), refused above :func:`max_sample_bytes`.

    Raises:
        SpecError: (``field``) missing, a folder, unreadable or larger than the cap.
    """
    p = Path(path)
    cap = max_sample_bytes(max_bytes)
    if p.is_dir():
        raise SpecError(field, f"{p} is a folder, expected a file")
    if not p.is_file():
        raise SpecError(field, f"no file at {p}")
    try:
        size = p.stat().st_size
        if size > cap:
            raise SpecError(
                field,
                f"{p} is {size / 2**20:.1f} MiB, more than the {cap / 2**20:g} MiB limit "
                f"(raise it with {MAX_SAMPLE_MB_ENV})",
            )
        with open(p, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise SpecError(field, f"{p} cannot be read ({e.strerror or e})") from e
    if len(data) > cap:
        raise SpecError(
            field, f"{p} is larger than the {cap / 2**20:g} MiB limit (raise it with {MAX_SAMPLE_MB_ENV})"
        )
    return data


def parse_json(text: str | bytes, field: str, source: str = "", allow_nan: bool = True) -> Any:
    """Parse JSON text; refuse non-UTF-8 bytes and nesting deeper than :data:`MAX_JSON_DEPTH`, and with
    ``allow_nan=False`` the non-standard literals ``NaN``, ``Infinity`` and ``-Infinity`` that Python's ``json``
    accepts (RFC 8259 has no such numbers; specs refuse them, result files written by Python may hold them).

    Raises:
        SpecError: (``field``) not UTF-8, not JSON (line and column given), nested too deeply, or one of those
            literals when not allowed.
    """
    where = f"{source} " if source else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SpecError(
                field, f"{where}is not UTF-8 text (byte {e.start} is 0x{text[e.start]:02x})"
            ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(
            field, f"{where}is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except RecursionError:
        raise SpecError(field, f"{where}is nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_depth(value, field, where)
    if not allow_nan:
        _refuse_non_finite(value, where)
    return value


def _refuse_non_finite(value: Any, where: str) -> None:
    """Raise :class:`SpecError` naming the first key path (``energy_scale``, ``points[0][1][0]``) that holds
    ``NaN`` / ``Infinity`` / ``-Infinity``."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:
        v, path = todo.pop()
        if isinstance(v, float) and not math.isfinite(v):
            literal = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
            raise SpecError(
                path or "spec",
                f"{where}holds the JSON literal {literal}, which is not a finite number; give a finite one",
            )
        if isinstance(v, dict):
            todo.extend((x, f"{path}.{k}" if path else str(k)) for k, x in v.items())
        elif isinstance(v, list):
            todo.extend((x, f"{path}[{i}]") for i, x in enumerate(v))


def _check_depth(value: Any, field: str, where: str) -> None:
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise SpecError(field, f"{where}is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(v, dict):
            todo.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, depth + 1) for x in v)


def read_json(
    path: str | os.PathLike[str],
    field: str | None = None,
    max_bytes: int | None = None,
    allow_nan: bool = True,
) -> Any:
    """Read a JSON file (a spec, ``points.json``, ``run.json``) with :func:`read_capped` and :func:`parse_json`.

    Args:
        path: the file.
        field: the name errors give (default: the file name).
        max_bytes: size cap (default :func:`max_sample_bytes`).
        allow_nan: accept the literals ``NaN`` / ``Infinity`` (see :func:`parse_json`).

    Raises:
        SpecError: missing, a folder, too large, not UTF-8, not JSON or nested too deeply.
    """
    p = Path(path)
    name = field or p.name
    return parse_json(read_capped(p, name, max_bytes), name, str(p), allow_nan)


# -- images ----------------------------------------------------------------------------------------------------


def to_uint8(a: np.ndarray, field: str = "image", sixteen_bit: bool = False) -> np.ndarray:
    """8-bit values of image data, scaled (never wrapped or clipped).

    - bool: ``True`` → 255.
    - integers: values in [0, 255] are kept; an array whose maximum exceeds 255 (or ``sixteen_bit``, Pillow's
      ``I;16`` modes) is 16-bit, scaled by 255/65535; negative values or values above 65535 are refused.
    - floats: values in [0, 1] are scaled by 255, values in [0, 255] kept; anything else (or NaN/inf) is refused.

    Raises:
        SpecError: (``field``) empty, an unsupported dtype, or values outside the ranges above.
    """
    a = np.asarray(a)
    if a.size == 0:
        raise SpecError(field, f"is empty (shape {a.shape})")
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise SpecError(
                field, f"integer values must lie in [0, 255] or, 16-bit, [0, 65535]; got [{lo}, {hi}]"
            )
        if sixteen_bit or hi > 255:
            return np.round(a.astype(np.float32) * np.float32(255 / 65535)).astype(np.uint8)
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise SpecError(field, "has NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return np.round(a.astype(np.float32) * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.round(a).astype(np.uint8)
        raise SpecError(field, f"float values must lie in [0, 1] (or [0, 255]); got [{lo:g}, {hi:g}]")
    raise SpecError(field, f"unsupported array dtype {a.dtype} (expected bool, integers or floats)")


def _high_depth(im: Image.Image) -> np.ndarray | None:
    """The values of a 16-bit or float Pillow image (modes ``I;16*``, ``I``, ``F``), else None."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("I", "F"):
        return np.asarray(im)
    return None


def _image_to_rgb(im: Image.Image, field: str) -> Image.Image:
    values = _high_depth(im)
    if values is not None:
        return Image.fromarray(to_uint8(values, field, sixteen_bit=im.mode.startswith("I;16")), "L").convert(
            "RGB"
        )
    return im.convert("RGB")


def _array_to_rgb(a: np.ndarray, field: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise SpecError(field, f"an array image must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    u8 = to_uint8(a, field)
    return Image.fromarray(u8, "L").convert("RGB") if u8.ndim == 2 else Image.fromarray(u8, "RGB")


@contextmanager
def _open(
    source: Path | bytes, field: str, what: str, cap_mp: float | None, frame: int | None
) -> Iterator[Image.Image]:
    """Open an image file (or PNG bytes), check its size before decoding, choose the frame, apply EXIF."""
    if isinstance(source, Path):
        if source.is_dir():
            raise SpecError(field, f"{source} is a folder, not an image")
        if not source.is_file():
            raise SpecError(field, f"no {what} file at {source}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError:
        raise SpecError(
            field,
            f"{_name(source, what)} declares more pixels than Pillow decodes (a decompression "
            f"bomb?); the limit is {max_megapixels(cap_mp):g} megapixels",
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SpecError(
            field, f"{_name(source, what)} is not a readable image ({str(e).splitlines()[0][:120]})"
        ) from None
    with im:
        try:
            _check_pixels(im.size, field, _name(source, what), cap_mp)
            yield _still(im, field, _name(source, what), frame)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            if isinstance(e, SpecError):
                raise
            raise SpecError(
                field, f"{_name(source, what)} cannot be decoded ({str(e).splitlines()[0][:120]})"
            ) from None


def _name(source: Path | bytes, what: str) -> str:
    return str(source) if isinstance(source, Path) else f"the {what} data URL"


def _still(im: Image.Image, field: str, name: str, frame: int | None) -> Image.Image:
    """One frame of ``im``, turned as its EXIF orientation says. An animated image needs ``frame``; a
    multi-picture JPEG (MPO, as phones write) is its first picture."""
    n = getattr(im, "n_frames", 1)
    if frame is not None:
        if not 0 <= frame < n:
            raise SpecError(field, f"frame {frame} does not exist: {name} has {n} frame(s)")
        im.seek(frame)
    elif getattr(im, "is_animated", False) and im.format != "MPO":
        what = f"a multi-page TIFF ({n} pages)" if im.format == "TIFF" else f"animated ({n} frames)"
        raise SpecError(
            field,
            f"{name} is {what}; choose one (frame=k from 0, --frame K on the "
            "command line) or save it as a still image",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im.load()
        return ImageOps.exif_transpose(im) or im


def load_image(
    source: str | os.PathLike[str] | Image.Image | np.ndarray,
    field: str = "image",
    max_megapixels: float | None = None,
    frame: int | None = None,
) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an array, decoded as viewers show it.

    EXIF orientation is applied (``ImageOps.exif_transpose``); 16-bit (``I;16``, ``I``) and float (``F``) images
    and non-uint8 arrays ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha dropped) are scaled by :func:`to_uint8`.

    Args:
        source: a path, a PIL image or an array.
        field: the spec field named in errors.
        max_megapixels: size cap (default :func:`max_megapixels`: ``DRAGSDK_MAX_MEGAPIXELS`` or 64), checked from
            the file header before anything is decoded.
        frame: the frame of an animated image (GIF, APNG, WebP, TIFF); without it an animated image is refused.

    Raises:
        SpecError: (``field``) missing, a folder, not an image, animated, larger than the cap, or values that
            cannot be scaled.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, field, "the image", max_megapixels)
        return _image_to_rgb(_still(source, field, "the image", frame), field)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels((source.shape[1], source.shape[0]), field, "the array", max_megapixels)
        return _array_to_rgb(source, field)
    if not isinstance(source, str | os.PathLike):
        raise SpecError(field, f"expected a path, a PIL image or an array, got {type(source).__name__}")
    with _open(Path(source), field, "image", max_megapixels, frame) as im:
        return _image_to_rgb(im, field)


# -- masks -----------------------------------------------------------------------------------------------------


def _mask_values(a: np.ndarray, field: str, sixteen_bit: bool = False) -> np.ndarray:
    """Inside where a value exceeds :data:`MASK_THRESHOLD` of full scale; an integer mask whose maximum is 1 is a
    0/1 mask (DragBench's convention: 1 = inside)."""
    if a.size == 0:
        raise SpecError(field, f"the mask is empty (shape {a.shape})")
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise SpecError(
                field, f"integer mask values must lie in [0, 255] or [0, 65535]; got [{lo}, {hi}]"
            )
        if hi <= 1:
            return a > 0
        full = 65535 if sixteen_bit or hi > 255 else 255
        return a > MASK_THRESHOLD * full
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise SpecError(field, "the mask has NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise SpecError(
                field, f"float mask values must lie in [0, 1] (or [0, 255]); got [{lo:g}, {hi:g}]"
            )
        return a > MASK_THRESHOLD * (1.0 if hi <= 1 else 255.0)
    raise SpecError(field, f"unsupported mask dtype {a.dtype} (expected bool, integers or floats)")


def _alpha_decides(alpha: np.ndarray, field: str) -> np.ndarray | None:
    """Inside where alpha exceeds the threshold, when the alpha channel has any transparency; else None."""
    if alpha.dtype.kind == "f":
        full = 1.0 if float(np.nanmax(alpha)) <= 1 else 255.0
    else:
        full = 65535 if int(alpha.max()) > 255 else 255
    if alpha.min() >= full:
        return None
    return _mask_values(alpha.astype(np.float32) / np.float32(full), field)


def _mask_from_image(im: Image.Image, field: str) -> np.ndarray:
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        inside = _alpha_decides(np.asarray(im.convert("RGBA"))[..., 3], field)
        if inside is not None:
            return inside
    values = _high_depth(im)
    if values is not None:
        return _mask_values(values, field, sixteen_bit=im.mode.startswith("I;16"))
    if im.mode in ("1", "L", "LA", "La"):
        return _mask_values(np.asarray(im.convert("L")), field)
    return _mask_values(np.asarray(im.convert("RGB")).max(axis=2), field)


def _mask_from_array(a: np.ndarray, field: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] in (2, 4):
        inside = _alpha_decides(a[..., -1], field)
        if inside is not None:
            return inside
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[2] in (1, 3):
        a = a.max(axis=2)
    if a.ndim != 2:
        raise SpecError(field, f"a mask array must be (H, W), (H, W, 1|2|3|4), got {a.shape}")
    return _mask_values(a, field)


def load_mask(
    ref: str | os.PathLike[str] | np.ndarray | Image.Image,
    field: str = "mask",
    max_megapixels: float | None = None,
) -> np.ndarray:
    """Decode a mask reference into an ``(H, W)`` bool array (True = inside).

    One rule for files, data URLs, PIL images and arrays:

    1. A mask with an alpha channel that is not fully opaque (RGBA/LA images, PNG transparency, ``(H, W, 4)`` or
       ``(H, W, 2)`` arrays): inside where alpha exceeds :data:`MASK_THRESHOLD` (transparent = outside), whatever
       the colour, as brush strokes on a transparent layer are drawn.
    2. Otherwise the value decides (the brightest channel of a colour mask): inside where it exceeds
       :data:`MASK_THRESHOLD` of full scale (255 for 8 bits, 65535 for 16 bits, 1 for floats in [0, 1]). An
       integer mask whose maximum is 1 is a 0/1 mask (DragBench's convention), inside where 1.

    Files are turned by their EXIF orientation, as images are.

    Args:
        ref: a PNG path, a PNG data URL, a PIL image or an array.
        field: the spec field named in errors.
        max_megapixels: size cap (default :func:`max_megapixels`).

    Raises:
        SpecError: unreadable or missing file, bad data URL, animated image, larger than the cap, not
            two-dimensional, or values that are not a mask.
    """
    if isinstance(ref, Image.Image):
        _check_pixels(ref.size, field, "the mask", max_megapixels)
        return _mask_from_image(_still(ref, field, "the mask", None), field)
    if isinstance(ref, np.ndarray):
        if ref.ndim >= 2:
            _check_pixels((ref.shape[1], ref.shape[0]), field, "the mask array", max_megapixels)
        return _mask_from_array(ref, field)
    if not isinstance(ref, str | os.PathLike):
        raise SpecError(
            field, f"expected a PNG path, a data URL, a PIL image or an array, got {type(ref).__name__}"
        )
    s = str(ref)
    source: Path | bytes
    if s.startswith("data:"):
        if not s.startswith(_DATA_URL_PREFIX):
            raise SpecError(field, "a mask data URL must start with 'data:image/png;base64,'")
        try:
            source = base64.b64decode(s[len(_DATA_URL_PREFIX) :], validate=True)
        except ValueError as e:
            raise SpecError(field, f"the mask data URL is not base64 ({e})") from None
    else:
        source = Path(s)
    with _open(source, field, "mask", max_megapixels, None) as im:
        return _mask_from_image(im, field)


def mask_to_data_url(mask: np.ndarray | Image.Image, field: str = "mask") -> str:
    """Encode a mask (decoded by the :func:`load_mask` rule) as a black/white PNG data URL."""
    m = load_mask(mask, field)
    buf = io.BytesIO()
    Image.fromarray(m.astype(np.uint8) * 255, "L").save(buf, "PNG")
    return _DATA_URL_PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


# -- outputs ---------------------------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_special(dest: Path, field: str) -> None:
    """Refuse an output path that exists and is not a regular file (a symbolic link is judged by its target)."""
    if dest.is_dir():
        raise SpecError(field, f"{dest} is a folder; give a file path")
    try:
        st = dest.stat()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise SpecError(field, f"cannot check {dest} ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a character device"
            if stat.S_ISCHR(st.st_mode)
            else "a block device"
            if stat.S_ISBLK(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        raise SpecError(
            field, f"{dest} exists and is {kind}; outputs replace a regular file only, give a file path"
        )


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None], protect: tuple[Path, ...] = ()
) -> None:
    """Check output paths before any work starts.

    Args:
        outputs: ``field → path`` (e.g. ``{"out": ..., "report": ...}``); None entries are skipped.
        protect: every input the work reads; none may be an output.

    Raises:
        SpecError: (the output's field) it is a protected input, the same file as another output, a folder, an
            existing path that is not a regular file (a device, FIFO or socket: an atomic rename would replace it),
            or its folder cannot be created or written.
    """
    seen: dict[str, Path] = {}
    for field, path in outputs.items():
        if path is None:
            continue
        dest = Path(path)
        _refuse_special(dest, field)
        for p in protect:
            if _same_file(dest, Path(p)):
                raise SpecError(field, f"refusing to overwrite the input {p}")
        for other, q in seen.items():
            if _same_file(dest, q):
                raise SpecError(field, f"{dest} is also the {other} path; the two outputs must differ")
        parent = dest.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise SpecError(field, f"cannot create {dest}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SpecError(field, f"cannot write {dest}: the folder {parent} is not writable")
        seen[field] = dest


_pending: set[Path] = set()
_pending_lock = threading.Lock()


@contextmanager
def _removed_on_sigterm() -> Iterator[None]:
    """While a write runs in the main thread, SIGTERM first removes every pending temporary file, then does what
    it did before (the previous Python handler, or the default: end the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        with _pending_lock:
            for p in list(_pending):
                p.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[Path], None],
    protect: tuple[Path, ...] = (),
    field: str = "out",
) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, then it replaces ``path``.

    The temporary file is removed when ``write`` fails, on KeyboardInterrupt, and (writes from the main thread) on
    SIGTERM before the signal takes effect.

    Args:
        path: destination.
        write: called with the temporary path; must create the file there.
        protect: input paths that must never be overwritten.
        field: the name errors give the destination (``out``, ``report``).

    Raises:
        SpecError: (``field``) the destination is a protected input, a folder, or an existing path that is not a
            regular file (device, FIFO, socket).
        OutputError: the file cannot be written (permissions, full disk, ...); nothing is left behind.
    """
    dest = Path(path).resolve()
    for p in protect:
        if _same_file(dest, Path(p)):
            raise SpecError(field, f"refusing to overwrite the input {p}")
    _refuse_special(dest, field)
    with _removed_on_sigterm():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
        except OSError as e:
            raise OutputError(f"{field}: cannot write {dest} ({e.strerror or e})") from e
        os.close(fd)
        tmp_path = Path(tmp)
        with _pending_lock:
            _pending.add(tmp_path)
        try:
            write(tmp_path)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
            os.replace(tmp_path, dest)
        except OSError as e:
            raise OutputError(f"{field}: cannot write {dest} ({e.strerror or e})") from e
        finally:
            tmp_path.unlink(missing_ok=True)
            with _pending_lock:
                _pending.discard(tmp_path)
    return dest


def save_image_atomic(
    image: Image.Image, path: str | os.PathLike[str], protect: tuple[Path, ...] = (), field: str = "out"
) -> Path:
    """Save a PIL image atomically; the format follows the destination's suffix."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt), protect, field)


def write_text_atomic(
    text: str, path: str | os.PathLike[str], protect: tuple[Path, ...] = (), field: str = "out"
) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), protect, field)


def __getattr__(name: str) -> Any:
    """``dragsdk.io.restricted_load``: kept for old imports; it lives in :mod:`dragsdk.safe_pickle` (which reads
    through this module, so this module never imports it at import time)."""
    if name == "restricted_load":
        import importlib

        return importlib.import_module("dragsdk.safe_pickle").restricted_load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
