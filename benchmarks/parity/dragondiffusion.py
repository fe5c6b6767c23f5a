"""Parity of the DragonDiffusion modes with the official code, run side by side on the CPU.

Written against MC-E/DragonDiffusion @f9b5bdf (Apache-2.0; this script runs a local checkout and contains none of its
code). Both programs load one random-weight SD-1.5-shaped model folder: dragsdk's built-in ``tiny`` model saved with
diffusers' ``save_pretrained``. The official code needs diffusers < 0.20 (it imports ``diffusers.models.
cross_attention``), so it runs in its own interpreter (``--official-python``, or ``DRAGONDIFFUSION_PYTHON``; measured
with torch 2.13.0 CPU, diffusers 0.18.0, transformers 4.30.1, huggingface_hub 0.16.4, numpy 1.26.4, opencv, einops,
scipy) as a worker process of this same file, with the minimal patch ``dragondiffusion-cpu.patch`` (next to this
file), which only

- runs on the CPU in float32 (every ``'cuda'`` → ``'cpu'``, ``.cuda()`` → ``.cpu()``; ``DragonModels.precision``);
- drops the two ``enable_xformers_memory_efficient_attention`` calls;
- runs without IP-Adapter weights (none offline): no image encoder or projection, ``get_image_embeds`` returns zero
  image tokens ``(1, 64, 768)``, ``load_adapter`` installs the official processors and loads no state dict (zero
  tokens give zero IP keys and values, so the IP branch adds nothing; the tokens still enter the text
  cross-attention of appearance / paste, as in the official code).

Packages the code path imports but does not need are stubbed in the worker (``sys.modules``): ``basicsr.utils``
(``img2tensor`` / ``tensor2img`` restated), ``pytorch_lightning.seed_everything`` (seeds ``random``, numpy and torch),
``torchvision.transforms.PILToTensor``, ``dlib`` (no face predictor: face editing is not compared) and
``xformers.ops.memory_efficient_attention`` (restated with ``scaled_dot_product_attention``, the same math).

For each mode (drag, move, resize, appearance, paste) the same image, inputs, seed 42, 50 steps, regional SDE on and
the official UI defaults go to the official ``DragonModels.run_*`` (``src/demo/model.py``) and to ``Editor.edit``
(default ``official`` profile). Inputs: ``examples/dragbench-car`` (and ``examples/reference-cat`` as the reference)
resized to ``--size`` (128) square, ``max_resolution`` = ``--size`` (no resize inside either program). Recorded: the
final latent (official: the argument of ``decode_latents``) and the latent entering each of the 58 sampling passes
(official: a forward hook on the UNet's CFG call; dragsdk: the trace's ``latent_before``). Printed per mode: the final
latent's relative L2 and the first pass above ``--tol``; JSON to ``benchmarks/results/``.

The official code is given as ``--official DIR`` (a checkout), ``--from-mirror GIT_DIR`` (``git archive f9b5bdf``) or
``DRAGONDIFFUSION_OFFICIAL``. Without one, or without an interpreter that can import it, the script says why and exits
with status 0 (a skip). Run::

    .venv/bin/python benchmarks/parity/dragondiffusion.py --from-mirror /path/to/DragonDiffusion.git \\
        --official-python /tmp/ddoff/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PATCH = Path(__file__).with_name("dragondiffusion-cpu.patch")
OFFICIAL_COMMIT = "f9b5bdf"
SAMPLE = ROOT / "examples" / "dragbench-car"
REFERENCE = ROOT / "examples" / "reference-cat"
PROMPT = "black car on the road"
REFERENCE_PROMPT = "a cat"
MODES = ("drag", "move", "resize", "appearance", "paste")
SEED, SDE = 42, 0.4
OFFICIAL_DEFAULTS: dict[str, dict[str, float]] = {
    "drag": {"energy_scale": 2.0, "guidance_scale": 4.0, "w_edit": 4.0, "w_content": 6.0, "w_inpaint": 0.2},
    "move": {"energy_scale": 0.5, "guidance_scale": 4.0, "w_edit": 4.0, "w_content": 6.0, "w_contrast": 0.2,
             "w_inpaint": 0.8},
    "appearance": {"energy_scale": 2.0, "guidance_scale": 5.0, "w_edit": 3.5, "w_content": 5.0},
    "paste": {"energy_scale": 1.5, "guidance_scale": 4.0, "w_edit": 4.0, "w_content": 6.0},
}  # fmt: skip
"""The official UI defaults (``src/demo/demo.py``); dragsdk's defaults are the same."""


