"""Model families: what differs between SD 1.x, SD 2.x and SDXL, in one adapter per family.

A :class:`ModelAdapter` owns

- **prompt encoding**: SD 1.x and 2.x take the text encoder's last hidden state (``text_encoder(ids)[0]``, as
  diffusers' ``StableDiffusionPipeline.encode_prompt`` does; an SD 2.x checkpoint in diffusers layout holds the
  OpenCLIP ViT-H encoder with 23 of its 24 layers, so this *is* OpenCLIP's penultimate layer, as in the original
  ``FrozenOpenCLIPEmbedder(layer="penultimate")``). SDXL concatenates the penultimate hidden states of its two
  encoders (CLIP ViT-L and OpenCLIP bigG) on the channel axis and takes the pooled, projected embedding of the
  second (diffusers ``StableDiffusionXLPipeline.encode_prompt``); an empty negative prompt is all zeros when the
  pipeline's ``force_zeros_for_empty_prompt`` is set, as there.
- **the conditioning tensor**: every caller passes one ``(B, L, D)`` tensor as ``encoder_hidden_states`` (batches are
  concatenated, expanded and sliced on axis 0 as before). For SDXL it is ``(B, 77 + 1, D)``: the last row carries the
  pooled embedding in its first ``P`` channels; :class:`EpsilonUNet` splits it off and passes ``text_embeds`` and
  ``time_ids`` (``(H, W, 0, 0, H, W)`` of the working canvas in pixels, diffusers' default micro-conditioning) as
  ``added_cond_kwargs``.
- **the prediction type**: the UNet output is converted to ε in one place (:meth:`ModelAdapter.to_epsilon`, used by
  :class:`EpsilonUNet`, which every inversion, guidance and sampling call goes through): ``epsilon`` as is;
  ``v_prediction`` ``ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t``; ``sample`` ``ε = (z_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t)`` (Salimans & Ho,
  arXiv 2202.00512 §4 and App. D, with ``z_t = √ᾱ·x₀ + √(1−ᾱ)·ε`` and ``v = √ᾱ·ε − √(1−ᾱ)·x₀``; diffusers
  ``DDIMScheduler.step``). CFG commutes with the conversion (it is affine in the output with the same ``z_t``).
- **the layers**: which decoder blocks give the energy features and which self-attention layers record / inject
  K/V, from the single table :data:`LAYOUTS`.
- **the default working resolution** (pixels of the longer-side-equivalent square).

The family is found from the folder's ``model_index.json`` and configs (:func:`detect_family`), never from a name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class Layout:
    """Where a family's UNet gives guidance features and K/V.

    Attributes:
        feature_blocks: indices of ``unet.up_blocks`` whose outputs are the energy features.
        kv_blocks: indices of ``unet.up_blocks`` whose self-attention layers (``attn1``) record / inject K/V.
        default_resolution: working resolution (pixels) when a spec does not set one; None: the UNet's
            ``sample_size`` × the VAE factor (the training resolution: 768 for SD 2.1-768, 512 for 2.x-base,
            1024 for SDXL).
    """

    feature_blocks: tuple[int, ...]
    kv_blocks: tuple[int, ...]
    default_resolution: int | None = None


LAYOUTS: dict[str, Layout] = {
    # SD 1.x / 2.x (4 decoder stages, 64² latent at 512 px): features are the outputs of up_blocks[1] (1280 ch at
    # latent/2) and up_blocks[2] (640 ch at latent/1), DragonDiffusion's "2nd and 3rd decoder layers" (code
    # up_ft_index=[1, 2]); K/V in every decoder self-attention layer, up_blocks[1..3] (latent/4, /2, /1).
    "sd1": Layout(feature_blocks=(1, 2), kv_blocks=(1, 2, 3), default_resolution=768),
    "sd2": Layout(feature_blocks=(1, 2), kv_blocks=(1, 2, 3)),
    # SDXL (3 decoder stages, no attention in the first encoder / last decoder stage): up_blocks[0] (1280 ch, output
    # at latent/2) and up_blocks[1] (640 ch, output at latent/1) give features at the same resolutions and widths as
    # SD 1.5's choice; K/V in every decoder self-attention layer, up_blocks[0..1] (latent/4 and /2; 30 + 6 layers in
    # SDXL base): as in SD 1.5, all of the decoder's self-attention.
    "sdxl": Layout(feature_blocks=(0, 1), kv_blocks=(0, 1)),
}

_SD_PIPELINES = {
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPix2PixZeroPipeline",
    "StableDiffusionDiffEditPipeline",
}
_SDXL_PIPELINES = {
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
}
_TRANSFORMER_HINT = (
    "it is a transformer (DiT / MMDiT) model without a UNet decoder; dragsdk's features and K/V layers are UNet "
    "decoder blocks (supported: SD 1.x, SD 2.x, SDXL in diffusers layout)"
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} exists but cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def family_from_configs(unet_config: dict[str, Any], pipeline_class: str | None = None) -> str:
    """The family of a UNet config: ``sdxl`` when it has SDXL's ``text_time`` micro-conditioning, else ``sd2`` when
    its transformers use linear projections (OpenCLIP-era SD 2.x), else ``sd1``.

    Raises:
        ModelLoadError: a UNet that is none of them (another conditioning, or not 4 latent channels in and out).
    """
    add = unet_config.get("addition_embed_type")
    if unet_config.get("in_channels", 4) != 4 or unet_config.get("out_channels", 4) != 4:
        raise ModelLoadError(
            f"the UNet has {unet_config.get('in_channels')} input / {unet_config.get('out_channels')} output "
            "channels; dragsdk edits with text-to-image UNets of 4 latent channels (inpainting / depth UNets are "
            "not supported)"
        )
    if add == "text_time":
        return "sdxl"
    if add is not None or unet_config.get("class_embed_type") is not None:
        raise ModelLoadError(
            f"the UNet has addition_embed_type={add!r}, class_embed_type="
            f"{unet_config.get('class_embed_type')!r}; supported: SD 1.x, SD 2.x, SDXL"
        )
    if pipeline_class in _SDXL_PIPELINES:
        raise ModelLoadError(
            f"model_index.json says {pipeline_class} but the UNet has no text_time conditioning"
        )
    return "sd2" if unet_config.get("use_linear_projection") else "sd1"


def check_index(
    index: dict[str, Any], where: str, has_transformer: bool = False, has_text_encoder: bool = True
) -> None:
    """Refuse a ``model_index.json`` of an unsupported pipeline or of the SDXL refiner.

    Raises:
        ModelLoadError: the pipeline class is not an SD 1.x / 2.x / SDXL one (named, with the reason), or an SDXL
            pipeline has no ``text_encoder``.
    """
    cls = index.get("_class_name")
    if cls is not None and cls not in _SD_PIPELINES | _SDXL_PIPELINES:
        why = (
            _TRANSFORMER_HINT
            if "transformer" in index or has_transformer
            else (
                "supported pipelines are StableDiffusionPipeline (SD 1.x / 2.x) and StableDiffusionXLPipeline"
            )
        )
        raise ModelLoadError(f"{where} holds a {cls}: not supported: {why}")
    if cls in _SDXL_PIPELINES and (index.get("text_encoder") in (None, [None, None]) or not has_text_encoder):
        raise ModelLoadError(
            f"{where} holds an SDXL {cls} without text_encoder (the SDXL refiner); dragsdk needs "
            "a base model with both text encoders (e.g. stable-diffusion-xl-base-1.0)"
        )


def detect_family(folder: str | Path) -> str:
    """The family of a diffusers folder, from ``model_index.json`` (pipeline class, components) and the UNet config.

    Raises:
        ModelLoadError: an unsupported pipeline (SD3, FLUX, …: named with the reason), an SDXL refiner (no
            ``text_encoder``), a folder without ``unet/config.json``, or an unsupported UNet.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = _read_json(index_path) if index_path.is_file() else {}
    check_index(
        index,
        str(folder),
        has_transformer=(folder / "transformer").is_dir(),
        has_text_encoder=(folder / "text_encoder").is_dir(),
    )
    cls = index.get("_class_name")
    unet_cfg = folder / "unet" / "config.json"
    if not unet_cfg.is_file():
        if (folder / "transformer").is_dir():
            raise ModelLoadError(
                f"{folder} has transformer/ and no unet/: not supported: {_TRANSFORMER_HINT}"
            )
        raise ModelLoadError(
            f"{folder} exists but has no unet/config.json; expected a diffusers layout with unet/, "
            "vae/, text_encoder/, tokenizer/ and scheduler/ subfolders"
        )
    return family_from_configs(_read_json(unet_cfg), cls)


