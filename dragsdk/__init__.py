"""dragsdk: drag-style editing of real images with pretrained diffusion models.

```python
from dragsdk import Editor, DragSpec
editor = Editor.from_pretrained("tiny")
result = editor.edit("photo.png", DragSpec(points=[((120, 80), (160, 80))], prompt="a cat"))
```

Heavy modules (torch models, diffusers) load on first use of :class:`Editor`, so ``import dragsdk`` and the
plugin registry stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    DeviceUnavailableError,
    DragSDKError,
    EditCancelled,
    HostAttentionError,
    ModelNotFoundError,
    NonFiniteError,
    SpecError,
    UnsafePickleError,
)
from .hookspecs import hookimpl

__version__ = "0.1.0"
"""The installed dragsdk version (PEP 440)."""

_LAZY = {
    "Editor": "dragsdk.editor",
    "EditResult": "dragsdk.result",
    "DragSpec": "dragsdk.plugins.drag",
    "EditSpec": "dragsdk.spec",
    "PointPair": "dragsdk.spec",
    "SamplerSettings": "dragsdk.spec",
    "StepEvent": "dragsdk.progress",
    "DryRun": "dragsdk.dryrun",
    "Inversion": "dragsdk.inversion",
}

__all__ = [
    "ArgumentTypeError",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "DragSDKError",
    "EditCancelled",
    "HostAttentionError",
    "ModelNotFoundError",
    "NonFiniteError",
    "SpecError",
    "UnsafePickleError",
    "hookimpl",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dragsdk' has no attribute {name!r}")
