"""Exceptions raised by dragsdk. Each names what was wrong and what was expected."""

from __future__ import annotations


class DragSDKError(Exception):
    """Base class of every dragsdk error."""


class SpecError(DragSDKError, ValueError):
    """An edit spec, image or geometry that cannot be edited.

    Attributes:
        field: dotted path of the offending field, e.g. ``points[1].target`` or ``mask``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelNotFoundError(DragSDKError, OSError):
    """A model id or folder that cannot be loaded (absent, offline and not cached, or not in diffusers layout)."""


class UnsafePickleError(DragSDKError, ValueError):
    """A pickle asked for an object outside the allow-list; nothing in it was run."""


class BackendUnavailableError(DragSDKError, RuntimeError):
    """The requested backend cannot run here, or none covers the edit."""


class PluginError(DragSDKError):
    """A plugin registered something invalid (a duplicate name, a mode without a spec model, ...)."""


class OutputError(DragSDKError, OSError):
    """An output file could not be written (a read-only folder, a full disk); nothing partial is left behind."""
