"""Time a region-drag edit (RegionDrag, arXiv 2407.18247): phases, UNet evaluations, wall time, peak memory.

Default: the ``sd15-random`` architecture (full SD 1.5 UNet, random weights: the cost is the real one) at 512×512 when
CUDA is present; on a CPU-only machine ``tiny`` at 256×256 so it finishes in seconds (``--sd15`` forces sd15-random).
Two cases are timed, each over ``--repeats`` runs after ``--warmup`` runs:

- ``cold``: a full edit (VAE encode, Cycle-SDE inversion, sampling, decode) with no cached inversion;
- ``reused``: the interactive case, the same image edited again with another target, reusing the inversion.

Prints a table and writes JSON atomically to ``benchmarks/results/region-drag-<device>.json``. Phase times come from
the edit report (host clock; on CUDA each sampling step copies its recorded noise to the device, which keeps them
close); ``wall`` is measured around the whole edit with a device synchronisation.

Usage::

    python benchmarks/region_drag.py                       # device-dependent defaults
    python benchmarks/region_drag.py --sd15 --resolution 512 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAR = ROOT / "examples" / "dragbench-car" / "original_image.png"
PHASES = ("encode", "invert", "sample", "decode")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return device.type


def _spec(size: int, dx: float, seed: int, steps: int) -> Any:
    """A quad and a triangle moved on a ``size``×``size`` image (pixels scale with the size)."""
    from dragsdk.plugins.region_drag import RegionDragSpec

    s = size / 512

    def pts(p: list[tuple[float, float]], off: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, float]]:
        return [((x + off[0]) * s, (y + off[1]) * s) for x, y in p]

    quad = [(100, 300), (180, 300), (180, 380), (100, 380)]
    tri = [(330, 200), (390, 215), (365, 255)]
    return RegionDragSpec(
        prompt="black car on the road",
        polygons=[
            {"handle": pts(quad), "target": pts(quad, (dx, 40))},
            {"handle": pts(tri), "target": pts(tri, (-dx / 2, -40))},
        ],
        sampler={"steps": steps, "resolution": size, "seed": seed},
    )


def _run(editor: Any, image: Image.Image, spec: Any, cold: bool) -> dict[str, Any]:
    device = editor.model.device
    _sync(device)
    t0 = time.perf_counter()
    result = editor.edit(image, spec, reuse_inversion=not cold)
    _sync(device)
    wall = time.perf_counter() - t0
    rep = result.report
    if rep.inversion_reused == cold:
        raise RuntimeError(f"expected inversion_reused={not cold}, got {rep.inversion_reused}")
    return {
        "wall": wall,
        "phases": dict(rep.phase_seconds),
        "unet": dict(rep.unet_evaluations),
        "peak_memory_bytes": rep.peak_memory_bytes,
        "peak_memory_kind": rep.peak_memory_kind,
        "kv_bank_bytes": rep.kv_bank_bytes,
        "backend": rep.backend,
        "working_size": list(rep.working_size),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    return {
        "wall_mean": statistics.fmean(walls),
        "wall_min": min(walls),
        "wall_stdev": statistics.stdev(walls) if len(walls) > 1 else 0.0,
        "phases_mean": {p: statistics.fmean(r["phases"].get(p, 0.0) for r in runs) for p in PHASES},
        "unet_evaluations": runs[-1]["unet"],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="tiny | sd15-random | hub id / folder (default: device-dependent)"
    )
    ap.add_argument("--sd15", action="store_true", help="force the sd15-random architecture")
    ap.add_argument(
        "--resolution", type=int, default=None, help="square working size in pixels (512 GPU, 256 CPU)"
    )
    ap.add_argument(
        "--steps", type=int, default=20, help="Cycle-SDE steps (20; start 0.5 → 10 + 10 UNet calls)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default=None, help="cuda | cpu | mps (default: cuda when present)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default float16 on CUDA, float32 elsewhere",
    )
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/region-drag-<device>.json)",
    )
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from dragsdk import Editor
    from dragsdk.io import write_text_atomic
    from dragsdk.models import load_model

    model_name = "sd15-random" if args.sd15 else (args.model or ("sd15-random" if cuda else "tiny"))
    resolution = args.resolution or (256 if model_name == "tiny" else 512)
    device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else None

    t0 = time.perf_counter()
    model = load_model(model_name, device, dtype)
    load_s = time.perf_counter() - t0
    editor = Editor(model, backend=args.backend)
    image = Image.open(CAR).convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS)
    specs = [_spec(resolution, dx, args.seed, args.steps) for dx in (60.0, 72.0)]

    for _ in range(args.warmup):
        _run(editor, image, specs[0], cold=True)
        _run(editor, image, specs[1], cold=False)
    cold, reused = [], []
    for k in range(args.repeats):
        cold.append(_run(editor, image, specs[k % 2], cold=True))
        reused.append(_run(editor, image, specs[(k + 1) % 2], cold=False))

    first = cold[0]
    result: dict[str, Any] = {
        "benchmark": "region-drag",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "model": model_name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "backend": first["backend"],
        "image_size": [resolution, resolution],
        "working_size": first["working_size"],
        "steps": args.steps,
        "start_t": specs[0].start_t,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "model_load_seconds": load_s,
        "kv_bank_bytes": first["kv_bank_bytes"],
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in cold + reused),
        "peak_memory_kind": first["peak_memory_kind"],
        "cold": _summary(cold),
        "reused": _summary(reused),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
    }
    c, r = result["cold"], result["reused"]
    n_unet = c["unet_evaluations"]["forward"]
    unet_s = c["phases_mean"]["invert"] + c["phases_mean"]["sample"]
    result["ms_per_unet_call"] = 1000 * unet_s / max(n_unet, 1)

    out = args.out or ROOT / "benchmarks" / "results" / f"region-drag-{_device_slug(device)}.json"
    write_text_atomic(json.dumps(result, indent=2), out)

    w, h = result["working_size"]
    print(
        f"region-drag: model {model_name}, {result['device_name']} ({device}), {result['dtype']}, backend "
        f"{result['backend']}, {w}×{h}, {args.steps} steps, start_t {result['start_t']}, "
        f"{args.repeats} runs after {args.warmup} warm-up"
    )
    print(f"| {'phase':<22} | {'cold edit (s)':>14} | {'reused inversion (s)':>21} |")
    print(f"|{'-' * 24}|{'-' * 16}|{'-' * 23}|")
    for p in PHASES:
        print(f"| {p:<22} | {c['phases_mean'][p]:>14.4f} | {r['phases_mean'][p]:>21.4f} |")
    print(f"| {'wall (mean)':<22} | {c['wall_mean']:>14.4f} | {r['wall_mean']:>21.4f} |")
    print(f"| {'wall (min)':<22} | {c['wall_min']:>14.4f} | {r['wall_min']:>21.4f} |")
    for kind in ("forward", "forward_grad", "backward"):
        label = f"UNet {kind}"
        print(f"| {label:<22} | {c['unet_evaluations'][kind]:>14d} | {r['unet_evaluations'][kind]:>21d} |")
    print(
        f"ms per UNet call (batch 1): {result['ms_per_unet_call']:.1f}; K/V bank {result['kv_bank_bytes'] / 2**20:.1f} MiB; "
        f"peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB ({result['peak_memory_kind']})"
    )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
