"""The latent-optimisation stage: optimise the inverted latent of one timestep before sampling.

A plan's :class:`~dragsdk.plan.LatentOptimisation` supplies an objective over the UNet's decoder features and the
latent at one timestep, and optionally a tracker; :func:`optimise_latent` runs it (DragDiffusion's loop, arXiv
2306.14435 §3.2, official ``drag_diffusion_update``, ``utils/drag_utils.py:79-161``; the order of forward,
tracking, stop test, loss, backward and Adam step is the official one, lines 112-159). The
:class:`~dragsdk.session.EditRun` stage ``optimise`` calls it between ``invert`` and ``sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .attention import AttentionController
from .features import FeatureTap
from .inversion import Level, UNetCounter, ddim_step
from .plan import LatentOptimisation, OptimisationState


@dataclass
class OptimisationOutput:
    """What the stage returns.

    Attributes:
        latent: ``(1, 4, h, w)`` the optimised latent (detached).
        steps: Adam steps made (``≤ max_steps``).
        stopped: the tracker ended the loop before ``max_steps``.
        records: one dict per iteration run: ``{"iteration", "loss"}`` (``loss`` None at an iteration the tracker
            ended) plus the mode's ``state.record``.
    """

    latent: torch.Tensor
    steps: int = 0
    stopped: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)


def optimisation_cost(opt: LatentOptimisation | None) -> tuple[int, int, int]:
    """``(forward, forward_grad, backward)`` UNet evaluations of the stage at most: one forward for the initial
    state, one graph forward and one backward per Adam step (the dry run's count; an early stop makes one graph
    forward more than backwards, and fewer of both)."""
    if opt is None:
        return 0, 0, 0
    return 1, opt.max_steps, opt.max_steps


def _state(
    unet: Callable[..., Any],
    tap: FeatureTap,
    z: torch.Tensor,
    t: int,
    a_t: Level,
    a_prev: Level,
    cond: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Features of ``tap``'s blocks and the DDIM step ``z_{t_prev}`` of ``z`` (full forward, text conditioning)."""
    with tap.capture():
        eps = unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
    return tap.features(), ddim_step(z, eps, a_t, a_prev)


def optimise_latent(
    unet: Callable[..., Any],
    unet_module: Any,
    controller: AttentionController,
    z: torch.Tensor,
    t: int,
    a_t: Level,
    a_prev: Level,
    cond: torch.Tensor,
    opt: LatentOptimisation,
    counter: UNetCounter,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> OptimisationOutput:
    """Run ``opt`` on ``z``.

    Args:
        unet: the (backend-wrapped) UNet callable, diffusers signature.
        unet_module: the diffusers UNet (its ``up_blocks`` are hooked for ``opt.feature_blocks``).
        controller: the attention state; plain attention (no K/V injection) during the stage.
        z: ``(1, 4, h, w)`` the inverted latent at timestep ``t``.
        t: the timestep (0…999); ``a_t``, ``a_prev``: ᾱ at ``t`` and at the next sampling step.
        cond: ``(1, 77, D)`` the prompt's embedding (guidance scale 1, as the official bench runs it).
        opt: the plan's optimisation.
        counter: UNet evaluations are counted here (:func:`optimisation_cost` is the dry run's count).
        on_step: ``on_step(k, latent)`` after each iteration (progress and cancellation; may raise).

    Returns:
        the :class:`OptimisationOutput`.

    Raises:
        ValueError: the objective returned something other than a finite scalar tensor depending on the latent.
    """
    tap = FeatureTap(unet_module, opt.feature_blocks)
    prev_mode = controller.mode
    controller.mode = "plain"
    try:
        with torch.no_grad():
            f0, x0 = _state(unet, tap, z, t, a_t, a_prev, cond)
        counter.forward += 1
        initial = OptimisationState(-1, z.detach(), [f.detach() for f in f0], x0.detach(), None, {}, {})
        latent = z.detach().clone().requires_grad_(True)
        adam = torch.optim.Adam([latent], lr=opt.lr)
        out = OptimisationOutput(latent.detach())
        memo: dict[str, Any] = {}
        for k in range(opt.max_steps):
            with torch.enable_grad():
                feats, x_prev = _state(unet, tap, latent, t, a_t, a_prev, cond)
                counter.forward_grad += 1
                state = OptimisationState(k, latent, feats, x_prev, initial, memo, {})
                if opt.tracker is not None and opt.tracker(state):
                    out.stopped = True
                    out.records.append({"iteration": k, "loss": None, **state.record})
                    break
                loss = opt.objective(state)
                _check_loss(loss, k)
                adam.zero_grad()
                loss.backward()
            counter.backward += 1
            adam.step()
            out.steps += 1
            out.records.append({"iteration": k, "loss": float(loss.detach()), **state.record})
            if on_step is not None:
                on_step(k, latent.detach())
        out.latent = latent.detach()
        return out
    finally:
        controller.mode = prev_mode
        tap.remove()


def _check_loss(loss: Any, k: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(
            f"LatentOptimisation.objective must return a scalar tensor, got {type(loss).__name__}"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"LatentOptimisation.objective returned a loss that does not depend on the latent at iteration {k}"
        )
    if not bool(torch.isfinite(loss)):
        raise ValueError(f"LatentOptimisation.objective returned a non-finite loss at iteration {k}")
