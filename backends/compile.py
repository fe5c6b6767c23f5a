"""The ``compile`` backend: regional ``torch.compile`` of the UNet's repeated blocks.

Every ``BasicTransformerBlock`` and ``ResnetBlock2D`` is compiled on its own (regional compilation, as diffusers'
``compile_repeated_blocks``: the same runtime gains as whole-graph compilation for a fraction of the compile time).
The per-step state (step index, K/V mode, bank) is read only inside
:meth:`dragsdk.attention.KVProcessor._route`, which is excluded from compilation, so a compiled block never guards on
it: after the first edit has compiled every shape, later steps and edits do not recompile (tested under
``torch._dynamo.config.patch(error_on_recompile=True)``).

Two global settings are changed when a UNet is prepared: dynamo's recompile limit is raised (each attention
processor continues its block in its own cached frame), and AOTAutograd's donated buffers are turned off (energy
guidance takes two backward passes over one graph, with ``retain_graph``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

import torch

from .base import Backend, Capabilities, KVSource, hookimpl
from .eager import sdpa_over_sources

_REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")


class CompileBackend(Backend):
    name = "compile"
    description = "torch.compile of the UNet's transformer and ResNet blocks (regional), SDPA attention"
    priority = 10
    capabilities = Capabilities(
        devices=("cpu", "cuda"), dtypes=("float32", "float16", "bfloat16"), gradients=True
    )

    def __init__(
        self, dynamo_backend: str = "inductor", mode: str | None = None, dynamic: bool | None = True
    ) -> None:
        self.dynamo_backend = dynamo_backend
        self.mode = mode
        self.dynamic = dynamic
        self._prepared: set[int] = set()

    def availability(self) -> tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "torch.compile is not available in this torch"
        if (
            self.dynamo_backend == "inductor"
            and not torch.cuda.is_available()
            and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
        ):
            return False, "inductor on the CPU needs a C/C++ compiler (cc, gcc or clang) and none is on PATH"
        return True, ""

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        return sdpa_over_sources(q, sources, scale)

    def prepare_unet(self, unet: Any) -> Any:
        if id(unet) in self._prepared:
            return unet
        import torch._dynamo.config as dynamo_config
        import torch._functorch.config as functorch_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
        functorch_config.donated_buffer = False
        for module in unet.modules():
            if type(module).__name__ in _REGIONS:
                module.compile(backend=self.dynamo_backend, mode=self.mode, dynamic=self.dynamic)
        self._prepared.add(id(unet))
        return unet


@hookimpl
def dragsdk_register_backends(register):
    register(CompileBackend())
