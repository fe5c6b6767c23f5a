"""One benchmark job: the run settings, the record format and its checks, and the worker that edits and scores
samples (in this process or in a Ray actor, :mod:`dragsdk.eval.ray_runner`)."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..defaults import default_model
from ..errors import ModelNotFoundError, SpecError
from ..specfile import apply_overrides
from .datasets import Sample, SampleRef
from .dift import DIFT_ENSEMBLE, DIFT_MODEL
from .metrics import (
    ImageFidelity,
    MetricUnavailable,
    dai_all,
    fidelity_in_out,
    mean_distance_dragdiffusion,
    mean_distance_regiondrag,
)

METRICS = ("md", "md_regiondrag", "dai", "psnr_ssim", "if")
"""Metric groups: DragDiffusion MD, RegionDrag MD, DAI (γ 1/5/10/20), PSNR/SSIM inside/outside, IF (1 − LPIPS)."""

VOLATILE_KEYS = ("phase_seconds", "metric_seconds", "seconds", "peak_memory_bytes", "worker")
"""Record keys that are measurements of this run (times, memory, the worker), not results."""

RECORD_KEYS = (
    "id",
    "dataset",
    "category",
    "status",
    "error",
    "mode",
    "prompt",
    "points",
    "spec",
    "image_size",
    "working_size",
    "backend",
    "metrics",
    "metric_notes",
    "matches",
    "unet_evaluations",
    "phase_seconds",
    "metric_seconds",
    "seconds",
    "peak_memory_bytes",
    "peak_memory_kind",
    "notes",
    "files",
    "worker",
)
RESULTS = "results.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".dragsdk-bench.lock"
THUMB_WIDTH = 512


@dataclass
class BenchConfig:
    """Settings of a bench run.

    Attributes:
        dataset: dataset folder (:mod:`dragsdk.eval.datasets`).
        out: output folder.
        mode: edit mode; None = the dataset's own (drag for DragBench / Drag100, region-drag for SR/DR).
        model / backend / device: as :class:`~dragsdk.editor.Editor`.
        model_config: for a ``.safetensors`` / ``.ckpt`` model, the diffusers folder describing it
            (:func:`~dragsdk.models.load_model`'s ``single_file_config``).
        format: dataset layout or ``auto``.
        limit: only the first N samples (in id order).
        steps / resolution / seed: override the spec's sampler settings.
        overrides: ``FIELD=VALUE`` assignments applied to every sample's spec after the mode's conversion and before
            the sampler overrides (:func:`dragsdk.specfile.apply_overrides`; the CLI's ``--set``).
        metrics: a subset of :data:`METRICS`.
        dift_model / dift_ensemble: the DIFT extractor of MD (default SD 2.1, 8; the protocol). A name equal to
            ``model`` reuses the editing model.
        allow_outside_paths: let a ``folder`` dataset's specs name files outside the dataset root (image, masks,
            references); off, such a sample is an error record (:func:`dragsdk.eval.datasets.load`).
    """

    dataset: str
    out: str
    mode: str | None = None
    model: str = field(default_factory=default_model)
    model_config: str | None = None
    backend: str = "auto"
    device: str | None = None
    format: str = "auto"
    limit: int | None = None
    steps: int | None = None
    resolution: int | None = None
    seed: int | None = None
    overrides: tuple[str, ...] = ()
    metrics: tuple[str, ...] = METRICS
    dift_model: str = DIFT_MODEL
    dift_ensemble: int = DIFT_ENSEMBLE
    allow_outside_paths: bool = False

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        self.metrics = tuple(self.metrics)
        self.overrides = tuple(self.overrides)
        apply_overrides({}, self.overrides)  # the syntax, before any sample runs
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise SpecError("metrics", f"unknown {unknown}; choose from {', '.join(METRICS)}")
        if self.limit is not None and self.limit < 1:
            raise SpecError("limit", f"must be ≥ 1, got {self.limit}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share (everything but ``out``, ``limit`` and the path permission)."""
        d = asdict(self)
        d.pop("out")
        d.pop("limit")
        d.pop("allow_outside_paths")
        d["dataset"] = str(Path(self.dataset).resolve())
        d["metrics"] = list(self.metrics)
        d["overrides"] = list(self.overrides)
        return d


@dataclass
class BenchResult:
    """What :func:`run_bench` did.

    Attributes:
        records: every record of the run's samples (resumed ones included), in sample order.
        summary: :func:`summarize` of them.
        out: the output folder; ``paths`` the files written (results, summary, plots, report).
        skipped: samples already done before this call; ``ran``: samples run by this call.
        workers: per worker (process or Ray actor): ``pid``, ``model_loads``, ``samples``.
    """

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path
    paths: dict[str, Any]
    skipped: int
    ran: int
    workers: list[dict[str, Any]] = field(default_factory=list)


# -- the results file -----------------------------------------------------------------------------------------


class ResultsLog:
    """``results.jsonl``: one record per line, each appended with a single ``write`` and made durable (``fsync``)
    before the call returns. :meth:`read` drops a last line cut short by a kill."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        """The complete records in file order; with ``repair`` a trailing partial line is cut off the file."""
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if repair and end < len(raw):
            os.truncate(self.path, end)
        records = []
        for n, line in enumerate(raw[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {self.path}:{n} is not JSON; its sample will run again", file=sys.stderr)
                continue
            if isinstance(rec, dict) and "id" in rec:
                records.append(rec)
        return records

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(_jsonable(record), allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _opt(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _dict_of(check: Any) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _size(v: Any) -> bool:
    return (
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    )


def _point_pairs(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(p, list) and len(p) == 2 and all(_num(c) for c in p) for p in pair)
        for pair in v
    )


def _metric_value(v: Any) -> bool:
    return v is None or _num(v) or (isinstance(v, list) and all(x is None or _num(x) for x in v))


def _relative_file(v: Any) -> bool:
    return (
        isinstance(v, str)
        and bool(v)
        and not v.startswith(("/", "\\"))
        and ":" not in v
        and ".." not in v.replace("\\", "/").split("/")
    )


_str = lambda v: isinstance(v, str)  # noqa: E731
_RECORD_TYPES: dict[str, tuple[Any, str]] = {
    "id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "dataset": (_opt(_str), "a string"),
    "category": (_opt(_str), "a string"),
    "status": (lambda v: v in ("ok", "error"), "'ok' or 'error'"),
    "error": (_opt(_str), "a string or null"),
    "mode": (_opt(_str), "a string or null"),
    "prompt": (_opt(_str), "a string or null"),
    "points": (_opt(_point_pairs), "[[handle, target], ...] pixel pairs"),
    "spec": (_opt(lambda v: isinstance(v, dict)), "an object"),
    "image_size": (_opt(_size), "[width, height]"),
    "working_size": (_opt(_size), "[width, height]"),
    "backend": (_opt(_str), "a string"),
    "metrics": (_dict_of(_metric_value), "an object of numbers"),
    "metric_notes": (_dict_of(_str), "an object of strings"),
    "matches": (lambda v: isinstance(v, dict), "an object"),
    "unet_evaluations": (
        _opt(_dict_of(lambda x: isinstance(x, int) and not isinstance(x, bool))),
        "an object of counts",
    ),
    "phase_seconds": (_opt(_dict_of(_num)), "an object of seconds"),
    "metric_seconds": (_opt(_num), "seconds"),
    "seconds": (_opt(_num), "seconds"),
    "peak_memory_bytes": (_opt(lambda v: isinstance(v, int) and not isinstance(v, bool)), "a byte count"),
    "peak_memory_kind": (_opt(_str), "a string"),
    "notes": (lambda v: isinstance(v, list) and all(_str(x) for x in v), "a list of strings"),
    "files": (_dict_of(_relative_file), "an object of paths inside the output folder"),
    "worker": (
        lambda v: v is None or _str(v) or (isinstance(v, int) and not isinstance(v, bool)),
        "a pid or name",
    ),
}
_OK_REQUIRED = ("points", "image_size", "phase_seconds", "seconds", "unet_evaluations")


def record_problem(record: Any) -> str | None:
    """Why a ``results.jsonl`` line is not a complete record of a finished sample, or None when it is.

    Complete means: an object with every key of :data:`RECORD_KEYS`, each of its type (numbers are not booleans;
    ``files`` are relative paths inside the output folder), an ``error`` text when ``status`` is ``error`` and the
    measurements the summary reads (points, sizes, times, UNet counts) when it is ``ok``.
    """
    if not isinstance(record, dict):
        return f"not an object but {type(record).__name__}"
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, (check, what) in _RECORD_TYPES.items():
        if not check(record[key]):
            return f"{key} is not {what}: {json.dumps(record[key])[:60]}"
    if record["status"] == "error" and not record["error"]:
        return "status is 'error' without an error text"
    if record["status"] == "ok":
        nulls = [k for k in _OK_REQUIRED if record[k] is None]
        if nulls:
            return f"status is 'ok' but {', '.join(nulls)} is null"
    return None


def completed_records(lines: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The complete records of a results file, each sample id once, and what was wrong with the others.

    Args:
        lines: the parsed lines in file order (:meth:`ResultsLog.read`).

    Returns:
        ``(records, problems)``: per id the last complete record, in the order of their first line; one message
        per id that has no complete record (that sample runs again) and per id that has several (counted once).
    """
    kept: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    seen: dict[str, int] = {}
    for n, rec in enumerate(lines, 1):
        sid = rec.get("id") if isinstance(rec, dict) else None
        key = sid if isinstance(sid, str) else f"line {n}"
        why = record_problem(rec)
        if why is None:
            kept[key] = rec
            seen[key] = seen.get(key, 0) + 1
        else:
            bad.setdefault(key, f"line {n}: {why}")
    problems = [
        f"{RESULTS}: {key} is incomplete ({why}); it runs again"
        for key, why in bad.items()
        if key not in kept
    ]
    problems += [
        f"{RESULTS}: {key} has {k} complete records; the last one counts" for key, k in seen.items() if k > 1
    ]
    return list(kept.values()), problems


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its :data:`VOLATILE_KEYS`: what must be equal between two runs of the same settings."""
    return {k: v for k, v in record.items() if k not in VOLATILE_KEYS}


# -- jobs: a sample made ready to edit (driver side) ----------------------------------------------------------


def prepare_job(sample: Sample, config: BenchConfig) -> dict[str, Any]:
    """The spec a sample runs with under ``config`` (its mode, converted when needed; sampler overrides).

    Raises:
        SpecError: the mode is unknown or cannot convert the sample's spec.
    """
    from ..registry import get_registry

    spec = dict(sample.spec)
    mode = config.mode
    if mode is not None and spec.get("mode") != mode:
        drag = sample.meta.get("drag_spec")
        if mode == "drag" and drag is not None:
            spec = dict(drag)
        else:
            modes = get_registry().modes
            if mode not in modes:
                raise SpecError("mode", f"unknown mode {mode!r}; installed modes are {sorted(modes)}")
            source = Path(sample.meta["source"])
            spec = modes[mode].convert_spec(dict(drag or spec), source if source.is_dir() else None)
    spec = apply_overrides(spec, config.overrides)
    sampler = dict(spec.get("sampler") or {})
    for key in ("steps", "resolution", "seed"):
        value = getattr(config, key)
        if value is not None:
            sampler[key] = value
    if sampler:
        spec["sampler"] = sampler
    meta = {k: v for k, v in sample.meta.items() if k != "drag_spec"}
    return {"id": sample.id, "image": sample.image, "spec": spec, "meta": meta}


def error_record(ref: SampleRef | dict[str, Any], error: str, stage: str) -> dict[str, Any]:
    sid, category, dataset = (
        (ref.id, ref.category, ref.format)
        if isinstance(ref, SampleRef)
        else (ref["id"], ref["meta"]["category"], ref["meta"]["dataset"])
    )
    rec: dict[str, Any] = {k: None for k in RECORD_KEYS}
    rec.update(
        id=sid,
        dataset=dataset,
        category=category,
        status="error",
        error=f"{stage}: {error}",
        metrics={},
        metric_notes={},
        matches={},
        notes=[],
        files={},
    )
    return rec


# -- the worker: one model, many samples ----------------------------------------------------------------------


class BenchWorker:
    """Edits and scores samples with one model loaded once (a process, or a Ray actor).

    Args:
        config: the run settings.
        features: a DIFT-like feature function to use for MD instead of loading ``config.dift_model``
            (``features(image (1, 3, H, W) in [−1, 1], prompt) → (1, C, h, w)``).
    """

    def __init__(self, config: BenchConfig, features: Callable[..., Any] | None = None) -> None:
        from ..editor import Editor
        from ..models import load_model

        self.config = config
        self.bundle = load_model(config.model, config.device, single_file_config=config.model_config)
        self.editor = Editor(self.bundle, backend=config.backend)
        self.stats = {"pid": os.getpid(), "model_loads": 1, "samples": 0}
        self._features = features
        self._dift: tuple[Any, Any] | None = None
        self._unavailable: dict[str, str] = {}
        self._fidelity = ImageFidelity()

    # metric back-ends, created on first use; an unavailable one is remembered with its reason
    def _dift_pair(self) -> tuple[Any, Any]:
        if self._dift is None:
            if self._features is not None:
                self._dift = (self._features, self._features)
            else:
                from .dift import DIFT

                name = self.config.dift_model
                model = self.bundle if name == self.config.model else name
                sample = DIFT(model, ensemble=self.config.dift_ensemble, device=self.config.device)
                try:
                    bundle = sample.bundle
                except ModelNotFoundError as e:
                    raise MetricUnavailable(
                        f"MD not computed: the DIFT model's weights are absent ({e})"
                    ) from e
                mode = DIFT(bundle, ensemble=self.config.dift_ensemble, latent="mode")
                self._dift = (sample, mode)
        return self._dift

    def _metric(self, name: str, notes: dict[str, str], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = "md" if name in ("md", "md_regiondrag") else name
        if key in self._unavailable:
            notes[name] = self._unavailable[key]
            return {}
        try:
            return fn()
        except MetricUnavailable as e:
            self._unavailable[key] = str(e)
            notes[name] = str(e)
        except Exception as e:  # a metric failing on one sample never ends the run
            notes[name] = f"failed: {type(e).__name__}: {e}"
        return {}

    def score(
        self,
        original: Image.Image,
        edited: Image.Image,
        points: list[Any],
        mask: np.ndarray | None,
        prompt: str,
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
        """``(metrics, notes, matches)`` of one edit for the configured metric groups."""
        want = self.config.metrics
        metrics: dict[str, Any] = {}
        notes: dict[str, str] = {}
        matches: dict[str, Any] = {}

        def md(protocol: str) -> dict[str, Any]:
            sample_feats, mode_feats = self._dift_pair()
            if protocol == "md":
                r = mean_distance_dragdiffusion(original, edited, points, sample_feats, prompt)
            else:
                r = mean_distance_regiondrag(original, edited, points, mode_feats, prompt)
            matches[protocol] = [list(m) for m in r.matches]
            return {protocol: r.value, f"{protocol}_pairs": r.distances}

        for name in ("md", "md_regiondrag", "dai"):
            if name in want and not points:
                notes[name] = "skipped: the sample has no handle → target points"
            elif name in want:
                fn = (lambda n=name: md(n)) if name != "dai" else (lambda: dai_all(original, edited, points))
                metrics.update(self._metric(name, notes, fn))
        if "psnr_ssim" in want:
            if mask is None or mask.all() or not mask.any():
                notes["psnr_ssim"] = "skipped: the sample's mask is missing, full or empty"
            else:
                metrics.update(
                    self._metric("psnr_ssim", notes, lambda: fidelity_in_out(original, edited, mask))
                )
        if "if" in want:
            metrics.update(self._metric("if", notes, lambda: {"if": self._fidelity(original, edited)}))
        return metrics, notes, matches

    def run(self, job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Edit and score one prepared job (:func:`prepare_job`).

        Returns:
            ``(record, files)``: the JSONL record and the files to write (relative path → bytes). A sample whose
            edit fails gives an error record; nothing is raised.
        """
        t_start = time.perf_counter()
        meta, spec, image = job["meta"], job["spec"], job["image"]
        self.stats["samples"] += 1
        try:
            result = self.editor.edit(image, spec)
        except Exception as e:  # a broken sample is recorded and skipped
            rec = error_record(job, f"{type(e).__name__}: {e}", "edit")
            rec["worker"] = self.stats["pid"]
            return rec, {}
        rep = result.report
        mask = meta.get("mask")
        plan_mask = False
        if mask is None:
            m = result.plan.edit_mask.float().numpy()
            mask = (
                np.asarray(
                    Image.fromarray((m * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
                )
                > 127
            )
            plan_mask = True
        t0 = time.perf_counter()
        metrics, notes, matches = self.score(image, result.image, meta["points"], mask, meta["prompt"])
        metric_seconds = time.perf_counter() - t0
        if plan_mask:
            notes["mask"] = "the sample has no mask: inside/outside use the edit's own mask"
        files, paths = _sample_files(job["id"], image, result.image, meta["points"], matches)
        rec: dict[str, Any] = {
            "id": job["id"],
            "dataset": meta["dataset"],
            "category": meta["category"],
            "status": "ok",
            "error": None,
            "mode": result.spec.mode,
            "prompt": result.spec.prompt,
            "points": meta["points"],
            "spec": result.spec.model_dump(mode="json"),
            "image_size": list(rep.image_size),
            "working_size": list(rep.working_size),
            "backend": rep.backend,
            "metrics": metrics,
            "metric_notes": notes,
            "matches": matches,
            "unet_evaluations": rep.unet_evaluations,
            "phase_seconds": rep.phase_seconds,
            "metric_seconds": metric_seconds,
            "seconds": time.perf_counter() - t_start,
            "peak_memory_bytes": rep.peak_memory_bytes,
            "peak_memory_kind": rep.peak_memory_kind,
            "notes": list(rep.notes),
            "files": paths,
            "worker": self.stats["pid"],
        }
        return rec, files


def _safe_id(sid: str) -> str:
    return "/".join(part.replace("..", "_") or "_" for part in sid.split("/"))


def _sample_files(
    sid: str, original: Image.Image, edited: Image.Image, points: list[Any], matches: dict[str, Any]
) -> tuple[dict[str, bytes], dict[str, str]]:
    from .pictures import draw_arrows, thumbnail

    base = _safe_id(sid)
    paths = {
        "edited": f"edited/{base}.png",
        "original": f"report/{base}.original.jpg",
        "arrows": f"report/{base}.arrows.jpg",
    }
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    edited.save(buf, format="PNG")
    files[paths["edited"]] = buf.getvalue()
    for key, img in (
        ("original", thumbnail(original, THUMB_WIDTH)),
        (
            "arrows",
            draw_arrows(edited, points, matches.get("md") or matches.get("md_regiondrag"), THUMB_WIDTH),
        ),
    ):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        files[paths[key]] = buf.getvalue()
    return files, paths


# -- the run --------------------------------------------------------------------------------------------------
