"""Loading diffusion models: a hub id, a local folder in diffusers layout, a single-file checkpoint, an existing
diffusers pipeline, or a built-in random architecture.

- ``from_pretrained(id_or_folder)``: SD 1.x, SD 2.x (ε or v-prediction) or SDXL base in diffusers layout; the family
  is found from ``model_index.json`` and the configs (:func:`dragsdk.families.detect_family`). The Hugging Face
  cache and ``HF_HUB_OFFLINE=1`` are honoured by ``huggingface_hub``; a model that is absent gives one
  :class:`~dragsdk.errors.ModelNotFoundError` saying how to provide it, a folder that exists but cannot be used one
  :class:`~dragsdk.errors.ModelLoadError` naming what was found.
- ``.safetensors`` / ``.ckpt`` single-file checkpoints through diffusers' ``from_single_file``.
- :func:`bundle_from_pipe`: the modules of a diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``,
  shared, not copied.
- ``tiny``, ``tiny-sd2``, ``tiny-sdxl``: the SD 1.5, SD 2.1 (v-prediction) and SDXL structures at tiny widths with
  random weights (same block types, attention placement, linear projections, SDXL's two text encoders and
  ``text_time`` conditioning, the same module names), so every code path and coordinate map is the real one. Built
  in well under a second each; for tests and plumbing demos.
- ``sd15-random``, ``sd21-random``, ``sdxl-random``: the full architectures with random weights, for speed and
  memory measurements where weights do not change the cost.

The random architectures use a byte-level CLIP tokenizer built in memory (no download).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .defaults import DEFAULT_MODEL, MODEL_ENV, RANDOM_MODELS, default_model  # noqa: F401 (re-exported)
from .errors import ModelLoadError, ModelNotFoundError
from .families import (
    EpsilonUNet,
    ModelAdapter,
    check_index,
    ddim_from_config,
    detect_family,
    family_from_configs,
)

BUILTIN_MODELS = RANDOM_MODELS
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
SDXL_SCHEDULER_CONFIG: dict[
    str, Any
] = {  # stable-diffusion-xl-base-1.0 ships an Euler scheduler with these betas
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


@dataclass
class ModelBundle:
    """The components an edit needs.

    Attributes:
        unet: ``UNet2DConditionModel``.
        vae: ``AutoencoderKL`` with ``config.scaling_factor``.
        text_encoder / tokenizer: CLIP text model and its tokenizer (SDXL: the first, CLIP ViT-L).
        scheduler: a ``DDIMScheduler`` owned by the bundle (built from the model's scheduler config; its
            ``alphas_cumprod`` and timesteps drive inversion and sampling).
        name: the id, folder or built-in name it was loaded from.
        family: ``sd1``, ``sd2`` or ``sdxl`` (:mod:`dragsdk.families`).
        text_encoder_2 / tokenizer_2: SDXL's OpenCLIP bigG encoder (with projection) and its tokenizer.
        force_zeros_for_empty_prompt: SDXL: an empty negative prompt is encoded as zeros.
        random_weights: a built-in random-weight model (:data:`BUILTIN_MODELS`): its edits are not real edits, and
            every report made with it says so (``EditReport.random_weights``).

    Raises:
        ModelLoadError: (at construction) the components do not fit the family (:class:`ModelAdapter`).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    name: str
    family: str = "sd1"
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = True
    random_weights: bool = False
    adapter: ModelAdapter = field(init=False, repr=False)
    _vae_upcast: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.adapter = ModelAdapter(self.family, self)
        _check_widths(self)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """Working resolution (pixels) when a spec does not set one (:class:`~dragsdk.families.Layout`)."""
        return self.adapter.default_resolution

    def text_encoders(self) -> list[Any]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ModelBundle:
        """Move (and cast) the modules in place. A VAE with ``force_upcast`` stays float32 under float16."""
        for m in (self.unet, self.vae, *self.text_encoders()):
            want = dtype
            if m is self.vae and dtype == torch.float16 and self.vae.config.get("force_upcast", False):
                want = torch.float32
            same_dtype = want is None or next(m.parameters()).dtype == want
            m.to(device=device) if same_dtype else m.to(device=device, dtype=want)
        return self

    def unet_call(self, unet: Any = None) -> EpsilonUNet:
        """The ε-predicting UNet callable (``unet`` default: ``self.unet``; a backend may pass its prepared one)."""
        return EpsilonUNet(self.unet if unet is None else unet, self.adapter)

    def encode_prompt(self, prompt: str, negative: bool = False) -> torch.Tensor:
        """The conditioning tensor of ``prompt``: ``(1, 77, D)`` (SD 1.x / 2.x: the text encoder's last hidden
        state) or ``(1, 78, D)`` for SDXL (:meth:`dragsdk.families.ModelAdapter.encode_prompt`)."""
        return self.adapter.encode_prompt(prompt, negative)

    def prompt_note(self, prompt: str | None, field: str = "prompt") -> str | None:
        """A report note when ``prompt`` is longer than the text encoder reads (CLIP: 77 tokens with the start and
        end tokens), which silently drops its end; None when it fits.

        Args:
            prompt: the prompt text (None or empty: no note).
            field: the spec field named in the note.
        """
        if not prompt or self.tokenizer is None:
            return None
        limit = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        if limit > 100_000:  # a tokenizer without a limit ("very large integer"): CLIP's own
            limit = 77
        count = len(self.tokenizer(prompt, truncation=False).input_ids)
        if count <= limit:
            return None
        kept = self.tokenizer.decode(
            self.tokenizer(prompt, truncation=True, max_length=limit).input_ids, skip_special_tokens=True
        )
        return (
            f"{field}: {count} tokens, but the text encoder reads {limit} (with the start and end tokens); "
            f"the rest was cut: the edit used {kept!r}"
        )

    def run_vae(self) -> Any:
        """The VAE to run: a float32 copy of a float16 VAE whose config sets ``force_upcast`` (SDXL's VAE overflows
        in float16; diffusers upcasts it the same way), made once; otherwise the VAE itself."""
        if self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            if self._vae_upcast is None:
                self._vae_upcast = copy.deepcopy(self.vae).float()
            return self._vae_upcast
        return self.vae

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, 4, H/8, W/8)`` of an image ``(B, 3, H, W)`` in [-1, 1]: posterior mean × scaling factor."""
        vae = self.run_vae()
        post = vae.encode(image.to(self.device, vae.dtype)).latent_dist
        return (post.mean * vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] of a latent ``(B, 4, H/8, W/8)``."""
        vae = self.run_vae()
        z = latent.to(vae.dtype) / vae.config.scaling_factor
        return vae.decode(z).sample.clamp(-1, 1)


