"""What an Editor caches, and the identity of the weights that decides when a cache entry is still valid.

The inversion (latents, K/V bank, features) and the prompt embeddings depend on the model's weights. A host can
change them behind the Editor's back: fuse or unfuse a LoRA (diffusers ``fuse_lora`` writes ``W.data`` in place,
which moves neither the storage pointer nor the tensor's version counter), load or toggle a peft adapter, cast or
move the modules. :func:`weights_fingerprint` sees all of these, so a cache keyed by it is never stale;
:class:`WeightsFingerprint` gives the same digest, memoised, for an Editor's repeated calls.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def _adapter_state(module: Any) -> list[Any]:
    """peft adapter state that changes the forward without changing a parameter: the active adapters, their
    scalings, whether adapters are disabled and which are merged (one entry per LoRA layer)."""
    out: list[Any] = []
    for name, sub in module.named_modules():
        scaling = getattr(sub, "scaling", None)
        if isinstance(scaling, dict) and hasattr(sub, "lora_A"):
            out.append(
                (
                    name,
                    sorted(scaling.items()),
                    list(getattr(sub, "active_adapters", []) or []),
                    bool(getattr(sub, "disable_adapters", False)),
                    list(getattr(sub, "merged_adapters", []) or []),
                )
            )
    return out


class WeightsFingerprint:
    """:func:`weights_fingerprint` made cheap on repeated calls, with the same guarantee.

    Every call reads every weight once, as one L2 norm per parameter (``torch._foreach_norm``, one pass grouped by
    device and dtype, float32 accumulation or float64 for float64 weights): that read is what sees a write through
    ``W.data`` (peft's merge / unmerge behind diffusers' ``fuse_lora`` / ``unfuse_lora``: ``W.data += scale·B·A``
    bumps neither the storage pointer nor the tensor's version counter, so no metadata can see it). The sum of a
    parameter, the second statistic, is recomputed only when its norm, storage pointer, version counter
    (``Tensor._version``: ``copy_`` / ``load_state_dict``, any in-place op on the parameter itself), stride, dtype,
    device or shape changed since the last call, and taken from the memo otherwise; the digest is then the one
    :func:`weights_fingerprint` gives for the same weights.

    Not seen: a write through ``W.data`` that keeps the norm (e.g. flipping the sign of an element) of a parameter
    whose other metadata is unchanged. The memo holds one entry per parameter of the last call (by ``id``, with a
    weak reference, so a freed parameter whose ``id`` is reused is not mistaken for it).

    Thread safety: one lock guards the memo; concurrent calls run one at a time.

    Attributes:
        recomputed: parameters whose sum the last call computed (all of them on the first call; 0 when nothing
            changed).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memo: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], float, float]] = {}
        self.recomputed = 0

    @torch.no_grad()
    def __call__(self, modules: dict[str, Any]) -> str:
        """The digest of ``modules`` (``{"unet": unet, "vae": vae, ...}``; None entries are skipped)."""
        with self._lock:
            return self._digest(modules)

    def _digest(self, modules: dict[str, Any]) -> str:
        h = hashlib.sha1()
        params: list[torch.Tensor] = []
        for key, module in modules.items():
            if module is None:
                continue
            h.update(key.encode())
            for name, p in module.named_parameters():
                h.update(f"{name}{tuple(p.shape)}{p.dtype}{p.device}".encode())
                params.append(p)
            h.update(repr(_adapter_state(module)).encode())
        norms = _norms(params)
        memo: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], float, float]] = {}
        sums: list[float | None] = []
        stale: dict[torch.device, list[int]] = {}
        for k, p in enumerate(params):
            meta = (
                p.data_ptr(),
                p._version,
                tuple(p.stride()),
                p.storage_offset(),
                p.dtype,
                p.device,
                p.shape,
            )
            old = self._memo.get(id(p))
            if old is not None and old[0]() is p and old[1] == meta and old[2] == norms[k]:
                sums.append(old[3])
            else:
                sums.append(None)
                stale.setdefault(p.device, []).append(k)
            memo[id(p)] = (weakref.ref(p), meta, norms[k], 0.0)
        for device_ks in stale.values():
            values = (
                torch.stack(
                    [params[k].sum(dtype=_accumulator(params[k])).to(torch.float64) for k in device_ks]
                )
                .cpu()
                .tolist()
            )
            for k, v in zip(device_ks, values, strict=True):
                sums[k] = v
        for k, p in enumerate(params):
            ref, meta, norm, _ = memo[id(p)]
            memo[id(p)] = (ref, meta, norm, sums[k])  # type: ignore[assignment]
        self._memo = memo
        self.recomputed = sum(len(v) for v in stale.values())
        h.update(np.asarray([norms, sums], dtype=np.float64).tobytes())
        return h.hexdigest()


def _accumulator(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _norms(params: list[torch.Tensor]) -> list[float]:
    """The L2 norm of every parameter (float64 values), one ``_foreach_norm`` per (device, dtype) group and one
    device sync per group."""
    out: list[float] = [0.0] * len(params)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(k)
    for (_, dtype), ks in groups.items():
        tensors = [params[k].detach() for k in ks]
        if dtype.is_floating_point:
            values = torch._foreach_norm(tensors, 2, dtype=_accumulator(tensors[0]))
        else:
            values = [torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]
        for k, v in zip(ks, torch.stack([v.to(torch.float64) for v in values]).cpu().tolist(), strict=True):
            out[k] = v
    return out


def weights_fingerprint(modules: dict[str, Any]) -> str:
    """A digest of everything in ``modules`` (``{"unet": unet, "vae": vae, ...}``) that changes their output: the
    parameter names, shapes, dtypes and devices, peft adapter state, and the content of every parameter as its L2
    norm and sum (accumulated in float32, float64 weights in float64). Two fingerprints are equal when the weights
    are equal; a fused LoRA (any nonzero ``scale·B·A``) changes them.

    Cost: two reads of every weight. An Editor keeps a :class:`WeightsFingerprint`, which gives the same digest and
    reads each unchanged weight once (``benchmarks/weights_key.py``).
    """
    return WeightsFingerprint()(modules)


class LRUCache(Generic[V]):
    """A mapping that keeps at most ``maxsize`` entries, dropping the least recently used.

    Raises:
        ValueError: ``maxsize`` < 1.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: Hashable, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data
