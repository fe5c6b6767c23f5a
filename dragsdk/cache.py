"""What an Editor caches, and the identity of the weights that decides when a cache entry is still valid.

The inversion (latents, K/V bank, features) and the prompt embeddings depend on the model's weights. A host can
change them behind the Editor's back: fuse or unfuse a LoRA (diffusers ``fuse_lora`` writes ``W.data`` in place,
which moves neither the storage pointer nor the tensor's version counter), load or toggle a peft adapter, cast or
move the modules. :func:`weights_fingerprint` sees all of these, so a cache keyed by it is never stale;
:class:`WeightsFingerprint` gives the same digest, memoised, for an Editor's repeated calls.
"""

from __future__ import annotations

import hashlib
import math
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

    Every call reads every weight once, as one L2 norm per parameter (row-wise reductions added exactly, one device
    sync per device and dtype, the same value whatever the number of CPU threads: :func:`_statistic`): that read is
    what sees a write through ``W.data`` (peft's merge / unmerge behind diffusers' ``fuse_lora`` /
    ``unfuse_lora``: ``W.data += scale·B·A`` bumps neither the storage pointer nor the tensor's version counter, so no metadata can see it). The sum of a
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
        norms = _statistic(params, "norm")
        memo: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], float, float]] = {}
        sums: list[float] = [0.0] * len(params)
        stale: list[int] = []
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
                sums[k] = old[3]
            else:
                stale.append(k)
            memo[id(p)] = (weakref.ref(p), meta, norms[k], 0.0)
        for k, v in zip(stale, _statistic([params[k] for k in stale], "sum"), strict=True):
            sums[k] = v
        for k, p in enumerate(params):
            ref, meta, norm, _ = memo[id(p)]
            memo[id(p)] = (ref, meta, norm, sums[k])
        self._memo = memo
        self.recomputed = len(stale)
        h.update(np.asarray([norms, sums], dtype=np.float64).tobytes())
        return h.hexdigest()


# Elements per row of the row-wise reductions in _statistic: each row is reduced by one thread, in one order.
_ROW = 4096


def _statistic(params: list[torch.Tensor], which: str) -> list[float]:
    """The L2 norm (``which="norm"``) or the sum (``"sum"``) of every parameter, as float64 values that do not depend
    on the number of CPU threads.

    A whole-tensor reduction does: torch splits a long tensor into one chunk per thread and adds the partial results,
    so the last bits of a float32 sum or norm change with ``torch.set_num_threads`` (measured: the tiny model's
    fingerprint differed between 1, 2 and 4 threads, and with it every cache key built on it, the per-image LoRA
    files included). Here each parameter is cut into rows of ``_ROW`` elements (plus a shorter last row); a reduction
    along the rows' own dimension computes every row in one thread in a fixed order, whatever the thread count
    (accumulated in float32, float64 for float64 weights), and the row results are added in float64 with
    :func:`math.fsum`, which is exact and so independent of their order. One device-to-host copy per (device, dtype) group.
    """
    out: list[float] = [0.0] * len(params)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(k)
    for ks in groups.values():
        rows: list[torch.Tensor] = []
        counts: list[int] = []
        for k in ks:
            parts = _rows(params[k].detach())
            for part in parts:
                acc = _accumulator(part)
                if which == "norm":
                    rows.append(torch.linalg.vector_norm(part, dim=-1, dtype=acc).to(torch.float64).square())
                else:
                    rows.append(part.sum(dim=-1, dtype=acc).to(torch.float64))
            counts.append(sum(int(part.shape[0]) for part in parts))
        values = torch.cat(rows).cpu().tolist() if rows else []
        start = 0
        for k, n in zip(ks, counts, strict=True):
            total = math.fsum(values[start : start + n])
            out[k] = math.sqrt(total) if which == "norm" else total
            start += n
    return out


def _rows(p: torch.Tensor) -> list[torch.Tensor]:
    """``p`` flattened into a ``(n // _ROW, _ROW)`` block and a ``(1, n % _ROW)`` remainder (either may be absent);
    integer and boolean parameters as float64, complex ones as their real and imaginary parts."""
    if p.dtype.is_complex:
        p = torch.view_as_real(p)
    v = p.reshape(-1)
    if not v.dtype.is_floating_point:
        v = v.to(torch.float64)
    n_full = v.numel() // _ROW
    parts = []
    if n_full:
        parts.append(v[: n_full * _ROW].view(n_full, _ROW))
    if v.numel() % _ROW:
        parts.append(v[n_full * _ROW :].view(1, -1))
    return parts


def _accumulator(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


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
