"""Reading inputs safely and writing outputs atomically.

- Images: any Pillow-readable file, converted to RGB.
- Masks: a PNG path, a ``data:image/png;base64,...`` URL (so a spec is one self-contained JSON), a PIL image
  or an ``(H, W)`` array; nonzero = inside.
- Pickles (DragBench ``meta_data.pkl``): only through :func:`restricted_load`, which allows builtins
  containers and numpy array reconstruction and refuses every other global before anything runs.
- Outputs: written to a temporary file in the destination folder, then moved into place with ``os.replace``;
  an existing input is never overwritten.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import SpecError, UnsafePickleError

_DATA_URL_PREFIX = "data:image/png;base64,"

# (module, name) pairs a DragBench / RegionDrag pickle may reference. numpy moved ``core`` to ``_core`` in 2.0.
_PICKLE_ALLOW = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bool"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOW:
            raise UnsafePickleError(
                f"pickle refers to {module}.{name}, which is not on the allow-list "
                "(builtins containers and numpy arrays only); nothing was run"
            )
        return super().find_class(module, name)


def restricted_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle a file allowing only builtin containers and numpy arrays.

    Raises:
        UnsafePickleError: the pickle references any other global (e.g. ``os.system``).
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f).load()


def load_image(source: str | os.PathLike[str] | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an ``(H, W, 3)`` uint8 array.

    Raises:
        SpecError: (field ``image``) the file is missing or not an image.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3:
            raise SpecError("image", f"an array image must be (H, W, 3), got {source.shape}")
        return Image.fromarray(source.astype(np.uint8), "RGB")
    p = Path(source)
    if not p.is_file():
        raise SpecError("image", f"no image file at {p}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except OSError as e:
        raise SpecError("image", f"{p} is not a readable image ({e})") from e


def mask_to_data_url(mask: np.ndarray | Image.Image) -> str:
    """Encode an ``(H, W)`` mask (nonzero = inside) as a PNG data URL."""
    arr = np.asarray(mask.convert("L")) if isinstance(mask, Image.Image) else np.asarray(mask)
    if arr.ndim != 2:
        raise SpecError("mask", f"a mask must be (H, W), got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(((arr > (0.5 if arr.dtype.kind == "f" else 0)) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return _DATA_URL_PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def load_mask(ref: str | os.PathLike[str] | np.ndarray | Image.Image, field: str = "mask") -> np.ndarray:
    """Decode a mask reference into an ``(H, W)`` bool array.

    Args:
        ref: a PNG path, a PNG data URL, a PIL image or an array.
        field: the spec field named in errors.

    Raises:
        SpecError: unreadable file, bad data URL, or not two-dimensional.
    """
    if isinstance(ref, Image.Image):
        return np.asarray(ref.convert("L")) > 127
    if isinstance(ref, np.ndarray):
        if ref.ndim == 3:
            ref = ref[..., 0]
        if ref.ndim != 2:
            raise SpecError(field, f"a mask array must be (H, W), got {ref.shape}")
        return ref > (0.5 if ref.dtype.kind == "f" else 0)
    s = str(ref)
    if s.startswith("data:"):
        if not s.startswith(_DATA_URL_PREFIX):
            raise SpecError(field, "a mask data URL must start with 'data:image/png;base64,'")
        try:
            raw = base64.b64decode(s[len(_DATA_URL_PREFIX):], validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                return np.asarray(im.convert("L")) > 127
        except (ValueError, OSError) as e:
            raise SpecError(field, f"the mask data URL is not a PNG image ({e})") from e
    p = Path(s)
    if not p.is_file():
        raise SpecError(field, f"no mask file at {p}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("L")) > 127
    except OSError as e:
        raise SpecError(field, f"{p} is not a readable image ({e})") from e


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], protect: tuple[Path, ...] = ()) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, then it replaces ``path``.

    Args:
        path: destination.
        write: called with the temporary path; must create the file there.
        protect: input paths that must never be overwritten.

    Raises:
        SpecError: (field ``out``) the destination is one of the protected inputs.
    """
    dest = Path(path).resolve()
    for p in protect:
        if Path(p).resolve() == dest:
            raise SpecError("out", f"refusing to overwrite the input {p}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return dest


def save_image_atomic(image: Image.Image, path: str | os.PathLike[str], protect: tuple[Path, ...] = ()) -> Path:
    """Save a PIL image atomically; the format follows the destination's suffix."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt), protect)


def write_text_atomic(text: str, path: str | os.PathLike[str], protect: tuple[Path, ...] = ()) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), protect)
