"""Loading diffusion models: a hub id or a local folder in diffusers layout, or a built-in random architecture.

- ``from_pretrained(id_or_folder)``: SD 1.5 layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``). The Hugging Face cache and ``HF_HUB_OFFLINE=1`` are honoured by ``huggingface_hub``; a model
  that is absent gives one :class:`~dragsdk.errors.ModelNotFoundError` saying how to provide it.
- ``tiny``: the SD 1.5 structure at tiny widths with random weights (VAE factor 8, four UNet down and up blocks,
  cross-attention blocks where SD 1.5 has them, two layers per block, the same module names), so every code path
  and coordinate map is the real one. Built in well under a second; for tests and plumbing demos.
- ``sd15-random``: the full SD 1.5 architecture (UNet 860M parameters, CLIP ViT-L/14 text encoder) with random
  weights, for speed measurements where weights do not change the cost.

The random architectures use a byte-level CLIP tokenizer built in memory (no download).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelNotFoundError

BUILTIN_MODELS = ("tiny", "sd15-random")
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass
class ModelBundle:
    """The components an edit needs.

    Attributes:
        unet: ``UNet2DConditionModel`` predicting ε.
        vae: ``AutoencoderKL`` with ``config.scaling_factor``.
        text_encoder / tokenizer: CLIP text model and its tokenizer.
        scheduler: a ``DDIMScheduler`` (its ``alphas_cumprod`` and timesteps drive inversion and sampling).
        name: the id, folder or built-in name it was loaded from.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ModelBundle:
        for m in (self.unet, self.vae, self.text_encoder):
            same_dtype = dtype is None or next(m.parameters()).dtype == dtype
            m.to(device=device) if same_dtype else m.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``(1, 77, D)`` CLIP text embedding of ``prompt`` (last hidden state, as SD 1.5)."""
        max_len = min(int(self.tokenizer.model_max_length), 77) if self.tokenizer.model_max_length < 10**6 else 77
        ids = self.tokenizer(
            prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, 4, H/8, W/8)`` of an image ``(B, 3, H, W)`` in [-1, 1]: posterior mean × scaling factor."""
        post = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        return (post.mean * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] of a latent ``(B, 4, H/8, W/8)``."""
        z = latent.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(z).sample.clamp(-1, 1)


def _byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (and their word-final forms), no merges."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in codes]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def _random_bundle(name: str, seed: int = 0) -> ModelBundle:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    vae_down = ("DownEncoderBlock2D",) * 4
    vae_up = ("UpDecoderBlock2D",) * 4
    if name == "tiny":
        widths, vae_widths, text_dim, heads, groups = (32, 64, 64, 64), (8, 16, 16, 16), 32, 8, 8
        text_cfg = CLIPTextConfig(
            hidden_size=text_dim, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
        vae_layers = 1
    elif name == "sd15-random":
        widths, vae_widths, text_dim, heads, groups = (320, 640, 1280, 1280), (128, 256, 512, 512), 768, 8, 32
        text_cfg = CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
        vae_layers = 2
    else:
        raise ModelNotFoundError(f"unknown built-in model {name!r}; built-ins are {BUILTIN_MODELS}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=down, up_block_types=up, cross_attention_dim=text_dim, attention_head_dim=heads,
        norm_num_groups=groups,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=vae_down, up_block_types=vae_up,
        block_out_channels=vae_widths, layers_per_block=vae_layers, latent_channels=4,
        norm_num_groups=min(groups, vae_widths[0]), sample_size=512, scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    bundle = ModelBundle(unet, vae, text_encoder, _byte_level_clip_tokenizer(), scheduler, name)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return bundle


_HOW_TO_PROVIDE = (
    "Provide a Stable Diffusion model in diffusers layout (SD 1.5 for editing; SD 2.1 for DIFT evaluation "
    "features): a local folder with unet/, vae/, text_encoder/, "
    "tokenizer/ and scheduler/ subfolders, or a Hugging Face hub id (e.g. "
    "'stable-diffusion-v1-5/stable-diffusion-v1-5') that is already in the Hugging Face cache "
    "(HF_HOME / HF_HUB_CACHE) or downloadable (unset HF_HUB_OFFLINE). Download once with "
    "`huggingface-cli download ID`. For tests and demos without weights use the built-in 'tiny' model."
)


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> ModelBundle:
    """Load a model bundle.

    Args:
        name_or_path: ``tiny``, ``sd15-random``, a local folder in diffusers layout, or a hub id.
        device: default CUDA when available, else CPU.
        torch_dtype: default float16 on CUDA, float32 on the CPU.
        variant: weight file variant (e.g. ``fp16``) passed to diffusers.

    Raises:
        ModelNotFoundError: the folder is missing or incomplete, or the hub id is not cached while offline,
            unknown, or unreachable. The message says how to provide a model.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return _random_bundle(name).to(device, dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1
    if looks_local and not path.is_dir():
        raise ModelNotFoundError(f"model folder {path} does not exist. {_HOW_TO_PROVIDE}")
    source = str(path) if path.is_dir() else name
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kw: dict[str, Any] = {"local_files_only": offline} if not path.is_dir() else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, variant=variant, **kw)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, variant=variant, **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    except Exception as e:  # diffusers/transformers raise OSError, EnvironmentError, HTTP and hub errors
        where = f"folder {path}" if path.is_dir() else f"hub id {name!r}" + (" (HF_HUB_OFFLINE is set)" if offline else "")
        raise ModelNotFoundError(f"could not load the model from {where}: {type(e).__name__}: {e}. {_HOW_TO_PROVIDE}") from e
    scheduler = DDIMScheduler.from_config({**dict(scheduler.config), "clip_sample": False, "set_alpha_to_one": False})
    bundle = ModelBundle(unet, vae, text_encoder, tokenizer, scheduler, name)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return bundle.to(device, dtype)
