"""Image prompt (IP-Adapter, Ye et al. arXiv 2308.06721) through diffusers' own IP-Adapter machinery.

The official DiffEditor code conditions cross-attention on image-prompt tokens of the input image at scale 0.1 at
sampling steps 10–19 (``model.py:25``, ``attn_proc.py:220-221``); the official RegionDrag code uses IP-Adapter-Plus
at scale 0.5, conditioned on the input image, at every UNet call (``cycle_sde.py:11-35``, ``drag.py:110-121``).
The weights are a separate download: :meth:`dragsdk.editor.Editor.load_ip_adapter` loads them; without them a mode runs
text-only and its report says so.

Loading uses diffusers: the weight file is read as ``IPAdapterMixin.load_ip_adapter`` reads it (``image_proj.*`` /
``ip_adapter.*`` keys), the image projection and the per-layer ``IPAdapterAttnProcessor2_0`` modules (``to_k_ip`` /
``to_v_ip``) are built by the UNet's own converters (``_convert_ip_adapter_image_proj_to_diffusers``,
``_convert_ip_adapter_attn_to_diffusers``), and the image encoder is a ``CLIPVisionModelWithProjection``. Unlike
``UNet2DConditionModel._load_ip_adapter_weights``, nothing is installed on the UNet (no ``encoder_hid_proj``, no
processors, no config change): a host's UNet is left as it was, and dragsdk's
:class:`~dragsdk.attention.KVProcessor` adds the image term in cross-attention itself, exactly as
``IPAdapterAttnProcessor2_0`` does: ``out = Attn(q, K_text, V_text) + scale · Attn(q, to_k_ip(c_img), to_v_ip(c_img))``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from .errors import ArgumentTypeError, ModelLoadError, ModelNotFoundError


@dataclass(frozen=True)
class ImagePromptPlan:
    """A mode's image-prompt setting (its official profile's).

    Attributes:
        scale: weight of the image term in cross-attention (DiffEditor 0.1, RegionDrag 0.5).
        start / end: sampling step indices ``start ≤ i < end`` that use it (``end=None``: to the last step).
        inversion: the inversion's UNet calls use it too (the official RegionDrag's forward passes take the same
            ``added_cond_kwargs``, ``utils/drag.py`` ``forward``).
        source: the image it encodes: ``input`` (the base image) or ``reference`` (the plan's first reference: the
            official appearance / paste image prompt, whose IP branch takes the last 64 of the 2×64 tokens, the
            reference's; ``attention_processor.py:190-194``, ``model.py:340-352``).
    """

    scale: float
    start: int = 0
    end: int | None = None
    inversion: bool = False
    source: Literal["input", "reference"] = "input"

    def active(self, step: int) -> bool:
        return self.start <= step and (self.end is None or step < self.end)

    def describe(self) -> str:
        if self.start == 0 and self.end is None:
            window = "every inversion and sampling step" if self.inversion else "every sampling step"
        else:
            window = f"sampling steps {self.start}–{self.end - 1 if self.end else 'end'}"
        return f"scale {self.scale:g} at {window}"


@dataclass
class ImagePromptState:
    """What the attention processors read during an edit (held by the :class:`~dragsdk.attention.AttentionController`).

    Attributes:
        tokens: ``(2, T, D)`` image-prompt tokens, rows [unconditional (zero image), conditional (the image)], in
            the CFG batch order; a batch-1 UNet call (guidance 1, roll-back) uses the conditional row only.
        scale: the image term's weight.
        processors: layer name (without ``.processor``) → diffusers ``IPAdapterAttnProcessor2_0`` holding
            ``to_k_ip[0]`` / ``to_v_ip[0]``.
        active: set by the sampler per UNet call (the plan's step window).
    """

    tokens: torch.Tensor
    scale: float
    processors: dict[str, Any]
    active: bool = False


class ImagePromptAdapter:
    """A loaded IP-Adapter: image encoder, image projection and per-layer ``to_k_ip`` / ``to_v_ip``.

    Build with :func:`load_ip_adapter` (dragsdk's own copy) or :func:`host_ip_adapter` (the one a host loaded into
    its UNet, shared). ``name`` is what reports show.
    """

    def __init__(
        self,
        name: str,
        image_encoder: Any,
        projection: Any,
        processors: dict[str, Any],
        scale: float | None = None,
        host: bool = False,
    ) -> None:
        from diffusers.models.embeddings import ImageProjection

        self.name = name
        self.host = host  # adopted from the host's UNet (host_ip_adapter): its modules are the host's
        self.image_encoder = image_encoder
        self.projection = projection
        self.processors = processors
        self.scale = scale
        # diffusers' rule (pipelines' encode_image): a plain ImageProjection takes the pooled image embedding,
        # the others (IP-Adapter-Plus resampler, ...) the penultimate hidden states.
        self.hidden_states = not isinstance(projection, ImageProjection)

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        from transformers import CLIPImageProcessor

        s = int(self.image_encoder.config.image_size)
        proc = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        p = self.image_encoder.parameters().__next__()
        return proc(images=image.convert("RGB"), return_tensors="pt").pixel_values.to(p.device, p.dtype)

    @torch.no_grad()
    def tokens(self, image: Image.Image, counter: Any = None) -> torch.Tensor:
        """``(2, T, D)`` image-prompt tokens: [zero image (unconditional), ``image``], as diffusers' pipelines build
        them (``encode_image``: zero-image hidden states for Plus, zero embeddings for the plain adapter).

        One image-encoder forward (batch 2 for Plus: zero image and ``image``; batch 1 for the plain adapter), added
        to ``counter.image_encoder`` when a :class:`~dragsdk.inversion.UNetCounter` is given."""
        pixels = self._pixels(image)
        if counter is not None:
            counter.image_encoder += 1
        if self.hidden_states:
            h = self.image_encoder(torch.cat([torch.zeros_like(pixels), pixels]), output_hidden_states=True)
            emb = h.hidden_states[-2]
        else:
            e = self.image_encoder(pixels).image_embeds
            emb = torch.cat([torch.zeros_like(e), e])
        return self.projection(emb)

    def state(
        self, image: Image.Image, scale: float, device: torch.device, dtype: torch.dtype, counter: Any = None
    ) -> ImagePromptState:
        """The tokens of ``image`` (:meth:`tokens`, counted in ``counter``) on ``device`` / ``dtype`` at ``scale``."""
        tokens = self.tokens(image, counter).to(device, dtype)
        return ImagePromptState(tokens, scale, self.processors)


OFFICIAL_IMAGE_TOKENS = 64
"""Image-prompt tokens per image in the official DragonDiffusion code (its IP-Adapter-Plus resampler's
``num_tokens``, ``src/models/dragondiff.py:40``): the zero tokens' count when no adapter is loaded."""


def context_image_tokens(
    adapter: ImagePromptAdapter | None,
    image: Image.Image,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
    counter: Any = None,
) -> torch.Tensor:
    """The base image's image-prompt tokens that the official appearance / paste leave in the **text**
    cross-attention's context, rows [unconditional, conditional] as the CFG batch.

    The official ``run_appearance`` / ``run_paste`` concatenate the base and reference tokens
    (``src/demo/model.py:154-155, 355-356``: ``emb_im = cat([emb_im_base, emb_im_replace], dim=1)``, the
    unconditional ones likewise), ``Sampler.edit`` appends them to the unconditional and conditional text context
    (``src/models/Sampler.py:48-52``; the roll-back's context, ``:141``, is the conditional row), and
    ``IPAttnProcessor`` splits off only the last ``num_tokens`` = 64 (``src/unet/attention_processor.py:190-194``):
    the reference's go to the IP branch, the base image's stay in the text keys and values at every sampling call.

    Args:
        adapter: the loaded IP-Adapter, or None.
        image: the base image (encoded by ``adapter``: one image-encoder forward, counted in ``counter``).
        width: the text embedding width ``D`` (the zero tokens' width).
        device / dtype: where the tokens go.
        counter: a :class:`~dragsdk.inversion.UNetCounter` (its ``image_encoder``), or None.

    Returns:
        ``(2, T, D)``: with an adapter, its tokens of ``image`` (:meth:`ImagePromptAdapter.tokens`: zero image,
        ``image``); without one, zeros with ``T`` = :data:`OFFICIAL_IMAGE_TOKENS` (what the official code computes
        with an image-prompt model whose tokens are zero).
    """
    if adapter is None:
        return torch.zeros(2, OFFICIAL_IMAGE_TOKENS, width, device=device, dtype=dtype)
    return adapter.tokens(image, counter).to(device, dtype)


def append_context_tokens(cond: torch.Tensor, tokens: torch.Tensor, pooled_row: bool = False) -> torch.Tensor:
    """``cond`` ``(B, L, D)`` with ``tokens`` ``(B, T, D)`` appended on the token axis: ``(B, L + T, D)``.

    ``pooled_row``: ``cond`` ends with SDXL's pooled-embedding row (:mod:`dragsdk.families`), which stays last
    so the UNet wrapper still finds it; the tokens go before it.

    Raises:
        ValueError: batch or width differ.
    """
    if tokens.shape[0] != cond.shape[0] or tokens.shape[-1] != cond.shape[-1]:
        raise ValueError(
            f"image tokens {tuple(tokens.shape)} do not fit the text context {tuple(cond.shape)} "
            "(batch and width must match)"
        )
    tokens = tokens.to(cond.device, cond.dtype)
    if pooled_row:
        return torch.cat([cond[:, :-1], tokens, cond[:, -1:]], dim=1)
    return torch.cat([cond, tokens], dim=1)


MAX_IP_ADAPTER_SCALE = 10.0
"""The largest IP-Adapter scale accepted; the official ones are 0.1 (DiffEditor) and 0.5 (RegionDrag), diffusers'
default 1.0."""


def check_ip_adapter_scale(scale: object) -> float | None:
    """``scale`` as a float (None keeps each mode's official scale).

    Raises:
        SpecError: (field ``scale``) not a number, NaN, infinite, negative or above :data:`MAX_IP_ADAPTER_SCALE`.
    """
    import math

    from .errors import SpecError

    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise SpecError("scale", f"the IP-Adapter scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or not 0.0 <= scale <= MAX_IP_ADAPTER_SCALE:
        raise SpecError(
            "scale", f"the IP-Adapter scale must be in [0, {MAX_IP_ADAPTER_SCALE:g}], got {scale!r}"
        )
    return float(scale)


def load_ip_adapter(
    unet: Any,
    folder_or_id: str | os.PathLike[str],
    weight_name: str,
    subfolder: str = "",
    image_encoder: str | os.PathLike[str] | Any | None = None,
    scale: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ImagePromptAdapter:
    """Load an IP-Adapter with diffusers' loader pieces, without installing anything on ``unet``.

    Args:
        unet: the model's ``UNet2DConditionModel`` (its layer layout and ``cross_attention_dim`` shape the
            processors; it is only read).
        folder_or_id / subfolder / weight_name: where the weights are (hub id or local folder; ``.safetensors``
            with ``image_proj.*`` / ``ip_adapter.*`` keys, or a ``.bin`` holding ``{"image_proj", "ip_adapter"}``),
            as ``IPAdapterMixin.load_ip_adapter``.
        image_encoder: a ``CLIPVisionModelWithProjection``, or its folder / hub id; ``None`` = the
            ``image_encoder`` folder next to the weights (``<folder>/<subfolder>/image_encoder``, diffusers' default).
        scale: overrides every mode's official scale; ``None`` keeps the mode's.

    Raises:
        SpecError: (field ``scale``) not None and not a finite number in [0, :data:`MAX_IP_ADAPTER_SCALE`].
        ArgumentTypeError: (``image_encoder``) neither None, a path / hub id nor a ``CLIPVisionModelWithProjection``.
        ModelNotFoundError: the weight file or the image encoder is absent.
        ModelLoadError: the file cannot be read (corrupt), lacks ``image_proj`` / ``ip_adapter``, or its shapes do
            not match the UNet.
    """
    from diffusers.models.model_loading_utils import load_state_dict
    from diffusers.utils import _get_model_file
    from safetensors import safe_open
    from transformers import CLIPVisionModelWithProjection

    scale = check_ip_adapter_scale(scale)
    if image_encoder is not None and not isinstance(
        image_encoder, (str, os.PathLike, CLIPVisionModelWithProjection)
    ):
        raise ArgumentTypeError(
            "image_encoder",
            "None, a folder / hub id, or a transformers CLIPVisionModelWithProjection",
            image_encoder,
        )
    try:
        model_file = _get_model_file(str(folder_or_id), weights_name=weight_name, subfolder=subfolder or None)
    except OSError as e:
        raise ModelNotFoundError(
            f"IP-Adapter weights {weight_name!r} not found in {str(folder_or_id)!r}: {e}"
        ) from e
    try:
        if weight_name.endswith(".safetensors"):
            sd: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(model_file, framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    head, _, rest = key.partition(".")
                    if head in sd:
                        sd[head][rest] = f.get_tensor(key)
        else:
            sd = load_state_dict(model_file)
    except Exception as e:  # safetensors' SafetensorError, a damaged pickle or zip: a corrupt file
        raise ModelLoadError(
            f"IP-Adapter file {model_file} cannot be read (corrupt or not a weights file): "
            f"{' '.join(str(e).split())[:300] or type(e).__name__}"
        ) from e
    if not sd.get("image_proj") or not sd.get("ip_adapter"):
        raise ModelLoadError(f"{model_file}: an IP-Adapter file needs 'image_proj' and 'ip_adapter' weights")
    try:
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(
            sd["image_proj"], low_cpu_mem_usage=False
        )
        procs = unet._convert_ip_adapter_attn_to_diffusers([sd], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError) as e:
        raise ModelLoadError(f"{model_file}: IP-Adapter weights do not match the UNet: {e}") from e
    processors = {k[: -len(".processor")]: p for k, p in procs.items() if hasattr(p, "to_k_ip")}

    if image_encoder is None or isinstance(image_encoder, (str, os.PathLike)):
        where = str(image_encoder) if image_encoder is not None else str(folder_or_id)
        sub = None if image_encoder is not None else Path(subfolder or "", "image_encoder").as_posix()
        try:
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(where, subfolder=sub)
        except OSError as e:
            raise ModelNotFoundError(
                f"IP-Adapter image encoder not found at {where!r} (subfolder {sub!r}): {e}"
            ) from e
    p = next(unet.parameters())
    device, dtype = device or p.device, dtype or p.dtype
    image_encoder = image_encoder.to(device, dtype).eval().requires_grad_(False)
    projection = projection.to(device, dtype).eval().requires_grad_(False)
    for proc in processors.values():
        proc.to(device, dtype).requires_grad_(False)
    name = Path(str(folder_or_id), subfolder or "", weight_name).as_posix()
    return ImagePromptAdapter(name, image_encoder, projection, processors, scale)


def host_ip_adapter(unet: Any, image_encoder: Any, name: str | None = None) -> ImagePromptAdapter | None:
    """The IP-Adapter a host loaded into ``unet`` with diffusers' ``load_ip_adapter``, adopted as dragsdk's image
    prompt: its modules are shared, not copied, and nothing on the UNet is changed.

    diffusers' loader installs ``IPAdapterAttnProcessor*`` processors (``to_k_ip`` / ``to_v_ip``) on the
    cross-attention layers and the image projection as ``unet.encoder_hid_proj``. An edit replaces every processor
    for its duration, so it reproduces the image term itself from those modules (:class:`ImagePromptState`) instead
    of bypassing it, and the host's processors come back afterwards. The scale is each mode's official one (as
    :func:`load_ip_adapter` with ``scale=None``), not the host's ``set_ip_adapter_scale``.

    Args:
        unet: the host's ``UNet2DConditionModel``.
        image_encoder: the host pipeline's ``CLIPVisionModelWithProjection`` (``pipe.image_encoder``).
        name: what reports show (default: ``host IP-Adapter (<encoder's name_or_path>)``).

    Returns:
        The adapter, or None when ``unet`` carries no IP-Adapter processors.

    Raises:
        ModelLoadError: more than one IP-Adapter is loaded (dragsdk composes one), the UNet has no single image
            projection, or ``image_encoder`` is None (loaded with ``image_encoder_folder=None``).
    """
    procs = {k[: -len(".processor")]: p for k, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    if not procs:
        return None
    loaded = max(len(p.to_k_ip) for p in procs.values())
    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if loaded != 1 or layers is None or len(layers) != 1:
        raise ModelLoadError(
            f"the host UNet carries {loaded} IP-Adapters; dragsdk composes exactly one "
            "(pipe.unload_ip_adapter() and load one)"
        )
    if image_encoder is None:
        raise ModelLoadError(
            "the host UNet carries an IP-Adapter but no image encoder was given (pipe.image_encoder "
            "is None: loaded with image_encoder_folder=None?); dragsdk encodes the image itself"
        )
    if not isinstance(image_encoder, torch.nn.Module) or not callable(
        getattr(image_encoder, "forward", None)
    ):
        raise ArgumentTypeError(
            "image_encoder", "the host's CLIPVisionModelWithProjection (pipe.image_encoder)", image_encoder
        )
    label = (
        name
        or f"host IP-Adapter ({getattr(image_encoder, 'name_or_path', '') or type(image_encoder).__name__})"
    )
    return ImagePromptAdapter(label, image_encoder, layers[0], procs, None, host=True)


def host_adapter_installed(unet: Any, adapter: ImagePromptAdapter) -> bool:
    """Whether the host still has exactly ``adapter``'s modules installed on ``unet`` (it may have unloaded or
    replaced the IP-Adapter since it was adopted)."""
    current = unet.attn_processors
    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    return (
        layers is not None
        and len(layers) == 1
        and layers[0] is adapter.projection
        and all(current.get(f"{k}.processor") is p for k, p in adapter.processors.items())
    )


@contextmanager
def host_adapter_detached(unet: Any, adapter: ImagePromptAdapter | None) -> Iterator[None]:
    """For the duration, the host IP-Adapter ``adapter`` (adopted by :func:`host_ip_adapter`) is taken off ``unet``:
    its cross-attention processors are replaced by plain attention and its image projection
    (``unet.encoder_hid_proj``, ``encoder_hid_dim_type == "ip_image_proj"``) is detached, since diffusers' UNet would
    otherwise demand ``added_cond_kwargs["image_embeds"]`` on every call; dragsdk's processors add the image term
    themselves. Both are put back on exit, even on error. A no-op for ``None`` or dragsdk's own adapter."""
    if adapter is None or not adapter.host:
        yield
        return
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = dict(unet.attn_processors)
    proj = unet.encoder_hid_proj
    unet.set_attn_processor({k: AttnProcessor2_0() if hasattr(p, "to_k_ip") else p for k, p in procs.items()})
    unet.encoder_hid_proj = None
    try:
        yield
    finally:
        unet.encoder_hid_proj = proj
        unet.set_attn_processor(dict(procs))
