"""The pass sequence of an edit: one list of UNet passes, walked once by the dry run to count them
(:func:`dragsdk.dryrun.estimate_cost`) and once by :meth:`dragsdk.sampler.GuidedSampler.run` to run them, so the
two cannot drift apart.

A *pass* is one DDIM update of sampling step ``i``: step ``i`` has one pass, or ``time_travel[i]`` passes when it is
guided (DiffEditor arXiv 2402.02583 Alg. 1: every pass but the last is followed by a roll-back to step ``i``'s
level).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .plan import EditPlan


@dataclass(frozen=True)
class Pass:
    """One pass of sampling step ``step``.

    Attributes:
        step: the sampling step index ``i`` (``start_step ≤ i < steps``).
        index: the pass number inside the step, ``0 … passes − 1``.
        passes: how many passes step ``i`` makes.
        guided: the step takes energy guidance (one feature forward with a graph, one backward per region).
        own_guidance: the guidance reference is the latent itself (``step0_guidance="init"`` at the first step),
            so no reference is read or recomputed.
    """

    step: int
    index: int
    passes: int
    guided: bool
    own_guidance: bool

    @property
    def first(self) -> bool:
        """The step's first pass: its per-step work (noise draw, pastes, outside reset) runs before it."""
        return self.index == 0

    @property
    def last(self) -> bool:
        """The step's last pass: its result is the step's result; every other pass is rolled back."""
        return self.index + 1 == self.passes

    def unet_evaluations(
        self, regions: int, probe_energy_after: bool, recompute_guidance: bool, source_branch: bool = False
    ) -> tuple[int, int, int]:
        """``(forward, forward_grad, backward)`` this pass costs, as :class:`~dragsdk.sampler.GuidedSampler` runs it:
        one ε forward; guided, one graph forward, ``regions`` backwards, one forward per energy probe and per
        recomputed guidance step; one roll-back forward unless it is the last pass; with a ``source_branch``
        (``fidelity.kv_source="reconstruction"``) one source forward on the step's first pass."""
        fwd, fwd_grad, bwd = 1 + int(not self.last) + int(source_branch and self.first), 0, 0
        if self.guided:
            fwd_grad, bwd = 1, regions
            fwd += int(probe_energy_after) + int(recompute_guidance and not self.own_guidance)
        return fwd, fwd_grad, bwd


def source_branch(plan: EditPlan) -> bool:
    """The sampler runs a source branch beside the edit (K/V from ``reconstruction``, with a K/V plan)."""
    return plan.kv is not None and plan.fidelity.kv_source == "reconstruction"


def guided_steps(plan: EditPlan) -> set[int]:
    """The sampling steps that take energy guidance (:meth:`EditPlan.energy_steps`)."""
    return plan.energy_steps()


def sampling_passes(plan: EditPlan, steps: int) -> Iterator[Pass]:
    """The passes of sampling steps ``plan.start_step … steps − 1``, in the order they run."""
    guided = guided_steps(plan)
    for i in range(plan.start_step, steps):
        g = i in guided
        n = (plan.time_travel or {}).get(i, 1) if g else 1
        own = plan.fidelity.step0_guidance == "init" and i == plan.start_step
        for p in range(n):
            yield Pass(i, p, n, g, own)


def inversion_steps(plan: EditPlan, steps: int) -> int:
    """UNet passes of the inversion: steps ``start_step … steps − 1`` (DDIM and Cycle-SDE alike)."""
    return steps - plan.start_step
