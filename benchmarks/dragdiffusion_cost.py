"""Benchmark: CPU seconds per stage of a ``dragdiffusion`` edit, beside the official DragDiffusion code in the same run.

For each model (default ``tiny`` and ``sd15-random``: random weights, so only the cost is meaningful) at ``--size``²
(default 512, DragBench's working size), three runs in one process, one after the other, on the same inputs (the
DragBench car sample of ``examples/dragbench-car`` resized, its mask and prompt):

1. ``official``: the official pipeline (Yujun-Shi/DragDiffusion ``drag_pipeline.py`` and ``utils/``, driven as
   ``run_drag_diffusion.py`` drives it; :mod:`benchmarks.parity.dragdiffusion`'s ``run_official``) without a LoRA:
   encode + invert, optimise, sample + decode;
2. ``dragsdk``: the mode with ``lora_steps`` 0, the same settings: the report's phases;
3. ``dragsdk + LoRA``: the mode with ``--lora-steps`` of per-image LoRA training first (an empty LoRA cache, so it
   trains): the ``finetune`` phase, and the other phases with the LoRA on the UNet.

The official LoRA training (``utils/lora_utils.py``) is not run: it imports torchvision (no build of it imports
beside this CPU torch) and ``accelerate``, and ``diffusers.models.lora.LoRALinearLayer``, gone from current diffusers.

A full official edit at SD 1.5 size on a 2-core CPU takes hours (80 LoRA steps of batch 4, 35 inversion steps, up to
80 Adam steps, 35 sampling steps of batch two), so the defaults cut the counts (``--steps`` 10 DDIM steps: 7
inverted and 7 sampled; ``--n-pix-step`` 3; ``--lora-steps`` 2 of batch ``--lora-batch-size`` 1) and the table gives
seconds per step too, which scale to the official counts. The handles are far from their targets, so the tracker does
not end the optimisation early (the Adam steps taken are in the JSON).

Usage::

    git -C DragDiffusion.git archive HEAD drag_pipeline.py utils | tar -x -C /tmp/dd-official
    python benchmarks/dragdiffusion_cost.py --official /tmp/dd-official
    python benchmarks/dragdiffusion_cost.py --models tiny --steps 50 --n-pix-step 80   # the official counts, tiny

Without ``--official`` only the dragsdk runs are timed. Prints a table and writes
``benchmarks/results/dragdiffusion-cost-cpu.json`` atomically.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _parity() -> Any:
    spec = importlib.util.spec_from_file_location(
        "parity_dd", ROOT / "benchmarks" / "parity" / "dragdiffusion.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _per_step(seconds: dict[str, float], counts: dict[str, int]) -> dict[str, float | None]:
    """Seconds per unit of each stage: per LoRA step, per inversion step, per Adam step, per sampling step."""
    out: dict[str, float | None] = {}
    for stage, n in counts.items():
        out[stage] = seconds[stage] / n if stage in seconds and n else None
    return out


def measure(model_name: str, a: argparse.Namespace, parity: Any) -> dict[str, Any]:
    from dragsdk.models import load_model

    clock = time.perf_counter()
    bundle = load_model(model_name, device="cpu")
    load_s = time.perf_counter() - clock
    inverted = round(parity.STRENGTH * a.steps)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = parity.inputs(Path(tmp), a.size)
        if a.official is not None:
            theirs = parity.run_official(copy.deepcopy(bundle), a.official, data, a.n_pix_step, None, a.steps)
            sec = theirs["seconds"]
            runs["official"] = {
                "seconds": sec,
                "adam_steps": theirs["adam_steps"],
                "per_step": _per_step(
                    {
                        "invert": sec["encode + invert"],
                        "optimise": sec["optimise"],
                        "sample": sec["sample + decode"],
                    },
                    {"invert": inverted, "optimise": theirs["adam_steps"], "sample": inverted},
                ),
            }
        os.environ["DRAGSDK_CACHE_DIR"] = str(Path(tmp) / "lora-cache")  # empty: the LoRA run trains
        for name, lora in {
            "dragsdk": None,
            "dragsdk + LoRA": {
                "lora_steps": a.lora_steps,
                "lora_batch_size": a.lora_batch_size,
                "lora_resolution": a.size,
            },
        }.items():
            ours = parity.run_dragsdk(bundle, data, a.n_pix_step, a.steps, lora)
            sec = ours["seconds"]
            joined = {
                **sec,
                "encode + invert": sec.get("encode", 0.0) + sec.get("invert", 0.0),
                "sample + decode": sec.get("sample", 0.0) + sec.get("decode", 0.0),
            }
            runs[name] = {
                "seconds": joined,
                "adam_steps": ours["adam_steps"],
                "per_step": _per_step(
                    {
                        "finetune": sec.get("finetune", 0.0),
                        "invert": joined["encode + invert"],
                        "optimise": sec.get("optimise", 0.0),
                        "sample": joined["sample + decode"],
                    },
                    {
                        "finetune": a.lora_steps if lora else 0,
                        "invert": inverted,
                        "optimise": ours["adam_steps"],
                        "sample": inverted,
                    },
                ),
            }
    return {"model": model_name, "load_seconds": load_s, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--official", type=Path, default=None, help="a DragDiffusion work tree (drag_pipeline.py, utils/)"
    )
    ap.add_argument("--models", nargs="+", default=["tiny", "sd15-random"])
    ap.add_argument("--size", type=int, default=512, help="image side, pixels (default 512)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps (official 50; 70 %% are inverted)")
    ap.add_argument("--n-pix-step", type=int, default=3, help="most Adam steps (official 80)")
    ap.add_argument(
        "--lora-steps", type=int, default=2, help="per-image LoRA steps of the third run (official 80)"
    )
    ap.add_argument("--lora-batch-size", type=int, default=1, help="crops per LoRA step (official 4)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "dragdiffusion-cost-cpu.json"
    )
    a = ap.parse_args(argv)
    if a.official is not None and not (a.official / "drag_pipeline.py").is_file():
        print(f"no official DragDiffusion work tree at {a.official}: timing dragsdk only")
        a.official = None
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    parity = _parity()
    results = [measure(m, a, parity) for m in a.models]
    print(
        f"seconds per stage at {a.size}², {a.steps} DDIM steps ({round(parity.STRENGTH * a.steps)} inverted and "
        f"sampled), at most {a.n_pix_step} Adam steps, LoRA {a.lora_steps} steps of batch {a.lora_batch_size}; "
        f"{torch.get_num_threads()} threads"
    )
    header = f"{'model':12s} {'run':15s} {'LoRA':>8s} {'enc+inv':>8s} {'optimise':>9s} {'samp+dec':>9s}"
    header += f" | per step: {'LoRA':>7s} {'invert':>7s} {'Adam':>7s} {'sample':>7s}"
    print(header)

    def cell(v: float | None, width: int) -> str:
        return f"{v:{width}.2f}" if v is not None else f"{'-':>{width}s}"

    for r in results:
        for run, row in r["runs"].items():
            s, p = row["seconds"], row["per_step"]
            print(
                f"{r['model']:12s} {run:15s} {cell(s.get('finetune'), 8)} {cell(s.get('encode + invert'), 8)} "
                f"{cell(s.get('optimise'), 9)} {cell(s.get('sample + decode'), 9)} | per step: "
                f"{cell(p.get('finetune'), 7)} {cell(p.get('invert'), 7)} {cell(p.get('optimise'), 7)} "
                f"{cell(p.get('sample'), 7)}"
            )
    out = {
        "size": a.size,
        "steps": a.steps,
        "n_pix_step": a.n_pix_step,
        "lora_steps": a.lora_steps,
        "lora_batch_size": a.lora_batch_size,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "official": "Yujun-Shi/DragDiffusion drag_pipeline.py + utils/ (no LoRA)" if a.official else None,
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=a.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(out, f, indent=2)
    os.replace(f.name, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
