"""Attention processors that record and inject self-attention K/V (cross-branch self-attention).

One :class:`KVProcessor` is installed on every attention layer of the UNet; all of them share one
:class:`AttentionController` that holds the per-step state (mode, step index, the K/V bank) *outside* the
layers, so nothing compiled depends on it. The attention op itself is the backend's
(:meth:`dragsdk.backends.base.Backend.attention`).

Bank layers default to the decoder self-attention layers ``up_blocks.{1,2,3}.attentions.*.attn1`` (9 in SD
1.5; DragonDiffusion arXiv 2307.02421 §3.3; official ``src/unet/attention_processor.py:101-106``). Bank
entries are the ``to_k`` / ``to_v`` projections before the head split, ``(B_bank, N, C)``, recorded at
inversion step ``i`` for use at sampling step ``i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from dragsdk.kernels.oracle import KVSource

if TYPE_CHECKING:
    from dragsdk.image_prompt import ImagePromptState

AttentionFn = Callable[[torch.Tensor, Sequence[KVSource], "float | None"], torch.Tensor]
KVMode = Literal["concat", "replace", "composite"]


def decoder_self_attention_layers(unet: Any) -> list[str]:
    """Names (without ``.processor``) of the decoder self-attention layers of a diffusers UNet."""
    return [
        k[: -len(".processor")]
        for k in unet.attn_processors
        if k.startswith("up_blocks.") and ".attn1." in k + "." and k.endswith("attn1.processor")
    ]


def self_attention_layers(unet: Any, forward_order: bool = False) -> list[str]:
    """Names (without ``.processor``) of every self-attention layer (``attn1``) of a diffusers UNet: encoder, mid
    block and decoder (16 in SD 1.5; RegionDrag swaps K/V in all of them, official
    ``region_utils/drag.py:159-179``). ``forward_order``: in the order a forward calls them (encoder, mid block,
    decoder; diffusers registers ``up_blocks`` before ``mid_block``), the order MasaCtrl's layer index counts
    (DragDiffusion ``utils/attn_utils.py:24-31,71``)."""
    names = [k[: -len(".processor")] for k in unet.attn_processors if k.endswith(".attn1.processor")]
    if forward_order:
        rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
        names.sort(key=lambda n: rank.get(n.split(".")[0], 3))  # stable: keeps the order inside each part
    return names


class KVBank:
    """K/V recorded during inversion: ``bank[step][layer] = (k, v)``, each ``(B_bank, N, C)``.

    Args:
        device: where entries are kept (default: where they were computed). Keeping the bank on the GPU avoids a
            host↔device copy per layer per step. The official DragonDiffusion/DiffEditor code keeps it on the
            CPU (``src/unet/attention_processor.py:101-106``); the official RegionDrag keeps it on the device
            (its forward hooks append the ``to_k`` / ``to_v`` outputs where they were computed,
            ``region_utils/drag.py:159-162``).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._data: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def put(self, step: int, layer: str, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.device is not None:
            k, v = k.to(self.device), v.to(self.device)
        self._data.setdefault(step, {})[layer] = (k.detach(), v.detach())

    def get(self, step: int, layer: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._data[step][layer]
        return k.to(device, non_blocking=True), v.to(device, non_blocking=True)

    def has(self, step: int) -> bool:
        return step in self._data

    @property
    def steps(self) -> list[int]:
        return sorted(self._data)

    def layers(self, step: int) -> frozenset[str]:
        """The layers with an entry at ``step`` (empty when the step was not recorded)."""
        return frozenset(self._data.get(step, ()))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._data.values() for kv in s.values() for t in kv)


@dataclass
class KVInjection:
    """How the generation branch uses the bank at the current step.

    Attributes:
        mode: ``concat`` (own K/V plus bank entry ``banks[0]``), ``replace`` (bank entry only) or ``composite``
            (several bank entries, each restricted to tokens by a mask).
        banks: batch indices into the bank's ``B_bank`` axis (0 = the base image; 1.. = references).
        token_masks: for ``composite``, one function per bank mapping the layer's token grid ``(h, w)`` to a
            ``(h·w,)`` bool mask of the keys taken from that bank.
    """

    mode: KVMode
    banks: tuple[int, ...] = (0,)
    token_masks: tuple[Callable[[int, int], torch.Tensor], ...] = ()


@dataclass
class AttentionController:
    """Per-step state shared by every :class:`KVProcessor`.

    ``mode``: ``plain`` (ordinary attention), ``record`` (store K/V of bank layers into ``bank`` at ``step``),
    ``inject`` (use ``injection`` at bank layers). ``image_prompt``: image-prompt tokens added in cross-attention
    while its ``active`` flag is set (:mod:`dragsdk.image_prompt`).
    """

    attend: AttentionFn
    bank_layers: frozenset[str]
    latent_size: tuple[int, int] = (0, 0)
    mode: Literal["plain", "record", "inject"] = "plain"
    step: int = 0
    bank: KVBank = field(default_factory=KVBank)
    injection: KVInjection | None = None
    record_steps: frozenset[int] | None = None
    image_prompt: ImagePromptState | None = None

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        """``(h, w)`` of a layer's token grid from its token count and the latent size ``(w, h)``."""
        w, h = self.latent_size
        for f in (1, 2, 4, 8, 16):
            if (h // f) * (w // f) == n_tokens:
                return h // f, w // f
        raise ValueError(f"cannot map {n_tokens} tokens onto the latent grid {w}×{h}")


def classic_attention(
    q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
) -> torch.Tensor:
    """Attention over the union of ``sources`` computed as diffusers' ``AttnProcessor`` computes it: the heads folded
    into the batch, scores ``baddbmm(0, q, kᵀ, β=0, α=scale)``, hidden keys at −inf, softmax over keys in ``q``'s
    dtype, ``bmm`` with V (``Attention.get_attention_scores`` with ``upcast_softmax`` off, as in SD's UNets).

    The ``attention_math="classic"`` choice of :class:`~dragsdk.fidelity.Fidelity`: the official DragDiffusion runs
    its inversion and optimisation through this processor (``set_default_attn_processor``,
    ``run_drag_diffusion.py:120``), and SDPA's fused kernels round differently (about 1e-7 relative per layer),
    which its 80 Adam steps amplify past 1e-3. Materialises the ``(B·H, N, M)`` scores: O(N·M) memory.

    Args:
        q: ``(B, H, N, d)`` queries.
        sources: :class:`~dragsdk.kernels.oracle.KVSource` items, ``k`` / ``v`` ``(1 or B, H, M_i, d)``,
            ``key_mask`` ``(M_i,)`` bool (True = visible) or None; one softmax over all of them.
        scale: logit scale, default ``1/√d``.

    Returns:
        ``(B, H, N, d)`` in ``q``'s dtype.
    """
    b, h, n, d = q.shape
    scale = d**-0.5 if scale is None else scale
    ks = [s.k.expand(b, -1, -1, -1) for s in sources]
    vs = [s.v.expand(b, -1, -1, -1) for s in sources]
    k = ks[0] if len(ks) == 1 else torch.cat(ks, dim=2)
    v = vs[0] if len(vs) == 1 else torch.cat(vs, dim=2)
    m = k.shape[2]
    q3, k3, v3 = q.reshape(b * h, n, d), k.reshape(b * h, m, d), v.reshape(b * h, m, d)
    empty = torch.empty(b * h, n, m, dtype=q.dtype, device=q.device)
    scores = torch.baddbmm(empty, q3, k3.transpose(-1, -2), beta=0, alpha=scale)
    if any(s.key_mask is not None for s in sources):
        keep = torch.cat(
            [
                s.key_mask.to(q.device)
                if s.key_mask is not None
                else torch.ones(s.k.shape[2], dtype=torch.bool, device=q.device)
                for s in sources
            ]
        )
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = scores.softmax(dim=-1).to(v3.dtype)
    return torch.bmm(probs, v3).reshape(b, h, n, d)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, H·d)`` → ``(B, H, N, d)`` view (no copy)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


class ProcessorBase:
    """What every dragsdk attention processor shares with diffusers' ``AttnProcessor2_0``: spatial / group norm,
    4-D inputs, the q/k/v projections split into heads (with ``norm_q`` / ``norm_k``), the output projection,
    residual and rescale. Subclasses implement :meth:`attend`."""

    def attend(
        self,
        attn: Any,
        k: torch.Tensor,
        v: torch.Tensor,
        qh: torch.Tensor,
        kh: torch.Tensor,
        vh: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(B, H, N, d)`` attention output. ``k``/``v`` are the projections before the head split ``(B, M, C)``;
        ``qh``/``kh``/``vh`` after it; ``mask`` is diffusers' prepared attention mask or None."""
        raise NotImplementedError

    def cross_extra(self, attn: Any, qh: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """A cross-attention layer's output ``(B, H, N, d)`` after :meth:`attend`; subclasses add terms (the
        image prompt). Not called for self-attention."""
        return out

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b4, c4, h4, w4 = hidden_states.shape
            hidden_states = hidden_states.view(b4, c4, h4 * w4).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
        if getattr(attn, "norm_q", None) is not None:
            qh = attn.norm_q(qh)
        if getattr(attn, "norm_k", None) is not None:
            kh = attn.norm_k(kh)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], q.shape[0])
            mask = mask.view(q.shape[0], heads, -1, mask.shape[-1])
        out = self.attend(attn, k, v, qh, kh, vh, mask)
        if encoder_hidden_states is not None:
            out = self.cross_extra(attn, qh, out)

        out = out.transpose(1, 2).reshape(q.shape[0], -1, q.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b4, c4, h4, w4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class KVProcessor(ProcessorBase):
    """A diffusers attention processor over the controller's attention function; bank layers record or inject."""

    def __init__(self, controller: AttentionController, layer: str) -> None:
        self.controller = controller
        self.layer = layer
        self.is_bank_layer = layer in controller.bank_layers

    def attend(
        self,
        attn: Any,
        k: torch.Tensor,
        v: torch.Tensor,
        qh: torch.Tensor,
        kh: torch.Tensor,
        vh: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if mask is not None:
            return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=attn.scale)
        return self._route(k, v, qh, kh, vh, attn.heads, attn.scale)

    @torch.compiler.disable
    def _route(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        qh: torch.Tensor,
        kh: torch.Tensor,
        vh: torch.Tensor,
        heads: int,
        scale: float,
    ) -> torch.Tensor:
        """Record and / or inject K/V as the controller says, then attend with the backend's op.

        Excluded from ``torch.compile`` (``torch.compiler.disable``): everything that reads per-step state (mode,
        step, bank) happens here, so a compiled UNet never guards on it and never recompiles between steps.
        """
        ctl = self.controller
        if (
            self.is_bank_layer
            and ctl.mode == "record"
            and (ctl.record_steps is None or ctl.step in ctl.record_steps)
        ):
            ctl.bank.put(ctl.step, self.layer, k, v)
        if (
            self.is_bank_layer
            and ctl.mode == "inject"
            and ctl.injection is not None
            and ctl.bank.has(ctl.step)
        ):
            return ctl.attend(qh, self._sources(kh, vh, heads, qh.device), scale)
        return ctl.attend(qh, [KVSource(kh, vh)], scale)

    def cross_extra(self, attn: Any, qh: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add the image prompt as diffusers' ``IPAdapterAttnProcessor2_0`` does (one adapter, no IP mask):
        ``out + scale · Attn(q, to_k_ip(c_img), to_v_ip(c_img))``, with the backend's attention op.

        ``c_img`` rows follow the batch: the CFG batch ``[uncond, cond]`` takes both token rows, a batch-1 call the
        conditional row only (the official RegionDrag's ``v[-1:]`` at guidance 1 keeps both rows, attending over
        zero-image and image tokens in one softmax; not copied, docs/modes/region-drag.md).
        """
        ip = self.controller.image_prompt
        if ip is None or not ip.active or ip.scale == 0 or self.layer not in ip.processors:
            return out
        proc = ip.processors[self.layer]
        tokens = (
            ip.tokens if qh.shape[0] == ip.tokens.shape[0] else ip.tokens[-1:].expand(qh.shape[0], -1, -1)
        )
        tokens = tokens.to(qh.dtype)
        kh = split_heads(proc.to_k_ip[0](tokens), attn.heads)
        vh = split_heads(proc.to_v_ip[0](tokens), attn.heads)
        return out + ip.scale * self.controller.attend(qh, [KVSource(kh, vh)], attn.scale)

    def _sources(
        self, kh: torch.Tensor, vh: torch.Tensor, heads: int, device: torch.device
    ) -> list[KVSource]:
        ctl = self.controller
        inj = ctl.injection
        assert inj is not None
        bk, bv = ctl.bank.get(ctl.step, self.layer, device)
        bk, bv = bk.to(kh.dtype), bv.to(vh.dtype)

        def entry(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            # (1, H, N, d) views of one bank row: shared by every query row (both CFG halves), never copied.
            return split_heads(bk[i : i + 1], heads), split_heads(bv[i : i + 1], heads)

        if inj.mode == "concat":
            return [KVSource(kh, vh), KVSource(*entry(inj.banks[0]))]
        if inj.mode == "replace":
            return [KVSource(*entry(inj.banks[0]))]
        h, w = ctl.token_grid(bk.shape[1])
        return [
            KVSource(*entry(b), m(h, w).to(device)) for b, m in zip(inj.banks, inj.token_masks, strict=True)
        ]


def install(unet: Any, controller: AttentionController) -> dict[str, Any]:
    """Install a :class:`KVProcessor` on every attention layer; returns the previous processors."""
    previous = dict(unet.attn_processors)
    unet.set_attn_processor({name: KVProcessor(controller, name[: -len(".processor")]) for name in previous})
    return previous


def token_mask(
    latent_mask: torch.Tensor, invert: bool = False, method: Literal["area", "nearest"] = "area"
) -> Callable[[int, int], torch.Tensor]:
    """A composite-K/V key mask for any layer: the latent mask ``(h, w)`` resampled to the layer's token grid,
    flattened in token order (row-major); ``invert`` takes the complement.

    Args:
        latent_mask: ``(h, w)`` bool mask on the latent grid (working size / 8).
        invert: keys outside the mask instead of inside.
        method: ``area`` = a token cell is inside when at least half of it is covered (``adaptive_avg_pool2d``);
            ``nearest`` = ``F.interpolate(mask, (h', w'), mode="nearest") > 0.5``, the official composite masks
            (``src/unet/attention_processor.py:84-92``, the masks sampled at each layer's token grid).

    Returns:
        ``fn(h', w') -> (h'·w',)`` bool tensor for a layer whose token grid is ``(h', w')``.

    Raises:
        ValueError: ``method`` is neither ``area`` nor ``nearest``.
    """
    if method not in ("area", "nearest"):
        raise ValueError(f"token_mask: method must be 'area' or 'nearest', got {method!r}")
    m = latent_mask.float()[None, None]

    def fn(h: int, w: int) -> torch.Tensor:
        if method == "nearest":
            t = F.interpolate(m, (h, w), mode="nearest")[0, 0] > 0.5
        else:
            t = F.adaptive_avg_pool2d(m, (h, w))[0, 0] >= 0.5
        return (~t if invert else t).flatten()

    return fn


PLAIN_PROCESSORS = frozenset(
    {
        "AttnProcessor",
        "AttnProcessor2_0",
        "XFormersAttnProcessor",
        "SlicedAttnProcessor",
        "AttnProcessorNPU",
        "FusedAttnProcessor2_0",
        "KVProcessor",
    }
)
"""Processors computing plain attention (diffusers' defaults and their faster equivalents, and dragsdk's own): an
edit may replace them for its duration without changing what the model computes."""


def foreign_processors(unet: Any, composed: Any = ()) -> dict[str, int]:
    """The host processors on ``unet`` that are not plain attention (an IP-Adapter's, a custom one), as
    ``{class name: layers}``; an edit would bypass them. ``composed``: processor objects the edit reproduces itself
    (a host IP-Adapter adopted as the image prompt, :func:`dragsdk.image_prompt.host_ip_adapter`); not counted."""
    skip = {id(p) for p in composed}
    found: dict[str, int] = {}
    for proc in unet.attn_processors.values():
        name = type(proc).__name__
        if name not in PLAIN_PROCESSORS and id(proc) not in skip:
            found[name] = found.get(name, 0) + 1
    return found
