"""Everything a GPU machine should check and time, in one process and one call (``make gpu``).

1. The environment: GPU, driver, CUDA, torch, Triton, diffusers, Python.
2. The CUDA-only tests (``pytest -m cuda tests/test_cuda.py``): the fused kernel against the float64 oracle at
   every SD 1.5 / SD 2 / SDXL attention shape in fp16 and bf16, forward and backward; an edit through each backend
   against eager.
3. ``benchmarks/attention.py --tune``: the kernel's tile sizes swept, then the kernel against the fastest SDPA
   backend at every shape, K/V mode and phase.
4. ``benchmarks/edit.py`` on ``sd15-random`` (full SD 1.5, random weights) in fp16 at 512²: a 50-step drag and a
   20-step region drag on eager and triton, the ``reference`` cost profile, the second drag of the same image
   (inversion reused); then a drag at 768² for peak memory; then ``compile`` (its compilation is the slow part).
5. ``dragsdk backends --bench`` on the same model: the measured table and the backend ``auto`` picks.

Each section has a deadline (``--budget`` seconds for the whole run) and writes its JSON as soon as it ends, so a
run cut short still leaves what it measured: ``benchmarks/results/<name>-<device>.json``, copied to ``$OUT`` when
that is set, and a Markdown summary ``gpu-<device>.md``.

``--rehearse`` runs the same script on a CPU with the ``tiny`` model, small sizes and Triton's interpreter, to find
mistakes before GPU time is spent; its numbers mean nothing.

Usage::

    python benchmarks/gpu.py                 # on the GPU machine
    python benchmarks/gpu.py --rehearse      # here, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Run:
    """Deadline bookkeeping and result files for one run."""

    def __init__(self, budget_s: float, device_slug: str, out: Path | None) -> None:
        self.t0 = time.monotonic()
        self.budget = budget_s
        self.slug = device_slug
        self.out = out
        self.summary: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def write(self, name: str, data: Any) -> Path:
        """``benchmarks/results/<name>-<device>.json``; under ``$OUT`` everything goes into one
        ``gpu-<device>.json`` (the device tool returns few files), split again by ``--split``."""
        from dragsdk.io import write_text_atomic

        path = RESULTS / f"{name.replace('_', '-')}-{self.slug}.json"
        write_text_atomic(json.dumps(data, indent=2, default=str), path)
        self.summary[name] = data
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json.dumps({"slug": self.slug, **self.summary}, indent=1, default=str),
                              self.out / f"gpu-{self.slug}.json")
        print(f"[{time.monotonic() - self.t0:6.0f} s] wrote {path.relative_to(ROOT)}", flush=True)
        return path


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_runtime": torch.version.cuda, "platform": platform.platform()}
    for mod in ("triton", "diffusers", "transformers", "pydantic", "onnxruntime", "xformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # absent or broken: record why
            env[mod] = f"unavailable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            env["driver"] = f"nvidia-smi failed: {e}"
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        pass
    return env


def cuda_tests(run: Run, rehearse: bool) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess (its own CUDA context), with a JUnit report parsed for counts."""
    junit = RESULTS / f".junit-{run.slug}.xml"
    cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-rs"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, min(150.0, run.left() - 300)))
        tail = (proc.stdout + proc.stderr)[-6000:]
        rc = proc.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = f"timed out after {e.timeout:.0f} s", -1
    counts: dict[str, int] = {}
    if junit.exists():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed_cases"] = [c.get("name") for c in suite.iter("testcase")
                                  if c.find("failure") is not None or c.find("error") is not None]
        junit.unlink()
    print(tail[-3000:], flush=True)
    return {"rc": rc, "seconds": time.monotonic() - t0, **counts, "output_tail": tail, "rehearsal": rehearse}


