import sys
import textwrap

import pytest

from dragsdk import hookimpl
from dragsdk.registry import Registry

from .conftest import ROOT


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


@pytest.mark.parametrize("value, expect_drag", [("drag,eager", True), ("eager", False), ("", False)])
def test_load_plugins_env_var_limits_what_loads(monkeypatch, value, expect_drag):
    monkeypatch.setenv("DRAGSDK_LOAD_PLUGINS", value)
    reg = Registry()
    reg.load_entry_points()
    assert ("drag" in reg.modes) == expect_drag


def test_every_hook_is_documented_with_its_signature():
    from dragsdk import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    for name in ("dragsdk_register_modes", "dragsdk_register_backends"):
        spec = getattr(hookspecs, name)
        import inspect

        sig = f"{name}({', '.join(inspect.signature(spec).parameters)})"
        assert sig in doc, sig
    assert textwrap.dedent("[project.entry-points.dragsdk]") in doc
