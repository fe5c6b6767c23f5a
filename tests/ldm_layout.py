"""A test-side writer of single-file checkpoints in the original (LDM / CompVis / SGM) key layout.

diffusers reads this layout (``from_single_file``) but cannot write it, so the tests build one from a bundle's
diffusers modules. The key conventions (the inverse of what diffusers' reader expects, diffusers
``loaders/single_file_utils.py``: ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``):

- UNet under ``model.diffusion_model.``: ``input_blocks.N`` (N = 0 is ``conv_in``; then per down block
  ``layers_per_block`` entries of ``[resnet, transformer]`` and one ``[downsampler .op]``), ``middle_block.0/1/2``
  (resnet, transformer, resnet), ``output_blocks.N`` (per up block ``layers_per_block + 1`` entries of ``[resnet,
  transformer, upsampler]``), ``time_embed.0/2``, ``label_emb.0.0/2`` (SDXL ``add_embedding``), ``out.0/2``.
  Resnets rename ``norm1 → in_layers.0``, ``conv1 → in_layers.2``, ``time_emb_proj → emb_layers.1``,
  ``norm2 → out_layers.0``, ``conv2 → out_layers.3``, ``conv_shortcut → skip_connection``; transformers keep their
  inner names.
- VAE under ``first_stage_model.``: ``encoder.down.I.block.J`` / ``.downsample``, ``mid.block_1/2``, ``mid.attn_1``
  (``norm``, 1×1-conv ``q k v proj_out``), ``decoder.up.I`` numbered from the lowest resolution, ``norm_out``,
  resnet ``conv_shortcut → nin_shortcut``.
- CLIP ViT-L (SD 1.x ``cond_stage_model.transformer.``, SDXL ``conditioner.embedders.0.transformer.``): the
  transformers keys under ``text_model.``.
- OpenCLIP (SD 2.x ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``): ``token_embedding``,
  ``positional_embedding``, ``transformer.resblocks.I`` with ``ln_1 / ln_2``, ``attn.in_proj_weight`` (q, k, v
  stacked on the output axis), ``attn.out_proj``, ``mlp.c_fc / c_proj``, ``ln_final``, ``text_projection`` as a
  ``(width, projection)`` matrix (``x @ P``, the transpose of the ``nn.Linear`` weight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(
    sd: dict[str, torch.Tensor], prefixes: dict[str, str], inner: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Move every key under a diffusers prefix to its LDM prefix, renaming the first inner component by ``inner``."""
    out = {}
    for key, value in sd.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                rest = key[len(old) :]
                for a, b in (inner or {}).items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                out[new + rest] = value
    return out


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's state dict in the LDM layout (keys without ``model.diffusion_model.``)."""
    sd, lpb = unet.state_dict(), int(unet.config.layers_per_block)
    plain = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    resnets = {"mid_block.resnets.0.": "middle_block.0.", "mid_block.resnets.1.": "middle_block.2."}
    n = 1
    for b, block in enumerate(unet.down_blocks):
        for j in range(lpb):
            resnets[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{n}.0."
            if getattr(block, "attentions", None):
                plain[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{n}.1."
            n += 1
        if block.downsamplers is not None:
            plain[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{n}.0.op."
            n += 1
    n = 0
    for b, block in enumerate(unet.up_blocks):
        attn = bool(getattr(block, "attentions", None))
        for j in range(lpb + 1):
            resnets[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{n}.0."
            if attn:
                plain[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{n}.1."
            if j == lpb and block.upsamplers is not None:
                plain[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{n}.{2 if attn else 1}.conv."
            n += 1
    out = {**_rename(sd, plain), **_rename(sd, resnets, _RESNET)}
    if len(out) != len(sd):
        raise AssertionError(f"{len(sd) - len(out)} UNet keys have no LDM name")
    return out


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """The VAE's state dict in the LDM layout (keys without ``first_stage_model.``); attention weights as 1×1 convs."""
    sd = vae.state_dict()
    plain = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    resnets: dict[str, str] = {}
    attn: dict[str, str] = {}
    n = len(vae.decoder.up_blocks)
    for part in ("encoder", "decoder"):
        plain.update(
            {
                f"{part}.conv_in.": f"{part}.conv_in.",
                f"{part}.conv_out.": f"{part}.conv_out.",
                f"{part}.conv_norm_out.": f"{part}.norm_out.",
            }
        )
        resnets.update({f"{part}.mid_block.resnets.{k}.": f"{part}.mid.block_{k + 1}." for k in (0, 1)})
        attn[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            resnets[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        if block.downsamplers is not None:
            plain[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
    for i, block in enumerate(vae.decoder.up_blocks):
        for j in range(len(block.resnets)):
            resnets[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if block.upsamplers is not None:
            plain[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    attn_sd = {k: v[:, :, None, None] if v.ndim == 2 else v for k, v in _rename(sd, attn, _VAE_ATTN).items()}
    out = {**_rename(sd, plain), **_rename(sd, resnets, {"conv_shortcut": "nin_shortcut"}), **attn_sd}
    if len(out) != len(sd):
        raise AssertionError(f"{len(sd) - len(out)} VAE keys have no LDM name")
    return out


def _text_keys(encoder: Any) -> dict[str, torch.Tensor]:
    """The encoder's state dict with every transformer-model key under ``text_model.`` (transformers ≥ 5.6 drops
    that level in ``CLIPTextModel``; ``CLIPTextModelWithProjection`` keeps it)."""
    return {
        k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
        for k, v in encoder.state_dict().items()
    }


def clip_to_ldm(encoder: Any) -> dict[str, torch.Tensor]:
    """A CLIP ViT-L text encoder as LDM's ``FrozenCLIPEmbedder`` holds it (keys under ``transformer.``)."""
    return {"transformer." + k: v for k, v in _text_keys(encoder).items()}


def open_clip_to_ldm(encoder: Any, projection: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A text encoder as OpenCLIP's ``TextTransformer`` holds it (keys under ``model.``). ``projection``: the
    ``(width, P)`` ``text_projection`` to store when the encoder has none (SD 2.x files carry one, unused)."""
    sd = _text_keys(encoder)
    out = {
        "model.token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "model.positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "model.ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "model.ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
    }
    proj = sd.pop("text_projection.weight", None)
    if proj is not None or projection is not None:
        out["model.text_projection"] = proj.T.contiguous() if proj is not None else projection
    sd.pop("text_model.embeddings.position_ids", None)
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(encoder.config.num_hidden_layers):
        pre, new = f"text_model.encoder.layers.{i}.", f"model.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[new + f"attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(pre + f"self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
        for key in [k for k in sd if k.startswith(pre)]:
            rest = key[len(pre) :]
            for a, b in names.items():
                rest = rest.replace(a + ".", b + ".", 1) if rest.startswith(a + ".") else rest
            out[new + rest] = sd.pop(key)
    if sd:
        raise AssertionError(f"text-encoder keys without an OpenCLIP name: {sorted(sd)[:4]}")
    return out


def ldm_state_dict(bundle: Any) -> dict[str, torch.Tensor]:
    """One LDM-layout state dict of a bundle: SD 1.x (CLIP under ``cond_stage_model.transformer``), SD 2.x (OpenCLIP
    under ``cond_stage_model.model``) or SDXL (``conditioner.embedders.0`` CLIP, ``.1`` OpenCLIP)."""
    out = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(bundle.unet).items()}
    out.update({"first_stage_model." + k: v for k, v in vae_to_ldm(bundle.vae).items()})
    if bundle.family == "sdxl":
        text = {"conditioner.embedders.0." + k: v for k, v in clip_to_ldm(bundle.text_encoder).items()}
        text.update(
            {"conditioner.embedders.1." + k: v for k, v in open_clip_to_ldm(bundle.text_encoder_2).items()}
        )
    elif bundle.family == "sd2":
        width = bundle.text_encoder.config.hidden_size
        proj = torch.randn(width, width, generator=torch.Generator().manual_seed(0))
        text = {"cond_stage_model." + k: v for k, v in open_clip_to_ldm(bundle.text_encoder, proj).items()}
    else:
        text = {"cond_stage_model." + k: v for k, v in clip_to_ldm(bundle.text_encoder).items()}
    out.update(text)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_single_file(bundle: Any, path: Path) -> Path:
    """Write the bundle as one checkpoint: ``.safetensors`` (flat) or ``.ckpt`` (``{"state_dict": ...}`` for
    ``torch.load(weights_only=True)``)."""
    sd = ldm_state_dict(bundle)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    return path
