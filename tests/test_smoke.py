"""The fast subset run against the newest upstream releases (``make test-latest``, ``pytest -m smoke``).

Every public module imports, each built-in mode edits once on ``tiny``, every CLI command prints its help. The
documentation build (tests/test_docs.py) and the source-layout check (tests/test_source_layout.py) carry the same
marker. Each test here also runs in the full locked suite.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import dragsdk
from dragsdk.cli import app

from .test_families import _mode_specs

pytestmark = pytest.mark.smoke

SMOKE = {"steps": 4, "resolution": 128}


# Installed from the top-level folders (pyproject.toml package-dir): an editable install does not place them in
# dragsdk.__path__, so each is walked from its own __path__.
MAPPED = ("dragsdk.plugins", "dragsdk.backends", "dragsdk.kernels")


def _public_modules() -> list[str]:
    names = {"dragsdk", *MAPPED}
    roots = [(dragsdk.__path__, "dragsdk.")] + [
        (importlib.import_module(m).__path__, m + ".") for m in MAPPED
    ]
    for path, prefix in roots:
        for info in pkgutil.walk_packages(path, prefix):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.add(info.name)
    return sorted(names)


def test_the_module_walk_sees_every_installed_subpackage():
    names = set(_public_modules())
    for expected in (
        "dragsdk.editor",
        "dragsdk.plugins.drag",
        "dragsdk.backends.eager",
        "dragsdk.kernels.oracle",
        "dragsdk.eval.bench",
        "dragsdk.ui",
    ):
        assert expected in names


@pytest.mark.parametrize("name", _public_modules())
def test_every_public_module_imports(name):
    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", ()):
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it does not define"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drag", "move", "resize", "appearance", "paste", "region-drag"])
def test_each_builtin_mode_edits_once_on_tiny(editor, car_sample, mode):
    image, sample_spec = car_sample
    spec = {**_mode_specs(sample_spec)[mode], "sampler": SMOKE}
    result = editor.edit(image, spec)
    arr = np.asarray(result.image, np.float32)
    assert result.image.size == Image.open(image).size and np.isfinite(arr).all() and arr.std() > 0
    assert torch.isfinite(result.latent).all()
    assert result.report.mode == mode


def _commands() -> list[str]:
    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_the_cli_prints_its_help_and_every_command_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0, top.output
    assert len(_commands()) >= 7
    for command in _commands():
        assert command in top.output
        done = runner.invoke(app, [command, "--help"])
        assert done.exit_code == 0 and "Usage" in done.output, (command, done.output)
