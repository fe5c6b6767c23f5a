"""Benchmark sample folders as (image, spec) pairs.

- DragBench (DragDiffusion, arXiv 2306.14435): ``original_image.png`` + ``meta_data.pkl`` (prompt, points as
  alternating handle/target ``[x, y]`` pixels, mask ``(H, W)`` uint8 with 1 = editable), read with the
  restricted unpickler.
- Drag100 (GoodDrag, arXiv 2404.07206): ``original.jpg`` + ``points.json`` (``{"points": [[x, y], ...]}``,
  alternating) + ``mask.png`` (white = editable); no prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError
from .io import mask_to_data_url, read_json
from .safe_pickle import restricted_load


def pairs_from_flat(points: Any, field: str = "points") -> list[list[list[float]]]:
    """``[[handle, target], ...]`` from a flat alternating list of ``[x, y]``.

    Raises:
        SpecError: an odd number of points, a point that is not two numbers, or a value that is not finite.
    """
    try:
        arr = np.asarray(points, dtype=float).reshape(-1, 2)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(field, "expected a flat list of [x, y] pixel points (handle, target, ...)") from None
    if not np.isfinite(arr).all():
        raise SpecError(field, "points must be finite numbers")
    pts = [[float(x), float(y)] for x, y in arr]
    if len(pts) == 0 or len(pts) % 2:
        raise SpecError(
            field, f"expected an even, nonzero number of [x, y] points (handle, target, ...), got {len(pts)}"
        )
    return [[pts[i], pts[i + 1]] for i in range(0, len(pts), 2)]


def detect_sample(folder: str | Path) -> str | None:
    """``dragbench``, ``drag100`` or None for a folder."""
    f = Path(folder)
    if (f / "meta_data.pkl").is_file() and (f / "original_image.png").is_file():
        return "dragbench"
    if (f / "points.json").is_file() and (f / "original.jpg").is_file():
        return "drag100"
    return None


def load_sample(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The image path and a ``drag`` spec dict (mask embedded as a data URL) of a sample folder.

    This is the one sample reader of ``dragsdk edit``, ``dragsdk bench`` (:mod:`dragsdk.eval.datasets`) and the UI.
    ``meta_data.pkl`` goes through :func:`dragsdk.safe_pickle.restricted_load`, ``points.json`` through
    :func:`dragsdk.io.read_json`; both are capped at :func:`dragsdk.io.max_sample_bytes`.

    Raises:
        SpecError: the folder is neither layout, or its files are missing, too large or malformed.
        UnsafePickleError: ``meta_data.pkl`` does anything but rebuild plain containers and numeric numpy arrays.
    """
    f = Path(folder)
    kind = detect_sample(f)
    if kind == "dragbench":
        meta = restricted_load(f / "meta_data.pkl")
        if not isinstance(meta, dict) or "points" not in meta:
            raise SpecError("meta_data.pkl", "expected a dict with 'prompt', 'points' and 'mask'")
        spec: dict[str, Any] = {
            "mode": "drag",
            "prompt": str(meta.get("prompt", "")).strip(),
            "points": pairs_from_flat(meta["points"], "meta_data.pkl:points"),
        }
        if meta.get("mask") is not None:
            try:
                mask = np.asarray(meta["mask"])
            except (TypeError, ValueError):
                raise SpecError("meta_data.pkl:mask", "expected an (H, W) array, 1 = editable") from None
            spec["mask"] = mask_to_data_url(mask, "meta_data.pkl:mask")
        return f / "original_image.png", spec
    if kind == "drag100":
        data = read_json(f / "points.json")
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise SpecError("points.json", 'expected an object {"points": [[x, y], ...]}')
        spec = {"mode": "drag", "prompt": "", "points": pairs_from_flat(data["points"], "points.json:points")}
        if (f / "mask.png").is_file():
            spec["mask"] = str(f / "mask.png")
        return f / "original.jpg", spec
    raise SpecError(
        "input",
        f"{f} is not a DragBench (original_image.png + meta_data.pkl) or Drag100 (original.jpg + points.json) sample",
    )
