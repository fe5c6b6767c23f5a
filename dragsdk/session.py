"""One edit as a session: :class:`EditRun` holds what one edit needs and runs its named stages

``check_inputs → prepare → finetune → encode → invert → optimise → sample → decode → report``

(the pattern of diffusers' pipelines: a linear call of named, overridable stages). :meth:`dragsdk.editor.Editor.edit`
creates one and calls :meth:`EditRun.execute`; :meth:`dragsdk.editor.Editor.plan` runs the first two stages and
:meth:`EditRun.dry_run`. ``finetune`` trains (or loads from its cache) a plan's per-image
:class:`~dragsdk.plan.ImageLoRA` and keeps it on the UNet until the model stages end (:mod:`dragsdk.finetune`);
``optimise`` runs a plan's :class:`~dragsdk.plan.LatentOptimisation` (DragDiffusion's
motion supervision and point tracking, :mod:`dragsdk.optimise`) and does nothing for a plan without one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .attention import AttentionController, KVBank, classic_attention, install
from .concurrency import model_lock
from .cycle_sde import official_generator
from .dryrun import DryRun, estimate_cost
from .errors import ArgumentTypeError, NonFiniteError, SpecError
from .features import FeatureTap
from .finetune import LoRAOutcome, cache_dir, finetune_cost, lora_key, working_image
from .geometry import Canvas
from .image_prompt import ImagePromptPlan, append_context_tokens, context_image_tokens, host_adapter_detached
from .inversion import DDIMSchedule, Inversion, Trajectory, UNetCounter, guidance_features, invert
from .io import check_outputs, load_image, size_note
from .keys import InversionKey, inversion_key, recorded_steps
from .models import ModelBundle, random_weights_warning
from .modes import PlanContext, build_plan, working_canvas
from .optimise import OptimisationOutput
from .passes import inversion_steps
from .plan import EditPlan
from .progress import StepHook, StepReporter
from .report import EditReport, EnergyRecord, peak_memory, reset_peak_memory
from .result import EditResult
from .sampler import GuidedSampler, SamplerOutput
from .spec import SEED_MAX, EditSpec

if TYPE_CHECKING:
    from .editor import Editor

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass(frozen=True)
class EditOptions:
    """The keyword arguments of :meth:`dragsdk.editor.Editor.edit` (see there), as one value."""

    progress: bool = False
    callback: Callable[[int, int, torch.Tensor], None] | None = None
    trace: str | os.PathLike[str] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    generator: torch.Generator | None = None
    output_type: str = "pil"
    callback_on_step_end: StepHook | None = None
    cancel: threading.Event | None = None
    reuse_inversion: bool = True


class EditRun:
    """One edit of one image with one spec on one :class:`~dragsdk.editor.Editor`.

    Stages fill the attributes in order: ``check_inputs`` (``spec``), ``prepare`` (``img``, ``plan``, ``canvas``,
    ``ctx``, ``backend``, ``reason``), then, under the model's lock, ``finetune`` (``finetuned``), ``encode`` (``z0``), ``invert`` (``traj``,
    ``reused``), ``optimise`` (``optimised``), ``sample`` (``out``), ``decode`` (``edited``), and ``report`` builds the
    :class:`~dragsdk.report.EditReport` from them. ``phases`` (seconds per stage) and ``counter`` (UNet evaluations)
    are shared by the stages.
    """

    def __init__(self, editor: Editor, image: Any, spec: Any, options: EditOptions | None = None) -> None:
        self.editor, self.model = editor, editor.model
        self.image_in, self.spec_in = image, spec
        self.options = options or EditOptions()
        self.phases: dict[str, float] = {}
        self.counter = UNetCounter()
        self.adapter: Any = None
        self.cached: Trajectory | None = None
        self.reused = False
        self.optimised: OptimisationOutput | None = None
        self.finetuned: LoRAOutcome | None = None
        self.rng: torch.Generator | None = None

    # -- 1. check_inputs ------------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Check the arguments' types, validate the spec and write the diffusers-style overrides into it.

        Raises:
            ArgumentTypeError: an argument of the wrong type (named), or an unknown ``output_type``.
            SpecError / pydantic.ValidationError: an invalid spec or override (the field is named).
        """
        o = self.options
        if o.output_type not in OUTPUT_TYPES:
            raise ArgumentTypeError("output_type", f"one of {', '.join(OUTPUT_TYPES)}", o.output_type)
        for name, fn in (("callback", o.callback), ("callback_on_step_end", o.callback_on_step_end)):
            if fn is not None and not callable(fn):
                raise ArgumentTypeError(name, "a callable", fn)
        if o.cancel is not None and not isinstance(o.cancel, threading.Event):
            raise ArgumentTypeError("cancel", "a threading.Event", o.cancel)
        if (
            o.trace is not None
        ):  # refused before any work: a folder, a device / FIFO / socket, an unwritable folder
            check_outputs({"trace": o.trace})
        self.spec = _overrides(
            self.editor.resolve_spec(self.spec_in), o.num_inference_steps, o.guidance_scale, o.generator
        )
        modes = self.editor.registry.modes
        if self.spec.mode not in modes:
            raise SpecError("mode", f"unknown mode {self.spec.mode!r}; installed modes are {sorted(modes)}")

    # -- 2. prepare -----------------------------------------------------------------------------------------------
    def prepare(self, suggest: bool = True) -> None:
        """Load the image, fit the canvas, plan (no model call unless a mask is proposed and ``suggest``) and pick
        the backend.

        Raises:
            SpecError: an unreadable image or geometry that does not fit it (named).
            BackendUnavailableError: no backend can run the plan here.
        """
        editor, spec = self.editor, self.spec
        img = self.img = load_image(self.image_in)
        s = spec.sampler
        canvas = working_canvas(
            editor.registry.modes[spec.mode], spec, img.size, self.model.family, self.model.default_resolution
        )
        assert canvas is not None  # the loaded model always has a default resolution
        self.canvas = canvas

        def no_proposal(xy: tuple[float, float]) -> np.ndarray:
            raise SpecError(
                "mask",
                f"a dry run does not run the model, so no mask is proposed from the point {xy}: "
                "give a mask, or call plan(..., propose_mask=True)",
            )

        suggest_mask = (lambda xy: editor.suggest_mask(img, xy, spec.prompt)) if suggest else no_proposal
        self.ctx = PlanContext(self.canvas, img, s.steps, suggest_mask=suggest_mask)
        self.plan = build_plan(editor.registry.modes[spec.mode], spec, self.ctx)
        self.backend, self.reason = editor.select_backend(self.plan, self.canvas.size)

    def inversion_key(self, weights: str) -> InversionKey:
        """The key of the inversion this edit needs, on weights ``weights`` with the run's image-prompt adapter."""
        return inversion_key(
            self.img, self.spec, self.plan, self.canvas.size, self.model.name, weights, self.adapter
        )

    # -- the model part -------------------------------------------------------------------------------------------
    def execute(self) -> EditResult:
        """Run every stage and return the result; only a finished edit's inversion is cached on the editor.

        Raises:
            as :meth:`dragsdk.editor.Editor.edit`.
        """
        o = self.options
        self.check_inputs()
        self.prepare()
        with model_lock(self.model), self.finetune():
            opt = self.plan.optimise
            self.find_inversion(
                {
                    **({"optimise": opt.max_steps} if opt is not None else {}),
                    "sample": self.spec.sampler.steps - self.plan.start_step,
                    "decode": 1,
                }
            )
            with host_adapter_detached(self.model.unet, self.adapter), self.attention():
                self.encode()
                self.invert()
                self.optimise()
                self.sample()
                self.decode()
            self.keep_inversion()
        report = self.report()
        self.write_trace()
        return EditResult(
            self.edited, self.out.latent, report, self.spec, self.plan, _as_output(self.edited, o.output_type)
        )

    def execute_inversion(self) -> Inversion:
        """``check_inputs``, ``prepare``, ``encode`` and ``invert`` only: a read-only copy of the inversion
        :meth:`execute` would use (:meth:`dragsdk.editor.Editor.invert`). A fresh inversion is cached on the Editor
        as a finished edit's is.

        Raises:
            as :meth:`dragsdk.editor.Editor.invert`.
        """
        self.check_inputs()
        self.prepare()
        with model_lock(self.model), self.finetune():
            self.find_inversion({})
            with host_adapter_detached(self.model.unet, self.adapter), self.attention():
                self.encode()
                self.invert()
            self.keep_inversion()
        return Inversion.of(self.traj, self.reused)

    # -- 3. finetune ----------------------------------------------------------------------------------------------
    @contextmanager
    def finetune(self) -> Iterator[None]:
        """The plan's per-image LoRA (``finetuned``), under the model's lock: loaded from the on-disk cache or
        trained (:func:`dragsdk.finetune.image_lora`), then kept on the UNet for the ``with`` block (every later
        model stage) and removed on exit whatever happens (:func:`dragsdk.finetune.lora_on_unet`); nothing when
        the plan has none. Reports phase ``finetune`` after each training step (``index`` the step), or once when
        the LoRA came from the cache.

        Raises:
            EditCancelled: the hook or the cancel event asked to stop (after the current training step; nothing is
                cached and the UNet is as it was).
            NonFiniteError: a training loss is not finite.
            ModelLoadError: peft is missing.
        """
        lora = self.plan.finetune
        if lora is None:
            yield
            return
        from .finetune import image_lora, lora_on_unet

        editor, o = self.editor, self.options
        t0 = time.perf_counter()
        base = editor.weights_key()
        image = working_image(self.img, self.canvas.size)
        key = lora_key(image, self.spec.prompt, base, lora)
        cached = (cache_dir() / f"{key}.safetensors").is_file()
        report = StepReporter(
            o.callback_on_step_end, o.cancel, {"finetune": 1 if cached else lora.steps}, editor
        )

        def on_step(k: int, loss: float) -> None:
            report("finetune", k)

        cond = editor._prompt(self.spec.prompt, weights=base)
        self.finetuned = image_lora(
            self.model, image, self.spec.prompt, cond, base, lora, self.counter, on_step
        )
        if self.finetuned.cached:
            report("finetune")
        self.phases["finetune"] = time.perf_counter() - t0
        with lora_on_unet(self.model.unet, lora, self.finetuned.state):
            editor._lora_weights.put((base, key), editor.weights_key())
            yield

    def find_inversion(self, later: dict[str, int]) -> None:
        """Under the model's lock, before the model stages: the image-prompt adapter (``adapter``), the weights key
        (``weights``), the inversion key (``key``), the Editor's cached inversion when it matches and may be reused
        (``cached``) and the step reporter (``report_step``) for ``encode``, ``invert`` and the ``later`` phases'
        step counts."""
        editor, o = self.editor, self.options
        self.adapter = editor._check_host_processors()  # load / unload take the same lock
        self.weights = editor.weights_key()
        self.key = self.inversion_key(self.weights)
        cached = editor._trajectory if o.reuse_inversion else None
        self.cached = cached if cached is not None and cached.key == self.key else None
        n_inv = 1 if self.cached is not None else inversion_steps(self.plan, self.spec.sampler.steps)
        self.report_step = StepReporter(
            o.callback_on_step_end, o.cancel, {"encode": 1, "invert": n_inv, **later}, pipe=editor
        )

    def keep_inversion(self) -> None:
        """Under the model's lock, after the model stages finished: cache a fresh inversion on the Editor."""
        if not self.reused:
            self.editor._trajectory = self.traj

    @contextmanager
    def attention(self) -> Iterator[None]:
        """Install the attention controller (and the image prompt), the feature hooks and the progress bar for the
        model stages; remove them and restore the UNet's processors whatever happens, and measure the peak memory
        (``peak``, ``peak_kind``) when the stages finished."""
        editor, plan, s = self.editor, self.plan, self.spec.sampler
        device = self.model.device
        reset_peak_memory(device)
        self.controller = AttentionController(
            attend=classic_attention if plan.fidelity.attention_math == "classic" else self.backend.attention,
            bank_layers=editor._bank_layers(plan),
            latent_size=self.canvas.latent_size,
        )
        self.ip_plan = plan.image_prompt if self.adapter is not None else None
        if self.ip_plan is not None:
            ad = self.adapter
            scale = self.ip_plan.scale if ad.scale is None else ad.scale
            source = (
                plan.references[0].image
                if self.ip_plan.source == "reference" and plan.references
                else self.img
            )
            self.controller.image_prompt = ad.state(source, scale, device, self.model.dtype, self.counter)
        unet = self.model.unet
        previous = install(unet, self.controller)
        self.tap = FeatureTap(unet, self.model.adapter.feature_blocks)
        self.bar = tqdm(
            total=2 * (s.steps - plan.start_step),
            desc=f"dragsdk {self.spec.mode}",
            disable=not self.options.progress,
            leave=False,
        )
        try:
            self.unet_call = self.model.unet_call(
                self.backend.prepare_unet_for_edit(self.model, self.controller)
            )
            yield
        finally:
            self.bar.close()
            self.tap.remove()
            unet.set_attn_processor(previous)
        self.peak, self.peak_kind = peak_memory(device)

    # -- 4. encode ------------------------------------------------------------------------------------------------
    def encode(self) -> None:
        """VAE-encode the image and the plan's references into ``z0`` ``(1 + R, 4, h, w)``.

        Raises:
            SpecError: (``references[k]``) a reference of another size than the image.
            NonFiniteError: the latent is not finite.
        """
        t0 = time.perf_counter()
        x = self.editor._preprocess(self.img, self.canvas)
        refs = [r.image for r in self.plan.references]
        for k, r in enumerate(refs):
            if r.size != self.img.size:
                raise SpecError(
                    f"references[{k}]", f"is {r.size}, must be the base image's size {self.img.size}"
                )
        images = torch.cat([x, *(self.editor._preprocess(r, self.canvas) for r in refs)])
        seed = self.spec.sampler.seed
        # rng official: the edit's one stream, seeded as the official set_seed seeds the global one (cycle_sde.py)
        official = self.plan.fidelity.rng == "official"
        self.rng = official_generator(seed, self.model.device) if official else None
        if (
            self.plan.fidelity.vae_latent == "sample"
        ):  # one posterior sample (official RegionDrag, cycle_sde.py:63), seeded
            generator = self.rng if self.rng is not None else torch.Generator("cpu").manual_seed(int(seed))
            z0 = _sample_latent(self.model, images, generator)
        else:
            z0 = self.backend.vae_encode(self.model, images)  # None: the backend leaves the VAE to torch
        if z0 is None:
            z0 = self.model.encode_image(images)
        if self.rng is not None and self.plan.fidelity.vae_latent == "mean":
            # the official code draws its posterior sample first whatever we keep: the stream skips that draw
            torch.randn(z0.shape, generator=self.rng, device=self.rng.device, dtype=self.model.vae.dtype)
        _check_finite(z0, "encoding", None, None)
        self.z0 = z0
        self.phases["encode"] = time.perf_counter() - t0
        self.report_step("encode", latent=z0)

    # -- 5. invert ------------------------------------------------------------------------------------------------
    def invert(self) -> None:
        """The inversion (``traj``): the cached one when its key matches, else DDIM or Cycle-SDE inversion
        recording latents, the K/V bank and the guidance features.

        Raises:
            NonFiniteError: the inverted latent is not finite.
        """
        editor, plan, s = self.editor, self.plan, self.spec.sampler
        self.cond_text = editor._prompt(self.spec.prompt, weights=self.weights)
        cond_bank = torch.cat(
            [self.cond_text, *(editor._prompt(r.prompt, weights=self.weights) for r in plan.references)]
        )
        feature_cond = (
            cond_bank  # guidance features: each image's own prompt, or the base prompt for all rows
        )
        if plan.fidelity.reference_prompt == "base" and plan.references:
            feature_cond = self.cond_text.expand(cond_bank.shape[0], -1, -1)
        schedule = (plan.schedule or DDIMSchedule)(self.model.scheduler, s.steps)
        schedule.arithmetic = plan.fidelity.ddim_arithmetic
        t0 = time.perf_counter()
        self.reused = self.cached is not None
        if self.cached is not None:
            self.traj = self.cached
            if self.rng is not None and self.traj.rng_state is not None:
                self.rng.set_state(self.traj.rng_state)
            self.bar.update(s.steps - plan.start_step)
            self.report_step(
                "invert",
                plan.start_step,
                schedule.timesteps[plan.start_step],
                self.cached.latents[plan.start_step],
            )
        else:
            self.controller.bank = KVBank(editor.bank_device)
            noises: dict[int, torch.Tensor] = {}
            if plan.sampling == "cycle-sde":
                latents, noises, feats = *self._invert_cycle_sde(schedule, cond_bank), {}
            else:
                latents, feats = self._invert_ddim(schedule, cond_bank, feature_cond)
            _check_finite(
                latents[plan.start_step], "inversion", plan.start_step, schedule.timesteps[plan.start_step]
            )
            self.traj = Trajectory(
                schedule,
                latents,
                self.controller.bank,
                feats,
                cond_bank,
                self.key,
                noises=noises,
                feature_cond=None if feature_cond is cond_bank else feature_cond,
                rng_state=self.rng.get_state() if self.rng is not None else None,
            )
        self.controller.bank = self.traj.bank
        self.phases["invert"] = time.perf_counter() - t0

    def _on_invert_step(self, schedule: Any) -> Callable[[int], None]:
        def on_step(i: int) -> None:
            self.bar.update(1)
            self.report_step("invert", i, schedule.timesteps[i])

        return on_step

    def _invert_cycle_sde(
        self, schedule: Any, cond_bank: torch.Tensor
    ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """Stochastic inversion recording the reverse noise (no features; :mod:`dragsdk.cycle_sde`)."""
        from .cycle_sde import cycle_sde_invert, inversion_generator

        if self.rng is not None:  # official: the edit's one stream, in the latent's dtype (randn_like)
            generator, noise_dtype = self.rng, self.z0.dtype
        else:
            generator, noise_dtype = inversion_generator(self.spec.sampler.seed), torch.float32

        kv_steps, _ = recorded_steps(self.plan)
        ip = self.controller.image_prompt
        if self.ip_plan is not None and self.ip_plan.inversion:
            assert ip is not None
            ip.active = True
        try:
            return cycle_sde_invert(
                self.unet_call,
                self.z0,
                cond_bank,
                schedule,
                self.plan.start_step,
                self.controller,
                kv_steps,
                self.counter,
                generator,
                on_step=self._on_invert_step(schedule),
                noise_dtype=noise_dtype,
            )
        finally:
            if ip is not None:
                ip.active = False

    def _invert_ddim(
        self, schedule: Any, cond_bank: torch.Tensor, feature_cond: torch.Tensor
    ) -> tuple[list[torch.Tensor], dict[int, list[torch.Tensor]]]:
        """DDIM inversion; guidance features recorded in its passes or computed by truncated forwards after it."""
        kv_steps, feature_steps = recorded_steps(self.plan)
        recorded = self.plan.fidelity.guidance_features == "recorded"
        latents, feats = invert(
            self.unet_call,
            self.z0,
            cond_bank,
            schedule,
            self.controller,
            self.tap,
            kv_steps,
            feature_steps if recorded else set(),
            self.counter,
            on_step=self._on_invert_step(schedule),
            stop=self.plan.start_step,
        )
        if not recorded and feature_steps:
            feats = guidance_features(
                self.unet_call,
                latents,
                feature_cond,
                schedule,
                self.controller,
                self.tap,
                feature_steps,
                self.counter,
            )
        return latents, feats

    # -- 6. optimise ----------------------------------------------------------------------------------------------
    def optimise(self) -> None:
        """The plan's latent optimisation (``optimised``) on the inverted latent of step ``start_step``, with plain
        attention and the prompt's embedding; nothing when the plan has none. Reports phase ``optimise`` after each
        Adam step (``index`` the step, ``timestep`` its timestep, ``latent`` the latent so far).

        Raises:
            EditCancelled: the hook or the cancel event asked to stop (after the current Adam step).
            NonFiniteError: the optimised latent is not finite.
            ValueError: the objective returned no finite scalar depending on the latent.
        """
        opt, i = self.plan.optimise, self.plan.start_step
        if opt is None:
            return
        from .optimise import optimise_latent

        t0 = time.perf_counter()
        schedule = self.traj.schedule
        t = schedule.timesteps[i]

        def on_step(k: int, z: torch.Tensor) -> None:
            self.report_step("optimise", i, t, z)

        self.optimised = optimise_latent(
            self.unet_call,
            self.model.unet,
            self.controller,
            self.traj.latents[i][:1],
            t,
            *schedule.levels(i),
            self.cond_text,
            opt,
            self.counter,
            on_step,
        )
        _check_finite(self.optimised.latent, "optimisation", i, t)
        self.phases["optimise"] = time.perf_counter() - t0

    # -- 7. sample ------------------------------------------------------------------------------------------------
    def sample(self) -> None:
        """Guided sampling from the inversion to ``z_0`` (``out``): :class:`~dragsdk.sampler.GuidedSampler`.

        Raises:
            NonFiniteError: a sampled latent is not finite (the step is named).
        """
        editor, s, o = self.editor, self.spec.sampler, self.options
        t0 = time.perf_counter()
        uncond = editor._prompt(self.spec.negative_prompt, negative=True, weights=self.weights)
        sampler = GuidedSampler(
            self.unet_call,
            self.controller,
            self.tap,
            self.counter,
            editor.probe_energy_after,
            editor.official_cost,
        )
        generator = self.rng if self.rng is not None else torch.Generator("cpu").manual_seed(s.seed)

        def on_step(i: int, t: int, z: torch.Tensor) -> None:
            _check_finite(z, "sampling", i, t)
            self.bar.update(1)
            if o.callback:
                o.callback(i, t, z)
            self.report_step("sample", i, t, z)

        cond_cfg = torch.cat([uncond, self.cond_text])
        if self.plan.fidelity.text_context == "text+image":
            cond_cfg = self._with_image_tokens(cond_cfg)
        self.out: SamplerOutput = sampler.run(
            self.traj,
            self.plan,
            cond_cfg,
            self.cond_text,
            s.guidance_scale,
            generator,
            on_step,
            trace=o.trace is not None,
            cond_sample=cond_cfg[1:],
            start=self.optimised.latent if self.optimised is not None else None,
        )
        self.phases["sample"] = time.perf_counter() - t0

    def _with_image_tokens(self, cond_cfg: torch.Tensor) -> torch.Tensor:
        """``cond_cfg`` ``(2, 77, D)`` with the base image's image-prompt tokens appended per row: ``(2, 77 + T, D)``,
        the official appearance / paste sampling context (:func:`dragsdk.image_prompt.context_image_tokens`: the
        adapter's tokens of the base image when one is loaded, else ``T`` = 64 zeros)."""
        tokens = context_image_tokens(
            self.adapter, self.img, cond_cfg.shape[-1], cond_cfg.device, cond_cfg.dtype, self.counter
        )
        return append_context_tokens(cond_cfg, tokens, pooled_row=self.model.adapter.family == "sdxl")

    # -- 8. decode ------------------------------------------------------------------------------------------------
    def decode(self) -> None:
        """VAE-decode ``z_0`` to the edited image (``edited``) at the input's size, composited when the plan says.

        Raises:
            NonFiniteError: the decoded image is not finite.
        """
        t0 = time.perf_counter()
        latent = self.out.latent
        decoded = self.backend.vae_decode(self.model, latent)
        if decoded is None:
            decoded = self.model.decode_latent(latent)
        _check_finite(decoded, "decoding", None, None)
        if (
            self.plan.fidelity.to_uint8 == "truncate"
        ):  # official RegionDrag postprocess (drag.py:81-98): astype truncates
            arr = ((decoded[0].float().cpu() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).numpy()
            edited = Image.fromarray(arr.astype(np.uint8))
        else:
            edited = self.editor.processor.postprocess(decoded.float().cpu(), output_type="pil")[0]
        if edited.size != self.img.size:
            edited = edited.resize(self.img.size, Image.Resampling.LANCZOS)
        if self.plan.composite:
            edited = _composite_outside(self.img, edited, self.plan, self.canvas)
        self.edited = edited
        self.phases["decode"] = time.perf_counter() - t0
        self.report_step("decode", latent=latent)

    # -- 9. report ------------------------------------------------------------------------------------------------
    def report(self) -> EditReport:
        """The edit's :class:`~dragsdk.report.EditReport`, built here and nowhere else."""
        spec, plan, model, adapter, s = self.spec, self.plan, self.model, self.adapter, self.spec.sampler
        notes = [
            *plan.notes,
            *([self.finetuned.note] if self.finetuned is not None and self.finetuned.note else []),
            *filter(
                None,
                [
                    size_note(self.img.size, self.canvas.size),
                    _image_prompt_note(plan, adapter),
                    model.prompt_note(spec.prompt),
                    random_weights_warning(model),
                ],
            ),
        ]
        return EditReport(
            mode=spec.mode,
            model=model.name,
            backend=self.backend.name,
            backend_reason=self.reason,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            image_size=self.img.size,
            working_size=self.canvas.size,
            steps=s.steps,
            seed=s.seed,
            phase_seconds=self.phases,
            unet_evaluations=self.counter.to_dict(),
            image_encoder_forwards=self.counter.image_encoder,
            inversion_reused=self.reused,
            energies=[EnergyRecord(**e.__dict__) for e in self.out.energies],
            kv_bank_bytes=self.traj.bank.nbytes(),
            peak_memory_bytes=self.peak,
            peak_memory_kind=self.peak_kind,
            mask_proposed=self.ctx.mask_proposed,
            notes=notes,
            image_prompt=adapter.name if adapter is not None and plan.image_prompt else None,
            profile=plan.fidelity.profile,
            profile_options=list(plan.fidelity.options),
            random_weights=model.random_weights,
            optimisation=self.optimised.records if self.optimised is not None else [],
            finetune=self.finetuned.report() if self.finetuned is not None else None,
        )

    def write_trace(self) -> None:
        """Write the per-pass trace to ``options.trace`` when asked (:mod:`dragsdk.trace`)."""
        if self.options.trace is None:
            return
        from .trace import write_trace

        plan, s = self.plan, self.spec.sampler
        meta = {
            "mode": self.spec.mode,
            "profile": plan.fidelity.profile,
            "profile_options": list(plan.fidelity.options),
            "model": self.model.name,
            "backend": self.backend.name,
            "steps": s.steps,
            "seed": s.seed,
            "rng": plan.fidelity.rng,
            "working_size": list(self.canvas.size),
            "rollback_timesteps": self.out.rollback_timesteps,
            "optimisation": self.optimised.records if self.optimised is not None else [],
        }
        write_trace(self.options.trace, self.out.trace, meta)

    # -- the dry run ----------------------------------------------------------------------------------------------
    def dry_run(self, propose_mask: bool = False) -> DryRun:
        """``check_inputs`` and ``prepare``, then the cost the edit would have (:func:`~dragsdk.dryrun.estimate_cost`
        over the sampler's pass sequence) and whether it would reuse the cached inversion (the same
        :class:`~dragsdk.keys.InversionKey` the edit builds); no model call unless ``propose_mask``."""
        editor = self.editor
        self.check_inputs()
        self.prepare(suggest=propose_mask)
        plan, steps = self.plan, self.spec.sampler.steps
        self.adapter = adapter = (
            editor._image_prompt.live()
        )  # a host adapter the host unloaded: the edit drops it
        weights, lora_cached = editor.weights_key(), False
        if (
            plan.finetune is not None
        ):  # the weights the edit would invert with: the base and the per-image LoRA
            key = lora_key(
                working_image(self.img, self.canvas.size), self.spec.prompt, weights, plan.finetune
            )
            lora_cached = (cache_dir() / f"{key}.safetensors").is_file()
            weights = editor._lora_weights.get((weights, key)) if lora_cached else None
        cached = editor._trajectory
        inversion_cached = (
            cached is not None and weights is not None and cached.key == self.inversion_key(weights)
        )
        cost = estimate_cost(
            plan,
            steps,
            not inversion_cached,
            editor.probe_energy_after,
            editor.official_cost,
            recorded_steps(plan)[1],
            image_prompt=adapter is not None,
            finetune=finetune_cost(plan.finetune, lora_cached),
        )
        guided = list(plan.guided_steps or ()) if plan.needs_gradients else []
        kv = (plan.kv.start, plan.kv.end) if plan.kv else None
        return DryRun(
            plan,
            self.canvas,
            steps,
            guided,
            kv,
            inversion_cached,
            cost,
            self.backend.name,
            self.reason,
            lora_cached,
        )


def _overrides(
    spec: EditSpec,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    generator: torch.Generator | None,
) -> EditSpec:
    """``spec`` with diffusers-style keyword overrides written into its sampler settings (validated as spec fields:
    ``sampler.steps``, ``sampler.guidance_scale``, ``sampler.seed``)."""
    update: dict[str, Any] = {}
    if num_inference_steps is not None:
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
            raise ArgumentTypeError("num_inference_steps", "an int", num_inference_steps)
        update["steps"] = num_inference_steps
    if guidance_scale is not None:
        if not isinstance(guidance_scale, int | float) or isinstance(guidance_scale, bool):
            raise ArgumentTypeError("guidance_scale", "a number", guidance_scale)
        update["guidance_scale"] = float(guidance_scale)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ArgumentTypeError("generator", "a torch.Generator", generator)
        # One draw from the host's generator picks the edit's seed (the report records it, so the edit can be
        # repeated from the report alone); the generator advances, as a diffusers pipeline advances it.
        update["seed"] = int(
            torch.randint(0, SEED_MAX >> 1, (1,), generator=generator, device=generator.device)
        )
    if not update:
        return spec
    s = spec.sampler
    sampler = type(s).model_validate({**s.model_dump(exclude_unset=True), **update})
    return spec.model_copy(update={"sampler": sampler})


def _image_prompt_note(plan: EditPlan, adapter: Any) -> str | None:
    """The report's line on the image prompt: used (adapter, image, scale, steps) or not (no adapter loaded)."""
    ip = plan.image_prompt
    if ip is None:
        return None
    if adapter is None:
        return f"image prompt (IP-Adapter, official {ip.describe()}) not used: no adapter loaded (Editor.load_ip_adapter)"
    scale = ip.scale if adapter.scale is None else adapter.scale
    ip = ImagePromptPlan(scale, ip.start, ip.end, ip.inversion, ip.source)
    return f"image prompt: IP-Adapter {adapter.name} on the {ip.source} image, {ip.describe()}"


def _as_output(image: Image.Image, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """``image`` as ``result.images`` in diffusers' layout for ``output_type`` (see :class:`EditResult`)."""
    if output_type == "pil":
        return [image]
    arr = np.asarray(image, dtype=np.float32)[None] / 255.0  # (1, H, W, 3) in [0, 1]
    return arr if output_type == "np" else torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _check_finite(x: torch.Tensor, phase: str, step: int | None, timestep: int | None) -> None:
    """Stop the edit when ``x`` holds a NaN or ±inf (one device sync; the check is a single reduction)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(phase, step, timestep)


def _sample_latent(model: ModelBundle, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(B, 4, h, w)`` latent: one sample of the VAE posterior × scaling factor, drawn from ``generator`` (the
    official RegionDrag ``latent_dist.sample()``, ``cycle_sde.py:63``, on its global RNG)."""
    with torch.no_grad():
        post = model.vae.encode(images.to(model.device, model.vae.dtype)).latent_dist
        z = post.sample(generator=generator)
    return (z * model.vae.config.scaling_factor).to(model.dtype)


def _composite_outside(
    original: Image.Image, edited: Image.Image, plan: EditPlan, canvas: Canvas
) -> Image.Image:
    """Original pixels outside the edit mask, edited pixels inside: the plan's pixel ``composite_mask`` when it has
    one (official RegionDrag ``np.where(mask, out, ori)``, ``drag.py:81-98``), else the latent edit mask
    nearest-upsampled."""
    if plan.composite_mask is not None:
        keep = np.asarray(plan.composite_mask, dtype=bool)[:, :, None]
        return Image.fromarray(np.where(keep, np.asarray(edited), np.asarray(original.convert("RGB"))))
    m = plan.edit_mask.float()[None, None]
    m = torch.nn.functional.interpolate(m, size=(original.size[1], original.size[0]), mode="nearest")[0, 0]
    mask = Image.fromarray((m.numpy() * 255).astype(np.uint8), "L")
    return Image.composite(edited, original, mask)
