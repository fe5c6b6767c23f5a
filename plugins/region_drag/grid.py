"""RegionDrag's time grid (the official ``region_utils/cycle_sde.py`` and ``drag.py`` @5cf4922): the ``schedule`` of
a region-drag plan (``EditPlan.schedule``), run by the engine's Cycle-SDE (``sampling="cycle-sde"``)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from dragsdk.authoring import DDIMSchedule, SpecError

__all__ = ["RegionDragGrid"]


class RegionDragGrid(DDIMSchedule):
    """The time grid of the official RegionDrag code (``region_utils/cycle_sde.py`` and ``drag.py`` @5cf4922).

    ``G = DPMSolverMultistepScheduler.from_config(config).set_timesteps(n)`` (``cycle_sde.py:23``; for SD 1.5's
    config ``linspace`` spacing: ``[999, 949, …, 549, 500, 450, …, 50]`` for ``n = 20``) and the step
    ``Δ = 1000 // n`` (``num_train_timesteps // num_inference_steps``, ``cycle_sde.py:114,132``). With
    ``m = n − start`` inverted steps (``int(start_t·n)``, ``drag.py:126``):

    - **inversion** (``drag.py:128``, ``forward_sde`` ``cycle_sde.py:131-149``): for ``g`` in ``G[start:]`` from the
      bottom, the latent goes from level ``g`` to ``g + Δ`` and the UNet runs at ``g + Δ``; the encoded image sits
      at ``ᾱ[G[n−1]]`` (ᾱ[50] = 0.952 for SD 1.5 at 20 steps, not ᾱ = 1). Sampling step ``start + k`` is recorded by
      the step ``G[start+k] → G[start+k] + Δ``: UNet at 550, 500, …, 100 for the defaults.
    - **denoising** (``drag.py:142``, ``sample`` ``cycle_sde.py:111-129``): step ``start + k`` runs at
      ``t = G[start − 1 + k]`` down to ``t − Δ`` (ᾱ = 1 below 0): 549, 500, 450, …, 100 → 50 for the defaults.

    ``first_step`` (the official off-by-one): with ``"official"`` the first denoising step runs at ``G[start − 1]``
    (549) → 499 although its recorded latent, noise and K/V are those of 550 → 500, exactly as the official code
    (measured: 2e-2 max latent deviation at the end on the tiny model). ``"recorded"`` runs every denoising
    step at the levels its noise was recorded for (550 → 500), so an unedited latent cycles back exactly.
    The same holds for grids whose spacing is not ``Δ`` (e.g. 30 steps): ``"official"`` keeps the official
    mismatch at every step, ``"recorded"`` none. Inverting all ``n`` steps (``start = 0``) would evaluate the UNet
    past timestep 999 (the official code raises an IndexError) and is refused.

    Attributes:
        timesteps: ``(n,)`` sampling timesteps; entries below ``start`` are the upper grid (never run).
        inversion_timesteps: ``(n,)`` UNet timesteps of the inversion steps (entries below ``start`` unused).

    Raises:
        ValueError: ``start`` outside ``[0, n)``.
        SpecError: (field ``sampler.steps``) an inversion step past the last training timestep.
    """

    def __init__(
        self, scheduler: Any, steps: int, start: int, first_step: Literal["official", "recorded"] = "official"
    ) -> None:
        from diffusers import DPMSolverMultistepScheduler

        n = int(steps)
        if not 0 <= start < n:
            raise ValueError(f"start must be in [0, {n}), got {start}")
        dpm = DPMSolverMultistepScheduler.from_config(
            scheduler.config
        )  # a new object: the host's is untouched
        with (
            warnings.catch_warnings()
        ):  # diffusers' sigma table passes a tensor through np.array (numpy 2 notice)
            warnings.simplefilter("ignore", DeprecationWarning)
            dpm.set_timesteps(n)
        grid = [int(t) for t in dpm.timesteps]
        self._ac = dpm.alphas_cumprod.double()
        self.delta = int(dpm.config.num_train_timesteps) // n
        self.start = start
        self.first_step = first_step
        inv = [g + self.delta for g in grid]
        smp = list(grid)
        if first_step == "recorded":
            smp[start:] = inv[start:]
        else:
            smp[start:] = grid[start - 1 : n - 1]
        self.timesteps = smp
        self.inversion_timesteps = inv
        top = int(dpm.config.num_train_timesteps) - 1
        if inv[start] > top:
            raise SpecError(
                "sampler.steps",
                f"start={start} of {n} steps inverts past the last training timestep ({inv[start]} > {top}); the "
                f"official code fails there too (IndexError): invert at most {n - 1} steps",
            )
        self._levels_inv = [(self._a(min(g + self.delta, top)), self._a(g)) for g in grid]
        self._final = self._a(grid[-1])

    def _a(self, t: int) -> float:
        return float(self._ac[t]) if t >= 0 else 1.0

    def alpha(self, i: int) -> float:
        return self._a(self.timesteps[i])

    def alpha_prev(self, i: int) -> float:
        return self._a(self.timesteps[i] - self.delta)

    def inversion_step(self, i: int) -> tuple[int, float, float]:
        a_t, a_prev = self._levels_inv[i]
        return self.inversion_timesteps[i], a_t, a_prev

    @property
    def clean_alpha(self) -> float:
        """ᾱ at which the encoded image sits (``latents[n]``) and the last denoising step ends."""
        return self._final
