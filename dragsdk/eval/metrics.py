"""Drag-editing metrics, each pinned to its published protocol (DragDiffusion ``drag_bench_evaluation``,
RegionDrag ``region_utils/evaluator.py``; each function names its own source).

All coordinates are image pixels ``(x, y)`` of the *original* image; ``pairs`` is ``[[handle, target], ...]``.
Images are PIL images or ``(H, W, 3)`` uint8 arrays; masks are ``(H, W)`` bool arrays, True = editable.

=====================  ====================================================================================
metric                 protocol and source
=====================  ====================================================================================
MD (DragDiffusion)     :func:`mean_distance_dragdiffusion` — DragDiffusion ``drag_bench_evaluation/
                       run_eval_point_matching.py``: DIFT at native resolution, features bilinearly upsampled
                       to H×W, cosine argmax over the whole edited image, Euclidean pixel distance to the
                       target; the benchmark number averages over all pairs. Lower is better.
MD (RegionDrag)        :func:`mean_distance_regiondrag` — RegionDrag ``region_utils/evaluator.py`` (as in
                       Inpaint4Drag ``utils/evaluator.py``): images resized to 768×768 (nearest), DIFT
                       features resized back to H×W (nearest), argmax restricted to the union of discs of
                       radius ``max(|h−t|/√2, 5)`` around each handle and target, the error divided by (W, H);
                       the benchmark number averages the per-image means (papers print it ×100).
IF                     :class:`ImageFidelity` — 1 − LPIPS (AlexNet, ``lpips`` package), both images bilinearly
                       resized to 224×224 in [−1, 1] (DragDiffusion ``run_eval_similarity.py``). Higher is better.
DAI                    :func:`drag_accuracy_index` — GoodDrag ``evaluation/compute_DAI.py`` (arXiv 2404.07206):
                       mean over pairs of the summed squared RGB difference (values in [0, 1]) between the
                       (2γ+1)² patch of the original at the handle and that of the result at the target, over
                       the patch area, γ ∈ {1, 5, 10, 20}; *one* division by the pair count (the official code
                       divides twice). Lower is better.
PSNR / SSIM            :func:`psnr`, :func:`ssim` inside and outside the edit mask: how much the edit changed
                       what it was allowed to, and what it was not. Higher = more similar to the original.
=====================  ====================================================================================

Point indices are truncated to integer pixels, as both official MD scripts do (``torch.long`` / integer data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DragSDKError
from .dift import FeatureFn, image_tensor

PSNR_CAP_DB = 100.0
"""The bench's PSNR for (near-)identical pixels: ``min(cap, 10·log10(1/MSE))`` keeps JSON finite."""
DAI_RADII = (1, 5, 10, 20)
"""GoodDrag's γ values (patch half-sizes, pixels)."""
REGIONDRAG_SIZE = (768, 768)
"""(W, H) both images are resized to before DIFT in RegionDrag's MD."""
REGIONDRAG_MIN_RADIUS = 5.0
"""Smallest search-disc radius (pixels) in RegionDrag's MD."""
LPIPS_SIZE = 224

Pairs = Sequence[Sequence[Sequence[float]]]
Region = Literal["inside", "outside", "all"]


class MetricUnavailable(DragSDKError, RuntimeError):
    """A metric cannot run here (a package that cannot import, weights that are absent); the message says why."""


# -- helpers --------------------------------------------------------------------------------------------------


def _array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image must be RGB (H, W, 3), got shape {arr.shape}")
    return arr


def _unit(image: Image.Image | np.ndarray) -> torch.Tensor:
    """``(1, 3, H, W)`` float64 in [0, 1]."""
    arr = _array(image)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return torch.from_numpy(arr.astype(np.float64) / scale).permute(2, 0, 1)[None]


def _same_size(original: np.ndarray, edited: np.ndarray) -> None:
    if original.shape != edited.shape:
        raise ValueError(
            f"the edited image is {edited.shape[1]}×{edited.shape[0]}, the original "
            f"{original.shape[1]}×{original.shape[0]}: resize it first"
        )


def _region(mask: np.ndarray | None, region: Region, shape: tuple[int, int]) -> np.ndarray:
    if region == "all":
        return np.ones(shape, bool)
    if mask is None:
        raise ValueError(f"region {region!r} needs a mask")
    m = np.asarray(mask).astype(bool)
    if m.shape != shape:
        raise ValueError(f"the mask is {m.shape[1]}×{m.shape[0]}, the image {shape[1]}×{shape[0]}")
    if region == "inside":
        return m
    if region == "outside":
        return ~m
    raise ValueError(f"region must be 'inside', 'outside' or 'all', got {region!r}")


