"""Benchmark: the cost of ``Editor.weights_key()`` (the weights identity every edit and dry run computes).

Three timings on one model, each the median of ``--repeat`` calls:

- ``unmemoised``: :func:`dragsdk.cache.weights_fingerprint` (norm and sum of every parameter: two reads);
- ``first``: an Editor's first ``weights_key()`` (its memo empty: the same two reads);
- ``repeated``: the next calls, weights unchanged (the norm of every parameter, sums from the memo: one read);
- ``after one write``: a repeated call after ``W.data += delta`` on one parameter (that sum recomputed).

Usage::

    python benchmarks/weights_key.py                      # sd15-random on the CPU
    python benchmarks/weights_key.py --model tiny --threads 1

Writes ``benchmarks/results/weights-key-<model>-<device>.json`` atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _median_seconds(
    fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from dragsdk import Editor
    from dragsdk.cache import WeightsFingerprint, weights_fingerprint
    from dragsdk.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    editor = Editor(model)
    m = model
    mods = {"unet": m.unet, "vae": m.vae, "text_encoder": m.text_encoder, "text_encoder_2": m.text_encoder_2}
    n = sum(p.numel() for mod in mods.values() if mod is not None for p in mod.parameters())

    def fresh() -> None:
        editor._weights.fingerprint = WeightsFingerprint()

    w = next(model.unet.parameters())
    sign = [1.0]

    def write() -> None:
        sign[0] = -sign[0]
        w.data[(0,) * w.ndim] += sign[0]

    rows = {
        "unmemoised": _median_seconds(lambda: weights_fingerprint(mods), args.repeat),
        "first": _median_seconds(editor.weights_key, args.repeat, before=fresh),
    }
    editor.weights_key()
    rows["repeated"] = _median_seconds(editor.weights_key, args.repeat)
    rows["after one write"] = _median_seconds(editor.weights_key, args.repeat, before=write)
    print(f"{args.model} on {args.device}: {n / 1e9:.3f} G parameters, {torch.get_num_threads()} threads")
    print(f"{'call':18s} {'seconds':>8s}")
    for k, v in rows.items():
        print(f"{k:18s} {v:8.3f}")
    out = {
        "model": args.model,
        "device": args.device,
        "parameters": n,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds": rows,
    }
    path = Path(__file__).parent / "results" / f"weights-key-{args.model}-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(out, f, indent=2)
    os.replace(f.name, path)


if __name__ == "__main__":
    main()
