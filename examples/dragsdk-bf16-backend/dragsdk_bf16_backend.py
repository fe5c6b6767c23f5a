"""A third-party backend in one file: ``sdpa-bf16`` runs cross-branch attention through PyTorch's
``scaled_dot_product_attention`` in bfloat16 and returns the edit's dtype.

On GPUs with bf16 tensor cores this halves the attention's memory traffic; the price is precision (bf16 keeps 8
bits of mantissa), so the backend declares ``precision="reduced"``: ``backend="auto"`` never gives it a float32 edit
unless the editor allows it (``Editor(allow_reduced_precision=True)``) or the backend is named
(``Editor(backend="sdpa-bf16")``, ``dragsdk edit --backend sdpa-bf16``). SDPA is differentiable, so energy-guided
modes (drag, move, ...) can use it. It imports only :mod:`dragsdk.backends.base`. Install with
``pip install -e examples/dragsdk-bf16-backend``; ``dragsdk backends`` then lists ``sdpa-bf16``, and
``dragsdk backends --bench --only sdpa-bf16`` measures it into the table ``auto`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dragsdk.backends.base import Backend, Capabilities, KVSource, hookimpl, join_sources


class Bf16SdpaBackend(Backend):
    name = "sdpa-bf16"
    description = "PyTorch SDPA in bfloat16 (reduced precision for float32 edits; example plugin)"
    priority = 5  # below the built-in eager (20): with nothing measured, auto prefers full precision
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        dtypes=("float32", "float16", "bfloat16"),
        gradients=True,
        precision="reduced",
    )

    def availability(self) -> tuple[bool, str]:
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name()} has no bfloat16 support"
        return True, ""

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        """Joint softmax over every source's keys (:func:`~dragsdk.backends.base.join_sources`), in bfloat16.

        ``q`` ``(B, H, N, d)``; returns ``(B, H, N, d)`` in ``q``'s dtype."""
        k, v, mask = join_sources(q, sources)
        out = F.scaled_dot_product_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask, scale=scale
        )
        return out.to(q.dtype)


@hookimpl
def dragsdk_register_backends(register):
    register(Bf16SdpaBackend())
