"""Spreading a bench run over Ray actors (the ``ray`` extra: ``pip install 'dragsdk[ray]'``).

One actor per GPU of the cluster (``num_gpus=1`` each), or one per CPU slot where there is none (``num_cpus=1``);
each actor builds one :class:`~dragsdk.eval.bench.BenchWorker`, so the model is loaded once per actor. The driver
reads the samples and sends each to an actor (two in flight per actor so none waits), and writes every result as
it arrives, through the same writer as a single-process run; results therefore stream to ``results.jsonl`` in
completion order. Actors need no access to the dataset or the output folder: images travel through Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from .datasets import SampleRef
from .jobs import BenchConfig, BenchWorker, error_record

INSTALL = "pip install 'dragsdk[ray]'"
IN_FLIGHT_PER_ACTOR = 2


class _Actor:
    def __init__(self, config: BenchConfig, features: Callable[..., Any] | None) -> None:
        self.worker = BenchWorker(config, features)

    def run(self, job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
        return self.worker.run(job)

    def stats(self) -> dict[str, Any]:
        return dict(self.worker.stats)


def run_on_ray(
    config: BenchConfig,
    jobs: Iterator[tuple[SampleRef, dict[str, Any] | None, str]],
    write: Callable[[dict[str, Any], dict[str, bytes]], None],
    address: str | None = None,
    actors: int | None = None,
    features: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` on Ray actors, calling ``write(record, files)`` for each result as it arrives.

    Args:
        address: a cluster address (``auto``, ``ray://host:port``); None joins ``RAY_ADDRESS`` if set, else starts
            a local instance with ``actors`` CPUs (default all of this machine's).
        actors: how many actors; default one per GPU of the cluster, else one per CPU.

    Returns:
        per actor: ``pid``, ``model_loads``, ``samples``.

    Raises:
        ImportError: Ray is not installed (the message gives the install line).
        RuntimeError: every actor died.
    """
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"--ray needs Ray: {INSTALL}") from e

    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kw["num_cpus"] = actors or os.cpu_count() or 1
        ray.init(address=address, **kw)
        started = True
    try:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = actors or (gpus or max(1, int(res.get("CPU", 1))))
        opts: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor_cls = ray.remote(**opts)(_Actor)
        everyone = [actor_cls.remote(config, features) for _ in range(n)]
        try:
            return _drive(ray, everyone, jobs, write)
        finally:  # also when the driver stops part-way: no actor keeps working on abandoned samples
            for a in everyone:
                ray.kill(a)
    finally:
        if started:
            ray.shutdown()


def _drive(
    ray: Any,
    actors: list[Any],
    jobs: Iterator[tuple[SampleRef, dict[str, Any] | None, str]],
    write: Callable[[dict[str, Any], dict[str, bytes]], None],
) -> list[dict[str, Any]]:
    pool = list(actors)
    pending: dict[Any, tuple[Any, dict[str, Any]]] = {}

    def submit(actor: Any) -> None:
        for ref, job, error in jobs:
            if job is None:
                write(error_record(ref, error, "load"), {})
                continue
            pending[actor.run.remote(job)] = (actor, job)
            return

    for _ in range(IN_FLIGHT_PER_ACTOR):
        for actor in pool:
            submit(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        actor, job = pending.pop(ready[0])
        try:
            record, files = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:
            write(error_record(job, f"{type(e).__name__}: {e}", "worker"), {})
            pool = [a for a in pool if a is not actor]
            if pool:
                submit(pool[0])
            elif next(jobs, None) is not None:
                raise RuntimeError("every Ray actor died; run the same command again to resume") from e
            continue
        write(record, files)
        submit(actor)
    return list(ray.get([a.stats.remote() for a in pool]))