def _check_widths(b: ModelBundle) -> None:
    """The text encoders' widths must be what the UNet was built for (a checkpoint of another architecture)."""
    width = int(b.unet.config.cross_attention_dim)
    text = sum(int(m.config.hidden_size) for m in b.text_encoders())
    if width != text:
        raise ModelLoadError(
            f"the UNet's cross_attention_dim is {width} but the {b.family} text encoder(s) give "
            f"{text} channels: the components come from different architectures"
        )
    if b.family == "sdxl":
        cfg = b.unet.config
        want = 6 * int(cfg.addition_time_embed_dim) + int(b.text_encoder_2.config.projection_dim)
        if int(cfg.projection_class_embeddings_input_dim) != want:
            raise ModelLoadError(
                f"the UNet's projection_class_embeddings_input_dim is "
                f"{cfg.projection_class_embeddings_input_dim}, the SDXL text_time conditioning gives "
                f"{want}: the components come from different architectures"
            )


def _byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (and their word-final forms), no merges."""
    from transformers import CLIPTokenizer

    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
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


def _text_config(
    name: str, real: bool, width: int, layers: int, act: str, projection: int | None = None
) -> Any:
    from transformers import CLIPTextConfig

    kw: dict[str, Any] = {
        "max_position_embeddings": 77,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
        "hidden_act": act,
        "vocab_size": 49408 if real else 514,
    }
    if projection is not None:
        kw["projection_dim"] = projection
    if real:
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_attention_heads=width // 64,
            num_hidden_layers=layers,
            **kw,
        )
    return CLIPTextConfig(
        hidden_size=width, intermediate_size=2 * width, num_attention_heads=4, num_hidden_layers=2, **kw
    )


def _random_bundle(name: str, seed: int = 0) -> ModelBundle:
    """A built-in random-weight model (:data:`BUILTIN_MODELS`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if name not in BUILTIN_MODELS:
        raise ModelNotFoundError(f"unknown built-in model {name!r}; built-ins are {BUILTIN_MODELS}")
    real = not name.startswith("tiny")
    family = {"tiny": "sd1", "sd15-random": "sd1", "tiny-sd2": "sd2", "sd21-random": "sd2"}.get(name, "sdxl")
    groups = 32 if real else 8
    vae_widths = (128, 256, 512, 512) if real else (8, 16, 16, 16)
    torch.manual_seed(seed)
    text_encoder_2 = tokenizer_2 = None
    if family == "sd1":  # SD 1.5: CLIP ViT-L/14, 8 heads per layer, conv projections in the transformers
        widths = (320, 640, 1280, 1280) if real else (32, 64, 64, 64)
        text_encoder = CLIPTextModel(_text_config(name, real, 768 if real else 32, 12, "quick_gelu"))
        unet_kw: dict[str, Any] = {
            "attention_head_dim": 8,
            "cross_attention_dim": text_encoder.config.hidden_size,
            "sample_size": 64,
        }
        sched = {**SD_SCHEDULER_CONFIG}
    elif (
        family == "sd2"
    ):  # SD 2.1-768: OpenCLIP ViT-H (23 of 24 layers), 64-channel heads, linear projections, v
        widths = (320, 640, 1280, 1280) if real else (32, 64, 64, 64)
        text_encoder = CLIPTextModel(_text_config(name, real, 1024 if real else 32, 23, "gelu"))
        unet_kw = {
            "attention_head_dim": (5, 10, 20, 20) if real else (2, 4, 4, 4),
            "use_linear_projection": True,
            "upcast_attention": True,
            "cross_attention_dim": text_encoder.config.hidden_size,
            "sample_size": 96,
        }
        sched = {**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}
    else:  # SDXL base: CLIP ViT-L + OpenCLIP bigG, 3 stages, 1/2/10 transformer layers, text_time conditioning
        widths = (320, 640, 1280) if real else (32, 64, 64)
        text_encoder = CLIPTextModel(_text_config(name, real, 768 if real else 32, 12, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(name, real, 1280 if real else 32, 32, "gelu", projection=1280 if real else 32)
        )
        tokenizer_2 = _byte_level_clip_tokenizer()
        time_dim = 256 if real else 8
        unet_kw = {
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10) if real else (1, 2, 3),
            "attention_head_dim": (5, 10, 20) if real else (2, 4, 4),
            "use_linear_projection": True,
            "cross_attention_dim": text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": time_dim,
            "projection_class_embeddings_input_dim": 6 * time_dim + text_encoder_2.config.projection_dim,
            "sample_size": 128,
        }
        sched = {**SDXL_SCHEDULER_CONFIG}
    if family != "sdxl":
        unet_kw["down_block_types"] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        unet_kw["up_block_types"] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=widths,
        norm_num_groups=groups,
        **unet_kw,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=vae_widths,
        layers_per_block=2 if real else 1,
        latent_channels=4,
        norm_num_groups=min(groups, vae_widths[0]),
        sample_size=1024 if family == "sdxl" else 512,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
        force_upcast=family == "sdxl",
    )
    bundle = ModelBundle(
        unet,
        vae,
        text_encoder,
        _byte_level_clip_tokenizer(),
        ddim_from_config(sched),
        name,
        family,
        text_encoder_2,
        tokenizer_2,
        random_weights=True,
    )
    for m in (unet, vae, *bundle.text_encoders()):
        m.eval().requires_grad_(False)
    return bundle


