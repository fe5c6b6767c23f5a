"""Measuring the backends for ``backend="auto"``: ``dragsdk backends --bench`` times each available backend on the
current model and resolution and stores the result in the capability table (:mod:`dragsdk.backends.select`)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backends.select import availability, device_name, model_family, model_key, save_entry, table_key
from .editor import Editor
from .errors import BackendUnavailableError
from .geometry import Canvas
from .io import mask_to_data_url
from .registry import get_registry


def bench_backends(
    model: Any,
    resolution: int = 512,
    steps: int = 4,
    names: Sequence[str] | None = None,
    registry: Any = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    store: bool = True,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time every available backend (or only ``names``) at this model and resolution and store the table.

    Each backend runs a ``drag`` and a ``region-drag`` edit of a synthetic image once untimed (warm-up such as
    compilation), then ``repeats`` times; the median sampling seconds per step is recorded (``drag_step_s``,
    ``region_step_s``) with the spread ``[min, max]`` (``*_spread_s``). With ``names`` the rows are merged into the
    stored entry (other backends' rows stay); without, the entry is replaced.

    Returns:
        the stored entry: ``{"device", "model", "family", "working_size", "dtype", "versions", "measured_at",
        "results"}``.
    """
    reg = registry or get_registry()
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((resolution, resolution, 3)) * 255).astype(np.uint8))
    canvas = Canvas.fit(image.size, resolution)
    s = {"steps": steps, "resolution": resolution}
    r = resolution
    drag = {"mode": "drag", "points": [[[r * 0.4, r * 0.5], [r * 0.55, r * 0.5]]], "sampler": s}
    m = np.zeros((r, r), np.uint8)
    m[r // 4 : r // 2, r // 4 : r // 2] = 255
    mask = mask_to_data_url(m)
    region = {
        "mode": "region-drag",
        "regions": [{"handle": mask, "target": mask_to_data_url(np.roll(m, r // 8, 1))}],
        "sampler": {"steps": max(steps, 4), "resolution": resolution},
    }
    dev, dtype = model.device.type, str(model.dtype).removeprefix("torch.")
    family = model_family(model)
    results: dict[str, Any] = {}
    for name, backend in reg.backends.items():
        if names and name not in names:
            continue
        ok, why = availability(backend)
        if ok and family not in backend.capabilities.families:
            ok, why = False, f"model family {family!r} not in {backend.capabilities.families}"
        row: dict[str, Any] = {"backend": name, "available": ok, "reason": why}
        if ok:
            editor = Editor(model, backend=name, registry=reg)
            for label, spec in (("drag_step_s", drag), ("region_step_s", region)):
                if spec["mode"] not in reg.modes:
                    continue
                try:
                    editor.edit(image, spec)
                    per_step = []
                    for _ in range(max(1, repeats)):
                        rep = editor.edit(image, spec).report
                        n_steps = max(
                            1, rep.unet_evaluations["forward"] - (0 if rep.inversion_reused else rep.steps)
                        )
                        per_step.append(rep.phase_seconds["sample"] / n_steps)
                    row[label] = statistics.median(per_step)
                    row[label.removesuffix("_s") + "_spread_s"] = [min(per_step), max(per_step)]
                    row["repeats"] = len(per_step)
                except BackendUnavailableError as e:
                    row[label] = None
                    row.setdefault("notes", []).append(f"{label}: {e}")
        results[name] = row
        if on_row:
            on_row(row)
    entry = {
        "device": device_name(dev),
        "model": model_key(model),
        "model_name": model.name,
        "family": family,
        "working_size": list(canvas.size),
        "dtype": dtype,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    if store:
        save_entry(table_key(dev, model_key(model), canvas.size, dtype), entry, merge=bool(names))
    return entry


__all__ = ["bench_backends"]
