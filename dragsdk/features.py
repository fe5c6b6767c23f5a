"""Decoder features for energy guidance: the outputs of the family's feature blocks (the table
:data:`dragsdk.families.LAYOUTS`): ``unet.up_blocks[1]`` and ``unet.up_blocks[2]`` for SD 1.x / 2.x (below),
``up_blocks[0]`` and ``[1]`` for SDXL (the same resolutions and widths).

These are the paper's "2nd and 3rd decoder layers" (DragonDiffusion arXiv 2307.02421 §3.2; code
``up_ft_index = [1, 2]``, ``src/demo/model.py:28``): at a 64×64 latent, 1280 channels at 32² and 640 at 64²
(SD 1.5). They are taken with forward hooks on the editing UNet itself (no second "estimator" copy); a
feature-only forward stops right after ``up_blocks[2]`` by raising from its hook, so the last decoder stage
and the output conv are never run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

FEATURE_BLOCKS = (1, 2)


class _StopForward(Exception):
    pass


class FeatureTap:
    """Forward hooks on the decoder blocks whose outputs are the guidance features.

    Use :meth:`capture` around a UNet call; the captured tensors are ``(B, C_l, h_l, w_l)``, one per block.
    """

    def __init__(self, unet: Any, blocks: tuple[int, ...] = FEATURE_BLOCKS) -> None:
        self.blocks = blocks
        self._active = False
        self._stop = False
        self.captured: dict[int, torch.Tensor] = {}
        self._handles = [unet.up_blocks[i].register_forward_hook(self._hook(i)) for i in blocks]

    def _hook(self, index: int) -> Any:
        def fn(module: Any, args: Any, output: Any) -> None:
            if not self._active:
                return
            self.captured[index] = output[0] if isinstance(output, tuple) else output
            if self._stop and index == max(self.blocks):
                raise _StopForward

        return fn

    @contextmanager
    def capture(self, stop: bool = False) -> Iterator[dict[int, torch.Tensor]]:
        """Capture the block outputs of the UNet calls inside the block; with ``stop`` the call ends after them."""
        self.captured = {}
        self._active, self._stop = True, stop
        try:
            yield self.captured
        except _StopForward:
            pass
        finally:
            self._active, self._stop = False, False

    def features(self) -> list[torch.Tensor]:
        """The captured outputs in block order."""
        return [self.captured[i] for i in self.blocks]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
