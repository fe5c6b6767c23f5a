"""``benchmarks/parity/dragondiffusion.py``: it skips, saying why, without the official code; with it
(``DRAGONDIFFUSION_OFFICIAL`` set to a checkout of MC-E/DragonDiffusion @f9b5bdf and ``DRAGONDIFFUSION_PYTHON`` to an
interpreter with diffusers 0.18) it compares every mode's final latent with the official one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "parity" / "dragondiffusion.py"


def test_the_parity_script_skips_with_its_reason_when_no_official_checkout_is_given():
    env = {k: v for k, v in os.environ.items() if k != "DRAGONDIFFUSION_OFFICIAL"}
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("SKIP: no official DragonDiffusion checkout") and "f9b5bdf" in res.stdout


def test_the_parity_patch_touches_only_the_official_source_files_it_names():
    patch = (SCRIPT.parent / "dragondiffusion-cpu.patch").read_text()
    files = {line.split()[-1] for line in patch.splitlines() if line.startswith("+++ ")}
    assert files == {
        "b/src/demo/model.py",
        "b/src/models/dragondiff.py",
        "b/src/unet/attention_processor.py",
        "b/src/utils/utils.py",
    }


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.environ.get("DRAGONDIFFUSION_OFFICIAL") and os.environ.get("DRAGONDIFFUSION_PYTHON")),
    reason="DRAGONDIFFUSION_OFFICIAL (a checkout) and DRAGONDIFFUSION_PYTHON (diffusers 0.18) not both set",
)
def test_every_mode_runs_against_the_official_code_and_reports_a_final_latent_distance(tmp_path):
    out = tmp_path / "parity.json"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=3600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["drag", "move", "resize", "appearance", "paste"]
    assert all(r["passes_official"] == 58 and r["final_rel_l2"] >= 0 for r in rows)
