"""A dry run of an edit: the plan and what running it would cost, computed without the model."""

from __future__ import annotations

from dataclasses import dataclass

from .geometry import Canvas
from .inversion import UNetCounter
from .optimise import optimisation_cost
from .passes import inversion_steps, sampling_passes, source_branch
from .plan import EditPlan


@dataclass
class Cost:
    """UNet evaluations of an edit, by kind, as :class:`~dragsdk.inversion.UNetCounter` counts them (a classifier-free
    guidance batch of two is one evaluation).

    Attributes:
        forward: evaluations without a graph (inversion, sampling, guidance features, probes, time-travel
            roll-backs).
        forward_grad: feature forwards with an autograd graph (one per guided pass).
        backward: autograd passes (one per region, edit / content, that has an energy term, per guided pass).
        inversion_forward: the part of ``forward`` spent inverting (0 when the cached inversion would be reused).
        guidance: batch rows of truncated guidance-feature forwards made after inversion
            (:func:`~dragsdk.inversion.guidance_features`; 0 when the features are recorded during inversion).
        image_encoder: forwards of the image prompt's image encoder (the IP-Adapter's CLIP vision model), not UNet
            evaluations (``EditReport.image_encoder_forwards``; not in :meth:`to_dict`).
    """

    forward: int
    forward_grad: int
    backward: int
    inversion_forward: int
    guidance: int = 0
    image_encoder: int = 0

    def to_dict(self) -> dict[str, int]:
        """As ``EditReport.unet_evaluations`` (``guidance`` only when nonzero): the report's own counter's form."""
        return UNetCounter(self.forward, self.forward_grad, self.backward, self.guidance).to_dict()


def estimate_cost(
    plan: EditPlan,
    steps: int,
    invert: bool,
    probe_energy_after: bool = False,
    recompute_guidance: bool = False,
    feature_steps: set[int] | None = None,
    image_prompt: bool = False,
    finetune: tuple[int, int] = (0, 0),
) -> Cost:
    """The UNet evaluations :meth:`Editor.edit` makes for ``plan`` with ``steps`` DDIM steps: the sampler's own pass
    sequence (:func:`dragsdk.passes.sampling_passes`, :meth:`~dragsdk.passes.Pass.unet_evaluations`) counted
    instead of run, plus the inversion (:func:`dragsdk.passes.inversion_steps`) when ``invert``, plus the latent
    optimisation (:func:`dragsdk.optimise.optimisation_cost`: its maximum, which an early stop of its tracker lowers),
    plus ``finetune``: ``(forward_grad, backward)`` of the per-image LoRA's training
    (:func:`dragsdk.finetune.finetune_cost`; zero when its cache holds it).

    ``feature_steps``: the steps whose guidance features the inversion provides (``guidance`` rows = their count ×
    bank rows when they are not recorded). ``image_prompt``: an image-prompt adapter is loaded; a plan with an image
    prompt then encodes its image once per edit (one image-encoder forward, inversion reused or not: the tokens are
    not cached), and a plan whose ``fidelity.text_context`` is ``text+image`` encodes the base image once more (its
    tokens in the text context, :func:`dragsdk.image_prompt.context_image_tokens`).
    """
    inv = ref_rows = 0
    if invert:
        inv = inversion_steps(plan, steps)
        if plan.sampling == "ddim" and plan.fidelity.guidance_features != "recorded" and feature_steps:
            ref_rows = len(feature_steps) * (1 + len(plan.references))
    regions = len({term.region for term in plan.energies})
    fwd, fwd_grad, bwd = optimisation_cost(plan.optimise)
    fwd_grad, bwd = fwd_grad + finetune[0], bwd + finetune[1]
    fwd += inv
    for p in sampling_passes(plan, steps):
        f, g, b = p.unet_evaluations(regions, probe_energy_after, recompute_guidance, source_branch(plan))
        fwd, fwd_grad, bwd = fwd + f, fwd_grad + g, bwd + b
    encoder = int(plan.image_prompt is not None) + int(plan.fidelity.text_context == "text+image")
    return Cost(fwd, fwd_grad, bwd, inv, ref_rows, encoder if image_prompt else 0)


@dataclass
class DryRun:
    """What :meth:`Editor.plan` returns.

    Attributes:
        plan: the mode's plan: ``plan.edit_mask`` ``(h, w)`` bool on the latent grid, energy terms, pastes,
            ``plan.guided_steps`` (sampling step indices taking energy guidance), ``plan.kv`` (K/V injection window
            ``start ≤ i < end``, or None).
        canvas: the working canvas: ``canvas.size`` working pixels ``(w, h)``, ``canvas.latent_size`` latent cells,
            ``canvas.feature_size`` feature cells.
        steps: DDIM steps (after overrides).
        guided_steps: the sampling steps that take energy guidance (empty for gradient-free plans).
        kv_window: ``(start, end)`` sampling steps of cross-branch K/V injection, or None.
        inversion_cached: the Editor holds this image's inversion for these settings and weights.
        cost: UNet evaluations the edit would make.
        backend / backend_reason: the backend ``auto`` (or the named one) would use, and why.
        finetune_cached: the plan's per-image LoRA (``plan.finetune``) is in the on-disk cache, so the edit loads it
            instead of training (False when the plan has none).
    """

    plan: EditPlan
    canvas: Canvas
    steps: int
    guided_steps: list[int]
    kv_window: tuple[int, int] | None
    inversion_cached: bool
    cost: Cost
    backend: str
    backend_reason: str
    finetune_cached: bool = False
