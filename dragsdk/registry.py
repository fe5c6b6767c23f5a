"""The plugin registry: a pluggy manager over the ``dragsdk`` entry-point group, resolved once.

- Built-in modes and backends are entry points of this distribution, loaded like any third-party plugin.
- ``DRAGSDK_LOAD_PLUGINS=a,b`` loads only those entry-point names (empty string: none); ``DRAGSDK_BLOCK_PLUGINS``
  blocks names. A plugin that fails to import or to register is recorded in :attr:`Registry.failures` and
  skipped; it never takes the caller down.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "dragsdk"


@dataclass
class PluginFailure:
    """A plugin that could not be loaded: its entry-point name, the stage and the error text."""

    name: str
    stage: str
    error: str


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    modes: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


class Registry:
    """Modes and backends contributed by the loaded plugins."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("dragsdk")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.plugins: dict[str, PluginInfo] = {}
        self._modes: dict[str, Any] = {}
        self._backends: dict[str, Any] = {}
        self._resolved = False

    # -- loading ---------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Import every entry point of the group (honouring the environment variables) and register it."""
        only = os.environ.get("DRAGSDK_LOAD_PLUGINS")
        allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
        blocked = {n.strip() for n in os.environ.get("DRAGSDK_BLOCK_PLUGINS", "").split(",") if n.strip()}
        seen: set[str] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen or (allowed is not None and ep.name not in allowed) or ep.name in blocked:
                continue
            seen.add(ep.name)
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin is reported, never fatal
                self.failures.append(PluginFailure(ep.name, "import", f"{type(e).__name__}: {e}"))
                continue
            dist = getattr(ep, "dist", None)
            self.register_plugin(
                obj, ep.name, distribution=dist.name if dist else None, version=dist.version if dist else None
            )

    def register_plugin(self, obj: Any, name: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` methods) under ``name``."""
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except Exception as e:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self.failures.append(PluginFailure(name, "register", f"{type(e).__name__}: {e}"))
            return
        module = getattr(obj, "__name__", type(obj).__module__)
        self.plugins[name] = PluginInfo(name, module, distribution, version)
        self._resolved = False

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name`` (test helpers use this in ``finally``)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.plugins.pop(name, None)
        self._resolved = False

    # -- resolution --------------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Call every registration hook (once; again after a plugin is added or removed)."""
        if self._resolved:
            return
        self._modes, self._backends = {}, {}
        for plugin_name, info in self.plugins.items():
            info.modes, info.backends = [], []
            plugin = self.pm.get_plugin(plugin_name)
            for hook, table, kind in (
                ("dragsdk_register_modes", self._modes, "modes"),
                ("dragsdk_register_backends", self._backends, "backends"),
            ):
                impl = getattr(plugin, hook, None)
                if impl is None:
                    continue

                def register(obj: Any, _table: dict = table, _info: PluginInfo = info, _kind: str = kind) -> None:
                    name = getattr(obj, "name", None)
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"a registered {_kind[:-1]} needs a non-empty str 'name', got {obj!r}")
                    if name in _table:
                        raise PluginError(f"{_kind[:-1]} {name!r} is registered twice")
                    _table[name] = obj
                    getattr(_info, _kind).append(name)

                try:
                    impl(register=register)
                except Exception as e:
                    self.failures.append(
                        PluginFailure(plugin_name, hook, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
                    )
        self._resolved = True

    @property
    def modes(self) -> dict[str, Any]:
        """Edit modes by name."""
        self.resolve()
        return dict(self._modes)

    @property
    def backends(self) -> dict[str, Any]:
        """Backends by name."""
        self.resolve()
        return dict(self._backends)

    def spec_models(self) -> dict[str, type]:
        """The spec model of every mode, by mode name."""
        return {name: mode.spec_model for name, mode in self.modes.items()}


_default: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loading entry points on first use."""
    global _default
    if _default is None or reload:
        reg = Registry()
        reg.load_entry_points()
        _default = reg
    return _default
