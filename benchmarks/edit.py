"""Time whole edits on every available backend, plus the official implementation's cost profile, in one run.

Two edits of a real DragBench photograph (``examples/dragbench-car``):

- ``drag``: point drag (DragonDiffusion / DiffEditor defaults: 50 steps, 20 guided steps, regional SDE, time travel);
- ``region-drag``: RegionDrag (20 Cycle-SDE steps from t = 0.5: 10 inversion + 10 sampling UNet evaluations).

Each runs on every backend that can run here and covers it, and once more as ``official-cost``: eager attention with the
official code's cost profile (guidance features recomputed at every guided step, the K/V bank kept on the CPU), so
the speed-up is a ratio measured in one run on one machine. Defaults: ``sd15-random`` (full SD 1.5, random weights;
the cost is the real one) at 512×512 in fp16 on CUDA; ``tiny`` at 128×128 with 10 drag steps on a CPU, where the
numbers only show the harness works. Each configuration runs ``--warmup`` times untimed (compilation, caches), then
``--repeats`` times; the table reports the median.

``--family sd1|sd2|sdxl`` picks the model family (:mod:`dragsdk.families`): on CUDA the full random-weight
architecture (``sd15-random``, ``sd21-random`` v-prediction, ``sdxl-random``) at its native resolution (512, 768,
1024); on a CPU the tiny model of the family at 128×128. Each row reports UNet evaluations per edit, wall time and the
process CPU time of the edit.

Prints a table and writes JSON atomically to ``benchmarks/results/edit-<device>[-<family>].json``.

Usage::

    python benchmarks/edit.py                          # device-dependent defaults
    python benchmarks/edit.py --model sd15-random --resolution 512 --repeats 3
    python benchmarks/edit.py --family sdxl --configs eager   # full SDXL drag at 1024² on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "dragbench-car"
FAMILY_MODELS = {  # family: (full random architecture, tiny model, native resolution)
    "sd1": ("sd15-random", "tiny", 512),
    "sd2": ("sd21-random", "tiny-sd2", 768),
    "sdxl": ("sdxl-random", "tiny-sdxl", 1024),
}


def _device_slug(device: str) -> str:
    if device == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def _specs(resolution: int, drag_steps: int, region_steps: int) -> dict[str, dict[str, Any]]:
    from dragsdk.plugins.region_drag import RegionDragSpec
    from dragsdk.samples import load_sample

    _, drag = load_sample(SAMPLE)
    drag["sampler"] = {"steps": drag_steps, "resolution": resolution}
    region = RegionDragSpec.from_points(drag["points"], drag.get("mask")).model_dump(mode="json")
    region["sampler"] = {**region.get("sampler", {}), "steps": region_steps, "resolution": resolution}
    return {"drag": drag, "region-drag": region}


def _moved(spec: dict[str, Any]) -> dict[str, Any]:
    """The same drag with every target point moved 8 px right: a second edit of the same image."""
    return {**spec, "points": [[h, [t[0] + 8, t[1]]] for h, t in spec["points"]]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dragsdk import Editor
    from dragsdk.errors import BackendUnavailableError
    from dragsdk.models import load_model
    from dragsdk.registry import get_registry

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = getattr(args, "model_obj", None) or load_model(args.model, device=device, torch_dtype=dtype)
    reg = get_registry()
    image = SAMPLE / "original_image.png"
    specs = _specs(args.resolution, args.drag_steps, args.region_steps)
    configs = [(n, n, False) for n in reg.backends] + [("official-cost", "eager", True)]
    if args.configs:
        configs = [c for c in configs if c[0] in args.configs]
    rows = []
    for edit, spec in specs.items():
        if args.edits and edit not in args.edits:
            continue
        for label, backend, official_cost in configs:
            if official_cost and edit == "region-drag":
                continue  # the official cost profile is about energy guidance; region-drag has none
            row: dict[str, Any] = {"edit": edit, "config": label, "backend": backend}
            ok, why = reg.backends[backend].availability()
            if not ok:
                rows.append({**row, "skipped": why})
                continue
            try:
                editor = Editor(model, backend=backend, registry=reg, official_cost=official_cost)
                for _ in range(args.warmup):
                    editor.edit(image, spec, reuse_inversion=False)
                runs = []
                for _ in range(args.repeats):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = editor.edit(image, spec, reuse_inversion=False)  # a cold edit: inversion included
                    if device == "cuda":
                        torch.cuda.synchronize()
                    runs.append(
                        (
                            time.perf_counter() - t0,
                            res.report,
                            bool(torch.isfinite(res.latent).all()),
                            time.process_time() - c0,
                        )
                    )
                # A second edit of the same image with other target points: the last timed run's inversion is
                # reused (the report says whether it was).
                reused = []
                for _ in range(args.repeats if edit == "drag" and not official_cost else 0):
                    second = _moved(spec)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    rep2 = editor.edit(image, second).report
                    if device == "cuda":
                        torch.cuda.synchronize()
                    reused.append((time.perf_counter() - t0, rep2.inversion_reused))
            except BackendUnavailableError as e:
                rows.append({**row, "skipped": str(e)})
                continue
            except Exception as e:  # a failing backend is a result, not the end of the benchmark
                rows.append({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            wall = statistics.median(r[0] for r in runs)
            rep = runs[len(runs) // 2][1]
            rows.append(
                {
                    **row,
                    "wall_s": wall,
                    "wall_all_s": [r[0] for r in runs],
                    "phase_s": rep.phase_seconds,
                    "cpu_s": statistics.median(r[3] for r in runs),
                    "working_size": rep.working_size,
                    "unet": rep.unet_evaluations,
                    "finite_latent": all(r[2] for r in runs),
                    "peak_memory_bytes": rep.peak_memory_bytes,
                    "peak_memory_kind": rep.peak_memory_kind,
                }
            )
            if reused:
                rows[-1]["second_edit_s"] = statistics.median(r[0] for r in reused)
                rows[-1]["second_edit_reused_inversion"] = all(r[1] for r in reused)
    for edit in specs:
        ref = next(
            (r for r in rows if r["edit"] == edit and r["config"] == "official-cost" and "wall_s" in r), None
        )
        for r in rows:
            if r["edit"] == edit and "wall_s" in r and ref:
                r["speedup_vs_official_cost"] = ref["wall_s"] / r["wall_s"]
    return {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "model": args.model,
        "family": model.family,
        "prediction_type": model.adapter.prediction_type,
        "resolution": args.resolution,
        "dtype": str(dtype).removeprefix("torch."),
        "drag_steps": args.drag_steps,
        "region_steps": args.region_steps,
        "repeats": args.repeats,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
        "note": "" if device == "cuda" else "CPU: harness check only; GPU numbers are still open",
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"device: {result['device']}  model: {result['model']} ({result['family']}, {result['prediction_type']})  "
        f"{result['resolution']}px  {result['dtype']}"
    )
    print(
        f"{'edit':<12}{'config':<11}{'wall s':>9}{'cpu s':>9}{'encode':>8}{'invert':>8}{'sample':>8}{'decode':>8}"
        f"{'fwd':>6}{'fwd+g':>6}{'bwd':>5}{'peak MiB':>10}{'×ref':>7}{'2nd s':>8}"
    )
    for r in result["rows"]:
        if "wall_s" not in r:
            print(
                f"{r['edit']:<12}{r['config']:<11}  {'error' if 'error' in r else 'skipped'}: "
                f"{r.get('error', r.get('skipped', ''))[:70]}"
            )
            continue
        p, u = r["phase_s"], r["unet"]
        print(
            f"{r['edit']:<12}{r['config']:<11}{r['wall_s']:>9.3f}{r['cpu_s']:>9.2f}{p['encode']:>8.3f}{p['invert']:>8.3f}"
            f"{p['sample']:>8.3f}{p['decode']:>8.3f}{u['forward']:>6}{u['forward_grad']:>6}{u['backward']:>5}"
            f"{r['peak_memory_bytes'] / 2**20:>10.0f}{r.get('speedup_vs_official_cost', float('nan')):>7.2f}"
            f"{r.get('second_edit_s', float('nan')):>8.3f}"
        )
    if result["note"]:
        print(f"!! {result['note']}")


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--family",
        choices=sorted(FAMILY_MODELS),
        default="sd1",
        help="model family: sets the default --model and --resolution",
    )
    ap.add_argument(
        "--model", default=None, help="default: the family's (full random on CUDA, tiny on a CPU)"
    )
    ap.add_argument(
        "--resolution", type=int, default=None, help="default: the family's native size on CUDA, 128 on a CPU"
    )
    ap.add_argument("--drag-steps", type=int, default=50 if cuda else 10)
    ap.add_argument("--region-steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3 if cuda else 1)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="only these configurations (backend names and/or 'official-cost'); default: all",
    )
    ap.add_argument("--edits", nargs="+", choices=["drag", "region-drag"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    full, tiny, native = FAMILY_MODELS[args.family]
    args.model = args.model or (full if cuda else tiny)
    args.resolution = args.resolution or (native if cuda else 128)
    result = run(args)
    print_table(result)
    from dragsdk.io import write_text_atomic

    suffix = "" if args.family == "sd1" else f"-{args.family}"
    out = (
        args.out
        or ROOT / "benchmarks" / "results" / f"edit-{_device_slug('cuda' if cuda else 'cpu')}{suffix}.json"
    )
    write_text_atomic(json.dumps(result, indent=2, default=str), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
