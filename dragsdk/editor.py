"""The public entry point: :class:`Editor` runs one edit, image + spec → edited image + report."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from tqdm.auto import tqdm

from .attention import AttentionController, decoder_self_attention_layers, install
from .errors import BackendUnavailableError, SpecError
from .features import FeatureTap
from .geometry import Canvas
from .inversion import DDIMSchedule, Trajectory, UNetCounter, invert
from .io import load_image, save_image_atomic, write_text_atomic
from .models import ModelBundle, load_model
from .modes import PlanContext
from .plan import EditPlan
from .registry import Registry, get_registry
from .report import EditReport, EnergyRecord, peak_memory, reset_peak_memory
from .sampler import GuidedSampler
from .spec import EditSpec, spec_from_json


@dataclass
class EditResult:
    """An edit's output.

    Attributes:
        image: the edited image at the input's size.
        latent: the final latent ``(1, 4, h, w)``.
        report: timings, UNet evaluations, energies, memory, backend.
        spec: the spec that was run.
        plan: the mode's plan (masks and terms), for inspection.
    """

    image: Image.Image
    latent: torch.Tensor
    report: EditReport
    spec: EditSpec
    plan: EditPlan

    def save(self, path: str | os.PathLike[str], report: str | os.PathLike[str] | None = None,
             protect: tuple[Path, ...] = ()) -> None:
        """Write the image (and the report JSON) atomically, never over a protected input."""
        save_image_atomic(self.image, path, protect)
        if report is not None:
            write_text_atomic(self.report.model_dump_json(indent=2), report, protect)


class Editor:
    """Drag-style editing with one model and one backend.

    Args:
        model: a :class:`~dragsdk.models.ModelBundle` or a name for :func:`~dragsdk.models.load_model`.
        backend: a registered backend name or ``auto``.
        registry: the plugin registry (default: the process-wide one).
        bank_device: where the K/V bank is kept (default: the model's device).
        probe_energy_after: also measure each guided step's energy after its update (report ``after``).
        reference_profile: run with the official DragonDiffusion/DiffEditor cost profile (reference features
            recomputed at every guided step, the K/V bank on the CPU); for benchmarks, so a speed-up is a ratio from
            one run. It is not RegionDrag's profile: the official RegionDrag keeps its K/V bank on the device
            (``region_utils/drag.py:159-162``, hooks appending the ``to_k``/``to_v`` outputs) and recomputes nothing,
            which is what dragsdk's region-drag does by default.

    Raises:
        BackendUnavailableError: the named backend is unknown or cannot run here.
    """

    def __init__(
        self,
        model: ModelBundle | str = "tiny",
        backend: str = "auto",
        registry: Registry | None = None,
        bank_device: str | torch.device | None = None,
        probe_energy_after: bool = False,
        reference_profile: bool = False,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> None:
        self.registry = registry or get_registry()
        self.model = model if isinstance(model, ModelBundle) else load_model(model, device, torch_dtype)
        self.backend_request = backend
        self.reference_profile = reference_profile
        self.bank_device = "cpu" if reference_profile else bank_device
        self.probe_energy_after = probe_energy_after
        self.processor = VaeImageProcessor(vae_scale_factor=self.model.vae_scale_factor, resample="lanczos")
        self._trajectory: Trajectory | None = None
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self.bank_layers = frozenset(decoder_self_attention_layers(self.model.unet))
        if backend != "auto":
            self._check_backend(backend)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        backend: str = "auto",
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        **kwargs: Any,
    ) -> Editor:
        """Load a model (hub id, local diffusers folder, ``tiny`` or ``sd15-random``) and wrap it.

        Raises:
            ModelNotFoundError: the model is absent; the message says how to provide one.
        """
        return cls(load_model(name_or_path, device, torch_dtype, variant), backend=backend, **kwargs)

    # -- backends ------------------------------------------------------------------------------------------
    def _check_backend(self, name: str) -> Any:
        backends = self.registry.backends
        if name not in backends:
            raise BackendUnavailableError(f"backend {name!r} is not registered; registered: {sorted(backends)}")
        ok, why = backends[name].availability()
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} cannot run here: {why}")
        return backends[name]

    def select_backend(self, plan: EditPlan, working_size: tuple[int, int] | None = None) -> tuple[Any, str]:
        """The backend for a plan and why it was chosen (measured table first, then the fallback order)."""
        from dragsdk.backends.select import select_backend

        return select_backend(
            self.registry.backends, self.backend_request, self.model.device.type,
            str(self.model.dtype).removeprefix("torch."), plan.needs_gradients, plan.kv_modes(),
            model=self.model.name, working_size=working_size,
        )

    # -- pieces --------------------------------------------------------------------------------------------
    def _prompt(self, prompt: str) -> torch.Tensor:
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = self.model.encode_prompt(prompt)
        return self._prompt_cache[prompt]

    def _bank_layers(self, plan: EditPlan) -> frozenset[str]:
        """The layers that record / inject K/V for a plan: the decoder's, or every self-attention layer."""
        if plan.kv_layers == "all":
            from .attention import self_attention_layers

            return frozenset(self_attention_layers(self.model.unet))
        return self.bank_layers

    def _preprocess(self, image: Image.Image, canvas: Canvas) -> torch.Tensor:
        w, h = canvas.size
        return self.processor.preprocess(image, height=h, width=w)

    def resolve_spec(self, spec: EditSpec | dict[str, Any] | str) -> EditSpec:
        """Validate a spec given as a model, a dict or JSON text."""
        if isinstance(spec, EditSpec):
            return spec
        return spec_from_json(spec, self.registry.spec_models())

    # -- the edit ------------------------------------------------------------------------------------------
    def edit(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        spec: EditSpec | dict[str, Any] | str,
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> EditResult:
        """Run one edit.

        Args:
            image: the base image (path, PIL image or ``(H, W, 3)`` uint8 array).
            spec: the edit (any registered mode).
            progress: show a progress bar over inversion and sampling steps.
            callback: ``callback(i, t, z)`` after each sampling step.

        Raises:
            SpecError: invalid geometry for this image (the field is named); pydantic ``ValidationError`` for
                invalid field values.
            BackendUnavailableError: no backend can run the edit here.
        """
        spec = self.resolve_spec(spec)
        modes = self.registry.modes
        if spec.mode not in modes:
            raise SpecError("mode", f"unknown mode {spec.mode!r}; installed modes are {sorted(modes)}")
        mode = modes[spec.mode]
        img = load_image(image)
        s = spec.sampler
        canvas = Canvas.fit(img.size, s.resolution)
        ctx = PlanContext(canvas, img, s.steps, suggest_mask=lambda xy: self.suggest_mask(img, xy, spec.prompt))
        plan = mode.plan(spec, ctx)
        backend, reason = self.select_backend(plan, canvas.size)
        device = self.model.device
        reset_peak_memory(device)
        phases: dict[str, float] = {}
        counter = UNetCounter()

        controller = AttentionController(
            attend=backend.attention, bank_layers=self._bank_layers(plan), latent_size=canvas.latent_size
        )
        unet = self.model.unet
        previous = install(unet, controller)
        tap = FeatureTap(unet)
        unet_call = backend.prepare_unet_for_edit(self.model, controller)
        bar = tqdm(total=2 * (s.steps - plan.start_step), desc=f"dragsdk {spec.mode}", disable=not progress, leave=False)
        try:
            t0 = time.perf_counter()
            x = self._preprocess(img, canvas)
            refs = [r.image for r in plan.references]
            for k, r in enumerate(refs):
                if r.size != img.size:
                    raise SpecError(f"references[{k}]", f"is {r.size}, must be the base image's size {img.size}")
            images = torch.cat([x, *(self._preprocess(r, canvas) for r in refs)])
            if plan.vae_latent == "sample":  # one posterior sample (official RegionDrag, cycle_sde.py:63), seeded
                z0 = _sample_latent(self.model, images, s.seed)
            else:
                z0 = backend.vae_encode(self.model, images)  # None: the backend leaves the VAE to torch
            if z0 is None:
                z0 = self.model.encode_image(images)
            phases["encode"] = time.perf_counter() - t0

            cond_text = self._prompt(spec.prompt)
            cond_bank = torch.cat([cond_text, *(self._prompt(r.prompt) for r in plan.references)])
            schedule = (plan.schedule or DDIMSchedule)(self.model.scheduler, s.steps)
            kv_steps = set(plan.kv.steps()) if plan.kv else set()
            feature_steps = set(plan.guided_steps) if plan.needs_gradients else set()
            key = (self._image_key(img), spec.prompt, *(self._image_key(r.image) + r.prompt for r in plan.references), s.steps, canvas.size, tuple(sorted(kv_steps)),
                   tuple(sorted(feature_steps)), self.model.name)
            key = (*key, plan.sampling, plan.kv_layers, plan.start_step, s.seed if plan.sampling == "cycle-sde" else None,
                   plan.schedule_key, plan.vae_latent, s.seed if plan.vae_latent == "sample" else None)
            t0 = time.perf_counter()
            reused = self._trajectory is not None and self._trajectory.key == key
            if reused:
                traj = self._trajectory
                assert traj is not None
                bar.update(s.steps - plan.start_step)
            else:
                from .attention import KVBank

                controller.bank = KVBank(self.bank_device)
                noises: dict[int, torch.Tensor] = {}
                if plan.sampling == "cycle-sde":  # stochastic inversion recording the reverse noise (no features)
                    from .cycle_sde import cycle_sde_invert, inversion_generator

                    feats: dict[int, list[torch.Tensor]] = {}
                    latents, noises = cycle_sde_invert(
                        unet_call, z0, cond_bank, schedule, plan.start_step, controller, kv_steps, counter,
                        inversion_generator(s.seed), on_step=lambda i: bar.update(1),
                    )
                else:
                    latents, feats = invert(
                        unet_call, z0, cond_bank, schedule, controller, tap, kv_steps, feature_steps, counter,
                        on_step=lambda i: bar.update(1),
                    )
                traj = Trajectory(schedule, latents, controller.bank, feats, cond_bank, key, noises=noises)
                self._trajectory = traj
            controller.bank = traj.bank
            phases["invert"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            uncond = self._prompt(spec.negative_prompt)
            sampler = GuidedSampler(unet_call, controller, tap, counter, self.probe_energy_after, self.reference_profile)
            generator = torch.Generator("cpu").manual_seed(s.seed)

            def on_step(i: int, t: int, z: torch.Tensor) -> None:
                bar.update(1)
                if callback:
                    callback(i, t, z)

            out = sampler.run(traj, plan, torch.cat([uncond, cond_text]), cond_text, s.guidance_scale, generator, on_step)
            phases["sample"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            decoded = backend.vae_decode(self.model, out.latent)
            if decoded is None:
                decoded = self.model.decode_latent(out.latent)
            if plan.to_uint8 == "truncate":  # official RegionDrag postprocess (drag.py:81-98): astype(uint8) truncates
                arr = ((decoded[0].float().cpu() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).numpy()
                edited = Image.fromarray(arr.astype(np.uint8))
            else:
                edited = self.processor.postprocess(decoded.float().cpu(), output_type="pil")[0]
            if edited.size != img.size:
                edited = edited.resize(img.size, Image.Resampling.LANCZOS)
            if plan.composite:
                edited = _composite_outside(img, edited, plan, canvas)
            phases["decode"] = time.perf_counter() - t0
        finally:
            bar.close()
            tap.remove()
            unet.set_attn_processor(previous)
        peak, kind = peak_memory(device)
        report = EditReport(
            mode=spec.mode, model=self.model.name, backend=backend.name, backend_reason=reason,
            device=str(device), dtype=str(self.model.dtype).removeprefix("torch."), image_size=img.size,
            working_size=canvas.size, steps=s.steps, seed=s.seed, phase_seconds=phases,
            unet_evaluations=counter.to_dict(), inversion_reused=reused,
            energies=[EnergyRecord(**e.__dict__) for e in out.energies], kv_bank_bytes=traj.bank.nbytes(),
            peak_memory_bytes=peak, peak_memory_kind=kind, notes=list(plan.notes), mask_proposed=ctx.mask_proposed,
            profile=dict(plan.profile),
        )
        return EditResult(edited, out.latent, report, spec, plan)

    @torch.no_grad()
    def suggest_mask(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        point: tuple[float, float],
        prompt: str = "",
        resolution: int = 512,
        threshold: float = 0.6,
        timestep: int = 261,
        dilate_px: int = 8,
    ) -> np.ndarray:
        """Propose the mask of the part under a click, from diffusion-feature similarity.

        The DIFT correspondence idea (Tang et al., arXiv 2306.03881): the image latent is noised to ``timestep`` with
        a fixed seed, the decoder features (``up_blocks[1]`` and ``[2]``, each L2-normalised, concatenated on the
        feature grid) are compared by cosine with the feature at ``point``
        (:func:`dragsdk.proposal.mask_from_features`), then the region is dilated by ``dilate_px`` pixels.

        Args:
            point: ``(x, y)`` in image pixels.

        Returns:
            ``(H, W)`` bool mask in image pixels.

        Raises:
            SpecError: (field ``point``) the point is off the image.
        """
        from .proposal import dilate, mask_from_features

        img = load_image(image)
        canvas = Canvas.fit(img.size, resolution)
        if not canvas.contains(point):
            raise SpecError("point", f"{point} is outside the {img.size[0]}×{img.size[1]} image")
        z0 = self.model.encode_image(self._preprocess(img, canvas))
        a = float(self.model.scheduler.alphas_cumprod[timestep])
        noise = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(0)).to(z0)
        tap = FeatureTap(self.model.unet)
        try:
            with tap.capture(stop=True):
                self.model.unet(a**0.5 * z0 + (1 - a) ** 0.5 * noise, timestep,
                                encoder_hidden_states=self._prompt(prompt), return_dict=False)
            feats = tap.features()
        finally:
            tap.remove()
        gw, gh = canvas.feature_size
        f = torch.cat([F.normalize(F.interpolate(x.float(), size=(gh, gw), mode="nearest"), dim=1) for x in feats], 1)
        region = mask_from_features(f[0], canvas.to_cell(point, "feature"), threshold)
        up = F.interpolate(region.float()[None, None], size=(img.size[1], img.size[0]), mode="nearest")[0, 0] > 0.5
        return dilate(up, dilate_px).numpy()

    @staticmethod
    def _image_key(img: Image.Image) -> str:
        return hashlib.sha1(img.tobytes()).hexdigest() + f"{img.size}"


def _sample_latent(model: ModelBundle, images: torch.Tensor, seed: int) -> torch.Tensor:
    """``(B, 4, h, w)`` latent: one sample of the VAE posterior × scaling factor, drawn from a CPU generator seeded
    with ``seed`` (the official RegionDrag ``latent_dist.sample()``, ``cycle_sde.py:63``, on its global RNG)."""
    with torch.no_grad():
        post = model.vae.encode(images.to(model.device, model.vae.dtype)).latent_dist
        z = post.sample(generator=torch.Generator("cpu").manual_seed(int(seed)))
    return (z * model.vae.config.scaling_factor).to(model.dtype)


def _composite_outside(original: Image.Image, edited: Image.Image, plan: EditPlan, canvas: Canvas) -> Image.Image:
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
