"""Image prompt (IP-Adapter) through diffusers' loader, with a tiny random adapter built here."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dragsdk import Editor
from dragsdk.attention import AttentionController, KVProcessor, install
from dragsdk.errors import ModelLoadError, ModelNotFoundError
from dragsdk.image_prompt import ImagePromptPlan, load_ip_adapter
from dragsdk.trace import read_trace

# Nearly every test edits with an image prompt (3-30 s each): make test-fast skips the module.
pytestmark = pytest.mark.slow

TOKENS = 4  # a plain IP-Adapter (ImageProjection, 4 tokens)
STEPS = 22  # the DiffEditor window 10–19 plus steps on both sides


@pytest.fixture(scope="module")
def ip_folder(tmp_path_factory, tiny_model):
    """A random IP-Adapter for the tiny UNet in diffusers' layout: ``ip.safetensors`` (``image_proj.*`` /
    ``ip_adapter.{1,3,..}.to_{k,v}_ip.weight``) and ``image_encoder/`` (a tiny CLIPVisionModelWithProjection)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("ip")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=12,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder / "image_encoder")
    unet = tiny_model.unet
    cross = int(unet.config.cross_attention_dim)
    sd = {
        "image_proj.proj.weight": torch.randn(TOKENS * cross, 12) * 0.3,
        "image_proj.proj.bias": torch.randn(TOKENS * cross) * 0.1,
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            inner = attn.to_k.weight.shape[0]
            sd[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(inner, cross) * 0.5
            sd[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(inner, cross) * 0.5
            key += 2
    save_file(sd, str(folder / "ip.safetensors"))
    return folder


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _spec(**sampler):
    return {
        "mode": "drag",
        "prompt": "a photo",
        "points": [{"handle": [20, 20], "target": [28, 24]}],
        "sampler": {"steps": STEPS, "resolution": 64, **sampler},
    }


def test_image_prompt_matches_diffusers_ip_adapter_processor(tiny_model, ip_folder, image):
    """dragsdk's processors with the image prompt give the UNet output of diffusers' own
    ``_load_ip_adapter_weights`` + ``IPAdapterAttnProcessor2_0`` + ``added_cond_kwargs={"image_embeds": ...}``,
    and loading leaves the model's UNet untouched."""
    unet = tiny_model.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    adapter = load_ip_adapter(unet, ip_folder, "ip.safetensors")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before and unet.encoder_hid_proj is None
    assert len(adapter.processors) == sum(k.endswith("attn2.processor") for k in before)

    ref = copy.deepcopy(unet)
    pixels = adapter._pixels(image)
    emb = adapter.image_encoder(pixels).image_embeds
    ref._load_ip_adapter_weights([_state_dict(ip_folder)], low_cpu_mem_usage=False)
    for p in ref.attn_processors.values():
        if hasattr(p, "scale"):
            p.scale = [0.7]
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(
        2, 77, int(unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        expected = ref(
            z,
            500,
            encoder_hidden_states=text,
            added_cond_kwargs={"image_embeds": [torch.cat([torch.zeros_like(emb), emb])[:, None]]},
        ).sample

        def attend(q, sources, scale):
            return F.scaled_dot_product_attention(q, sources[0].k, sources[0].v, scale=scale)

        ctl = AttentionController(attend=attend, bank_layers=frozenset())
        ctl.image_prompt = adapter.state(image, 0.7, z.device, z.dtype)
        previous = install(unet, ctl)
        try:
            ctl.image_prompt.active = True
            got = unet(z, 500, encoder_hidden_states=text).sample
            ctl.image_prompt.active = False
            plain = unet(z, 500, encoder_hidden_states=text).sample
        finally:
            unet.set_attn_processor(previous)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the image term is not negligible


def _state_dict(folder):
    from safetensors.torch import load_file

    flat = load_file(str(folder / "ip.safetensors"))
    return {
        h: {k.partition(".")[2]: v for k, v in flat.items() if k.startswith(h + ".")}
        for h in ("image_proj", "ip_adapter")
    }


def test_without_adapter_the_report_says_the_image_prompt_was_not_used(tiny_model, image):
    r = Editor(tiny_model).edit(image, _spec(steps=10))
    assert r.report.image_prompt is None
    assert any("image prompt" in n and "no adapter loaded" in n and "0.1" in n for n in r.report.notes)


def test_image_prompt_changes_the_edit_only_inside_its_step_window(
    tiny_model, ip_folder, image, tmp_path, monkeypatch, one_thread
):
    """DiffEditor window: steps 10–19 only. Per-step latents before step 10 equal the text-only run's; the image
    term is applied at exactly the steps 10..19 (the sampling ε calls, both CFG rows)."""
    plain = Editor(tiny_model)
    r0 = plain.edit(image, _spec(), trace=tmp_path / "none.npz")
    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors")
    seen: list[int] = []
    original = KVProcessor.cross_extra

    def spy(self, attn, qh, out):
        ip = self.controller.image_prompt
        if ip is not None and ip.active:
            seen.append(self.controller.step)
        return original(self, attn, qh, out)

    monkeypatch.setattr(KVProcessor, "cross_extra", spy)
    r1 = editor.edit(image, _spec(), trace=tmp_path / "ip.npz")
    assert sorted(set(seen)) == list(range(10, 20))
    assert r1.report.image_prompt and r1.report.image_prompt.endswith("ip.safetensors")
    assert any("scale 0.1" in n and "10–19" in n for n in r1.report.notes)
    a0, _ = read_trace(tmp_path / "none.npz")
    a1, _ = read_trace(tmp_path / "ip.npz")
    before = a0["step"] < 10
    assert np.array_equal(a0["latent_after"][before], a1["latent_after"][before])
    at10 = list(a0["step"]).index(10)
    assert np.abs(a0["latent_after"][at10] - a1["latent_after"][at10]).max() > 0
    assert (r1.latent - r0.latent).abs().max() > 1e-4


def test_image_prompt_at_scale_zero_equals_no_adapter(tiny_model, ip_folder, image, one_thread):
    r0 = Editor(tiny_model).edit(image, _spec(steps=12))
    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors", scale=0.0)
    r1 = editor.edit(image, _spec(steps=12))
    assert torch.equal(r0.latent, r1.latent)


def test_region_drag_uses_the_image_prompt_at_scale_half_in_inversion_and_sampling(
    tiny_model, ip_folder, image
):
    spec = {
        "mode": "region-drag",
        "prompt": "a photo",
        "polygons": [
            {
                "handle": [[10, 10], [30, 10], [30, 30], [10, 30]],
                "target": [[20, 14], [40, 14], [40, 34], [20, 34]],
            }
        ],
        "sampler": {"steps": 10, "resolution": 64},
    }
    r0 = Editor(tiny_model).edit(image, spec)
    assert r0.plan.image_prompt == ImagePromptPlan(scale=0.5, inversion=True)
    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors")
    r1 = editor.edit(image, spec)
    assert r1.report.image_prompt is not None and (r1.latent - r0.latent).abs().max() > 1e-4


def test_load_ip_adapter_errors_name_what_is_missing(tiny_model, ip_folder, tmp_path):
    with pytest.raises(ModelNotFoundError, match="absent.safetensors"):
        load_ip_adapter(tiny_model.unet, ip_folder, "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match="image_proj"):
        load_ip_adapter(tiny_model.unet, tmp_path, "bad.safetensors")


def test_appearance_image_prompt_encodes_the_reference_image(tiny_model, ip_folder, tmp_path, monkeypatch):
    """Official appearance / paste: the IP branch carries the reference image's tokens (the last 64 of 2×64)."""
    from pathlib import Path

    from dragsdk.image_prompt import ImagePromptAdapter

    ref_dir = Path(__file__).parents[1] / "examples" / "reference-cat"
    base = Image.open(ref_dir / "cat.jpg").convert("RGB")
    rng = np.random.default_rng(1)
    reference = Image.fromarray(rng.integers(0, 255, (base.size[1], base.size[0], 3), dtype=np.uint8))
    reference.save(tmp_path / "ref.png")
    spec = {
        "mode": "appearance",
        "prompt": "a cat",
        "mask": str(ref_dir / "cat_mask.png"),
        "reference": str(tmp_path / "ref.png"),
        "reference_mask": str(ref_dir / "cat_mask.png"),
        "sampler": {"steps": 4, "resolution": 64},
    }
    encoded: list[Image.Image] = []
    original = ImagePromptAdapter.state

    def spy(self, image, *args):
        encoded.append(image)
        return original(self, image, *args)

    monkeypatch.setattr(ImagePromptAdapter, "state", spy)
    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors")
    r = editor.edit(base, spec)
    assert r.plan.image_prompt is not None and r.plan.image_prompt.source == "reference"
    assert len(encoded) == 1 and np.array_equal(np.asarray(encoded[0]), np.asarray(reference))


@pytest.mark.parametrize("mode, host", [("drag", False), ("region-drag", False), ("drag", True)])
def test_plan_counts_the_image_encoder_forward_exactly_as_the_edit_reports_it(
    tiny_model, ip_folder, image, mode, host
):
    """One image-encoder forward per edit with an image prompt (inversion reused or not), counted on its own line,
    not as a UNet evaluation; the dry run predicts it and the UNet evaluations exactly."""
    from dragsdk.io import mask_to_data_url

    box = np.zeros((64, 64), bool)
    box[8:40, 8:40] = True
    spec = (
        {**_spec(steps=6), "mask": mask_to_data_url(box)}
        if mode == "drag"
        else {
            "mode": "region-drag",
            "prompt": "a photo",
            "sampler": {"steps": 6, "resolution": 64},
            "polygons": [
                {
                    "handle": [[10, 10], [30, 10], [30, 30], [10, 30]],
                    "target": [[20, 14], [40, 14], [40, 34], [20, 34]],
                }
            ],
        }
    )
    plain = Editor(tiny_model)
    dry0, r0 = plain.plan(image, spec), plain.edit(image, spec)
    assert dry0.cost.image_encoder == r0.report.image_encoder_forwards == 0
    pipe = _host_pipe(tiny_model, ip_folder) if host else None
    if pipe is not None:  # the host's own adapter, composed
        editor = Editor.from_pipe(pipe)
    else:
        editor = Editor(tiny_model)
        editor.load_ip_adapter(ip_folder, "ip.safetensors")
    calls: list[int] = []
    hook = editor.ip_adapter.image_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for cached in (False, True):
            calls.clear()
            dry = editor.plan(image, spec)
            assert not calls and dry.inversion_cached is cached
            r = editor.edit(image, spec)
            assert r.report.inversion_reused is cached
            assert len(calls) == r.report.image_encoder_forwards == dry.cost.image_encoder == 1
            assert (
                r.report.unet_evaluations == dry.cost.to_dict() and "image_encoder" not in dry.cost.to_dict()
            )
    finally:
        hook.remove()
    if pipe is not None:  # the host unloads its adapter: the plan, like the edit, runs text-only
        pipe.unload_ip_adapter()
        assert (
            editor.plan(image, spec).cost.image_encoder
            == editor.edit(image, spec).report.image_encoder_forwards
            == 0
        )


# -- a host's IP-Adapter (diffusers' load_ip_adapter on the host pipeline) is composed, not bypassed ---------------
def _host_pipe(tiny_model, ip_folder):
    """A host StableDiffusionPipeline (its own UNet copy) with the adapter loaded by diffusers' own loader."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_model.vae,
        text_encoder=tiny_model.text_encoder,
        tokenizer=tiny_model.tokenizer,
        unet=copy.deepcopy(tiny_model.unet),
        scheduler=copy.deepcopy(tiny_model.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_ip_adapter(
        str(ip_folder), subfolder="", weight_name="ip.safetensors", image_encoder_folder="image_encoder"
    )
    return pipe


def test_a_host_ip_adapter_is_composed_as_the_image_prompt_and_left_in_place(
    tiny_model, ip_folder, image, one_thread
):
    """Editor.from_pipe on a pipeline holding an IP-Adapter edits exactly as dragsdk's own copy of the same adapter
    (bit for bit), and the host's processors, image projection and pipeline work unchanged afterwards."""
    pipe = _host_pipe(tiny_model, ip_folder)
    before, projection = dict(pipe.unet.attn_processors), pipe.unet.encoder_hid_proj
    host = Editor.from_pipe(pipe).edit(image, _spec())
    own = Editor(tiny_model)
    own.load_ip_adapter(ip_folder, "ip.safetensors")
    mine = own.edit(image, _spec())
    plain = Editor(tiny_model).edit(image, _spec())
    assert torch.equal(host.latent, mine.latent) and not torch.equal(host.latent, plain.latent)
    assert host.report.image_prompt.startswith("host IP-Adapter")
    assert pipe.unet.attn_processors == before and pipe.unet.encoder_hid_proj is projection
    out = pipe(
        "a photo", ip_adapter_image=image, num_inference_steps=2, height=64, width=64, output_type="latent"
    )
    assert torch.isfinite(out.images).all()  # the host pipeline still runs with its adapter


def test_an_unloaded_host_adapter_is_dropped_and_an_unusable_one_refused(
    tiny_model, ip_folder, image, one_thread
):
    from dragsdk.errors import HostAttentionError

    pipe = _host_pipe(tiny_model, ip_folder)
    editor = Editor.from_pipe(pipe)
    assert editor.ip_adapter is not None and editor.ip_adapter.host
    pipe.unload_ip_adapter()  # the host changes its mind: the next edit runs text-only, as a fresh editor would
    after = editor.edit(image, _spec(steps=12))
    assert after.report.image_prompt is None and editor.ip_adapter is None
    assert torch.equal(after.latent, Editor(tiny_model).edit(image, _spec(steps=12)).latent)

    pipe = _host_pipe(tiny_model, ip_folder)
    pipe.register_modules(image_encoder=None)  # loaded with image_encoder_folder=None: nothing to encode with
    editor = Editor.from_pipe(pipe)
    with pytest.raises(
        HostAttentionError, match="IPAdapterAttnProcessor2_0 on .* layers.*use_host_ip_adapter"
    ):
        editor.edit(image, _spec(steps=12))
    with pytest.raises(ModelLoadError, match="no image encoder"):
        editor.use_host_ip_adapter(None)
    with pytest.raises(ModelLoadError, match="no IP-Adapter processors"):
        Editor(tiny_model).use_host_ip_adapter(object())


def test_a_backend_that_cannot_compute_the_image_prompt_is_skipped_or_refused(
    tiny_model, ip_folder, image, tmp_path, monkeypatch
):
    """onnx's exported graphs have no IP-Adapter inputs: with an adapter loaded, a region drag (which the onnx
    backend otherwise runs) never goes to it, even when the table measures it fastest; named, it is refused."""
    pytest.importorskip("onnxruntime")
    from dragsdk.backends.select import model_key, save_entry, table_key
    from dragsdk.errors import BackendUnavailableError

    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))
    spec = {
        "mode": "region-drag",
        "prompt": "a photo",
        "polygons": [
            {
                "handle": [[10, 10], [30, 10], [30, 30], [10, 30]],
                "target": [[20, 14], [40, 14], [40, 34], [20, 34]],
            }
        ],
        "sampler": {"steps": 10, "resolution": 64},
    }
    text_only = Editor(tiny_model)
    size = text_only.plan(image, spec).canvas.size
    save_entry(
        table_key("cpu", model_key(tiny_model), size, "float32"),
        {"results": {"onnx": {"region_step_s": 0.001}, "eager": {"region_step_s": 1.0}}},
    )
    assert text_only.plan(image, spec).backend == "onnx"  # what the table says without an image prompt
    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors")
    dry = editor.plan(image, spec)
    assert dry.backend != "onnx" and "onnx (the edit uses an image prompt" in dry.backend_reason
    named = Editor(tiny_model, backend="onnx")
    named.load_ip_adapter(ip_folder, "ip.safetensors")
    with pytest.raises(
        BackendUnavailableError, match="does not cover this edit: the edit uses an image prompt"
    ):
        named.plan(image, spec)


@pytest.mark.parametrize("mode", ["appearance", "paste"])
def test_official_text_context_holds_the_adapters_tokens_of_the_base_image(
    tiny_model, ip_folder, monkeypatch, one_thread, mode
):
    """With an IP-Adapter the official appearance / paste text cross-attention sees the adapter's tokens of the
    **base** image after the 77 text tokens (rows [zero image, image] in the CFG batch, the image row in the
    roll-back), while the IP branch encodes the reference; the dry run counts both image-encoder forwards."""
    from .builtin_specs import IMAGE
    from .test_reference_context import SAMPLER, TEXT, _spec, text_contexts

    editor = Editor(tiny_model)
    editor.load_ip_adapter(ip_folder, "ip.safetensors")
    base = Image.open(IMAGE).convert("RGB")
    want = editor.ip_adapter.tokens(base)
    assert want.shape == (2, TOKENS, int(tiny_model.unet.config.cross_attention_dim))
    spec = _spec(mode, SAMPLER)
    dry = editor.plan(base, spec)
    with text_contexts(monkeypatch) as seen:
        r = editor.edit(base, spec)
    assert seen["cfg"] and seen["rollback"]
    for c in seen["cfg"]:
        assert c.shape[1] == TEXT + TOKENS and torch.allclose(c[:, TEXT:], want, atol=1e-6)
    for c in seen["rollback"]:
        assert c.shape[1] == TEXT + TOKENS and torch.allclose(c[:, TEXT:], want[1:], atol=1e-6)
    assert r.report.image_encoder_forwards == dry.cost.image_encoder == 2
    only_text = {**spec, "profile": ["text-only-context"]}
    assert editor.plan(base, only_text).cost.image_encoder == 1