def skip(reason: str) -> None:
    """Say why the comparison cannot run and exit as a skip (status 0)."""
    print(f"SKIP: {reason}")
    sys.exit(0)


def official_checkout(args: argparse.Namespace, work: Path) -> Path:
    """A patched copy of the official code under ``work``, or a skip naming what is missing."""
    src = args.official or os.environ.get("DRAGONDIFFUSION_OFFICIAL")
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
        if not (Path(src) / "src" / "demo" / "model.py").is_file():
            skip(f"{src}: not a checkout of MC-E/DragonDiffusion (no src/demo/model.py)")
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    else:
        skip(
            "no official DragonDiffusion checkout: pass --official DIR, --from-mirror GIT_DIR or set "
            f"DRAGONDIFFUSION_OFFICIAL (MC-E/DragonDiffusion @{OFFICIAL_COMMIT})"
        )
    subprocess.run(["git", "apply", str(PATCH)], cwd=dest, check=True)
    return dest


def official_python(args: argparse.Namespace) -> str:
    """An interpreter that can import the official code's diffusers (< 0.20), or a skip."""
    exe = args.official_python or os.environ.get("DRAGONDIFFUSION_PYTHON") or sys.executable
    probe = "import cv2, einops, scipy, diffusers.models.cross_attention"
    if subprocess.run([exe, "-c", probe], capture_output=True).returncode != 0:
        skip(
            f"{exe} cannot import what the official code needs ({probe}; diffusers < 0.20): pass "
            "--official-python or set DRAGONDIFFUSION_PYTHON to an interpreter with diffusers 0.18"
        )
    return exe


