"""DIFT features (Tang et al., "Emergent Correspondence from Image Diffusion", NeurIPS 2023, arXiv 2306.03881).

The feature of an image is the output of one UNet decoder block after a single denoising call on the noised image
latent, averaged over an ensemble of noise draws. This is the extractor of both DragBench Mean-Distance protocols:

- DragDiffusion ``drag_bench_evaluation/dift_sd.py`` (taken from the DIFT repository): SD 2.1
  (``stabilityai/stable-diffusion-2-1``), timestep 261, ``up_blocks[1]``, ensemble 8, the sample's prompt, the
  VAE posterior *sampled* for every ensemble member, noise added with the scheduler's ``add_noise``.
- RegionDrag / Inpaint4Drag ``utils/evaluator.py``: the same, but with the posterior *mode* (``latent="mode"``).

Any supported family works (:mod:`dragsdk.families`: SD 1.x, SD 2.x ε or v, SDXL; e.g. the built-in ``tiny`` for
tests): the prompt is encoded and the UNet called through the model's adapter (SDXL's pooled embedding and time ids
included), and the default feature block is the family's first feature block (``up_blocks[1]`` for SD 1.x / 2.x,
the protocol's; ``up_blocks[0]`` for SDXL, the block whose output has the same resolution, 1/16 of the image).
Every setting is a constructor argument; the defaults are the protocol's.

Deviation, on purpose: the official scripts seed the global RNG once per run, so a sample's noise depends on the
samples before it. Here every call draws from its own generator seeded with ``seed``, so a sample's features do not
depend on order, resuming or which Ray actor ran it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..features import FeatureTap
from ..models import ModelBundle, load_model

DIFT_MODEL = "stabilityai/stable-diffusion-2-1"
"""The protocol's model (both DragDiffusion and RegionDrag evaluations)."""
DIFT_TIMESTEP = 261
DIFT_UP_BLOCK = 1
DIFT_ENSEMBLE = 8
DIFT_SEED = 42

FeatureFn = Callable[[torch.Tensor, str], torch.Tensor]
"""``features(image, prompt)``: image ``(1, 3, H, W)`` in [-1, 1] → features ``(1, C, h, w)`` (any grid)."""


