"""The backend-author API (issue 14, "Done when"): the bf16 SDPA backend in examples/dragsdk-bf16-backend, written
against ``dragsdk.backends.base`` alone, is found through its entry point, computes cross-branch attention within
bfloat16 rounding of the float64 oracle in every K/V mode, edits, and is never taken by ``auto`` for a float32 edit
unless the editor allows reduced precision."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from dragsdk import Editor
from dragsdk.backends.base import KVSource, join_sources
from dragsdk.backends.select import model_key, save_entry, table_key
from dragsdk.kernels.oracle import cross_branch_attention_oracle
from dragsdk.registry import Registry

from .conftest import ROOT
from .test_registry import _fake_distribution

FOLDER = ROOT / "examples" / "dragsdk-bf16-backend"
MODULE = "dragsdk_bf16_backend"


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A registry that found the example package through its entry point, as an installed copy would be found."""
    eps = tomllib.loads((FOLDER / "pyproject.toml").read_text())["project"]["entry-points"]["dragsdk"]
    _fake_distribution(tmp_path, "dragsdk-bf16-backend", eps)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(FOLDER))
    sys.modules.pop(MODULE, None)
    reg = Registry()
    reg.load_entry_points()
    try:
        yield reg
    finally:
        sys.modules.pop(MODULE, None)


def test_the_example_backend_is_found_through_its_entry_point_and_uses_only_the_documented_module(registry):
    assert "sdpa-bf16" in registry.backends, registry.failures
    assert registry.plugins["sdpa-bf16"].distribution == "dragsdk-bf16-backend"
    source = (FOLDER / f"{MODULE}.py").read_text()
    imports = {
        line.split()[1] for line in source.splitlines() if line.startswith(("from dragsdk", "import dragsdk"))
    }
    assert imports == {"dragsdk.backends.base"}, imports
    desc = registry.backends["sdpa-bf16"].describe()
    assert (
        desc["available"]
        and desc["capabilities"]["precision"] == "reduced"
        and desc["capabilities"]["gradients"]
    )


def _sources(mode: str, g: torch.Generator, b=2, h=2, n=64, d=16):
    def kv(rows, m):
        return torch.randn(rows, h, m, d, generator=g), torch.randn(rows, h, m, d, generator=g)

    own, bank, bank2 = kv(b, n), kv(1, n), kv(1, n)
    hide = torch.rand(n, generator=g) > 0.3
    return {
        "plain": [KVSource(*own)],
        "concat": [KVSource(*own), KVSource(*bank)],
        "replace": [KVSource(*bank)],
        "composite": [KVSource(*bank, key_mask=hide), KVSource(*bank2, key_mask=~hide)],
    }[mode]


@pytest.mark.parametrize("mode", ["plain", "concat", "replace", "composite"])
def test_bf16_attention_is_the_oracle_within_bfloat16_rounding(registry, mode):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 64, 16, generator=g)
    sources = _sources(mode, g)
    want = cross_branch_attention_oracle(
        q.double(), [KVSource(s.k.double(), s.v.double(), s.key_mask) for s in sources]
    )
    got = registry.backends["sdpa-bf16"].attention(q, sources)
    eager = registry.backends["eager"].attention(q, sources)
    rel = lambda x: float((x.double() - want).norm() / want.norm())  # noqa: E731
    assert got.dtype == q.dtype and got.shape == q.shape
    assert rel(got) < 1e-2  # bf16 has an 8-bit mantissa: relative error ~ 2^-8
    assert rel(got) > 10 * rel(eager)  # and it really computed in bf16 (eager is float32)
    k, v, mask = join_sources(q, sources)
    assert k.shape[2] == sum(s.k.shape[2] for s in sources) and (mask is None) == (mode != "composite")


def _drag():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mask = np.zeros((64, 96), dtype=bool)
    mask[16:48, 30:50] = True
    return image, {
        "mode": "drag",
        "prompt": "x",
        "points": [[[40, 30], [52, 34]]],
        "mask": mask,
        "sampler": {"steps": 4, "resolution": 64},
    }


def test_auto_gives_a_float32_edit_to_the_bf16_backend_only_when_allowed(
    registry, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))  # this test's own measured table
    image, spec = _drag()
    strict = Editor(tiny_model, registry=registry)
    size = strict.plan(image, spec).canvas.size
    save_entry(
        table_key("cpu", model_key(tiny_model), size, "float32"),
        {"results": {"sdpa-bf16": {"drag_step_s": 0.001}, "eager": {"drag_step_s": 1.0}}},
    )  # bf16 "fastest"
    lenient = Editor(tiny_model, registry=registry, allow_reduced_precision=True)
    chosen = {name: e.plan(image, spec) for name, e in (("strict", strict), ("lenient", lenient))}
    assert chosen["strict"].backend != "sdpa-bf16" and "reduced precision" in chosen["strict"].backend_reason
    assert chosen["lenient"].backend == "sdpa-bf16", chosen["lenient"].backend_reason


@pytest.mark.slow
def test_a_drag_edit_runs_through_the_named_bf16_backend(registry, tiny_model):
    image, spec = _drag()
    bf16 = Editor(tiny_model, backend="sdpa-bf16", registry=registry).edit(image, spec)
    eager = Editor(tiny_model, backend="eager", registry=registry).edit(image, spec)
    assert bf16.report.backend == "sdpa-bf16" and bf16.report.energies
    assert all(e.grad_norm > 0 for e in bf16.report.energies)  # gradients flow through the bf16 attention
    a, b = (np.asarray(r.image, dtype=np.float64) for r in (bf16, eager))
    psnr = 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert psnr > 25, psnr  # the same edit up to bf16 rounding, not another edit
