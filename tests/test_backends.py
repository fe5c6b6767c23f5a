"""Backends: equivalence with eager, compile without recompiles, the Triton op under the interpreter, selection."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dragsdk.backends.base import Capabilities
from dragsdk.backends.compile import CompileBackend
from dragsdk.backends.eager import EagerBackend
from dragsdk.backends.select import FALLBACK_ORDER, save_entry, select_backend, table_key
from dragsdk.backends.triton import TritonBackend
from dragsdk.cli import app
from dragsdk.errors import BackendUnavailableError
from dragsdk.kernels.reference import KVSource
from dragsdk.registry import Registry

FAST = {"steps": 4, "resolution": 128}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))


def _registry_with(backend):
    reg = Registry()
    reg.load_entry_points()

    class Plugin:
        from dragsdk import hookimpl

        @hookimpl
        def dragsdk_register_backends(self, register):
            register(backend)

    reg.unregister_plugin(backend.name)
    reg.register_plugin(Plugin(), backend.name)
    return reg


def test_backends_json_lists_every_backend_with_its_status():
    res = CliRunner().invoke(app, ["backends", "--json"])
    assert res.exit_code == 0, res.output
    rows = {b["name"]: b for b in json.loads(res.stdout)}
    assert {"eager", "compile", "triton", "xformers"} <= set(rows)
    assert rows["eager"]["available"]
    for name in ("triton", "xformers"):
        if not torch.cuda.is_available():
            assert not rows[name]["available"] and rows[name]["reason"]
    assert rows["eager"]["capabilities"]["gradients"] is True


def test_compile_runs_later_steps_without_recompiling_and_matches_eager(tiny_model, car_sample):
    """Per-step state (step index, K/V mode, bank) stays outside the compiled blocks: after one edit has compiled
    every shape, another edit (other points) runs under error_on_recompile. aot_eager keeps CPU compile time short;
    the guards, and so recompilation, are decided by dynamo whatever the compiler backend."""
    import torch._dynamo

    from dragsdk import Editor

    image, spec = car_sample
    spec = {**spec, "sampler": FAST}
    moved = {**spec, "points": [[p[0], [p[1][0] + 16, p[1][1]]] for p in spec["points"]]}
    torch._dynamo.reset()
    reg = _registry_with(CompileBackend(dynamo_backend="aot_eager"))
    try:
        compiled = Editor(tiny_model, backend="compile", registry=reg)
        compiled.edit(image, spec)
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = compiled.edit(image, moved)
    finally:
        for m in tiny_model.unet.modules():
            if hasattr(m, "_compiled_call_impl"):
                m._compiled_call_impl = None
        torch._dynamo.reset()
    want = Editor(tiny_model, backend="eager").edit(image, moved)
    assert got.report.backend == "compile"
    torch.testing.assert_close(got.latent, want.latent, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["plain", "concat", "replace", "composite"])
def test_triton_backend_attention_matches_eager_under_the_interpreter(mode):
    backend = TritonBackend(allow_interpreter=True)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 9, 40, generator=g)
    own = KVSource(torch.randn(2, 2, 9, 40, generator=g), torch.randn(2, 2, 9, 40, generator=g))
    bank = KVSource(torch.randn(1, 2, 9, 40, generator=g), torch.randn(1, 2, 9, 40, generator=g))
    mask = torch.rand(9, generator=g) > 0.4
    sources = {
        "plain": [own],
        "concat": [own, bank],
        "replace": [bank],
        "composite": [bank._replace(key_mask=mask), KVSource(own.k[:1], own.v[:1], ~mask)],
    }[mode]
    torch.testing.assert_close(backend.attention(q, sources), EagerBackend().attention(q, sources), rtol=1e-4, atol=1e-5)


# -- selection -------------------------------------------------------------------------------------------------------
class _Fake(EagerBackend):
    def __init__(self, name, available=True, gradients=True, kv=("plain", "concat", "replace", "composite")):
        self.name = name
        self._available = available
        self.capabilities = Capabilities(devices=("cpu",), dtypes=("float32",), gradients=gradients, kv_modes=kv)

    def availability(self):
        return (True, "") if self._available else (False, "no CUDA device")


def _fakes():
    return {
        "eager": _Fake("eager"),
        "compile": _Fake("compile"),
        "triton": _Fake("triton", available=False),
        "onnx": _Fake("onnx", gradients=False, kv=("plain", "replace")),
    }


def test_auto_without_measurements_takes_the_fallback_order():
    b, why = select_backend(_fakes(), "auto", "cpu", "float32", True, ["concat"], "tiny", (128, 128))
    assert b.name == "eager" and "nothing measured" in why and "triton (no CUDA device)" in why
    assert FALLBACK_ORDER.index("eager") < FALLBACK_ORDER.index("compile")


def test_auto_takes_the_fastest_measured_backend_that_covers_the_edit():
    key = table_key("cpu", "tiny", (128, 128), "float32")
    save_entry(key, {"device": "cpu", "results": {
        "triton": {"drag_step_s": 0.001, "region_step_s": 0.001},  # fastest, but cannot run here
        "compile": {"drag_step_s": 0.010, "region_step_s": 0.020},
        "eager": {"drag_step_s": 0.030, "region_step_s": 0.030},
        "onnx": {"drag_step_s": None, "region_step_s": 0.005},
    }})
    b, why = select_backend(_fakes(), "auto", "cpu", "float32", True, ["concat"], "tiny", (128, 128))
    assert b.name == "compile" and "fastest measured" in why
    b, _ = select_backend(_fakes(), "auto", "cpu", "float32", False, ["replace"], "tiny", (128, 128))
    assert b.name == "onnx"  # no gradients, replace: ONNX covers it and is fastest
    b, _ = select_backend(_fakes(), "auto", "cpu", "float32", False, ["composite"], "tiny", (128, 128))
    assert b.name == "compile"  # ONNX does not do composite
    b, why = select_backend(_fakes(), "auto", "cpu", "float32", True, ["concat"], "tiny", (256, 256))
    assert b.name == "eager" and "nothing measured" in why  # another size: not measured


def test_a_named_backend_that_cannot_run_or_cover_is_refused_with_the_reason():
    with pytest.raises(BackendUnavailableError, match="cannot run here: no CUDA device"):
        select_backend(_fakes(), "triton", "cpu", "float32", True, ["concat"])
    with pytest.raises(BackendUnavailableError, match="needs gradients"):
        select_backend(_fakes(), "onnx", "cpu", "float32", True, ["concat"])


def test_bench_stores_a_table_that_auto_then_uses(tiny_model, tmp_path):
    from dragsdk.backends.select import bench_backends, load_table

    reg = Registry()
    reg.load_entry_points()
    entry = bench_backends(tiny_model, resolution=64, steps=2, names=["eager"], registry=reg)
    assert entry["results"]["eager"]["drag_step_s"] > 0 and entry["results"]["eager"]["region_step_s"] > 0
    assert entry["versions"]["torch"] == torch.__version__
    assert table_key("cpu", "tiny", (64, 64), "float32") in load_table()
    b, why = select_backend(reg.backends, "auto", "cpu", "float32", True, ["concat"], "tiny", (64, 64))
    assert b.name == "eager" and "fastest measured" in why
