"""The ``triton`` backend: attention is the fused cross-branch kernel (:mod:`dragsdk.kernels.cross_attention`).

concat, replace and composite run in one launch each, without materialising the concatenation or the composite,
and a bank shared by both halves of the classifier-free-guidance batch is read with batch stride 0. CUDA only for
edits: the kernel also runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``), which the tests use, but that is
far too slow for an edit, so the interpreter counts as available only when asked for explicitly
(``TritonBackend(allow_interpreter=True)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .base import Backend, Capabilities, KVSource, hookimpl


class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton cross-branch attention (one launch per layer, online softmax over sources)"
    priority = 40

    def __init__(self, allow_interpreter: bool = False) -> None:
        self.allow_interpreter = allow_interpreter
        devices = ("cuda", "cpu") if allow_interpreter else ("cuda",)
        self.capabilities = Capabilities(
            devices=devices, dtypes=("float32", "float16", "bfloat16"), gradients=True, head_dims=()
        )

    def availability(self) -> tuple[bool, str]:
        try:
            from dragsdk.kernels.cross_attention import is_available
        except ImportError as e:  # pragma: no cover - the module guards its own triton import
            return False, f"the kernel module cannot import: {e}"
        ok, why = is_available()
        if not ok:
            return False, why
        if not torch.cuda.is_available():
            interp = os.environ.get("TRITON_INTERPRET") == "1"
            if not (self.allow_interpreter and interp):
                return (
                    False,
                    "no CUDA device (the CPU interpreter is for tests only: TritonBackend(allow_interpreter=True))",
                )
        return True, ""

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        from dragsdk.kernels.cross_attention import cross_branch_attention

        return cross_branch_attention(q, sources, scale)


@hookimpl
def dragsdk_register_backends(register):
    register(TritonBackend())
