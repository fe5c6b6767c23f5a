"""The edit trace: what every sampling pass did, for comparing profiles, backends and the official code.

``Editor.edit(..., trace=PATH)`` (CLI ``dragsdk edit --trace PATH``) writes one ``.npz`` archive (atomically:
a temporary file in the same folder, then a rename). One row per sampling *pass* (a time-travel step has
several), in the order they ran:

============================  ==================  ============================================================
key                           shape / dtype       meaning
============================  ==================  ============================================================
``step``                      ``(N,)`` int64      sampling step index ``i`` (0 = the noisiest)
``pass``                      ``(N,)`` int64      pass of that step (0 unless time travel repeats it)
``timestep``                  ``(N,)`` int64      diffusion timestep ``t_i`` (0..999)
``latent_before``             ``(N, 4, h, w)`` f32  latent entering the pass (after any step pastes)
``latent_after``              ``(N, 4, h, w)`` f32  the pass's result ``z_{t_prev}`` (the last pass: after any
                                                  outside reset, i.e. what the next step starts from)
``guidance_norm``             ``(N,)`` float64    ``‖c·λ·∇E‖₂`` of the applied guidance; NaN on unguided passes
``energy_total``              ``(N,)`` float64    sum of the energy terms before the update; NaN if unguided
``energy_<term>``             ``(N,)`` float64    each energy term (``edit``, ``content``, ...); NaN if unguided
``meta``                      0-d str             JSON: mode, profile, profile options, model, backend, steps,
                                                  seed, rng (``dragsdk`` or ``official``: the random
                                                  streams, :class:`~dragsdk.fidelity.Fidelity`), working size
============================  ==================  ============================================================

Latents are in the model's latent units (not scaled), on the latent grid ``(h, w)`` = working size / 8.
Read with :func:`read_trace` (``numpy.load`` works too).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write


@dataclass
class TracePass:
    """One sampling pass (see the module docstring for the meaning of each field)."""

    step: int
    pass_index: int
    timestep: int
    latent_before: torch.Tensor
    latent_after: torch.Tensor | None = None
    energies: dict[str, float] = field(default_factory=dict)
    guidance_norm: float | None = None


def trace_arrays(passes: list[TracePass], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The archive's arrays for ``passes`` (every pass must have its ``latent_after``).

    Raises:
        ValueError: no passes.
    """
    if not passes:
        raise ValueError("a trace needs at least one sampling pass")
    names = sorted({k for p in passes for k in p.energies})
    nan = float("nan")
    out: dict[str, np.ndarray] = {
        "step": np.array([p.step for p in passes], dtype=np.int64),
        "pass": np.array([p.pass_index for p in passes], dtype=np.int64),
        "timestep": np.array([p.timestep for p in passes], dtype=np.int64),
        "latent_before": np.stack([p.latent_before.float().cpu().numpy()[0] for p in passes]),
        "latent_after": np.stack(
            [p.latent_after.float().cpu().numpy()[0] for p in passes if p.latent_after is not None]
        ),
        "guidance_norm": np.array([nan if p.guidance_norm is None else p.guidance_norm for p in passes]),
        "energy_total": np.array([sum(p.energies.values()) if p.energies else nan for p in passes]),
    }
    for name in names:
        out[f"energy_{name}"] = np.array([p.energies.get(name, nan) for p in passes])
    out["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return out


def write_trace(
    path: str | os.PathLike[str],
    passes: list[TracePass],
    meta: dict[str, Any],
    protect: tuple[Path, ...] = (),
) -> Path:
    """Write the trace archive atomically (never over a protected input).

    Raises:
        SpecError: (field ``trace``) ``path`` is a protected input, a folder or not a regular file.
        OutputError: the file cannot be written (the message starts with ``trace:``).
        ValueError: no passes.
    """
    arrays = trace_arrays(passes, meta)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write, protect, field="trace")


RNG_BEFORE_OPTION = "dragsdk"
"""``meta["rng"]`` of a trace written before the option existed: every edit then drew from dragsdk's own streams."""


def read_trace(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of a trace archive and its decoded ``meta`` (an older trace without ``rng`` reads as
    :data:`RNG_BEFORE_OPTION`)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta.setdefault("rng", RNG_BEFORE_OPTION)
    return arrays, meta
