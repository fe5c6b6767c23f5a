"""The ``eager`` backend: the baseline every other backend is checked against. K/V sources are materialised and handed to
``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask where a source hides keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Backend, Capabilities, KVSource, hookimpl, join_sources


def sdpa_over_sources(
    q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
) -> torch.Tensor:
    """Attention over the union of ``sources`` with SDPA (materialises concatenations; masks hidden keys)."""
    k, v, mask = join_sources(q, sources)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch scaled_dot_product_attention on materialised K/V (the baseline)"
    priority = 20
    capabilities = Capabilities(
        devices=("cpu", "cuda", "mps"), dtypes=("float32", "float16", "bfloat16"), gradients=True
    )

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        return sdpa_over_sources(q, sources, scale)


@hookimpl
def dragsdk_register_backends(register):
    register(EagerBackend())