def _pairs(pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(pairs, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (2, 2) or len(arr) == 0:
        raise ValueError(f"pairs must be [[handle, target], ...] of [x, y] pixels, got shape {arr.shape}")
    return arr[:, 0], arr[:, 1]


def _check_inside(points: np.ndarray, w: int, h: int, what: str) -> None:
    for k, (x, y) in enumerate(points):
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"{what}[{k}] ({x:g}, {y:g}) is outside the {w}×{h} image")


# -- PSNR / SSIM ----------------------------------------------------------------------------------------------


def psnr(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    mask: np.ndarray | None = None,
    region: Region = "all",
    cap_db: float | None = None,
) -> float | None:
    """Peak signal-to-noise ratio in dB over the pixels of a region, RGB values in [0, 1] (peak 1).

    ``10·log10(1 / MSE)`` with the MSE over every channel of the region's pixels.

    Args:
        original / edited: same-size RGB images.
        mask: ``(H, W)`` bool edit mask (True = editable); needed for ``inside`` / ``outside``.
        region: ``inside`` the mask, ``outside`` it, or ``all`` pixels.
        cap_db: the value returned when the PSNR exceeds it (identical pixels give ``inf`` without a cap).

    Returns:
        dB, ``inf`` (or ``cap_db``) for identical pixels, None when the region has no pixel.

    Raises:
        ValueError: different image sizes, a mask of another size, a missing mask, an unknown region.
    """
    a, b = _array(original), _array(edited)
    _same_size(a, b)
    sel = _region(mask, region, a.shape[:2])
    if not sel.any():
        return None
    d = (_unit(a)[0] - _unit(b)[0]).permute(1, 2, 0).numpy()[sel]
    mse = float(np.mean(d * d))
    value = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
    return min(value, cap_db) if cap_db is not None else value


def ssim(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    mask: np.ndarray | None = None,
    region: Region = "all",
    window_size: int = 11,
) -> float | None:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) over the pixels of a region.

    The SSIM map is computed on the whole image (``kornia.metrics.ssim``: Gaussian window ``window_size``, σ 1.5,
    reflect padding, values in [0, 1], constants ``(0.01)²`` and ``(0.03)²``, no denominator epsilon), then averaged
    over the region's pixels and the three channels. Windows near the mask border see both sides of it.

    Returns:
        in [−1, 1], exactly 1 for identical pixels; None when the region has no pixel.

    Raises:
        ValueError: as :func:`psnr`.
    """
    from kornia.metrics import ssim as ssim_map

    a, b = _array(original), _array(edited)
    _same_size(a, b)
    sel = _region(mask, region, a.shape[:2])
    if not sel.any():
        return None
    m = ssim_map(_unit(a), _unit(b), window_size, max_val=1.0, eps=0.0)[0].mean(0).numpy()
    return float(m[sel].mean())


def fidelity_in_out(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    mask: np.ndarray,
    cap_db: float | None = PSNR_CAP_DB,
) -> dict[str, float | None]:
    """``psnr_inside``, ``psnr_outside``, ``ssim_inside``, ``ssim_outside`` of an edit (see :func:`psnr`, :func:`ssim`).

    PSNR is capped at ``cap_db`` (default :data:`PSNR_CAP_DB`) so identical regions stay finite in JSON.
    """
    return {
        "psnr_inside": psnr(original, edited, mask, "inside", cap_db),
        "psnr_outside": psnr(original, edited, mask, "outside", cap_db),
        "ssim_inside": ssim(original, edited, mask, "inside"),
        "ssim_outside": ssim(original, edited, mask, "outside"),
    }


# -- DAI ------------------------------------------------------------------------------------------------------


def drag_accuracy_index(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    radius: int,
) -> float:
    """GoodDrag's Drag Accuracy Index (DAI) at one patch radius γ, without the official double division.

    ``DAI_γ = (1/N) Σ_i (1/|P_i|) Σ_{o ∈ P_i} ‖I(h_i + o) − R(t_i + o)‖²`` with ``I`` the original and ``R`` the
    edited image as RGB in [0, 1], ``N`` pairs, and ``P_i`` the offsets ``o ∈ [−γ, γ]²`` for which both pixels lie
    in the image: all ``(2γ+1)²`` of them away from the border (GoodDrag, arXiv 2404.07206;
    ``evaluation/compute_DAI.py``, which divides by ``N`` twice — its multi-pair values are ``N`` times too small).

    Args:
        pairs: ``[[handle, target], ...]`` pixels (truncated to integers).
        radius: γ ≥ 0, pixels.

    Raises:
        ValueError: different image sizes, no pairs, a point off the image, a negative radius.
    """
    if radius < 0:
        raise ValueError(f"radius must be ≥ 0, got {radius}")
    a, b = _array(original), _array(edited)
    _same_size(a, b)
    h, w = a.shape[:2]
    handles, targets = _pairs(pairs)
    _check_inside(handles, w, h, "handle")
    _check_inside(targets, w, h, "target")
    fa = a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
    fb = b.astype(np.float64) / (255.0 if b.dtype == np.uint8 else 1.0)
    total = 0.0
    for (hx, hy), (tx, ty) in zip(handles.astype(int), targets.astype(int), strict=True):
        lo_x = max(-radius, -hx, -tx)
        hi_x = min(radius, w - 1 - hx, w - 1 - tx)
        lo_y = max(-radius, -hy, -ty)
        hi_y = min(radius, h - 1 - hy, h - 1 - ty)
        pa = fa[hy + lo_y : hy + hi_y + 1, hx + lo_x : hx + hi_x + 1]
        pb = fb[ty + lo_y : ty + hi_y + 1, tx + lo_x : tx + hi_x + 1]
        total += float(np.sum((pa - pb) ** 2)) / ((hi_x - lo_x + 1) * (hi_y - lo_y + 1))
    return total / len(handles)


def dai_all(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    radii: Sequence[int] = DAI_RADII,
) -> dict[str, float]:
    """``{"dai_1": ..., "dai_5": ..., "dai_10": ..., "dai_20": ...}`` (:func:`drag_accuracy_index` per γ)."""
    return {f"dai_{r}": drag_accuracy_index(original, edited, pairs, r) for r in radii}


# -- Mean Distance --------------------------------------------------------------------------------------------


@dataclass
class MeanDistance:
    """A Mean-Distance result for one image.

    Attributes:
        value: the mean over this image's pairs (pixels for DragDiffusion, fractions of (W, H) for RegionDrag).
        distances: one per pair, same unit.
        matches: the matched ``(x, y)`` pixel of each handle in the edited image.
        protocol: ``dragdiffusion`` or ``regiondrag``.
    """

    value: float
    distances: list[float]
    matches: list[tuple[int, int]]
    protocol: str
    extra: dict[str, Any] = field(default_factory=dict)


def _resize_like(edited: np.ndarray, original: np.ndarray) -> np.ndarray:
    if edited.shape == original.shape:
        return edited
    return np.asarray(
        Image.fromarray(edited).resize((original.shape[1], original.shape[0]), Image.Resampling.BILINEAR)
    )


def _cosine_maps(
    src: torch.Tensor,
    dst: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    size: tuple[int, int],
    mode: str,
    chunk: int = 64,
) -> torch.Tensor:
    """Cosine similarity ``(P, H, W)`` between the source features at ``(rows, cols)`` and every pixel of the
    destination features, both upsampled to ``size = (H, W)`` with ``mode`` (as ``F.interpolate``).

    Works channel-chunk by channel-chunk, so memory is ``chunk·H·W`` floats, never ``C·H·W`` (1280 channels at
    native DragBench resolution would be gigabytes); the result equals upsampling everything first.
    """
    kw: dict[str, Any] = {"mode": mode} if mode == "nearest" else {"mode": mode, "align_corners": False}
    c = src.shape[1]
    r = torch.as_tensor(rows, dtype=torch.long)
    q = torch.as_tensor(cols, dtype=torch.long)
    vecs = torch.empty(len(r), c)
    for c0 in range(0, c, chunk):
        up = F.interpolate(src[:, c0 : c0 + chunk].float(), size=size, **kw)[0]
        vecs[:, c0 : c0 + chunk] = up[:, r, q].T
    dot = torch.zeros(len(r), *size)
    sq = torch.zeros(size)
    for c0 in range(0, c, chunk):
        up = F.interpolate(dst[:, c0 : c0 + chunk].float(), size=size, **kw)[0]
        dot += torch.einsum("pc,chw->phw", vecs[:, c0 : c0 + chunk], up)
        sq += (up * up).sum(0)
    norm = vecs.norm(dim=1)[:, None, None] * sq.sqrt()[None]
    return dot / norm.clamp_min(1e-8)


def mean_distance_dragdiffusion(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    features: FeatureFn,
    prompt: str = "",
) -> MeanDistance:
    """Mean Distance, DragDiffusion's protocol (``drag_bench_evaluation/run_eval_point_matching.py``).

    The edited image is bilinearly resized to the original's size if needed; ``features`` (DIFT: SD 2.1, t=261,
    up-block 1, ensemble 8, the prompt — :class:`~dragsdk.eval.dift.DIFT`) runs on both at native resolution;
    both feature maps are bilinearly upsampled to H×W; each handle's original feature is matched to the
    edited pixel of highest cosine similarity anywhere in the image; the distance from that pixel to the target
    is Euclidean, in pixels.

    Args:
        pairs: ``[[handle, target], ...]`` pixels of the original.
        features: ``features(image (1, 3, H, W) in [−1, 1], prompt) → (1, C, h, w)``.

    Returns:
        :class:`MeanDistance` in pixels.

    Raises:
        ValueError: no pairs or a point off the image.
    """
    a, b, handles, targets = _md_inputs(original, edited, pairs)
    h, w = a.shape[:2]
    hi = handles.astype(int)
    fa, fb = features(image_tensor(a), prompt), features(image_tensor(b), prompt)
    cos = _cosine_maps(fa, fb, hi[:, 1], hi[:, 0], (h, w), "bilinear")
    best = cos.flatten(1).argmax(1).numpy()
    matches = [(int(i % w), int(i // w)) for i in best]
    dist = [float(math.hypot(tx - mx, ty - my)) for (tx, ty), (mx, my) in zip(targets, matches, strict=True)]
    return MeanDistance(float(np.mean(dist)), dist, matches, "dragdiffusion")


def _md_inputs(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    check_targets: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What both MD protocols start from: the original, the edited image resized to it, and the checked points."""
    a = _array(original)
    b = _resize_like(_array(edited), a)
    h, w = a.shape[:2]
    handles, targets = _pairs(pairs)
    _check_inside(handles, w, h, "handle")
    if check_targets:
        _check_inside(targets, w, h, "target")
    return a, b, handles, targets