def image_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [-1, 1] from a PIL image, an ``(H, W, 3)`` uint8 array or such a tensor.

    Raises:
        ValueError: an array or tensor of another shape.
    """
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"an image tensor must be (1, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
        return t
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3), got {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


class DIFT:
    """A DIFT feature extractor; call it as ``dift(image, prompt) → (1, C, h, w)`` float32 features.

    Args:
        model: a :class:`~dragsdk.models.ModelBundle`, or a name for :func:`~dragsdk.models.load_model` (hub id,
            diffusers folder, ``tiny``); loaded on first use. Default: SD 2.1 (the protocol).
        timestep: the diffusion timestep the latent is noised to (0..999; protocol 261).
        up_block: index of the ``unet.up_blocks`` whose output is the feature (protocol 1: 1/16 of the image,
            e.g. 1280 channels at 48×48 for SD 2.1 at 768²); None (default): the family's first feature block, which
            is the protocol's 1 for SD 1.x / 2.x (:data:`dragsdk.families.LAYOUTS`).
        ensemble: noise draws averaged (protocol 8).
        prompt: a fixed prompt for every image; None (default) uses the prompt passed at call time (the
            sample's, as the protocol does).
        seed: seed of each call's generator (VAE posterior samples, then the noise).
        latent: ``sample`` (DragDiffusion/DIFT: a posterior sample per ensemble member) or ``mode`` (RegionDrag /
            Inpaint4Drag evaluator: the posterior mean).
        batch_size: ensemble members per UNet call (default all at once); the result does not depend on it.
        device / torch_dtype: where a model given by name is loaded (:func:`~dragsdk.models.load_model`).

    Raises:
        ValueError: a setting out of range.
        ModelNotFoundError: (on first use) the model's weights are absent; the message says how to provide them.
    """

    def __init__(
        self,
        model: ModelBundle | str = DIFT_MODEL,
        timestep: int = DIFT_TIMESTEP,
        up_block: int | None = None,
        ensemble: int = DIFT_ENSEMBLE,
        prompt: str | None = None,
        seed: int = DIFT_SEED,
        latent: Literal["sample", "mode"] = "sample",
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> None:
        if not 0 <= timestep < 1000:
            raise ValueError(f"timestep must be in 0..999, got {timestep}")
        if ensemble < 1:
            raise ValueError(f"ensemble must be ≥ 1, got {ensemble}")
        if latent not in ("sample", "mode"):
            raise ValueError(f"latent must be 'sample' or 'mode', got {latent!r}")
        self._model = model
        self.timestep, self.ensemble = int(timestep), int(ensemble)
        self._up_block = up_block
        self.prompt, self.seed, self.latent = prompt, int(seed), latent
        self.batch_size = batch_size or self.ensemble
        self.device, self.torch_dtype = device, torch_dtype
        self._prompts: dict[str, torch.Tensor] = {}

    @property
    def model_name(self) -> str:
        return self._model.name if isinstance(self._model, ModelBundle) else str(self._model)

    @property
    def bundle(self) -> ModelBundle:
        """The model, loaded on first use.

        Raises:
            ModelNotFoundError: the weights are absent.
        """
        if not isinstance(self._model, ModelBundle):
            self._model = load_model(self._model, self.device, self.torch_dtype)
        if self._up_block is None:
            self._up_block = self._model.adapter.feature_blocks[0]
        if not 0 <= self.up_block < len(self._model.unet.up_blocks):
            raise ValueError(
                f"up_block must be in 0..{len(self._model.unet.up_blocks) - 1}, got {self.up_block}"
            )
        return self._model

    @property
    def up_block(self) -> int:
        """The feature block (the family's first feature block until the model is loaded, when unset)."""
        if self._up_block is None:
            return self.bundle.adapter.feature_blocks[0]
        return int(self._up_block)

    def settings(self) -> dict[str, Any]:
        """The protocol settings, for reports."""
        up = self.up_block if self._up_block is not None or isinstance(self._model, ModelBundle) else None
        return {
            "model": self.model_name,
            "timestep": self.timestep,
            "up_block": up,
            "ensemble": self.ensemble,
            "prompt": self.prompt,
            "seed": self.seed,
            "latent": self.latent,
        }

    def _embed(self, prompt: str) -> torch.Tensor:
        if prompt not in self._prompts:
            self._prompts[prompt] = self.bundle.encode_prompt(prompt)
        return self._prompts[prompt]

    @torch.no_grad()
    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor, prompt: str = "") -> torch.Tensor:
        """Features of one image at the image's own size (the UNet runs at ``H/8 × W/8`` latent cells).

        Args:
            image: PIL image, ``(H, W, 3)`` uint8 array, or ``(1, 3, H, W)`` tensor in [-1, 1].
            prompt: the conditioning prompt (ignored when the extractor has a fixed ``prompt``).

        Returns:
            ``(1, C, h, w)`` float32 on the CPU: the ensemble mean of ``unet.up_blocks[up_block]``'s output.
        """
        m = self.bundle
        vae = m.run_vae()
        x = image_tensor(image).to(m.device, vae.dtype)
        post = vae.encode(x).latent_dist
        gen = torch.Generator("cpu").manual_seed(self.seed)
        mean, std = post.mean.float().cpu(), post.std.float().cpu()
        n = self.ensemble
        if self.latent == "sample":
            z = mean + std * torch.randn((n, *mean.shape[1:]), generator=gen)
        else:
            z = mean.expand(n, -1, -1, -1)
        z = z * m.vae.config.scaling_factor  # SD 1.x / 2.x 0.18215, SDXL 0.13025
        noise = torch.randn(z.shape, generator=gen)
        a = float(m.scheduler.alphas_cumprod[self.timestep])
        noisy = (a**0.5 * z + (1 - a) ** 0.5 * noise).to(m.device, m.dtype)
        cond = self._embed(self.prompt if self.prompt is not None else prompt)
        t = torch.tensor(self.timestep, device=m.device)
        tap = FeatureTap(m.unet, blocks=(self.up_block,))
        unet = m.unet_call()
        total: torch.Tensor | None = None
        try:
            for i in range(0, n, self.batch_size):
                chunk = noisy[i : i + self.batch_size]
                with tap.capture(stop=True):
                    unet(chunk, t, encoder_hidden_states=cond.expand(len(chunk), -1, -1), return_dict=False)
                f = tap.features()[0].float().sum(0, keepdim=True)
                total = f if total is None else total + f
        finally:
            tap.remove()
        assert total is not None
        return (total / n).cpu()
