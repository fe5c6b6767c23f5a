"""Spec JSON files: read with the limits of :func:`dragsdk.io.read_json`, relative paths made relative to the file.

One reader for ``dragsdk edit --spec``, ``Editor.edit(image, "spec.json")`` and ``folder`` benchmark datasets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SpecError
from .io import read_json
from .spec import EditSpec, loads_spec_json

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


def apply_overrides(spec: dict[str, Any], assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``spec`` with each ``FIELD=VALUE`` of ``assignments`` set, in order (the CLI's ``--set``).

    ``FIELD`` is a top-level spec field or a dotted path into a nested object (``sampler.eta``); ``VALUE`` is read as
    JSON when it parses (``0``, ``0.5``, ``true``, ``null``, ``[1, 2]``, ``"text"``) and is otherwise the string as
    written. The spec itself is not changed: a new dict is returned (nested objects along a path copied). Whether the
    field exists and the value is valid is the spec model's check, when the spec is validated.

    Raises:
        SpecError: (field ``--set``) an assignment without ``=``, with an empty field name or path part, or whose path
            runs through a value that is not an object.
    """
    out = dict(spec)
    for text in assignments:
        name, sep, raw = text.partition("=")
        parts = name.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(
                "--set", f"expected FIELD=VALUE (e.g. lora_steps=0 or sampler.eta=0.5), got {text!r}"
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(
                    "--set", f"{text!r}: {where} is not an object, so it has no field {parts[depth + 1]!r}"
                )
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


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


def spec_from_json(
    data: str | bytes | os.PathLike[str] | dict[str, Any], models: Mapping[str, type[EditSpec]]
) -> EditSpec:
    """Validate a spec with the model of its ``mode``.

    Args:
        data: a dict; JSON text (bytes, or a str starting with ``{``, ``[`` or ``"``); or the path of a spec JSON
            file (any other str, or a ``PathLike``), read by :func:`read_spec_file` (relative
            paths inside resolved against its folder).
        models: the spec model of each mode.

    Raises:
        SpecError: no ``mode`` or an unknown one; (field ``spec``) JSON that is not an object, text that is not
            JSON or holds ``NaN`` / ``Infinity`` (:func:`dragsdk.spec.loads_spec_json`), a missing or unreadable file, or another
            type; (field ``sampler``) ``sampler`` not an object. Pydantic's ``ValidationError`` for invalid field
            values.
    """
    if isinstance(data, os.PathLike) or (isinstance(data, str) and data.lstrip()[:1] not in ("{", "[", '"')):
        obj = read_spec_file(data)
    elif isinstance(data, str | bytes):
        obj = spec_object(loads_spec_json(data))
    elif isinstance(data, dict):
        obj = spec_object(dict(data))
    else:
        raise SpecError(
            "spec", f"expected an EditSpec, a dict, JSON text or a spec file path, got {type(data).__name__}"
        )
    mode = obj.get("mode")
    if mode is None:
        raise SpecError("mode", f"missing; expected one of {sorted(models)}")
    if not isinstance(mode, str) or mode not in models:
        shown = repr(mode[:40]) if isinstance(mode, str) else f"a {type(mode).__name__}"
        raise SpecError("mode", f"unknown mode {shown}; installed modes are {sorted(models)}")
    return models[mode].model_validate(obj)
