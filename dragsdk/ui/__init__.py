"""The interactive browser editor (``dragsdk ui``; needs the ``ui`` extra: ``pip install 'dragsdk[ui]'``).

- :func:`dragsdk.ui.app.build_app` builds the Gradio page around an :class:`~dragsdk.editor.Editor`;
  :func:`dragsdk.ui.app.launch` serves it on loopback.
- :mod:`dragsdk.ui.state` holds the page's bookkeeping (clicks, coordinates, masks, specs, messages) without Gradio.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "launch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'dragsdk.ui' has no attribute {name!r}")
