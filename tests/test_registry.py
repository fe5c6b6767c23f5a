import json
import sys
import textwrap

import pytest

from dragsdk import hookimpl
from dragsdk.registry import Registry

from .conftest import ROOT

BUILTIN_MODES = ("drag", "region-drag", "move", "resize", "appearance", "paste", "dragdiffusion")


@pytest.mark.slow
def test_builtins_register_through_their_entry_points():
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes and "eager" in reg.backends
    assert reg.plugins["drag"].modes == ["drag"] and reg.plugins["eager"].backends == ["eager"]
    assert reg.plugins["drag"].distribution == "dragsdk"


def test_inline_plugin_registers_and_unregisters():
    from dragsdk.plugins.drag import DragMode

    class Renamed(DragMode):
        name = "drag-inline"

    class Plugin:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(Renamed())

    reg = Registry()
    reg.register_plugin(Plugin(), "inline")
    try:
        assert "drag-inline" in reg.modes
    finally:
        reg.unregister_plugin("inline")
    assert "drag-inline" not in reg.modes


def _fake_distribution(site, name, entry_points):
    dist = site / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[dragsdk]\n{lines}\n")


def test_example_plugin_package_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """The example package in examples/ declares the entry point; an installed copy of its metadata finds it."""
    import tomllib

    example = ROOT / "examples" / "dragsdk-example-plugin"
    eps = tomllib.loads((example / "pyproject.toml").read_text())["project"]["entry-points"]["dragsdk"]
    _fake_distribution(tmp_path, "dragsdk-example-plugin", eps)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(example))
    reg = Registry()
    reg.load_entry_points()
    try:
        assert "copy-rect" in reg.modes, reg.failures
        assert reg.plugins["copy-rect"].distribution == "dragsdk-example-plugin"
        assert reg.modes["copy-rect"].spec_model.model_json_schema()["properties"]["box"]
    finally:
        sys.modules.pop("dragsdk_example_plugin", None)


