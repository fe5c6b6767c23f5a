"""Choosing a backend for an edit, from measurements when there are some.

``dragsdk backends --bench`` (:func:`bench_backends`) runs two small edits per available backend at the current
model and resolution: a ``drag`` edit (energy guidance, gradients, ``concat`` K/V) and a ``region-drag`` edit (no
gradient, ``replace`` K/V), and stores the sampling seconds per step of each in a table in the user cache directory
(with the device, the versions and the time of measurement). ``backend="auto"`` then takes, among the backends that
can run here and cover the edit (model family, device, dtype, gradients, K/V mode), the fastest measured for that kind of edit on
this device, model, working size and dtype. With nothing measured it takes the first covering backend in
:data:`FALLBACK_ORDER`. The reason goes into the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dragsdk.errors import BackendUnavailableError

FALLBACK_ORDER = ("triton", "xformers", "eager", "compile", "onnx")
"""The built-ins' order when nothing is measured (their ``priority``: 40, 30, 20, 10, 0). ``compile`` comes after
``eager`` because its first edit pays for compilation. Plugins take their place by their own ``priority``."""


def table_path() -> Path:
    """Where the measured table lives: ``$DRAGSDK_CACHE_DIR`` or the platform's user cache dir."""
    import platformdirs

    base = os.environ.get("DRAGSDK_CACHE_DIR") or platformdirs.user_cache_dir("dragsdk")
    return Path(base) / "backend-bench.json"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """The exact device: the GPU's name, or the CPU's model name (``/proc/cpuinfo``) and core count."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu:{_cpu_model()} ({os.cpu_count()} cores)"


def model_family(model: Any) -> str:
    """The model family (``sd1``, ``sd2``, ``sdxl``): the bundle's own ``family`` when it has one, else read from
    the UNet config (text-time conditioning → SDXL; 1024-wide cross-attention → SD 2.x)."""
    fam = getattr(model, "family", None)
    if isinstance(fam, str) and fam:
        return fam
    cfg = dict(model.unet.config)
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if cfg.get("cross_attention_dim", 768) == 1024 else "sd1"


def model_key(model: Any) -> str:
    """``family:hash`` of the UNet architecture (its config): what decides the cost, whatever the weights."""
    cfg = json.dumps(dict(model.unet.config), sort_keys=True, default=str)
    return f"{model_family(model)}:{hashlib.sha1(cfg.encode()).hexdigest()[:10]}"


def table_key(device: str, model: str, working_size: Sequence[int], dtype: str) -> str:
    """``device name|model key|HxW|dtype`` (``model`` is :func:`model_key`, or any stable name)."""
    return f"{device_name(device)}|{model}|{working_size[0]}x{working_size[1]}|{dtype}"


def load_table() -> dict[str, Any]:
    p = table_path()
    if not p.is_file():
        return {}
    try:
        table = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return table if isinstance(table, dict) else {}


def save_entry(key: str, entry: dict[str, Any], merge: bool = False) -> Path:
    """Store ``entry`` under ``key``; with ``merge``, its ``results`` are added to the stored entry's (the
    backends measured now replace their old rows, the others stay)."""
    from dragsdk.io import write_text_atomic

    table = load_table()
    old = table.get(key)
    if merge and isinstance(old, dict) and isinstance(old.get("results"), dict):
        entry = {**entry, "results": {**old["results"], **entry.get("results", {})}}
    table[key] = entry
    return write_text_atomic(json.dumps(table, indent=2), table_path())


def availability(backend: Any) -> tuple[bool, str]:
    """``backend.availability()``, with an exception raised by a (plugin) backend turned into a refusal."""
    try:
        ok, why = backend.availability()
    except Exception as e:
        return False, f"availability() raised {type(e).__name__}: {str(e)[:200]}"
    return bool(ok), str(why)


def _order(backends: dict[str, Any]) -> list[str]:
    return sorted(backends, key=lambda n: (-int(getattr(backends[n], "priority", 0)), n))


def _covering(
    backends: dict[str, Any],
    device: str,
    dtype: str,
    gradients: bool,
    kv_modes: Sequence[str],
    allow_reduced: bool = False,
    family: str | None = None,
    image_prompt: bool = False,
):
    out, refusals = [], []
    for name in _order(backends):
        b = backends[name]
        ok, why = availability(b)
        if ok:
            ok, why = b.capabilities.covers(device, dtype, gradients, kv_modes, family, image_prompt)
        if ok and dtype == "float32" and b.capabilities.precision == "reduced" and not allow_reduced:
            ok, why = (
                False,
                "computes in reduced precision; a float32 edit uses it only when asked "
                "(Editor(allow_reduced_precision=True) or the backend named)",
            )
        (out if ok else refusals).append(name if ok else f"{name} ({why})")
    return out, refusals


def select_backend(
    backends: dict[str, Any],
    request: str,
    device: str,
    dtype: str,
    gradients: bool,
    kv_modes: Sequence[str],
    model: str = "",
    working_size: Sequence[int] | None = None,
    allow_reduced: bool = False,
    family: str | None = None,
    image_prompt: bool = False,
) -> tuple[Any, str]:
    """Return ``(backend, reason)``.

    ``auto`` takes, among the backends that can run here and cover the edit (``family``, the model's, when given:
    a backend whose ``Capabilities.families`` leave it out is skipped; and, for a float32 edit, compute in
    native precision unless ``allow_reduced``; with ``image_prompt``, compute the IP-Adapter term), the fastest in the measured table entry for this device, model
    (:func:`model_key`), working size and dtype; with none measured, the first by ``priority``. The reason names the
    entry that decided (its key and when it was measured).

    Raises:
        BackendUnavailableError: the requested backend is unknown, cannot run here or does not cover the edit;
            with ``auto``, when no backend does (each refusal is listed).
    """
    needs = (
        (f"family={family}, " if family is not None else "")
        + (f"device={device}, dtype={dtype}, gradients={gradients}, kv_modes={list(kv_modes)}")
        + (", image_prompt=True" if image_prompt else "")
    )
    if request != "auto":
        if request not in backends:
            raise BackendUnavailableError(
                f"backend {request!r} is not registered; registered: {sorted(backends)}"
            )
        b = backends[request]
        ok, why = availability(b)
        if not ok:
            raise BackendUnavailableError(f"backend {request!r} cannot run here: {why}")
        ok, why = b.capabilities.covers(device, dtype, gradients, kv_modes, family, image_prompt)
        if not ok:
            raise BackendUnavailableError(f"backend {request!r} does not cover this edit: {why}")
        return b, f"requested by name; covers {needs}"
    candidates, refusals = _covering(
        backends, device, dtype, gradients, kv_modes, allow_reduced, family, image_prompt
    )
    if not candidates:
        raise BackendUnavailableError(f"no backend covers {needs}: " + "; ".join(refusals))
    skipped = f"; cannot: {'; '.join(refusals)}" if refusals else ""
    if working_size is not None:
        key = table_key(device, model, working_size, dtype)
        entry = load_table().get(key)
        metric = "drag_step_s" if gradients else "region_step_s"
        if isinstance(entry, dict) and isinstance(entry.get("results"), dict):
            timed = {
                n: r[metric]
                for n, r in entry["results"].items()
                if n in candidates and isinstance(r, dict) and isinstance(r.get(metric), (int, float))
            }
            if timed:
                best = min(timed, key=timed.__getitem__)
                others = ", ".join(
                    f"{n} {1000 * t:.1f} ms" for n, t in sorted(timed.items(), key=lambda x: x[1])
                )
                return backends[best], (
                    f"auto: fastest measured (median {metric}: {others}) in the table entry {key!r} measured "
                    f"{entry.get('measured_at', '?')}; covers {needs}{skipped}"
                )
    return backends[candidates[0]], (
        f"auto: nothing measured for this device/model/size, first by priority {_order(backends)} "
        f"that covers {needs}{skipped}"
    )


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
