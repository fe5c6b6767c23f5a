"""Spec JSON files: read with the limits of :func:`dragsdk.io.read_json`, relative paths made relative to the file.

One reader for ``dragsdk edit --spec``, ``Editor.edit(image, "spec.json")`` and ``folder`` benchmark datasets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SpecError
from .io import read_json

PATH_KEYS = ("mask", "reference", "reference_mask", "fill_region", "region")
"""Top-level spec keys that may hold a file path (modes add theirs through ``resolve_paths``)."""


def spec_object(value: Any, field: str = "spec") -> dict[str, Any]:
    """``value`` if it is a JSON object (a dict), else a :class:`SpecError` saying what it is."""
    if not isinstance(value, dict):
        what = {
            list: "an array",
            str: "a string",
            int: "a number",
            float: "a number",
            bool: "a boolean",
            type(None): "null",
        }.get(type(value), type(value).__name__)
        raise SpecError(
            field, f'expected a JSON object with a \'mode\' (e.g. {{"mode": "drag", ...}}), got {what}'
        )
    if "sampler" in value and not isinstance(value["sampler"], dict):
        raise SpecError("sampler", 'expected an object of sampler settings (e.g. {"steps": 50})')
    return value


def resolve_spec_paths(spec: dict[str, Any], base: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of ``spec`` whose relative path fields (:data:`PATH_KEYS` and each mode's own, through
    ``EditMode.resolve_paths``) are joined to ``base``, the spec file's folder. Data URLs are kept."""
    from .registry import get_registry

    out = dict(spec)
    b = Path(base)
    for key in PATH_KEYS:
        v = out.get(key)
        if isinstance(v, str) and not v.startswith("data:") and not Path(v).is_absolute():
            out[key] = str(b / v)
    modes = get_registry().modes
    if isinstance(out.get("mode"), str) and out["mode"] in modes:
        out = modes[out["mode"]].resolve_paths(out, b)
    return out


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A spec dict from a JSON file, relative paths resolved against the file's folder.

    Raises:
        SpecError: (field ``spec``) missing, a folder, too large, not UTF-8, not JSON, nested too deeply, holding
            ``NaN`` / ``Infinity``, not an object; (field ``sampler``) ``sampler`` is not an object.
    """
    p = Path(path)
    return resolve_spec_paths(spec_object(read_json(p, "spec", allow_nan=False)), p.parent)


def input_files(spec: dict[str, Any]) -> tuple[Path, ...]:
    """Every existing file a spec dict names (any string value, nested too, that is a file path): the inputs an
    edit reads, which its outputs must never overwrite."""
    found: list[Path] = []
    todo: list[Any] = [spec]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
        elif isinstance(v, str) and not v.startswith("data:") and 0 < len(v) < 4096:
            try:
                if Path(v).is_file():
                    found.append(Path(v))
            except (OSError, ValueError):
                continue
    return tuple(found)
