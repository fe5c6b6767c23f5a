"""Everything a GPU machine should check and time, in one process and one call (``make gpu``).

1. The environment: GPU, driver, CUDA, torch, Triton, diffusers, Python.
2. The CUDA-only tests (``pytest -m cuda tests/test_cuda.py``): the fused kernel against the float64 oracle at
   every SD 1.5 / SD 2 / SDXL attention shape in fp16 and bf16, forward and backward; an edit through each backend
   against eager.
3. ``benchmarks/attention.py --tune``: the kernel's tile sizes swept, then the kernel against the fastest SDPA
   backend at every shape, K/V mode and phase.
4. ``benchmarks/edit.py`` on ``sd15-random`` (full SD 1.5, random weights) in fp16 at 512²: a 50-step drag and a
   20-step region drag on eager and triton, the ``official-cost`` profile, the second drag of the same image
   (inversion reused); then a drag at 768² for peak memory; then ``compile`` (its compilation is the slow part).
5. ``dragsdk backends --bench`` on the same model: the measured table and the backend ``auto`` picks.
6. One drag each on ``sd21-random`` (768², v-prediction) and ``sdxl-random`` (1024²), full random architectures:
   time and peak memory (``triton``, ``eager`` if it cannot run). The summary ends with a table of the GPU issue's
   targets and the values this run measured.

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
            write_text_atomic(
                json.dumps({"slug": self.slug, **self.summary}, indent=1, default=str),
                self.out / f"gpu-{self.slug}.json",
            )
        print(f"[{time.monotonic() - self.t0:6.0f} s] wrote {path.relative_to(ROOT)}", flush=True)
        return path


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "platform": platform.platform(),
    }
    for mod in ("triton", "diffusers", "transformers", "pydantic", "onnxruntime", "xformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # absent or broken: record why
            env[mod] = f"unavailable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
        )
        try:
            env["driver"] = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
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
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "pytest",
        "-v",
        "-m",
        "cuda",
        "tests/test_cuda.py",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-rs",
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, min(180.0, run.left() - 240))
        )
        tail = (proc.stdout + proc.stderr)[-6000:]
        rc = proc.returncode
    except subprocess.TimeoutExpired as e:  # keep what it printed: the progress line says how far it got
        partial = "".join(
            x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)
        )
        tail, rc = f"{partial[-5000:]}\ntimed out after {e.timeout:.0f} s", -1
    counts: dict[str, int] = {}
    if junit.exists():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed_cases"] = [
            c.get("name")
            for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None
        ]
        junit.unlink()
    print(tail[-3000:], flush=True)
    return {"rc": rc, "seconds": time.monotonic() - t0, **counts, "output_tail": tail, "rehearsal": rehearse}


def attention(run: Run, rehearse: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import attention as bench

    args = argparse.Namespace(
        small=rehearse,
        cpu=False,
        modes=bench.MODES,
        families=list(bench.FAMILY_SHAPES),
        dtype=None,
        repeats=1,
        tune=not rehearse,
        verbose=False,
    )
    result = bench._run(args)
    bench._print_table(result)
    return result


_MODEL: dict[str, Any] = {}
# family: (full random-weight model on the GPU, tiny model of the family in the rehearsal, native resolution)
FAMILY_MODELS = {
    "sd1": ("sd15-random", "tiny", 512),
    "sd2": ("sd21-random", "tiny-sd2", 768),
    "sdxl": ("sdxl-random", "tiny-sdxl", 1024),
}


def model(rehearse: bool, family: str = "sd1") -> Any:
    """One model at a time for every section (building a full random architecture takes a while); loading another
    frees the previous one first, so the peak memory a section reports holds its own model's weights only."""
    name = FAMILY_MODELS[family][1 if rehearse else 0]
    if name not in _MODEL:
        import gc

        import torch

        from dragsdk.models import load_model

        _MODEL.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _MODEL[name] = load_model(name)
    return _MODEL[name]


