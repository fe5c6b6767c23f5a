"""Benchmark: fused cross-branch attention (Triton) vs SDPA on materialised K/V.

Shapes are the decoder self-attention levels of SD 1.5 (512²), SD 2.x (768²) and SDXL (1024²) —
(tokens, heads, head dim) from ``FAMILY_SHAPES`` — with the classifier-free-guidance batch ``B = 2`` for the
queries and a bank of batch 1 with the same token count. Every K/V mode is timed:

- ``concat``: sources ``[own, bank]``; SDPA gets ``cat([own, bank.expand(B)])``;
- ``replace``: ``[bank]``; SDPA gets ``bank.expand(B)`` (a view, no copy);
- ``composite``: ``[bank_a with mask m, bank_b with mask ~m]`` (m = the first half of the tokens visible);
  SDPA gets ``cat([bank_a, bank_b]).expand(B)`` plus a boolean ``attn_mask``, or (``+gather``) only the visible
  keys of each bank concatenated, without a mask.

On CUDA the SDPA column is the fastest of the flash, cuDNN and memory-efficient backends that accepts the inputs.
The SDPA timings include building its inputs (the ``cat``), as a pipeline without the fused kernel would.
FLOPs count every key of every source (masked keys too): forward ``4·B·H·N·M_total·d``, backward
``2.5×`` forward, so "fwd+bwd" is ``3.5×``. On the CPU the kernel only runs under Triton's interpreter:
``--small`` sizes (tokens / 64) are implied and the numbers say nothing about speed.

Usage::

    python benchmarks/attention.py                 # CUDA: full SD 1.5 shapes, fp16
    python benchmarks/attention.py --small         # quick run
    python benchmarks/attention.py --tune          # CUDA: sweep the kernel's tile sizes first (TUNE_FWD/TUNE_BWD)
    TRITON_INTERPRET=1 python benchmarks/attention.py   # CPU (implied --small)

Writes ``benchmarks/results/attention-<device-slug>.json`` atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

# (tokens, heads, head dim) of the decoder self-attention levels at each family's native resolution.
FAMILY_SHAPES = {
    "sd15": [(4096, 8, 40), (1024, 8, 80), (256, 8, 160)],  # 512²
    "sd2": [(9216, 5, 64), (2304, 10, 64), (576, 20, 64)],  # 768²
    "sdxl": [(4096, 10, 64), (1024, 20, 64)],  # 1024²
}
SHAPES = FAMILY_SHAPES["sd15"]
SMALL_DIVISOR = 64  # --small: tokens / 64 (at least 4)
# Launch configurations tried by --tune: (BLOCK_M, BLOCK_N, num_warps, num_stages).
TUNE_FWD = [
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 8, 3),
    (64, 64, 4, 3),
    (128, 32, 4, 4),
    (64, 128, 4, 3),
    (64, 32, 8, 2),
    (64, 64, 8, 2),
]
TUNE_BWD = [
    (64, 64, 4, 2),
    (128, 64, 8, 2),
    (64, 128, 8, 2),
    (32, 64, 4, 2),
    (64, 32, 4, 2),
    (32, 32, 4, 2),
    (128, 32, 8, 2),
]
MODES = ["concat", "replace", "composite"]
BATCH = 2
CPU_NOTE = "CPU: kernel runs in Triton's interpreter; these numbers are not speed claims"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _timer(device: torch.device, repeats: int) -> Callable[[Callable[[], object]], float]:
    """Milliseconds per call: ``triton.testing.do_bench`` on CUDA, the median of ``repeats`` wall times else."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))

    def cpu_time(fn):
        fn()  # warm-up (first call traces / compiles)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cpu_time


