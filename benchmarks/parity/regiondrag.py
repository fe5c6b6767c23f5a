"""Parity of the region-drag mode with the official RegionDrag code, run side by side on the CPU.

Written against Visual-AI/RegionDrag @5cf4922 (the repository has no licence: this script imports and runs a local
checkout, it contains none of its code). Both programs load one random-weight SD-1.5-shaped model folder: dragsdk's
built-in ``tiny`` model saved with diffusers' ``save_pretrained``. The official code runs with the minimal patch
``regiondrag-cpu.patch`` (next to this file), which only

- drops the InstantDrag import and checkpoint download (not used by "Encode then CP", the evaluated method);
- runs on the CPU in float32 (``device``, ``torch_device`` and ``dtype`` defaults);
- loads the model folder named by ``REGIONDRAG_MODEL`` and the IP-Adapter only when ``REGIONDRAG_IP_ADAPTER`` is
  set (no weights offline), passing no ``image_embeds`` without it;
- restates ``transforms.ToTensor`` for a uint8 RGB image when torchvision is not installed.

For each input kind (dense points as DragBench-SR/DR stores them, region pairs, polygon pairs, a region with points)
the same image, inputs, seed 42 and settings (``run_eval.py``: 20 steps, start 0.5, end 0.2, handle noise 1.0) go
to the official ``drag()`` and to ``Editor.edit`` (default profile: ``rng="official"``, edited at the native size).
The official point lists come from the official UI functions (``region_pair_to_pts``, ``transform_polygon``,
``region_to_points``) called as its UI calls them. Recorded on both sides (the official functions are wrapped, not
changed): ``z0``, the 10 inversion latents, the 10 denoising outputs, the final latent. The script prints per kind
the final latent's relative L2 distance and the first of those 21 stages whose relative L2 exceeds ``--tol``, and
writes JSON to ``benchmarks/results/``.

The official code is given as ``--official DIR`` (a checkout), ``--from-mirror GIT_DIR`` (a git repository of it:
``git archive 5cf4922`` is extracted) or the environment variable ``REGIONDRAG_OFFICIAL``. Without one, or without a
package the official code imports (``cv2``, ``gradio``, ``diffusers``), the script says why and exits with status 0
(a skip). Run::

    .venv/bin/python benchmarks/parity/regiondrag.py --from-mirror /path/to/RegionDrag.git
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PATCH = Path(__file__).with_name("regiondrag-cpu.patch")
OFFICIAL_COMMIT = "5cf4922"
SAMPLE = ROOT / "examples" / "dragbench-car"
PROMPT = "black car on the road"
SETTINGS = {"steps": 20, "start_t": 0.5, "end_t": 0.2, "noise_scale": 1.0, "seed": 42}
"""The official evaluation's settings (``run_eval.py:20-24``)."""
KINDS = ("dense points", "region pairs", "polygons", "region + points")


def skip(reason: str) -> None:
    """Say why the comparison cannot run and exit as a skip (status 0)."""
    print(f"SKIP: {reason}")
    sys.exit(0)


