"""A plugin registry with example packages installed: each package found through its entry point (an installed copy
of its metadata, as ``pip install -e examples/PACKAGE`` would leave), the built-ins first as always."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from dragsdk.registry import Registry

from .conftest import ROOT
from .test_registry import _fake_distribution

EXAMPLES = ROOT / "examples"
ROTATE = ("dragsdk-rotate-plugin", "dragsdk_rotate_plugin")
"""The third-party mode package ``rotate``: its folder and module."""


@contextlib.contextmanager
def example_registry(site: Path, *packages: tuple[str, str]) -> Iterator[Registry]:
    """A fresh :class:`Registry` that loaded the entry points of ``packages`` (``(folder, module)``; default the
    rotate example), their metadata written to ``site``; ``sys.path`` and ``sys.modules`` are restored after."""
    packages = packages or (ROTATE,)
    with pytest.MonkeyPatch.context() as mp:
        for folder, _ in packages:
            pyproject = tomllib.loads((EXAMPLES / folder / "pyproject.toml").read_text())
            _fake_distribution(site, folder, pyproject["project"]["entry-points"]["dragsdk"])
            mp.syspath_prepend(str(EXAMPLES / folder))
        mp.syspath_prepend(str(site))
        reg = Registry()
        reg.load_entry_points()
        try:
            yield reg
        finally:
            for _, module in packages:
                sys.modules.pop(module, None)