_HOW_TO_PROVIDE = (
    "Provide a Stable Diffusion model in diffusers layout (SD 1.x, SD 2.x or SDXL base for editing; SD 2.1 for DIFT "
    "evaluation features): a local folder with model_index.json and unet/, vae/, text_encoder/, "
    "tokenizer/ and scheduler/ subfolders, a .safetensors / .ckpt single-file checkpoint, or a Hugging Face hub id "
    f"(e.g. {DEFAULT_MODEL!r}) that is already in the Hugging Face cache "
    "(HF_HOME / HF_HUB_CACHE) or downloadable (unset HF_HUB_OFFLINE). Download once with "
    "`huggingface-cli download ID`. For tests and demos without weights use the built-in 'tiny', 'tiny-sd2' or "
    "'tiny-sdxl' models."
)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _finish(bundle: ModelBundle, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    for m in (bundle.unet, bundle.vae, *bundle.text_encoders()):
        m.eval().requires_grad_(False)
    return bundle.to(device, dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (None: CUDA when available, else the CPU), checked to exist here.

    Raises:
        DeviceUnavailableError: not a device name, or a CUDA / MPS device this machine does not have.
        ArgumentTypeError: (field ``device``) neither a string nor a ``torch.device``.
    """
    from .errors import ArgumentTypeError, DeviceUnavailableError

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise ArgumentTypeError(
            "device", "a device name such as 'cpu' or 'cuda:0', or a torch.device", device
        )
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceUnavailableError(
            f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceUnavailableError(
                f"device {str(device)!r} requested but CUDA is not available ({why}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} requested but MPS is not available; use device='cpu'"
        )
    return dev


def check_dtype(dtype: Any) -> torch.dtype | None:
    """``dtype`` if it is None or a floating ``torch.dtype``.

    Raises:
        ArgumentTypeError: (field ``torch_dtype``) anything else.
    """
    from .errors import ArgumentTypeError

    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentTypeError("torch_dtype", "a floating torch.dtype such as torch.float16", dtype)
    return dtype


def random_weights_warning(bundle: ModelBundle) -> str | None:
    """The warning every output made with a random-weight model carries (None for real weights)."""
    if not bundle.random_weights:
        return None
    return (
        f"model {bundle.name!r} has random weights (a built-in test model): the output is not a real edit; "
        f"name a real model, e.g. --model {DEFAULT_MODEL}"
    )


def open_model(
    model: ModelBundle | str | os.PathLike[str],
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
) -> ModelBundle:
    """The model an :class:`~dragsdk.editor.Editor` wraps: a loaded bundle, moved / cast in place when ``device`` or
    ``torch_dtype`` is given, or a name or path loaded by :func:`load_model`.

    Raises:
        as :func:`load_model`, :func:`resolve_device` and :func:`check_dtype`.
    """
    if isinstance(model, ModelBundle):
        if device is not None or torch_dtype is not None:
            model.to(resolve_device(device) if device is not None else None, check_dtype(torch_dtype))
        return model
    return load_model(model, device, torch_dtype)


def local_path_of_url(name: str) -> str:
    """A ``file://`` URL as the local path it names (``file:///models/sd15`` → ``/models/sd15``); other names as
    they are."""
    if name.startswith("file://"):
        from urllib.parse import unquote, urlparse
        from urllib.request import url2pathname

        return url2pathname(unquote(urlparse(name).path))
    return name


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a hub id (``owner/name``): it exists, starts with ``.``,
    ``/`` or ``~``, has a backslash or a drive, or has more than one ``/``. Such a name that is missing fails at
    once instead of waiting for hub retries."""
    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or name.count("/") > 1
    )


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    single_file_config: str | os.PathLike[str] | None = None,
) -> ModelBundle:
    """Load a model bundle.

    Args:
        name_or_path: a built-in name (:data:`BUILTIN_MODELS`), a local folder in diffusers layout, a
            ``.safetensors`` / ``.ckpt`` single-file checkpoint, or a hub id.
        device: default CUDA when available, else CPU.
        torch_dtype: default float16 on CUDA, float32 on the CPU.
        variant: weight file variant (e.g. ``fp16``) passed to diffusers.
        single_file_config: for a single-file checkpoint only: a diffusers folder (or hub id) of the same
            architecture whose configs and tokenizers describe it (diffusers' ``config=``; its weights are not
            read); default: the hub repository diffusers infers from the keys, which needs the hub or its cache.

    Raises:
        ModelNotFoundError: the folder or file is missing, or the hub id is not cached while offline, unknown, or
            unreachable. The message says how to provide a model.
        ModelLoadError: the folder or file exists but cannot be used (unsupported family such as SD3 / FLUX, an SDXL
            refiner, a broken component, components of different architectures, a single-file checkpoint diffusers
            cannot convert); the message names what was found. Also ``single_file_config`` given for a model that
            is not a single-file checkpoint.
    """
    device = resolve_device(device)
    dtype = check_dtype(torch_dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    name = local_path_of_url(str(name_or_path))
    if single_file_config is not None:
        single_file_config = local_path_of_url(str(single_file_config))
        if looks_like_local_path(single_file_config) and not Path(single_file_config).expanduser().is_dir():
            raise ModelNotFoundError(
                f"single_file_config folder {single_file_config} does not exist (a local path, "
                "so it is not looked up on the hub)"
            )
    if single_file_config is not None and not name.endswith(SINGLE_FILE_SUFFIXES):
        raise ModelLoadError(
            f"single_file_config is for a .safetensors / .ckpt checkpoint; {name!r} is not one "
            "(a diffusers folder or hub id carries its own configs)"
        )
    if name in BUILTIN_MODELS:
        return _random_bundle(name).to(device, dtype)
    path = Path(name).expanduser()
    if name.endswith(SINGLE_FILE_SUFFIXES):
        if not path.is_file():
            raise ModelNotFoundError(f"checkpoint file {path} does not exist. {_HOW_TO_PROVIDE}")
        return _finish(_load_single_file(path, dtype, single_file_config), device, dtype)
    if path.is_file():
        raise ModelLoadError(
            f"{path} is a file but not a single-file checkpoint (the name must end in "
            f"{' or '.join(SINGLE_FILE_SUFFIXES)}) nor a diffusers folder; rename it if it is one"
        )
    if looks_like_local_path(name) and not path.is_dir():
        raise ModelNotFoundError(
            f"model folder {path} does not exist (a local path, so it is not looked up on the "
            f"hub). {_HOW_TO_PROVIDE}"
        )
    if path.is_dir():
        family = detect_family(path)
        index = (
            json.loads((path / "model_index.json").read_text())
            if (path / "model_index.json").is_file()
            else {}
        )
        bundle = _load_components(str(path), family, dtype, variant, {}, f"model folder {path}", index)
        return _finish(bundle, device, dtype)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    where = f"hub id {name!r}" + (" (HF_HUB_OFFLINE is set)" if offline else "")
    from huggingface_hub import hf_hub_download

    def config(filename: str, subfolder: str | None = None) -> dict[str, Any]:
        try:
            path = hf_hub_download(name, filename, subfolder=subfolder, local_files_only=offline)
        except Exception as e:  # hub errors: not cached offline, unknown id, no network, no such file
            raise ModelNotFoundError(
                f"could not load the model from {where}: {_one_line(e)}. {_HOW_TO_PROVIDE}"
            ) from e
        return json.loads(Path(path).read_text())

    try:
        index = config("model_index.json")
    except ModelNotFoundError:  # an old repository without model_index.json: the UNet config decides
        index = {}
    check_index(index, where)
    family = family_from_configs(config("config.json", "unet"), index.get("_class_name"))
    return _finish(
        _load_components(name, family, dtype, variant, {"local_files_only": offline}, where, index),
        device,
        dtype,
    )


def _load_components(
    source: str,
    family: str,
    dtype: torch.dtype,
    variant: str | None,
    kw: dict[str, Any],
    where: str,
    index: dict[str, Any],
) -> ModelBundle:
    """Each component from its subfolder; a failure names the component (the folder exists: it is broken)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def load(sub: str, fn: Any, **extra: Any) -> Any:
        try:
            return fn(source, subfolder=sub, **extra, **kw)
        except (
            Exception
        ) as e:  # diffusers / transformers raise OSError, ValueError, safetensors and hub errors
            raise ModelLoadError(
                f"{where} has a {family} model_index but its {sub}/ cannot be loaded: {_one_line(e)}"
            ) from e

    vae_dtype = torch.float32 if family == "sdxl" and dtype == torch.float16 else dtype
    parts: dict[str, Any] = {
        "unet": load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=dtype, variant=variant),
        "vae": load("vae", AutoencoderKL.from_pretrained, torch_dtype=vae_dtype, variant=variant),
        "text_encoder": load(
            "text_encoder", CLIPTextModel.from_pretrained, torch_dtype=dtype, variant=variant
        ),
        "tokenizer": load("tokenizer", CLIPTokenizer.from_pretrained),
        "scheduler": ddim_from_config(load("scheduler", DDIMScheduler.load_config)),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = load(
            "text_encoder_2", CLIPTextModelWithProjection.from_pretrained, torch_dtype=dtype, variant=variant
        )
        parts["tokenizer_2"] = load("tokenizer_2", CLIPTokenizer.from_pretrained)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _own_storage(parts.get(part))
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", True))
    return ModelBundle(name=source, family=family, force_zeros_for_empty_prompt=force_zeros, **parts)


def _check_pipe_parts(pipe: Any) -> None:
    """The components of a host pipeline are what an edit will call, and they belong together.

    Raises:
        ModelLoadError: ``unet`` is not a diffusers ``UNet2DConditionModel``, ``vae`` not an ``AutoencoderKL``,
            a text encoder not a torch module with a ``config.hidden_size``, the scheduler has no ``config``, or
            the UNet's ``cross_attention_dim`` does not match the text encoder's width (SD 1.x 768, SD 2.x 1024,
            SDXL 768 + 1280 = 2048): a UNet and a text encoder of different families.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    name = type(pipe).__name__
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        if not isinstance(getattr(pipe, part), cls):
            raise ModelLoadError(
                f"{name}.{part} is a {type(getattr(pipe, part)).__name__}, expected diffusers' {cls.__name__}"
            )
    encoders = [getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)]
    widths = []
    for part, module in zip(("text_encoder", "text_encoder_2"), encoders, strict=True):
        if module is None:
            continue
        width = getattr(getattr(module, "config", None), "hidden_size", None)
        if not isinstance(module, torch.nn.Module) or not isinstance(width, int):
            raise ModelLoadError(
                f"{name}.{part} is a {type(module).__name__}, expected a transformers text encoder "
                "(a torch module whose config has hidden_size)"
            )
        widths.append(width)
    config = getattr(pipe.scheduler, "config", None)
    if config is None or not hasattr(config, "get"):
        raise ModelLoadError(
            f"{name}.scheduler ({type(pipe.scheduler).__name__}) has no diffusers config; the edit "
            "builds its own DDIM scheduler from it"
        )
    cross = pipe.unet.config.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) and cross else cross
    if isinstance(cross, int) and cross != sum(widths):
        raise ModelLoadError(
            f"{name}: the UNet's cross_attention_dim is {cross} but its text encoder(s) give "
            f"{' + '.join(map(str, widths))} = {sum(widths)} features: a UNet and a text encoder "
            "of different families (SD 1.x 768, SD 2.x 1024, SDXL 768 + 1280)"
        )


