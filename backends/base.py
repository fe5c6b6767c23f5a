"""The backend interface: what runs the attention op (and optionally wraps the UNet) for the sampler.

Everything a backend author imports is here (``__all__``): :class:`Backend`, :class:`Capabilities`,
:class:`KVSource`, :func:`join_sources` and the ``hookimpl`` marker of ``dragsdk_register_backends``
(``docs/backends.md``; a worked example is ``examples/dragsdk-bf16-backend``); for a backend that replaces more than
the attention (the ONNX backend runs the whole UNet in another runtime): ``BackendUnavailableError`` (why it cannot
run an edit), ``ProcessorBase`` / ``split_heads`` (the attention-processor base and its head split) and
``WeightsFingerprint`` (a key of the model's weights, to rebuild what was exported when they change).

A backend declares :class:`Capabilities` and says *why* it cannot run when it cannot (a missing package, no
CUDA device). Selection (``backend="auto"``) only considers backends whose capabilities cover the edit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dragsdk.attention import ProcessorBase, split_heads
from dragsdk.cache import WeightsFingerprint
from dragsdk.errors import BackendUnavailableError
from dragsdk.families import FAMILIES
from dragsdk.hookspecs import hookimpl
from dragsdk.kernels.oracle import KVSource

__all__ = [
    "KV_MODES",
    "PRECISIONS",
    "Backend",
    "BackendNeeds",
    "BackendUnavailableError",
    "Capabilities",
    "KVSource",
    "ProcessorBase",
    "WeightsFingerprint",
    "hookimpl",
    "join_sources",
    "split_heads",
]

KV_MODES = ("plain", "concat", "replace", "composite")
PRECISIONS = ("native", "reduced")


def join_sources(
    q: torch.Tensor, sources: Sequence[KVSource]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The keys, values and key mask of cross-branch attention over ``sources``, ready for
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)``.

    The softmax of cross-branch attention is joint over every source's keys (DragonDiffusion arXiv 2307.02421
    §3.3; ``concat`` = ``[own, bank]``, ``replace`` = ``[bank]``, ``composite`` = two masked banks). A bank shared by
    both halves of the classifier-free-guidance batch (batch 1) is expanded, not copied, when it is the only source.

    Args:
        q: ``(B, H, N, d)`` queries (only ``B`` and the device are read).
        sources: :class:`KVSource` items, ``k`` / ``v`` ``(1 or B, H, M_i, d)``, ``key_mask`` ``(M_i,)`` bool or None.

    Returns:
        ``k``, ``v`` ``(B, H, ΣM_i, d)`` and a ``(1, 1, 1, ΣM_i)`` bool mask (True = visible), or None when every
        key is visible.
    """
    b = q.shape[0]
    if len(sources) == 1:
        s = sources[0]
        mask = None if s.key_mask is None else s.key_mask.to(q.device)[None, None, None, :]
        return s.k.expand(b, -1, -1, -1), s.v.expand(b, -1, -1, -1), mask
    k = torch.cat([s.k.expand(b, -1, -1, -1) for s in sources], dim=2)
    v = torch.cat([s.v.expand(b, -1, -1, -1) for s in sources], dim=2)
    if all(s.key_mask is None for s in sources):
        return k, v, None
    mask = torch.cat(
        [
            s.key_mask.to(q.device)
            if s.key_mask is not None
            else torch.ones(s.k.shape[2], dtype=torch.bool, device=q.device)
            for s in sources
        ]
    )
    return k, v, mask[None, None, None, :]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run.

    Attributes:
        devices: device types, e.g. ``("cpu", "cuda")``.
        dtypes: dtype names, e.g. ``("float32", "float16", "bfloat16")``.
        gradients: whether the attention op is differentiable (needed by energy-guided modes).
        kv_modes: K/V modes of cross-branch attention it supports (``plain`` = ordinary self-attention).
        head_dims: supported head dimensions, or empty for any.
        precision: ``"native"`` (computes in the dtype it is given, with at least fp32 accumulation) or
            ``"reduced"`` (computes some of the work in a lower precision than the edit's dtype, e.g. a bf16
            attention for float32 inputs). ``auto`` never picks a ``reduced`` backend for a float32 edit unless
            the editor was asked to (``Editor(allow_reduced_precision=True)``).
        families: model families it can run (:data:`dragsdk.families.FAMILIES`: ``sd1``, ``sd2``, ``sdxl``);
            ``auto`` skips a backend whose families do not include the model's, and a named one is refused.
        image_prompt: whether it computes the image-prompt (IP-Adapter) term of cross-attention, i.e. its UNet runs
            dragsdk's attention processors (:class:`~dragsdk.attention.KVProcessor`); an edit with an image prompt
            skips (``auto``) or refuses (named) a backend without it rather than drop the term silently.
    """

    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    gradients: bool
    kv_modes: tuple[str, ...] = KV_MODES
    head_dims: tuple[int, ...] = field(default_factory=tuple)
    precision: str = "native"
    families: tuple[str, ...] = FAMILIES
    image_prompt: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"Capabilities.precision must be one of {PRECISIONS}, got {self.precision!r}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(
                f"Capabilities.families must be a non-empty subset of {FAMILIES}, got {self.families!r}"
            )

    def covers(
        self,
        device: str,
        dtype: str,
        gradients: bool,
        kv_modes: Sequence[str],
        family: str | None = None,
        image_prompt: bool = False,
    ) -> tuple[bool, str]:
        """Whether an edit's needs are covered (``family``: the model's, None: not checked; ``image_prompt``: the
        edit uses an IP-Adapter image prompt); when not, the first unmet need in words."""
        if family is not None and family not in self.families:
            return False, f"model family {family!r} not in {self.families}"
        if image_prompt and not self.image_prompt:
            return False, "the edit uses an image prompt (IP-Adapter) and this backend does not compute it"
        if device not in self.devices:
            return False, f"device {device!r} not in {self.devices}"
        if dtype not in self.dtypes:
            return False, f"dtype {dtype!r} not in {self.dtypes}"
        if gradients and not self.gradients:
            return False, (
                "the edit needs gradients (energy guidance, latent optimisation or LoRA training) and this "
                "backend has none"
            )
        missing = [m for m in kv_modes if m not in self.kv_modes]
        if missing:
            return False, f"K/V modes {missing} not supported"
        return True, ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BackendNeeds:
    """What one edit needs of a backend: the one argument :func:`dragsdk.backends.select.select_backend` takes
    besides the registry's backends and the request.

    Attributes:
        device: ``cpu`` or ``cuda``; dtype: ``float32``, ``float16`` or ``bfloat16`` (the model's).
        gradients: the edit takes energy guidance (backward passes through the attention).
        kv_modes: the K/V injection modes of the plan (``concat``, ``replace``, ``composite``).
        family: the model family (``sd1``, ``sd2``, ``sdxl``, …), or None to skip that check.
        image_prompt: the edit uses an IP-Adapter image prompt.
        model: the model key of the capability table (``model_key``); working_size: ``(w, h)`` pixels, or None (no
            table lookup).
        allow_reduced: a float32 edit may run on a backend computing in reduced precision.
    """

    device: str
    dtype: str
    gradients: bool = False
    kv_modes: tuple[str, ...] = ()
    family: str | None = None
    image_prompt: bool = False
    model: str = ""
    working_size: tuple[int, int] | None = None
    allow_reduced: bool = False

    def describe(self) -> str:
        """The needs in words, for reasons and errors."""
        return (
            (f"family={self.family}, " if self.family is not None else "")
            + f"device={self.device}, dtype={self.dtype}, gradients={self.gradients}, kv_modes={list(self.kv_modes)}"
            + (", image_prompt=True" if self.image_prompt else "")
        )


class Backend(ABC):
    """Base class of a backend. Subclasses set ``name``, ``description`` and ``capabilities``."""

    name: str = ""
    description: str = ""
    capabilities: Capabilities
    priority: int = 0
    """Place in ``auto``'s order when nothing is measured: higher first, ties by name. Built-ins: triton 40,
    xformers 30, eager 20, compile 10, onnx 0; a plugin chooses its own (default 0)."""

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` when it can run here, else ``(False, reason)``."""
        return True, ""

    @abstractmethod
    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        """Cross-branch attention.

        Args:
            q: ``(B, H, N, d)`` queries.
            sources: one or more :class:`~dragsdk.kernels.oracle.KVSource`; softmax is joint over all of them.
            scale: logit scale, default ``1/sqrt(d)``.

        Returns:
            ``(B, H, N, d)``.
        """

    def prepare_unet(self, unet: Any) -> Any:
        """Return the module the sampler calls in place of ``unet`` (default: ``unet`` itself)."""
        return unet

    def prepare_unet_for_edit(self, model: Any, controller: Any) -> Any:
        """The callable used in place of the UNet for one edit (what the editor calls).

        It has the diffusers signature ``(sample, timestep, encoder_hidden_states=..., return_dict=False) -> (eps,)``.
        ``model`` is the edit's :class:`~dragsdk.models.ModelBundle`; ``controller`` its
        :class:`~dragsdk.attention.AttentionController`, with the processors already installed on ``model.unet``.
        Default: :meth:`prepare_unet` of ``model.unet``. Override it when the backend runs the UNet itself and must
        follow the controller's per-step state (mode, step, injection, bank) at each call, as ``onnx`` does.
        """
        return self.prepare_unet(model.unet)

    def vae_encode(self, model: Any, image: torch.Tensor) -> torch.Tensor | None:
        """Latent ``(B, 4, H/8, W/8)`` of ``image`` ``(B, 3, H, W)`` in [-1, 1], as
        :meth:`~dragsdk.models.ModelBundle.encode_image`; or None (the default): the editor uses the torch VAE."""
        return None

    def vae_decode(self, model: Any, latent: torch.Tensor) -> torch.Tensor | None:
        """Image ``(B, 3, H, W)`` in [-1, 1] of ``latent``, as :meth:`~dragsdk.models.ModelBundle.decode_latent`;
        or None (the default): the editor uses the torch VAE."""
        return None

    def describe(self) -> dict[str, Any]:
        ok, why = availability(self)
        return {
            "name": self.name,
            "description": self.description,
            "available": ok,
            "reason": why,
            "priority": self.priority,
            "capabilities": self.capabilities.to_dict(),
        }


def availability(backend: Any) -> tuple[bool, str]:
    """``backend.availability()``, with an exception raised by a (plugin) backend turned into a refusal."""
    try:
        ok, why = backend.availability()
    except Exception as e:
        return False, f"availability() raised {type(e).__name__}: {str(e)[:200]}"
    return bool(ok), str(why)
