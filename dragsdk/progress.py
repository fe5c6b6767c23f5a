"""The step hook of an edit: progress over every phase, and cancellation.

An edit runs four phases (five with a latent optimisation), each reported step by step to the hook given as ``Editor.edit(...,
callback_on_step_end=hook)`` (diffusers' name for its per-step hook):

- ``finetune``: only for a plan with a per-image LoRA (:class:`~dragsdk.plan.ImageLoRA`): one step per training
  step (``index`` the step, ``latent`` None), or 1 when the LoRA came from its cache.
- ``encode``: 1 step (the VAE encoding of the image and its references); ``latent`` the ``(B, 4, h, w)`` latents.
- ``invert``: ``steps − start_step`` inversion steps, or 1 when the cached inversion is reused; ``latent`` None
  (reused: the cached starting latent).
- ``optimise``: only for a plan with a :class:`~dragsdk.plan.LatentOptimisation`: at most ``max_steps`` Adam steps
  (fewer when its tracker stops early); ``index`` / ``timestep`` the optimised step's, ``latent`` the
  ``(1, 4, h, w)`` latent after the Adam step.
- ``sample``: ``steps − start_step`` sampling steps; ``latent`` the ``(1, 4, h, w)`` latent after the step.
- ``decode``: 1 step; ``latent`` the final latent ``(1, 4, h, w)``.

Cancelling: the hook returns ``True`` (a ``bool``, ``numpy.bool_`` or one-element bool tensor; or sets
``event.cancel = True``), or the ``cancel`` :class:`threading.Event` given to ``edit`` is set (from any thread); the
edit stops at the end of the current step with :class:`~dragsdk.errors.EditCancelled`. Nothing is returned and
nothing is cached; the host's attention processors are restored, and the Editor is ready for the next edit. A hook
returning ``None`` or ``False`` lets the edit go on; any other return value (an int, a dict, a string) is refused
with :class:`~dragsdk.errors.ArgumentTypeError`, since "truthy cancels" would stop every edit of a hook written for
diffusers, which returns its kwargs dict.

diffusers' own hook signature is accepted too: a callable taking four positional parameters,
``hook(pipe, step, timestep, callback_kwargs) -> dict``, is called after each **sampling** step only (as diffusers
calls it after each denoising step) with the :class:`~dragsdk.editor.Editor` as ``pipe``, the sampling step index,
the timestep and ``{"latents": latent}``. Its returned dict is accepted and not used: a hook cannot replace the
latent of an edit. Such a hook cancels through ``cancel`` (diffusers' ``pipe._interrupt`` has no counterpart).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ArgumentTypeError, EditCancelled

PHASES = ("finetune", "encode", "invert", "optimise", "sample", "decode")


@dataclass
class StepEvent:
    """One finished step, as the hook sees it.

    Attributes:
        phase: ``finetune``, ``encode``, ``invert``, ``optimise``, ``sample`` or ``decode``.
        step: steps of this phase done so far, ``1 … total``.
        total: the phase's step count.
        index: the schedule index of the step (sampling step ``i``; the inversion step reaching ``i``), None for
            ``encode`` and ``decode``.
        timestep: the diffusion timestep of that index (0…999), None for ``encode`` and ``decode``.
        latent: the latent after the step (see the module table); read it, do not modify it.
        cancel: set to True to cancel the edit (the same as returning True).
    """

    phase: str
    step: int
    total: int
    index: int | None = None
    timestep: int | None = None
    latent: torch.Tensor | None = None
    cancel: bool = False


StepHook = Callable[..., Any]
"""``hook(event) -> bool | None`` (return True to cancel the edit), or diffusers'
``hook(pipe, step, timestep, callback_kwargs) -> dict`` (module text)."""


def is_diffusers_hook(hook: Callable[..., Any]) -> bool:
    """Whether ``hook`` has diffusers' ``callback_on_step_end`` signature (four positional parameters) rather than
    dragsdk's ``hook(event)``. A callable whose signature cannot be read is taken as dragsdk's."""
    try:
        params = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) == 4 or (len(required) < 4 <= len(positional) and len(required) != 1)


def wants_cancel(value: object) -> bool:
    """What a dragsdk-style hook's return value asks: True cancels, None or False goes on.

    Raises:
        ArgumentTypeError: (``callback_on_step_end``) any other value: an int, a dict (diffusers' hooks return
            their kwargs), a string, a tensor of more than one element.
    """
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return bool(value.item())
    if isinstance(value, np.ndarray) and value.dtype == np.bool_ and value.size == 1:
        return bool(value.item())
    raise ArgumentTypeError(
        "callback_on_step_end",
        "a hook returning None or a bool (True cancels the edit), or "
        "diffusers' hook(pipe, step, timestep, callback_kwargs) -> dict",
        value,
    )


class StepReporter:
    """Counts the steps of each phase, calls the hook and raises :class:`EditCancelled` when asked to stop.

    Args:
        hook: dragsdk's ``hook(event)`` or diffusers' ``hook(pipe, step, timestep, callback_kwargs)`` (module text).
        cancel: the edit's cancel event.
        totals: steps per phase.
        pipe: what a diffusers-style hook receives as ``pipe`` (the Editor).
    """

    def __init__(
        self,
        hook: StepHook | None,
        cancel: threading.Event | None,
        totals: dict[str, int],
        pipe: object = None,
    ) -> None:
        self.hook, self.cancel, self.totals, self.pipe = hook, cancel, totals, pipe
        self.diffusers_style = hook is not None and is_diffusers_hook(hook)
        self.done = dict.fromkeys(totals, 0)

    def __call__(
        self,
        phase: str,
        index: int | None = None,
        timestep: int | None = None,
        latent: torch.Tensor | None = None,
        steps: int = 1,
    ) -> None:
        self.done[phase] += steps
        stop = False
        if self.hook is not None and self.diffusers_style:
            if phase == "sample":
                self.hook(self.pipe, index, timestep, {"latents": latent})  # returns its kwargs: not used
        elif self.hook is not None:
            event = StepEvent(phase, self.done[phase], self.totals[phase], index, timestep, latent)
            stop = wants_cancel(self.hook(event)) or event.cancel
        if stop or (self.cancel is not None and self.cancel.is_set()):
            raise EditCancelled(phase, self.done[phase], self.totals[phase])