def _case(mode: str, n: int, h: int, d: int, device, dtype, with_grad: bool, gen: torch.Generator):
    """Inputs for the kernel (sources) and for SDPA (a closure that materialises K/V and the mask)."""
    from dragsdk.kernels import KVSource

    def rnd(*shape, grad=False):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype).requires_grad_(grad)

    q = rnd(BATCH, h, n, d, grad=with_grad)
    if mode == "concat":
        own_k, own_v = rnd(BATCH, h, n, d, grad=with_grad), rnd(BATCH, h, n, d, grad=with_grad)
        bank_k, bank_v = rnd(1, h, n, d), rnd(1, h, n, d)
        sources = [KVSource(own_k, own_v), KVSource(bank_k, bank_v)]

        def materialise():
            k = torch.cat([own_k, bank_k.expand(BATCH, -1, -1, -1)], dim=2)
            v = torch.cat([own_v, bank_v.expand(BATCH, -1, -1, -1)], dim=2)
            return k, v, None

        leaves = [q, own_k, own_v]
    elif mode == "replace":
        bank_k, bank_v = rnd(1, h, n, d), rnd(1, h, n, d)
        sources = [KVSource(bank_k, bank_v)]

        def materialise():
            return bank_k.expand(BATCH, -1, -1, -1), bank_v.expand(BATCH, -1, -1, -1), None

        leaves = [q]
    else:
        ka, va, kb, vb = rnd(1, h, n, d), rnd(1, h, n, d), rnd(1, h, n, d), rnd(1, h, n, d)
        mask_a = torch.zeros(n, dtype=torch.bool, device=device)
        mask_a[: max(1, n // 2)] = True
        mask_b = ~mask_a
        sources = [KVSource(ka, va, mask_a), KVSource(kb, vb, mask_b)]
        keep = torch.cat([mask_a, mask_b])[None, :]  # (1, M_total): broadcasts over (B, H, N, M_total)

        def materialise():
            k = torch.cat([ka, kb], dim=2).expand(BATCH, -1, -1, -1)
            v = torch.cat([va, vb], dim=2).expand(BATCH, -1, -1, -1)
            return k, v, keep

        leaves = [q]
    m_total = sum(s.k.shape[2] for s in sources)
    return q, sources, materialise, leaves, m_total


def _sdpa_variants(device: torch.device, mode: str) -> list[tuple[str, object, bool]]:
    """``(name, sdpa backend or None, gather)``: every SDPA backend (flash, cuDNN, memory-efficient; the default
    dispatcher on the CPU), and for ``composite`` also each with the visible keys gathered instead of a mask."""
    if device.type != "cuda":
        return [("default", None, False)]
    from torch.nn.attention import SDPBackend

    backs = [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ]
    out = [(n, b, False) for n, b in backs]
    if mode == "composite":
        out += [(n + "+gather", b, True) for n, b in backs]
    return out


def _sdpa_fn(q, materialise, leaves, g, with_grad, backend, gather, sources):
    import contextlib

    from torch.nn.attention import sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fn():
        ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
        with ctx, torch.set_grad_enabled(with_grad):
            if gather:  # composite without a mask: the visible keys of each bank, concatenated
                a, b = sources
                k = torch.cat([a.k[:, :, a.key_mask], b.k[:, :, b.key_mask]], dim=2).expand(BATCH, -1, -1, -1)
                v = torch.cat([a.v[:, :, a.key_mask], b.v[:, :, b.key_mask]], dim=2).expand(BATCH, -1, -1, -1)
                keep = None
            else:
                k, v, keep = materialise()
            out = sdpa(q, k, v, attn_mask=keep)
        if not with_grad:
            return out
        return torch.autograd.grad(out, leaves, g)

    return fn


def _tune(args, device, dtype, gen, timer) -> list[dict]:
    """Time every candidate launch configuration of the kernel at one shape per ``BLOCK_D`` (concat, the mode of
    the drag edits), forward first, then forward+backward with the best forward; keep the fastest correct one
    in ``_TUNED`` for the rest of the run. Returns one row per candidate."""
    from dragsdk.kernels import cross_attention as ca
    from dragsdk.kernels import cross_branch_attention

    cc = torch.cuda.get_device_capability(device)[0]
    seen: dict[int, tuple[int, int, int]] = {}
    for family in args.families:
        for n, h, d in FAMILY_SHAPES[family]:
            seen.setdefault(ca._block_d(d), (n, h, d))
    rows = []
    for bd, (n, h, d) in sorted(seen.items()):
        for backward, cands in ((False, TUNE_FWD), (True, TUNE_BWD)):
            q, sources, materialise, leaves, _ = _case("concat", n, h, d, device, dtype, backward, gen)
            g = torch.randn(q.shape, generator=gen).to(device, dtype)
            with torch.no_grad():
                k, v, keep = materialise()
                ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
                if backward:
                    q64 = q.detach().float().requires_grad_(True)
                    lv = [t.detach().float().requires_grad_(True) for t in leaves[1:]]
            if backward:
                with torch.enable_grad():
                    k32 = torch.cat([lv[0], sources[1].k.float().expand(BATCH, -1, -1, -1)], dim=2)
                    v32 = torch.cat([lv[1], sources[1].v.float().expand(BATCH, -1, -1, -1)], dim=2)
                    want = torch.autograd.grad(
                        torch.nn.functional.scaled_dot_product_attention(q64, k32, v32), [q64, *lv], g.float()
                    )
            key = (cc, bd, dtype, backward)
            best = None
            for cand in cands:
                cfg = ca._LaunchConfig(*cand)
                ca._TUNED[key] = cfg
                row = {
                    "tokens": n,
                    "heads": h,
                    "dim": d,
                    "block_d": bd,
                    "phase": "fwd+bwd" if backward else "fwd",
                    "config": list(cand),
                }
                try:
                    if backward:
                        out = cross_branch_attention(q, sources)
                        got = torch.autograd.grad(out, leaves, g)
                        err = max(
                            ((a.float() - b).norm() / b.norm()).item() for a, b in zip(got, want, strict=True)
                        )

                        def fn(q=q, sources=sources, leaves=leaves, g=g):
                            return torch.autograd.grad(cross_branch_attention(q, sources), leaves, g)
                    else:
                        with torch.no_grad():
                            out = cross_branch_attention(q, sources).float()
                        err = ((out - ref).norm() / ref.norm()).item()

                        def fn(q=q, sources=sources):
                            with torch.no_grad():
                                return cross_branch_attention(q, sources)

                    row["rel_err"] = err
                    if not err < 5e-2:
                        row["error"] = f"wrong result (relative error {err:.2e})"
                    else:
                        row["ms"] = timer(fn)
                except Exception as e:  # a tile that does not fit (shared memory, registers) is skipped
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows.append(row)
                if args.verbose:
                    print("tune", row, flush=True)
                if "ms" in row and (best is None or row["ms"] < best[1]):
                    best = (cfg, row["ms"])
            if best is None:
                del ca._TUNED[key]
            else:
                ca._TUNED[key] = best[0]
                for r in rows:
                    if r["block_d"] == bd and r["phase"] == ("fwd+bwd" if backward else "fwd"):
                        r["chosen"] = r["config"] == list(best[0])
    return rows


def _run(args) -> dict:
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton / the kernel module is imported
    from dragsdk.kernels import cross_branch_attention, is_available

    ok, reason = is_available()
    if not ok:
        sys.exit(f"fused kernel unavailable: {reason}")
    small = args.small or not cuda
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if cuda else torch.float32)
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    timer = _timer(device, args.repeats)
    gen = torch.Generator().manual_seed(0)
    tune_rows = _tune(args, device, dtype, gen, timer) if args.tune and cuda else []

    rows = []
    for family in args.families:
        for tokens, h, d in FAMILY_SHAPES[family]:
            n = max(4, tokens // SMALL_DIVISOR) if small else tokens
            for mode in args.modes:
                for phase in ("fwd", "fwd+bwd"):
                    with_grad = phase == "fwd+bwd"
                    q, sources, materialise, leaves, m_total = _case(
                        mode, n, h, d, device, dtype, with_grad, gen
                    )
                    g = torch.randn(q.shape, generator=gen).to(device, dtype) if with_grad else None

                    def fused(q=q, sources=sources, leaves=leaves, g=g, with_grad=with_grad):
                        if not with_grad:
                            with torch.no_grad():
                                return cross_branch_attention(q, sources)
                        out = cross_branch_attention(q, sources)
                        return torch.autograd.grad(out, leaves, g)

                    with torch.no_grad():
                        k, v, keep = materialise()
                        ref = torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, attn_mask=keep
                        ).float()
                        max_err = (cross_branch_attention(q, sources).float() - ref).abs().max().item()
                    flops = 4.0 * BATCH * h * n * m_total * d * (3.5 if with_grad else 1.0)
                    ms_k = timer(fused)
                    sdpa_ms = {}
                    for name, backend, gather in _sdpa_variants(device, mode):
                        fn = _sdpa_fn(q, materialise, leaves, g, with_grad, backend, gather, sources)
                        try:
                            fn()
                            sdpa_ms[name] = timer(fn)
                        except RuntimeError:  # this SDPA backend does not take these inputs (mask, dtype, d)
                            continue
                    best = min(sdpa_ms, key=sdpa_ms.__getitem__)
                    ms_s = sdpa_ms[best]
                    rows.append(
                        {
                            "family": family,
                            "tokens": n,
                            "heads": h,
                            "dim": d,
                            "mode": mode,
                            "phase": phase,
                            "batch": BATCH,
                            "keys_total": m_total,
                            "flops": flops,
                            "kernel_ms": ms_k,
                            "sdpa_ms": ms_s,
                            "sdpa_best": best,
                            "sdpa_all_ms": sdpa_ms,
                            "kernel_tflops": flops / (ms_k * 1e-3) / 1e12,
                            "sdpa_tflops": flops / (ms_s * 1e-3) / 1e12,
                            "speedup": ms_s / ms_k,
                            "max_abs_diff_vs_sdpa": max_err,
                        }
                    )
                    if args.verbose:
                        print(_format_row(rows[-1]), flush=True)

    import triton

    from dragsdk.kernels import cross_attention as ca

    return {
        "device": device_name,
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "small": small,
        "note": CPU_NOTE
        if not cuda
        else (
            "SDPA: the fastest of flash / cuDNN / memory-efficient that accepts the inputs (composite also with the "
            "visible keys gathered instead of a mask), timings include materialising K/V (cat) and the mask"
        ),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "timer": "triton.testing.do_bench (median)" if cuda else f"median of {args.repeats} wall-clock runs",
        "tuned": [
            {
                "cc": k[0],
                "block_d": k[1],
                "dtype": str(k[2]).removeprefix("torch."),
                "backward": k[3],
                "config": list(v),
            }
            for k, v in ca._TUNED.items()
        ],
        "tune_rows": tune_rows,
        "rows": rows,
    }


_HEADER = (
    f"{'family':<6} {'tokens':>6} {'H':>2} {'d':>3} {'mode':<9} {'phase':<7} {'kernel ms':>10} {'sdpa ms':>10} "
    f"{'kernel TF/s':>11} {'sdpa TF/s':>10} {'sdpa/kernel':>11} {'max|diff|':>9} {'best sdpa':<16}"
)


def _format_row(r: dict) -> str:
    return (
        f"{r['family']:<6} {r['tokens']:>6} {r['heads']:>2} {r['dim']:>3} {r['mode']:<9} {r['phase']:<7} "
        f"{r['kernel_ms']:>10.3f} {r['sdpa_ms']:>10.3f} {r['kernel_tflops']:>11.3g} {r['sdpa_tflops']:>10.3g} "
        f"{r['speedup']:>11.3f} {r['max_abs_diff_vs_sdpa']:>9.1e} {r['sdpa_best']:<16}"
    )


def _print_table(result: dict) -> None:
    print(
        f"device: {result['device']}  dtype: {result['dtype']}  batch: {BATCH} (bank batch 1)  "
        f"timer: {result['timer']}"
    )
    print(f"note: {result['note']}")
    print(_HEADER)
    print("-" * len(_HEADER))
    for r in result["rows"]:
        print(_format_row(r))
    if result["device_type"] != "cuda":
        print(f"!! {CPU_NOTE}")


def _write_json_atomic(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"attention-{_slug(result['device'])}.json"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tokens / 64 (implied on CPU)")
    p.add_argument(
        "--cpu", action="store_true", help="run on the CPU (Triton interpreter) even if CUDA is present"
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILY_SHAPES),
        default=list(FAMILY_SHAPES),
        help="attention shapes of these model families at their native resolutions",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="CUDA: time every candidate tile configuration first and run the table with the fastest",
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="default float16 on CUDA, float32 on the CPU",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case on the CPU (median reported)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    args = p.parse_args(argv)
    result = _run(args)
    _print_table(result)
    if not args.no_json:
        print(f"wrote {_write_json_atomic(result, args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
