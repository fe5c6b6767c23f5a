"""The seed decides every random draw of an edit (issue 21, item 5): for each built-in mode, two edits with the same
seed on fresh Editors are bit-identical, and another seed changes the final latent (the regional SDE's noise of the
DragonDiffusion modes, the Cycle-SDE and handle noise and the VAE posterior sample of region-drag)."""

from __future__ import annotations

import pytest
import torch

from dragsdk import Editor

from .builtin_specs import BUILTIN_MODES, IMAGE, builtin_specs

SAMPLER = {"steps": 12, "resolution": 64}
"""The golden slices' settings (tests/test_golden.py): 12 steps reach the regional SDE on steps 3–4 of the
DragonDiffusion modes and region-drag's Cycle-SDE from step 6."""


DETERMINISTIC = {"dragdiffusion"}
"""Modes whose edit draws nothing at random: DragDiffusion with ``lora_steps: 0`` (DDIM inversion and sampling with
η = 0, no SDE; only its LoRA training, not implemented, would draw)."""


def _latent(tiny_model, mode: str, seed: int) -> torch.Tensor:
    # A fresh Editor each time: no cached inversion carries a draw from one edit into the next.
    spec = builtin_specs({**SAMPLER, "seed": seed})[mode]
    return Editor(tiny_model).edit(IMAGE, spec).latent


@pytest.mark.slow
@pytest.mark.parametrize("mode", BUILTIN_MODES)
def test_the_same_seed_gives_the_same_latent_and_another_seed_another(tiny_model, one_thread, mode):
    a = _latent(tiny_model, mode, 7)
    b = _latent(tiny_model, mode, 7)
    c = _latent(tiny_model, mode, 8)
    assert torch.equal(a, b), f"{mode}: two edits with seed 7 differ"
    if mode in DETERMINISTIC:
        assert torch.equal(a, c), f"{mode} draws nothing at random, yet the seed changed its latent"
        return
    assert not torch.equal(a, c), f"{mode}: seeds 7 and 8 give the same latent: the seed reaches no draw"
    assert (a - c).abs().max().item() > 1e-4
