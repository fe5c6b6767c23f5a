"""Fused cross-branch attention: one Triton launch over up to two K/V sources with a joint softmax.

The op (DragonDiffusion arXiv 2307.02421 §3.3; MasaCtrl) lets the queries of the generation branch attend to
keys/values recorded during inversion (the *bank*), to their own, or to both. With sources
``S_1 .. S_s`` (``s`` = 1 or 2) and key masks ``mask_i`` it computes, per batch row ``b`` and head ``h``::

    out = softmax(q · [K_1; K_2]ᵀ · scale + bias) · [V_1; V_2],   bias = 0 (visible) or −inf (hidden)

exactly like :func:`dragsdk.kernels.oracle.cross_branch_attention_oracle`, but without ever building
``[K_1; K_2]``: the kernel walks the key blocks of source 1 and then of source 2, keeping a running row max
``m`` and row sum ``l`` in fp32 (fp64 for float64 inputs) — the online softmax of FlashAttention-2
(Dao, arXiv 2307.08691, Algorithm 1). A bank with batch size 1 is read with batch stride 0 (never expanded
or copied). Queries, keys, values, outputs and gradients are addressed through their strides, so views such
as ``x.view(B, N, H, d).transpose(1, 2)`` are used in place.

The backward follows FlashAttention-2 Algorithm 2: ``delta = rowsum(dO ∘ O)`` (one small kernel), ``P``
recomputed from the saved log-sum-exp, one kernel for ``dQ`` (loops over the key blocks of every source) and,
for each source whose ``k`` or ``v`` requires a gradient, one kernel for ``dK``/``dV`` (loops over the query
blocks; a source shared across the batch sums over the batch rows inside the kernel). A bank whose tensors do
not require gradients gets no kernel launch and ``None`` as its gradient.

Triton is optional: without it this module imports, :func:`is_available` says why, and
:func:`cross_branch_attention` raises ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .oracle import KVSource, validate_sources

try:  # Triton is an optional dependency (``pip install dragsdk[dev]`` or a CUDA torch wheel brings it).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["MAX_SOURCES", "MAX_HEAD_DIM", "cross_branch_attention", "is_available"]

MAX_SOURCES = 2
"""Sources one launch handles: ``[own, bank]``, ``[bank]`` or ``[bank_a, bank_b]``."""

MAX_HEAD_DIM = 256
"""Largest head dim; ``d`` is padded *inside* the kernel to a power of two ``BLOCK_D`` with masked loads."""

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOG2E = 1.4426950408889634
# Whether ``triton.jit`` built interpreter functions: it decides once, when this module is imported.
_INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> tuple[bool, str]:
    """Whether :func:`cross_branch_attention` can run here.

    Returns:
        ``(True, "")`` when triton imports and either a CUDA device is present or ``TRITON_INTERPRET=1``
        was set before this module was imported (the CPU interpreter: correct but very slow);
        otherwise ``(False, reason)`` with a human-readable reason.
    """
    if triton is None:
        return False, "triton is not installed"
    if torch.cuda.is_available():
        return True, ""
    if _INTERPRET_AT_IMPORT:
        return True, ""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False, (
            "TRITON_INTERPRET=1 was set after dragsdk.kernels.cross_attention was imported; "
            "set it before the import"
        )
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU interpreter)"


class _LaunchConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Tile sizes measured on a GPU (``benchmarks/attention.py --tune``), keyed by
# ``(compute capability major, BLOCK_D, dtype, backward)`` (shared memory differs between architectures);
# consulted before the static table below. The tuning sweep fills it temporarily, one candidate at a time.
_TUNED: dict[tuple[int, int, torch.dtype, bool], _LaunchConfig] = {}


def _launch_config(
    d_block: int, device: torch.device, dtype: torch.dtype, backward: bool = False
) -> _LaunchConfig:
    """Tile sizes: the measured table ``_TUNED`` on CUDA, else the static choice below.

    The static sizes were chosen without a GPU.

    Chosen so that every kernel compiles for sm_80 / sm_86 / sm_90 within 99 KiB of shared memory for
    fp16 / bf16 / fp32 (checked with an ahead-of-time compile, see ``docs/kernels.md``). float64 on CUDA uses
    tiny tiles and is meant for checks only. The interpreter runs whole tiles as numpy ops: bigger is faster.
    """
    if device.type != "cuda":
        return _LaunchConfig(32, 32, 4, 1)
    if _TUNED and torch.cuda.is_available():
        tuned = _TUNED.get((torch.cuda.get_device_capability(device)[0], d_block, dtype, backward))
        if tuned is not None:
            return tuned
    if dtype == torch.float64:
        return _LaunchConfig(16, 16, 4, 1)
    if dtype == torch.float32:
        if d_block <= 64:
            return _LaunchConfig(64, 32, 4, 2)
        return _LaunchConfig(32, 32 if d_block <= 128 else 16, 4, 1)
    if d_block <= 64:
        return _LaunchConfig(128, 64, 4, 3) if not backward else _LaunchConfig(64, 64, 4, 2)
    if d_block <= 128:
        return _LaunchConfig(64, 64, 8, 2) if not backward else _LaunchConfig(64, 32, 4, 2)
    return _LaunchConfig(64, 32, 8, 2) if not backward else _LaunchConfig(32, 32, 4, 2)


if triton is not None:

    @triton.jit
    def _mm(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` with fp32 (fp64 for fp64 operands) results.

        ``UPCAST`` converts bf16 operands to fp32 first: Triton's CPU interpreter computes wrong bf16 dots.
        """
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PREC)

    @triton.jit
    def _fwd_block(
        acc,
        m_i,
        l_i,
        q,
        K,
        V,
        offs_n,
        keep,
        s_kn,
        s_kd,
        s_vn,
        s_vd,
        qk_scale,
        offs_d,
        d_ok,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """One key block of the online softmax (FA2 Alg. 1, lines 8-10), in log2 units."""
        kt = tl.load(
            K + offs_n[None, :] * s_kn + offs_d[:, None] * s_kd, mask=keep[None, :] & d_ok[:, None], other=0.0
        )
        s = _mm(q, kt, PREC, UPCAST).to(acc.dtype) * qk_scale
        s = tl.where(keep[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that have seen no visible key yet keep m = -inf; subtract 0 there to avoid inf - inf.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            V + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=keep[:, None] & d_ok[None, :], other=0.0
        )
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, PREC, UPCAST).to(acc.dtype)
        return acc, m_new, l_i

    @triton.jit
    def _fwd_source(
        acc,
        m_i,
        l_i,
        q,
        K,
        V,
        MASK,
        M,
        s_kn,
        s_kd,
        s_vn,
        s_vd,
        s_m,
        qk_scale,
        offs_d,
        d_ok,
        HAS_MASK: tl.constexpr,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Fold the ``M`` keys of one source into the running ``(acc, m_i, l_i)``."""
        for start in range(0, M, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            keep = offs_n < M
            if HAS_MASK:
                keep = keep & (tl.load(MASK + offs_n * s_m, mask=keep, other=0) != 0)
                # A key block with no visible key changes nothing: skip its loads and dots.
                if tl.max(keep.to(tl.int32), axis=0) > 0:
                    acc, m_i, l_i = _fwd_block(
                        acc,
                        m_i,
                        l_i,
                        q,
                        K,
                        V,
                        offs_n,
                        keep,
                        s_kn,
                        s_kd,
                        s_vn,
                        s_vd,
                        qk_scale,
                        offs_d,
                        d_ok,
                        PREC,
                        UPCAST,
                    )
            else:  # no data-dependent branch: keeps the loop simple for the software pipeliner
                acc, m_i, l_i = _fwd_block(
                    acc,
                    m_i,
                    l_i,
                    q,
                    K,
                    V,
                    offs_n,
                    keep,
                    s_kn,
                    s_kd,
                    s_vn,
                    s_vd,
                    qk_scale,
                    offs_d,
                    d_ok,
                    PREC,
                    UPCAST,
                )
        return acc, m_i, l_i

    @triton.jit
    def _xattn_fwd_kernel(
        Q,
        Out,
        LSE,
        K1,
        V1,
        MASK1,
        K2,
        V2,
        MASK2,
        qk_scale,
        H,
        N,
        M1,
        M2,
        D,
        s_qb,
        s_qh,
        s_qn,
        s_qd,
        s_ob,
        s_oh,
        s_on,
        s_od,
        s_k1b,
        s_k1h,
        s_k1n,
        s_k1d,
        s_v1b,
        s_v1h,
        s_v1n,
        s_v1d,
        s_m1,
        s_k2b,
        s_k2h,
        s_k2n,
        s_k2d,
        s_v2b,
        s_v2h,
        s_v2n,
        s_v2d,
        s_m2,
        NUM_SOURCES: tl.constexpr,
        HAS_MASK1: tl.constexpr,
        HAS_MASK2: tl.constexpr,
        ACC: tl.constexpr,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < N
        d_ok = offs_d < D

        q = tl.load(
            Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
        l_i = tl.zeros([BLOCK_M], dtype=ACC)

        acc, m_i, l_i = _fwd_source(
            acc,
            m_i,
            l_i,
            q,
            K1 + b * s_k1b + h * s_k1h,
            V1 + b * s_v1b + h * s_v1h,
            MASK1,
            M1,
            s_k1n,
            s_k1d,
            s_v1n,
            s_v1d,
            s_m1,
            qk_scale,
            offs_d,
            d_ok,
            HAS_MASK1,
            PREC,
            UPCAST,
            BLOCK_N,
        )
        if NUM_SOURCES == 2:
            acc, m_i, l_i = _fwd_source(
                acc,
                m_i,
                l_i,
                q,
                K2 + b * s_k2b + h * s_k2h,
                V2 + b * s_v2b + h * s_v2h,
                MASK2,
                M2,
                s_k2n,
                s_k2d,
                s_v2n,
                s_v2d,
                s_m2,
                qk_scale,
                offs_d,
                d_ok,
                HAS_MASK2,
                PREC,
                UPCAST,
                BLOCK_N,
            )

        # Rows without any visible key: output 0 and lse = -inf (documented difference to the oracle).
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)
        tl.store(
            Out + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od,
            out.to(Out.dtype.element_ty),
            mask=m_ok[:, None] & d_ok[None, :],
        )
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=m_ok)

    @triton.jit
    def _xattn_bwd_delta_kernel(
        Out,
        DO,
        DELTA,
        H,
        N,
        D,
        s_ob,
        s_oh,
        s_on,
        s_od,
        s_dob,
        s_doh,
        s_don,
        s_dod,
        ACC: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """``delta[b, h, n] = Σ_d dO · O`` in the accumulator dtype (FA2 Alg. 2, line 4)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        ok = (offs_m < N)[:, None] & (offs_d < D)[None, :]
        o = tl.load(
            Out + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od, mask=ok, other=0.0
        )
        do = tl.load(
            DO + b * s_dob + h * s_doh + offs_m[:, None] * s_don + offs_d[None, :] * s_dod, mask=ok, other=0.0
        )
        delta = tl.sum(o.to(ACC) * do.to(ACC), axis=1)
        tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, delta, mask=offs_m < N)

    @triton.jit
    def _dq_block(
        dq,
        q,
        do,
        lse2,
        delta,
        K,
        V,
        offs_n,
        keep,
        s_kn,
        s_kd,
        s_vn,
        s_vd,
        qk_scale,
        offs_d,
        d_ok,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """``dq += dS·K`` for one key block, ``P`` recomputed from ``lse2`` (log2 units)."""
        kv_ok = keep[:, None] & d_ok[None, :]
        k = tl.load(K + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_ok, other=0.0)
        v = tl.load(V + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_ok, other=0.0)
        s = _mm(q, tl.trans(k), PREC, UPCAST).to(dq.dtype) * qk_scale
        s = tl.where(keep[None, :], s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = _mm(do, tl.trans(v), PREC, UPCAST).to(dq.dtype)
        ds = p * (dp - delta[:, None])
        return dq + _mm(ds.to(k.dtype), k, PREC, UPCAST).to(dq.dtype)

    @triton.jit
    def _dq_source(
        dq,
        q,
        do,
        lse2,
        delta,
        K,
        V,
        MASK,
        M,
        s_kn,
        s_kd,
        s_vn,
        s_vd,
        s_m,
        qk_scale,
        offs_d,
        d_ok,
        HAS_MASK: tl.constexpr,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Add one source's ``dS · K`` to ``dq`` (unscaled)."""
        for start in range(0, M, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            keep = offs_n < M
            if HAS_MASK:
                keep = keep & (tl.load(MASK + offs_n * s_m, mask=keep, other=0) != 0)
                if tl.max(keep.to(tl.int32), axis=0) > 0:
                    dq = _dq_block(
                        dq,
                        q,
                        do,
                        lse2,
                        delta,
                        K,
                        V,
                        offs_n,
                        keep,
                        s_kn,
                        s_kd,
                        s_vn,
                        s_vd,
                        qk_scale,
                        offs_d,
                        d_ok,
                        PREC,
                        UPCAST,
                    )
            else:
                dq = _dq_block(
                    dq,
                    q,
                    do,
                    lse2,
                    delta,
                    K,
                    V,
                    offs_n,
                    keep,
                    s_kn,
                    s_kd,
                    s_vn,
                    s_vd,
                    qk_scale,
                    offs_d,
                    d_ok,
                    PREC,
                    UPCAST,
                )
        return dq

    @triton.jit
    def _xattn_bwd_dq_kernel(
        Q,
        DO,
        DQ,
        LSE,
        DELTA,
        K1,
        V1,
        MASK1,
        K2,
        V2,
        MASK2,
        scale,
        qk_scale,
        H,
        N,
        M1,
        M2,
        D,
        s_qb,
        s_qh,
        s_qn,
        s_qd,
        s_dob,
        s_doh,
        s_don,
        s_dod,
        s_dqb,
        s_dqh,
        s_dqn,
        s_dqd,
        s_k1b,
        s_k1h,
        s_k1n,
        s_k1d,
        s_v1b,
        s_v1h,
        s_v1n,
        s_v1d,
        s_m1,
        s_k2b,
        s_k2h,
        s_k2n,
        s_k2d,
        s_v2b,
        s_v2h,
        s_v2n,
        s_v2d,
        s_m2,
        NUM_SOURCES: tl.constexpr,
        HAS_MASK1: tl.constexpr,
        HAS_MASK2: tl.constexpr,
        ACC: tl.constexpr,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """``dQ = scale · Σ_sources dS · K`` with ``dS = P ∘ (dO·Vᵀ − delta)`` (FA2 Alg. 2, dQ part)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < N
        d_ok = offs_d < D
        ok = m_ok[:, None] & d_ok[None, :]

        q = tl.load(
            Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd, mask=ok, other=0.0
        )
        do = tl.load(
            DO + b * s_dob + h * s_doh + offs_m[:, None] * s_don + offs_d[None, :] * s_dod, mask=ok, other=0.0
        ).to(q.dtype)
        row = pid_bh.to(tl.int64) * N + offs_m
        lse = tl.load(LSE + row, mask=m_ok, other=float("inf"))
        # lse = -inf marks a row with no visible key: +inf makes P = 0 there.
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        delta = tl.load(DELTA + row, mask=m_ok, other=0.0)

        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
        dq = _dq_source(
            dq,
            q,
            do,
            lse2,
            delta,
            K1 + b * s_k1b + h * s_k1h,
            V1 + b * s_v1b + h * s_v1h,
            MASK1,
            M1,
            s_k1n,
            s_k1d,
            s_v1n,
            s_v1d,
            s_m1,
            qk_scale,
            offs_d,
            d_ok,
            HAS_MASK1,
            PREC,
            UPCAST,
            BLOCK_N,
        )
        if NUM_SOURCES == 2:
            dq = _dq_source(
                dq,
                q,
                do,
                lse2,
                delta,
                K2 + b * s_k2b + h * s_k2h,
                V2 + b * s_v2b + h * s_v2h,
                MASK2,
                M2,
                s_k2n,
                s_k2d,
                s_v2n,
                s_v2d,
                s_m2,
                qk_scale,
                offs_d,
                d_ok,
                HAS_MASK2,
                PREC,
                UPCAST,
                BLOCK_N,
            )
        dq = dq * scale
        tl.store(
            DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :] * s_dqd,
            dq.to(DQ.dtype.element_ty),
            mask=ok,
        )

    @triton.jit
    def _xattn_bwd_dkdv_kernel(
        Q,
        DO,
        LSE,
        DELTA,
        K,
        V,
        MASK,
        DK,
        DV,
        scale,
        qk_scale,
        B,
        H,
        N,
        M,
        D,
        s_qb,
        s_qh,
        s_qn,
        s_qd,
        s_dob,
        s_doh,
        s_don,
        s_dod,
        s_kb,
        s_kh,
        s_kn,
        s_kd,
        s_vb,
        s_vh,
        s_vn,
        s_vd,
        s_m,
        s_dkb,
        s_dkh,
        s_dkn,
        s_dkd,
        s_dvb,
        s_dvh,
        s_dvn,
        s_dvd,
        SHARED: tl.constexpr,
        HAS_MASK: tl.constexpr,
        ACC: tl.constexpr,
        PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """``dV = Pᵀ·dO`` and ``dK = scale · dSᵀ·Q`` for one key block of one source (FA2 Alg. 2).

        ``SHARED``: the source has batch size 1 while ``q`` has ``B`` rows; the kernel sums over them.
        """
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        bk = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        keep = offs_n < M
        n_ok = keep
        if HAS_MASK:
            keep = keep & (tl.load(MASK + offs_n * s_m, mask=keep, other=0) != 0)
        kv_ok = keep[:, None] & d_ok[None, :]
        k = tl.load(
            K + bk * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_ok, other=0.0
        )
        v = tl.load(
            V + bk * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_ok, other=0.0
        )
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)

        # Hidden keys get zero gradients; a fully hidden key block skips the query loop entirely.
        if tl.max(keep.to(tl.int32), axis=0) > 0:
            n_rows = B if SHARED else 1
            for r in range(0, n_rows):
                b = bk + r  # SHARED: bk == 0 and r walks the B query rows; else r == 0
                q_base = Q + b * s_qb + h * s_qh
                do_base = DO + b * s_dob + h * s_doh
                row_base = (b * H + h) * N
                for start in range(0, N, BLOCK_M):
                    offs_m = start + tl.arange(0, BLOCK_M)
                    m_ok = offs_m < N
                    ok = m_ok[:, None] & d_ok[None, :]
                    q = tl.load(q_base + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd, mask=ok, other=0.0)
                    do = tl.load(
                        do_base + offs_m[:, None] * s_don + offs_d[None, :] * s_dod, mask=ok, other=0.0
                    ).to(q.dtype)
                    lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=float("inf"))
                    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
                    delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
                    st = _mm(k, tl.trans(q), PREC, UPCAST).to(ACC) * qk_scale  # (BLOCK_N, BLOCK_M)
                    st = tl.where(keep[:, None], st, float("-inf"))
                    pt = tl.exp2(st - lse2[None, :])
                    dv += _mm(pt.to(do.dtype), do, PREC, UPCAST).to(ACC)
                    dpt = _mm(v, tl.trans(do), PREC, UPCAST).to(ACC)
                    dst = pt * (dpt - delta[None, :])
                    dk += _mm(dst.to(q.dtype), q, PREC, UPCAST).to(ACC)
        dk = dk * scale
        out_ok = n_ok[:, None] & d_ok[None, :]
        tl.store(
            DK + bk * s_dkb + h * s_dkh + offs_n[:, None] * s_dkn + offs_d[None, :] * s_dkd,
            dk.to(DK.dtype.element_ty),
            mask=out_ok,
        )
        tl.store(
            DV + bk * s_dvb + h * s_dvh + offs_n[:, None] * s_dvn + offs_d[None, :] * s_dvd,
            dv.to(DV.dtype.element_ty),
            mask=out_ok,
        )


# --------------------------------------------------------------------------------------------- host side


def _strides(t: torch.Tensor, shared: bool = False) -> tuple[int, int, int, int]:
    """``(b, h, n, d)`` strides; batch stride 0 for a batch-1 source read by every query row."""
    sb, sh, sn, sd = t.stride()
    return (0 if shared else sb), sh, sn, sd


def _mask_arg(mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """A byte view of a key mask (no copy for bool masks), its stride and whether there is one."""
    if mask is None:
        return fallback, 0, False
    m = mask if mask.dtype == torch.bool else mask != 0
    return m.view(torch.uint8), m.stride(0), True


def _kernel_flags(dtype: torch.dtype, device: torch.device) -> dict:
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    # fp32 / fp64 dots in full precision (no TF32); for fp16 / bf16 the option has no effect.
    prec = "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
    upcast = dtype == torch.bfloat16 and device.type != "cuda"  # interpreter: bf16 dots are wrong
    return {"ACC": acc, "PREC": prec, "UPCAST": upcast}


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


class _Packed(NamedTuple):
    """The (at most two) sources as the kernels see them; unused slots repeat source 1."""

    k: tuple[torch.Tensor, torch.Tensor]
    v: tuple[torch.Tensor, torch.Tensor]
    masks: tuple[torch.Tensor | None, torch.Tensor | None]
    count: int


def _source_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    shared = k.shape[0] == 1
    mask_t, mask_stride, has_mask = _mask_arg(mask, k)
    return (k, v, mask_t, k.shape[2], _strides(k, shared), _strides(v, shared), mask_stride, has_mask)


def _forward(q, packed: _Packed, scale: float, cfg: _LaunchConfig | None):
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.empty((b, h, n), device=q.device, dtype=acc_dtype)
    if out.numel() == 0:
        return out, lse
    s1 = _source_args(q, packed.k[0], packed.v[0], packed.masks[0])
    s2 = _source_args(q, packed.k[1], packed.v[1], packed.masks[1])
    bd = _block_d(d)
    cfg = cfg or _launch_config(bd, q.device, q.dtype)
    grid = (triton.cdiv(n, cfg.block_m), b * h)
    _xattn_fwd_kernel[grid](
        q,
        out,
        lse,
        s1[0],
        s1[1],
        s1[2],
        s2[0],
        s2[1],
        s2[2],
        scale * _LOG2E,
        h,
        n,
        s1[3],
        s2[3] if packed.count == 2 else 0,
        d,
        *q.stride(),
        *out.stride(),
        *s1[4],
        *s1[5],
        s1[6],
        *s2[4],
        *s2[5],
        s2[6],
        NUM_SOURCES=packed.count,
        HAS_MASK1=s1[7],
        HAS_MASK2=s2[7] and packed.count == 2,
        **_kernel_flags(q.dtype, q.device),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=bd,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out, lse


def _backward(
    q,
    packed: _Packed,
    out,
    lse,
    dout,
    scale: float,
    cfg: _LaunchConfig | None,
    need_dq: bool,
    need_kv: tuple[bool, bool],
):
    b, h, n, d = q.shape
    bd = _block_d(d)
    cfg = cfg or _launch_config(bd, q.device, q.dtype, backward=True)
    flags = _kernel_flags(q.dtype, q.device)
    delta = torch.empty_like(lse)
    dq = torch.empty_like(q) if need_dq else None
    grads: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
    if q.numel() == 0:
        if dq is not None:
            dq.zero_()
        for i in range(packed.count):
            if need_kv[i]:
                grads[i] = (torch.zeros_like(packed.k[i]), torch.zeros_like(packed.v[i]))
        return dq, grads

    grid_q = (triton.cdiv(n, cfg.block_m), b * h)
    _xattn_bwd_delta_kernel[grid_q](
        out,
        dout,
        delta,
        h,
        n,
        d,
        *out.stride(),
        *dout.stride(),
        ACC=flags["ACC"],
        BLOCK_M=cfg.block_m,
        BLOCK_D=bd,
        num_warps=cfg.num_warps,
    )
    s1 = _source_args(q, packed.k[0], packed.v[0], packed.masks[0])
    s2 = _source_args(q, packed.k[1], packed.v[1], packed.masks[1])
    if need_dq:
        _xattn_bwd_dq_kernel[grid_q](
            q,
            dout,
            dq,
            lse,
            delta,
            s1[0],
            s1[1],
            s1[2],
            s2[0],
            s2[1],
            s2[2],
            scale,
            scale * _LOG2E,
            h,
            n,
            s1[3],
            s2[3] if packed.count == 2 else 0,
            d,
            *q.stride(),
            *dout.stride(),
            *dq.stride(),
            *s1[4],
            *s1[5],
            s1[6],
            *s2[4],
            *s2[5],
            s2[6],
            NUM_SOURCES=packed.count,
            HAS_MASK1=s1[7],
            HAS_MASK2=s2[7] and packed.count == 2,
            **flags,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_D=bd,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    for i, src in enumerate((s1, s2)[: packed.count]):
        if not need_kv[i]:
            continue
        k, v, mask_t, m, _, _, mask_stride, has_mask = src
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        grads[i] = (dk, dv)
        if m == 0:
            continue
        bs = k.shape[0]
        shared = bs == 1 and b > 1
        # The source's own strides: batch index ``bk`` ranges over its ``Bs`` rows (0 when shared).
        _xattn_bwd_dkdv_kernel[(triton.cdiv(m, cfg.block_n), bs * h)](
            q,
            dout,
            lse,
            delta,
            k,
            v,
            mask_t,
            dk,
            dv,
            scale,
            scale * _LOG2E,
            b,
            h,
            n,
            m,
            d,
            *q.stride(),
            *dout.stride(),
            *k.stride(),
            *v.stride(),
            mask_stride,
            *dk.stride(),
            *dv.stride(),
            SHARED=shared,
            HAS_MASK=has_mask,
            **flags,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_D=bd,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return dq, grads


def _device_guard(t: torch.Tensor):
    """Triton launches on the *current* CUDA device: make it the tensors' device."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class _CrossBranchAttentionFn(torch.autograd.Function):
    """Autograd wrapper. Inputs: ``q, scale, cfg, k1, v1, mask1, k2, v2, mask2`` (slot 2 may be None)."""

    @staticmethod
    def forward(ctx, q, scale, cfg, k1, v1, mask1, k2, v2, mask2):
        count = 1 if k2 is None else 2
        packed = _Packed(
            (k1, k1 if k2 is None else k2), (v1, v1 if v2 is None else v2), (mask1, mask2), count
        )
        with _device_guard(q):
            out, lse = _forward(q, packed, scale, cfg)
        ctx.save_for_backward(q, k1, v1, mask1, k2, v2, mask2, out, lse)
        ctx.scale = scale
        ctx.cfg = cfg
        ctx.count = count
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k1, v1, mask1, k2, v2, mask2, out, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad
        packed = _Packed(
            (k1, k1 if k2 is None else k2), (v1, v1 if v2 is None else v2), (mask1, mask2), ctx.count
        )
        need_kv = (needs[3] or needs[4], ctx.count == 2 and (needs[6] or needs[7]))
        with _device_guard(q):
            dq, grads = _backward(q, packed, out, lse, dout, ctx.scale, ctx.cfg, needs[0], need_kv)
        g1 = grads[0] or (None, None)
        g2 = grads[1] or (None, None)
        return (
            dq,
            None,
            None,
            g1[0] if needs[3] else None,
            g1[1] if needs[4] else None,
            None,
            g2[0] if needs[6] else None,
            g2[1] if needs[7] else None,
            None,
        )


def _check_inputs(q: torch.Tensor, sources: Sequence[KVSource]) -> None:
    validate_sources(q, sources)
    if len(sources) > MAX_SOURCES:
        raise ValueError(
            f"cross_branch_attention takes at most {MAX_SOURCES} sources in one launch, got {len(sources)}; "
            "use cross_branch_attention_oracle for more"
        )
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q dtype {q.dtype} is not supported; use one of {_SUPPORTED_DTYPES}")
    d = q.shape[-1]
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim {d} exceeds the kernel limit of {MAX_HEAD_DIM}")
    if q.shape[0] * q.shape[1] > 65535:
        raise ValueError(f"B*H = {q.shape[0] * q.shape[1]} exceeds the kernel grid limit of 65535")
    for i, s in enumerate(sources):
        for name, t in (("k", s.k), ("v", s.v), ("key_mask", s.key_mask)):
            if t is not None and t.device != q.device:
                raise ValueError(f"sources[{i}].{name} is on {t.device}, q is on {q.device}: use one device")
        if s.k.dtype != q.dtype or s.v.dtype != q.dtype:
            raise ValueError(
                f"sources[{i}]: k/v dtype {s.k.dtype}/{s.v.dtype} differs from q dtype {q.dtype}"
            )


def cross_branch_attention(
    q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
) -> torch.Tensor:
    """Joint-softmax attention of ``q`` over one or two K/V sources, fused in one Triton launch.

    Computes ``softmax(q·[K_1; K_2]ᵀ·scale + bias)·[V_1; V_2]`` with ``bias = −inf`` on hidden keys
    (DragonDiffusion arXiv 2307.02421 §3.3), via the FlashAttention-2 online softmax (arXiv 2307.08691,
    Alg. 1; backward Alg. 2). Differentiable in ``q`` and in every source tensor with ``requires_grad``;
    a bank with ``requires_grad=False`` receives no gradient and costs no backward work.

    Args:
        q: ``(B, H, N, d)`` queries, float16 / bfloat16 / float32 / float64, ``d <= 256``. Any strides.
        sources: 1 or 2 :class:`KVSource` — ``[own, bank]`` (concat), ``[bank]`` (replace),
            ``[bank_a, bank_b]`` with key masks (composite). ``k``/``v`` are ``(Bs, H, M_i, d)`` with
            ``Bs`` 1 (read with batch stride 0) or ``B``, same dtype and device as ``q``, any strides;
            ``key_mask`` is ``(M_i,)`` bool (True = visible) or None.
        scale: logit scale (dimensionless), default ``1/sqrt(d)``.

    Returns:
        ``(B, H, N, d)`` tensor in ``q``'s dtype, allocated with ``q``'s layout when ``q`` is dense
        (``torch.empty_like``). Softmax statistics are kept in fp32 (fp64 for float64 inputs). If the key masks
        hide every key, the output rows are 0 (the oracle raises instead; the kernel does not sync the
        device to check).

    Raises:
        ValueError: shapes that do not fit (message names ``sources[i]``), more than 2 sources, tensors on
            different devices, mixed or unsupported dtypes, ``d > 256``, ``B*H > 65535``.
        RuntimeError: Triton is not installed, or there is no CUDA device and ``TRITON_INTERPRET=1`` was not
            set before import (see :func:`is_available`), or the tensors are on a device the kernels cannot
            reach (CPU tensors without the interpreter, MPS, ...).
    """
    return _cross_branch_attention(q, sources, scale)


def _cross_branch_attention(
    q: torch.Tensor,
    sources: Sequence[KVSource],
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """:func:`cross_branch_attention` with optional tile sizes (tests use small ones to cross many blocks)."""
    _check_inputs(q, sources)
    ok, reason = is_available()
    if not ok:
        raise RuntimeError(f"cross_branch_attention is unavailable: {reason}")
    if q.device.type == "cpu" and not _INTERPRET_AT_IMPORT:
        raise RuntimeError(
            "cross_branch_attention got CPU tensors: the kernels run on CUDA, or on the CPU only when "
            "TRITON_INTERPRET=1 is set before dragsdk.kernels is imported"
        )
    if q.device.type not in ("cpu", "cuda"):
        raise RuntimeError(
            f"cross_branch_attention runs on CUDA (or the CPU interpreter), not {q.device.type}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    cfg = None
    if block_m is not None or block_n is not None:
        base = _launch_config(_block_d(q.shape[-1]), q.device, q.dtype)
        cfg = base._replace(block_m=block_m or base.block_m, block_n=block_n or base.block_n)
    s1 = sources[0]
    s2 = sources[1] if len(sources) == 2 else None
    return _CrossBranchAttentionFn.apply(
        q,
        scale,
        cfg,
        s1.k,
        s1.v,
        s1.key_mask,
        None if s2 is None else s2.k,
        None if s2 is None else s2.v,
        None if s2 is None else s2.key_mask,
    )
