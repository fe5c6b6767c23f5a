"""Plugin hooks. A plugin is a module (or object) with ``@hookimpl`` functions, found through the
``dragsdk`` entry-point group. Hooks are called once, when the registry loads; nothing per step goes through
pluggy.

```python
from dragsdk import hookimpl

@hookimpl
def dragsdk_register_modes(register):
    register(MyMode())
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from dragsdk.backends.base import Backend
    from dragsdk.modes import EditMode

hookspec = pluggy.HookspecMarker("dragsdk")
hookimpl = pluggy.HookimplMarker("dragsdk")

__all__ = ["hookimpl", "hookspec", "dragsdk_register_modes", "dragsdk_register_backends"]


@hookspec
def dragsdk_register_modes(register: Callable[[EditMode[Any]], None]) -> None:
    """Register edit modes: call ``register(mode)`` once per :class:`dragsdk.modes.EditMode` instance.

    Args:
        register: adds one mode; a duplicate name, or a mode whose ``spec_model`` is not an ``EditSpec``
            subclass with a JSON Schema, is reported in ``Registry.failures`` and skipped (a nameless object
            raises :class:`dragsdk.errors.PluginError`).
    """


@hookspec
def dragsdk_register_backends(register: Callable[[Backend], None]) -> None:
    """Register backends: call ``register(backend)`` once per :class:`dragsdk.backends.base.Backend` instance.

    Args:
        register: adds one backend; a duplicate name is reported in ``Registry.failures`` and skipped (a
            nameless object raises :class:`dragsdk.errors.PluginError`).
    """