def official_checkout(args: argparse.Namespace, work: Path) -> Path:
    """A patched copy of the official code under ``work``, or a skip naming what is missing."""
    src = args.official or os.environ.get("REGIONDRAG_OFFICIAL")
    dest = work / "official"
    if args.from_mirror:
        if not Path(args.from_mirror).exists():
            skip(f"--from-mirror {args.from_mirror}: no such git repository")
        dest.mkdir()
        archive = subprocess.run(
            ["git", "-C", args.from_mirror, "archive", OFFICIAL_COMMIT], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    elif src:
        if not (Path(src) / "region_utils" / "drag.py").is_file():
            skip(f"{src}: not a checkout of Visual-AI/RegionDrag (no region_utils/drag.py)")
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git"))
    else:
        skip(
            "no official RegionDrag checkout: pass --official DIR, --from-mirror GIT_DIR or set REGIONDRAG_OFFICIAL "
            f"(Visual-AI/RegionDrag @{OFFICIAL_COMMIT})"
        )
    subprocess.run(["git", "apply", "--unidiff-zero", str(PATCH)], cwd=dest, check=True)
    return dest


def build_model_folder(folder: Path) -> None:
    """dragsdk's ``tiny`` model (random weights, SD 1.5 structure) as a diffusers ``StableDiffusionPipeline`` folder."""
    from diffusers import StableDiffusionPipeline

    from dragsdk.models import load_model

    m = load_model("tiny", device="cpu")
    pipe = StableDiffusionPipeline(
        vae=m.vae,
        text_encoder=m.text_encoder,
        tokenizer=m.tokenizer,
        unet=m.unet,
        scheduler=m.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def ellipse(size: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """``(H, W)`` uint8 0/1 mask of an axis-aligned ellipse, pixels."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)


def inputs(size: tuple[int, int]) -> dict[str, Any]:
    """Region pairs, polygon pairs and a region with points around the sample's two handle → target drags (the
    targets of other shapes, so the maps stretch)."""
    regions = [
        (ellipse(size, 131, 264, 28, 20), ellipse(size, 200, 305, 36, 18)),
        (ellipse(size, 359, 180, 20, 16), ellipse(size, 323, 142, 18, 22)),
    ]
    polygons = [
        ([[103, 236], [159, 236], [159, 292], [103, 292]], [[172, 285], [228, 285], [228, 341], [172, 341]]),
        ([[335, 160], [385, 172], [365, 205]], [[299, 120], [349, 132], [329, 165]]),
    ]
    region = ellipse(size, 131, 264, 40, 28)
    points = [([120, 260], [180, 296]), ([150, 272], [204, 300])]
    return {"regions": regions, "polygons": polygons, "region": region, "points": points}


def official_lists(ui: Any, kind: str, inp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(source, target)`` ``(N, 2)`` pixel points as the official UI hands them to ``drag()`` (the functions' ×8
    outputs, ``ui_utils.py:204-205, 326-327, 531-536``)."""
    import torch

    if kind in ("region pairs", "dense points"):
        pairs = [ui.region_pair_to_pts(h, t, scale=1 / 8) for h, t in inp["regions"]]
        src, trg = (torch.cat(x) for x in zip(*pairs, strict=True))
        return src.cpu().numpy() * 8, trg.cpu().numpy() * 8
    if kind == "polygons":
        pairs = [ui.transform_polygon(h, t, scale=1 / 8) for h, t in inp["polygons"]]
        src, trg = (np.concatenate(x) for x in zip(*pairs, strict=True))
        return src * 8, trg * 8
    selected = [p for pair in inp["points"] for p in pair]
    src, trg = ui.region_to_points(inp["region"], selected, scale=1 / 8)
    return src * 8, trg * 8


def dragsdk_spec(
    kind: str, inp: dict[str, Any], dense: list[list[float]], mask: np.ndarray
) -> dict[str, Any]:
    """The region-drag spec of one kind with the official settings (default profile: every official option)."""
    from dragsdk.io import mask_to_data_url

    spec: dict[str, Any] = {
        "mode": "region-drag",
        "prompt": PROMPT,
        "start_t": SETTINGS["start_t"],
        "end_t": SETTINGS["end_t"],
        "handle_noise": SETTINGS["noise_scale"],
        # no resolution: the official profile's working size is the image's own (512×384), as the official edits
        "sampler": {"steps": SETTINGS["steps"], "seed": SETTINGS["seed"]},
    }
    if kind == "dense points":
        spec.update(dense_points=dense, mask=mask_to_data_url(mask, "mask"))
    elif kind == "region pairs":
        spec["regions"] = [
            {"handle": mask_to_data_url(h * 255, "h"), "target": mask_to_data_url(t * 255, "t")}
            for h, t in inp["regions"]
        ]
    elif kind == "polygons":
        spec["polygons"] = [{"handle": h, "target": t} for h, t in inp["polygons"]]
    else:
        spec.update(
            region=mask_to_data_url(inp["region"] * 255, "region"), points=[list(p) for p in inp["points"]]
        )
    return spec


class OfficialRecorder:
    """Wraps the official functions to copy what they compute (z0, inversion latents, denoising outputs, final
    latent); the wrapped functions are called unchanged."""

    def __init__(self, drag_mod: Any, sde_mod: Any) -> None:
        self.stages: list[Any] = []
        self.final: Any = None
        rec = self
        get_img_latent, postprocess = drag_mod.get_img_latent, drag_mod.postprocess
        forward_sde, sample = sde_mod.Sampler.forward_sde, sde_mod.Sampler.sample

        def get_img_latent_rec(*a: Any, **k: Any) -> Any:
            z = get_img_latent(*a, **k)
            rec.stages.append(("z0", z.clone()))
            return z

        def postprocess_rec(vae: Any, latent: Any, *a: Any, **k: Any) -> Any:
            rec.final = latent.clone()
            return postprocess(vae, latent, *a, **k)

        def forward_rec(self: Any, *a: Any, **k: Any) -> Any:
            x, noise = forward_sde(self, *a, **k)
            rec.stages.append((f"inversion {sum(s[0].startswith('inv') for s in rec.stages) + 1}", x.clone()))
            return x, noise

        def sample_rec(self: Any, *a: Any, **k: Any) -> Any:
            z = sample(self, *a, **k)
            rec.stages.append((f"denoising {sum(s[0].startswith('den') for s in rec.stages) + 1}", z.clone()))
            return z

        drag_mod.get_img_latent, drag_mod.postprocess = get_img_latent_rec, postprocess_rec
        sde_mod.Sampler.forward_sde, sde_mod.Sampler.sample = forward_rec, sample_rec

    def reset(self) -> None:
        self.stages, self.final = [], None


def rel(a: Any, b: Any) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm())


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``) and count, for the record."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def stage_latents(editor: Any, spec: dict[str, Any], trace: Path) -> list[tuple[str, Any]]:
    """dragsdk's 21 stages of the edit just run with ``spec`` (its inversion is the cached one, no UNet call)."""
    import torch

    from dragsdk.trace import read_trace

    n = SETTINGS["steps"]
    inv = editor.invert(SAMPLE / "original_image.png", spec)
    arrays, _ = read_trace(trace)
    n_inv = sum(x is not None for x in inv.latents) - 1
    out = [("z0", inv.latents[n])]
    out += [(f"inversion {k + 1}", inv.latents[n - 1 - k]) for k in range(n_inv)]
    out += [(f"denoising {k + 1}", torch.from_numpy(a)[None]) for k, a in enumerate(arrays["latent_after"])]
    return out