def install_stubs() -> None:
    """Stand-ins for the packages the official code path imports but does not need (worker only)."""
    import importlib.machinery
    import random

    import torch
    import torch.nn.functional as F

    def module(name: str, **attrs: Any) -> None:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(
            name, None
        )  # no distribution: diffusers sees no xformers
        mod.__dict__.update(attrs)
        sys.modules.setdefault(name, mod)

    def img2tensor(img: Any, bgr2rgb: bool = True, float32: bool = True) -> Any:
        # basicsr.utils.img2tensor of one HWC array: BGR→RGB, CHW, float32
        arr = np.asarray(img).astype(np.float32)
        if arr.ndim == 3 and arr.shape[2] == 3 and bgr2rgb:
            arr = arr[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr))

    def tensor2img(t: Any) -> Any:
        # basicsr.utils.tensor2img of (1, 3, H, W) in [0, 1]: HWC BGR uint8
        arr = t.squeeze(0).float().clamp(0, 1).numpy().transpose(1, 2, 0)[:, :, ::-1]
        return (arr * 255.0).round().astype(np.uint8)

    def seed_everything(seed: int) -> int:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return seed

    class PILToTensor:
        def __call__(self, img: Any) -> Any:
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()

    def memory_efficient_attention(q: Any, k: Any, v: Any, attn_bias: Any = None) -> Any:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)

    module("basicsr")
    module("basicsr.utils", img2tensor=img2tensor, tensor2img=tensor2img)
    module("pytorch_lightning", seed_everything=seed_everything)
    module("torchvision")
    module("torchvision.transforms", PILToTensor=PILToTensor)
    module("dlib", shape_predictor=lambda path: None, get_frontal_face_detector=lambda: None)
    ops = types.ModuleType("xformers.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    module("xformers", ops=ops)
    sys.modules.setdefault("xformers.ops", ops)


def worker(args: argparse.Namespace) -> None:
    """In the official interpreter: run one mode of the official code and save its latents to ``args.worker_out``."""
    import torch

    torch.set_num_threads(args.threads)
    install_stubs()
    sys.path.insert(0, args.official)
    os.chdir(args.official)
    from src.demo.model import DragonModels

    data = dict(np.load(args.inputs))
    models = DragonModels(args.model)
    passes: list[Any] = []
    final: list[Any] = []
    unet = models.editor.pipe.unet
    state = {"sampling": False}

    def hook(_module: Any, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # the CFG call of a sampling pass: batch 2, the latent entering the pass twice
        if state["sampling"] and kwargs.get("iter_cur", -1) >= 0 and inputs[0].shape[0] == 2:
            passes.append(inputs[0][0, :, 0].detach().clone().numpy())

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    edit, decode = models.editor.pipe.edit, models.editor.decode_latents

    def edit_rec(*a: Any, **k: Any) -> Any:
        state["sampling"] = True
        try:
            return edit(*a, **k)
        finally:
            state["sampling"] = False

    def decode_rec(latent: Any) -> Any:
        final.append(latent.detach().clone().numpy())
        return decode(latent)

    models.editor.pipe.edit, models.editor.decode_latents = edit_rec, decode_rec
    d = OFFICIAL_DEFAULTS
    size, mode = int(data["size"]), args.worker
    mask3 = np.repeat(data["mask"][:, :, None], 3, 2)
    t0 = time.perf_counter()
    if mode == "drag":
        w = d["drag"]
        models.run_drag(data["image"], mask3, PROMPT, w["w_edit"], w["w_content"], w["w_inpaint"], SEED,
                        data["points"].tolist(), w["guidance_scale"], w["energy_scale"], size, SDE)  # fmt: skip
    elif mode in ("move", "resize"):
        w = d["move"]
        models.run_move(data["image"], mask3, None, PROMPT, float(data["scale"]), w["w_edit"], w["w_content"],
                        w["w_contrast"], w["w_inpaint"], SEED, data["move_points"].tolist(), w["guidance_scale"],
                        w["energy_scale"], size, SDE)  # fmt: skip
    elif mode == "appearance":
        w = d["appearance"]
        models.run_appearance(data["image"], mask3, data["reference"], np.repeat(data["reference_mask"][:, :, None], 3, 2),
                              PROMPT, REFERENCE_PROMPT, w["w_edit"], w["w_content"], SEED, w["guidance_scale"],
                              w["energy_scale"], size, SDE)  # fmt: skip
    else:
        w = d["paste"]
        models.run_paste(data["image"], np.repeat(data["reference_mask"][:, :, None], 3, 2), data["reference"],
                         PROMPT, REFERENCE_PROMPT, w["w_edit"], w["w_content"], SEED, w["guidance_scale"],
                         w["energy_scale"], float(data["paste_dx"]), float(data["paste_dy"]), 1.0, size, SDE)  # fmt: skip
    seconds = time.perf_counter() - t0
    np.savez(args.worker_out, final=final[-1], passes=np.stack(passes), seconds=seconds)


def build_model_folder(folder: Path) -> None:
    """dragsdk's ``tiny`` model (random weights, SD 1.5 structure) as a diffusers ``StableDiffusionPipeline`` folder."""
    from diffusers import StableDiffusionPipeline

    from dragsdk.models import load_model

    m = load_model("tiny", device="cpu")
    StableDiffusionPipeline(
        vae=m.vae,
        text_encoder=m.text_encoder,
        tokenizer=m.tokenizer,
        unet=m.unet,
        scheduler=m.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    # transformers 5 saves CLIPTextModel's keys without the ``text_model.`` prefix that transformers 4.30 expects
    from safetensors.torch import load_file, save_file

    for f in (folder / "text_encoder").glob("*.safetensors"):
        state = load_file(f)
        save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, f,
                  metadata={"format": "pt"})  # fmt: skip
    # the slow-tokenizer files the official transformers 4.30 reads (the same byte-level vocabulary, no merges)
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(m.tokenizer.get_vocab()))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")


def prepare_inputs(size: int, work: Path) -> dict[str, Any]:
    """The sample and the reference resized to ``size``² (integer points scaled), saved as PNGs for dragsdk."""
    from PIL import Image

    from dragsdk.samples import load_sample

    _, sample = load_sample(SAMPLE)
    img = Image.open(SAMPLE / "original_image.png").convert("RGB")
    sx, sy = size / img.width, size / img.height
    image = np.array(img.resize((size, size), Image.LANCZOS))
    mask = np.array(Image.open(SAMPLE / "mask.png").convert("L").resize((size, size), Image.NEAREST))
    mask = (mask > 127).astype(np.uint8) * 255
    points = [[int(x * sx), int(y * sy)] for pair in sample["points"] for x, y in pair]
    ref = np.array(Image.open(REFERENCE / "cat.jpg").convert("RGB").resize((size, size), Image.LANCZOS))
    ref_mask = np.array(
        Image.open(REFERENCE / "cat_mask.png").convert("L").resize((size, size), Image.NEAREST)
    )
    ref_mask = (ref_mask > 127).astype(np.uint8) * 255
    paths = {"image": work / "image.png", "mask": work / "mask.png", "reference": work / "ref.png",
             "reference_mask": work / "ref_mask.png"}  # fmt: skip
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(mask).save(paths["mask"])
    Image.fromarray(ref).save(paths["reference"])
    Image.fromarray(ref_mask).save(paths["reference_mask"])
    step = size // 16  # whole latent cells: the official placement never rounds
    return {
        "size": size, "image": image, "mask": mask, "points": np.array(points), "reference": ref,
        "reference_mask": ref_mask, "move": (-2 * step, step), "resize": 0.75, "paste": (2 * step, step),
        "paths": paths,
    }  # fmt: skip


def dragsdk_spec(mode: str, inp: dict[str, Any]) -> dict[str, Any]:
    """The dragsdk spec of one mode with the official settings (default profile, no resize)."""
    p = {k: str(v) for k, v in inp["paths"].items()}
    sampler = {"steps": 50, "seed": SEED, "resolution": inp["size"]}
    pts = inp["points"].tolist()
    if mode == "drag":
        return {"mode": "drag", "prompt": PROMPT, "mask": p["mask"], "sampler": sampler,
                "points": [[pts[i], pts[i + 1]] for i in range(0, len(pts), 2)]}  # fmt: skip
    if mode in ("move", "resize"):
        dx, dy = inp["move"] if mode == "move" else (0, 0)
        scale = 1.0 if mode == "move" else inp["resize"]
        return {"mode": mode, "prompt": PROMPT, "mask": p["mask"], "dx": dx, "dy": dy, "scale": scale,
                "sampler": sampler}  # fmt: skip
    ref = {
        "reference": p["reference"],
        "reference_mask": p["reference_mask"],
        "reference_prompt": REFERENCE_PROMPT,
    }
    if mode == "appearance":
        return {"mode": "appearance", "prompt": PROMPT, "mask": p["mask"], **ref, "sampler": sampler}
    dx, dy = inp["paste"]
    return {"mode": "paste", "prompt": PROMPT, **ref, "dx": dx, "dy": dy, "scale": 1.0, "sampler": sampler}


def rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


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


def run_official(args: argparse.Namespace, exe: str, official: Path, model: Path, mode: str, inp: dict[str, Any],
                 work: Path) -> dict[str, Any]:  # fmt: skip
    """One mode of the official code in its own interpreter; its final latent, pass latents and seconds."""
    npz, out = work / "inputs.npz", work / f"official-{mode}.npz"
    dx, dy = inp["move"]
    np.savez(npz, size=inp["size"], image=inp["image"], mask=inp["mask"], points=inp["points"],
             reference=inp["reference"], reference_mask=inp["reference_mask"],
             move_points=np.array([[0, 0], [dx, dy]] if mode == "move" else [[0, 0], [0, 0]]),
             scale=1.0 if mode == "move" else inp["resize"], paste_dx=inp["paste"][0], paste_dy=inp["paste"][1])  # fmt: skip
    cmd = [exe, __file__, "--worker", mode, "--official", str(official), "--model", str(model), "--inputs", str(npz),
           "--worker-out", str(out), "--threads", str(args.threads)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"official {mode} failed:\n{res.stderr[-3000:]}")
    return dict(np.load(out))


def run(args: argparse.Namespace, official: Path, exe: str, work: Path) -> dict[str, Any]:
    """Both programs on every mode asked for; the report."""
    import diffusers
    import torch

    from dragsdk import Editor
    from dragsdk.trace import read_trace

    torch.set_num_threads(args.threads)
    model_dir = work / "tiny-sd15"
    build_model_folder(model_dir)
    inp = prepare_inputs(args.size, work)
    editor = Editor(str(model_dir))
    rows = []
    for mode in args.modes:
        theirs = run_official(args, exe, official, model_dir, mode, inp, work)
        trace = work / f"trace-{mode}.npz"
        t0 = time.perf_counter()
        result = editor.edit(inp["paths"]["image"], dragsdk_spec(mode, inp), trace=trace)
        seconds = time.perf_counter() - t0
        arrays, _ = read_trace(trace)
        ours = arrays["latent_before"]
        n = min(len(ours), len(theirs["passes"]))
        pass_rel = [rel(ours[k], theirs["passes"][k]) for k in range(n)]
        first = next((k for k, r in enumerate(pass_rel) if r > args.tol), None)
        row = {
            "mode": mode,
            "final_rel_l2": rel(result.latent.numpy(), theirs["final"]),
            "first_diverging_pass": first,
            "passes_compared": n,
            "passes_official": len(theirs["passes"]),
            "pass_rel_l2": pass_rel,
            "profile": result.report.get("profile") if isinstance(result.report, dict) else None,
            "seconds_official": round(float(theirs["seconds"]), 1),
            "seconds_dragsdk": round(seconds, 1),
        }
        rows.append(row)
        print(
            f"{mode}: final rel L2 {row['final_rel_l2']:.2e}, first pass > {args.tol:g}: {first}", flush=True
        )
    off_versions = subprocess.run(
        [exe, "-c", "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, "
         "transformers.__version__)"], capture_output=True, text=True
    ).stdout.split()  # fmt: skip
    return {
        "official": f"MC-E/DragonDiffusion @{OFFICIAL_COMMIT} + benchmarks/parity/{PATCH.name}",
        "official_env": dict(zip(("torch", "diffusers", "transformers"), off_versions, strict=False)),
        "dragsdk_commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": cpu_name(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": args.threads,
        "model": "dragsdk tiny (random weights, SD 1.5 structure) saved with save_pretrained",
        "inputs": f"{SAMPLE.relative_to(ROOT)}, {REFERENCE.relative_to(ROOT)} at {args.size}×{args.size}",
        "settings": {
            "steps": 50,
            "seed": SEED,
            "sde": SDE,
            "max_resolution": args.size,
            "defaults": OFFICIAL_DEFAULTS,
            "move": inp["move"],
            "resize": inp["resize"],
            "paste": inp["paste"],
        },  # fmt: skip
        "tolerance": args.tol,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--official", help="a checkout of MC-E/DragonDiffusion (@f9b5bdf)")
    ap.add_argument("--from-mirror", help="a git repository of MC-E/DragonDiffusion: git archive f9b5bdf")
    ap.add_argument(
        "--official-python", help="an interpreter with the official code's packages (diffusers 0.18)"
    )
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--size", type=int, default=128, help="image side and max_resolution, pixels (128)")
    ap.add_argument("--tol", type=float, default=1e-3, help="relative L2 above which a pass diverges (1e-3)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: deterministic)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parity-dragondiffusion-cpu.json"))
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="parity-dragondiffusion-"))
    try:
        official = official_checkout(args, work)
        report = run(args, official, official_python(args), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n| mode | final rel L2 | first pass > {args.tol:g} (of 58) | official s | dragsdk s |")
    print("|---|---|---|---|---|")
    for r in report["rows"]:
        first = "none" if r["first_diverging_pass"] is None else r["first_diverging_pass"]
        print(
            f"| {r['mode']} | {r['final_rel_l2']:.1e} | {first} | {r['seconds_official']} | {r['seconds_dragsdk']} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