def check_prediction_type(scheduler_config: Any) -> str:
    """The scheduler config's ``prediction_type`` (default ``epsilon``).

    Raises:
        ModelLoadError: another prediction type (named), or a zero-terminal-SNR schedule (DDIM inversion needs
            ᾱ_T > 0).
    """
    pred = dict(scheduler_config).get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"the scheduler's prediction_type is {pred!r}; supported: {', '.join(PREDICTION_TYPES)}"
        )
    if dict(scheduler_config).get("rescale_betas_zero_snr"):
        raise ModelLoadError(
            "the scheduler has rescale_betas_zero_snr=True (ᾱ_T = 0): DDIM inversion cannot reach "
            "its final timestep; use a schedule without zero terminal SNR"
        )
    return str(pred)


def ddim_from_config(scheduler_config: Any, name: str | None = None) -> Any:
    """A fresh ``DDIMScheduler`` with the same betas, timestep spacing and prediction type as any diffusers scheduler
    config (DDIM, PNDM, Euler, DPM-Solver, …); ``clip_sample`` and ``set_alpha_to_one`` off (DDIM inversion).
    ``name``: the scheduler's class name, for the error message.

    Raises:
        ModelLoadError: the config has no β schedule (``beta_schedule`` or ``trained_betas``) and
            ``num_train_timesteps``, e.g. a flow-matching scheduler: DDIM inversion cannot be built from it.
    """
    from diffusers import DDIMScheduler

    raw = dict(scheduler_config)
    if "num_train_timesteps" not in raw or not (
        "beta_schedule" in raw or raw.get("trained_betas") is not None
    ):
        raise ModelLoadError(
            f"scheduler {name or raw.get('_class_name', '(unnamed)')} has no beta schedule "
            "(beta_schedule / trained_betas and num_train_timesteps in its config): a DDIM scheduler "
            "for inversion cannot be built from it"
        )
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    return DDIMScheduler.from_config({**cfg, "clip_sample": False, "set_alpha_to_one": False})


