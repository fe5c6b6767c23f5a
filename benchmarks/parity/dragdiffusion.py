"""Parity of the ``dragdiffusion`` mode with the official DragDiffusion code (Yujun-Shi/DragDiffusion), on the CPU.

Both run the same random-weight ``tiny`` model (SD 1.5 structure; the official pipeline gets deep copies of the very
modules dragsdk uses, so the weights are identical), ``lora_steps`` 0, the same 128×128 image, mask, prompt and
points (the DragBench car sample of ``examples/dragbench-car``, resized), 50 DDIM steps, inversion strength 0.7.

The official side runs its own functions unmodified: ``DragPipeline.invert`` / ``__call__`` / ``forward_unet_features``
(``drag_pipeline.py``), ``drag_diffusion_update`` and ``point_tracking`` (``utils/drag_utils.py``),
``MutualSelfAttentionControl`` and ``register_attention_editor_diffusers`` (``utils/attn_utils.py``). Its driver
``run_drag`` (``drag_bench_evaluation/run_drag_diffusion.py:55-202``) is retyped here step by step without its
``.cuda()`` on the mask (``:135``) and without the torchvision / pytorch_lightning imports it does not need; the
official ``einops`` import is served by a three-pattern shim when einops is not installed.

Compared, per optimisation step ``k``: the latent after ``k`` Adam steps (official: the input of the ``k+1``-th
``forward_unet_features`` call) and the tracked handles; then the inverted latent and the final latent. Prints a
table and writes JSON to ``benchmarks/results/parity-dragdiffusion-cpu.json``.

Usage::

    git -C /path/to/DragDiffusion.git archive HEAD drag_pipeline.py utils | tar -x -C /tmp/dd-official
    python benchmarks/parity/dragdiffusion.py --official /tmp/dd-official [--n-pix-step 10]

Without an official checkout it prints why and exits 0 (nothing measured).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "dragbench-car"
SIZE = 128
STEPS, STRENGTH = 50, 0.7


def _einops_shim() -> types.ModuleType:
    """``rearrange`` for the three patterns the official code uses; ``repeat`` is imported there but never called."""

    def rearrange(x: torch.Tensor, pattern: str, **axes: int) -> torch.Tensor:
        if pattern == "h w c -> 1 c h w":
            return x.permute(2, 0, 1)[None]
        if pattern == "h w -> 1 1 h w":
            return x[None, None]
        if pattern == "b n (h d) -> b h n d":
            b, n, hd = x.shape
            return x.reshape(b, n, axes["h"], hd // axes["h"]).transpose(1, 2)
        if pattern == "b h n d -> b n (h d)":
            b, h, n, d = x.shape
            return x.transpose(1, 2).reshape(b, n, h * d)
        raise NotImplementedError(pattern)

    def repeat(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("einops.repeat (shim)")

    mod = types.ModuleType("einops")
    mod.rearrange, mod.repeat = rearrange, repeat  # type: ignore[attr-defined]
    return mod


def inputs(tmp: Path, size: int = SIZE) -> dict[str, Any]:
    """The ``size``² image (uint8 HWC), mask (uint8 HW, 255 inside, saved as PNG for dragsdk), prompt and points."""
    from dragsdk.authoring import load_mask
    from dragsdk.samples import load_sample

    image_path, spec = load_sample(SAMPLE)
    img = Image.open(image_path).convert("RGB")
    sx, sy = size / img.size[0], size / img.size[1]
    image = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))
    full = load_mask(spec["mask"]).astype(np.uint8) * 255
    mask = (np.asarray(Image.fromarray(full).resize((size, size), Image.Resampling.NEAREST)) > 0).astype(
        np.uint8
    ) * 255
    Image.fromarray(image).save(tmp / "image.png")
    Image.fromarray(mask).save(tmp / "mask.png")
    points = [[[round(x * sx), round(y * sy)] for x, y in pair] for pair in spec["points"]]
    return {
        "image": image,
        "mask": mask,
        "prompt": spec["prompt"],
        "points": points,
        "dir": tmp,
        "size": size,
    }


def run_dragsdk(
    bundle: Any, data: dict[str, Any], n_pix_step: int, steps: int = STEPS, lora: dict[str, Any] | None = None
) -> dict[str, Any]:
    """dragsdk's edit; ``lora``: ``lora_*`` spec fields (None: ``lora_steps`` 0). ``seconds``: the report's phases."""
    from dragsdk import Editor

    editor = Editor(bundle, backend="eager")
    spec = {
        "mode": "dragdiffusion",
        "prompt": data["prompt"],
        "mask": str(data["dir"] / "mask.png"),
        "points": data["points"],
        "n_pix_step": n_pix_step,
        "lora_steps": 0,  # the official driver runs without a LoRA folder too
        **(lora or {}),
        "sampler": {"steps": steps, "resolution": data["size"]},
    }
    seen: list[torch.Tensor] = []

    def hook(event: Any) -> None:
        if event.phase == "optimise":
            seen.append(event.latent.detach().clone())

    result = editor.edit(data["dir"] / "image.png", spec, callback_on_step_end=hook)
    start = result.plan.start_step
    inverted = editor.invert(data["dir"] / "image.png", spec).latents[start][:1]
    handles = [r["handles"] for r in result.report.optimisation]
    losses = [r["loss"] for r in result.report.optimisation if r["loss"] is not None]
    return {
        "inverted": inverted,
        "steps": seen,
        "handles": handles,
        "final": result.latent,
        "losses": losses,
        "seconds": dict(result.report.phase_seconds),
        "adam_steps": len(losses),
    }


def run_official(
    bundle: Any,
    official: Path,
    data: dict[str, Any],
    n_pix_step: int,
    ours_optimised: torch.Tensor | None,
    steps: int = STEPS,
) -> dict[str, Any]:
    """The official pipeline; ``ours_optimised``: also sample from dragsdk's optimised latent (isolates sampling).
    ``seconds``: wall time of its inversion (with the VAE encoding), optimisation and sampling (with the decoding)."""
    from diffusers import DDIMScheduler

    try:
        import einops  # noqa: F401
    except ImportError:
        sys.modules["einops"] = _einops_shim()
    sys.path.insert(0, str(official))
    import drag_pipeline  # type: ignore[import-not-found]
    from utils import attn_utils, drag_utils  # type: ignore[import-not-found]

    # run_drag_diffusion.py:74-77: the official scheduler; the tiny model's modules, deep-copied (the official code
    # replaces unet.forward and every attention layer's forward)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    model = drag_pipeline.DragPipeline(
        vae=copy.deepcopy(bundle.vae),
        text_encoder=copy.deepcopy(bundle.text_encoder),
        tokenizer=bundle.tokenizer,
        unet=copy.deepcopy(bundle.unet),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    model.modify_unet_forward()  # :80
    size = data["size"]
    seconds: dict[str, float] = {}
    args = types.SimpleNamespace(  # :92-110
        prompt=data["prompt"],
        points=[p for pair in data["points"] for p in pair],
        n_inference_step=steps,
        n_actual_inference_step=round(STRENGTH * steps),
        guidance_scale=1.0,
        unet_feature_idx=[3],
        r_m=1,
        r_p=3,
        lam=0.1,
        lr=0.01,
        n_pix_step=n_pix_step,
        sup_res_h=int(0.5 * size),
        sup_res_w=int(0.5 * size),
    )
    source = torch.from_numpy(data["image"]).float() / 127.5 - 1  # :47-52
    source = source.permute(2, 0, 1)[None]
    model.unet.set_default_attn_processor()  # :120 (no LoRA)
    clock = time.perf_counter()
    invert_code = model.invert(  # :127-131
        source,
        args.prompt,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.n_inference_step,
        num_actual_inference_steps=args.n_actual_inference_step,
    )
    seconds["encode + invert"] = time.perf_counter() - clock
    mask = torch.from_numpy(data["mask"]).float() / 255.0  # :133-136, without .cuda()
    mask[mask > 0.0] = 1.0
    mask = F.interpolate(mask[None, None], (args.sup_res_h, args.sup_res_w), mode="nearest")
    handle_points, target_points = [], []
    for idx, point in enumerate(args.points):  # :141-147
        cur = torch.round(torch.tensor([point[1] / size * args.sup_res_h, point[0] / size * args.sup_res_w]))
        (handle_points if idx % 2 == 0 else target_points).append(cur)
    init_code = invert_code
    init_code_orig = copy.deepcopy(init_code)
    model.scheduler.set_timesteps(args.n_inference_step)
    t = model.scheduler.timesteps[args.n_inference_step - args.n_actual_inference_step]  # :154

    seen: list[torch.Tensor] = []
    tracked: list[list[list[float]]] = [[p.tolist() for p in handle_points]]
    forward, track = model.forward_unet_features, drag_utils.point_tracking

    def forward_recorded(z: torch.Tensor, *a: Any, **k: Any) -> Any:
        seen.append(z.detach().clone())
        return forward(z, *a, **k)

    def track_recorded(*a: Any, **k: Any) -> Any:
        out = track(*a, **k)
        tracked.append([p.tolist() for p in out])
        return out

    model.forward_unet_features = forward_recorded
    drag_utils.point_tracking = track_recorded
    printed = io.StringIO()
    clock = time.perf_counter()
    try:
        with contextlib.redirect_stdout(printed):  # the official loop prints each loss (drag_utils.py:154)
            updated = drag_utils.drag_diffusion_update(  # :158-159
                model, init_code, None, t, handle_points, target_points, mask, args
            )
    finally:
        drag_utils.point_tracking = track
    seconds["optimise"] = time.perf_counter() - clock
    losses = [
        float(line.split("=")[1])
        for line in printed.getvalue().splitlines()
        if line.startswith("loss total=")
    ]

    def sample(optimised: torch.Tensor) -> torch.Tensor:
        editor = attn_utils.MutualSelfAttentionControl(  # :163-168
            start_step=0,
            start_layer=10,
            total_steps=args.n_inference_step,
            guidance_scale=args.guidance_scale,
        )
        attn_utils.register_attention_editor_diffusers(model, editor, attn_processor="attn_proc")
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            _, latents = model(  # :173-180, with the latents returned
                prompt=args.prompt,
                batch_size=2,
                latents=torch.cat([init_code_orig, optimised], dim=0),
                guidance_scale=args.guidance_scale,
                num_inference_steps=args.n_inference_step,
                num_actual_inference_steps=args.n_actual_inference_step,
                return_intermediates=True,
            )
        return latents[-1][1:2]

    clock = time.perf_counter()
    final = sample(updated.detach())
    seconds["sample + decode"] = time.perf_counter() - clock
    final_from_ours = sample(ours_optimised) if ours_optimised is not None else None
    return {
        "inverted": init_code_orig,
        "steps": seen[2:],
        "handles": tracked,
        "optimised": updated.detach(),
        "losses": losses,
        "final": final,
        "final_from_dragsdk_optimised": final_from_ours,
        "seconds": seconds,
        "adam_steps": len(losses),  # one printed loss per Adam step (drag_utils.py:154)
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance ``‖a − b‖ / ‖b‖``."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    n = min(len(ours["steps"]), len(theirs["steps"]))
    per_step = [
        {
            "step": k,
            "latent_rel_l2": rel(ours["steps"][k], theirs["steps"][k]),
            "latent_max_abs": float((ours["steps"][k] - theirs["steps"][k]).abs().max()),
        }
        for k in range(n)
    ]
    m = min(len(ours["handles"]), len(theirs["handles"]))
    same = [ours["handles"][k] == theirs["handles"][k] for k in range(m)]
    return {
        "inverted_rel_l2": rel(ours["inverted"], theirs["inverted"]),
        "adam_steps": {"dragsdk": len(ours["steps"]), "official": len(theirs["steps"])},
        "per_step": per_step,
        "handles_equal_per_iteration": same,
        "losses_dragsdk": ours["losses"],
        "losses_official": theirs["losses"],
        "handles_dragsdk": ours["handles"],
        "handles_official": theirs["handles"],
        "optimised_rel_l2": rel(ours["steps"][-1], theirs["optimised"]) if ours["steps"] else None,
        "final_rel_l2": rel(ours["final"], theirs["final"]),
        "final_same_optimised_rel_l2": (
            rel(ours["final"], theirs["final_from_dragsdk_optimised"])
            if theirs["final_from_dragsdk_optimised"] is not None
            else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, default=None, help="a DragDiffusion checkout (its work tree)")
    p.add_argument("--n-pix-step", type=int, default=10)
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "parity-dragdiffusion-cpu.json"
    )
    a = p.parse_args(argv)
    if a.official is None or not (a.official / "drag_pipeline.py").is_file():
        print(f"skipped: no official DragDiffusion checkout at {a.official} (give --official PATH)")
        return 0
    from dragsdk.models import load_model

    torch.set_num_threads(1)  # one thread: the same reduction order in both runs
    bundle = load_model("tiny", device="cpu")
    official_bundle = copy.deepcopy(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        data = inputs(Path(tmp))
        ours = run_dragsdk(bundle, data, a.n_pix_step)
        theirs = run_official(
            official_bundle, a.official, data, a.n_pix_step, ours["steps"][-1] if ours["steps"] else None
        )
    result = compare(ours, theirs)
    result["setup"] = {
        "model": "tiny (random weights, SD 1.5 structure)",
        "size": SIZE,
        "steps": STEPS,
        "inversion_strength": STRENGTH,
        "n_pix_step": a.n_pix_step,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    print(f"inverted latent      rel L2 {result['inverted_rel_l2']:.2e}")
    print(f"Adam steps           dragsdk {len(ours['steps'])}  official {len(theirs['steps'])}")
    print("step  latent rel L2  max |Δ|   handles equal")
    for row, same in zip(
        result["per_step"], result["handles_equal_per_iteration"][1:] + [None], strict=False
    ):
        print(f"{row['step']:>4}  {row['latent_rel_l2']:.2e}      {row['latent_max_abs']:.2e}  {same}")
    if result["optimised_rel_l2"] is not None:
        print(f"optimised latent     rel L2 {result['optimised_rel_l2']:.2e}")
    print(f"final latent         rel L2 {result['final_rel_l2']:.2e}")
    if result["final_same_optimised_rel_l2"] is not None:
        print(f"final, same z_opt    rel L2 {result['final_same_optimised_rel_l2']:.2e}  (sampling alone)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
