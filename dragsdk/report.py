"""The edit report: what ran, where, how long each phase took, and what the guidance did."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch
from pydantic import BaseModel, Field


class EnergyRecord(BaseModel):
    step: int = Field(description="sampling step index")
    timestep: int = Field(description="diffusion timestep (0..999)")
    terms: dict[str, float] = Field(description="value of each energy term before the update")
    total: float
    after: float | None = Field(None, description="total energy after the update (when probed)")
    grad_norm: float = Field(0.0, description="L2 norm of the applied guidance g")


class EditReport(BaseModel):
    """Everything measured during one edit (``--report`` writes it as JSON)."""

    mode: str
    model: str
    random_weights: bool = Field(
        False,
        description="the model has random weights (a built-in test model such as "
        "'tiny'): the image is not a real edit",
    )
    backend: str
    backend_reason: str
    device: str
    dtype: str
    image_size: tuple[int, int] = Field(description="(W, H) of the input, pixels")
    working_size: tuple[int, int] = Field(description="(W, H) the model ran at, pixels")
    steps: int
    seed: int
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="encode, invert, sample, decode"
    )
    unet_evaluations: dict[str, int] = Field(
        default_factory=dict, description="forward, forward_grad, backward"
    )
    image_encoder_forwards: int = Field(
        0,
        description="forwards of the image prompt's image encoder (the "
        "IP-Adapter's CLIP vision model; not UNet evaluations): 1 per edit with an "
        "image prompt, else 0",
    )
    inversion_reused: bool = False
    energies: list[EnergyRecord] = Field(default_factory=list)
    kv_bank_bytes: int = 0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = Field("", description="cuda_max_allocated or process_max_rss")
    mask_proposed: bool = False
    profile: str = Field(
        "", description="the spec's fidelity profile: official, dragsdk or official+<improvements>"
    )
    profile_options: list[str] = Field(
        default_factory=list,
        description="every option of the mode's profile table as name=value (dragsdk.fidelity)",
    )
    notes: list[str] = Field(default_factory=list)
    image_prompt: str | None = Field(
        None,
        description="the IP-Adapter used as image prompt (None: the mode has none, or no adapter is loaded)",
    )
    finetune: dict[str, Any] | None = Field(
        None,
        description="the per-image LoRA stage (dragsdk.finetune): cached (loaded from the on-disk cache), steps "
        "trained, the loss of each step, the cache key and file; None without one",
    )
    optimisation: list[dict[str, Any]] = Field(
        default_factory=list,
        description="one entry per iteration of the latent-optimisation stage (dragsdk.optimise): iteration, loss "
        "(None where the tracker ended the loop) and what the mode recorded (e.g. tracked handles); empty "
        "without one",
    )


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes: CUDA allocator peak since the last reset, else the process's maximum RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