def test_a_plugin_that_fails_to_import_is_reported_not_fatal(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a package that is not installed')\n")
    _fake_distribution(tmp_path, "broken-plugin", {"broken": "broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes
    failure = next(f for f in reg.failures if f.name == "broken")
    assert failure.stage == "import" and "not installed" in failure.error


def test_a_plugin_whose_hook_raises_or_duplicates_is_reported(tmp_path):
    from dragsdk.plugins.drag import DragMode

    class Dup:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(DragMode())

    reg = Registry()
    reg.load_entry_points()
    reg.register_plugin(Dup(), "dup")
    assert "drag" in reg.modes
    assert any(f.name == "dup" and "registered twice" in f.error for f in reg.failures)


def test_misspelt_hook_is_refused_at_registration():
    class Typo:
        @hookimpl
        def dragsdk_register_mode(self, register):  # missing "s"
            pass

    reg = Registry()
    reg.register_plugin(Typo(), "typo")
    assert "typo" not in reg.plugins
    assert any(f.name == "typo" and f.stage == "register" for f in reg.failures)


@pytest.mark.parametrize("value", ["drag,eager", "eager", ""])
def test_load_plugins_env_var_selects_third_party_plugins_and_the_builtins_always_load(
    monkeypatch, tmp_path, value
):
    (tmp_path / "tp_plugin.py").write_text("")
    _fake_distribution(tmp_path, "tp-plugin", {"tp": "tp_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DRAGSDK_LOAD_PLUGINS", value)
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes and "eager" in reg.backends
    assert "tp" not in reg.plugins


def test_block_plugins_blocks_a_builtin_by_name(monkeypatch):
    monkeypatch.setenv("DRAGSDK_BLOCK_PLUGINS", "drag")
    reg = Registry()
    reg.load_entry_points()
    assert "drag" not in reg.modes and "move" in reg.modes


def test_every_hook_is_documented_with_its_signature():
    from dragsdk import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    for name in ("dragsdk_register_modes", "dragsdk_register_backends"):
        spec = getattr(hookspecs, name)
        import inspect

        sig = f"{name}({', '.join(inspect.signature(spec).parameters)})"
        assert sig in doc, sig
    assert textwrap.dedent("[project.entry-points.dragsdk]") in doc


# -- issue 12, item 6: plugins cannot take the process down or hijack built-ins --------------------------------


class _Boom(BaseException):
    """Not an Exception: what a careless plugin may raise."""


@pytest.mark.parametrize(
    "raise_line",
    ["raise SystemExit(3)", "import sys; sys.exit('bye')", "raise tests.test_registry._Boom('x')"],
)
def test_a_plugin_raising_any_base_exception_at_import_is_reported_not_fatal(
    tmp_path, monkeypatch, raise_line
):
    (tmp_path / "exiting_plugin.py").write_text(f"import tests.test_registry\n{raise_line}\n")
    _fake_distribution(tmp_path, "exiting-plugin", {"exiting": "exiting_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes and "eager" in reg.backends
    failure = next(f for f in reg.failures if f.name == "exiting")
    assert failure.stage == "import" and failure.distribution == "exiting-plugin"
    assert failure.error.split(":")[0] in ("SystemExit", "_Boom")


def test_keyboard_interrupt_raised_by_a_plugins_import_is_that_plugins_failure(tmp_path, monkeypatch):
    (tmp_path / "ctrl_c_plugin.py").write_text("raise KeyboardInterrupt\n")
    _fake_distribution(tmp_path, "ctrl-c-plugin", {"ctrl-c": "ctrl_c_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.load_entry_points()
    assert any(
        f.name == "ctrl-c" and f.stage == "import" and "KeyboardInterrupt" in f.error for f in reg.failures
    )
    assert "drag" in reg.modes


def test_third_party_plugins_are_not_imported_for_a_builtin_lookup(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "slow_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _fake_distribution(tmp_path, "slow-plugin", {"slow": "slow_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.discover()
    assert "drag" in reg.modes and reg.modes["move"] is not None and "eager" in reg.backends
    assert not marker.exists()
    assert "nope" not in reg.modes  # a name the built-ins lack: the third-party plugins load
    assert marker.exists()


def test_a_second_dragsdk_distribution_cannot_hide_the_builtins(tmp_path, monkeypatch):
    (tmp_path / "impostor_mod.py").write_text("")
    _fake_distribution(tmp_path, "dragsdk", {"drag": "impostor_mod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.load_entry_points()
    assert sorted(m for m in reg.modes if m in BUILTIN_MODES) == sorted(BUILTIN_MODES)
    assert type(reg.modes["drag"]).__module__ == "dragsdk.plugins.drag"
    assert any(f.stage == "impostor" and "impostor_mod" in f.error for f in reg.failures)


def test_the_builtin_table_matches_pyproject():
    import tomllib

    from dragsdk.registry import BUILTIN_PLUGINS

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["dragsdk"]
    assert declared == BUILTIN_PLUGINS


@pytest.mark.parametrize("exc", [SystemExit(1), _Boom("hook")])
def test_a_hook_raising_any_base_exception_is_reported_and_the_rest_works(exc):
    from dragsdk.plugins.drag import DragMode

    class Renamed(DragMode):
        name = "drag-before-exit"

    class Exiting:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(Renamed())
            raise exc

    reg = Registry()
    reg.load_entry_points()
    reg.register_plugin(Exiting(), "exiting")
    assert {"drag", "move", "drag-before-exit"} <= set(reg.modes)
    assert any(f.name == "exiting" and f.stage == "dragsdk_register_modes" for f in reg.failures)
    reg.resolve()  # resolving again does not report the failure twice
    assert sum(f.name == "exiting" for f in reg.failures) == 1


class _Hijack:
    """A third-party plugin registering a mode and a backend under built-in names."""

    @hookimpl
    def dragsdk_register_modes(self, register):
        from dragsdk.plugins.drag import DragMode

        class FakeDrag(DragMode):
            description = "not the real drag"

        register(FakeDrag())

    @hookimpl
    def dragsdk_register_backends(self, register):
        from dragsdk.backends.eager import EagerBackend

        class FakeEager(EagerBackend):
            description = "not the real eager"

        register(FakeEager())


def test_a_third_party_plugin_cannot_replace_a_builtin_mode_or_backend(monkeypatch):
    monkeypatch.delenv("DRAGSDK_OVERRIDE", raising=False)
    reg = Registry()
    reg.register_plugin(_Hijack(), "hijack")  # registered before the built-ins load: still not first
    reg.load_entry_points()
    assert reg.modes["drag"].description != "not the real drag"
    assert reg.backends["eager"].description != "not the real eager"
    assert reg.plugins["drag"].modes == ["drag"] and reg.plugins["hijack"].modes == []
    dups = [f for f in reg.failures if f.name == "hijack"]
    assert len(dups) == 2 and all(
        "registered twice" in f.error and "DRAGSDK_OVERRIDE=" in f.error for f in dups
    )
    assert reg.overrides == []


def test_dragsdk_override_replaces_a_builtin_on_purpose_and_is_reported(monkeypatch):
    from typer.testing import CliRunner

    import dragsdk.registry as registry
    from dragsdk.cli import app as cli_app

    monkeypatch.setenv("DRAGSDK_OVERRIDE", "drag")
    reg = Registry()
    reg.load_entry_points()
    reg.register_plugin(_Hijack(), "hijack")
    assert reg.modes["drag"].description == "not the real drag"
    assert reg.backends["eager"].description != "not the real eager"  # only the names listed are replaceable
    assert [(o.kind, o.name, o.plugin, o.replaces) for o in reg.overrides] == [
        ("mode", "drag", "hijack", "drag")
    ]
    monkeypatch.setattr(registry, "_default", reg)
    res = CliRunner().invoke(cli_app, ["plugins"])
    assert res.exit_code == 0, res.output
    assert "OVERRIDE mode drag: plugin hijack replaces the built-in drag" in res.output
    data = json.loads(CliRunner().invoke(cli_app, ["plugins", "--json"]).output)
    assert data["overrides"] == [{"kind": "mode", "name": "drag", "plugin": "hijack", "replaces": "drag"}]


def test_an_entry_point_named_like_a_builtin_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DRAGSDK_OVERRIDE", raising=False)
    (tmp_path / "shadow_plugin.py").write_text("raise RuntimeError('must not even be imported')\n")
    _fake_distribution(tmp_path, "shadow-plugin", {"drag": "shadow_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))  # first on sys.path: found before dragsdk's own entry point
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes and reg.plugins["drag"].distribution == "dragsdk"
    failure = next(f for f in reg.failures if f.distribution == "shadow-plugin")
    assert (
        failure.stage == "duplicate"
        and "built-in" in failure.error
        and "DRAGSDK_OVERRIDE=drag" in failure.error
    )
    assert "shadow_plugin" not in sys.modules

    monkeypatch.setenv("DRAGSDK_OVERRIDE", "drag")  # on purpose: it loads, under its distribution's name
    reg = Registry()
    reg.load_entry_points()
    assert "drag" in reg.modes and reg.plugins["drag"].builtin
    assert any(
        f.name == "drag" and f.stage == "import" and "must not even be imported" in f.error
        for f in reg.failures
    )
    sys.modules.pop("shadow_plugin", None)


def test_a_mode_with_a_broken_spec_model_is_reported_and_every_other_mode_is_listed(monkeypatch):
    from pydantic import ConfigDict
    from typer.testing import CliRunner

    import dragsdk.registry as registry
    from dragsdk.cli import app as cli_app
    from dragsdk.plugins.drag import DragMode, DragSpec

    class Opaque:
        pass

    class NoSchemaSpec(DragSpec):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        thing: Opaque | None = None

    class NotASpec(DragMode):
        name, spec_model = "not-a-spec", dict

    class NoSchema(DragMode):
        name, spec_model = "no-schema", NoSchemaSpec

    class Fine(DragMode):
        name = "fine-mode"

    class Mixed:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(NotASpec())
            register(NoSchema())
            register(Fine())

    reg = Registry()
    reg.load_entry_points()
    reg.register_plugin(Mixed(), "mixed")
    assert "fine-mode" in reg.modes and "not-a-spec" not in reg.modes and "no-schema" not in reg.modes
    errors = " ".join(f.error for f in reg.failures if f.name == "mixed")
    assert (
        "'not-a-spec': spec_model must be a subclass" in errors and "'no-schema': the JSON Schema" in errors
    )
    monkeypatch.setattr(registry, "_default", reg)
    res = CliRunner().invoke(cli_app, ["modes"])
    assert res.exit_code == 0, res.output
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    assert {"drag", "region-drag", "move", "resize", "appearance", "paste", "fine-mode"} <= listed
    assert "FAILED mixed" in res.output and "not-a-spec" in res.output
    res = CliRunner().invoke(cli_app, ["modes", "--json"])
    assert res.exit_code == 0 and "fine-mode" in {m["name"] for m in json.loads(res.stdout)}
