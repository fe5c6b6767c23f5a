"""Deprecated name of :mod:`dragsdk.kernels.oracle` (the pure-PyTorch oracle of the cross-branch attention); kept
so that backends written against it keep importing. Import from ``dragsdk.kernels.oracle`` instead."""

from __future__ import annotations

import warnings

from .oracle import KVSource, cross_branch_attention_oracle, validate_sources

warnings.warn(
    "dragsdk.kernels.reference is deprecated: import from dragsdk.kernels.oracle "
    "(cross_branch_attention_reference is now cross_branch_attention_oracle)",
    DeprecationWarning,
    stacklevel=2,
)

cross_branch_attention_reference = cross_branch_attention_oracle

__all__ = [
    "KVSource",
    "cross_branch_attention_oracle",
    "cross_branch_attention_reference",
    "validate_sources",
]
