"""One run of the browser editor, free of Gradio: spec → :meth:`Editor.edit` → files to download."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dragsdk.io import check_outputs, load_image, save_image_atomic, write_text_atomic

from .state import UIError, UILimits, check_sampler_limits, portable_spec

_LOCK = threading.Lock()
"""One edit at a time: an Editor holds one model and one cached inversion."""


class RunStopped(Exception):
    """An edit stopped between sampling steps: cancelled from the page, or over the time limit. Nothing is written
    and the editor's cached inversion is left as it was before the edit."""


class RunControl:
    """Cancellation of the runs in progress, one per client (Gradio's session hash), thread-safe.

    The page's Cancel button calls :meth:`cancel`; the run checks :meth:`check` after every sampling step.
    """

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        """A fresh cancel flag for ``key``'s new run."""
        with self._lock:
            event = self._events[key] = threading.Event()
        return event

    def cancel(self, key: str) -> bool:
        """Ask ``key``'s run to stop after its current step; False when it has none."""
        with self._lock:
            event = self._events.get(key)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


@dataclass
class RunOutput:
    """What the page shows and offers to download after an edit.

    Attributes:
        result: the edited image (the input's size).
        report: the :class:`~dragsdk.report.EditReport`.
        spec: the validated spec as JSON data, as downloaded (the mode's reference image field, if its UI
            description has one, named ``reference.png``).
        files: ``result.png``, ``spec.json``, ``report.json`` (and ``reference.png``) in ``folder``.
        seconds: wall time of the edit.
    """

    result: Image.Image
    report: Any
    spec: dict[str, Any]
    files: dict[str, Path]
    seconds: float


def run_edit(
    editor: Any,
    image: Image.Image,
    spec: dict[str, Any],
    folder: str | Path,
    on_step: Callable[[int, int], None] | None = None,
    progress: bool = False,
    limits: UILimits | None = None,
    cancel: threading.Event | None = None,
) -> RunOutput:
    """Validate and run ``spec`` on ``image``, writing the result, the spec and the report into ``folder``.

    The spec written is the validated one with every default filled in, so it gives the same result from the CLI
    (``dragsdk edit input.png --spec spec.json``) and the API (``Editor.edit(image, spec)``).

    Args:
        on_step: ``on_step(i, n)`` after each sampling step.
        progress: let the editor's progress bar run (the page tracks it).
        limits: the server's caps (the page passes its :class:`UILimits`; None: no caps): steps and resolution
            are checked before anything runs (the mode's defaults included); the run stops after the sampling step
            that passes ``max_run_seconds`` (counted from when it got the run slot); waiting for the slot longer
            than that is refused.
        cancel: set from another thread to stop the run after its current sampling step.

    Raises:
        UIError: (settings) over the steps or resolution cap; (run) the slot stayed busy longer than
            ``max_run_seconds``.
        RunStopped: cancelled, or over ``max_run_seconds``.
        pydantic.ValidationError, SpecError, BackendUnavailableError: as :meth:`Editor.edit`.
    """
    folder = Path(folder)
    resolved = editor.resolve_spec(spec)
    n = resolved.sampler.steps
    if limits is not None:
        check_sampler_limits(n, resolved.sampler.resolution, limits)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("result.png", "spec.json", "report.json", "reference.png"):
        check_outputs({"out": folder / name})  # a device, FIFO or socket there is refused before the edit
    t0 = time.perf_counter()

    def callback(i: int, t: int, z: Any) -> None:
        if on_step is not None:
            on_step(i, n)
        if cancel is not None and cancel.is_set():
            raise RunStopped(f"cancelled after sampling step {i + 1}/{n}")
        if limits is not None and time.perf_counter() - t0 > limits.max_run_seconds:
            raise RunStopped(
                f"stopped after sampling step {i + 1}/{n}: this server allows "
                f"{limits.max_run_seconds:g} s per edit (dragsdk ui --max-run-seconds); use fewer "
                "steps or a lower resolution"
            )

    if not _LOCK.acquire(timeout=-1 if limits is None else limits.max_run_seconds):
        raise UIError("run", "another edit is still running; try again in a moment")
    try:
        if cancel is not None and cancel.is_set():
            raise RunStopped("cancelled before it started")
        t0 = time.perf_counter()
        result = editor.edit(image, resolved, progress=progress, callback=callback)
    finally:
        _LOCK.release()
    seconds = time.perf_counter() - t0
    ref_field = _reference_field(editor, resolved.mode)
    data = portable_spec(result.spec.model_dump(mode="json", exclude_none=True), reference_field=ref_field)
    files = {
        "result.png": save_image_atomic(result.image, folder / "result.png"),
        "spec.json": write_text_atomic(json.dumps(data, indent=2), folder / "spec.json"),
        "report.json": write_text_atomic(result.report.model_dump_json(indent=2), folder / "report.json"),
    }
    ref = resolved.model_dump().get(ref_field) if ref_field is not None else None
    if isinstance(ref, str) and Path(ref).is_file():
        dest = folder / "reference.png"
        if Path(ref).resolve() != dest.resolve():
            save_image_atomic(load_image(ref, field=str(ref_field)), dest)
        files["reference.png"] = dest
    return RunOutput(result.image, result.report, data, files, seconds)


def _reference_field(editor: Any, mode: str) -> str | None:
    """The spec field of ``mode``'s reference image, as its UI description names it (None: it has none)."""
    from .forms import page_mode

    try:
        ref = page_mode(mode, getattr(editor, "registry", None)).ui.reference
    except KeyError:
        return None
    return ref.image if ref is not None else None
