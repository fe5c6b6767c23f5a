"""dragsdk bench output folders and datasets under hostile conditions (issue 12, item 7): one run per folder, result
lines that are valid JSON but not complete records, and folder datasets naming files outside their root."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dragsdk.cli import app
from dragsdk.errors import SpecError
from dragsdk.eval import BenchConfig, discover, run_bench
from dragsdk.eval.bench import completed_records, record_problem, summarize
from dragsdk.eval.datasets import load
from dragsdk.io import mask_to_data_url

from .conftest import ROOT

pytestmark = pytest.mark.slow  # bench subprocesses, killed and resumed: make test-fast skips the module

FAST = {"model": "tiny", "backend": "eager", "steps": 2, "resolution": 64, "metrics": ("dai", "psnr_ssim")}


def _dataset(tmp_path, n=2):
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    root.mkdir()
    mask = np.zeros((48, 64), np.uint8)
    mask[10:40, 15:50] = 1
    for k in range(n):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / f"im{k}.png")
        spec = {
            "mode": "drag",
            "prompt": "noise",
            "points": [[[20, 20], [30, 22]]],
            "mask": mask_to_data_url(mask),
        }
        (root / f"im{k}.json").write_text(json.dumps(spec))
    return root


def test_a_second_bench_on_the_same_out_stops_while_the_first_runs(tmp_path):
    root, out = _dataset(tmp_path), tmp_path / "out"
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom dragsdk.eval import BenchConfig, run_bench\n"
            "def hold(rec):\n    print('running', flush=True)\n    sys.stdin.readline()\n"
            f"run_bench(BenchConfig({str(root)!r}, {str(out)!r}, limit=1, model='tiny', backend='eager', steps=2, "
            "resolution=64, metrics=('dai',)), progress=False, echo=None, on_record=hold)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert first.stdout.readline().strip() == "running", first.stderr.read()
        with pytest.raises(SpecError, match="in use by another dragsdk bench run"):
            run_bench(
                BenchConfig(root, out, limit=1, **{**FAST, "metrics": ("dai",)}), progress=False, echo=None
            )
        res = CliRunner().invoke(
            app,
            [
                "bench",
                str(root),
                "--out",
                str(out),
                "--limit",
                "1",
                "--steps",
                "2",
                "--resolution",
                "64",
                "--metrics",
                "dai",
                "--backend",
                "eager",
                "--quiet",
            ],
        )
        assert res.exit_code == 2 and "in use by another dragsdk bench run" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert (
            len((out / "results.jsonl").read_text().splitlines()) == 1
        )  # nothing written by the refused runs
    finally:
        first.communicate("\n", timeout=120)
    assert first.returncode == 0
    again = run_bench(
        BenchConfig(root, out, limit=1, **{**FAST, "metrics": ("dai",)}), progress=False, echo=None
    )
    assert again.skipped == 1 and again.ran == 0  # the lock went with the first process


def test_incomplete_or_mistyped_lines_run_again_and_each_id_counts_once(tmp_path):
    root, out = _dataset(tmp_path, 1), tmp_path / "out"
    base = json.loads((root / "im0.json").read_text())
    for name in ("bad1", "bad2"):  # samples that fail when read: error records, no edit
        (root / f"{name}.json").write_text(
            json.dumps({**base, "image": "im0.png", "points": [[[1, 1], [999, 1]]]})
        )
    cfg = BenchConfig(root, out, **FAST)
    full = run_bench(cfg, progress=False, echo=None)
    good = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert [record_problem(r) for r in good.values()] == [None, None, None]
    assert good["im0"]["status"] == "ok" and good["bad1"]["status"] == "error"
    lines = [
        {**good["bad1"], "metrics": "oops"},  # valid JSON, wrong type
        {k: v for k, v in good["bad2"].items() if k != "seconds"},  # incomplete
        {**good["bad2"], "image_size": [True, 48]},  # a boolean as a size
        {"id": ["im0"]},  # an id that is not a string
        good["im0"],
        good["im0"],  # the same complete record twice
        {**good["im0"], "files": {"edited": "../../etc/passwd"}},  # a file outside the output folder
    ]
    (out / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    messages: list[str] = []
    again = run_bench(cfg, progress=False, echo=messages.append)
    assert again.ran == 2 and again.skipped == 1  # bad1 and bad2 again, im0 kept
    text = "\n".join(messages)
    assert "bad1 is incomplete (line 1: metrics is not an object of numbers" in text
    assert "bad2 is incomplete (line 2: missing seconds" in text and "im0 has 2 complete records" in text
    assert again.summary["all"]["samples"] == 3 and len(again.records) == 3
    assert [r["id"] for r in again.records] == ["bad1", "bad2", "im0"]
    assert again.summary["all"]["ok"] == 1 and again.summary["all"]["errors"] == 2
    assert again.summary["all"]["dai_1"] == pytest.approx(full.summary["all"]["dai_1"])
    assert json.loads((out / "summary.json").read_text())["all"]["samples"] == 3
    # summarize itself never crashes on such lines and counts each id once
    assert summarize(lines + list(good.values()))["all"]["samples"] == 3
    records, problems = completed_records([*lines, 7, None])
    assert [r["id"] for r in records] == ["im0"] and len(problems) == 6


def test_a_folder_dataset_cannot_name_files_outside_its_root(tmp_path):
    root = _dataset(tmp_path, 1)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 48), "white").save(secret)
    Image.new("L", (64, 48), 255).save(tmp_path / "secret_mask.png")
    base = json.loads((root / "im0.json").read_text())
    (root / "up.json").write_text(json.dumps({**base, "image": "../secret.png"}))
    (root / "abs.json").write_text(
        json.dumps({**base, "image": "im0.png", "mask": str(tmp_path / "secret_mask.png")})
    )
    (root / "link.png").symlink_to(secret)
    (root / "link.json").write_text(json.dumps(base))
    (root / "sub").mkdir()
    (root / "sub" / "ok.json").write_text(
        json.dumps({**base, "image": "../im0.png"})
    )  # inside the root: fine
    refs = {r.id: r for r in discover(root)}
    for sid, field in (("up", "image"), ("abs", "mask"), ("link", "image")):
        with pytest.raises(SpecError, match="outside the dataset root") as e:
            load(refs[sid])
        assert e.value.field == field
        assert load(refs[sid], allow_outside=True).image.size == (64, 48)
    assert load(refs["sub/ok"]).image.size == (64, 48) and load(refs["im0"]).image.size == (64, 48)

    (root / "sub" / "ok.json").unlink()
    (root / "im0.json").unlink()  # left: the three outside ones, which fail before any edit
    r = run_bench(BenchConfig(root, tmp_path / "out", **FAST), progress=False, echo=None)
    assert {x["id"]: x["status"] for x in r.records} == {"abs": "error", "link": "error", "up": "error"}
    assert all("outside the dataset root" in x["error"] for x in r.records)
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(root),
            "--out",
            str(tmp_path / "out2"),
            "--steps",
            "2",
            "--resolution",
            "64",
            "--metrics",
            "dai",
            "--backend",
            "eager",
            "--limit",
            "1",
            "--allow-outside-paths",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "1 sample(s) run" in res.output and "skipped" not in res.output