def attention(run: Run, rehearse: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import attention as bench

    args = argparse.Namespace(small=rehearse, cpu=False, modes=bench.MODES, families=list(bench.FAMILY_SHAPES),
                              dtype=None, repeats=1, tune=not rehearse, verbose=False)
    result = bench._run(args)
    bench._print_table(result)
    return result


_MODEL: dict[str, Any] = {}


def model(rehearse: bool) -> Any:
    """One model for every section (building ``sd15-random`` takes a while)."""
    name = "tiny" if rehearse else "sd15-random"
    if name not in _MODEL:
        from dragsdk.models import load_model

        _MODEL[name] = load_model(name)
    return _MODEL[name]


def edits(run: Run, rehearse: bool, configs: list[str], resolution: int, drag_steps: int, repeats: int,
          edit_kinds: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import edit as bench

    args = argparse.Namespace(model="tiny" if rehearse else "sd15-random", model_obj=model(rehearse),
                              resolution=resolution,
                              drag_steps=drag_steps, region_steps=20 if not rehearse else 4, warmup=1,
                              repeats=repeats, configs=configs, edits=edit_kinds, out=None)
    result = bench.run(args)
    bench.print_table(result)
    return result


def backends_bench(rehearse: bool) -> dict[str, Any]:
    """``dragsdk backends --bench`` as a function, then what ``auto`` picks for a drag and a region drag."""

    from dragsdk import Editor
    from dragsdk.backends.select import bench_backends
    from dragsdk.registry import get_registry

    reg = get_registry()
    res = 128 if rehearse else 512
    editor = Editor(model(rehearse), registry=reg)
    ort_cuda = "CUDAExecutionProvider" in environment().get("onnxruntime_providers", [])
    names = ["eager"] if rehearse else [n for n in reg.backends if n != "onnx" or ort_cuda]
    entry = bench_backends(editor.model, res, steps=4, names=names, registry=reg)
    picks = {}
    for kind, grads, kv in (("drag", True, ["concat"]), ("region-drag", False, ["replace"])):
        from dragsdk.backends.select import model_family, model_key, select_backend

        b, why = select_backend(reg.backends, "auto", editor.model.device.type,
                                str(editor.model.dtype).removeprefix("torch."), grads, kv,
                                model=model_key(editor.model), working_size=entry["working_size"],
                                family=model_family(editor.model))
        picks[kind] = {"backend": b.name, "reason": why}
    return {"entry": entry, "auto": picks}


def markdown(run: Run, env: dict[str, Any]) -> str:
    s = run.summary
    lines = [f"# GPU run: {env.get('gpu', 'cpu')} ({time.strftime('%Y-%m-%d')})", "",
             f"torch {env.get('torch')}, Triton {env.get('triton')}, diffusers {env.get('diffusers')}, "
             f"CUDA {env.get('cuda_runtime')}, driver {env.get('driver', '?')}, Python {env.get('python')}", ""]
    t = s.get("tests")
    if t:
        lines += [f"CUDA tests: {t.get('tests', '?')} run, {t.get('failures', '?')} failed, "
                  f"{t.get('errors', '?')} errors, {t.get('skipped', '?')} skipped ({t['seconds']:.0f} s)", ""]
    a = s.get("attention")
    if a and a.get("rows"):
        lines += ["## Cross-branch attention kernel vs the fastest SDPA backend", "",
                  "| family | tokens | heads | d | mode | phase | kernel ms | best SDPA | SDPA ms | SDPA/kernel |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['family']} | {r['tokens']} | {r['heads']} | {r['dim']} | {r['mode']} | {r['phase']} "
                         f"| {r['kernel_ms']:.3f} | {r['sdpa_best']} | {r['sdpa_ms']:.3f} | {r['speedup']:.2f} |")
        lines.append("")
    for key, title in (("edit", "Edits (sd15-random, fp16)"), ("edit_768", "Drag at 768²"),
                       ("edit_compile", "compile backend")):
        e = s.get(key)
        if not e or not e.get("rows"):
            continue
        lines += [f"## {title}, {e['resolution']}², drag {e['drag_steps']} steps, region drag {e['region_steps']}", "",
                  "| edit | config | wall s | encode | invert | sample | decode | peak GiB | × reference | 2nd drag s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            if "wall_s" not in r:
                lines.append(f"| {r['edit']} | {r['config']} | {r.get('error') or r.get('skipped')} ||||||||")
                continue
            p = r["phase_s"]
            lines.append(
                f"| {r['edit']} | {r['config']} | {r['wall_s']:.3f} | {p['encode']:.3f} | {p['invert']:.3f} | "
                f"{p['sample']:.3f} | {p['decode']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                f"{r.get('speedup_vs_reference', float('nan')):.2f} | {r.get('second_edit_s', float('nan')):.3f} |")
        lines.append("")
    b = s.get("backends")
    if b:
        lines += ["## `dragsdk backends --bench` and `auto`", ""]
        for name, row in b["entry"]["results"].items():
            cells = ", ".join(f"{k} {1000 * row[k]:.1f} ms" for k in ("drag_step_s", "region_step_s") if row.get(k))
            lines.append(f"- {name}: {cells or row.get('reason') or row.get('notes')}")
        for kind, pick in b["auto"].items():
            lines.append(f"- auto for {kind}: **{pick['backend']}** ({pick['reason'][:200]})")
        lines.append("")
    if s.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in s["errors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rehearse", action="store_true", help="CPU dress rehearsal: tiny model, small sizes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["tests", "attention", "edit", "edit_768", "edit_compile", "backends"])
    ap.add_argument("--split", type=Path, default=None,
                    help="write the per-benchmark files and the Markdown summary from a gpu-<device>.json")
    args = ap.parse_args(argv)
    if args.split:
        data = json.loads(args.split.read_text())
        run = Run(0, data.pop("slug"), None)
        for name, section in data.items():
            if name != "errors":
                run.write(name, section)
        run.summary = data
        (RESULTS / f"gpu-{run.slug}.md").write_text(markdown(run, data.get("env", {})))
        return 0
    if args.rehearse:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("DRAGSDK_CACHE_DIR", str(ROOT / "benchmarks" / "results" / ".cache"))
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearse:
        sys.exit("no CUDA device: use --rehearse for a CPU dress rehearsal")
    env = environment()
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    run = Run(args.budget, "rehearsal-cpu" if args.rehearse else _slug(env["gpu"]), out)
    print(json.dumps(env, indent=1), flush=True)
    run.write("env", env)
    res = 128 if args.rehearse else 512
    steps = 6 if args.rehearse else 50
    reps = 1 if args.rehearse else 2
    fast = ["eager", "triton", "reference"] + (["xformers"] if env.get("xformers", "").count(".") else [])
    if "CUDAExecutionProvider" in env.get("onnxruntime_providers", []):
        fast.append("onnx")
    sections = [  # (name, seconds it needs at least, what it runs), most wanted first
        ("tests", 60, lambda: cuda_tests(run, args.rehearse)),
        ("edit", 90, lambda: edits(run, args.rehearse, fast, res, steps, reps)),
        ("attention", 60, lambda: attention(run, args.rehearse)),
        ("edit_768", 30, lambda: edits(run, args.rehearse, ["triton" if cuda else "eager"], res * 3 // 2, steps, 1,
                                       ["drag"])),
        ("edit_compile", 90, lambda: edits(run, args.rehearse, ["compile"], res, steps, reps)),
        ("backends", 30, lambda: backends_bench(args.rehearse)),
    ]
    run.summary["errors"] = []
    for name, min_left, fn in sections:
        if name in args.skip:
            continue
        if run.left() < min_left * (0.05 if args.rehearse else 1):
            msg = f"{name}: skipped, {run.left():.0f} s left of the budget (needs about {min_left} s)"
            print(msg, flush=True)
            run.summary["errors"].append(msg)
            continue
        print(f"== {name} ({run.left():.0f} s left)", flush=True)
        try:
            run.write(name, fn())
        except Exception as e:
            msg = f"{name}: {type(e).__name__}: {str(e)[:500]}"
            traceback.print_exc()
            run.summary["errors"].append(msg)
        if cuda:
            torch.cuda.empty_cache()
        md = markdown(run, env)
        (RESULTS / f"gpu-{run.slug}.md").write_text(md)
        if out is not None:
            (out / f"gpu-{run.slug}.md").write_text(md)
    print(markdown(run, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
