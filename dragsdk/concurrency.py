"""One lock per UNet, so edits that share a model run their model-using part one at a time.

An edit installs its own attention processors on the UNet, hooks its decoder blocks for features and drives a
per-step controller; none of that can be shared by two edits at once. Every :class:`~dragsdk.editor.Editor`
holding the same UNet object (one Editor used from many threads, or several Editors built on one
:class:`~dragsdk.models.ModelBundle`, or on bundles wrapping the same UNet) takes the same lock, so concurrent calls
give exactly the results they give one after another. The lock is re-entrant: a callback running inside an edit may
call :meth:`~dragsdk.editor.Editor.suggest_mask` on the same model.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock of ``model.unet`` (created on first use, freed with the UNet)."""
    unet = model.unet
    with _GUARD:
        lock = _LOCKS.get(unet)
        if lock is None:
            lock = _LOCKS[unet] = threading.RLock()
        return lock
