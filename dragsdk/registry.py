"""The plugin registry: a pluggy manager over the ``dragsdk`` entry-point group, resolved once.

- Built-in modes and backends are entry points of this distribution, loaded like any third-party plugin, but
  always first: a third-party plugin (or entry point) of the same name never replaces or hides one of them; it is
  the one reported as the duplicate. ``DRAGSDK_OVERRIDE=drag,eager`` lets a third-party plugin replace those
  built-in names on purpose; every override is listed in :attr:`Registry.overrides` (and by ``dragsdk plugins``).
- ``DRAGSDK_LOAD_PLUGINS=a,b`` loads only those third-party entry-point names (empty string: none; the built-ins
  always load); ``DRAGSDK_BLOCK_PLUGINS`` blocks names, built-in ones included.
- A plugin whose import, registration or hook raises *anything* (``SystemExit``, ``KeyboardInterrupt`` raised by
  its import, any other ``BaseException``) is recorded in :attr:`Registry.failures` and skipped: a plugin never
  ends the process that loads it. ``KeyboardInterrupt`` from a registration hook propagates (the user stopping a
  running command).
- Built-ins are imported from dragsdk's own modules (:data:`BUILTIN_PLUGINS`), not found through entry-point
  metadata: a second distribution called ``dragsdk`` earlier on ``sys.path`` (a stale copy, an impostor) cannot
  hide them, and its entry points are reported as failures, not loaded.
- Third-party plugins are imported lazily (:func:`get_registry`): looking up a built-in mode or backend by name
  imports none of them; they load on the first lookup of another name, a listing (iterating
  :attr:`Registry.modes` / :attr:`Registry.backends`, ``dragsdk modes``, backend ``auto``), or :attr:`Registry.plugins`
  / :attr:`Registry.failures`. A plugin that hangs or calls ``os._exit`` at import can only be kept out by name:
  ``DRAGSDK_BLOCK_PLUGINS=name`` or ``DRAGSDK_LOAD_PLUGINS=`` (empty: no third-party plugin at all).
- A registered mode must have a ``spec_model`` subclassing :class:`~dragsdk.spec.EditSpec` whose JSON Schema can
  be generated; one that has not is reported and left out, and every other mode stays usable.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:
    from dragsdk.backends.base import Backend

    from .modes import EditMode
    from .spec import EditSpec


def _normalize(name: str) -> str:
    """A distribution name in the form ``importlib.metadata`` compares (PEP 503 normalization, ``-`` as ``_``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


ENTRY_POINT_GROUP = "dragsdk"
BUILTIN_DISTRIBUTION = "dragsdk"
"""Entry points of this distribution whose module is inside ``dragsdk`` are the built-in plugins."""

BUILTIN_PLUGINS = {
    "drag": "dragsdk.plugins.drag",
    "region-drag": "dragsdk.plugins.region_drag",
    "move": "dragsdk.plugins.move",
    "appearance": "dragsdk.plugins.appearance",
    "paste": "dragsdk.plugins.paste",
    "dragdiffusion": "dragsdk.plugins.dragdiffusion",
    "eager": "dragsdk.backends.eager",
    "compile": "dragsdk.backends.compile",
    "triton": "dragsdk.backends.triton",
    "xformers": "dragsdk.backends.xformers",
    "onnx": "dragsdk.backends.onnx",
}
"""The built-in plugins: entry-point name → module (the same as pyproject.toml's ``[project.entry-points.dragsdk]``,
which tests/test_registry.py keeps equal)."""

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
    return (
        dist is not None
        and _normalize(dist.name) == BUILTIN_DISTRIBUTION
        and ep.value.split(":")[0].startswith("dragsdk.")
    )


def check_mode(mode: Any) -> None:
    """Check what the registry needs of a mode: a ``spec_model`` subclassing ``EditSpec`` with a JSON Schema, a
    callable ``plan``, ``unsupported_settings`` naming only fields of its sampler settings, and a ``ui`` (if any)
    naming only fields of its spec.

    Raises:
        PluginError: naming the mode and what is wrong.
    """
    from .spec import EditSpec

    name = getattr(mode, "name", "?")
    model = getattr(mode, "spec_model", None)
    if not (isinstance(model, type) and issubclass(model, EditSpec)):
        raise PluginError(
            f"mode {name!r}: spec_model must be a subclass of dragsdk.spec.EditSpec, got {model!r}"
        )
    try:
        model.model_json_schema()
    except Exception as e:
        raise PluginError(
            f"mode {name!r}: the JSON Schema of its spec_model cannot be generated ({type(e).__name__}: {e})"
        ) from e
    if not callable(getattr(mode, "plan", None)):
        raise PluginError(f"mode {name!r} has no callable plan(spec, ctx)")
    sampler_fields = model.model_fields["sampler"].annotation.model_fields  # type: ignore[union-attr]
    unknown = sorted(set(getattr(mode, "unsupported_settings", ())) - set(sampler_fields))
    if unknown:
        raise PluginError(
            f"mode {name!r}: unsupported_settings {unknown} are not sampler settings; expected some "
            f"of {sorted(sampler_fields)}"
        )
    ui = getattr(mode, "ui", None)
    if ui is not None:
        from .modes import ModeUI

        if not isinstance(ui, ModeUI):
            raise PluginError(f"mode {name!r}: ui must be a dragsdk.authoring.ModeUI or None, got {ui!r}")
        unknown = sorted(set(ui.field_names()) - set(model.model_fields))
        if unknown:
            raise PluginError(f"mode {name!r}: its ui names {unknown}, which are not fields of its spec")


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
        self._failures: list[PluginFailure] = []
        self.overrides: list[Override] = []
        self._plugins: dict[str, PluginInfo] = {}
        self._pending: list[tuple[md.EntryPoint, str, str | None]] = []  # third-party, not yet imported
        self._hook_failures: list[PluginFailure] = []
        self._modes: dict[str, EditMode[Any]] = {}
        self._backends: dict[str, Backend] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._resolved = False
        self._lock = threading.RLock()  # resolution runs once, whole, even when threads ask at the same time

    # -- loading ---------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load the built-ins and import every third-party entry point of the group now (:meth:`discover`, then
        :meth:`load_third_party`)."""
        self.discover()
        self.load_third_party()

    def _load_builtins(self, blocked: set[str]) -> None:
        from importlib import import_module

        version = None
        with contextlib.suppress(md.PackageNotFoundError):  # run from a checkout without an install
            version = md.version(BUILTIN_DISTRIBUTION)
        for name, module in BUILTIN_PLUGINS.items():
            if name in blocked:  # DRAGSDK_LOAD_PLUGINS selects third-party plugins only
                continue
            try:
                obj = import_module(module)
            except KeyboardInterrupt:
                self._failures.append(
                    PluginFailure(
                        name, "import", "KeyboardInterrupt raised while importing", BUILTIN_DISTRIBUTION
                    )
                )
                continue
            except BaseException as e:  # an optional dependency broken at import: reported like any plugin
                self._failures.append(PluginFailure(name, "import", _error_text(e), BUILTIN_DISTRIBUTION))
                continue
            self.register_plugin(obj, name, distribution=BUILTIN_DISTRIBUTION, version=version, builtin=True)

    def discover(self) -> None:
        """Register the built-ins (imported from :data:`BUILTIN_PLUGINS`) and find the third-party entry points
        without importing them (honouring the environment variables); :meth:`load_third_party` imports them.

        An entry point with a name already taken is reported (stage ``duplicate``) and not loaded, unless it would
        take a built-in's name listed in ``DRAGSDK_OVERRIDE``: then it loads as ``DISTRIBUTION:NAME`` and what it
        registers replaces the built-in's. Entry points of a distribution called ``dragsdk`` are dragsdk's own
        declarations of the built-ins and are skipped; one naming anything else comes from a second distribution
        of that name and is reported (stage ``impostor``), never loaded.
        """
        only = os.environ.get("DRAGSDK_LOAD_PLUGINS")
        allowed = None if only is None else _names("DRAGSDK_LOAD_PLUGINS")
        blocked = _names("DRAGSDK_BLOCK_PLUGINS")
        override = _names(OVERRIDE_ENV)
        self._load_builtins(blocked)
        self._report_second_dragsdk()
        taken: dict[str, tuple[bool, str | None]] = {
            name: (True, BUILTIN_DISTRIBUTION) for name in BUILTIN_PLUGINS
        }
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if (allowed is not None and ep.name not in allowed) or ep.name in blocked:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else None
            if dist_name is not None and _normalize(dist_name) == BUILTIN_DISTRIBUTION:
                if BUILTIN_PLUGINS.get(ep.name) != ep.value.split(":")[0]:
                    where = getattr(dist, "_path", None) or "?"
                    self._failures.append(
                        PluginFailure(
                            ep.name,
                            "impostor",
                            f"entry point {ep.name!r} ({ep.value}) of a distribution called "
                            f"dragsdk at {where} is not a dragsdk built-in: a second dragsdk distribution is on sys.path "
                            "(a stale copy or an impostor); ignored",
                            dist_name,
                        )
                    )
                continue
            builtin = False
            key = ep.name
            if ep.name in taken:
                holder_builtin, holder_dist = taken[ep.name]
                if not (holder_builtin and ep.name in override):
                    holder = "the built-in plugin" if holder_builtin else f"the plugin of {holder_dist}"
                    why = (
                        f"set {OVERRIDE_ENV}={ep.name} to load it"
                        if holder_builtin
                        else "rename one of the two entry points"
                    )
                    self.failures.append(
                        PluginFailure(
                            ep.name,
                            "duplicate",
                            f"entry point {ep.name!r} ({ep.value}) of {dist_name} has the name of {holder}; ignored ({why})",
                            dist_name,
                        )
                    )
                    continue
                key = f"{dist_name}:{ep.name}"
            taken.setdefault(ep.name, (builtin, dist_name))
            self._pending.append((ep, key, dist_name))

    def _report_second_dragsdk(self) -> None:
        """Report every distribution called dragsdk on ``sys.path`` beyond the first (whose metadata is used)."""
        seen = [d for d in md.distributions() if _normalize(d.metadata["Name"] or "") == BUILTIN_DISTRIBUTION]
        if len(seen) > 1:
            places = ", ".join(f"{d.version} at {getattr(d, '_path', '?')}" for d in seen)
            self._failures.append(
                PluginFailure(
                    BUILTIN_DISTRIBUTION,
                    "impostor",
                    f"{len(seen)} distributions called dragsdk are on sys.path ({places}); "
                    "the built-ins come from the imported dragsdk package, the others' entry points are ignored",
                    BUILTIN_DISTRIBUTION,
                )
            )

    @property
    def third_party_pending(self) -> bool:
        """Whether third-party entry points were found and not imported yet."""
        return bool(self._pending)

    def load_third_party(self) -> None:
        """Import the third-party entry points found by :meth:`discover` (once) and register them."""
        with self._lock:
            pending, self._pending = self._pending, []
            for ep, key, dist_name in pending:
                dist = getattr(ep, "dist", None)
                try:
                    obj = ep.load()
                except KeyboardInterrupt:  # raised by the plugin's import itself: its failure, not the user's
                    self._failures.append(
                        PluginFailure(
                            ep.name, "import", "KeyboardInterrupt raised while importing", dist_name
                        )
                    )
                    continue
                except BaseException as e:  # a broken plugin is reported, never fatal (SystemExit included)
                    self._failures.append(PluginFailure(ep.name, "import", _error_text(e), dist_name))
                    continue
                self.register_plugin(obj, key, distribution=dist_name, version=dist.version if dist else None)

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins (or single modes / backends) that could not be loaded, with the reason (imports pending
        third-party plugins first)."""
        self.load_third_party()
        self.resolve()
        return self._failures

    @property
    def plugins(self) -> dict[str, PluginInfo]:
        """The loaded plugins by name (imports pending third-party plugins first)."""
        self.load_third_party()
        self.resolve()
        return self._plugins

    def register_plugin(
        self,
        obj: Any,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> None:
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
            self._failures.append(PluginFailure(name, "register", _error_text(e), distribution))
            return
        module = getattr(obj, "__name__", type(obj).__module__)
        self._plugins[name] = PluginInfo(name, module, distribution, version, builtin=builtin)
        self._resolved = False

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name`` (test helpers use this in ``finally``)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._plugins.pop(name, None)
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
        self._failures = [f for f in self._failures if f not in self._hook_failures]
        self._hook_failures, self.overrides = [], []
        modes: dict[str, EditMode[Any]] = {}
        backends: dict[str, Backend] = {}
        self._owners = {}
        override = _names(OVERRIDE_ENV)
        for info in self._plugins.values():
            info.modes, info.backends = [], []
        for hook, table, kind in (
            ("dragsdk_register_modes", modes, "mode"),
            ("dragsdk_register_backends", backends, "backend"),
        ):
            for impl in self._hook_impls(hook):
                info = self._plugins[impl.plugin_name]
                register = self._register_fn(impl.plugin_name, info, hook, table, kind, override)
                try:
                    impl.function(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as e:  # SystemExit included: a plugin never ends the process
                    self._fail(
                        PluginFailure(
                            impl.plugin_name, hook, _error_text(e, with_trace=True), info.distribution
                        )
                    )
        self._modes, self._backends = modes, backends
        self._resolved = True

    def _hook_impls(self, hook: str) -> list[Any]:
        """The implementations of ``hook`` as pluggy orders them (``tryfirst`` / ``trylast``, then the latest
        registered first; ``specname`` lets a function of another name implement it), built-ins before the others
        (a built-in's names are taken first, so a plugin can replace one only through ``DRAGSDK_OVERRIDE``)."""
        caller = getattr(self.pm.hook, hook)
        in_call_order = list(reversed(caller.get_hookimpls()))
        known = [impl for impl in in_call_order if impl.plugin_name in self._plugins]
        return sorted(known, key=lambda impl: not self._plugins[impl.plugin_name].builtin)

    def _fail(self, failure: PluginFailure) -> None:
        self._hook_failures.append(failure)
        self._failures.append(failure)

    def _register_fn(
        self,
        plugin_name: str,
        info: PluginInfo,
        hook: str,
        table: dict[str, Any],
        kind: str,
        override: set[str],
    ) -> Callable[[Any], None]:
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
                owner_info = self._plugins[owner]
                if not (owner_info.builtin and not info.builtin and name in override):
                    how = (
                        f"set {OVERRIDE_ENV}={name} to replace it"
                        if owner_info.builtin and not info.builtin
                        else "rename one of them"
                    )
                    self._fail(
                        PluginFailure(
                            plugin_name,
                            hook,
                            f"{kind} {name!r} is registered twice: plugin {owner!r} "
                            f"({'built-in' if owner_info.builtin else owner_info.distribution}) has it; ignored ({how})",
                            info.distribution,
                        )
                    )
                    return
                getattr(owner_info, f"{kind}s").remove(name)
                self.overrides.append(Override(kind, name, plugin_name, owner))
            table[name] = obj
            self._owners[(kind, name)] = plugin_name
            getattr(info, f"{kind}s").append(name)

        return register

    def _table(self, kind: str, complete: bool) -> dict[str, Any]:
        if complete and self._pending:
            self.load_third_party()
        self.resolve()
        return self._modes if kind == "mode" else self._backends

    @property
    def modes(self) -> Mapping[str, EditMode[Any]]:
        """Edit modes by name: a read-only mapping that imports third-party plugins only when a name it does not
        have yet is looked up, or when it is iterated (a listing)."""
        return _LazyTable(self, "mode")

    @property
    def backends(self) -> Mapping[str, Backend]:
        """Backends by name (read-only, lazy as :attr:`modes`)."""
        return _LazyTable(self, "backend")

    def spec_models(self) -> Mapping[str, type[EditSpec]]:
        """The spec model of every mode, by mode name (read-only, lazy as :attr:`modes`)."""
        return _LazyTable(self, "mode", lambda mode: mode.spec_model)


class _LazyTable(Mapping[str, Any]):
    """A registry table that imports third-party plugins only when it must (:class:`Registry`)."""

    def __init__(self, registry: Registry, kind: str, get: Callable[[Any], Any] = lambda obj: obj) -> None:
        self._registry, self._kind, self._get = registry, kind, get

    def __getitem__(self, name: str) -> Any:
        table = self._registry._table(self._kind, complete=False)
        if name not in table and self._registry.third_party_pending:
            table = self._registry._table(self._kind, complete=True)
        return self._get(table[name])

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._registry._table(self._kind, complete=True)))

    def __len__(self) -> int:
        return len(self._registry._table(self._kind, complete=True))


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
        reg.discover()  # built-ins now; third-party plugins on first need (module text)
        _default = reg
    return _default
