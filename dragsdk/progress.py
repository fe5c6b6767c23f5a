"""The step hook of an edit: progress over every phase, and cancellation.

An edit runs four phases, each reported step by step to the hook given as ``Editor.edit(...,
callback_on_step_end=hook)`` (diffusers' name for its per-step hook):

- ``encode``: 1 step (the VAE encoding of the image and its references); ``latent`` the ``(B, 4, h, w)`` latents.
- ``invert``: ``steps − start_step`` inversion steps, or 1 when the cached inversion is reused; ``latent`` None
  (reused: the cached starting latent).
- ``sample``: ``steps − start_step`` sampling steps; ``latent`` the ``(1, 4, h, w)`` latent after the step.
- ``decode``: 1 step; ``latent`` the final latent ``(1, 4, h, w)``.

Cancelling: the hook returns ``True`` (or sets ``event.cancel = True``), or the ``cancel`` :class:`threading.Event`
given to ``edit`` is set (from any thread); the edit stops at the end of the current step with
:class:`~dragsdk.errors.EditCancelled`. Nothing is returned and nothing is cached; the host's attention processors are
restored, and the Editor is ready for the next edit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import EditCancelled

PHASES = ("encode", "invert", "sample", "decode")


@dataclass
class StepEvent:
    """One finished step, as the hook sees it.

    Attributes:
        phase: ``encode``, ``invert``, ``sample`` or ``decode``.
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


StepHook = Callable[[StepEvent], "bool | None"]
"""``hook(event) -> bool | None``: return True to cancel the edit."""


class StepReporter:
    """Counts the steps of each phase, calls the hook and raises :class:`EditCancelled` when asked to stop."""

    def __init__(self, hook: StepHook | None, cancel: threading.Event | None, totals: dict[str, int]) -> None:
        self.hook, self.cancel, self.totals = hook, cancel, totals
        self.done = dict.fromkeys(totals, 0)

    def __call__(self, phase: str, index: int | None = None, timestep: int | None = None,
                 latent: torch.Tensor | None = None, steps: int = 1) -> None:
        self.done[phase] += steps
        event = StepEvent(phase, self.done[phase], self.totals[phase], index, timestep, latent)
        stop = False
        if self.hook is not None:
            stop = bool(self.hook(event)) or event.cancel
        if stop or (self.cancel is not None and self.cancel.is_set()):
            raise EditCancelled(phase, self.done[phase], self.totals[phase])