def compare(
    kind: str, result: Any, ours: list[tuple[str, Any]], recorder: OfficialRecorder, tol: float, rng: str
) -> dict[str, Any]:
    """One row: the final latent's relative L2 and the first stage above ``tol``."""
    theirs = dict(recorder.stages)
    stage_rel = {name: rel(z, theirs[name]) for name, z in ours if name in theirs}
    first = next((name for name, r in stage_rel.items() if r > tol), None)
    return {
        "kind": kind,
        "rng": rng,
        "final_rel_l2": rel(result.latent, recorder.final),
        "first_diverging_stage": first,
        "stages_compared": len(stage_rel),
        "stage_rel_l2": stage_rel,
    }


def run(args: argparse.Namespace, official: Path, work: Path) -> dict[str, Any]:
    """Both programs on every input kind (plus a control: ``rng="dragsdk"`` on the first); the report."""
    import diffusers
    import torch
    import transformers
    from PIL import Image

    from dragsdk import Editor
    from dragsdk.models import load_model

    torch.set_num_threads(args.threads)
    model_dir = work / "tiny-sd15"
    build_model_folder(model_dir)
    os.environ["REGIONDRAG_MODEL"] = str(model_dir)
    os.environ.pop("REGIONDRAG_IP_ADAPTER", None)
    sys.path.insert(0, str(official))
    drag_mod = importlib.import_module("region_utils.drag")
    sde_mod = importlib.import_module("region_utils.cycle_sde")
    ui = importlib.import_module("region_utils.ui_utils")
    recorder = OfficialRecorder(drag_mod, sde_mod)

    image = np.array(Image.open(SAMPLE / "original_image.png").convert("RGB"))
    size = (image.shape[1], image.shape[0])
    mask = (np.array(Image.open(SAMPLE / "mask.png").convert("L")) > 127).astype(np.uint8)
    inp = inputs(size)
    editor = Editor(load_model(str(model_dir), device="cpu"))
    rows = []
    for kind in KINDS:
        src, trg = official_lists(ui, kind, inp)
        dense = [list(map(float, p)) for pair in zip(src, trg, strict=True) for p in pair]
        recorder.reset()
        t0 = time.perf_counter()
        drag_mod.drag(
            {
                "ori_image": image,
                "preview": image,
                "prompt": PROMPT,
                "mask": mask
                if kind == "dense points"
                else np.ones_like(mask),  # eval: the pkl mask; UI: ones
                "source": np.asarray(src),
                "target": np.asarray(trg),
            },
            SETTINGS["steps"],
            SETTINGS["start_t"],
            SETTINGS["end_t"],
            SETTINGS["noise_scale"],
            SETTINGS["seed"],
            progress=lambda x: x,
        )
        t_official = time.perf_counter() - t0
        for rng in ("official", "dragsdk") if kind == KINDS[0] else ("official",):
            spec = {**dragsdk_spec(kind, inp, dense, mask), "rng": rng}
            trace = work / "trace.npz"
            t0 = time.perf_counter()
            result = editor.edit(SAMPLE / "original_image.png", spec, trace=trace, reuse_inversion=False)
            t_dragsdk = time.perf_counter() - t0
            row = compare(kind, result, stage_latents(editor, spec, trace), recorder, args.tol, rng)
            row.update(
                points=len(src), seconds_official=round(t_official, 2), seconds_dragsdk=round(t_dragsdk, 2)
            )
            rows.append(row)
            first = row["first_diverging_stage"] or "none"
            print(
                f"{kind} (rng {rng}): final rel L2 {row['final_rel_l2']:.2e}, first diverging {first}",
                flush=True,
            )
    return {
        "official": f"Visual-AI/RegionDrag @{OFFICIAL_COMMIT} + benchmarks/parity/{PATCH.name}",
        "dragsdk_commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": cpu_name(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "model": "dragsdk tiny (random weights, SD 1.5 structure) saved with save_pretrained",
        "image": f"{SAMPLE.relative_to(ROOT)} {size[0]}×{size[1]}",
        "settings": SETTINGS,
        "tolerance": args.tol,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--official", help="a checkout of Visual-AI/RegionDrag (@5cf4922)")
    ap.add_argument("--from-mirror", help="a git repository of Visual-AI/RegionDrag: git archive 5cf4922")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative L2 above which a stage diverges (1e-4)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: deterministic)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parity-regiondrag-cpu.json"))
    args = ap.parse_args()
    for mod in ("cv2", "gradio", "diffusers", "transformers"):
        if importlib.util.find_spec(mod) is None:
            skip(f"the official code imports {mod!r}, which is not installed here")
    work = Path(tempfile.mkdtemp(prefix="parity-regiondrag-"))
    try:
        report = run(args, official_checkout(args, work), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("\n| input | rng | points | final rel L2 | first diverging stage (of 21) |")
    print("|---|---|---|---|---|")
    for r in report["rows"]:
        first = r["first_diverging_stage"] or "none"
        print(f"| {r['kind']} | {r['rng']} | {r['points']} | {r['final_rel_l2']:.1e} | {first} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
