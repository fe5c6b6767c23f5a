"""The ``onnx`` backend on the tiny model (CPU onnxruntime): the same region-drag edit as ``eager``, K/V out of and
into the exported graph, the VAE, refusals, and the export cache."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # ONNX export of the tiny model's graphs: make test-fast skips the module
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dragsdk[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'dragsdk[onnx]')")

from PIL import Image  # noqa: E402

from dragsdk import Editor  # noqa: E402
from dragsdk.attention import AttentionController, KVBank, KVInjection, install, self_attention_layers  # noqa: E402
from dragsdk.backends.base import BackendNeeds  # noqa: E402
from dragsdk.backends.eager import sdpa_over_sources  # noqa: E402
from dragsdk.backends.onnx import INSTALL_HINT, GraphCache, OnnxBackend, onnx_cache_dir  # noqa: E402
from dragsdk.backends.select import select_backend  # noqa: E402
from dragsdk.errors import BackendUnavailableError  # noqa: E402
from dragsdk.geometry import Canvas  # noqa: E402
from dragsdk.plugins.region_drag import RegionDragSpec, spec_from_sample  # noqa: E402
from dragsdk.registry import get_registry  # noqa: E402

RES = 128
SAMPLER = {"resolution": RES, "steps": 8, "seed": 3}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh graph cache for this module (so the first edit exports, and the user's cache is left alone)."""
    root = tmp_path_factory.mktemp("dragsdk-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAGSDK_CACHE_DIR", str(root))
        yield root / "onnx"


@pytest.fixture(scope="module")
def backend(cache_dir):
    b = get_registry().backends["onnx"]
    assert isinstance(b, OnnxBackend) and b.availability() == (True, "")
    b.clear_sessions()
    return b


@pytest.fixture(scope="module")
def region_spec(car_sample):
    image, drag = car_sample
    spec = RegionDragSpec.model_validate(spec_from_sample(image.parent, drag))
    # vae_latent "mean": the exported encoder graph returns the posterior mean; the official profile's posterior
    # sample is drawn by the torch VAE on every backend.
    return image, spec.model_copy(
        update={"sampler": spec.sampler.model_copy(update=SAMPLER), "vae_latent": "mean"}
    )


@pytest.fixture(scope="module")
def edits(tiny_model, backend, region_spec):
    """The region-drag edit with ``eager`` and with ``onnx`` (the first one exports every graph)."""
    image, spec = region_spec
    eager = Editor(tiny_model, backend="eager").edit(image, spec)
    n = len(backend.exports)
    onnx = Editor(tiny_model, backend="onnx").edit(image, spec)
    return eager, onnx, backend.exports[n:]


@contextmanager
def _torch_calls(model) -> Iterator[dict[str, int]]:
    """Counts calls of the torch UNet and VAE inside the block."""
    calls = {"unet": 0, "vae": 0}

    def count(kind):
        def hook(*_):
            calls[kind] += 1

        return hook

    hooks = [
        model.unet.register_forward_pre_hook(count("unet")),
        model.vae.encoder.register_forward_pre_hook(count("vae")),
        model.vae.decoder.register_forward_pre_hook(count("vae")),
    ]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def _latent_hw(image) -> tuple[int, int]:
    w, h = Canvas.fit(Image.open(image).size, RES).latent_size
    return h, w


def test_region_drag_edit_equals_eager_within_float32_tolerance(edits, region_spec):
    eager, onnx, exports = edits
    assert onnx.report.backend == "onnx" and eager.report.backend == "eager"
    assert sorted(e["graph"] for e in exports) == ["unet_kv", "vae_decode", "vae_encode"]
    assert all(e["exporter"] == "dynamo" and e["fallback_reason"] is None for e in exports)
    assert (
        onnx.report.unet_evaluations
        == eager.report.unet_evaluations
        == {"forward": 8, "forward_grad": 0, "backward": 0}
    )
    scale = float(eager.latent.abs().max())
    assert float((onnx.latent - eager.latent).abs().max()) <= 1e-4 * scale
    a, b = np.asarray(onnx.image, np.int16), np.asarray(eager.image, np.int16)
    assert a.shape == b.shape and int(np.abs(a - b).max()) <= 3
    # The edit did something (it is not a trivially equal pass-through).
    orig = np.asarray(Image.open(region_spec[0]).convert("RGB"), np.int16)
    assert int(np.abs(a - orig).max()) > 10


