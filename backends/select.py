"""Choosing a backend for an edit.

``backend="auto"`` takes, among registered backends that can run here and whose capabilities cover the edit
(device, dtype, gradients for energy-guided modes, K/V mode), the first in :data:`FALLBACK_ORDER`, then any
other in name order. The reason of the choice goes into the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dragsdk.errors import BackendUnavailableError

FALLBACK_ORDER = ("triton", "xformers", "compile", "onnx", "eager")


def select_backend(
    backends: dict[str, Any], request: str, device: str, dtype: str, gradients: bool, kv_modes: Sequence[str]
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
    refusals = []
    order = [n for n in FALLBACK_ORDER if n in backends] + sorted(n for n in backends if n not in FALLBACK_ORDER)
    for name in order:
        b = backends[name]
        ok, why = b.availability()
        if ok:
            ok, why = b.capabilities.covers(device, dtype, gradients, kv_modes)
        if ok:
            skipped = f"; skipped: {'; '.join(refusals)}" if refusals else ""
            return b, f"auto: first in the fallback order {list(FALLBACK_ORDER)} that covers {needs}{skipped}"
        refusals.append(f"{name} ({why})")
    raise BackendUnavailableError(f"no backend covers {needs}: " + "; ".join(refusals))
