"""The type checker runs over the author- and embedder-facing modules (issue 20, item 3): mypy with pydantic's
plugin, configured in pyproject ``[tool.mypy]`` (the modules it checks are listed there)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow  # about 60 s cold on 2 cores


def test_mypy_passes_on_the_author_and_embedder_modules():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_catches_a_mode_whose_plan_takes_the_wrong_spec(tmp_path):
    """The check has teeth: ``EditMode`` is generic in its spec type, so a mode declaring one spec and planning
    another is a type error (the built-ins needed ``# type: ignore[override]`` before)."""
    bad = tmp_path / "bad_mode.py"
    bad.write_text(
        "from dragsdk.authoring import EditMode, EditPlan, EditSpec, PlanContext\n\n\n"
        "class A(EditSpec):\n    pass\n\n\nclass B(EditSpec):\n    pass\n\n\n"
        "class M(EditMode[A]):\n"
        "    spec_model = A\n\n"
        "    def plan(self, spec: B, ctx: PlanContext) -> EditPlan:\n"
        "        raise NotImplementedError\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(bad),
        ],
        cwd=ROOT,  # dragsdk found from the checkout (mypy does not follow the editable install's import hook)
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 1 and "violates the Liskov substitution principle" in done.stdout, done.stdout