def bundle_from_pipe(pipe: Any, name: str | None = None) -> ModelBundle:
    """A bundle sharing the modules of a diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (or
    any object with ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` and, for SDXL,
    ``text_encoder_2`` / ``tokenizer_2`` attributes). No weight is copied; the bundle's DDIM scheduler is a new
    object built from the pipeline scheduler's config, so the host's scheduler state is never touched.

    Raises:
        ModelLoadError: a component is missing (named) or of the wrong kind, the UNet and text encoder are of
            different families, the scheduler has no config, or the family is unsupported.
    """
    missing = [
        c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, c, None) is None
    ]
    if missing:
        raise ModelLoadError(
            f"{type(pipe).__name__} has no {', '.join(missing)}; an editing model needs unet, vae, "
            "text_encoder, tokenizer and scheduler (an SDXL refiner has no text_encoder)"
        )
    _check_pipe_parts(pipe)
    family = family_from_configs(dict(pipe.unet.config), type(pipe).__name__)
    config = getattr(pipe, "config", {}) or {}
    force_zeros = bool(config.get("force_zeros_for_empty_prompt", True)) if hasattr(config, "get") else True
    return ModelBundle(
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        ddim_from_config(pipe.scheduler.config, type(pipe.scheduler).__name__),
        name or getattr(pipe, "name_or_path", None) or type(pipe).__name__,
        family,
        getattr(pipe, "text_encoder_2", None),
        getattr(pipe, "tokenizer_2", None),
        force_zeros,
    )


_SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
_SDXL_OPEN_CLIP = "conditioner.embedders.1.model.positional_embedding"


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key → tensor shape of a ``.safetensors`` (header only) or ``.ckpt`` (``torch.load(weights_only=True)``,
    its ``state_dict``) file.

    Raises:
        ModelLoadError: the file cannot be read.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                names = f.keys()  # safe_open is not iterable
                return {k: tuple(f.get_slice(k).get_shape()) for k in names}
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
        return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    except Exception as e:  # safetensors / pickle / zip errors on a damaged or foreign file
        raise ModelLoadError(f"checkpoint {path} exists but cannot be read: {_one_line(e)}") from e


def _hub_configs_of(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The hub repository whose configs diffusers' ``from_single_file`` would fetch for these keys (diffusers'
    own inference, ``single_file_utils.fetch_diffusers_config``, run on shape-only meta tensors)."""
    try:
        from diffusers.loaders.single_file_utils import fetch_diffusers_config

        meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        return str(fetch_diffusers_config(meta)["pretrained_model_name_or_path"])
    except Exception:  # a diffusers without this helper, or keys it cannot classify: no repository to name
        return None


def _load_single_file(path: Path, dtype: torch.dtype, config: str | os.PathLike[str] | None) -> ModelBundle:
    """A single-file checkpoint through diffusers' ``from_single_file`` (SD 1.x / 2.x or SDXL, from its keys), its
    configs from ``config`` (a diffusers folder or hub id) or, by default, the hub repository diffusers infers.

    Raises:
        ModelLoadError: the file cannot be read; its keys are not the LDM layout; an SDXL file whose two text
            encoders have the same width (diffusers cannot tell them apart); a ``config`` folder of another family
            (SDXL vs SD 1.x / 2.x; an unusable folder as :func:`detect_family`); diffusers fails (without ``config``:
            the message names the repository whose configs were needed and says to pass ``single_file_config``);
            the file lacks weights of the configured architecture (the component is named when diffusers returns
            it with weights left unloaded).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    shapes = _checkpoint_shapes(path)
    keys = list(shapes)
    is_xl = any(k.startswith("conditioner.embedders.1") for k in keys)
    is_sd = any(k.startswith("cond_stage_model.") for k in keys)
    if not (is_xl or is_sd) or not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelLoadError(
            f"checkpoint {path} is not an SD 1.x / 2.x / SDXL checkpoint in the original (LDM) key "
            f"layout ({len(keys)} keys, e.g. {keys[:2]})"
        )
    if is_xl and _SDXL_CLIP_L in shapes and shapes[_SDXL_CLIP_L][-1:] == shapes.get(_SDXL_OPEN_CLIP, ())[-1:]:
        # diffusers (single_file_utils.create_diffusers_clip_model_from_ldm) gives text_encoder_2 the CLIP ViT-L
        # weights of embedders.0 whenever that encoder's width equals text_encoder_2's (768 vs 1280 in SDXL base).
        raise ModelLoadError(
            f"checkpoint {path} is an SDXL checkpoint whose two text encoders are both {shapes[_SDXL_CLIP_L][-1]} "
            "wide: diffusers' from_single_file picks text_encoder_2's weights by width and would load the first "
            "encoder's into it. Convert it to a diffusers folder another way, or load that folder"
        )
    kind = "SDXL" if is_xl else "SD 1.x / 2.x"
    if config is not None and Path(config).is_dir():
        folder_family = detect_family(config)
        if (folder_family == "sdxl") != is_xl:
            raise ModelLoadError(
                f"single_file_config {config} holds an {folder_family} model but checkpoint {path} "
                f"has {kind} keys; give a diffusers folder of the checkpoint's architecture"
            )
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kw: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": offline}
    if config is not None:
        kw.update(config=str(config), local_files_only=True)
    try:
        pipe = cls.from_single_file(str(path), **kw)
    except (
        Exception
    ) as e:  # diffusers raises ValueError / OSError / hub errors / KeyError on what it cannot map
        hint = ""
        if "meta tensor" in str(
            e
        ):  # diffusers builds on the meta device and casts before checking completeness
            hint = (
                f" The file does not hold every weight of the configured {kind} architecture (diffusers left "
                "some unloaded)."
            )
        elif config is None:
            repo = _hub_configs_of(shapes)
            hint = (
                f" It needs the configs of the hub repository {repo or 'it infers'}"
                + (" (HF_HUB_OFFLINE is set)" if offline else "")
                + ": pass single_file_config=FOLDER (CLI: --model-config FOLDER), a local diffusers folder of "
                "the same architecture (only its *.json and tokenizer files are read), or make that "
                "repository's configs reachable or cached."
            )
        else:
            hint = (
                f" Does single_file_config {config} describe this checkpoint's architecture? Its configs give the "
                "shapes diffusers expects."
            )
        raise ModelLoadError(
            f"checkpoint {path} ({kind} keys) could not be converted by diffusers' "
            f"from_single_file: {_one_line(e)}.{hint}"
        ) from e
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        empty = [n for n, t in (module.state_dict().items() if module is not None else ()) if t.is_meta]
        if empty:
            raise ModelLoadError(
                f"checkpoint {path}: diffusers' from_single_file left {len(empty)} {part} "
                f"weight(s) unloaded (e.g. {empty[:2]}); the file does not hold a complete {kind} "
                f"{part} of the configured architecture"
            )
    for module in (
        pipe.unet,
        pipe.vae,
        getattr(pipe, "text_encoder", None),
        getattr(pipe, "text_encoder_2", None),
    ):
        _own_storage(module)
    return bundle_from_pipe(pipe, str(path))


