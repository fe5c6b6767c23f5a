"""The public entry point: :class:`Editor` runs one edit, image + spec → edited image + report."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .adapters import ImagePromptSlot, WeightsIdentity
from .cache import LRUCache
from .concurrency import model_lock
from .defaults import MODEL_ENV
from .dryrun import DryRun
from .errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    ModelLoadError,
    ModelNotFoundError,
    SpecError,
)
from .features import FeatureTap
from .geometry import Canvas
from .image_prompt import host_adapter_detached
from .inversion import Inversion, Trajectory
from .io import load_image
from .models import (
    ModelBundle,
    bundle_from_pipe,
    check_dtype,
    default_model,
    load_model,
    open_model,
    resolve_device,
)
from .plan import EditPlan
from .progress import StepHook
from .registry import Registry, get_registry
from .result import EditResult
from .session import EditOptions, EditRun
from .spec import EditSpec
from .specfile import spec_from_json


class Editor:
    """Drag-style editing with one model and one backend.

    Args:
        model: a :class:`~dragsdk.models.ModelBundle` or a name for :func:`~dragsdk.models.load_model`; default
            :func:`~dragsdk.models.default_model` (``$DRAGSDK_MODEL``, else real SD 1.5 weights
            ``stable-diffusion-v1-5/stable-diffusion-v1-5`` from the Hugging Face cache, or a
            :class:`~dragsdk.errors.ModelNotFoundError` saying how to provide it). Random-weight test models
            (``tiny`` ...) are used only when named, and their reports say so (``random_weights``).
        backend: a registered backend name or ``auto``.
        registry: the plugin registry (default: the process-wide one).
        bank_device: where the K/V bank is kept (default: the model's device).
        probe_energy_after: also measure each guided step's energy after its update (report ``after``).
        official_cost: run with the official DragonDiffusion/DiffEditor cost profile (guidance features
            recomputed at every guided step, the K/V bank on the CPU); for benchmarks, so a speed-up is a ratio from
            one run. It is not RegionDrag's profile: the official RegionDrag keeps its K/V bank on the device
            (``region_utils/drag.py:159-162``, hooks appending the ``to_k``/``to_v`` outputs) and recomputes nothing,
            which is what dragsdk's region-drag does by default.
        reference_profile: deprecated name of ``official_cost`` (a ``DeprecationWarning``).
        allow_reduced_precision: let ``auto`` pick a backend that computes a float32 edit partly in lower
            precision (``Capabilities.precision == "reduced"``); off by default.
        device: where the model runs; with a loaded ``model`` (a bundle) the modules are moved there (as
            :meth:`to`).
        torch_dtype: the precision the model runs in; a loaded bundle is converted (as :meth:`to`).
        prompt_cache_size: prompt embeddings kept (least recently used dropped first).

    Caches: the inversion of the last finished edit or :meth:`invert` (reused by the next edit of the same image, prompt and settings
    on the same weights) and up to ``prompt_cache_size`` prompt embeddings. Both are keyed by the identity of the
    weights (:func:`dragsdk.cache.weights_fingerprint`: adapters loaded or fused, dtype, device), so a LoRA fused or
    toggled by the host is never answered from a stale cache. :meth:`clear_cache` drops them;
    ``edit(..., reuse_inversion=False)`` inverts afresh.

    Raises:
        BackendUnavailableError: the named backend is unknown or cannot run here.
        DeviceUnavailableError: ``device`` is not on this machine (e.g. ``cuda`` without CUDA).
        ArgumentTypeError: an argument of the wrong type (named).
    """

    def __init__(
        self,
        model: ModelBundle | str | os.PathLike[str] | None = None,
        backend: str = "auto",
        registry: Registry | None = None,
        bank_device: str | torch.device | None = None,
        probe_energy_after: bool = False,
        official_cost: bool = False,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        allow_reduced_precision: bool = False,
        prompt_cache_size: int = 64,
        reference_profile: bool | None = None,
    ) -> None:
        if reference_profile is not None:  # the old name of official_cost
            warnings.warn(
                "Editor(reference_profile=) is deprecated: use official_cost=", DeprecationWarning, 2
            )
            official_cost = bool(reference_profile)
        model_from_env = model is None and bool(os.environ.get(MODEL_ENV, "").strip())
        if model is None:
            model = default_model()
        if not isinstance(model, ModelBundle | str | os.PathLike):
            raise ArgumentTypeError(
                "model", "a ModelBundle, a model name or a path (Editor.from_pipe for a pipeline)", model
            )
        if not isinstance(backend, str):
            raise ArgumentTypeError("backend", "a backend name such as 'auto' or 'torch'", backend)
        if (
            not isinstance(prompt_cache_size, int)
            or isinstance(prompt_cache_size, bool)
            or prompt_cache_size < 1
        ):
            raise ArgumentTypeError("prompt_cache_size", "an int ≥ 1", prompt_cache_size)
        self.registry = registry or get_registry()
        self.allow_reduced_precision = allow_reduced_precision
        try:
            self.model = open_model(model, device, torch_dtype)
        except ModelNotFoundError as e:  # ModelLoadError too: name the variable the default came from
            if model_from_env:
                raise type(e)(f"model {model!r} from ${MODEL_ENV} (unset it or pass model=): {e}") from e
            raise
        self.backend_request = backend
        self.official_cost = official_cost
        self.bank_device = "cpu" if official_cost else bank_device
        self.probe_energy_after = probe_energy_after
        self.processor = VaeImageProcessor(vae_scale_factor=self.model.vae_scale_factor, resample="lanczos")
        self._trajectory: Trajectory | None = None
        self._prompt_cache: LRUCache[torch.Tensor] = LRUCache(prompt_cache_size)
        self._lora_weights: LRUCache[str] = LRUCache(16)  # (base weights, LoRA key) → weights key with it on
        self._weights = WeightsIdentity(self.model)
        self._image_prompt = ImagePromptSlot(self.model)
        self.bank_layers = frozenset(self.model.adapter.bank_layers())
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
        single_file_config: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Editor:
        """Load a model (hub id, local diffusers folder, single-file checkpoint or built-in name; SD 1.x, SD 2.x or
        SDXL, :mod:`dragsdk.families`) and wrap it.

        Args:
            device: as :func:`~dragsdk.models.load_model`.
            torch_dtype: as :func:`~dragsdk.models.load_model`.
            variant: as :func:`~dragsdk.models.load_model`.
            single_file_config: as :func:`~dragsdk.models.load_model` (a ``.safetensors`` / ``.ckpt`` model only).

        Raises:
            ModelNotFoundError: the model is absent; the message says how to provide one.
            ModelLoadError: it exists but cannot be used (unsupported family, broken folder); the message says what
                was found.
        """
        return cls(
            load_model(name_or_path, device, torch_dtype, variant, single_file_config),
            backend=backend,
            **kwargs,
        )

    @classmethod
    def from_pipe(cls, pipe: Any, backend: str = "auto", **kwargs: Any) -> Editor:
        """Edit with the modules of an existing diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
        (or an object with its components), shared and never copied.

        The host pipeline keeps working: the editor installs its attention processors only for the duration of an
        edit and restores the previous ones, and it samples with its own DDIM scheduler built from the pipeline
        scheduler's config (the host's scheduler object is never stepped). LoRA weights already fused or loaded into
        the pipeline's UNet are used as they are. The exception: a float16 VAE whose config sets ``force_upcast``
        (SDXL) is copied once to float32 for encoding and decoding, as diffusers upcasts it.

        An IP-Adapter the host loaded with diffusers' ``load_ip_adapter`` (and its ``pipe.image_encoder``) is composed,
        not bypassed: it becomes the modes' image prompt (:meth:`use_host_ip_adapter`).

        Raises:
            ModelLoadError: a component is missing (an SDXL refiner has no ``text_encoder``) or of the wrong kind
                (a ``unet`` that is not a ``UNet2DConditionModel``, a scheduler without ``config``), the UNet's
                ``cross_attention_dim`` does not match the text encoder's width, or the family is not supported.
        """
        editor = cls(bundle_from_pipe(pipe), backend=backend, **kwargs)
        # none loaded, or not composable (two adapters, no image encoder): an edit refuses, naming the processors
        with contextlib.suppress(ModelLoadError):
            editor.use_host_ip_adapter(getattr(pipe, "image_encoder", None))
        return editor

    def use_host_ip_adapter(self, image_encoder: Any) -> None:
        """Compose the IP-Adapter the host loaded into this model's UNet (diffusers' ``load_ip_adapter``) instead of
        refusing the edit: its ``to_k_ip`` / ``to_v_ip`` and image projection, shared, give the modes' official
        image prompt (DiffEditor modes scale 0.1 at steps 10–19, region-drag 0.5; :func:`dragsdk.image_prompt.
        host_ip_adapter`), conditioned on the input (or reference) image, encoded by ``image_encoder``
        (``pipe.image_encoder``). :meth:`from_pipe` does this itself. If the host later unloads or replaces the
        adapter, the next edit notices and runs without it (or refuses the new processors).

        Raises:
            ModelLoadError: the UNet has no IP-Adapter, more than one, or ``image_encoder`` is None.
        """
        with model_lock(self.model):
            self._image_prompt.adopt_host(image_encoder)
            self._trajectory = None

    def load_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Load LoRA weights into the model's UNet (and text encoders, when the file has them) with diffusers'
        own loader (``load_lora_weights``) and fuse them at ``scale``; see :func:`dragsdk.models.load_lora`.

        Raises:
            SpecError: (field ``lora``) the scale is NaN, infinite or over ``dragsdk.models.MAX_LORA_SCALE``.
            ModelNotFoundError: the file does not exist.
            ModelLoadError: the file cannot be read, none of its keys match the model's layers, it holds
                non-finite weights or its A / B ranks disagree; nothing is fused then.
        """
        from .models import load_lora

        with model_lock(self.model):
            load_lora(self.model, path, scale)
            self.clear_cache()

    # -- device, dtype, caches -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the UNet's weights are on."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's weight dtype."""
        return self.model.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Editor:
        """Move (and cast) the model in place, as diffusers' ``pipe.to(device, dtype)``; returns the Editor. Modules
        shared with a host pipeline (:meth:`from_pipe`) move with it. The caches are dropped.

        Thread safety: waits for a running edit on the model (:func:`dragsdk.concurrency.model_lock`).

        Raises:
            DeviceUnavailableError: ``device`` is not on this machine (e.g. ``cuda`` without CUDA).
            ArgumentTypeError: ``dtype`` is not a floating ``torch.dtype``.
        """
        dev = resolve_device(device) if device is not None else None
        dt = check_dtype(dtype)
        with model_lock(self.model):
            self.model.to(dev, dt)
            self.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Drop the cached inversion and prompt embeddings (the next edit inverts and encodes afresh)."""
        with model_lock(self.model):
            self._trajectory = None
            self._prompt_cache.clear()

    def weights_key(self) -> str:
        """The identity of the model's weights (:func:`dragsdk.cache.weights_fingerprint` of the UNet, VAE and text
        encoders): what the caches are keyed by. Memoised (:class:`dragsdk.cache.WeightsFingerprint`): a repeated
        call reads each weight once, as its norm (SD 1.5 on a CPU: ``benchmarks/weights_key.py``)."""
        with model_lock(self.model):
            return self._weights.key()

    @property
    def ip_adapter(self) -> Any:
        """The image-prompt adapter edits use (loaded or adopted from the host), or None
        (:class:`dragsdk.adapters.ImagePromptSlot`)."""
        return self._image_prompt.adapter

    @ip_adapter.setter
    def ip_adapter(self, adapter: Any) -> None:
        self._image_prompt.adapter = adapter

    def load_ip_adapter(
        self,
        folder_or_id: str | os.PathLike[str],
        weight_name: str,
        subfolder: str = "",
        image_encoder: str | os.PathLike[str] | Any | None = None,
        scale: float | None = None,
    ) -> None:
        """Load an IP-Adapter for the modes' official image prompt (DiffEditor modes: scale 0.1 at sampling steps
        10–19; region-drag: scale 0.5 at every UNet call), conditioned on the input image.

        Read with diffusers' IP-Adapter loader pieces (:func:`dragsdk.image_prompt.load_ip_adapter`); nothing is
        installed on the model's UNet. ``scale`` overrides every mode's scale (``None`` keeps the mode's). Without an
        adapter the modes run text-only and the report notes it.

        Raises:
            SpecError: (field ``scale``) not None and not a finite number in [0, 10].
            ArgumentTypeError: ``image_encoder`` of the wrong type.
            ModelNotFoundError: the weights or the image encoder are absent.
            ModelLoadError: the file is corrupt or not an IP-Adapter for this UNet.
        """
        with model_lock(self.model):
            self._image_prompt.load(folder_or_id, weight_name, subfolder, image_encoder, scale)
            self._trajectory = None

    def unload_ip_adapter(self) -> None:
        """Drop the image prompt: the modes run text-only again."""
        with model_lock(self.model):
            self._image_prompt.unload()
            self._trajectory = None

    def _check_host_processors(self) -> Any:
        """The image-prompt adapter to use now; the caller holds the model's lock. A host IP-Adapter adopted earlier
        and since unloaded or replaced by the host is dropped (with the inversion it conditioned).

        Raises:
            HostAttentionError: the UNet carries host processors that an edit would bypass (not a composed adapter).
        """
        adapter, dropped = self._image_prompt.for_edit()
        if dropped:
            self._trajectory = None
        return adapter

    # -- backends ------------------------------------------------------------------------------------------
    def _check_backend(self, name: str) -> Any:
        from dragsdk.backends.select import availability

        backends = self.registry.backends
        if name not in backends:
            raise BackendUnavailableError(
                f"backend {name!r} is not registered; registered: {sorted(backends)}"
            )
        ok, why = availability(backends[name])
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} cannot run here: {why}")
        return backends[name]

    def select_backend(self, plan: EditPlan, working_size: tuple[int, int] | None = None) -> tuple[Any, str]:
        """The backend for a plan and why it was chosen (measured table first, then the fallback order)."""
        from dragsdk.backends.base import BackendNeeds
        from dragsdk.backends.select import model_family, model_key, select_backend

        needs = BackendNeeds(
            device=self.model.device.type,
            dtype=str(self.model.dtype).removeprefix("torch."),
            gradients=plan.needs_gradients or plan.optimise is not None,
            kv_modes=tuple(plan.kv_modes()),
            family=model_family(self.model),
            image_prompt=plan.image_prompt is not None and self.ip_adapter is not None,
            model=model_key(self.model),
            working_size=working_size,
            allow_reduced=self.allow_reduced_precision,
        )
        return select_backend(self.registry.backends, self.backend_request, needs)

    # -- pieces --------------------------------------------------------------------------------------------
    def _prompt(self, prompt: str, negative: bool = False, weights: str | None = None) -> torch.Tensor:
        """The embedding of ``prompt``, cached under ``(prompt, negative, weights)`` (``weights``: the weights key;
        None computes it)."""
        key = (prompt, negative, self.weights_key() if weights is None else weights)
        cached = self._prompt_cache.get(key)
        if cached is None:
            cached = self.model.encode_prompt(prompt, negative)
            self._prompt_cache.put(key, cached)
        return cached

    def _bank_layers(self, plan: EditPlan) -> frozenset[str]:
        """The layers that record / inject K/V for a plan: the decoder's, every self-attention layer, or those from
        the ``n``-th on in forward order (``plan.kv_layers = n``)."""
        from .attention import self_attention_layers

        if plan.kv_layers == "all":
            return frozenset(self_attention_layers(self.model.unet))
        if isinstance(plan.kv_layers, int):
            return frozenset(self_attention_layers(self.model.unet, forward_order=True)[plan.kv_layers :])
        return self.bank_layers

    def _preprocess(self, image: Image.Image, canvas: Canvas) -> torch.Tensor:
        """``(1, 3, H, W)`` in [-1, 1] at the canvas's working size, contiguous in NCHW: diffusers' processor hands
        back a channels-last view, and the VAE's first convolution picks another CPU kernel for it than for the
        NCHW tensor every official code builds (``torch.from_numpy(x).permute(2, 0, 1)`` or ``ToTensor``), which
        moves ``z_0`` by about 4e-6 relative (measured on the tiny model) and every later step with it."""
        w, h = canvas.size
        return self.processor.preprocess(image, height=h, width=w).contiguous()

    def resolve_spec(self, spec: EditSpec | dict[str, Any] | str | os.PathLike[str]) -> EditSpec:
        """Validate a spec given as a model, a dict, JSON text or a spec file path (:func:`spec_from_json`)."""
        if isinstance(spec, EditSpec):
            return spec
        return spec_from_json(spec, self.registry.spec_models())

    # -- the edit ------------------------------------------------------------------------------------------
    def plan(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        spec: EditSpec | dict[str, Any] | str,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        propose_mask: bool = False,
    ) -> DryRun:
        """A dry run: validate ``spec`` for ``image`` and return the plan, the working grids, the guided steps, the
        K/V injection window, the backend and the cost in UNet evaluations, without running the model (for UI
        previews and validation). ``propose_mask=True`` lets a mode propose a mask from a point, which runs one
        UNet feature forward (:meth:`suggest_mask`).

        Raises:
            SpecError: as :meth:`edit`, and (field ``mask``) when a mask would be proposed and ``propose_mask``
                is False.
            pydantic.ValidationError: as :meth:`edit`.
            BackendUnavailableError: as :meth:`edit`.
            ArgumentTypeError: as :meth:`edit`.
        """
        options = EditOptions(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        return EditRun(self, image, spec, options).dry_run(propose_mask)

    def edit(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        spec: EditSpec | dict[str, Any] | str | os.PathLike[str],
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        trace: str | os.PathLike[str] | None = None,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepHook | None = None,
        cancel: threading.Event | None = None,
        reuse_inversion: bool = True,
    ) -> EditResult:
        """Run one edit: an :class:`~dragsdk.session.EditRun` through its stages ``check_inputs → prepare → encode →
        invert → sample → decode → report``.

        Args:
            image: the base image (path, PIL image or array; decoded by :func:`dragsdk.io.load_image`: EXIF
                orientation, 16-bit and float data scaled, size capped by ``DRAGSDK_MAX_MEGAPIXELS``).
            spec: the edit (any registered mode): a spec model, a dict, JSON text or the path of a spec file.
            progress: show a progress bar over inversion and sampling steps.
            callback: ``callback(i, t, z)`` after each sampling step (``callback_on_step_end`` sees every phase).
            trace: write the per-pass trace (timestep, latent before / after, energies, guidance norm) to this
                ``.npz`` path, atomically (:mod:`dragsdk.trace`).
            num_inference_steps: overrides ``spec.sampler.steps`` (diffusers' name; validated as that field).
            guidance_scale: overrides ``spec.sampler.guidance_scale`` (diffusers' name; validated as that field).
            generator: a ``torch.Generator``; one draw from it sets ``spec.sampler.seed`` (recorded in the report).
            output_type: ``pil``, ``np`` or ``pt``: the type of ``result.images`` (:class:`EditResult`).
            callback_on_step_end: ``hook(event) -> bool | None`` after every step of every phase (encode, invert,
                sample, decode; :class:`dragsdk.progress.StepEvent`); returning True cancels the edit, None or
                False goes on, anything else raises ``ArgumentTypeError``. diffusers' signature
                ``hook(pipe, step, timestep, callback_kwargs) -> dict`` is accepted too, called after each sampling
                step (:mod:`dragsdk.progress`).
            cancel: a ``threading.Event``; once set (from any thread) the edit stops at the end of the current step.
            reuse_inversion: False inverts afresh even when the cached inversion matches.

        Thread safety: one Editor may be called from many threads, and several Editors may share one model. The
        model-using part (encoding, inversion, sampling, decoding) runs under a per-model re-entrant lock
        (:func:`dragsdk.concurrency.model_lock`), so concurrent edits on one model run one at a time and give
        exactly their sequential results; validation and planning run outside it. The inversion cache is written
        only by an edit (or :meth:`invert`) that finished; the host's attention processors and scheduler are left as they were.

        Raises:
            SpecError: invalid geometry for this image, an unreadable image or spec (the field is named);
                pydantic ``ValidationError`` for invalid field values (overrides included).
            ArgumentTypeError: an argument of the wrong type (named), an unknown ``output_type``, or a
                ``callback_on_step_end`` that returned something other than None or a bool.
            BackendUnavailableError: no backend can run the edit here.
            HostAttentionError: the UNet carries host attention processors (e.g. an IP-Adapter's) that the edit
                would bypass; they are named.
            EditCancelled: the hook or ``cancel`` stopped the edit; nothing is returned or cached.
            NonFiniteError: the latent went NaN or ±inf (the phase and step are named); nothing is returned.
        """
        options = EditOptions(
            progress,
            callback,
            trace,
            num_inference_steps,
            guidance_scale,
            generator,
            output_type,
            callback_on_step_end,
            cancel,
            reuse_inversion,
        )
        return EditRun(self, image, spec, options).execute()

    def invert(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        spec: EditSpec | dict[str, Any] | str | os.PathLike[str],
        *,
        reuse_inversion: bool = True,
    ) -> Inversion:
        """The inversion an edit of ``image`` with ``spec`` starts from (the latent at every step, the guidance
        features, the text conditioning), as a read-only :class:`~dragsdk.inversion.Inversion`: for analysis and
        tests that compare an edit with what it was inverted from.

        Runs the edit's stages ``check_inputs → prepare → encode → invert`` and stops there (no sampling). The cached
        inversion answers when it matches (``result.reused``; no UNet evaluation), as it would for :meth:`edit`; a
        fresh one replaces the cache, as a finished edit's does, so an edit after it reuses it.

        Args:
            image: as :meth:`edit`.
            spec: as :meth:`edit`; its sampler settings (steps, resolution, seed) and mode decide the inversion.
            reuse_inversion: False inverts afresh even when the cached inversion matches.

        Returns:
            copies of the inversion's tensors (:class:`~dragsdk.inversion.Inversion` gives their shapes): changing
            them changes nothing in the Editor.

        Thread safety: as :meth:`edit` (the model part runs under the model's lock; the copies are made from an
        inversion that no edit modifies).

        Raises:
            SpecError, pydantic.ValidationError, ArgumentTypeError, BackendUnavailableError, HostAttentionError: as
                :meth:`edit`.
            NonFiniteError: the encoded or inverted latent is not finite; nothing is cached.
        """
        return EditRun(self, image, spec, EditOptions(reuse_inversion=reuse_inversion)).execute_inversion()

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
        a fixed seed, the decoder features (the family's feature blocks, :data:`dragsdk.families.LAYOUTS`; each L2-normalised, concatenated on the
        feature grid) are compared by cosine with the feature at ``point``
        (:func:`dragsdk.proposal.mask_from_features`), then the region is dilated by ``dilate_px`` pixels.

        Args:
            point: ``(x, y)`` in image pixels.

        Returns:
            ``(H, W)`` bool mask in image pixels.

        Thread safety: runs under the model's lock, as :meth:`edit`.

        Raises:
            SpecError: (field ``point``) the point is off the image; (``threshold``) not a number in [0, 1];
                (``timestep``) not an integer timestep of the model's schedule; (``resolution``, ``dilate_px``)
                not a positive / non-negative integer. All checked before the model runs.
        """
        from .proposal import check_proposal_settings, dilate, mask_from_features

        check_proposal_settings(
            threshold, timestep, resolution, dilate_px, len(self.model.scheduler.alphas_cumprod)
        )
        img = load_image(image)
        canvas = Canvas.fit(img.size, resolution)
        if not canvas.contains(point):
            raise SpecError("point", f"{point} is outside the {img.size[0]}×{img.size[1]} image")
        with model_lock(self.model), host_adapter_detached(self.model.unet, self._check_host_processors()):
            z0 = self.model.encode_image(self._preprocess(img, canvas))
            a = float(self.model.scheduler.alphas_cumprod[timestep])
            noise = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(0)).to(z0)
            tap = FeatureTap(self.model.unet, self.model.adapter.feature_blocks)
            try:
                with tap.capture(stop=True):
                    self.model.unet_call()(
                        a**0.5 * z0 + (1 - a) ** 0.5 * noise,
                        timestep,
                        encoder_hidden_states=self._prompt(prompt),
                        return_dict=False,
                    )
                feats = tap.features()
            finally:
                tap.remove()
        gw, gh = canvas.feature_size
        f = torch.cat(
            [F.normalize(F.interpolate(x.float(), size=(gh, gw), mode="nearest"), dim=1) for x in feats], 1
        )
        region = mask_from_features(f[0], canvas.to_cell(point, "feature"), threshold)
        up = (
            F.interpolate(region.float()[None, None], size=(img.size[1], img.size[0]), mode="nearest")[0, 0]
            > 0.5
        )
        return dilate(up, dilate_px).numpy()