def test_recorded_kv_of_the_graph_equal_the_torch_processors(tiny_model, backend, region_spec):
    image, _ = region_spec
    h, w = _latent_hw(image)
    layers = self_attention_layers(tiny_model.unet)
    ctl = AttentionController(attend=sdpa_over_sources, bank_layers=frozenset(layers), latent_size=(w, h))
    previous = install(tiny_model.unet, ctl)
    try:
        ort_unet = backend.prepare_unet_for_edit(tiny_model, ctl)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(1, 4, h, w, generator=g)
        cond = tiny_model.encode_prompt("a photo of a city")
        ctl.mode, ctl.step = "record", 5
        eps_ort = ort_unet(z, 451, encoder_hidden_states=cond, return_dict=False)[0]
        ort_bank, ctl.bank = ctl.bank, KVBank()
        with torch.no_grad():
            eps_torch = tiny_model.unet(z, 451, encoder_hidden_states=cond, return_dict=False)[0]
        torch.testing.assert_close(eps_ort, eps_torch, rtol=0, atol=1e-5)
        assert ort_bank.steps == ctl.bank.steps == [5]
        for layer in layers:
            for a, b in zip(
                ort_bank.get(5, layer, torch.device("cpu")),
                ctl.bank.get(5, layer, torch.device("cpu")),
                strict=True,
            ):
                assert a.shape == b.shape and a.shape[0] == 1 and a.dtype == b.dtype
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        # Replace: the bank's K/V fed into the graph give the torch processors' injected ε.
        z2 = torch.randn(1, 4, h, w, generator=g)
        ctl.mode, ctl.injection = "inject", KVInjection("replace")
        eps_ort = ort_unet(z2, 451, encoder_hidden_states=cond, return_dict=False)[0]
        with torch.no_grad():
            eps_torch = tiny_model.unet(z2, 451, encoder_hidden_states=cond, return_dict=False)[0]
            ctl.mode = "plain"
            eps_plain = tiny_model.unet(z2, 451, encoder_hidden_states=cond, return_dict=False)[0]
        torch.testing.assert_close(eps_ort, eps_torch, rtol=0, atol=1e-5)
        assert float((eps_torch - eps_plain).abs().max()) > 1e-3  # the swap changes ε
        torch.testing.assert_close(
            ort_unet(z2, 451, encoder_hidden_states=cond)[0], eps_plain, rtol=0, atol=1e-5
        )
        # Concat / composite injections are refused at the call, never silently run as something else.
        ctl.mode, ctl.injection = "inject", KVInjection("concat")
        with pytest.raises(BackendUnavailableError, match="'replace' only"):
            ort_unet(z2, 451, encoder_hidden_states=cond)
    finally:
        ctl.mode, ctl.injection = "plain", None
        tiny_model.unet.set_attn_processor(previous)


def test_vae_encode_and_decode_through_onnxruntime_match_torch(tiny_model, backend, region_spec):
    image, _ = region_spec
    h, w = _latent_hw(image)
    x = torch.rand(1, 3, 8 * h, 8 * w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = backend.vae_encode(tiny_model, x)
    ref = tiny_model.encode_image(x)
    assert z.shape == ref.shape == (1, 4, h, w) and z.dtype == ref.dtype
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-5)
    img = backend.vae_decode(tiny_model, ref)
    img_ref = tiny_model.decode_latent(ref)
    assert img.shape == img_ref.shape == (1, 3, 8 * h, 8 * w)
    torch.testing.assert_close(img, img_ref, rtol=0, atol=1e-4)


def test_energy_and_concat_plans_are_refused_with_the_reason(tiny_model, backend, car_sample):
    backends = get_registry().backends
    with pytest.raises(BackendUnavailableError, match="needs gradients"):
        select_backend(backends, "onnx", BackendNeeds("cpu", "float32", True, ("concat",)))
    with pytest.raises(BackendUnavailableError, match=r"K/V modes \['concat'\] not supported"):
        select_backend(backends, "onnx", BackendNeeds("cpu", "float32", False, ("concat",)))
    with pytest.raises(BackendUnavailableError, match=r"K/V modes \['composite'\] not supported"):
        select_backend(backends, "onnx", BackendNeeds("cpu", "float32", False, ("composite",)))
    # auto never picks onnx for an energy-guided edit.
    chosen, _ = select_backend(backends, "auto", BackendNeeds("cpu", "float32", True, ("concat",)))
    assert chosen.name != "onnx"
    # A real drag (energy-guided, concat K/V) edit is refused before any work.
    image, drag = car_sample
    with pytest.raises(BackendUnavailableError, match="backend 'onnx' does not cover this edit: .*gradients"):
        Editor(tiny_model, backend="onnx").edit(image, {**drag, "sampler": {"resolution": RES, "steps": 4}})


