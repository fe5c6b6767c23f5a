"""The step hook's return value (issue 22, Embedding): True cancels, None / False go on, anything else is refused by
name; diffusers' ``hook(pipe, step, timestep, callback_kwargs) -> dict`` signature works as diffusers calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dragsdk.errors import ArgumentTypeError, EditCancelled
from dragsdk.progress import is_diffusers_hook, wants_cancel

TINY = {"steps": 3, "resolution": 64}


@pytest.fixture
def drag(car_sample):
    image, spec = car_sample
    return image, {**spec, "sampler": TINY}


@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor(True), np.array([True])])
def test_true_and_bool_like_scalars_cancel(value):
    assert wants_cancel(value) is True


@pytest.mark.parametrize("value", [None, False, np.bool_(False), torch.tensor(False)])
def test_none_and_false_go_on(value):
    assert wants_cancel(value) is False


@pytest.mark.parametrize("value", [{"latents": 1}, 1, 0, "stop", torch.tensor([True, False]), 1.0])
def test_any_other_return_is_refused_naming_the_hook(value):
    with pytest.raises(ArgumentTypeError) as err:
        wants_cancel(value)
    assert err.value.field == "callback_on_step_end" and "None or a bool" in str(err.value)


def test_the_signature_decides_the_calling_convention():
    def ours(event):
        return None

    def theirs(pipe, step, timestep, callback_kwargs):
        return callback_kwargs

    class Hook:
        def __call__(self, pipe, step, timestep, callback_kwargs=None):
            return {}

    assert not is_diffusers_hook(ours) and not is_diffusers_hook(lambda e, extra=None: None)
    assert is_diffusers_hook(theirs) and is_diffusers_hook(Hook())
    assert not is_diffusers_hook(print)  # builtins: signature unreadable, taken as dragsdk's


@pytest.mark.slow
def test_a_hook_returning_a_dict_is_refused_and_the_editor_stays_usable(editor, drag):
    image, spec = drag
    with pytest.raises(ArgumentTypeError) as err:
        editor.edit(image, spec, callback_on_step_end=lambda event: {"latents": event.latent})
    assert err.value.field == "callback_on_step_end" and "dict" in str(err.value)
    assert editor.edit(image, spec).latent is not None


@pytest.mark.slow
def test_a_hook_returning_false_or_none_never_cancels(editor, drag):
    image, spec = drag
    seen = []
    result = editor.edit(image, spec, callback_on_step_end=lambda event: seen.append(event.phase) or False)
    assert result.latent is not None and seen.count("sample") == TINY["steps"]


def test_a_numpy_true_cancels_at_the_first_step(editor, drag):
    image, spec = drag
    with pytest.raises(EditCancelled) as err:
        editor.edit(image, spec, callback_on_step_end=lambda event: np.bool_(True))
    assert err.value.phase == "encode"


def test_a_diffusers_style_hook_runs_after_each_sampling_step_and_changes_nothing(editor, drag, one_thread):
    image, spec = drag
    calls = []

    def on_step_end(pipe, step, timestep, callback_kwargs):
        calls.append((pipe, step, int(timestep), callback_kwargs["latents"].shape))
        return callback_kwargs

    plain = editor.edit(image, spec, reuse_inversion=False)
    hooked = editor.edit(image, spec, reuse_inversion=False, callback_on_step_end=on_step_end)
    assert torch.equal(plain.latent, hooked.latent)
    assert len(calls) == TINY["steps"] and all(c[0] is editor for c in calls)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and len({c[2] for c in calls}) == len(calls)
    assert all(len(c[3]) == 4 for c in calls)
