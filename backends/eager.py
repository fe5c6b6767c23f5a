"""The ``eager`` backend: the reference. K/V sources are materialised and handed to
``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask where a source hides keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dragsdk.hookspecs import hookimpl
from dragsdk.kernels.reference import KVSource

from .base import Backend, Capabilities


def sdpa_over_sources(q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None) -> torch.Tensor:
    """Attention over the union of ``sources`` with SDPA (materialises concatenations; masks hidden keys)."""
    b = q.shape[0]
    if len(sources) == 1 and sources[0].key_mask is None:
        s = sources[0]
        return F.scaled_dot_product_attention(q, s.k.expand(b, -1, -1, -1), s.v.expand(b, -1, -1, -1), scale=scale)
    k = torch.cat([s.k.expand(b, -1, -1, -1) for s in sources], dim=2)
    v = torch.cat([s.v.expand(b, -1, -1, -1) for s in sources], dim=2)
    mask = None
    if any(s.key_mask is not None for s in sources):
        mask = torch.cat(
            [
                s.key_mask.to(q.device) if s.key_mask is not None else torch.ones(s.k.shape[2], dtype=torch.bool, device=q.device)
                for s in sources
            ]
        )[None, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch scaled_dot_product_attention on materialised K/V (the reference)"
    priority = 20
    capabilities = Capabilities(
        devices=("cpu", "cuda", "mps"), dtypes=("float32", "float16", "bfloat16"), gradients=True
    )

    def attention(self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None) -> torch.Tensor:
        return sdpa_over_sources(q, sources, scale)


@hookimpl
def dragsdk_register_backends(register):
    register(EagerBackend())
