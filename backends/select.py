"""Choosing a backend for an edit, from measurements when there are some.

``dragsdk backends --bench`` (:func:`dragsdk.backend_bench.bench_backends`) runs two small edits per available backend at the current
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dragsdk.errors import BackendUnavailableError

from .base import BackendNeeds, availability

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


def _order(backends: dict[str, Any]) -> list[str]:
    return sorted(backends, key=lambda n: (-int(getattr(backends[n], "priority", 0)), n))


def refusal(backend: Any, needs: BackendNeeds, named: bool = False) -> tuple[str, str] | None:
    """Why ``backend`` cannot run an edit with ``needs``, as ``(what, why)``: ``cannot run here`` (a missing package,
    no device), ``does not cover this edit`` (its capabilities, or a float32 edit it would compute in reduced
    precision without leave); None when it can. The one place a backend is refused, by name (``named``: reduced
    precision is then allowed, the user asked for that backend) or by ``auto``."""
    ok, why = availability(backend)
    if not ok:
        return "cannot run here", why
    ok, why = backend.capabilities.covers(
        needs.device, needs.dtype, needs.gradients, needs.kv_modes, needs.family, needs.image_prompt
    )
    if not ok:
        return "does not cover this edit", why
    reduced = needs.dtype == "float32" and backend.capabilities.precision == "reduced"
    if reduced and not (needs.allow_reduced or named):
        return "does not cover this edit", (
            "computes in reduced precision; a float32 edit uses it only when asked "
            "(Editor(allow_reduced_precision=True) or the backend named)"
        )
    return None


def select_backend(backends: Mapping[str, Any], request: str, needs: BackendNeeds) -> tuple[Any, str]:
    """Return ``(backend, reason)`` for an edit with ``needs``.

    ``auto`` takes, among the backends that can run here and cover the needs (:func:`refusal`), the fastest in the
    measured table entry for this device, model (:func:`model_key`), working size and dtype; with none measured, the
    first by ``priority``. The reason names the entry that decided (its key and when it was measured).

    Raises:
        BackendUnavailableError: the requested backend is unknown, cannot run here or does not cover the edit;
            with ``auto``, when no backend does (each refusal is listed).
    """
    described = needs.describe()
    if request != "auto":
        if request not in backends:
            raise BackendUnavailableError(
                f"backend {request!r} is not registered; registered: {sorted(backends)}"
            )
        refused = refusal(backends[request], needs, named=True)
        if refused is not None:
            raise BackendUnavailableError(f"backend {request!r} {refused[0]}: {refused[1]}")
        return backends[request], f"requested by name; covers {described}"
    candidates, refusals = [], []
    for name in _order(backends):
        refused = refusal(backends[name], needs)
        (candidates if refused is None else refusals).append(
            name if refused is None else f"{name} ({refused[1]})"
        )
    if not candidates:
        raise BackendUnavailableError(f"no backend covers {described}: " + "; ".join(refusals))
    skipped = f"; cannot: {'; '.join(refusals)}" if refusals else ""
    if needs.working_size is not None:
        key = table_key(needs.device, needs.model, needs.working_size, needs.dtype)
        entry = load_table().get(key)
        metric = "drag_step_s" if needs.gradients else "region_step_s"
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
                    f"{entry.get('measured_at', '?')}; covers {described}{skipped}"
                )
    return backends[candidates[0]], (
        f"auto: nothing measured for this device/model/size, first by priority {_order(dict(backends))} "
        f"that covers {described}{skipped}"
    )


def __getattr__(name: str) -> Any:
    """``bench_backends``: kept importable from here; it lives in :mod:`dragsdk.backend_bench` (it runs edits, so it
    sits above the Editor that this module serves)."""
    if name == "bench_backends":
        import importlib

        return importlib.import_module("dragsdk.backend_bench").bench_backends
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
