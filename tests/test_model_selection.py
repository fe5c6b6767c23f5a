"""Model selection errors of issue 22: the name's source ($DRAGSDK_MODEL), a file that is not a checkpoint, a
file:// URL, a missing --model-config folder, and local paths failing at once instead of hub retries."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from dragsdk import Editor
from dragsdk.cli import app
from dragsdk.errors import ModelLoadError, ModelNotFoundError
from dragsdk.models import load_model, local_path_of_url, looks_like_local_path

from .conftest import EXAMPLE_SAMPLE


def test_a_missing_model_named_by_the_variable_says_so_in_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_MODEL", str(tmp_path / "nowhere"))
    res = CliRunner().invoke(app, ["edit", str(EXAMPLE_SAMPLE), "--out", str(tmp_path / "o.png"), "--quiet"])
    assert res.exit_code == 2 and "from $DRAGSDK_MODEL" in res.output, res.output
    typed = CliRunner().invoke(
        app,
        [
            "edit",
            str(EXAMPLE_SAMPLE),
            "--out",
            str(tmp_path / "o.png"),
            "--quiet",
            "--model",
            str(tmp_path / "other"),
        ],
    )
    assert typed.exit_code == 2 and "DRAGSDK_MODEL" not in typed.output and "does not exist" in typed.output


def test_a_missing_model_named_by_the_variable_says_so_in_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=r"from \$DRAGSDK_MODEL"):
        Editor()
    with pytest.raises(ModelNotFoundError) as err:
        Editor(str(tmp_path / "nowhere"))
    assert "DRAGSDK_MODEL" not in str(err.value)


def test_an_existing_file_without_a_checkpoint_suffix_is_not_called_missing(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError) as err:
        load_model(weights, device="cpu")
    assert "is a file but not a single-file checkpoint" in str(err.value) and "does not exist" not in str(
        err.value
    )


def test_a_file_url_is_the_path_it_names(tmp_path):
    folder = tmp_path / "my models" / "sd"
    assert local_path_of_url(folder.as_uri()) == str(folder)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(folder.as_uri(), device="cpu")
    assert f"model folder {folder} does not exist" in str(err.value) and "file:" not in str(err.value)


def test_a_missing_model_config_folder_is_not_a_hub_id(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="single_file_config folder .* does not exist"):
        load_model(ckpt, device="cpu", single_file_config=tmp_path / "missing-config")
    assert time.monotonic() - start < 10  # no hub round trips


@pytest.mark.parametrize(
    "name,local",
    [
        ("./sd", True),
        ("/models/sd", True),
        ("~/sd", True),
        ("a/b/c", True),
        ("C:\\\\models", True),
        ("owner/name", False),
        ("tiny", False),
    ],
)
def test_local_paths_are_told_from_hub_ids(name, local):
    assert looks_like_local_path(name) is local


def test_a_missing_local_folder_fails_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="not looked up on the hub"):
        load_model(str(tmp_path / "a" / "b"), device="cpu")
    assert time.monotonic() - start < 10