class ModelAdapter:
    """What one family does differently; built from a :class:`~dragsdk.models.ModelBundle`'s components.

    Args:
        family: ``sd1``, ``sd2`` or ``sdxl``.
        bundle: the model (unet, vae, text encoder(s), tokenizer(s), scheduler).

    Raises:
        ModelLoadError: the UNet has no up block the layout names, or no self-attention layer in the K/V blocks; the
            scheduler's prediction type is unsupported; an SDXL model lacks its second text encoder.
    """

    def __init__(self, family: str, bundle: Any) -> None:
        if family not in LAYOUTS:
            raise ModelLoadError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
        self.family = family
        self.layout = LAYOUTS[family]
        self.bundle = bundle
        self.prediction_type = check_prediction_type(bundle.scheduler.config)
        unet = bundle.unet
        n_up = len(unet.up_blocks)
        types = [type(b).__name__ for b in unet.up_blocks]
        if max(self.layout.feature_blocks + self.layout.kv_blocks) >= n_up:
            raise ModelLoadError(
                f"the UNet's decoder has {n_up} up blocks {types}; the {family} layout takes features from up_blocks"
                f"{list(self.layout.feature_blocks)} and K/V from up_blocks{list(self.layout.kv_blocks)}"
            )
        if not self.bank_layers():
            raise ModelLoadError(
                f"the UNet's up_blocks{list(self.layout.kv_blocks)} ({types}) have no self-attention "
                f"layer to record / inject K/V ({family} layout)"
            )
        if family == "sdxl":
            if (
                getattr(bundle, "text_encoder_2", None) is None
                or getattr(bundle, "tokenizer_2", None) is None
            ):
                raise ModelLoadError("an SDXL UNet needs text_encoder_2 and tokenizer_2 (found none)")
            self.pooled_dim = int(bundle.text_encoder_2.config.projection_dim)
            width = int(unet.config.cross_attention_dim)
            if self.pooled_dim > width:
                raise ModelLoadError(
                    f"the pooled embedding ({self.pooled_dim}) is wider than the text embedding "
                    f"({width}); cannot pack it as one conditioning row"
                )

    # -- layers -----------------------------------------------------------------------------------------------
    @property
    def feature_blocks(self) -> tuple[int, ...]:
        """Decoder block indices whose outputs are the energy features (:data:`LAYOUTS`)."""
        return self.layout.feature_blocks

    def bank_layers(self) -> list[str]:
        """Names (without ``.processor``) of the self-attention layers that record / inject K/V (:data:`LAYOUTS`)."""
        prefixes = tuple(f"up_blocks.{i}." for i in self.layout.kv_blocks)
        return [
            k[: -len(".processor")]
            for k in self.bundle.unet.attn_processors
            if k.startswith(prefixes) and k.endswith(".attn1.processor")
        ]

    @property
    def default_resolution(self) -> int:
        """Working resolution in pixels when a spec does not set one."""
        if self.layout.default_resolution is not None:
            return self.layout.default_resolution
        return int(self.bundle.unet.config.sample_size) * self.bundle.vae_scale_factor

    # -- prompts ----------------------------------------------------------------------------------------------
    def _ids(self, tokenizer: Any, prompt: str) -> torch.Tensor:
        n = int(tokenizer.model_max_length)
        n = min(n, 77) if n < 10**6 else 77
        return tokenizer(
            prompt, padding="max_length", max_length=n, truncation=True, return_tensors="pt"
        ).input_ids.to(self.bundle.device)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative: bool = False) -> torch.Tensor:
        """The conditioning tensor of one prompt: ``(1, 77, D)`` (SD 1.x / 2.x) or ``(1, 78, D)`` (SDXL, the last
        row holding the pooled embedding; see the module docstring), in the UNet's dtype.

        ``negative``: the prompt is a CFG negative prompt (SDXL: an empty one is zeros when the model's
        ``force_zeros_for_empty_prompt`` is set, diffusers' default for SDXL base).
        """
        b = self.bundle
        if self.family != "sdxl":
            return b.text_encoder(self._ids(b.tokenizer, prompt))[0].to(b.dtype)
        if negative and prompt == "" and getattr(b, "force_zeros_for_empty_prompt", True):
            width = int(b.unet.config.cross_attention_dim)
            return torch.zeros((1, 78, width), device=b.device, dtype=b.dtype)
        hidden = []
        pooled = None
        for tok, enc in ((b.tokenizer, b.text_encoder), (b.tokenizer_2, b.text_encoder_2)):
            out = enc(self._ids(tok, prompt), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of the projection model (the second encoder's)
        assert pooled is not None
        emb = torch.cat(hidden, dim=-1)
        row = torch.zeros((1, 1, emb.shape[-1]), device=emb.device, dtype=emb.dtype)
        row[0, 0, : pooled.shape[-1]] = pooled[0]
        return torch.cat([emb, row], dim=1).to(b.dtype)

    def unpack(
        self, cond: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Split a conditioning tensor into ``encoder_hidden_states`` and SDXL's ``added_cond_kwargs`` for a
        ``(B, 4, h, w)`` sample (time ids of an ``8h × 8w`` pixel canvas)."""
        b = sample.shape[0]
        if cond.shape[0] != b:  # one conditioning row for a batch of samples (a view, no copy)
            cond = cond.expand(b, -1, -1)
        if self.family != "sdxl":
            return cond, None
        f = self.bundle.vae_scale_factor
        h, w = sample.shape[-2] * f, sample.shape[-1] * f
        ids = torch.tensor([[h, w, 0, 0, h, w]], device=sample.device, dtype=cond.dtype).expand(b, -1)
        return cond[:, :-1], {"text_embeds": cond[:, -1, : self.pooled_dim], "time_ids": ids}

    # -- prediction type --------------------------------------------------------------------------------------
    def to_epsilon(self, output: torch.Tensor, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """ε from the UNet output at ``timestep`` (formulas in the module docstring)."""
        if self.prediction_type == "epsilon":
            return output
        t = int(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
        a = float(self.bundle.scheduler.alphas_cumprod[t])
        if self.prediction_type == "v_prediction":
            return a**0.5 * output + (1 - a) ** 0.5 * sample
        return (sample - a**0.5 * output) / (1 - a) ** 0.5


class EpsilonUNet:
    """The UNet callable every edit uses: diffusers' signature ``(sample, timestep, encoder_hidden_states=cond,
    return_dict=False) → (ε,)``, whatever the family and prediction type.

    Args:
        unet: the (possibly backend-prepared) UNet with diffusers' signature.
        adapter: the model's :class:`ModelAdapter` (unpacks the conditioning, converts the output to ε).
    """

    def __init__(self, unet: Any, adapter: ModelAdapter) -> None:
        self.unet = unet
        self.adapter = adapter

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        cond, added = self.adapter.unpack(encoder_hidden_states, sample)
        if added is not None:
            kwargs["added_cond_kwargs"] = added
        out = self.unet(sample, timestep, encoder_hidden_states=cond, return_dict=False, **kwargs)[0]
        return (self.adapter.to_epsilon(out, sample, timestep),)
