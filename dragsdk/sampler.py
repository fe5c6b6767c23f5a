"""The guided sampler: one loop for every mode.

Per sampling step ``i`` at timestep ``t``:

1. UNet with classifier-free guidance, batch ``[uncond, cond]``: ``ε = ε_u + s·(ε_c − ε_u)``; the decoder
   self-attention layers use the K/V bank as the plan's :class:`~dragsdk.plan.KVPlan` says.
2. On guided steps, energy guidance (DragonDiffusion arXiv 2307.02421 Eq. 7; DiffEditor arXiv 2402.02583 Eq. 8):
   features of ``z_t`` (text-only conditioning, no injection) with a graph, then
   ``g = c·λ·(m ⊙ ∇_z E_edit + (1 − m) ⊙ ∇_z E_content)`` with ``m`` the latent edit mask.
3. DDIM update with ``g`` in the x̂₀ term only (:func:`~dragsdk.inversion.ddim_step`), with per-cell η inside the
   regional-SDE window.

Guidance features come from the :class:`~dragsdk.inversion.Trajectory` (recorded during the inversion or computed
right after it, as ``plan.fidelity.guidance_features`` says); with ``step0_guidance="init"`` the first step's
reference is the starting latent itself (the official drag). Time travel (DiffEditor Alg. 1): a repeated step rolls
the latent back after every pass but the last (the official code also rolls back after the last pass and throws the
result away: deterministic, no random draw, so skipping it changes nothing but the cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .attention import AttentionController, KVBank
from .features import FeatureTap
from .inversion import DDIMSchedule, Trajectory, UNetCounter, ddim_inversion_step, ddim_step
from .passes import Pass, sampling_passes, source_branch
from .plan import EditPlan
from .spec import ENERGY_UNIT
from .trace import TracePass


@dataclass
class StepEnergy:
    """Energies at one guided step: ``before`` at ``z_t``; ``after`` (when probed) at ``z_t − √(1−ᾱ_t)·g``, the
    guided step's change of the predicted clean latent applied at the same noise level."""

    step: int
    timestep: int
    terms: dict[str, float]
    total: float
    after: float | None = None
    grad_norm: float = 0.0


@dataclass
class SamplerOutput:
    latent: torch.Tensor
    energies: list[StepEnergy] = field(default_factory=list)
    trace: list[TracePass] = field(default_factory=list)
    rollback_timesteps: list[int] = field(default_factory=list)


