"""Choosing a backend for an edit, from measurements when there are some.

``dragsdk backends --bench`` (:func:`bench_backends`) runs two small edits per available backend at the current
model and resolution: a ``drag`` edit (energy guidance, gradients, ``concat`` K/V) and a ``region-drag`` edit (no
gradient, ``replace`` K/V), and stores the sampling seconds per step of each in a table in the user cache directory
(with the device, the versions and the time of measurement). ``backend="auto"`` then takes, among the backends that
can run here and cover the edit (device, dtype, gradients, K/V mode), the fastest measured for that kind of edit on
this device, model, working size and dtype. With nothing measured it takes the first covering backend in
:data:`FALLBACK_ORDER`. The reason goes into the report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dragsdk.errors import BackendUnavailableError

FALLBACK_ORDER = ("triton", "xformers", "eager", "compile", "onnx")
"""Used when nothing is measured. ``compile`` comes after ``eager`` because its first edit pays for compilation."""


def table_path() -> Path:
    """Where the measured table lives: ``$DRAGSDK_CACHE_DIR`` or the platform's user cache dir."""
    import platformdirs

    base = os.environ.get("DRAGSDK_CACHE_DIR") or platformdirs.user_cache_dir("dragsdk")
    return Path(base) / "backend-bench.json"


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu:{platform.processor() or platform.machine()}"


def table_key(device: str, model: str, working_size: Sequence[int], dtype: str) -> str:
    return f"{device_name(device)}|{model}|{working_size[0]}x{working_size[1]}|{dtype}"


def load_table() -> dict[str, Any]:
    p = table_path()
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_entry(key: str, entry: dict[str, Any]) -> Path:
    from dragsdk.io import write_text_atomic

    table = load_table()
    table[key] = entry
    return write_text_atomic(json.dumps(table, indent=2), table_path())


def _covering(backends: dict[str, Any], device: str, dtype: str, gradients: bool, kv_modes: Sequence[str]):
    out, refusals = [], []
    order = [n for n in FALLBACK_ORDER if n in backends] + sorted(n for n in backends if n not in FALLBACK_ORDER)
    for name in order:
        b = backends[name]
        ok, why = b.availability()
        if ok:
            ok, why = b.capabilities.covers(device, dtype, gradients, kv_modes)
        (out if ok else refusals).append(name if ok else f"{name} ({why})")
    return out, refusals


def select_backend(
    backends: dict[str, Any], request: str, device: str, dtype: str, gradients: bool, kv_modes: Sequence[str],
    model: str = "", working_size: Sequence[int] | None = None,
) -> tuple[Any, str]:
    """Return ``(backend, reason)``.

    Raises:
        BackendUnavailableError: the requested backend is unknown, cannot run here or does not cover the edit;
            with ``auto``, when no backend does (each refusal is listed).
    """
    needs = f"device={device}, dtype={dtype}, gradients={gradients}, kv_modes={list(kv_modes)}"
    if request != "auto":
        if request not in backends:
            raise BackendUnavailableError(f"backend {request!r} is not registered; registered: {sorted(backends)}")
        b = backends[request]
        ok, why = b.availability()
        if not ok:
            raise BackendUnavailableError(f"backend {request!r} cannot run here: {why}")
        ok, why = b.capabilities.covers(device, dtype, gradients, kv_modes)
        if not ok:
            raise BackendUnavailableError(f"backend {request!r} does not cover this edit: {why}")
        return b, f"requested by name; covers {needs}"
    candidates, refusals = _covering(backends, device, dtype, gradients, kv_modes)
    if not candidates:
        raise BackendUnavailableError(f"no backend covers {needs}: " + "; ".join(refusals))
    skipped = f"; cannot: {'; '.join(refusals)}" if refusals else ""
    if working_size is not None:
        entry = load_table().get(table_key(device, model, working_size, dtype))
        metric = "drag_step_s" if gradients else "region_step_s"
        if entry:
            timed = {n: r[metric] for n, r in entry.get("results", {}).items() if n in candidates and r.get(metric)}
            if timed:
                best = min(timed, key=timed.__getitem__)
                others = ", ".join(f"{n} {1000 * t:.1f} ms" for n, t in sorted(timed.items(), key=lambda x: x[1]))
                return backends[best], (
                    f"auto: fastest measured on {entry.get('device', device)} for this model and size "
                    f"({metric}: {others}); covers {needs}{skipped}"
                )
    return backends[candidates[0]], (
        f"auto: nothing measured for this device/model/size, first in the fallback order {list(FALLBACK_ORDER)} "
        f"that covers {needs}{skipped}"
    )


def bench_backends(
    model: Any, resolution: int = 512, steps: int = 4, names: Sequence[str] | None = None,
    registry: Any = None, on_row: Callable[[dict[str, Any]], None] | None = None, store: bool = True,
) -> dict[str, Any]:
    """Time every available backend at this model and resolution and store the table.

    Each backend runs a ``drag`` and a ``region-drag`` edit of a synthetic image twice (the first pays any
    warm-up such as compilation); the second run's sampling seconds per step are recorded.

    Returns:
        the stored entry: ``{"device", "model", "working_size", "dtype", "versions", "measured_at", "results"}``.
    """
    import numpy as np
    from PIL import Image

    from dragsdk.editor import Editor
    from dragsdk.geometry import Canvas
    from dragsdk.registry import get_registry

    reg = registry or get_registry()
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((resolution, resolution, 3)) * 255).astype(np.uint8))
    canvas = Canvas.fit(image.size, resolution)
    s = {"steps": steps, "resolution": resolution}
    r = resolution
    drag = {"mode": "drag", "points": [[[r * 0.4, r * 0.5], [r * 0.55, r * 0.5]]], "sampler": s}
    m = np.zeros((r, r), np.uint8)
    m[r // 4 : r // 2, r // 4 : r // 2] = 255
    from dragsdk.io import mask_to_data_url

    mask = mask_to_data_url(m)
    region = {"mode": "region-drag", "regions": [{"handle": mask, "target": mask_to_data_url(np.roll(m, r // 8, 1))}],
              "sampler": {"steps": max(steps, 4), "resolution": resolution}}
    dev, dtype = model.device.type, str(model.dtype).removeprefix("torch.")
    results: dict[str, Any] = {}
    for name, backend in reg.backends.items():
        if names and name not in names:
            continue
        ok, why = backend.availability()
        row: dict[str, Any] = {"backend": name, "available": ok, "reason": why}
        if ok:
            editor = Editor(model, backend=name, registry=reg)
            for label, spec in (("drag_step_s", drag), ("region_step_s", region)):
                if spec["mode"] not in reg.modes:
                    continue
                try:
                    editor.edit(image, spec)
                    rep = editor.edit(image, spec).report
                    n_steps = max(1, rep.unet_evaluations["forward"] - (0 if rep.inversion_reused else rep.steps))
                    row[label] = rep.phase_seconds["sample"] / max(1, n_steps)
                except BackendUnavailableError as e:
                    row[label] = None
                    row.setdefault("notes", []).append(f"{label}: {e}")
        results[name] = row
        if on_row:
            on_row(row)
    entry = {
        "device": device_name(dev), "model": model.name, "working_size": list(canvas.size), "dtype": dtype,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results,
    }
    if store:
        save_entry(table_key(dev, model.name, canvas.size, dtype), entry)
    return entry
