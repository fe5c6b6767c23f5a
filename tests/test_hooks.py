"""Hooks are called through pluggy (issue 20, item 3): ``specname`` and ``tryfirst`` / ``trylast`` hold."""

from __future__ import annotations

from dragsdk.hookspecs import hookimpl
from dragsdk.plugins.drag import DragMode
from dragsdk.registry import Registry


def _mode(name: str, marker: str) -> DragMode:
    class Named(DragMode):
        description = marker

    m = Named()
    m.name = name
    return m


def test_a_function_of_another_name_implements_a_hook_through_specname():
    class Plugin:
        @hookimpl(specname="dragsdk_register_modes")
        def add_my_modes(self, register):
            register(_mode("drag-specname", "via specname"))

    reg = Registry()
    reg.register_plugin(Plugin(), "specname-plugin")
    assert reg.modes["drag-specname"].description == "via specname"
    assert reg.plugins["specname-plugin"].modes == ["drag-specname"]


def test_tryfirst_decides_which_of_two_plugins_owns_a_name():
    class Late:
        @hookimpl(trylast=True)
        def dragsdk_register_modes(self, register):
            register(_mode("contested", "late"))

    class Early:
        @hookimpl(tryfirst=True)
        def dragsdk_register_modes(self, register):
            register(_mode("contested", "early"))

    for first, second in ((Late(), Early()), (Early(), Late())):  # registration order does not matter
        reg = Registry()
        reg.register_plugin(first, "a")
        reg.register_plugin(second, "b")
        assert reg.modes["contested"].description == "early"
        loser = "a" if isinstance(first, Late) else "b"
        assert any(f.name == loser and "contested" in f.error for f in reg.failures)
