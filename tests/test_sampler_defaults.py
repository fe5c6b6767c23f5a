"""A mode's own sampler defaults survive a partial ``sampler`` block (issue 21: appearance's official guidance 5).

Appearance declares classifier-free guidance 5 (the official appearance slider, ``src/demo/demo.py:311``); a spec that named
only some sampler settings (``{"sampler": {"steps": 50}}``, the CLI's ``--steps``, the UI's settings) used to be
validated against :class:`SamplerSettings`' shared defaults and ran at guidance 4: the whole 0.12 final-latent gap of
appearance against the official code at 128² (2.0e-4 with guidance 5, ``benchmarks/parity/dragondiffusion.py``).
"""

from __future__ import annotations

import pytest

from dragsdk.registry import get_registry
from dragsdk.spec import SamplerSettings

APPEARANCE = {
    "mode": "appearance",
    "prompt": "p",
    "mask": "m.png",
    "reference": "r.png",
    "reference_mask": "rm.png",
}


def _appearance():
    return get_registry().spec_models()["appearance"]


@pytest.mark.parametrize(
    "sampler",
    [{"steps": 50}, {"seed": 3, "resolution": 128}, SamplerSettings(steps=20), {}],
    ids=["steps", "seed-resolution", "model-instance", "empty"],
)
def test_a_partial_sampler_block_keeps_appearances_official_guidance_scale(sampler):
    spec = _appearance().model_validate({**APPEARANCE, "sampler": sampler})
    assert spec.sampler.guidance_scale == 5.0


def test_a_named_guidance_scale_wins_over_the_modes_default():
    spec = _appearance().model_validate({**APPEARANCE, "sampler": {"steps": 50, "guidance_scale": 3.0}})
    assert spec.sampler.guidance_scale == 3.0 and spec.sampler.steps == 50


def test_the_merged_sampler_round_trips_through_json():
    spec = _appearance().model_validate({**APPEARANCE, "sampler": {"steps": 30}})
    again = _appearance().model_validate_json(spec.model_dump_json())
    assert again.sampler == spec.sampler and again.sampler.guidance_scale == 5.0


@pytest.mark.parametrize("mode", sorted(get_registry().spec_models()))
def test_every_mode_keeps_its_default_sampler_for_the_settings_a_partial_block_does_not_name(mode):
    model = get_registry().spec_models()[mode]
    info = model.model_fields["sampler"]
    default = info.default_factory() if info.default_factory is not None else info.default
    if default is None:
        pytest.skip("no default sampler")
    partial = {"steps": default.steps + 1}
    got = type(default).model_validate(model._keep_mode_sampler_defaults(partial))
    assert got.model_dump() == {**default.model_dump(), **partial}
