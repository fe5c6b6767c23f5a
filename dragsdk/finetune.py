"""The per-image LoRA stage: fine-tune a LoRA on the edited image, cache it on disk, and edit with it.

DragDiffusion (arXiv 2306.14435 §3.1) fine-tunes a LoRA on the UNet to reconstruct the one image it edits before
inverting it (official ``train_lora``, ``utils/lora_utils.py:108-358``; ``drag_bench_evaluation/
run_lora_training.py:86-89`` runs it for every DragBench sample, and ``run_drag_diffusion.py:117-123`` loads the
result with ``unet.load_attn_procs``). A plan asks for it with :class:`~dragsdk.plan.ImageLoRA`
(``EditPlan.finetune``); the :class:`~dragsdk.session.EditRun` stage ``finetune`` calls :func:`image_lora`, which

1. looks the LoRA up in the on-disk cache (:func:`cache_dir`, one safetensors file per key, :func:`lora_key`: the
   working-size pixels, the prompt, the base weights' identity, every training setting and the seed), else
2. trains it with diffusers / PEFT (:func:`train_lora`: ``unet.add_adapter(peft.LoraConfig(...))``) and writes it
   atomically, then
3. puts it on the UNet (:func:`lora_on_unet`) for the rest of the edit and, whatever happens, removes it again:
   the UNet's modules, active adapters, ``requires_grad`` flags and train / eval modes are restored exactly.

Differences from the official training, on purpose: the random draws (crop offsets, VAE posterior sample, noise,
timesteps, in the official order) come from one CPU generator seeded with ``ImageLoRA.seed`` instead of the
process's global RNG (``set_seed(0)``, ``lora_utils.py:124``), so the official stream is not reproduced bit for
bit; the LoRA trains in float32 (the official code trains fp16 under ``accelerate``'s mixed precision,
``:120-123``); the image is the edit's working-size image (the official one is the file as read).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .inversion import UNetCounter
from .keys import image_key
from .plan import ImageLoRA

ADAPTER_NAME = "dragsdk_image_lora"
"""The PEFT adapter name of the per-image LoRA while an edit holds it on the UNet."""

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet layers the LoRA adapts: every attention projection (official ``lora_utils.py:169-203``)."""

FORMAT = "dragsdk-image-lora-1"
"""The cache file format, stored in its metadata; a file of another format is retrained."""


@dataclass
class LoRAOutcome:
    """What the stage did.

    Attributes:
        state: the LoRA's tensors, keys ``unet.<layer>.lora_A.weight`` ``(r, in)`` / ``lora_B.weight`` ``(out, r)``
            (the diffusers / PEFT LoRA file layout).
        key: the cache key (:func:`lora_key`).
        path: the cache file.
        cached: loaded from the cache (no training pass).
        steps: training steps made (0 when cached).
        losses: the training loss of each step made.
        note: a line for the report (a corrupt cache file retrained, a file that could not be written).
    """

    state: dict[str, torch.Tensor]
    key: str
    path: Path
    cached: bool
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    note: str | None = None

    def report(self) -> dict[str, Any]:
        """The report's ``finetune`` entry (JSON-serialisable)."""
        return {
            "cached": self.cached,
            "steps": self.steps,
            "losses": list(self.losses),
            "key": self.key,
            "path": str(self.path),
        }


def finetune_cost(lora: ImageLoRA | None, cached: bool) -> tuple[int, int]:
    """``(forward_grad, backward)`` UNet evaluations of the stage: one of each per training step (a batch of
    ``batch_size`` crops is one evaluation), none when the LoRA is cached."""
    if lora is None or cached:
        return 0, 0
    return lora.steps, lora.steps


# -- the cache ----------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where trained LoRAs are kept: ``$DRAGSDK_CACHE_DIR/lora``, else ``platformdirs.user_cache_dir("dragsdk")/lora``
    (the folder of the backend table and the ONNX graphs)."""
    root = os.environ.get("DRAGSDK_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("dragsdk")
    return Path(root).expanduser() / "lora"


def working_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` in RGB at the working size ``(w, h)`` (Lanczos, as the edit's VAE input is resized): what the LoRA
    trains on and what its cache key hashes."""
    img = image.convert("RGB")
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.Resampling.LANCZOS)