class GuidedSampler:
    """Runs a plan over a trajectory.

    Args:
        unet: the (possibly backend-wrapped) UNet callable with the diffusers signature.
        controller: the shared attention state (processors already installed).
        tap: decoder feature hooks.
        counter: where UNet evaluations are counted.
        probe_energy_after: also evaluate each guided step's energy after the update (one extra feature forward
            per guided step; for diagnostics and tests).
        recompute_guidance: recompute the guidance features from the inverted latent at every guided step, as
            the official code does (``Editor(official_cost=True)``, the benchmarks' ``official-cost`` profile), instead of reading the ones
            recorded during inversion.
    """

    def __init__(
        self,
        unet: Callable[..., Any],
        controller: AttentionController,
        tap: FeatureTap,
        counter: UNetCounter,
        probe_energy_after: bool = False,
        recompute_guidance: bool = False,
    ) -> None:
        self.recompute_guidance = recompute_guidance
        self.unet = unet
        self.controller = controller
        self.tap = tap
        self.counter = counter
        self.probe_energy_after = probe_energy_after

    def features(self, z: torch.Tensor, t: int, cond: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features of ``z`` at ``t`` (plain attention, truncated after the last feature block)."""
        prev = self.controller.mode
        self.controller.mode = "plain"
        try:
            with self.tap.capture(stop=True):
                self.unet(z, t, encoder_hidden_states=cond, return_dict=False)
        finally:
            self.controller.mode = prev
        return self.tap.features()

    def _energies(
        self, plan: EditPlan, cur: list[torch.Tensor], ref: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {term.name: term.fn(cur, ref) for term in plan.energies}

    def _guidance(
        self,
        plan: EditPlan,
        z: torch.Tensor,
        i: int,
        t: int,
        a_t: float,
        cond_text: torch.Tensor,
        ref: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, StepEnergy]:
        """Energy guidance ``g`` at ``z``; ``ref=None``: the reference is ``z``'s own features (detached), what the
        official drag's step 0 computes (one feature forward serves both)."""
        mask = plan.edit_mask.to(z.device, z.dtype)[None, None]
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            cur = self.features(zg, t, cond_text)
            if ref is None:
                ref = [f.detach() for f in cur]
            values = self._energies(plan, cur, ref)
            self.counter.forward_grad += 1
            regions = {
                r: [values[term.name] for term in plan.energies if term.region == r]
                for r in ("edit", "content")
            }
            sums = {r: torch.stack(v).sum() for r, v in regions.items() if v}
            grads: dict[str, torch.Tensor] = {}
            names = list(sums)
            for k, r in enumerate(names):
                if sums[r].requires_grad:
                    (grads[r],) = torch.autograd.grad(sums[r], zg, retain_graph=k + 1 < len(names))
                    self.counter.backward += 1
        zero = torch.zeros_like(z)
        g = mask * grads.get("edit", zero) + (1 - mask) * grads.get("content", zero)
        g = (plan.guidance_step * plan.energy_scale * ENERGY_UNIT) * g
        terms = {k: float(v.detach()) for k, v in values.items()}
        record = StepEnergy(i, t, terms, float(sum(terms.values())), grad_norm=float(g.norm()))
        if self.probe_energy_after:
            with torch.no_grad():
                after = self._energies(plan, self.features(z - (1 - a_t) ** 0.5 * g, t, cond_text), ref)
            self.counter.forward += 1
            record.after = float(sum(float(v) for v in after.values()))
        return g.detach(), record

    def _reference(self, trajectory: Trajectory, i: int, t: int) -> list[torch.Tensor]:
        with torch.no_grad():
            cond = trajectory.cond if trajectory.feature_cond is None else trajectory.feature_cond
            feats = [f.detach() for f in self.features(trajectory.latents[i], t, cond)]
        self.counter.forward += 1
        return feats

    def _eps(
        self,
        plan: EditPlan,
        z: torch.Tensor,
        i: int,
        t: int,
        cond_cfg: torch.Tensor,
        cond_sample: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """ε with classifier-free guidance (context ``cond_cfg``; ``cond_sample`` alone at guidance 1) and the plan's
        K/V injection at step ``i``."""
        ctl = self.controller
        if plan.kv is not None and plan.kv.active(i):
            ctl.mode, ctl.injection = "inject", plan.kv.injection
        self._image_prompt(plan, i)
        try:
            if guidance_scale == 1.0:
                eps = self.unet(z, t, encoder_hidden_states=cond_sample, return_dict=False)[0]
            else:
                e = self.unet(z.expand(2, -1, -1, -1), t, encoder_hidden_states=cond_cfg, return_dict=False)[
                    0
                ]
                eps = e[:1] + guidance_scale * (e[1:] - e[:1])
        finally:
            ctl.mode, ctl.injection = "plain", None
            self._image_prompt(None, i)
        self.counter.forward += 1
        return eps

    def _image_prompt(self, plan: EditPlan | None, i: int) -> None:
        """Switch the image-prompt term on for step ``i`` when the plan's window holds it (``plan=None``: off).
        Only the sampling UNet calls (CFG ε and the time-travel roll-back) see it; feature forwards and the
        inversion are text-only."""
        ip = self.controller.image_prompt
        if ip is not None:
            ip.active = plan is not None and plan.image_prompt is not None and plan.image_prompt.active(i)

    def _roll_back(
        self,
        z_prev: torch.Tensor,
        t_unet: int,
        a_t: float,
        a_prev: float,
        cond_sample: torch.Tensor,
        plan: EditPlan,
        i: int,
    ) -> torch.Tensor:
        """Time travel's deterministic roll-back ``z_{t_prev} → z_t``: one DDIM inversion step with the UNet at
        ``t_unet`` (official: ``t_prev``, ``Sampler.py:136-144``), batch 1, the conditional sampling context
        ``cond_sample`` (official ``text_embeddings``, ``Sampler.py:141``; and the image prompt inside its window, as
        the official context), no K/V injection (DiffEditor arXiv 2402.02583 Alg. 1)."""
        self._image_prompt(plan, i)
        try:
            eps = self.unet(z_prev, t_unet, encoder_hidden_states=cond_sample, return_dict=False)[0]
        finally:
            self._image_prompt(None, i)
        self.counter.forward += 1
        return ddim_inversion_step(z_prev, eps, a_t, a_prev)

    @torch.no_grad()
    def run(
        self,
        trajectory: Trajectory,
        plan: EditPlan,
        cond_cfg: torch.Tensor,
        cond_text: torch.Tensor,
        guidance_scale: float,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
        trace: bool = False,
        start: torch.Tensor | None = None,
        cond_sample: torch.Tensor | None = None,
    ) -> SamplerOutput:
        """Sample from the trajectory's ``z_T`` (with the plan's initial pastes) to ``z_0``, walking the plan's pass
        sequence (:func:`dragsdk.passes.sampling_passes`, the one the dry run counts).

        Args:
            cond_cfg: ``(2, L, D)`` = [unconditional, conditional] context of the CFG ε calls (``L`` = 77 text
                tokens, plus the image tokens with ``plan.fidelity.text_context == "text+image"``).
            cond_text: ``(1, 77, D)`` conditional text embedding (feature forwards: always text only).
            guidance_scale: classifier-free guidance scale ``s``.
            on_step: called as ``on_step(i, t, z_prev)`` after each step.
            trace: keep one :class:`~dragsdk.trace.TracePass` per pass (latents copied to the CPU).
            start: ``(1, 4, h, w)`` the latent to start from instead of the inverted one (the ``optimise`` stage's
                result, :mod:`dragsdk.optimise`); the plan's ``init`` pastes and handle noise still apply.
            cond_sample: ``(1, L, D)`` conditional context of the sampling calls without CFG (the roll-back, ε at
                guidance 1); None = ``cond_text``.

        Returns:
            the final latent ``(1, 4, h, w)``, the energies of the guided steps, the trace (when asked) and the
            timesteps at which roll-back UNet calls ran.
        """
        schedule: DDIMSchedule = trajectory.schedule
        cond_sample = cond_text if cond_sample is None else cond_sample
        z = self._start_latent(trajectory, plan, generator, start)
        keep = (~plan.edit_mask).to(z.device)[None, None] if plan.follow_outside else None
        eta_map = self._eta_map(plan, z)
        out = SamplerOutput(z)
        noise = None
        bank, z_src = self.controller.bank, trajectory.latents[plan.start_step][:1]
        for ps in sampling_passes(plan, len(schedule)):
            i, t = ps.step, schedule.timesteps[ps.step]
            if ps.first:
                self.controller.step = i
                noise = self._noise(plan, trajectory, i, z, eta_map, generator)
                z = self._before_step(plan, trajectory, i, t, z, keep)
                if source_branch(plan):
                    z_src = self._source_step(z_src, i, t, schedule, cond_text)
            z_prev = self._pass(
                ps,
                plan,
                trajectory,
                z,
                t,
                cond_cfg,
                cond_text,
                cond_sample,
                guidance_scale,
                eta_map if noise is not None else 0.0,
                noise,
                out,
                trace,
            )
            if not ps.last:
                t_unet = (
                    schedule.timesteps[i + 1]
                    if plan.fidelity.rollback_at == "prev" and i + 1 < len(schedule)
                    else t
                )
                z = self._roll_back(
                    z_prev, t_unet, schedule.alpha(i), schedule.alpha_prev(i), cond_sample, plan, i
                )
                out.rollback_timesteps.append(t_unet)
                continue
            z = z_prev
            if (
                keep is not None and plan.fidelity.outside_reset == "after"
            ):  # outside the mask: the inversion trajectory
                z = torch.where(keep, trajectory.latents[i + 1][:1].to(z), z)
                if trace:
                    out.trace[-1].latent_after = z.detach().float().cpu()
            if on_step:
                on_step(i, t, z)
        out.latent = z
        self.controller.bank = bank
        return out

    def _source_step(
        self, z_src: torch.Tensor, i: int, t: int, schedule: DDIMSchedule, cond_text: torch.Tensor
    ) -> torch.Tensor:
        """Step ``i`` of the source branch (``fidelity.kv_source="reconstruction"``): its K/V recorded into a fresh
        bank that the edit's injection reads at this step, then its DDIM update (text only, as DragDiffusion's
        source row at guidance 1, ``drag_pipeline.py:525-543``). Returns the source latent after the step."""
        ctl = self.controller
        ctl.bank, ctl.mode, ctl.record_steps = KVBank(), "record", None
        try:
            eps = self.unet(z_src, t, encoder_hidden_states=cond_text, return_dict=False)[0]
        finally:
            ctl.mode = "plain"
        self.counter.forward += 1
        return ddim_step(z_src, eps, *schedule.levels(i))

    @staticmethod
    def _start_latent(
        trajectory: Trajectory,
        plan: EditPlan,
        generator: torch.Generator | None,
        z_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z`` at the first sampling step: the inverted latent (or ``z_start``) with the plan's ``init`` pastes and
        handle noise."""
        start = plan.start_step
        z = trajectory.latents[start][:1] if z_start is None else z_start
        for paste in plan.init:
            z = paste.apply(z, trajectory.latents[start])
        if plan.handle_noise is not None:
            z = plan.handle_noise.apply(z, generator)
        return z

    @staticmethod
    def _eta_map(plan: EditPlan, z: torch.Tensor) -> torch.Tensor | None:
        """η per latent cell (regional SDE: inside / outside its mask; Cycle-SDE: 1), or None (deterministic)."""
        eta_map = None
        if plan.sde is not None:
            m = (plan.sde.mask if plan.sde.mask is not None else plan.edit_mask).to(z.device, z.dtype)[
                None, None
            ]
            eta_map = plan.sde.eta_inside * m + plan.sde.eta_outside * (1 - m)
        if plan.sampling == "cycle-sde":  # η = 1 with the noise recorded at inversion (dragsdk.cycle_sde)
            eta_map = torch.ones((), dtype=z.dtype, device=z.device)
        return eta_map

    @staticmethod
    def _noise(
        plan: EditPlan,
        trajectory: Trajectory,
        i: int,
        z: torch.Tensor,
        eta_map: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor | None:
        """Step ``i``'s noise: drawn inside the regional-SDE window, the recorded one for Cycle-SDE, else None."""
        noise = None
        if eta_map is not None and plan.sde is not None and plan.sde.start <= i < plan.sde.end:
            noise = torch.randn(z.shape, generator=generator, device=generator.device if generator else "cpu")
            noise = noise.to(z.device, z.dtype)
        if plan.sampling == "cycle-sde":
            noise = trajectory.noises[i][:1].to(z.device, z.dtype)
        return noise

    @staticmethod
    def _before_step(
        plan: EditPlan, trajectory: Trajectory, i: int, t: int, z: torch.Tensor, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """Step ``i``'s latent copies from the inversion latent of this step, then (``outside_reset="before"``, the
        official RegionDrag order, ``drag.py:144-146``) the reset outside the mask."""
        for sp in plan.step_pastes:
            if sp.active(t):
                z = sp.paste.apply(z, trajectory.latents[i])
        if keep is not None and plan.fidelity.outside_reset == "before":
            z = torch.where(keep, trajectory.latents[i][:1].to(z), z)
        return z

    def _pass(
        self,
        ps: Pass,
        plan: EditPlan,
        trajectory: Trajectory,
        z: torch.Tensor,
        t: int,
        cond_cfg: torch.Tensor,
        cond_text: torch.Tensor,
        cond_sample: torch.Tensor,
        guidance_scale: float,
        eta: torch.Tensor | float,
        noise: torch.Tensor | None,
        out: SamplerOutput,
        trace: bool,
    ) -> torch.Tensor:
        """One pass: energy guidance (guided steps), ε with CFG and K/V injection, the DDIM update; returns
        ``z_{t_prev}`` and records the energies (and the trace) into ``out``."""
        schedule, i = trajectory.schedule, ps.step
        a_t = schedule.alpha(i)  # the guidance reads ᾱ_t as a float; the DDIM update takes schedule.levels(i)
        g = rec = None
        if trace:
            out.trace.append(TracePass(i, ps.index, t, z.detach().float().cpu()))
        if ps.guided:
            if ps.own_guidance:
                ref = None  # the pasted starting latent is its own reference (official drag step 0)
            elif self.recompute_guidance:
                ref = self._reference(trajectory, i, t)
            else:
                ref = trajectory.features[i]
            g, rec = self._guidance(plan, z, i, t, a_t, cond_text, ref)
            out.energies.append(rec)
        eps = self._eps(plan, z, i, t, cond_cfg, cond_sample, guidance_scale)
        z_prev = ddim_step(z, eps, *schedule.levels(i), guidance=g, eta=eta, noise=noise)
        if trace:
            out.trace[-1].latent_after = z_prev.detach().float().cpu()
            if rec is not None:
                out.trace[-1].energies = dict(rec.terms)
                out.trace[-1].guidance_norm = rec.grad_norm
        return z_prev
