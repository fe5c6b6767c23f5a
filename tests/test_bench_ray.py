"""``dragsdk bench --ray``: two actors on a local Ray instance give the single-process results, resumably."""

import json
import shutil

import pytest

from dragsdk.eval import BenchConfig, comparable, run_bench

from .test_eval import BENCH_SETTINGS, _bench_root

pytestmark = pytest.mark.slow  # a local Ray instance and two actors: make test-fast skips the module
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dragsdk[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with two CPU slots (run_bench joins it instead of starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _close(a, b, path="record"):
    """Equal structure and non-float values; floats within 1e-3 relative. The single-process reference runs with
    one torch thread as the actors do (Ray sets OMP_NUM_THREADS to the actor's CPU count); with several threads the
    reductions differ in their last digits, and guided steps amplify that past 1e-3 (seen: 6e-3 on DAI)."""
    import math

    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), path
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6) or (math.isinf(a) and a == b), (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _lines(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_ray_run_with_two_actors_resumes_and_equals_the_single_process_run(tmp_path, local_ray):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as the actors run (Ray sets OMP_NUM_THREADS=1): the same reductions, the same numbers
    try:
        single = run_bench(
            BenchConfig(_bench_root(), tmp_path / "single", limit=3, **BENCH_SETTINGS),
            progress=False,
            echo=None,
        )
    finally:
        torch.set_num_threads(threads)
    # the state a run killed after its first sample leaves: run.json and one line
    out = tmp_path / "ray"
    out.mkdir()
    shutil.copy(tmp_path / "single/run.json", out / "run.json")
    first = (tmp_path / "single/results.jsonl").read_text().splitlines()[0]
    (out / "results.jsonl").write_text(first + "\n")
    seen = []
    resumed = run_bench(
        BenchConfig(_bench_root(), out, limit=3, **BENCH_SETTINGS),
        progress=False,
        echo=None,
        ray=True,
        actors=2,
        on_record=lambda r: seen.append(r["id"]),
    )
    assert (
        resumed.skipped == 1 and resumed.ran == 2 and json.loads(first)["id"] not in seen
    )  # nothing run twice
    # one model load per actor, both actors used, every remaining sample run once
    assert len(resumed.workers) == 2 and all(w["model_loads"] == 1 for w in resumed.workers)
    assert sorted(w["samples"] for w in resumed.workers) == [1, 1]
    assert len({r["worker"] for r in _lines(out)[1:]}) == 2
    # streamed in completion order, equal to the single-process records sample by sample
    by_id = {r["id"]: comparable(r) for r in _lines(out)}
    assert len(by_id) == 3
    _close(by_id, {r["id"]: comparable(r) for r in _lines(tmp_path / "single")})
    assert [r["id"] for r in resumed.records] == [r["id"] for r in single.records]
    for key in ("md", "dai_1", "psnr_inside", "ssim_outside", "pairs", "samples"):
        _close(resumed.summary["all"][key], single.summary["all"][key], key)
