"""A checkout's top-level folders never shadow an installed distribution (dragsdk/_source_layout.py).

``plugins/``, ``backends/`` and ``kernels/`` hold ``dragsdk.plugins``, ``dragsdk.backends`` and ``dragsdk.kernels``.
Run from the repository root (or with the root on ``PYTHONPATH``), ``import kernels`` must still be Hugging Face's
``kernels`` (which transformers imports), and a bare name with no installed distribution must not import at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parents[1]
BARE = ("plugins", "backends", "kernels")

# Runs in a subprocess whose working directory is the root: sys.path[0] is the root, as for any `python -c`.
PROBE = textwrap.dedent(
    """
    import importlib, json, os, sys
    import transformers, diffusers.loaders.peft, dragsdk, dragsdk.kernels, dragsdk.backends, dragsdk.plugins
    import dragsdk.kernels.cross_attention, dragsdk.backends.eager, dragsdk.plugins.drag
    from dragsdk.kernels import KVSource, cross_branch_attention
    root = os.path.realpath(sys.argv[1])
    BARE = sys.argv[2].split(",")
    out = {"kvsource": KVSource.__module__, "bare": {}, "loaded_in_repo": []}
    for name in BARE:
        try:
            module = importlib.import_module(name)
            out["bare"][name] = os.path.realpath(getattr(module, "__file__", None) or "")
        except ModuleNotFoundError as exc:
            out["bare"][name] = "missing:" + str(exc.name)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        inside = any(os.path.realpath(path or "").startswith(os.path.join(root, top) + os.sep) for top in BARE)
        if inside and not name.startswith("dragsdk."):
            out["loaded_in_repo"].append(name)
    print(json.dumps(out))
    """
)


def _installed(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cwd", "pythonpath"])
def test_bare_folder_names_never_resolve_into_the_repository(how):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    cwd = ROOT
    args = [sys.executable, "-c", PROBE, str(ROOT), ",".join(BARE)]
    if how == "pythonpath":  # subprocesses and Ray workers started with the root on PYTHONPATH
        env["PYTHONPATH"] = str(ROOT)
        cwd = ROOT / "docs"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["kvsource"] == "dragsdk.kernels.oracle"
    assert out["loaded_in_repo"] == [], out
    for name, where in out["bare"].items():
        folder = str((ROOT / name).resolve()) + os.sep
        assert not where.startswith(folder), f"bare `{name}` resolved into the repository: {where}"
        if where.startswith("missing:"):
            assert not _installed(name), f"{name} is installed but did not import"
    if _installed("kernels"):  # transformers >= 5.25 depends on it: the installed one wins
        assert "site-packages" in out["bare"]["kernels"] or "dist-packages" in out["bare"]["kernels"]


@pytest.mark.slow
def test_pytest_collects_from_the_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_models.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.lower().split("\n")[-2], done.stdout[-2000:]
