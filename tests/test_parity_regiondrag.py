"""``benchmarks/parity/regiondrag.py``: it skips, saying why, without the official code; with it (``REGIONDRAG_OFFICIAL``
set to a checkout of Visual-AI/RegionDrag @5cf4922) every input kind reproduces the official final latent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "parity" / "regiondrag.py"


def test_the_parity_script_skips_with_its_reason_when_no_official_checkout_is_given():
    env = {k: v for k, v in os.environ.items() if k != "REGIONDRAG_OFFICIAL"}
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("SKIP: no official RegionDrag checkout") and "5cf4922" in res.stdout


def test_the_parity_patch_touches_two_official_files_and_marks_every_hunk():
    patch = (SCRIPT.parent / "regiondrag-cpu.patch").read_text()
    files = {line.split()[-1] for line in patch.splitlines() if line.startswith("+++ ")}
    assert files == {"b/region_utils/drag.py", "b/region_utils/cycle_sde.py"}
    hunks = [h for part in patch.split("\n+++ ")[1:] for h in part.split("\n@@ ")[1:]]
    assert len(hunks) >= 8 and all("dragsdk parity patch" in h for h in hunks)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("REGIONDRAG_OFFICIAL"), reason="REGIONDRAG_OFFICIAL (an official checkout) not set"
)
def test_every_input_kind_reproduces_the_official_final_latent_with_the_same_seed(tmp_path):
    out = tmp_path / "parity.json"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=1800
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    official = [r for r in rows if r["rng"] == "official"]
    assert len(official) == 4 and all(
        r["final_rel_l2"] < 1e-4 and r["first_diverging_stage"] is None for r in official
    )
    assert all(r["final_rel_l2"] > 0.1 for r in rows if r["rng"] == "dragsdk")