def edits(
    run: Run,
    rehearse: bool,
    configs: list[str],
    resolution: int,
    drag_steps: int,
    repeats: int,
    edit_kinds: list[str] | None = None,
    family: str = "sd1",
    fallback: str | None = None,
) -> dict[str, Any]:
    """``benchmarks/edit.py``'s run on the family's model; with ``fallback``, a configuration that fails or is
    skipped is run again on that backend (one measured row per edit kind is the point of the family sections)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import edit as bench

    args = argparse.Namespace(
        model=FAMILY_MODELS[family][1 if rehearse else 0],
        model_obj=model(rehearse, family),
        resolution=resolution,
        drag_steps=drag_steps,
        region_steps=20 if not rehearse else 4,
        warmup=1,
        repeats=repeats,
        configs=configs,
        edits=edit_kinds,
        out=None,
    )
    result = bench.run(args)
    if fallback and not any("wall_s" in r for r in result["rows"]):
        args.configs = [fallback]
        failed = result["rows"]
        result = bench.run(args)
        result["rows"] = failed + result["rows"]
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

        b, why = select_backend(
            reg.backends,
            "auto",
            editor.model.device.type,
            str(editor.model.dtype).removeprefix("torch."),
            grads,
            kv,
            model=model_key(editor.model),
            working_size=entry["working_size"],
            family=model_family(editor.model),
        )
        picks[kind] = {"backend": b.name, "reason": why}
    return {"entry": entry, "auto": picks}


def markdown(run: Run, env: dict[str, Any]) -> str:
    s = run.summary
    lines = [
        f"# GPU run: {env.get('gpu', 'cpu')} ({time.strftime('%Y-%m-%d')})",
        "",
        f"torch {env.get('torch')}, Triton {env.get('triton')}, diffusers {env.get('diffusers')}, "
        f"CUDA {env.get('cuda_runtime')}, driver {env.get('driver', '?')}, Python {env.get('python')}",
        "",
    ]
    t = s.get("tests")
    if t:
        lines += [
            f"CUDA tests: {t.get('tests', '?')} run, {t.get('failures', '?')} failed, "
            f"{t.get('errors', '?')} errors, {t.get('skipped', '?')} skipped ({t['seconds']:.0f} s)",
            "",
        ]
    a = s.get("attention")
    if a and a.get("rows"):
        lines += [
            "## Cross-branch attention kernel vs the fastest SDPA backend",
            "",
            "| family | tokens | heads | d | mode | phase | kernel ms | best SDPA | SDPA ms | SDPA/kernel |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in a["rows"]:
            lines.append(
                f"| {r['family']} | {r['tokens']} | {r['heads']} | {r['dim']} | {r['mode']} | {r['phase']} "
                f"| {r['kernel_ms']:.3f} | {r['sdpa_best']} | {r['sdpa_ms']:.3f} | {r['speedup']:.2f} |"
            )
        lines.append("")
    for key, title in (
        ("edit", "Edits"),
        ("edit_768", "Drag at 768²"),
        ("edit_compile", "compile backend"),
        ("edit_sd2", "SD 2.1 architecture"),
        ("edit_sdxl", "SDXL architecture"),
    ):
        e = s.get(key)
        if not e or not e.get("rows"):
            continue
        lines += [
            f"## {title}: {e.get('model')} ({e.get('prediction_type')}), {e.get('dtype')}, {e['resolution']}², "
            f"drag {e['drag_steps']} steps, region drag {e['region_steps']}",
            "",
            "| edit | config | wall s | encode | invert | sample | decode | peak GiB | × official cost | 2nd drag s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in e["rows"]:
            if "wall_s" not in r:
                lines.append(f"| {r['edit']} | {r['config']} | {r.get('error') or r.get('skipped')} ||||||||")
                continue
            p = r["phase_s"]
            lines.append(
                f"| {r['edit']} | {r['config']} | {r['wall_s']:.3f} | {p['encode']:.3f} | {p['invert']:.3f} | "
                f"{p['sample']:.3f} | {p['decode']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                f"{r.get('speedup_vs_official_cost', float('nan')):.2f} | {r.get('second_edit_s', float('nan')):.3f} |"
            )
        lines.append("")
    b = s.get("backends")
    if b:
        lines += ["## `dragsdk backends --bench` and `auto`", ""]
        for name, row in b["entry"]["results"].items():
            cells = ", ".join(
                f"{k} {1000 * row[k]:.1f} ms" for k in ("drag_step_s", "region_step_s") if row.get(k)
            )
            lines.append(f"- {name}: {cells or row.get('reason') or row.get('notes')}")
        for kind, pick in b["auto"].items():
            lines.append(f"- auto for {kind}: **{pick['backend']}** ({pick['reason'][:200]})")
        lines.append("")
    lines += targets(s)
    if s.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in s["errors"]]
    return "\n".join(lines) + "\n"


def _rows(section: dict[str, Any] | None, edit: str) -> list[dict[str, Any]]:
    return [r for r in (section or {}).get("rows", []) if r.get("edit") == edit and "wall_s" in r]


def targets(s: dict[str, Any]) -> list[str]:
    """Issue 24's targets, each with the value this run measured (``—`` where its section did not run)."""

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**missed**")

    out = ["## Targets", "", "| measure | target | measured | |", "|---|---|---|---|"]
    fast = [
        r
        for r in _rows(s.get("edit"), "drag") + _rows(s.get("edit_compile"), "drag")
        if r["config"] != "official-cost"
    ]
    ref = next(iter(r for r in _rows(s.get("edit"), "drag") if r["config"] == "official-cost"), None)
    best = min(fast, key=lambda r: r["wall_s"]) if fast else None
    out.append(
        "| drag, 50 steps, best backend | ≤ 1.0 s | "
        + (
            f"{best['wall_s']:.3f} s ({best['config']}) | {verdict(best['wall_s'] <= 1.0)} |"
            if best
            else "— | — |"
        )
    )
    if best and ref:
        x = ref["wall_s"] / best["wall_s"]
        out.append(
            f"| same edit vs the `official-cost` profile | ≥ 10× | {x:.2f}× ({ref['wall_s']:.3f} s / "
            f"{best['wall_s']:.3f} s) | {verdict(x >= 10)} |"
        )
    else:
        out.append("| same edit vs the `official-cost` profile | ≥ 10× | — | — |")
    region = _rows(s.get("edit"), "region-drag") + _rows(s.get("edit_compile"), "region-drag")
    rb = min(region, key=lambda r: r["wall_s"]) if region else None
    out.append(
        "| region drag, 20 steps | ≤ 0.15 s | "
        + (f"{rb['wall_s']:.3f} s ({rb['config']}) | {verdict(rb['wall_s'] <= 0.15)} |" if rb else "— | — |")
    )
    second = [r for r in fast if r.get("second_edit_s") is not None]
    sb = min(second, key=lambda r: r["second_edit_s"]) if second else None
    out.append(
        "| second drag, inversion reused | ≤ 0.6 s | "
        + (
            f"{sb['second_edit_s']:.3f} s ({sb['config']}, reused: {sb.get('second_edit_reused_inversion')}) | "
            f"{verdict(sb['second_edit_s'] <= 0.6)} |"
            if sb
            else "— | — |"
        )
    )
    rows = (s.get("attention") or {}).get("rows") or []
    if rows:
        worst = min(rows, key=lambda r: r["speedup"])
        cc = [r for r in rows if r["mode"] in ("concat", "composite")]
        worst_cc = min(cc, key=lambda r: r["speedup"]) if cc else worst
        below = sum(r["speedup"] < 1.0 for r in rows)
        out.append(
            f"| kernel vs best SDPA, every shape, mode, phase | ≥ 1.0× | min {worst['speedup']:.2f}× "
            f"({worst['family']} {worst['tokens']}×{worst['heads']}×{worst['dim']} {worst['mode']} "
            f"{worst['phase']}); {below} of {len(rows)} below 1.0× | {verdict(below == 0)} |"
        )
        below13 = sum(r["speedup"] < 1.3 for r in cc)
        out.append(
            f"| kernel vs best SDPA, concat and composite | ≥ 1.3× | min {worst_cc['speedup']:.2f}× "
            f"({worst_cc['family']} {worst_cc['tokens']}×{worst_cc['heads']}×{worst_cc['dim']} "
            f"{worst_cc['mode']} {worst_cc['phase']}); {below13} of {len(cc)} below 1.3× | "
            f"{verdict(below13 == 0)} |"
        )
    else:
        out.append("| kernel vs best SDPA | ≥ 1.0× / ≥ 1.3× | — | — |")
    for edit in ("drag", "region-drag"):
        eager = next(iter(r for r in _rows(s.get("edit"), edit) if r["config"] == "eager"), None)
        comp = next(iter(_rows(s.get("edit_compile"), edit)), None)
        if eager and comp:
            x = eager["wall_s"] / comp["wall_s"]
            out.append(
                f"| `compile` vs eager, {edit} | ≥ 1.3× | {x:.2f}× ({eager['wall_s']:.3f} s / "
                f"{comp['wall_s']:.3f} s) | {verdict(x >= 1.3)} |"
            )
        else:
            out.append(f"| `compile` vs eager, {edit} | ≥ 1.3× | — | — |")
    big = next(iter(_rows(s.get("edit_768"), "drag")), None)
    out.append(
        "| peak GPU memory, drag at 768² | ≤ 8 GB | "
        + (
            f"{big['peak_memory_bytes'] / 1e9:.2f} GB ({big['peak_memory_bytes'] / 2**30:.2f} GiB, "
            f"{big['config']}, {big['peak_memory_kind']}) | {verdict(big['peak_memory_bytes'] <= 8e9)} |"
            if big
            else "— | — |"
        )
    )
    for key, label in (("edit_sd2", "SD 2.1 drag, 768², v-prediction"), ("edit_sdxl", "SDXL drag, 1024²")):
        r = next(iter(_rows(s.get(key), "drag")), None)
        out.append(
            f"| {label} | measured, with peak memory | "
            + (
                f"{r['wall_s']:.3f} s, peak {r['peak_memory_bytes'] / 1e9:.2f} GB ({r['config']}) | measured |"
                if r
                else "— | — |"
            )
        )
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rehearse", action="store_true", help="CPU dress rehearsal: tiny model, small sizes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "tests",
            "attention",
            "edit",
            "edit_768",
            "edit_compile",
            "backends",
            "edit_sd2",
            "edit_sdxl",
        ],
    )
    ap.add_argument(
        "--split",
        type=Path,
        default=None,
        help="write the per-benchmark files and the Markdown summary from a gpu-<device>.json",
    )
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
    fast = ["eager", "triton", "official-cost"] + (["xformers"] if env.get("xformers", "").count(".") else [])
    if "CUDAExecutionProvider" in env.get("onnxruntime_providers", []):
        fast.append("onnx")
    sections = [  # (name, seconds it needs at least, what it runs), most wanted first
        ("tests", 60, lambda: cuda_tests(run, args.rehearse)),
        ("edit", 90, lambda: edits(run, args.rehearse, fast, res, steps, reps)),
        ("attention", 60, lambda: attention(run, args.rehearse)),
        (
            "edit_768",
            30,
            lambda: edits(
                run, args.rehearse, ["triton" if cuda else "eager"], res * 3 // 2, steps, 1, ["drag"]
            ),
        ),
        ("edit_compile", 90, lambda: edits(run, args.rehearse, ["compile"], res, steps, reps)),
        ("backends", 30, lambda: backends_bench(args.rehearse)),
        # the other families' full random architectures at their native size: one drag, time and peak memory
        (
            "edit_sd2",
            60,
            lambda: edits(
                run,
                args.rehearse,
                ["triton" if cuda else "eager"],
                FAMILY_MODELS["sd2"][2] if cuda else 128,
                steps,
                1,
                ["drag"],
                "sd2",
                "eager",
            ),
        ),
        (
            "edit_sdxl",
            90,
            lambda: edits(
                run,
                args.rehearse,
                ["triton" if cuda else "eager"],
                FAMILY_MODELS["sdxl"][2] if cuda else 128,
                steps,
                1,
                ["drag"],
                "sdxl",
                "eager",
            ),
        ),
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
