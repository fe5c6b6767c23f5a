"""Model families (SD 1.x, SD 2.x v-prediction, SDXL): the adapter against diffusers' own pipelines and schedulers,
every mode on every family, folders saved by diffusers, embedding (from_pipe, LoRA), and clear errors."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.cli import app
from dragsdk.errors import ModelLoadError, ModelNotFoundError
from dragsdk.families import LAYOUTS, EpsilonUNet, detect_family
from dragsdk.inversion import ddim_step
from dragsdk.models import SDXL_SCHEDULER_CONFIG, ModelBundle, load_model

from .conftest import ROOT
from .test_modes import _mode_specs as _object_specs

FAMILIES = {"sd1": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}
FAST = {"steps": 4, "resolution": 64}
_MODELS: dict[str, ModelBundle] = {}


def _model(name: str) -> ModelBundle:
    if name not in _MODELS:
        _MODELS[name] = load_model(name, device="cpu")
    return _MODELS[name]


def _pipe(bundle: ModelBundle, scheduler=None):
    """A diffusers pipeline around the bundle's modules (shared), as a host application would hold one."""
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    parts = {
        "vae": bundle.vae,
        "text_encoder": bundle.text_encoder,
        "tokenizer": bundle.tokenizer,
        "unet": bundle.unet,
    }
    if bundle.family == "sdxl":
        sched = scheduler or EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
        return StableDiffusionXLPipeline(
            **parts, scheduler=sched, text_encoder_2=bundle.text_encoder_2, tokenizer_2=bundle.tokenizer_2
        )
    sched = scheduler or DDIMScheduler.from_config(bundle.scheduler.config)
    return StableDiffusionPipeline(
        **parts, scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _diffusers_unet_kwargs(pipe, prompt: str, z: torch.Tensor) -> dict:
    """What diffusers' own pipeline passes to the UNet for ``prompt`` at the latent ``z`` (no CFG)."""
    if not hasattr(pipe, "text_encoder_2"):
        emb, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        return {"encoder_hidden_states": emb}
    emb, _, pooled, _ = pipe.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    h, w = z.shape[-2] * 8, z.shape[-1] * 8
    ids = pipe._get_add_time_ids(
        (h, w),
        (0, 0),
        (h, w),
        emb.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    return {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}


# -- the adapter ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_to_epsilon_recovers_the_noise_of_each_prediction_type(pred):
    bundle = _model("tiny-sd2")
    adapter = type(bundle.adapter).__new__(type(bundle.adapter))
    adapter.__dict__.update(bundle.adapter.__dict__, prediction_type=pred)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in (1, 261, 981):
        a = float(bundle.scheduler.alphas_cumprod[t])
        z = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        out = {"epsilon": eps, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0, "sample": x0}[pred]
        torch.testing.assert_close(adapter.to_epsilon(out, z, torch.tensor([t])), eps, rtol=1e-4, atol=1e-4)


def test_a_v_prediction_ddim_step_equals_diffusers_scheduler_step():
    from diffusers import DDIMScheduler

    bundle = _model("tiny-sd2")
    sched = DDIMScheduler.from_config(bundle.scheduler.config)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t, t_prev = int(sched.timesteps[3]), int(sched.timesteps[4])
    ac = bundle.scheduler.alphas_cumprod
    ours = ddim_step(z, bundle.adapter.to_epsilon(v, z, t), float(ac[t]), float(ac[t_prev]))
    torch.testing.assert_close(ours, sched.step(v, t, z).prev_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_prompt_conditioning_is_what_diffusers_pipelines_pass_to_the_unet(family):
    bundle = _model(FAMILIES[family])
    pipe = _pipe(bundle)
    z = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    seen: list[dict] = []
    hook = bundle.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            EpsilonUNet(bundle.unet, bundle.adapter)(
                z, 500, encoder_hidden_states=bundle.encode_prompt("a red car")
            )
    finally:
        hook.remove()
    want = _diffusers_unet_kwargs(pipe, "a red car", z)
    torch.testing.assert_close(
        seen[0]["encoder_hidden_states"], want["encoder_hidden_states"].expand(2, -1, -1)
    )
    if family == "sdxl":  # pooled embedding of the second encoder and the canvas size (64×96 px) as time ids
        for key in ("text_embeds", "time_ids"):
            torch.testing.assert_close(
                seen[0]["added_cond_kwargs"][key], want["added_cond_kwargs"][key].expand(2, -1)
            )
        assert seen[0]["added_cond_kwargs"]["time_ids"][0].tolist() == [64, 96, 0, 0, 64, 96]
        assert not bundle.encode_prompt("", negative=True).any()  # force_zeros_for_empty_prompt
        assert bundle.encode_prompt("", negative=False).any()
    else:
        assert "added_cond_kwargs" not in seen[0]


def test_tiny_models_have_the_structure_of_the_real_families():
    sd2, xl = _model("tiny-sd2"), _model("tiny-sdxl")
    assert sd2.unet.config.use_linear_projection and sd2.unet.config.upcast_attention
    assert sd2.adapter.prediction_type == "v_prediction" and sd2.text_encoder.config.hidden_act == "gelu"
    assert [type(b).__name__ for b in xl.unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2
    assert [type(b).__name__ for b in xl.unet.up_blocks] == ["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"]
    assert [
        len(a.transformer_blocks)
        for a in (xl.unet.down_blocks[1].attentions[0], xl.unet.down_blocks[2].attentions[0])
    ] == [2, 3]
    assert xl.unet.config.addition_embed_type == "text_time" and xl.unet.config.use_linear_projection
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.vae.config.scaling_factor == 0.13025 and xl.vae.config.force_upcast
    assert (
        type(xl.scheduler).__name__ == "DDIMScheduler" and xl.scheduler.config.timestep_spacing == "leading"
    )


def test_sdxl_features_and_kv_layers_sit_at_the_resolutions_of_the_sd15_choice():
    sd1, xl = _model("tiny"), _model("tiny-sdxl")
    assert LAYOUTS["sd1"].feature_blocks == (1, 2) and LAYOUTS["sdxl"].feature_blocks == (0, 1)
    shapes = {}
    for b in (sd1, xl):
        from dragsdk.features import FeatureTap

        tap = FeatureTap(b.unet, b.adapter.feature_blocks)
        z = torch.zeros(1, 4, 16, 16)
        with torch.no_grad(), tap.capture(stop=True):
            b.unet_call()(z, 500, encoder_hidden_states=b.encode_prompt(""))
        shapes[b.family] = [tuple(f.shape[-2:]) for f in tap.features()]
        tap.remove()
    assert shapes["sd1"] == shapes["sdxl"] == [(8, 8), (16, 16)]
    layers = xl.adapter.bank_layers()
    assert len(layers) == 3 * 3 + 3 * 2 and all(n.endswith(".attn1") for n in layers)
    assert {n.split(".")[1] for n in layers} == {"0", "1"}
    assert len(sd1.adapter.bank_layers()) == 9
    assert {FAMILIES[f]: _model(FAMILIES[f]).default_resolution for f in FAMILIES} == {
        "tiny": 768,
        "tiny-sd2": 768,
        "tiny-sdxl": 1024,
    }


# -- every mode on every family ------------------------------------------------------------------------------------
def _mode_specs(image_spec):
    spec = image_spec
    mask, prompt = spec["mask"], spec["prompt"]
    same = [[100, 100], [160, 100], [160, 160], [100, 160]]
    return {
        "drag": {**spec, "sampler": FAST},
        **_object_specs(mask, prompt, FAST),
        "region-drag": {
            "mode": "region-drag",
            "prompt": prompt,
            "sampler": FAST,
            "polygons": [{"handle": same, "target": [[x + 40, y + 20] for x, y in same]}],
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drag", "move", "resize", "appearance", "paste", "region-drag"])
def test_every_mode_edits_on_every_family_with_the_same_unet_evaluations(car_sample, mode):
    image, sample_spec = car_sample
    spec = _mode_specs(sample_spec)[mode]
    reports = {}
    for family, name in FAMILIES.items():
        r = Editor(_model(name)).edit(image, spec)
        arr = np.asarray(r.image)
        assert r.image.size == (512, 384) and np.isfinite(arr).all() and arr.std() > 0
        assert torch.isfinite(r.latent).all() and r.report.model == name
        reports[family] = r.report
    counts = {f: r.unet_evaluations for f, r in reports.items()}
    assert counts["sd1"] == counts["sd2"] == counts["sdxl"], counts


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_guidance_lowers_the_energy_at_every_guided_step_on_each_family(car_sample, family):
    image, spec = car_sample
    r = Editor(_model(FAMILIES[family]), probe_energy_after=True).edit(
        image, {**spec, "energy_scale": 0.5, "sampler": {"steps": 6, "resolution": 128}}
    )
    assert r.report.energies
    for e in r.report.energies:
        assert e.after < e.total, (e.step, e.total, e.after)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_null_edit_equals_ddim_inversion_and_sampling_computed_by_diffusers(car_sample, family):
    """No point moved, no energy, CFG 1, no K/V, no SDE: exactly diffusers' DDIMInverseScheduler then DDIMScheduler
    steps, with diffusers' own prompt / time-id conditioning. Sampling takes the raw UNet output (v for SD 2.x).
    Inversion takes ε = √ᾱ_t·v + √(1−ᾱ_t)·z with ᾱ of the timestep the UNet is called at (the ε-model the sampler
    uses); diffusers' inverse scheduler would convert v with ᾱ of the step's start instead."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    bundle = _model(FAMILIES[family])
    image, spec = car_sample
    null = {
        **spec,
        "points": [[p[0], p[0]] for p in spec["points"]],
        "energy_scale": 0.0,
        "sampler": {**FAST, "guidance_scale": 1.0, "kv_start": 1.0, "sde": {"enabled": False}},
    }
    editor = Editor(bundle)
    r = editor.edit(image, null)
    inversion = editor.invert(image, null)  # the inversion the edit started from (cached: no UNet call)
    assert inversion.reused
    z = z0 = inversion.latents[-1]
    kw = _diffusers_unet_kwargs(_pipe(bundle), spec["prompt"], z)
    cfg = bundle.scheduler.config
    inverse = DDIMInverseScheduler.from_config({**cfg, "prediction_type": "epsilon"})
    forward = DDIMScheduler.from_config(cfg)
    ac = bundle.scheduler.alphas_cumprod

    def eps(out, z, t):
        a = float(ac[int(t)])
        return a**0.5 * out + (1 - a) ** 0.5 * z if family == "sd2" else out

    inverse.set_timesteps(FAST["steps"])
    forward.set_timesteps(FAST["steps"])
    with torch.no_grad():
        for t in inverse.timesteps:
            z = inverse.step(eps(bundle.unet(z, t, **kw).sample, z, t), t, z).prev_sample
        torch.testing.assert_close(z, inversion.latents[0], rtol=1e-4, atol=1e-4)
        for t in forward.timesteps:
            z = forward.step(bundle.unet(z, t, **kw).sample, t, z).prev_sample
    torch.testing.assert_close(r.latent, z, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(r.latent, z0)


# -- folders saved by diffusers' own pipelines, edited from the CLI ------------------------------------------------
@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """Random-weight SD 2.x (v-prediction, DDIM scheduler) and SDXL (Euler scheduler) folders written by diffusers'
    ``save_pretrained`` of pipelines built from the tiny components."""
    root = tmp_path_factory.mktemp("families")
    folders = {}
    for family in ("sd2", "sdxl"):
        bundle = load_model(FAMILIES[family], device="cpu")
        _pipe(bundle).save_pretrained(root / family)
        folders[family] = (root / family, bundle)
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_a_folder_saved_by_diffusers_edits_from_the_cli(saved_folders, tmp_path, family):
    from .conftest import EXAMPLE_SAMPLE

    folder, source = saved_folders[family]
    assert detect_family(folder) == family
    loaded = load_model(folder, device="cpu")
    assert loaded.adapter.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert torch.equal(loaded.unet.conv_in.weight, source.unet.conv_in.weight)
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE),
            "--model",
            str(folder),
            "--steps",
            "4",
            "--resolution",
            "64",
            "--out",
            str(tmp_path / "e.png"),
            "--report",
            str(tmp_path / "r.json"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["model"] == str(folder) and rep["unet_evaluations"]["backward"] > 0
    assert (tmp_path / "e.png").stat().st_size > 0


# -- clear errors --------------------------------------------------------------------------------------------------
def _write(folder, name, data):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "cls, match",
    [
        ("StableDiffusion3Pipeline", "StableDiffusion3Pipeline: not supported: it is a transformer"),
        ("FluxPipeline", "FluxPipeline: not supported: it is a transformer"),
        ("KandinskyPipeline", "KandinskyPipeline: not supported: supported pipelines are"),
    ],
)
def test_unsupported_pipelines_are_named(tmp_path, cls, match):
    _write(
        tmp_path,
        "model_index.json",
        {"_class_name": cls, "transformer": ["diffusers", "X"]}
        if "Kand" not in cls
        else {"_class_name": cls},
    )
    with pytest.raises(ModelLoadError, match=match):
        load_model(tmp_path, device="cpu")


def test_an_sdxl_refiner_is_refused_naming_the_missing_text_encoder(tmp_path):
    _write(
        tmp_path,
        "model_index.json",
        {
            "_class_name": "StableDiffusionXLImg2ImgPipeline",
            "text_encoder": [None, None],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        },
    )
    with pytest.raises(ModelLoadError, match="without text_encoder \\(the SDXL refiner\\)"):
        load_model(tmp_path, device="cpu")


def test_a_broken_folder_says_which_component_is_broken(saved_folders, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(saved_folders["sd2"][0], folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="has a sd2 model_index but its unet/ cannot be loaded"):
        load_model(folder, device="cpu")


def test_a_unet_of_another_architecture_is_refused(saved_folders, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(saved_folders["sdxl"][0], folder)
    shutil.rmtree(folder / "unet")
    shutil.copytree(saved_folders["sd2"][0] / "unet", folder / "unet")
    with pytest.raises(ModelLoadError, match="says StableDiffusionXLPipeline but the UNet has no text_time"):
        load_model(folder, device="cpu")
    sd2 = _model("tiny-sd2")
    with pytest.raises(
        ModelLoadError, match="cross_attention_dim is 32 but the sd1 text encoder\\(s\\) give 64"
    ):
        xl = _model("tiny-sdxl")
        ModelBundle(
            sd2.unet, xl.vae, xl.text_encoder, xl.tokenizer, xl.scheduler, "x", "sd1", xl.text_encoder_2
        )


def test_a_unet_without_decoder_attention_or_with_an_unknown_prediction_type_is_refused():
    from diffusers import UNet2DConditionModel

    from dragsdk.families import ddim_from_config

    tiny = _model("tiny")
    plain = UNet2DConditionModel(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        cross_attention_dim=32,
        norm_num_groups=8,
        layers_per_block=1,
    )
    with pytest.raises(ModelLoadError, match="have no self-attention layer to record / inject K/V"):
        ModelBundle(plain, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler, "plain")
    flow = ddim_from_config({**tiny.scheduler.config, "prediction_type": "flow_prediction"})
    with pytest.raises(ModelLoadError, match="prediction_type is 'flow_prediction'; supported: epsilon"):
        ModelBundle(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, flow, "flow")


def test_single_file_checkpoints_of_another_layout_or_without_configs_are_refused(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "none.safetensors", device="cpu")
    save_file({"conv_in.weight": torch.zeros(1)}, tmp_path / "diffusers_keys.safetensors")
    with pytest.raises(
        ModelLoadError, match="not an SD 1.x / 2.x / SDXL checkpoint in the original \\(LDM\\) key"
    ):
        load_model(tmp_path / "diffusers_keys.safetensors", device="cpu")
    # An LDM-layout file whose configs diffusers would fetch from the hub: offline, one clear line.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "cond_stage_model.transformer.x": torch.zeros(1),
        },
        tmp_path / "ldm.safetensors",
    )
    with pytest.raises(ModelLoadError, match="could not be converted by diffusers' from_single_file"):
        load_model(tmp_path / "ldm.safetensors", device="cpu")


# -- embedding: from_pipe, LoRA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_from_pipe_shares_modules_and_leaves_the_host_pipeline_working(car_sample, family):
    bundle = load_model(FAMILIES[family], device="cpu")
    pipe = _pipe(bundle)

    def host_run():
        return pipe(
            "a car",
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="latent",
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        ).images

    before = host_run()
    processors, scheduler = dict(pipe.unet.attn_processors), pipe.scheduler
    config, ptr = dict(scheduler.config), pipe.unet.conv_in.weight.data_ptr()
    editor = Editor.from_pipe(pipe)
    assert editor.model.unet is pipe.unet and editor.model.vae is pipe.vae and editor.model.family == family
    assert editor.model.text_encoder is pipe.text_encoder and editor.model.scheduler is not pipe.scheduler
    image, spec = car_sample
    editor.edit(image, {**spec, "sampler": FAST})
    assert torch.equal(host_run(), before)
    assert pipe.unet.attn_processors == processors and pipe.scheduler is scheduler
    assert dict(pipe.scheduler.config) == config and pipe.unet.conv_in.weight.data_ptr() == ptr


def test_from_pipe_refuses_a_pipeline_without_text_encoder():
    bundle = _model("tiny-sdxl")
    pipe = _pipe(bundle)
    pipe.text_encoder = None
    with pytest.raises(ModelLoadError, match="has no text_encoder"):
        Editor.from_pipe(pipe)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """A LoRA made here with peft on the tiny UNet (random A and B) and saved by diffusers."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = load_model("tiny", device="cpu").unet
    unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    return folder / "pytorch_lora_weights.safetensors"


@pytest.mark.slow
def test_lora_fuses_scale_times_alpha_over_rank_b_a_and_the_edit_runs(lora_file, car_sample, tmp_path):
    from safetensors.torch import load_file

    from dragsdk.models import parse_lora_arg

    sd = load_file(str(lora_file))
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    a, b = sd[f"unet.{name}.lora.down.weight"], sd[f"unet.{name}.lora.up.weight"]  # A, B
    deltas = {}
    for scale in (0.5, 1.0):
        editor = Editor(load_model("tiny", device="cpu"))
        w0 = editor.model.unet.get_submodule(name).weight.clone()
        editor.load_lora(lora_file, scale)
        w = editor.model.unet.get_submodule(name).weight
        deltas[scale] = w - w0
        assert (
            type(editor.model.unet.get_submodule(name)).__name__ == "Linear"
        )  # fused, no adapter layers left
    assert not any("alpha" in k for k in sd)  # the file stores no α: diffusers takes α = r
    torch.testing.assert_close(deltas[1.0], b @ a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(deltas[0.5], 0.5 * deltas[1.0], rtol=1e-4, atol=1e-6)
    assert parse_lora_arg(f"{lora_file}:0.5") == (str(lora_file), 0.5)
    assert parse_lora_arg(str(lora_file)) == (str(lora_file), 1.0)
    image, _ = car_sample
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(ROOT / "examples" / "dragbench-car"),
            "--lora",
            f"{lora_file}:0.5",
            "--steps",
            "4",
            "--resolution",
            "64",
            "--out",
            str(tmp_path / "e.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output


def test_lora_errors_name_the_file(lora_file, tmp_path):
    editor = Editor(load_model("tiny-sdxl", device="cpu"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        editor.load_lora(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file(
        {
            "unet.nothing.here.lora_A.weight": torch.zeros(4, 8),
            "unet.nothing.here.lora_B.weight": torch.zeros(8, 4),
        },
        tmp_path / "nothing.safetensors",
    )
    with pytest.raises(ModelLoadError, match="nothing.safetensors"):
        editor.load_lora(tmp_path / "nothing.safetensors")
    res = CliRunner().invoke(
        app, ["edit", str(ROOT / "examples" / "dragbench-car"), "--lora", "x.safetensors:abc"]
    )
    assert res.exit_code != 0 and "lora: expected PATH[:SCALE]" in res.output


def test_a_float16_sdxl_vae_runs_in_float32_as_force_upcast_says():
    bundle = load_model("tiny-sdxl", device="cpu", torch_dtype=torch.float16)
    assert bundle.dtype == torch.float16 and bundle.vae.dtype == torch.float32  # loaded: kept in float32
    assert bundle.run_vae() is bundle.vae
    bundle.vae.to(
        torch.float16
    )  # a host pipeline's float16 VAE (from_pipe): one float32 copy, the original untouched
    vae = bundle.run_vae()
    assert vae is not bundle.vae and vae.dtype == torch.float32 and bundle.vae.dtype == torch.float16
    assert bundle.run_vae() is vae
    sd1 = load_model("tiny", device="cpu", torch_dtype=torch.float16)
    assert sd1.vae.dtype == torch.float16 and sd1.run_vae() is sd1.vae


def test_dift_runs_through_the_adapter_on_each_family_at_a_sixteenth_of_the_image():
    from dragsdk.eval.dift import DIFT

    img = torch.rand(1, 3, 128, 96) * 2 - 1
    shapes = {}
    for family, name in FAMILIES.items():
        d = DIFT(_model(name), ensemble=1)
        shapes[family] = d(img, "a car").shape
        assert d.settings()["up_block"] == LAYOUTS[family].feature_blocks[0]
    assert shapes["sd1"] == shapes["sd2"] == shapes["sdxl"] == (1, 64, 8, 6)
