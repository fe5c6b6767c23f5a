"""Embedding errors of issue 22: from_pipe with parts of the wrong kind or of mixed families, and IP-Adapter
inputs (a corrupt file, an image encoder of the wrong type, a scale out of range) are named dragsdk errors."""

from __future__ import annotations

import copy

import pytest
import torch

from dragsdk import Editor
from dragsdk.errors import ArgumentTypeError, ModelLoadError, SpecError
from dragsdk.image_prompt import host_ip_adapter, load_ip_adapter
from dragsdk.models import load_model

from .test_families import _pipe
from .test_image_prompt import ip_folder  # noqa: F401  (fixture)


@pytest.fixture
def pipe():
    return _pipe(load_model("tiny", device="cpu"))


def test_from_pipe_refuses_a_unet_that_is_not_a_unet(pipe):
    pipe.unet = torch.nn.Linear(2, 2)
    with pytest.raises(ModelLoadError, match=r"\.unet is a Linear, expected diffusers' UNet2DConditionModel"):
        Editor.from_pipe(pipe)


def test_from_pipe_refuses_a_scheduler_without_config(pipe):
    from types import SimpleNamespace

    pipe = SimpleNamespace(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=object(),
    )  # an object with the components, as from_pipe allows
    with pytest.raises(ModelLoadError, match="scheduler .object. has no diffusers config"):
        Editor.from_pipe(pipe)


def test_from_pipe_refuses_a_text_encoder_of_another_family(pipe):
    other = load_model("tiny-sd2", device="cpu").text_encoder
    if other.config.hidden_size == pipe.unet.config.cross_attention_dim:  # widths must differ for this check
        other = copy.deepcopy(other)
        other.config.hidden_size = pipe.unet.config.cross_attention_dim + 8
    pipe.text_encoder = other
    with pytest.raises(ModelLoadError, match="cross_attention_dim .* different families"):
        Editor.from_pipe(pipe)


def test_a_corrupt_ip_adapter_file_is_a_model_load_error(tiny_model, tmp_path):
    (tmp_path / "ip.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_ip_adapter(tiny_model.unet, tmp_path, "ip.safetensors")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -0.5, 1e30, "0.5", True])
def test_an_ip_adapter_scale_out_of_range_is_refused(tiny_model, ip_folder, scale):  # noqa: F811
    with pytest.raises(SpecError) as err:
        load_ip_adapter(tiny_model.unet, ip_folder, "ip.safetensors", scale=scale)
    assert err.value.field == "scale"


@pytest.mark.parametrize("encoder", [42, {"a": 1}, torch.nn.Linear(2, 2).weight])
def test_an_image_encoder_of_the_wrong_type_is_named(tiny_model, ip_folder, encoder):  # noqa: F811
    with pytest.raises(ArgumentTypeError) as err:
        load_ip_adapter(tiny_model.unet, ip_folder, "ip.safetensors", image_encoder=encoder)
    assert err.value.field == "image_encoder"


def test_a_host_image_encoder_of_the_wrong_type_is_named(tiny_model, ip_folder):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    bundle = load_model("tiny", device="cpu")
    host = _pipe(bundle)
    assert isinstance(host, StableDiffusionPipeline)
    host.load_ip_adapter(
        str(ip_folder), subfolder="", weight_name="ip.safetensors", image_encoder_folder=None
    )
    with pytest.raises(ArgumentTypeError) as err:
        host_ip_adapter(host.unet, "not an encoder")
    assert err.value.field == "image_encoder"
