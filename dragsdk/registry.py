"""The plugin registry: a pluggy manager over the ``dragsdk`` entry-point group, resolved once.

- Built-in modes and backends are entry points of this distribution, loaded like any third-party plugin, but
  always first: a third-party plugin (or entry point) of the same name never replaces or hides one of them; it is
  the one reported as the duplicate. ``DRAGSDK_OVERRIDE=drag,eager`` lets a third-party plugin replace those
  built-in names on purpose; every override is listed in :attr:`Registry.overrides` (and by ``dragsdk plugins``).
- ``DRAGSDK_LOAD_PLUGINS=a,b`` loads only those entry-point names (empty string: none); ``DRAGSDK_BLOCK_PLUGINS``
  blocks names.
- A plugin whose import, registration or hook raises *anything* (``SystemExit`` and any other ``BaseException``
  included) is recorded in :attr:`Registry.failures` and skipped: a plugin never ends the process that loads it.
  ``KeyboardInterrupt`` alone propagates, because it is the user stopping the process, not the plugin failing.
- A registered mode must have a ``spec_model`` subclassing :class:`~dragsdk.spec.EditSpec` whose JSON Schema can
  be generated; one that has not is reported and left out, and every other mode stays usable.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "dragsdk"
BUILTIN_DISTRIBUTION = "dragsdk"
"""Entry points of this distribution whose module is inside ``dragsdk`` are the built-in plugins."""

OVERRIDE_ENV = "DRAGSDK_OVERRIDE"
"""Comma-separated mode / backend (and entry-point) names a third-party plugin may take over from a built-in."""


@dataclass
class PluginFailure:
    """A plugin, or one thing it registered, that could not be loaded.

    Attributes:
        name: the entry-point (or plugin) name.
        stage: ``import``, ``register``, ``duplicate`` (an entry-point name already taken), or the hook name.
        error: the error text (exception type, message, and for a hook the last frames).
        distribution: the distribution that declared the entry point, when known.
    """

    name: str
    stage: str
    error: str
    distribution: str | None = None


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    modes: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    builtin: bool = False


@dataclass
class Override:
    """A built-in mode or backend replaced on purpose (its name is in ``DRAGSDK_OVERRIDE``)."""

    kind: str
    name: str
    plugin: str
    replaces: str


def _error_text(e: BaseException, with_trace: bool = False) -> str:
    text = f"{type(e).__name__}: {e}"
    return f"{text}\n{traceback.format_exc(limit=3)}" if with_trace else text


def _names(variable: str) -> set[str]:
    return {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}


def _is_builtin(ep: md.EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return (dist is not None and md.Prepared.normalize(dist.name) == BUILTIN_DISTRIBUTION
            and ep.value.split(":")[0].startswith("dragsdk."))


def check_mode(mode: Any) -> None:
    """Check what the registry needs of a mode: a ``spec_model`` subclassing ``EditSpec`` with a JSON Schema, a
    callable ``plan``, and ``unsupported_settings`` naming only fields of its sampler settings.

    Raises:
        PluginError: naming the mode and what is wrong.
    """
    from .spec import EditSpec

    name = getattr(mode, "name", "?")
    model = getattr(mode, "spec_model", None)
    if not (isinstance(model, type) and issubclass(model, EditSpec)):
        raise PluginError(f"mode {name!r}: spec_model must be a subclass of dragsdk.spec.EditSpec, got {model!r}")
    try:
        model.model_json_schema()
    except Exception as e:
        raise PluginError(f"mode {name!r}: the JSON Schema of its spec_model cannot be generated "
                          f"({type(e).__name__}: {e})") from e
    if not callable(getattr(mode, "plan", None)):
        raise PluginError(f"mode {name!r} has no callable plan(spec, ctx)")
    sampler_fields = model.model_fields["sampler"].annotation.model_fields  # type: ignore[union-attr]
    unknown = sorted(set(getattr(mode, "unsupported_settings", ())) - set(sampler_fields))
    if unknown:
        raise PluginError(f"mode {name!r}: unsupported_settings {unknown} are not sampler settings; expected some "
                          f"of {sorted(sampler_fields)}")


class Registry:
    """Modes and backends contributed by the loaded plugins.

    Attributes:
        failures: plugins (or single modes / backends) that could not be loaded, with the reason.
        overrides: built-in modes / backends replaced on purpose (``DRAGSDK_OVERRIDE``).
        plugins: the loaded plugins by name.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("dragsdk")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.overrides: list[Override] = []
        self.plugins: dict[str, PluginInfo] = {}
        self._hook_failures: list[PluginFailure] = []
        self._modes: dict[str, Any] = {}
        self._backends: dict[str, Any] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._resolved = False
        self._lock = threading.RLock()  # resolution runs once, whole, even when threads ask at the same time

    # -- loading ---------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Import every entry point of the group (honouring the environment variables) and register it.

        Built-in entry points load first; a later entry point with a name already taken is reported (stage
        ``duplicate``) and not loaded, unless it would take a built-in's name listed in ``DRAGSDK_OVERRIDE``: then
        it loads as ``DISTRIBUTION:NAME`` and what it registers replaces the built-in's.
        """
        only = os.environ.get("DRAGSDK_LOAD_PLUGINS")
        allowed = None if only is None else _names("DRAGSDK_LOAD_PLUGINS")
        blocked = _names("DRAGSDK_BLOCK_PLUGINS")
        override = _names(OVERRIDE_ENV)
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not _is_builtin(ep))
        taken: dict[str, tuple[bool, str | None]] = {}
        for ep in eps:
            if (allowed is not None and ep.name not in allowed) or ep.name in blocked:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else None
            builtin = _is_builtin(ep)
            key = ep.name
            if ep.name in taken:
                holder_builtin, holder_dist = taken[ep.name]
                if not (holder_builtin and ep.name in override):
                    holder = "the built-in plugin" if holder_builtin else f"the plugin of {holder_dist}"
                    why = (f"set {OVERRIDE_ENV}={ep.name} to load it" if holder_builtin
                           else "rename one of the two entry points")
                    self.failures.append(PluginFailure(
                        ep.name, "duplicate",
                        f"entry point {ep.name!r} ({ep.value}) of {dist_name} has the name of {holder}; ignored ({why})",
                        dist_name))
                    continue
                key = f"{dist_name}:{ep.name}"
            taken.setdefault(ep.name, (builtin, dist_name))
            try:
                obj = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # a broken plugin is reported, never fatal (SystemExit included)
                self.failures.append(PluginFailure(ep.name, "import", _error_text(e), dist_name))
                continue
            self.register_plugin(obj, key, distribution=dist_name, version=dist.version if dist else None,
                                 builtin=builtin)

    def register_plugin(self, obj: Any, name: str, distribution: str | None = None, version: str | None = None,
                        builtin: bool = False) -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` methods) under ``name``.

        ``builtin`` marks one of dragsdk's own plugins (set by :meth:`load_entry_points`); what a plugin without it
        registers never replaces a built-in mode or backend unless ``DRAGSDK_OVERRIDE`` names it.
        """
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self.failures.append(PluginFailure(name, "register", _error_text(e), distribution))
            return
        module = getattr(obj, "__name__", type(obj).__module__)
        self.plugins[name] = PluginInfo(name, module, distribution, version, builtin=builtin)
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
        """Call every registration hook (once; again after a plugin is added or removed), built-ins first.

        Thread-safe: one thread resolves under the registry's lock while others wait; the mode and backend
        tables are swapped in only when complete, so no reader sees a half-filled table."""
        if self._resolved:
            return
        with self._lock:
            if not self._resolved:
                self._resolve_locked()

    def _resolve_locked(self) -> None:
        self.failures = [f for f in self.failures if f not in self._hook_failures]
        self._hook_failures, self.overrides = [], []
        modes: dict[str, Any] = {}
        backends: dict[str, Any] = {}
        self._owners = {}
        override = _names(OVERRIDE_ENV)
        order = sorted(self.plugins.items(), key=lambda item: not item[1].builtin)
        for _, info in order:
            info.modes, info.backends = [], []
        for plugin_name, info in order:
            plugin = self.pm.get_plugin(plugin_name)
            for hook, table, kind in (
                ("dragsdk_register_modes", modes, "mode"),
                ("dragsdk_register_backends", backends, "backend"),
            ):
                impl = getattr(plugin, hook, None)
                if impl is None:
                    continue
                register = self._register_fn(plugin_name, info, hook, table, kind, override)
                try:
                    impl(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as e:  # SystemExit included: a plugin never ends the process
                    self._fail(PluginFailure(plugin_name, hook, _error_text(e, with_trace=True), info.distribution))
        self._modes, self._backends = modes, backends
        self._resolved = True

    def _fail(self, failure: PluginFailure) -> None:
        self._hook_failures.append(failure)
        self.failures.append(failure)

    def _register_fn(self, plugin_name: str, info: PluginInfo, hook: str, table: dict[str, Any], kind: str,
                     override: set[str]) -> Callable[[Any], None]:
        """The ``register`` callable handed to one plugin's hook: checks, then adds one mode or backend."""

        def register(obj: Any) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"a registered {kind} needs a non-empty str 'name', got {obj!r}")
            if kind == "mode":
                try:
                    check_mode(obj)
                except PluginError as e:
                    self._fail(PluginFailure(plugin_name, hook, str(e), info.distribution))
                    return
            owner = self._owners.get((kind, name))
            if owner is not None:
                owner_info = self.plugins[owner]
                if not (owner_info.builtin and not info.builtin and name in override):
                    how = (f"set {OVERRIDE_ENV}={name} to replace it" if owner_info.builtin and not info.builtin
                           else "rename one of them")
                    self._fail(PluginFailure(
                        plugin_name, hook, f"{kind} {name!r} is registered twice: plugin {owner!r} "
                        f"({'built-in' if owner_info.builtin else owner_info.distribution}) has it; ignored ({how})",
                        info.distribution))
                    return
                getattr(owner_info, f"{kind}s").remove(name)
                self.overrides.append(Override(kind, name, plugin_name, owner))
            table[name] = obj
            self._owners[(kind, name)] = plugin_name
            getattr(info, f"{kind}s").append(name)

        return register

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
    """The process-wide registry, loading entry points on first use (thread-safe)."""
    with _default_lock:
        return _get_registry(reload)


_default_lock = threading.Lock()


def _get_registry(reload: bool) -> Registry:
    global _default
    if _default is None or reload:
        reg = Registry()
        reg.load_entry_points()
        _default = reg
    return _default
