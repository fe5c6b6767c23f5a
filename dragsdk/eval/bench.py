"""``dragsdk bench``: edit every sample of a dataset, score it, and write a resumable record of the run.

Output folder::

    results.jsonl     one JSON object per sample (see :data:`RECORD_KEYS`), appended and fsync'ed one at a time
    run.json          the settings; a resumed run must have the same ones
    edited/<id>.png   each edited image (written atomically before its line)
    report/<id>.*.jpg original and arrows thumbnails for the HTML report
    summary.json      the summary by category (also printed as a table, and in summary.txt)
    plots/*.png       metric distributions and time per phase (needs matplotlib)
    report.html       summary, plots, and original / edited / arrows side by side for every sample

Resuming: a run that was killed is continued by running the same command again. The samples whose line is in
``results.jsonl`` are skipped (no sample is edited twice); a line cut short by the kill is dropped and that sample
runs again. Every line is written with one ``write`` and ``fsync`` before the next sample starts, so nothing
finished is lost. Edits are seeded, so a resumed run writes the same lines as an uninterrupted one, except the
measurements in :data:`VOLATILE_KEYS` (times, memory, worker).

Integrity: one ``dragsdk bench`` at a time writes to an output folder; a second one on the same folder stops at
once with a clear message (:func:`lock_out`, an exclusive lock on ``.dragsdk-bench.lock``). A line of
``results.jsonl`` counts as done only when it is a complete, well-typed record (:func:`record_problem`); any other
line is reported and its sample runs again. Each sample id counts once in the summary (the last complete record).

Scale-out: with Ray (:func:`run_bench` ``ray=True``) the samples are spread over one actor per GPU (per CPU slot
without GPUs), each loading the model once; the driver reads the samples, sends them to the actors, and writes the
results to the same ``results.jsonl`` as they arrive, with the same resume logic.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..defaults import RANDOM_MODELS
from ..errors import DragSDKError, SpecError
from ..io import atomic_write, check_outputs, read_json, write_text_atomic
from .datasets import SampleRef, discover, load
from .jobs import (
    LOCK_FILE,
    METRICS,
    RECORD_KEYS,
    RESULTS,
    RUN_FILE,
    THUMB_WIDTH,
    VOLATILE_KEYS,
    BenchConfig,
    BenchResult,
    BenchWorker,
    ResultsLog,
    _jsonable,
    comparable,
    completed_records,
    error_record,
    prepare_job,
    record_problem,
)
from .summary import (
    SUMMARY_METRICS,
    by_reason,
    format_table,
    summarize,
    table_rows,
)


@contextlib.contextmanager
def lock_out(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on a bench output folder for the duration of the block (``filelock``: ``flock`` on
    POSIX, ``msvcrt.locking`` on Windows; released by the OS when the process dies, so a killed run leaves no stale
    lock).

    Raises:
        SpecError: (field ``out``) another process (or another run in this one) holds the lock.
    """
    from filelock import FileLock, Timeout

    path = Path(out) / LOCK_FILE
    lock = FileLock(str(path), timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise SpecError(
            "out",
            f"{out} is in use by another dragsdk bench run (it holds {path}); wait for it to "
            "finish or choose another --out",
        ) from None
    try:
        yield path
    finally:
        lock.release()


def _check_run_file(out: Path, config: BenchConfig) -> None:
    path = out / RUN_FILE
    fp = config.fingerprint()
    if path.exists():
        try:
            old = read_json(path, RUN_FILE)
        except SpecError as e:
            raise SpecError(
                "out", f"{path} is not a readable bench run file ({e}); delete it or choose another --out"
            ) from None
        if not isinstance(old, dict):
            raise SpecError(
                "out", f"{path} is not a bench run file (a JSON object); delete it or choose another --out"
            )
        diff = [f"{k}: {old.get(k)!r} → {v!r}" for k, v in fp.items() if old.get(k) != v]
        if diff and (out / RESULTS).is_file():
            raise SpecError(
                "out",
                f"{out} holds a run with other settings ({'; '.join(diff)}); resume it with the "
                "same settings or choose another --out",
            )
    write_text_atomic(json.dumps(fp, indent=2), path)


def _jobs(
    refs: Iterable[SampleRef], config: BenchConfig
) -> Iterator[tuple[SampleRef, dict[str, Any] | None, str]]:
    """``(ref, job, error)`` per sample: a job, or None and why the sample cannot run."""
    for ref in refs:
        try:
            yield ref, prepare_job(load(ref, allow_outside=config.allow_outside_paths), config), ""
        except (DragSDKError, OSError, ValueError, KeyError, TypeError, EOFError) as e:
            yield ref, None, f"{type(e).__name__}: {e}"


def run_bench(
    config: BenchConfig,
    progress: bool = True,
    ray: bool = False,
    ray_address: str | None = None,
    actors: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    features: Callable[..., Any] | None = None,
    echo: Callable[[str], None] | None = print,
) -> BenchResult:
    """Run (or resume) a benchmark and write the results, summary, plots and HTML report.

    Args:
        config: the settings.
        progress: show a progress bar.
        ray: spread the samples over Ray actors (needs the ``ray`` extra).
        ray_address: the cluster (``auto``, ``ray://host:port``); None starts a local Ray instance (or joins the
            one ``RAY_ADDRESS`` names).
        actors: Ray actors; default one per GPU of the cluster, or one per CPU without GPUs.
        on_record: called after each record is written (e.g. to stop a run in tests).
        features: a feature function for MD instead of DIFT (see :class:`BenchWorker`).
        echo: where messages (unavailable metrics, the summary table) go; None = silent.

    Raises:
        SpecError: a dataset that is not one, an output folder holding a run with other settings, bad settings.
        MetricUnavailable: never; an unavailable metric is reported in the records and summary.
        SpecError: (field ``out``) another bench run holds the output folder (:func:`lock_out`).
        ImportError: ``ray=True`` without Ray installed (the message gives the install line).
    """
    out = Path(config.out)
    refs = discover(config.dataset, config.format)
    if config.limit is not None:
        refs = refs[: config.limit]
    if out.exists() and not out.is_dir():
        raise SpecError(
            "out", f"{out} is a file; bench --out is a folder (it holds results.jsonl, run.json, the report)"
        )
    for name in (RESULTS, RUN_FILE, LOCK_FILE, "summary.json", "summary.txt", "report.html"):
        check_outputs(
            {"out": out / name}
        )  # an existing device, FIFO or socket there is refused before any work
    out.mkdir(parents=True, exist_ok=True)
    with lock_out(out):
        return _run_locked(config, out, refs, progress, ray, ray_address, actors, on_record, features, echo)


def _run_locked(
    config: BenchConfig,
    out: Path,
    refs: list[SampleRef],
    progress: bool,
    ray: bool,
    ray_address: str | None,
    actors: int | None,
    on_record: Callable[[dict[str, Any]], None] | None,
    features: Callable[..., Any] | None,
    echo: Callable[[str], None] | None,
) -> BenchResult:
    """:func:`run_bench` once the output folder is locked."""
    from tqdm.auto import tqdm

    _check_run_file(out, config)
    log = ResultsLog(out / RESULTS)
    previous, problems = completed_records(log.read(repair=True))
    random = config.model in RANDOM_MODELS
    if echo and random:
        echo(
            f"warning: model {config.model!r} has random weights (a built-in test model): the edits and their "
            "scores say nothing about editing quality"
        )
    if echo:
        for line in problems:
            echo(f"warning: {line}")
    done = {r["id"] for r in previous}
    todo = [r for r in refs if r.id not in done]
    skipped = len(refs) - len(todo)
    told: set[str] = set()
    bar = tqdm(total=len(refs), initial=skipped, desc="dragsdk bench", unit="sample", disable=not progress)

    def write(rec: dict[str, Any], files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            atomic_write(out / rel, lambda tmp, d=data: tmp.write_bytes(d))
        log.append(rec)
        bar.update(1)
        for name, note in rec.get("metric_notes", {}).items():
            if echo and note not in told and ("not computed:" in note or note.startswith("failed")):
                told.add(note)
                bar.write(f"{name}: {note}") if progress else echo(f"{name}: {note}")
        if rec["status"] == "error":
            msg = f"sample {rec['id']} skipped: {rec['error']}"
            bar.write(msg) if progress else (echo and echo(msg))
        if on_record:
            on_record(rec)

    workers: list[dict[str, Any]] = []
    try:
        if todo and ray:
            from .ray_runner import run_on_ray

            workers = run_on_ray(config, _jobs(todo, config), write, ray_address, actors, features)
        elif todo:
            worker = BenchWorker(config, features)
            for ref, job, error in _jobs(todo, config):
                if job is None:
                    write(error_record(ref, error, "load"), {})
                    continue
                write(*worker.run(job))
            workers = [dict(worker.stats)]
    finally:
        bar.close()
    order = {r.id: i for i, r in enumerate(refs)}
    records = sorted(
        (r for r in completed_records(log.read())[0] if r["id"] in order), key=lambda r: order[r["id"]]
    )
    summary = summarize(records)
    summary["settings"] = config.fingerprint()
    summary["random_weights"] = random
    paths = write_outputs(out, records, summary, echo)
    return BenchResult(records, summary, out, paths, skipped, len(todo), workers)


# -- summary --------------------------------------------------------------------------------------------------


def write_outputs(
    out: Path,
    records: list[dict[str, Any]],
    summary: dict[str, Any],
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.txt``, the plots and ``report.html``; print the table with ``echo``."""
    from .report import write_plots, write_report

    paths: dict[str, Any] = {"results": out / RESULTS}
    paths["summary"] = write_text_atomic(
        json.dumps(_jsonable(summary), indent=2, allow_nan=False), out / "summary.json"
    )
    table = format_table(summary)
    paths["table"] = write_text_atomic(table + "\n", out / "summary.txt")
    plots, why = write_plots(out, records)
    paths["plots"] = plots
    if why and echo:
        echo(why)
    paths["report"] = write_report(out, records, summary, plots, table)
    if echo:
        echo(table)
    return paths


__all__ = [  # the names of the run loop, and those of jobs / summary it re-exports (old imports)
    "BenchConfig",
    "BenchResult",
    "BenchWorker",
    "LOCK_FILE",
    "METRICS",
    "RECORD_KEYS",
    "RESULTS",
    "RUN_FILE",
    "ResultsLog",
    "SUMMARY_METRICS",
    "THUMB_WIDTH",
    "VOLATILE_KEYS",
    "by_reason",
    "comparable",
    "completed_records",
    "error_record",
    "format_table",
    "lock_out",
    "prepare_job",
    "record_problem",
    "run_bench",
    "summarize",
    "table_rows",
    "write_outputs",
]
