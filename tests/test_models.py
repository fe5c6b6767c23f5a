import pytest

from dragsdk.errors import ModelLoadError, ModelNotFoundError
from dragsdk.models import load_model


def test_tiny_model_has_the_sd15_structure(tiny_model):
    from dragsdk.attention import decoder_self_attention_layers

    unet = tiny_model.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    layers = decoder_self_attention_layers(unet)
    assert len(layers) == 9
    assert layers[0] == "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert tiny_model.vae_scale_factor == 8


def test_absent_local_folder_gives_the_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*diffusers layout"):
        load_model(str(tmp_path / "no-such-model"))


def test_incomplete_folder_gives_the_clear_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(
        ModelLoadError, match="exists but has no unet/config.json; expected a diffusers layout"
    ):
        load_model(str(tmp_path))


def test_uncached_hub_id_offline_gives_the_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        ModelNotFoundError,
        match="HF_HUB_OFFLINE is set.*Provide a Stable Diffusion model in diffusers layout",
    ):
        load_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
