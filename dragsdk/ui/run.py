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

from dragsdk.io import save_image_atomic, write_text_atomic

from .state import portable_spec

_LOCK = threading.Lock()
"""One edit at a time: an Editor holds one model and one cached inversion."""


@dataclass
class RunOutput:
    """What the page shows and offers to download after an edit.

    Attributes:
        result: the edited image (the input's size).
        report: the :class:`~dragsdk.report.EditReport`.
        spec: the validated spec as JSON data, as downloaded (``reference`` named ``reference.png``).
        files: ``result.png``, ``spec.json``, ``report.json`` (and ``reference.png``) in ``folder``.
        seconds: wall time of the edit.
    """

    result: Image.Image
    report: Any
    spec: dict[str, Any]
    files: dict[str, Path]
    seconds: float


def run_edit(editor: Any, image: Image.Image, spec: dict[str, Any], folder: str | Path,
             on_step: Callable[[int, int], None] | None = None, progress: bool = False) -> RunOutput:
    """Validate and run ``spec`` on ``image``, writing the result, the spec and the report into ``folder``.

    The spec written is the validated one with every default filled in, so it gives the same result from the CLI
    (``dragsdk edit input.png --spec spec.json``) and the API (``Editor.edit(image, spec)``).

    Args:
        on_step: ``on_step(i, n)`` after each sampling step.
        progress: let the editor's progress bar run (the page tracks it).

    Raises:
        pydantic.ValidationError, SpecError, BackendUnavailableError: as :meth:`Editor.edit`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resolved = editor.resolve_spec(spec)
    n = resolved.sampler.steps

    def callback(i: int, t: int, z: Any) -> None:
        if on_step is not None:
            on_step(i, n)

    t0 = time.perf_counter()
    with _LOCK:
        result = editor.edit(image, resolved, progress=progress, callback=callback)
    seconds = time.perf_counter() - t0
    data = portable_spec(result.spec.model_dump(mode="json", exclude_none=True))
    files = {
        "result.png": save_image_atomic(result.image, folder / "result.png"),
        "spec.json": write_text_atomic(json.dumps(data, indent=2), folder / "spec.json"),
        "report.json": write_text_atomic(result.report.model_dump_json(indent=2), folder / "report.json"),
    }
    ref = resolved.model_dump().get("reference")
    if isinstance(ref, str) and Path(ref).is_file():
        dest = folder / "reference.png"
        if Path(ref).resolve() != dest.resolve():
            with Image.open(ref) as im:
                save_image_atomic(im.convert("RGB"), dest)
        files["reference.png"] = dest
    return RunOutput(result.image, result.report, data, files, seconds)