def lora_key(image: Image.Image, prompt: str, weights: str, lora: ImageLoRA) -> str:
    """The cache key of a LoRA: SHA-256 over the working-size image's pixels and size (:func:`dragsdk.keys.image_key`),
    the prompt, the base weights' identity (:meth:`dragsdk.editor.Editor.weights_key`, before the LoRA is put on)
    and every :class:`ImageLoRA` setting with its seed."""
    payload = {
        "format": FORMAT,
        "image": image_key(image.convert("RGB")),
        "prompt": prompt,
        "weights": weights,
        "settings": lora.settings(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_cached(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The LoRA cached at ``path`` for ``key``, or None (absent). A file that safetensors cannot read, of another
    format or key, or whose tensors do not match its stored checksum is deleted with a :class:`RuntimeWarning` and
    reported as None (the caller retrains); the second value is then the report's note."""
    if not path.is_file():
        return None, None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = f.keys()
            state = {name: f.get_tensor(name) for name in names}
        problem = None
        if meta.get("format") != FORMAT:
            problem = f"format {meta.get('format')!r}, expected {FORMAT!r}"
        elif meta.get("key") != key:
            problem = "its stored key differs from its file name"
        elif not state or meta.get("checksum") != _checksum(state):
            problem = "its tensors do not match the stored checksum"
    except Exception as e:  # safetensors' SafetensorError, OSError: a truncated or corrupt file
        problem, state = f"unreadable ({type(e).__name__}: {e})", {}
    if problem is None:
        return state, None
    note = f"per-image LoRA cache file {path} was corrupt ({problem}): deleted and retrained"
    warnings.warn(note, RuntimeWarning, stacklevel=3)
    path.unlink(missing_ok=True)
    return None, note


def write_cached(path: Path, key: str, state: dict[str, torch.Tensor], lora: ImageLoRA) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``), with the
    format, key, checksum and settings as safetensors metadata.

    Raises:
        OSError: the folder cannot be created or written.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "key": key,
        "checksum": _checksum(state),
        "settings": json.dumps(lora.settings(), sort_keys=True),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- the adapter on the UNet --------------------------------------------------------------------------------------


def _targets(unet: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """``(parent, attribute, module)`` of every layer :data:`TARGET_MODULES` names."""
    out = []
    for name, module in unet.named_modules():
        for target in TARGET_MODULES:
            if name == target or name.endswith("." + target):
                parent_name, _, attr = name.rpartition(".")
                out.append((unet.get_submodule(parent_name), attr, module))
    return out


@contextmanager
def lora_on_unet(
    unet: torch.nn.Module, lora: ImageLoRA, state: dict[str, torch.Tensor] | None
) -> Iterator[None]:
    """Put a rank-``lora.rank`` LoRA on ``unet``'s attention projections for the ``with`` block, through diffusers'
    ``add_adapter`` (PEFT, ``init_lora_weights="gaussian"``: A ~ N(0, 1/r²), B = 0, ``lora_alpha = r`` so the scale
    is 1: the official ``LoRALinearLayer``, diffusers ``models/lora.py``), with ``state`` loaded into it (None: the
    initialisation, which :func:`train_lora` redraws from its own generator; B = 0 makes it the base UNet). The
    process's global RNG is left as it was. Adapters the host already has stay active beside it.

    Everything is restored on exit, whatever happens: the original layer objects, the host's adapters, their active
    sets and disabled flags, the UNet's ``peft_config``, every parameter's ``requires_grad`` and every module's
    train / eval mode. The caller holds the model's lock (:func:`dragsdk.concurrency.model_lock`).

    Raises:
        ModelLoadError: peft is missing, the UNet already has an adapter of this name, or ``state`` does not fit.
    """
    from .errors import ModelLoadError

    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as e:
        raise ModelLoadError("the per-image LoRA needs the peft package (pip install peft)") from e
    if ADAPTER_NAME in (getattr(unet, "peft_config", None) or {}):
        raise ModelLoadError(f"the UNet already has an adapter named {ADAPTER_NAME!r} (another edit's?)")
    targets = _targets(unet)
    grads = {id(p): (p, p.requires_grad) for p in unet.parameters()}
    modes = [(m, m.training) for m in unet.modules()]
    tuner_state = [
        (m, list(m.active_adapters), bool(m.disable_adapters))
        for _, _, m in targets
        if isinstance(m, BaseTunerLayer)
    ]
    had_config = "peft_config" in vars(unet)
    config_obj = vars(unet).get("peft_config")
    config_items = dict(config_obj) if isinstance(config_obj, dict) else None
    had_flag = "_hf_peft_config_loaded" in vars(unet)
    flag = vars(unet).get("_hf_peft_config_loaded")
    try:
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.rank,
            init_lora_weights="gaussian",
            target_modules=list(TARGET_MODULES),
        )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft draws A from the global RNG (left as it was), and warns when a host adapter is already there
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            unet.add_adapter(config, adapter_name=ADAPTER_NAME)
        for m, active, disabled in tuner_state:  # the host's adapters stay on, ours beside them
            m.set_adapter([*active, ADAPTER_NAME])
            m._disable_adapters = disabled
        for p, _ in grads.values():
            p.requires_grad_(False)
        for _, p in _lora_parameters(unet):
            p.data = p.data.float()  # train and hold the LoRA in float32 whatever the model's dtype
        if state is not None:
            _load_state(unet, state)
        yield
    finally:
        for parent, attr, original in targets:
            current = getattr(parent, attr)
            if current is not original:
                setattr(parent, attr, original)  # peft wrapped a plain layer: put the layer itself back
            elif isinstance(original, BaseTunerLayer) and ADAPTER_NAME in original.lora_A:
                original.delete_adapter(ADAPTER_NAME)
        for m, active, disabled in tuner_state:
            m._active_adapter = active
            m._disable_adapters = disabled
        if config_items is not None:
            config_obj.clear()
            config_obj.update(config_items)
            unet.peft_config = config_obj
        elif "peft_config" in vars(unet):
            del unet.peft_config
        if had_config and config_items is None:
            unet.peft_config = config_obj
        if had_flag:
            unet._hf_peft_config_loaded = flag
        elif "_hf_peft_config_loaded" in vars(unet):
            del unet._hf_peft_config_loaded
        for p, flag_grad in grads.values():
            p.requires_grad_(flag_grad)
        for m, training in modes:
            m.training = training


def _lora_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(file key, parameter)`` of the per-image LoRA's A and B weights (file keys as :class:`LoRAOutcome` says)."""
    out = []
    for name, p in unet.named_parameters():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.{ADAPTER_NAME}.weight"
            if name.endswith(marker):
                layer = name[: -len(marker)].replace(".base_layer", "")
                out.append((f"unet.{layer}.{part}.weight", p))
    return out


def lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The per-image LoRA's tensors on ``unet`` (detached copies), keyed as :class:`LoRAOutcome` says."""
    return {k: p.detach().clone() for k, p in _lora_parameters(unet)}


def _load_state(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from .errors import ModelLoadError

    params = dict(_lora_parameters(unet))
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state))[:3], sorted(set(state) - set(params))[:3]
        raise ModelLoadError(f"per-image LoRA does not fit this UNet: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k, p in params.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise ModelLoadError(
                    f"per-image LoRA {k}: shape {tuple(state[k].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(state[k].to(p))


@contextmanager
def _default_attention(unet: Any) -> Iterator[None]:
    """diffusers' ``AttnProcessor2_0`` (scaled-dot-product attention, what a UNet loads with on torch 2; the official
    training's ``LoRAAttnProcessor2_0`` without its LoRA) on every layer for the ``with`` block, so training sees
    the plain UNet, not a host's IP-Adapter or an edit's processors; the previous ones are put back on exit."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    previous = unet.attn_processors
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


# -- training -----------------------------------------------------------------------------------------------------


def training_image(image: Image.Image, resolution: int | None) -> torch.Tensor:
    """``(3, H, W)`` float in [−1, 1]: ``image`` with its shorter side resized to ``resolution`` (bilinear, the
    longer side ``int(resolution · long / short)``: torchvision ``Resize(512)`` on a PIL image,
    ``lora_utils.py:270``), as ``ToTensor`` + ``Normalize(0.5, 0.5)`` (``:276-277``); None keeps the size."""
    img = image.convert("RGB")
    if resolution is not None:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resolution * long / short)
        size = (resolution, new_long) if w <= h else (new_long, resolution)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.size[1], img.size[0], 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1.0)


def random_crop(x: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """A ``size``² crop of ``x`` ``(3, H, W)`` at offsets drawn from ``generator`` (row, then column, each uniform
    over the valid range: torchvision ``RandomCrop.get_params``, ``lora_utils.py:271``; no draw when the image is
    the crop's size). None: ``x`` itself."""
    if size is None:
        return x
    _, h, w = x.shape
    i = int(torch.randint(0, h - size + 1, (1,), generator=generator)) if h > size else 0
    j = int(torch.randint(0, w - size + 1, (1,), generator=generator)) if w > size else 0
    return x[:, i : i + size, j : j + size]


def train_lora(
    model: Any,
    image: Image.Image,
    cond: torch.Tensor,
    lora: ImageLoRA,
    counter: UNetCounter,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a per-image LoRA on ``model``'s UNet (official ``train_lora``, ``utils/lora_utils.py:108-358``) and
    return its tensors and the loss of each step; the UNet is left as it was (:func:`lora_on_unet`).

    Each step (``lora_utils.py:281-330``): ``batch_size`` random crops (:func:`random_crop`) of
    :func:`training_image`; ``z = sample of the VAE posterior × scaling factor``; noise ``ε ~ N(0, I)``;
    timesteps ``t`` uniform in ``[0, num_train_timesteps)``; ``z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε``; the loss
    ``mean((UNet(z_t, t, c) − target)²)`` with target ``ε`` (``epsilon``) or ``v = √ᾱ_t·ε − √(1−ᾱ_t)·z``
    (``v_prediction``); one AdamW step on the LoRA alone. Every draw comes from a CPU generator seeded with
    ``lora.seed``: first the LoRA's A matrices (``N(0, 1/r²)``, layer by layer), then per step the draws in that
    order.

    Args:
        model: the :class:`~dragsdk.models.ModelBundle` (UNet, VAE, scheduler, family adapter).
        image: the working-size image.
        cond: ``(1, 77, D)`` the prompt's conditioning (SDXL: with its pooled part, as the edit's).
        lora: the settings.
        counter: one ``forward_grad`` and one ``backward`` per step are counted here.
        on_step: ``on_step(k, loss)`` after each step (progress and cancellation; may raise, and the UNet is
            restored then too).

    Raises:
        ModelLoadError: peft is missing.
        NonFiniteError: a step's loss is not finite.
    """
    from .errors import NonFiniteError

    unet, vae = model.unet, model.vae
    device, dtype = model.device, model.dtype
    generator = torch.Generator("cpu").manual_seed(int(lora.seed))
    full = training_image(image, lora.resolution)
    sched = model.scheduler.config
    alphas = model.scheduler.alphas_cumprod.to(torch.float64)
    n_train = int(sched.num_train_timesteps)
    prediction = model.adapter.prediction_type
    losses: list[float] = []
    with _default_attention(unet), lora_on_unet(unet, lora, None):
        params = [p for _, p in _lora_parameters(unet)]
        with torch.no_grad():
            for name, p in _lora_parameters(unet):  # A ~ N(0, 1/r²) from the training's stream, B = 0
                if ".lora_A." in name:
                    p.copy_(torch.randn(p.shape, generator=generator) / lora.rank)
                else:
                    p.zero_()
        for p in params:
            p.requires_grad_(True)
        unet.train()
        adam = torch.optim.AdamW(
            params, lr=lora.lr, betas=(0.9, 0.999), weight_decay=lora.weight_decay, eps=1e-8
        )
        c = cond.to(device, dtype).expand(lora.batch_size, *cond.shape[1:])
        for k in range(lora.steps):
            x = torch.stack([random_crop(full, lora.resolution, generator) for _ in range(lora.batch_size)])
            with torch.no_grad():
                post = vae.encode(x.to(device, vae.dtype)).latent_dist
                eps_z = torch.randn(post.mean.shape, generator=generator).to(post.mean)
                z = (post.mean + post.std * eps_z) * vae.config.scaling_factor
            z = z.to(dtype)
            noise = torch.randn(z.shape, generator=generator).to(device, dtype)
            t = torch.randint(0, n_train, (lora.batch_size,), generator=generator)
            a = alphas[t].to(device, torch.float32)[:, None, None, None]
            noisy = (a.sqrt() * z.float() + (1 - a).sqrt() * noise.float()).to(dtype)
            target = (
                noise if prediction == "epsilon" else (a.sqrt() * noise.float() - (1 - a).sqrt() * z.float())
            )
            hidden, added = model.adapter.unpack(c, noisy)
            kwargs = {"added_cond_kwargs": added} if added is not None else {}
            with torch.enable_grad():
                pred = unet(noisy, t.to(device), encoder_hidden_states=hidden, return_dict=False, **kwargs)[0]
                counter.forward_grad += 1
                loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteError("finetune", k, None)
                adam.zero_grad()
                loss.backward()
            counter.backward += 1
            adam.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(k, losses[-1])
        state = lora_state(unet)
    return state, losses


def image_lora(
    model: Any,
    image: Image.Image,
    prompt: str,
    cond: torch.Tensor,
    weights: str,
    lora: ImageLoRA,
    counter: UNetCounter,
    on_step: Callable[[int, float], None] | None = None,
) -> LoRAOutcome:
    """The per-image LoRA of ``image`` and ``prompt``: from the cache when a sound file holds it, else trained
    (:func:`train_lora`) and cached. ``weights``: the base weights' identity (the cache key's). A cache file that
    cannot be written is reported in ``note`` and the edit goes on with the trained LoRA.

    Raises:
        as :func:`train_lora`; :class:`~dragsdk.errors.EditCancelled` from ``on_step`` (nothing is cached then).
    """
    key = lora_key(image, prompt, weights, lora)
    path = cache_dir() / f"{key}.safetensors"
    state, note = read_cached(path, key)
    if state is not None:
        return LoRAOutcome(state, key, path, cached=True)
    state, losses = train_lora(model, image, cond, lora, counter, on_step)
    try:
        write_cached(path, key, state, lora)
    except OSError as e:
        note = f"{note + '; ' if note else ''}the per-image LoRA could not be cached at {path}: {e}"
    return LoRAOutcome(state, key, path, cached=False, steps=len(losses), losses=losses, note=note)