def _own_storage(module: Any) -> None:
    """Give every weight of ``module`` its own freshly allocated storage.

    diffusers' loaders (folder and single-file, 0.42.1 with transformers 5.25) leave weights as views into the
    memory-mapped safetensors files, at offsets that are not 64-byte aligned and differ between the two layouts.
    CPU kernels take other vectorised paths on unaligned data, so the same weights gave UNet outputs differing in
    the last bits (a single-file model vs its folder: ~1e-5 after a 6-step edit), and the mapping keeps the file
    open. Used on the models dragsdk loads itself, never on a host's (``from_pipe`` shares, never copies). A copy
    costs one pass over the weights at load.
    """
    if module is None:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def parse_lora_arg(value: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` → ``(path, scale)`` (scale default 1.0); a Windows drive colon is not a separator.

    Raises:
        SpecError: (field ``lora``) the scale is not a number.
    """
    from .errors import SpecError

    path, sep, tail = value.rpartition(":")
    if not sep or not path or "/" in tail or "\\" in tail or (len(path) == 1 and path.isalpha()):
        return value, 1.0
    try:
        scale = float(tail)
    except ValueError:
        raise SpecError(
            "lora", f"expected PATH[:SCALE] with a number after the colon, got {value!r}"
        ) from None
    return path, check_lora_scale(scale, path)


MAX_LORA_SCALE = 100.0
"""The largest ``|scale|`` a LoRA is fused at. Scales in use are about −2 … 4; a larger one is a typo (``1e30``)
that would fuse non-finite or huge weights into the model permanently."""


def check_lora_scale(scale: object, name: str | os.PathLike[str] = "") -> float:
    """The LoRA scale as a float, checked before anything is loaded or fused.

    Raises:
        SpecError: (field ``lora``) not a real number, NaN, infinite, or ``|scale|`` over :data:`MAX_LORA_SCALE`.
    """
    import math

    from .errors import SpecError

    label = f"LoRA {name}: " if name else ""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise SpecError("lora", f"{label}the scale must be a number, got {type(scale).__name__}")
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise SpecError(
            "lora",
            f"{label}the scale must be a finite number with |scale| <= {MAX_LORA_SCALE:g}, "
            f"got {scale!r}; nothing was loaded",
        )
    return float(scale)


_LORA_PAIRS = (
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
)


def check_lora_file(path: Path) -> None:
    """Read a ``.safetensors`` LoRA file and refuse what would be fused silently into a poisoned model.

    Every floating-point tensor must be finite, and every down / up (A / B) pair must agree on its rank: A is
    ``(r, in[, kh, kw])`` and B ``(out, r[, 1, 1])`` (Hu et al., arXiv 2106.09685 §4.1: ``ΔW = B·A``). Other
    formats (``.bin``) are checked after loading, before fusing (:func:`load_lora`).

    Raises:
        ModelLoadError: the file is not a readable safetensors file, holds a NaN / ±inf value, or a pair's ranks
            differ (the key is named).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {}
            for key in keys:
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ModelLoadError(
                        f"LoRA {path}: tensor {key} holds NaN or infinite values; nothing was "
                        "fused (the file is corrupt or was trained into divergence)"
                    )
                shapes[key] = tuple(tensor.shape)
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors' SafetensorError, OSError: a corrupt or truncated file
        raise ModelLoadError(f"LoRA {path} is not a readable safetensors file: {_one_line(e)}") from e
    for key, shape in shapes.items():
        for down, up in _LORA_PAIRS:
            if key.endswith(down):
                partner = key[: -len(down)] + up
                if partner in shapes and (
                    len(shape) < 2 or len(shapes[partner]) < 2 or shape[0] != shapes[partner][1]
                ):
                    raise ModelLoadError(
                        f"LoRA {path}: {key} {list(shape)} and {partner} "
                        f"{list(shapes[partner])} disagree on the rank (A is (r, in), B is "
                        "(out, r)); nothing was fused"
                    )


def _check_loaded_adapter(modules: list[Any], name: str, path: Path) -> None:
    """Refuse a loaded (not yet fused) adapter whose A / B weights are non-finite or of mismatched rank."""
    for module in modules:
        for sub_name, sub in module.named_modules():
            if name not in getattr(sub, "lora_A", {}):
                continue
            a, b = sub.lora_A[name].weight, sub.lora_B[name].weight
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ModelLoadError(
                    f"LoRA {path}: layer {sub_name} has NaN or infinite weights; nothing was fused"
                )
            if a.shape[0] != b.shape[1]:
                raise ModelLoadError(
                    f"LoRA {path}: layer {sub_name} has A rank {a.shape[0]} and B rank "
                    f"{b.shape[1]}; nothing was fused"
                )


def load_lora(bundle: ModelBundle, path: str | os.PathLike[str], scale: float = 1.0) -> int:
    """Load LoRA weights (a diffusers / kohya ``.safetensors`` file or a folder with
    ``pytorch_lora_weights.safetensors``) with diffusers' ``load_lora_weights`` and fuse them into the bundle's
    UNet (and text encoders, when the file has text-encoder layers) at ``scale``: ``W ← W + scale·(α/r)·B·A``
    (Hu et al., arXiv 2106.09685 Eq. 3; diffusers ``fuse_lora``). The fusion is permanent for these modules,
    shared ones included (:meth:`Editor.from_pipe`). Needs ``peft`` (diffusers' LoRA backend).

    Returns:
        the number of layers the LoRA adapted.

    Raises:
        SpecError: (field ``lora``) the scale is not a finite number within :data:`MAX_LORA_SCALE`.
        ModelNotFoundError: the path does not exist.
        ModelLoadError: peft is missing, diffusers cannot read the file, no key matches a layer of the model, a
            weight is NaN / infinite, or a down / up pair disagrees on its rank (:func:`check_lora_file`); in
            every case nothing is fused and the model is unchanged.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    p = Path(path).expanduser()
    scale = check_lora_scale(scale, p)
    if not p.exists():
        raise ModelNotFoundError(f"LoRA file {p} does not exist")
    weights_file = p if p.is_file() else p / "pytorch_lora_weights.safetensors"
    if weights_file.suffix == ".safetensors" and weights_file.is_file():
        check_lora_file(weights_file)
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            "LoRA loading needs the peft package (pip install peft), diffusers' LoRA backend"
        ) from e
    parts = {
        "vae": bundle.vae,
        "text_encoder": bundle.text_encoder,
        "tokenizer": bundle.tokenizer,
        "unet": bundle.unet,
        "scheduler": bundle.scheduler,
    }
    if bundle.family == "sdxl":
        pipe: Any = StableDiffusionXLPipeline(
            **parts, text_encoder_2=bundle.text_encoder_2, tokenizer_2=bundle.tokenizer_2
        )
    else:
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    name = f"dragsdk_{len(getattr(bundle.unet, 'peft_config', {}) or {})}"
    kw = {"weight_name": p.name} if p.is_file() else {}
    source = str(p.parent if p.is_file() else p)
    try:
        pipe.load_lora_weights(source, adapter_name=name, **kw)
    except Exception as e:  # diffusers raises ValueError / KeyError / OSError on files it cannot map
        raise ModelLoadError(
            f"LoRA {p} could not be loaded into the {bundle.family} model: {_one_line(e)}"
        ) from e
    modules = [
        m for m in (bundle.unet, *bundle.text_encoders()) if name in (getattr(m, "peft_config", {}) or {})
    ]
    adapted = sum(1 for m in modules for sub in m.modules() if name in getattr(sub, "lora_A", {}))
    if not adapted:
        raise ModelLoadError(
            f"LoRA {p}: none of its keys matched a layer of the {bundle.family} model "
            f"(UNet {type(bundle.unet).__name__}); is it a LoRA for another architecture?"
        )
    try:
        _check_loaded_adapter(modules, name, p)
    except ModelLoadError:
        pipe.delete_adapters([name])  # loaded, not fused: removing it leaves the model as it was
        raise
    pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
    pipe.unload_lora_weights()
    return adapted


_BUILTIN_RESOLUTION = {
    "tiny": 768,
    "tiny-sd2": 768,
    "tiny-sdxl": 1024,
    "sd15-random": 768,
    "sd21-random": 768,
    "sdxl-random": 1024,
}


_BUILTIN_FAMILY = {"tiny-sd2": "sd2", "sd21-random": "sd2", "tiny-sdxl": "sdxl", "sdxl-random": "sdxl"}


def peek_layout(name: str) -> tuple[str, int] | None:
    """``(family, default resolution)`` of a model read without loading any weights (as
    :func:`peek_default_resolution`); None when it cannot be known cheaply."""
    if name in _BUILTIN_RESOLUTION:
        return _BUILTIN_FAMILY.get(name, "sd1"), _BUILTIN_RESOLUTION[name]
    from .families import family_from_configs

    config = _peek_unet_config(name)
    resolution = peek_default_resolution(name)
    if config is None or resolution is None:
        return None
    try:
        return family_from_configs(config), resolution
    except Exception:
        return None


def _peek_unet_config(name: str) -> dict[str, Any] | None:
    """A local folder's or the Hugging Face cache's ``unet/config.json`` of ``name``, or None (best effort: an
    unreadable config or an odd name only means the edit plans after loading)."""
    try:
        folder = Path(name).expanduser()
        if (folder / "unet" / "config.json").is_file():
            config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        elif not folder.suffix and name.count("/") == 1 and not folder.exists():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "unet/config.json")
            config = json.loads(Path(cached).read_text(encoding="utf-8")) if isinstance(cached, str) else None
        else:
            config = None
    except Exception:
        return None
    return config if isinstance(config, dict) else None


def peek_default_resolution(name: str) -> int | None:
    """The working resolution a model will use when a spec sets none, read without loading any weights: the
    built-in models' table, a local diffusers folder's ``unet/config.json``, or that config already in the Hugging
    Face cache. None when it cannot be known cheaply (a single-file checkpoint, a hub id not in the cache).

    Used to plan an edit (and refuse a bad spec) before the model loads; the edit itself uses the loaded model's
    :attr:`ModelBundle.default_resolution`, which this mirrors (:class:`~dragsdk.families.Layout`).
    """
    from .families import LAYOUTS, family_from_configs

    if name in _BUILTIN_RESOLUTION:
        return _BUILTIN_RESOLUTION[name]
    config = _peek_unet_config(name)
    if not isinstance(config, dict):
        return None
    try:
        family = family_from_configs(config)
    except Exception:
        return None
    fixed = LAYOUTS[family].default_resolution
    sample = config.get("sample_size")
    return fixed or (int(sample) * 8 if isinstance(sample, int) and sample > 0 else None)
