"""Single-file checkpoints (original LDM / SGM key layout) loaded through diffusers' ``from_single_file``: written
from the tiny models by :mod:`tests.ldm_layout`, loaded offline with a diffusers config folder, compared weight by
weight and edit by edit with the same model loaded from that folder."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.cli import app
from dragsdk.errors import ModelLoadError
from dragsdk.models import ModelBundle, load_model

from .conftest import EXAMPLE_SAMPLE
from .ldm_layout import ldm_state_dict, save_single_file
from .test_families import _pipe

FAST = {"steps": 3, "resolution": 64}
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _sdxl_with_real_width_order() -> ModelBundle:
    """``tiny-sdxl`` with its second (OpenCLIP) text encoder wider than the first (48 vs 32 channels), as in SDXL
    base (1280 vs 768): diffusers' reader tells the two encoders apart by width."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    xl = load_model("tiny-sdxl", device="cpu")
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**{**xl.text_encoder_2.config.to_dict(), "hidden_size": 48, "intermediate_size": 96})
    )
    cfg = dict(xl.unet.config)
    cfg.update(
        cross_attention_dim=32 + 48,
        projection_class_embeddings_input_dim=6 * cfg["addition_time_embed_dim"] + te2.config.projection_dim,
    )
    unet = UNet2DConditionModel.from_config(cfg)
    for m in (unet, te2):
        m.eval().requires_grad_(False)
    return ModelBundle(
        unet,
        xl.vae,
        xl.text_encoder,
        xl.tokenizer,
        xl.scheduler,
        "tiny-sdxl-wide",
        "sdxl",
        te2,
        xl.tokenizer_2,
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per family: (the source bundle, its diffusers folder written by save_pretrained, a .safetensors file)."""
    root = tmp_path_factory.mktemp("single_file")
    out = {}
    for family, bundle in (
        ("sd1", load_model("tiny", device="cpu")),
        ("sd2", load_model("tiny-sd2", device="cpu")),
        ("sdxl", _sdxl_with_real_width_order()),
    ):
        _pipe(bundle).save_pretrained(root / family)
        out[family] = (bundle, root / family, save_single_file(bundle, root / f"{family}.safetensors"))
    return out


def _assert_same_weights(a: ModelBundle, b: ModelBundle) -> None:
    for part in PARTS:
        ma, mb = getattr(a, part), getattr(b, part)
        assert (ma is None) == (mb is None), part
        if ma is None:
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), part
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not differ, (part, differ[:3])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_single_file_checkpoint_loads_offline_with_every_weight_of_its_folder(
    checkpoints, family, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, folder, file = checkpoints[family]
    loaded = load_model(file, device="cpu", single_file_config=folder)
    assert loaded.family == family and loaded.name == str(file)
    assert loaded.adapter.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    _assert_same_weights(loaded, load_model(folder, device="cpu"))
    _assert_same_weights(loaded, source)


def test_a_ckpt_file_with_a_state_dict_loads_like_the_safetensors_file(checkpoints, tmp_path):
    source, folder, _ = checkpoints["sd1"]
    ckpt = save_single_file(source, tmp_path / "sd1.ckpt")
    assert set(torch.load(ckpt, weights_only=True)) == {"state_dict"}
    _assert_same_weights(load_model(ckpt, device="cpu", single_file_config=folder), source)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_an_edit_with_the_single_file_model_equals_the_folder_models_bit_for_bit(
    checkpoints, car_sample, family, one_thread
):
    _, folder, file = checkpoints[family]
    image, spec = car_sample
    spec = {**spec, "sampler": FAST}
    results = [
        Editor(load_model(m, device="cpu", single_file_config=c), backend="eager").edit(image, spec)
        for m, c in ((file, folder), (folder, None))
    ]
    assert torch.equal(results[0].latent, results[1].latent)
    assert np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
    assert results[0].report.model == str(file)


def test_an_sdxl_file_whose_text_encoders_have_one_width_is_refused_before_diffusers_mixes_them(tmp_path):
    """diffusers (``create_diffusers_clip_model_from_ldm``) gives ``text_encoder_2`` the CLIP ViT-L weights of
    ``embedders.0`` when their widths match, leaving its projection unloaded: ``tiny-sdxl`` (32 and 32)."""
    xl = load_model("tiny-sdxl", device="cpu")
    _pipe(xl).save_pretrained(tmp_path / "folder")
    file = save_single_file(xl, tmp_path / "xl.safetensors")
    with pytest.raises(
        ModelLoadError, match="two text encoders are both 32 wide: diffusers' from_single_file picks"
    ):
        load_model(file, device="cpu", single_file_config=tmp_path / "folder")


@pytest.mark.parametrize(
    "key, match",
    [
        (
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "left 1 text_encoder weight\\(s\\) unloaded \\(e.g. \\['final_layer_norm.weight'\\]\\)",
        ),
        (
            "first_stage_model.decoder.conv_out.weight",
            "does not hold every weight of the configured SD 1.x / 2.x arch",
        ),
    ],
)
def test_a_checkpoint_missing_a_weight_is_refused(checkpoints, tmp_path, key, match):
    from safetensors.torch import save_file

    source, folder, _ = checkpoints["sd1"]
    sd = ldm_state_dict(source)
    del sd[key]
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(ModelLoadError, match=match):
        load_model(tmp_path / "partial.safetensors", device="cpu", single_file_config=folder)


def test_offline_without_a_config_folder_the_error_names_the_repository_and_the_option(
    checkpoints, monkeypatch, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        ModelLoadError,
        match="configs of the hub repository stable-diffusion-v1-5/stable-diffusion-v1-5"
        " \\(HF_HUB_OFFLINE is set\\): pass single_file_config=FOLDER \\(CLI: "
        "--model-config FOLDER\\)",
    ):
        load_model(checkpoints["sd1"][2], device="cpu")


def test_a_config_folder_of_another_architecture_is_refused(checkpoints):
    with pytest.raises(
        ModelLoadError,
        match="single_file_config .*sdxl holds an sdxl model but checkpoint .*sd1"
        ".safetensors has SD 1.x / 2.x keys",
    ):
        load_model(checkpoints["sd1"][2], device="cpu", single_file_config=checkpoints["sdxl"][1])
    # SD 2.x configs (linear projections) for an SD 1.x file (conv projections): diffusers' shape error, with a hint
    with pytest.raises(
        ModelLoadError, match="expected shape .*Does single_file_config .*sd2 describe this checkpoint"
    ):
        load_model(checkpoints["sd1"][2], device="cpu", single_file_config=checkpoints["sd2"][1])


def test_a_config_folder_is_refused_for_a_model_that_is_not_a_single_file(checkpoints):
    with pytest.raises(
        ModelLoadError, match="single_file_config is for a .safetensors / .ckpt checkpoint; 'tiny'"
    ):
        load_model("tiny", device="cpu", single_file_config=checkpoints["sd1"][1])


@pytest.mark.slow
def test_the_cli_edits_with_a_single_file_model_and_a_config_folder(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, folder, file = checkpoints["sd2"]
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE),
            "--model",
            str(file),
            "--model-config",
            str(folder),
            "--steps",
            "3",
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
    assert rep["model"] == str(file) and rep["unet_evaluations"]["backward"] > 0
    res = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE),
            "--model",
            "tiny",
            "--model-config",
            str(folder),
            "--out",
            str(tmp_path / "x.png"),
        ],
    )
    assert res.exit_code != 0 and "--model-config" in res.output and "tiny" in res.output


@pytest.mark.slow
def test_every_command_that_loads_a_model_takes_the_config_folder(checkpoints, tmp_path, monkeypatch):
    """`mask`, `bench` and `backends --bench` load a single-file model offline as `edit` does."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))
    _, folder, file = checkpoints["sd1"]
    image = EXAMPLE_SAMPLE / "original_image.png"
    model = ["--model", str(file), "--model-config", str(folder)]
    res = CliRunner().invoke(
        app, ["mask", str(image), "131", "264", "--out", str(tmp_path / "m.png"), "--json", *model]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["area_px"] > 0
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(EXAMPLE_SAMPLE.parent),
            "--out",
            str(tmp_path / "run"),
            "--limit",
            "1",
            "--steps",
            "2",
            "--resolution",
            "64",
            "--metrics",
            "psnr_ssim",
            "--quiet",
            *model,
        ],
    )
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "run" / "summary.json").read_text())["settings"]
    assert settings["model"] == str(file) and settings["model_config"] == str(folder)
    res = CliRunner().invoke(
        app,
        [
            "backends",
            "--bench",
            "--only",
            "eager",
            "--resolution",
            "64",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--json",
            *model,
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app,
        [
            "mask",
            str(image),
            "131",
            "264",
            "--out",
            str(tmp_path / "n.png"),
            "--model",
            "tiny",
            "--model-config",
            str(folder),
        ],
    )
    assert res.exit_code == 2 and "single_file_config" in res.output and not (tmp_path / "n.png").exists()
