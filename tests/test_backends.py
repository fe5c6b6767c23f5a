"""Backends: equivalence with eager, compile without recompiles, the Triton op under the interpreter, selection."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dragsdk.backends.base import BackendNeeds, Capabilities
from dragsdk.backends.compile import CompileBackend
from dragsdk.backends.eager import EagerBackend
from dragsdk.backends.select import FALLBACK_ORDER, model_key, save_entry, select_backend, table_key
from dragsdk.backends.triton import TritonBackend
from dragsdk.cli import app
from dragsdk.errors import BackendUnavailableError
from dragsdk.kernels.oracle import KVSource
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


@pytest.mark.slow
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
    torch.testing.assert_close(
        backend.attention(q, sources), EagerBackend().attention(q, sources), rtol=1e-4, atol=1e-5
    )


# -- selection -------------------------------------------------------------------------------------------------------
class _Fake(EagerBackend):
    def __init__(
        self,
        name,
        available=True,
        gradients=True,
        kv=("plain", "concat", "replace", "composite"),
        families=("sd1", "sd2", "sdxl"),
    ):
        self.name = name
        self.priority = {"triton": 40, "xformers": 30, "eager": 20, "compile": 10}.get(
            name, 0
        )  # the built-ins'
        self._available = available
        self.capabilities = Capabilities(
            devices=("cpu",), dtypes=("float32",), gradients=gradients, kv_modes=kv, families=families
        )

    def availability(self):
        return (True, "") if self._available else (False, "no CUDA device")


def _fakes():
    return {
        "eager": _Fake("eager"),
        "compile": _Fake("compile"),
        "triton": _Fake("triton", available=False),
        "onnx": _Fake("onnx", gradients=False, kv=("plain", "replace"), families=("sd1", "sd2")),
    }


def _needs(gradients, kv_mode, model="", working_size=None, **kw):
    return BackendNeeds("cpu", "float32", gradients, (kv_mode,), model=model, working_size=working_size, **kw)


def test_auto_without_measurements_takes_the_fallback_order():
    b, why = select_backend(_fakes(), "auto", _needs(True, "concat", "tiny", (128, 128)))
    assert b.name == "eager" and "nothing measured" in why and "triton (no CUDA device)" in why
    assert FALLBACK_ORDER.index("eager") < FALLBACK_ORDER.index("compile")


def test_auto_takes_the_fastest_measured_backend_that_covers_the_edit():
    key = table_key("cpu", "tiny", (128, 128), "float32")
    save_entry(
        key,
        {
            "device": "cpu",
            "results": {
                "triton": {"drag_step_s": 0.001, "region_step_s": 0.001},  # fastest, but cannot run here
                "compile": {"drag_step_s": 0.010, "region_step_s": 0.020},
                "eager": {"drag_step_s": 0.030, "region_step_s": 0.030},
                "onnx": {"drag_step_s": None, "region_step_s": 0.005},
            },
        },
    )
    b, why = select_backend(_fakes(), "auto", _needs(True, "concat", "tiny", (128, 128)))
    assert b.name == "compile" and "fastest measured" in why
    b, _ = select_backend(_fakes(), "auto", _needs(False, "replace", "tiny", (128, 128)))
    assert b.name == "onnx"  # no gradients, replace: ONNX covers it and is fastest
    b, _ = select_backend(_fakes(), "auto", _needs(False, "composite", "tiny", (128, 128)))
    assert b.name == "compile"  # ONNX does not do composite
    b, why = select_backend(_fakes(), "auto", _needs(True, "concat", "tiny", (256, 256)))
    assert b.name == "eager" and "nothing measured" in why  # another size: not measured


def test_a_named_backend_that_cannot_run_or_cover_is_refused_with_the_reason():
    with pytest.raises(BackendUnavailableError, match="cannot run here: no CUDA device"):
        select_backend(_fakes(), "triton", _needs(True, "concat"))
    with pytest.raises(BackendUnavailableError, match="needs gradients"):
        select_backend(_fakes(), "onnx", _needs(True, "concat"))


def test_auto_skips_a_backend_that_does_not_run_the_models_family_and_says_so():
    key = table_key("cpu", "xl", (64, 64), "float32")
    save_entry(
        key,
        {
            "results": {
                "onnx": {"region_step_s": 0.001},
                "compile": {"region_step_s": 0.01},
                "eager": {"region_step_s": 0.02},
            }
        },
    )
    b, why = select_backend(_fakes(), "auto", _needs(False, "replace", "xl", (64, 64), family="sd1"))
    assert b.name == "onnx"  # fastest and covers an SD 1.x region drag
    b, why = select_backend(_fakes(), "auto", _needs(False, "replace", "xl", (64, 64), family="sdxl"))
    assert b.name == "compile" and "fastest measured" in why and "family=sdxl" in why
    assert "onnx (model family 'sdxl' not in ('sd1', 'sd2'))" in why and "onnx 1.0 ms" not in why
    only_onnx = {"eager": _Fake("eager", available=False), "onnx": _fakes()["onnx"]}
    b, why = select_backend(only_onnx, "auto", _needs(False, "replace", "xl", (32, 32), family="sd2"))
    assert b.name == "onnx" and "nothing measured" in why
    with pytest.raises(
        BackendUnavailableError, match="no backend covers family=sdxl.*onnx \\(model family 'sdxl'"
    ):
        select_backend(
            only_onnx,
            "auto",
            BackendNeeds(
                "cpu", "float32", False, ("replace",), model="xl", working_size=(32, 32), family="sdxl"
            ),
        )
    with pytest.raises(
        BackendUnavailableError, match="'onnx' does not cover this edit: model family 'sdxl' not in"
    ):
        select_backend(_fakes(), "onnx", BackendNeeds("cpu", "float32", False, ("replace",), family="sdxl"))
    with pytest.raises(ValueError, match="families must be a non-empty subset"):
        Capabilities(devices=("cpu",), dtypes=("float32",), gradients=True, families=("sd3",))


def test_an_sdxl_edit_with_auto_falls_back_from_onnx_measured_fastest(car_sample):
    """The bug: the measured table says ``onnx`` is fastest for region drags; an SDXL edit must not pick it (its
    exported graph has no SDXL conditioning) but the next measured backend, and say why."""
    from dragsdk import Editor
    from dragsdk.geometry import Canvas
    from dragsdk.models import load_model

    reg = Registry()
    reg.load_entry_points()
    if not reg.backends["onnx"].availability()[0]:
        pytest.skip("onnxruntime / onnx / onnxscript not installed")
    assert reg.backends["onnx"].capabilities.families == ("sd1", "sd2")
    xl = load_model("tiny-sdxl", device="cpu")
    image, spec = car_sample
    from PIL import Image

    size = Canvas.fit(Image.open(image).size, 64).size
    save_entry(
        table_key("cpu", model_key(xl), size, "float32"),
        {"results": {"onnx": {"region_step_s": 0.0001}, "eager": {"region_step_s": 0.5}}},
    )
    same = [[100, 100], [160, 100], [160, 160], [100, 160]]
    region = {
        "mode": "region-drag",
        "prompt": spec["prompt"],
        "sampler": {"steps": 3, "resolution": 64},
        "polygons": [{"handle": same, "target": [[x + 40, y + 20] for x, y in same]}],
    }
    r = Editor(xl, registry=reg).edit(image, region)
    assert r.report.backend == "eager" and "fastest measured" in r.report.backend_reason
    assert "onnx (model family 'sdxl' not in ('sd1', 'sd2'))" in r.report.backend_reason
    from dragsdk.backend_bench import bench_backends

    row = bench_backends(xl, resolution=64, steps=2, names=["onnx"], registry=reg, store=False)["results"][
        "onnx"
    ]
    assert not row["available"] and "model family 'sdxl'" in row["reason"] and "drag_step_s" not in row


@pytest.mark.slow
def test_bench_stores_a_table_that_auto_then_uses(tiny_model, tmp_path):
    from dragsdk.backend_bench import bench_backends
    from dragsdk.backends.select import load_table

    reg = Registry()
    reg.load_entry_points()
    mk = model_key(tiny_model)
    save_entry(table_key("cpu", mk, (64, 64), "float32"), {"results": {"compile": {"drag_step_s": 1e6}}})
    entry = bench_backends(tiny_model, resolution=64, steps=2, names=["eager"], registry=reg, repeats=2)
    row = entry["results"]["eager"]
    assert row["drag_step_s"] > 0 and row["region_step_s"] > 0 and row["repeats"] == 2
    for metric in ("drag_step", "region_step"):  # the median lies inside the stored spread
        lo, hi = row[f"{metric}_spread_s"]
        assert lo <= row[f"{metric}_s"] <= hi
    assert entry["versions"]["torch"] == torch.__version__ and entry["family"] == "sd1"
    stored = load_table()[table_key("cpu", mk, (64, 64), "float32")]
    assert set(stored["results"]) == {"eager", "compile"}  # --only eager merged: compile's row kept
    b, why = select_backend(
        reg.backends,
        "auto",
        BackendNeeds("cpu", "float32", True, ("concat",), model=mk, working_size=(64, 64)),
    )
    assert b.name == "eager" and "fastest measured" in why and mk in why  # the reason names the entry


def test_table_key_names_the_exact_device_and_the_architecture(tiny_model):
    from dragsdk.backends.select import device_name, model_family

    assert device_name("cpu").startswith("cpu:") and device_name("cpu") != "cpu:x86_64"
    assert model_family(tiny_model) == "sd1"
    other = type(
        "M",
        (),
        {"unet": type("U", (), {"config": {**dict(tiny_model.unet.config), "cross_attention_dim": 1024}})()},
    )()
    assert model_family(other) == "sd2" and model_key(other) != model_key(tiny_model)
    same = type("M", (), {"unet": tiny_model.unet, "name": "another/folder"})()
    assert model_key(same) == model_key(tiny_model)  # the cost depends on the architecture, not the name


def test_plugin_backends_take_their_place_by_priority():
    backends = {**_fakes(), "mine": _Fake("mine")}
    backends["mine"].priority = 25  # between xformers (30) and eager (20)
    b, why = select_backend(
        backends,
        "auto",
        BackendNeeds("cpu", "float32", True, ("concat",), model="tiny", working_size=(32, 32)),
    )
    assert b.name == "mine" and "priority" in why
    backends["mine"].priority = 0
    b, _ = select_backend(
        backends,
        "auto",
        BackendNeeds("cpu", "float32", True, ("concat",), model="tiny", working_size=(32, 32)),
    )
    assert b.name == "eager"


def test_auto_never_takes_a_reduced_precision_backend_for_float32_unless_asked():
    backends = {**_fakes(), "bf16": _Fake("bf16")}
    backends["bf16"].capabilities = Capabilities(
        devices=("cpu",), dtypes=("float32",), gradients=True, precision="reduced"
    )
    save_entry(
        table_key("cpu", "tiny", (32, 32), "float32"),
        {"results": {"bf16": {"drag_step_s": 0.001}, "eager": {"drag_step_s": 0.1}}},
    )
    b, why = select_backend(
        backends,
        "auto",
        BackendNeeds("cpu", "float32", True, ("concat",), model="tiny", working_size=(32, 32)),
    )
    assert b.name == "eager" and "reduced precision" in why
    b, _ = select_backend(
        backends,
        "auto",
        BackendNeeds(
            "cpu", "float32", True, ("concat",), model="tiny", working_size=(32, 32), allow_reduced=True
        ),
    )
    assert b.name == "bf16"
    b, _ = select_backend(
        backends, "bf16", BackendNeeds("cpu", "float32", True, ("concat",))
    )  # named: that is asking
    assert b.name == "bf16"
    with pytest.raises(ValueError, match="precision"):
        Capabilities(devices=("cpu",), dtypes=("float32",), gradients=True, precision="half")


def test_a_backend_whose_availability_raises_is_refused_not_fatal():
    class Broken(_Fake):
        def availability(self):
            raise RuntimeError("driver exploded")

    backends = {**_fakes(), "broken": Broken("broken")}
    backends["broken"].priority = 99
    b, why = select_backend(
        backends,
        "auto",
        BackendNeeds("cpu", "float32", True, ("concat",), model="tiny", working_size=(16, 16)),
    )
    assert b.name == "eager" and "broken (availability() raised RuntimeError: driver exploded)" in why
    assert backends["broken"].describe()["available"] is False
    with pytest.raises(BackendUnavailableError, match="driver exploded"):
        select_backend(backends, "broken", BackendNeeds("cpu", "float32", True, ("concat",)))


@pytest.mark.slow
def test_traces_of_one_edit_agree_between_backends(tiny_model, car_sample, tmp_path):
    """Issue 11's trace format compares backends: the same drag through eager and through the fused kernel (Triton's
    interpreter on this CPU) gives the same per-pass timesteps, and latents and energies within float32 rounding."""
    from dragsdk import Editor
    from dragsdk.trace import read_trace

    image, spec = car_sample
    spec = {**spec, "sampler": {"steps": 4, "resolution": 64}}
    traces = {}
    for backend in (EagerBackend(), TritonBackend(allow_interpreter=True)):
        path = tmp_path / f"{backend.name}.npz"
        Editor(tiny_model, backend=backend.name, registry=_registry_with(backend)).edit(
            image, spec, trace=path
        )
        traces[backend.name] = read_trace(path)
    (a, meta_a), (b, meta_b) = traces["eager"], traces["triton"]
    assert meta_a["backend"] == "eager" and meta_b["backend"] == "triton"
    assert list(a["timestep"]) == list(b["timestep"]) and list(a["step"]) == list(b["step"])
    for key in ("latent_before", "latent_after"):
        assert np.abs(a[key] - b[key]).max() < 1e-4 * max(1.0, np.abs(a[key]).max()), key
    guided = ~np.isnan(a["energy_total"])
    assert guided.any() and np.array_equal(guided, ~np.isnan(b["energy_total"]))
    np.testing.assert_allclose(a["energy_total"][guided], b["energy_total"][guided], rtol=1e-4)
