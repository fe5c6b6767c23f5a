"""DragDiffusion (Shi et al., CVPR 2024, arXiv 2306.14435): drag points by optimising the inverted latent of one
timestep, then denoise it with mutual self-attention.

The skeleton the official code runs on DragBench (Yujun-Shi/DragDiffusion, Apache-2.0;
``drag_bench_evaluation/run_drag_diffusion.py``), as this mode plans it:

1. per-image LoRA (``lora_steps`` > 0; official DragBench: rank 16, AdamW lr 5e-4, batch 4, 80 steps,
   ``run_lora_training.py:86-89``; ``utils/lora_utils.py:108-358``): the plan's :class:`ImageLoRA`, trained by the
   engine (or loaded from its on-disk cache) and on the UNet for the whole edit (``run_drag_diffusion.py:117-123``
   loads it before inverting). ``lora_steps`` = 80 by default (the official DragBench run); 0 edits the model as
   it is; a LoRA trained elsewhere
   (the official ``save_lora_weights`` folder) is fused with :meth:`dragsdk.editor.Editor.load_lora`;
2. DDIM inversion with guidance 1 over ``steps`` = 50 to ``inversion_strength`` 0.7: ``round(0.7·50)`` = 35
   inversion steps, sampling from step index 15 (``run_drag_diffusion.py:95-97,127-131,154``,
   ``drag_pipeline.py:600-601``);
3. the engine's latent optimisation (:class:`LatentOptimisation`) at that timestep: decoder features
   ``unet_feature_idx`` = 3 (``run_drag_diffusion.py:99,210``; the 4th entry of ``[mid, up_0, up_1, up_2, up_3]``,
   ``drag_pipeline.py:309,342``, i.e. ``unet.up_blocks[2]``) resized bilinearly to half the image size
   (``run_drag_diffusion.py:108-110``, ``drag_pipeline.py:474``); points ``round((y, x)·s)`` on that grid
   (``run_drag_diffusion.py:142-143``); :func:`motion_supervision` (r_m = 1, ``:101``) plus
   λ = 0.1 (``:269``) × the L1 change of the predicted ``z_{t−1}`` outside the mask (``drag_utils.py:151-152``);
   Adam, lr 0.01 (``:209``, ``drag_utils.py:103``), at most ``n_pix_step`` = 80 steps (``:272``); before every
   step after the first, :func:`point_tracking` (r_p = 3, ``:102``; ``drag_utils.py:120-121``); stop when every
   handle is within 2 feature cells of its target (``drag_utils.py:47-51,125-126``);
4. sampling with mutual self-attention (MasaCtrl ``replace``): the edited branch's self-attention reads the
   keys and values of a source branch sampled from the inverted latent beside it (``kv_source="reconstruction"``,
   ``drag_pipeline.py:525-543``) from step 0 of the sampled steps and self-attention layer 10 on, in forward
   order (``run_drag_diffusion.py:163-166,276-277``; ``utils/attn_utils.py:60-61,71,92-96``); guidance 1
   (``:97``); the output resized to the input's size (``:184``).

Bugs of the official code fixed in every profile (``docs/modes/dragdiffusion.md``): a handle whose shifted patch
crosses the feature map's border (the official slices run past the map or wrap around at negative indices,
``drag_utils.py:59-77,140-143``) samples the border instead; a point that rounds onto the grid's far edge
(``round(x·s) = W/2``, an ``IndexError`` at ``drag_utils.py:33``) is clipped into the grid; the mask is not moved
to CUDA unconditionally (``run_drag_diffusion.py:135``), and no CUDA-only autocast / ``GradScaler`` is used
(``drag_utils.py:111-113``: on a CPU they are inert and warn; dragsdk runs in the model's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from dragsdk.authoring import (
    MAX_POINT_PAIRS,
    EditMode,
    EditPlan,
    EditSpec,
    ImageLoRA,
    KVInjection,
    KVPlan,
    LatentOptimisation,
    MaskRef,
    MaskUI,
    ModeUI,
    OptimisationState,
    PlanContext,
    PointPair,
    ProfileTable,
    SamplerSettings,
    SpecError,
    hookimpl,
    list_cap,
    option,
)


@dataclass(frozen=True)
class DragDiffusionOptions:
    """The options of DragDiffusion: the official value first, then the improved one."""

    mask_resampling: Literal["nearest", "area"] = option(
        "nearest",
        "area",
        "the mask rasterised to the latent grid by >= 50 % area coverage instead of nearest sampling",
        improvement="area-masks",
    )
    kv_source: Literal["reconstruction", "inversion"] = option(
        "reconstruction",
        "inversion",
        "mutual self-attention reads the K/V recorded by the inversion instead of a source branch sampled beside "
        "the edit (one UNet forward fewer per sampled step)",
        improvement="inversion-kv",
    )
    to_uint8: Literal["truncate", "round"] = option(
        "truncate",
        "round",
        "the decoded image rounded to 8 bits instead of truncated (run_drag_diffusion.py:201)",
        improvement="rounded-pixels",
    )
    ddim_arithmetic: Literal["float32", "float64"] = option(
        "float32",
        "float64",
        "the DDIM steps' √ᾱ and √(1−ᾱ) from float64 numbers, as every other dragsdk mode, instead of the "
        "scheduler's float32 tensors (drag_pipeline.py:383-389); rounding only",
    )
    attention_math: Literal["classic", "backend"] = option(
        "classic",
        "backend",
        "attention through the selected backend's kernel (SDPA, Triton, xformers: O(N) memory, faster) instead of "
        "diffusers' AttnProcessor arithmetic that the official code installs (run_drag_diffusion.py:120); same "
        "math, another rounding",
        improvement="backend-attention",
    )
    working_size: Literal["image", "model"] = option(
        "image",
        "model",
        "without sampler.resolution, SD 1.x edits at the model's default resolution (area ≈ 768², sides multiples "
        "of 64) instead of the image's own size",
        improvement="model-size",
    )


DRAGDIFFUSION_PROFILES = ProfileTable(DragDiffusionOptions)
"""The profile table of DragDiffusion."""


class DragDiffusionSampler(SamplerSettings):
    """Sampler settings with DragDiffusion's defaults: 50 DDIM steps, guidance 1 in inversion, optimisation and
    sampling (``run_drag_diffusion.py:95,97``). A scale above 1 applies classifier-free guidance to sampling only
    (the official bench never does; its ``drag_diffusion_update_gen`` variant is not reproduced)."""

    guidance_scale: float = Field(
        1.0, ge=1.0, le=30.0, description="classifier-free guidance scale of sampling (official 1: none)"
    )


class DragDiffusionSpec(EditSpec):
    """DragDiffusion (arXiv 2306.14435): handle points dragged to targets by optimising the inverted latent at one
    timestep (motion supervision and point tracking), then sampled with mutual self-attention.

    Defaults are the official DragBench run (``drag_bench_evaluation/run_drag_diffusion.py``)."""

    mode: str = Field("dragdiffusion", pattern="^dragdiffusion$")
    points: Annotated[list[PointPair], list_cap(MAX_POINT_PAIRS, "pairs")] = Field(
        ...,
        min_length=1,
        max_length=MAX_POINT_PAIRS,
        description=f"handle → target pairs, image pixels (1 to {MAX_POINT_PAIRS} pairs)",
    )
    mask: MaskRef | None = Field(
        None,
        description="editable region (PNG path or data URL, white = may change); outside it the predicted "
        "z_{t-1} is held by the λ term; absent = no λ term (official: an empty mask)",
    )
    lora_steps: int = Field(
        80,
        ge=0,
        le=10_000,
        description="per-image LoRA fine-tuning steps before inversion (official DragBench 80, "
        "run_lora_training.py:89; minutes on a GPU, hours on a CPU at SD 1.5 size); 0 = none (the model as it is; "
        "a LoRA trained elsewhere: Editor.load_lora). Trained LoRAs are cached on disk ($DRAGSDK_CACHE_DIR/lora)",
    )
    lora_rank: int = Field(16, ge=1, le=256, description="rank of the per-image LoRA (official 16)")
    lora_lr: float = Field(
        5e-4, gt=0.0, le=1.0, description="AdamW learning rate of the LoRA (official 5e-4)"
    )
    lora_batch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="random crops per LoRA step (official DragBench 4, run_lora_training.py:89)",
    )
    lora_resolution: int | None = Field(
        512,
        ge=8,
        le=2048,
        multiple_of=8,
        description="side of the square random crops the LoRA trains on, after resizing the shorter side to it "
        "(official 512, lora_utils.py:268-273); null: the working-size image as it is",
    )
    lora_seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="seed of the LoRA training's own random stream (official set_seed(0))",
    )
    inversion_strength: float = Field(
        0.7, gt=0.0, le=1.0, description="fraction of the DDIM steps inverted; sampling starts there"
    )
    n_pix_step: int = Field(80, ge=0, le=1000, description="most Adam steps of the latent optimisation")
    latent_lr: float = Field(0.01, gt=0.0, le=10.0, description="Adam learning rate of the latent")
    lam: float = Field(
        0.1, ge=0.0, le=100.0, description="λ, weight of the L1 change of z_{t-1} outside the mask"
    )
    unet_feature_idx: int = Field(
        3, ge=1, le=4, description="feature map of [mid, up_0, up_1, up_2, up_3]: k is unet.up_blocks[k-1]"
    )
    r_m: int = Field(1, ge=0, le=8, description="motion-supervision patch radius, feature cells")
    r_p: int = Field(3, ge=0, le=16, description="point-tracking search radius, feature cells")
    kv_start_step: int = Field(
        0,
        ge=0,
        description="first sampled step with mutual self-attention (counted from the first sampled step)",
    )
    start_layer: int = Field(
        10, ge=0, le=64, description="first self-attention layer (forward order) with mutual self-attention"
    )
    sampler: DragDiffusionSampler = Field(default_factory=DragDiffusionSampler)
    profile: DRAGDIFFUSION_PROFILES.spec_type() = DRAGDIFFUSION_PROFILES.spec_field()  # type: ignore[valid-type]


Point2 = tuple[float, float]
"""A point ``(row, col)`` on the feature grid."""


def shifted_patch(
    feat: torch.Tensor, top: torch.Tensor, left: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    """The ``rows × cols`` patch of ``feat`` ``(1, C, H, W)`` whose first cell sits at the fractional feature cell
    ``(top, left)`` (0-dim tensors), bilinear: ``(1, C, rows, cols)``.

    As the official ``interpolate_feature_patch`` (``utils/drag_utils.py:54-77``) computes it: one set of four
    corner weights from ``(top, left)`` for the whole patch, ``wa = (⌊x⌋+1 − x)(⌊y⌋+1 − y)``, … in the dtype of
    ``top`` / ``left``, summed in the order a, b, c, d. Where a corner falls outside the map, the official slices run
    short or wrap around; this reads the border cell instead (fix 1 of the mode's docs)."""
    _, _, h, w = feat.shape
    y0, x0 = torch.floor(top), torch.floor(left)
    y1, x1 = y0 + 1, x0 + 1
    wa = (x1 - left) * (y1 - top)
    wb = (x1 - left) * (top - y0)
    wc = (left - x0) * (y1 - top)
    wd = (left - x0) * (top - y0)
    r = int(y0) + torch.arange(rows, device=feat.device)
    c = int(x0) + torch.arange(cols, device=feat.device)
    ra, rb = r.clamp(0, h - 1), (r + 1).clamp(0, h - 1)
    ca, cb = c.clamp(0, w - 1), (c + 1).clamp(0, w - 1)

    def at(rr: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        return feat[:, :, rr][:, :, :, cc]

    return at(ra, ca) * wa + at(rb, ca) * wb + at(ra, cb) * wc + at(rb, cb) * wd


def _window(p: float, radius: int, size: int) -> tuple[int, int]:
    """``[max(0, int(p) − r), min(size, int(p) + r + 1))`` (official ``drag_utils.py:35-36,140-141``)."""
    return max(0, int(p) - radius), min(size, int(p) + radius + 1)


def motion_supervision(
    feat: torch.Tensor, handles: list[Point2], targets: list[Point2], r_m: int
) -> torch.Tensor:
    """DragDiffusion's motion-supervision loss (arXiv 2306.14435 Eq. 3; official ``drag_utils.py:128-148``).

    For each handle ``p`` with target ``t`` and ``‖t − p‖ ≥ 2``: ``d = (t − p)/‖t − p‖``; the patch ``P`` of
    ``feat`` ``(1, C, H, W)`` in rows ``[int(p_y) − r_m, int(p_y) + r_m]`` and the same columns (clipped to the map)
    is compared with the same patch shifted by ``d`` (bilinear, :func:`shifted_patch`):
    ``(2r_m + 1)² · mean|sg(F[P]) − F[P + d]|``. Points are ``(row, col)`` feature cells. Returns the sum over
    handles, a scalar (0 when every handle is within 2 cells of its target).
    """
    _, _, h, w = feat.shape
    loss = feat.new_zeros(())
    for p, t in zip(handles, targets, strict=True):
        # d in float32 tensors, as the official computes it from its float32 points (drag_utils.py:133-137)
        diff = torch.tensor(t, dtype=torch.float32) - torch.tensor(p, dtype=torch.float32)
        norm = diff.norm()
        if norm < 2.0:
            continue
        d = diff / norm
        r1, r2 = _window(p[0], r_m, h)
        c1, c2 = _window(p[1], r_m, w)
        moved = shifted_patch(feat, r1 + d[0], c1 + d[1], r2 - r1, c2 - c1)
        loss = loss + (2 * r_m + 1) ** 2 * F.l1_loss(feat[:, :, r1:r2, c1:c2].detach(), moved)
    return loss


@torch.no_grad()
def point_tracking(
    f0: torch.Tensor, f1: torch.Tensor, handles: list[Point2], initial: list[Point2], r_p: int
) -> list[Point2]:
    """DragDiffusion's point tracking (arXiv 2306.14435 Eq. 4; official ``drag_utils.py:24-45``): each handle moves
    to the cell of ``f1`` ``(1, C, H, W)`` within ``r_p`` cells of it (clipped to the map) whose feature is
    nearest, in L1 over channels, to its initial feature in ``f0``; the first such cell in row-major order on a tie.
    Points are ``(row, col)`` feature cells; returns the new handles."""
    _, _, h, w = f1.shape
    out: list[Point2] = []
    for p, p0 in zip(handles, initial, strict=True):
        ref = f0[0, :, int(p0[0]), int(p0[1])]
        r1, r2 = _window(p[0], r_p, h)
        c1, c2 = _window(p[1], r_p, w)
        dist = (f1[0, :, r1:r2, c1:c2] - ref[:, None, None]).abs().sum(dim=0)
        row, col = divmod(int(dist.argmin()), dist.shape[-1])
        out.append((float(r1 + row), float(c1 + col)))
    return out


def reached(handles: list[Point2], targets: list[Point2]) -> bool:
    """Every handle is within (strictly) 2 feature cells of its target, Euclidean (official
    ``drag_utils.py:47-51``)."""
    return all(
        ((p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2) ** 0.5 < 2.0 for p, t in zip(handles, targets, strict=True)
    )


def feature_point(xy: tuple[float, float], image_size: tuple[int, int], grid: tuple[int, int]) -> Point2:
    """Image pixel ``(x, y)`` → ``(row, col)`` on a ``(w, h)`` feature grid: ``round(y·h/H)``, ``round(x·w/W)``
    (official ``run_drag_diffusion.py:142-143``, ``torch.round``: half to even), clipped into the grid."""
    w, h = grid
    col = float(torch.round(torch.tensor(xy[0] / image_size[0] * w)))
    row = float(torch.round(torch.tensor(xy[1] / image_size[1] * h)))
    return min(max(row, 0.0), h - 1.0), min(max(col, 0.0), w - 1.0)


def optimisation(
    handles: list[Point2],
    targets: list[Point2],
    keep: torch.Tensor | None,
    spec: DragDiffusionSpec,
    grid: tuple[int, int],
) -> LatentOptimisation:
    """The :class:`LatentOptimisation` of DragDiffusion: features resized to ``grid`` ``(w, h)``, tracked handles in
    ``state.memo["handles"]`` and the report (``record["handles"]``, ``(row, col)`` feature cells); ``keep``:
    ``(h, w)`` latent float mask of the λ term (1 outside the editable region), None: no λ term."""

    def features(state: OptimisationState) -> torch.Tensor:
        return F.interpolate(state.features[0], (grid[1], grid[0]), mode="bilinear")

    def tracker(state: OptimisationState) -> bool:
        cur = state.memo.setdefault("handles", list(handles))
        f1 = features(state)
        state.memo["f1"] = f1
        if state.iteration > 0:
            assert state.initial is not None
            f0 = state.memo.setdefault("f0", features(state.initial))
            cur = state.memo["handles"] = point_tracking(f0, f1, cur, handles, spec.r_p)
        state.record["handles"] = [list(p) for p in cur]
        return reached(cur, targets)

    def objective(state: OptimisationState) -> torch.Tensor:
        loss = motion_supervision(state.memo["f1"], state.memo["handles"], targets, spec.r_m)
        loss = loss + 0.0 * state.latent.sum()  # a loss on the latent even when no handle needs moving
        if keep is not None:
            assert state.initial is not None
            change = (state.x_prev - state.initial.x_prev) * keep.to(state.x_prev)
            loss = loss + spec.lam * change.abs().sum()
        return loss

    return LatentOptimisation(
        objective, spec.n_pix_step, spec.latent_lr, tracker, feature_blocks=(spec.unet_feature_idx - 1,)
    )


class DragDiffusionMode(EditMode[DragDiffusionSpec]):
    name = "dragdiffusion"
    spec_model = DragDiffusionSpec
    profiles = DRAGDIFFUSION_PROFILES
    description = (
        "DragDiffusion: drag points by optimising the inverted latent (motion supervision, tracking)"
    )
    unsupported_settings = frozenset({"schedule", "kv_start", "sde", "time_travel"})
    ui = ModeUI(
        help="Click a **handle**, then its **target**; repeat for more pairs. Brush the editable region (optional: "
        "without one nothing holds the rest of the image).",
        order=70,
        points="points",
        mask=MaskUI(name="editable region", label="Editable region (optional): brush it"),
        fields=("lora_steps", "n_pix_step"),  # the per-image LoRA dominates the cost: 0 skips it
    )

    def convert_spec(self, spec: dict[str, Any], sample: Path | None = None) -> dict[str, Any]:
        """A point-drag spec (a DragBench sample's ``meta_data.pkl``, ``dragsdk edit FOLDER --mode dragdiffusion``,
        ``dragsdk bench --mode dragdiffusion``) as a DragDiffusion spec: its prompt, handle → target points and
        editable mask, and its sampler's ``seed`` and ``resolution`` when given; everything else at DragDiffusion's
        own defaults (50 steps, guidance 1: ``run_drag_diffusion.py`` reads only the prompt, points and mask).

        Raises:
            SpecError: (``mode``) a spec of another mode than ``drag``.
        """
        if spec.get("mode") != "drag":
            return super().convert_spec(spec, sample)
        out: dict[str, Any] = {"mode": self.name, "points": spec["points"]}
        for key in ("prompt", "mask"):
            if spec.get(key) is not None:
                out[key] = spec[key]
        sampler = {k: v for k, v in dict(spec.get("sampler") or {}).items() if k in ("seed", "resolution")}
        if sampler:
            out["sampler"] = sampler
        return out

    def working_size(
        self, spec: DragDiffusionSpec, image_size: tuple[int, int], family: str
    ) -> tuple[int, int] | None:
        """The official working size on SD 1.x: the image's own, each side floored to a multiple of 8 pixels (the
        official bench encodes the image as it is and resizes the output back, ``run_drag_diffusion.py:108-110,
        182-184``). Other families, and the ``model-size`` improvement: None, the model's default resolution."""
        if DRAGDIFFUSION_PROFILES.resolve(spec.profile).working_size != "image" or family != "sd1":
            return None
        return max(8, int(image_size[0]) // 8 * 8), max(8, int(image_size[1]) // 8 * 8)

    def plan(self, spec: DragDiffusionSpec, ctx: PlanContext) -> EditPlan:
        ctx.check_points(spec.points)
        canvas, n = ctx.canvas, ctx.steps
        start = n - int(round(spec.inversion_strength * n))
        if start >= n:
            raise SpecError(
                "inversion_strength", f"{spec.inversion_strength} of {n} steps inverts no step: raise it"
            )
        opts = DRAGDIFFUSION_PROFILES.resolve(spec.profile)
        grid = (canvas.size[0] // 2, canvas.size[1] // 2)  # half the working size (official: half the image)
        handles = [feature_point(p.handle, canvas.image_size, grid) for p in spec.points]
        targets = [feature_point(p.target, canvas.image_size, grid) for p in spec.points]
        notes: list[str] = []
        if spec.mask is None:
            edit = torch.ones(canvas.latent_size[1], canvas.latent_size[0], dtype=torch.bool)
            keep = None
            notes.append("no mask given: the whole image is editable and the λ term is off")
        else:
            edit = canvas.mask_to_grid(ctx.mask(spec.mask, "mask"), "latent", method=opts.mask_resampling)
            keep = None if not edit.any() else (~edit).float()  # official: an empty mask turns the term off
        if start + spec.kv_start_step >= n:
            raise SpecError("kv_start_step", f"{spec.kv_start_step} is past the {n - start} sampled steps")
        plan: dict[str, Any] = {
            "edit_mask": edit,
            "start_step": start,
            "kv": KVPlan(KVInjection("replace"), start + spec.kv_start_step, n),
            "kv_layers": spec.start_layer,
            "optimise": optimisation(handles, targets, keep, spec, grid),
            "notes": notes,
            "fidelity": DRAGDIFFUSION_PROFILES.fidelity(spec.profile, opts),
        }
        if spec.lora_steps > 0:
            plan["finetune"] = ImageLoRA(
                spec.lora_steps,
                rank=spec.lora_rank,
                lr=spec.lora_lr,
                batch_size=spec.lora_batch_size,
                resolution=spec.lora_resolution,
                seed=spec.lora_seed,
            )
        return EditPlan(**plan)


@hookimpl
def dragsdk_register_modes(register: Any) -> None:
    register(DragDiffusionMode())
