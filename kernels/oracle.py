"""Cross-branch attention: the K/V source type and the pure-PyTorch oracle every kernel is tested against.

Cross-branch self-attention (DragonDiffusion arXiv 2307.02421 §3.3 "visual cross-attention"; MasaCtrl) lets
the generation branch's queries attend to keys and values recorded during inversion (the *bank*), to its
own, or to both. All three K/V modes are one operation over a list of sources:

- ``concat``: ``[own, bank]``;
- ``replace``: ``[bank]``;
- ``composite``: ``[bank_a with key mask m_a, bank_b with key mask m_b]`` (appearance / paste).

softmax is taken jointly over every visible key of every source:
``out = softmax(q·[K_1; K_2]ᵀ · scale + mask_bias) · [V_1; V_2]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class KVSource(NamedTuple):
    """One source of keys and values.

    Attributes:
        k: ``(Bs, H, M, d)`` keys. ``Bs`` is 1 (shared by every query batch row, e.g. a bank used by both
            halves of the classifier-free-guidance batch) or ``B`` (one per query row).
        v: ``(Bs, H, M, d)`` values.
        key_mask: ``(M,)`` bool, True where a key is visible, or None for all visible.
    """

    k: torch.Tensor
    v: torch.Tensor
    key_mask: torch.Tensor | None = None


def validate_sources(q: torch.Tensor, sources: Sequence[KVSource]) -> None:
    """Raise ``ValueError`` naming the offending source when shapes do not fit ``q`` of ``(B, H, N, d)``."""
    if q.ndim != 4:
        raise ValueError(f"q must be (B, H, N, d), got shape {tuple(q.shape)}")
    if not sources:
        raise ValueError("sources must hold at least one KVSource")
    b, h, _, d = q.shape
    for i, s in enumerate(sources):
        if s.k.shape != s.v.shape or s.k.ndim != 4:
            raise ValueError(
                f"sources[{i}]: k and v must both be (Bs, H, M, d), got {tuple(s.k.shape)}, {tuple(s.v.shape)}"
            )
        bs, hs, m, ds = s.k.shape
        if bs not in (1, b) or hs != h or ds != d:
            raise ValueError(f"sources[{i}]: k is {tuple(s.k.shape)}, expected (1 or {b}, {h}, M, {d})")
        if s.key_mask is not None and tuple(s.key_mask.shape) != (m,):
            raise ValueError(f"sources[{i}].key_mask must be ({m},), got {tuple(s.key_mask.shape)}")


def cross_branch_attention_oracle(
    q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
) -> torch.Tensor:
    """Oracle: materialise every source, mask hidden keys with −inf, one softmax.

    Args:
        q: ``(B, H, N, d)`` queries.
        sources: K/V sources (see :class:`KVSource`).
        scale: logit scale, default ``1/sqrt(d)``.

    Returns:
        ``(B, H, N, d)`` in ``q``'s dtype (computed in the promoted dtype of the inputs).

    Raises:
        ValueError: shapes that do not fit; a query with no visible key at all.
    """
    validate_sources(q, sources)
    b = q.shape[0]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    ks, vs, bias = [], [], []
    for s in sources:
        ks.append(s.k.expand(b, -1, -1, -1))
        vs.append(s.v.expand(b, -1, -1, -1))
        m = s.k.shape[2]
        keep = (
            torch.ones(m, dtype=torch.bool, device=q.device)
            if s.key_mask is None
            else s.key_mask.to(q.device)
        )
        bias.append(torch.where(keep, 0.0, float("-inf")).to(q.dtype))
    k = torch.cat(ks, dim=2)
    v = torch.cat(vs, dim=2)
    bias_t = torch.cat(bias)
    if not torch.isfinite(bias_t).any():
        raise ValueError("every key is masked out: the key masks leave nothing to attend to")
    logits = (q @ k.transpose(-1, -2)) * scale + bias_t
    return torch.softmax(logits, dim=-1) @ v
