"""The ``xformers`` backend: ``xformers.ops.memory_efficient_attention`` (CUDA only, the ``cuda`` extra).

Sources are concatenated along the key axis; hidden keys (composite) become an additive ``-inf`` bias. xformers
takes ``(B, M, H, d)`` tensors, so inputs are transposed views of the ``(B, H, M, d)`` ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Backend, Capabilities, KVSource, hookimpl, join_sources


class XformersBackend(Backend):
    name = "xformers"
    description = "xformers memory_efficient_attention on concatenated K/V (CUDA)"
    priority = 30
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16", "float32"), gradients=True)

    def availability(self) -> tuple[bool, str]:
        try:
            import xformers.ops  # noqa: F401
        except Exception as e:
            return (
                False,
                f"xformers is not installed or does not import ({type(e).__name__}); pip install 'dragsdk[cuda]'",
            )
        if not torch.cuda.is_available():
            return False, "no CUDA device (memory_efficient_attention is CUDA only)"
        return True, ""

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        import xformers.ops as xops

        b, h, n, _ = q.shape
        k, v, mask = join_sources(q, sources)
        k, v = k.contiguous(), v.contiguous()  # a lone shared bank comes back expanded (batch stride 0)
        bias = None
        if mask is not None:
            keep = mask[0, 0, 0]
            m = k.shape[2]
            pad = (-m) % 8  # xformers wants the bias's last dim aligned; slice back to m
            full = torch.zeros(b, h, n, m + pad, dtype=q.dtype, device=q.device)
            full[..., :m] = torch.where(keep, 0.0, float("-inf")).to(q.dtype)
            bias = full[..., :m]
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
        )
        return out.transpose(1, 2)


@hookimpl
def dragsdk_register_backends(register):
    register(XformersBackend())
