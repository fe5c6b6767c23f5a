"""A poisoned LoRA is refused before anything is fused (issue 22, LoRA): a NaN / infinite / huge scale, a file with
non-finite weights, A / B ranks that disagree, a corrupt file; the model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.cli import app
from dragsdk.errors import ModelLoadError, SpecError
from dragsdk.models import MAX_LORA_SCALE, load_model, parse_lora_arg

from .test_families import lora_file  # noqa: F401  (fixture)
from .test_outputs import no_work  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny_editor():
    return Editor(load_model("tiny", device="cpu"))


def _weights(editor):
    return {k: v.clone() for k, v in editor.model.unet.state_dict().items()}


def _unchanged(editor, before):
    after = editor.model.unet.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e30", f"{MAX_LORA_SCALE * 2}"])
def test_a_non_finite_or_huge_scale_is_refused_when_parsed(text):
    with pytest.raises(SpecError) as err:
        parse_lora_arg(f"style.safetensors:{text}")
    assert err.value.field == "lora" and "style.safetensors" in str(err.value)


def test_the_cli_refuses_a_nan_scale_before_the_model_loads(no_work):  # noqa: F811
    res = CliRunner().invoke(
        app, ["edit", "examples/dragbench-car", "--lora", "x.safetensors:nan", "--quiet"]
    )
    assert (
        res.exit_code == 2
        and "error: lora: LoRA x.safetensors: the scale must be a finite number" in res.output
    )


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e30, True, "1"])
def test_editor_load_lora_refuses_the_scale_and_fuses_nothing(tiny_editor, lora_file, scale):  # noqa: F811
    before = _weights(tiny_editor)
    with pytest.raises(SpecError) as err:
        tiny_editor.load_lora(lora_file, scale)
    assert err.value.field == "lora"
    assert _unchanged(tiny_editor, before)


def _poisoned(lora_file, tmp_path, how):  # noqa: F811
    sd = load_file(str(lora_file))
    key = next(k for k in sorted(sd) if k.endswith(".lora.up.weight"))
    if how == "nan":
        sd[key] = sd[key].clone()
        sd[key][0, 0] = float("nan")
    elif how == "inf":
        sd[key] = sd[key].clone()
        sd[key][-1, -1] = float("inf")
    else:  # rank: B gets one more column than A has rows
        sd[key] = torch.cat([sd[key], torch.ones(sd[key].shape[0], 1)], dim=1)
    path = tmp_path / f"{how}.safetensors"
    save_file(sd, str(path))
    return path, key


@pytest.mark.parametrize(
    "how,message", [("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("rank", "disagree on the rank")]
)
def test_a_poisoned_file_is_refused_by_name_and_the_model_is_unchanged(
    tiny_editor,
    lora_file,  # noqa: F811
    tmp_path,
    how,
    message,
):
    path, key = _poisoned(lora_file, tmp_path, how)
    before = _weights(tiny_editor)
    with pytest.raises(ModelLoadError) as err:
        tiny_editor.load_lora(path, 1.0)
    assert str(path) in str(err.value) and message in str(err.value) and key in str(err.value)
    assert _unchanged(tiny_editor, before)
    assert not getattr(tiny_editor.model.unet, "peft_config", None)  # no adapter left loaded either


def test_a_corrupt_file_is_a_model_load_error(tiny_editor, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    before = _weights(tiny_editor)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        tiny_editor.load_lora(path)
    assert _unchanged(tiny_editor, before)


def test_the_clean_file_still_fuses(tiny_editor, lora_file):  # noqa: F811
    editor = Editor(load_model("tiny", device="cpu"))
    before = _weights(editor)
    editor.load_lora(lora_file, 0.5)
    assert not _unchanged(editor, before)