def regiondrag_search_mask(handles: np.ndarray, targets: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(P, H, W)`` bool: per pair, pixels strictly within ``max(|h−t|/√2, 5)`` of its handle or its target
    (RegionDrag's restricted search). ``size = (H, W)``; points are integer pixels."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros((len(handles), h, w), bool)
    for k, (hp, tp) in enumerate(zip(handles, targets, strict=True)):
        r = max(float(np.hypot(*(hp - tp))) / math.sqrt(2.0), REGIONDRAG_MIN_RADIUS)
        out[k] = (np.hypot(xs - hp[0], ys - hp[1]) < r) | (np.hypot(xs - tp[0], ys - tp[1]) < r)
    return out


def mean_distance_regiondrag(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    features: FeatureFn,
    prompt: str = "",
    size: tuple[int, int] = REGIONDRAG_SIZE,
) -> MeanDistance:
    """Mean Distance, RegionDrag's protocol (``region_utils/evaluator.py``; Inpaint4Drag's is the same).

    Both images are resized to ``size`` (W, H; 768×768, nearest); ``features`` (DIFT, posterior mode) runs on
    them; the features are resized back to H×W (nearest); each handle's original feature is matched to the edited
    pixel of highest cosine similarity inside :func:`regiondrag_search_mask`; the error vector from the match to
    the target is divided by (W, H) and its norm averaged over the pairs. An edited image of another size is
    resized (bilinear) to the original's first.

    Returns:
        :class:`MeanDistance` as a fraction of the image size (papers print ×100).

    Raises:
        ValueError: no pairs or a point off the image.
    """
    a, b, handles, targets = _md_inputs(original, edited, pairs, check_targets=True)
    h, w = a.shape[:2]
    hi, ti = handles.astype(int), targets.astype(int)
    sw, sh = size

    def feats(arr: np.ndarray) -> torch.Tensor:
        x = image_tensor(arr)
        x = x if (w, h) == (sw, sh) else F.interpolate(x, size=(sh, sw), mode="nearest")
        return features(x, prompt)

    cos = _cosine_maps(feats(a), feats(b), hi[:, 1], hi[:, 0], (h, w), "nearest")
    allowed = torch.from_numpy(regiondrag_search_mask(hi, ti, (h, w)))
    cos = torch.where(allowed, cos, torch.full_like(cos, -math.inf))
    best = cos.flatten(1).argmax(1).numpy()
    matches = [(int(i % w), int(i // w)) for i in best]
    dist = [
        float(math.hypot((tx - mx) / w, (ty - my) / h))
        for (tx, ty), (mx, my) in zip(ti, matches, strict=True)
    ]
    return MeanDistance(float(np.mean(dist)), dist, matches, "regiondrag")


def mean_distance(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    pairs: Pairs,
    features: FeatureFn,
    prompt: str = "",
    protocol: Literal["dragdiffusion", "regiondrag"] = "dragdiffusion",
) -> MeanDistance:
    """Mean Distance by protocol name (:func:`mean_distance_dragdiffusion` or :func:`mean_distance_regiondrag`).

    Raises:
        ValueError: an unknown protocol, or as the protocol's function.
    """
    if protocol == "dragdiffusion":
        return mean_distance_dragdiffusion(original, edited, pairs, features, prompt)
    if protocol == "regiondrag":
        return mean_distance_regiondrag(original, edited, pairs, features, prompt)
    raise ValueError(f"protocol must be 'dragdiffusion' or 'regiondrag', got {protocol!r}")


# -- Image Fidelity (LPIPS) -----------------------------------------------------------------------------------


def lpips_status() -> tuple[bool, str]:
    """Whether the ``lpips`` package imports here, and why not.

    ``lpips`` imports torchvision; where no torchvision build matches the installed torch (e.g. the CPU torch used
    by this project's CI) the import fails, and installing one even breaks ``import transformers``.
    """
    try:
        import lpips  # noqa: F401
    except Exception as e:  # ImportError, or torchvision's operator registration failing at import
        return False, (
            f"the lpips package cannot be imported here ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it needs a torchvision build matching torch: pip install 'dragsdk[eval]'"
        )
    return True, ""


class ImageFidelity:
    """Image Fidelity = 1 − LPIPS (Zhang et al., CVPR 2018), as DragBench scores it.

    ``lpips.LPIPS(net="alex")``; both images bilinearly resized to 224×224, values in [−1, 1]
    (DragDiffusion ``drag_bench_evaluation/run_eval_similarity.py``; RegionDrag's evaluator is the same). The
    benchmark number is the mean over images. The network loads on first use.

    Args:
        net: LPIPS backbone (``alex`` is the protocol).
        size: side of the square the images are resized to (224).
        device: where LPIPS runs (default CPU).

    Raises:
        MetricUnavailable: (on first use) ``lpips`` cannot import, or its backbone weights are absent.
    """

    def __init__(self, net: str = "alex", size: int = LPIPS_SIZE, device: str | torch.device = "cpu") -> None:
        self.net, self.size, self.device = net, size, torch.device(device)
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            ok, why = lpips_status()
            if not ok:
                raise MetricUnavailable(f"IF (LPIPS) not computed: {why}")
            import lpips

            try:
                self._model = lpips.LPIPS(net=self.net, verbose=False).to(self.device).eval()
            except Exception as e:  # torchvision downloads the AlexNet weights on first use
                raise MetricUnavailable(
                    f"IF (LPIPS) not computed: the {self.net} weights are absent and could not be downloaded "
                    f"({type(e).__name__}: {e}); put them in the torch hub cache (TORCH_HOME)"
                ) from e
        return self._model

    @torch.no_grad()
    def lpips(self, original: Image.Image | np.ndarray, edited: Image.Image | np.ndarray) -> float:
        """LPIPS distance (lower = more similar).

        Raises:
            MetricUnavailable: as the class.
        """
        model = self._load()
        a, b = _array(original), _resize_like(_array(edited), _array(original))
        x = F.interpolate(image_tensor(a), (self.size, self.size), mode="bilinear").to(self.device)
        y = F.interpolate(image_tensor(b), (self.size, self.size), mode="bilinear").to(self.device)
        return float(model(x, y).item())

    def __call__(self, original: Image.Image | np.ndarray, edited: Image.Image | np.ndarray) -> float:
        """1 − LPIPS (higher = more faithful to the original)."""
        return 1.0 - self.lpips(original, edited)
