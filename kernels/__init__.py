"""Attention kernels for cross-branch (bank / own / composite) K/V.

- :class:`KVSource` and :func:`cross_branch_attention_oracle`: the source type and the pure-PyTorch oracle.
- :func:`cross_branch_attention`: the fused Triton op (one launch, joint online softmax over up to two
  sources, FlashAttention-2 backward); :func:`is_available` says whether it can run here.

Triton is optional: this package imports without it (the fused op then raises ``RuntimeError``).
See ``docs/kernels.md``.
"""

if (
    __name__ != "dragsdk.kernels"
):  # imported as bare `kernels` from a checkout's root: yield to an installed one
    from dragsdk._source_layout import yield_bare_name

    yield_bare_name(__name__)
else:
    from .cross_attention import MAX_HEAD_DIM, MAX_SOURCES, cross_branch_attention, is_available
    from .oracle import KVSource, cross_branch_attention_oracle, validate_sources

__all__ = [
    "KVSource",
    "MAX_HEAD_DIM",
    "MAX_SOURCES",
    "cross_branch_attention",
    "cross_branch_attention_oracle",
    "is_available",
    "validate_sources",
]