def test_a_second_editor_reuses_the_cached_graphs(tiny_model, backend, region_spec, edits, cache_dir):
    _, first, _ = edits
    files = sorted(cache_dir.glob("*/model.onnx"))
    assert len(files) == 3 and cache_dir == onnx_cache_dir()
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temporary export folders left
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    n_exports, n_loads = len(backend.exports), len(backend.loads)
    backend.clear_sessions()  # a fresh process would start here: graphs on disk, nothing in memory
    image, spec = region_spec
    with _torch_calls(tiny_model) as calls:
        again = Editor(tiny_model, backend="onnx").edit(image, spec)
    # Everything ran in ONNX Runtime: the torch UNet and VAE were never called.
    assert calls == {"unet": 0, "vae": 0}
    assert len(backend.exports) == n_exports  # nothing re-exported
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert sorted(backend.loads[n_loads:]) == sorted(str(p) for p in files)  # loaded from the cache
    torch.testing.assert_close(again.latent, first.latent, rtol=0, atol=1e-6)


def test_cache_writes_atomically_and_keeps_nothing_of_a_failed_export(tmp_path):
    cache = GraphCache(tmp_path)
    key = GraphCache.key({"model": "m/x", "graph": "g", "a": 1})
    assert key.startswith("m_x-g-") and key != GraphCache.key({"model": "m/x", "graph": "g", "a": 2})

    def broken(folder):
        (folder / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cache.get_or_export(key, broken)
    assert list(tmp_path.iterdir()) == [] and cache.get(key) is None

    def ok(folder):
        (folder / "model.onnx").write_bytes(b"graph")
        return {"graph": "g"}

    path, meta, exported = cache.get_or_export(key, ok)
    assert exported and path == tmp_path / key / "model.onnx" and meta == {"graph": "g"}
    assert cache.get_or_export(key, broken)[2] is False  # cached: the exporter is not called again


def test_a_failing_dynamo_export_falls_back_to_torchscript_and_says_why(tiny_model, tmp_path, monkeypatch):
    real = torch.onnx.export

    def export(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo exporter failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    backend = OnnxBackend(GraphCache(tmp_path))
    with pytest.warns(UserWarning, match="TorchScript exporter instead: RuntimeError: simulated dynamo"):
        _, meta = backend.vae_graph(tiny_model, "vae_decode", (1, 4, 4))
    assert (
        meta["exporter"] == "torchscript" and "simulated dynamo exporter failure" in meta["fallback_reason"]
    )
    assert backend.exports[0]["fallback_reason"] == meta["fallback_reason"]
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        backend.vae_decode(tiny_model, z), tiny_model.decode_latent(z), rtol=0, atol=1e-4
    )


def test_availability_names_the_missing_package(monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
        assert OnnxBackend().availability() == (False, INSTALL_HINT)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxscript", None)
        ok, why = OnnxBackend().availability()
    assert not ok and "onnxscript not installed" in why


def test_a_weight_written_in_place_gives_a_new_unet_graph_not_the_stale_one(
    tiny_model, backend, region_spec, edits
):
    """diffusers' fuse_lora writes ``W.data += scale·B·A`` in place (no new tensor, no version bump): the next onnx
    edit must run the new weights, so the UNet graph is exported again (the VAE's, unchanged, are reused)."""
    import copy

    model = copy.deepcopy(tiny_model)
    image, spec = region_spec
    Editor(model, backend="onnx").edit(image, spec)  # same weights as tiny_model: the cached graphs
    w = model.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q").weight
    w.data += 0.2 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    n = len(backend.exports)
    after = Editor(model, backend="onnx").edit(image, spec)
    assert [e["graph"] for e in backend.exports[n:]] == ["unet_kv"]
    eager = Editor(model, backend="eager").edit(image, spec)
    scale = float(eager.latent.abs().max())
    assert float((after.latent - eager.latent).abs().max()) <= 1e-4 * scale
    assert float((after.latent - edits[1].latent).abs().max()) > 1e-3 * scale  # the written weight mattered
