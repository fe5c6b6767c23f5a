from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Tests never read or write the user's cache (measured backend table, exported ONNX graphs).
os.environ.setdefault("DRAGSDK_CACHE_DIR", tempfile.mkdtemp(prefix="dragsdk-test-cache-"))
# Tests edit with the random-weight `tiny` model unless they name another: named here, through the variable the CLI
# and Editor() read (without it the default is real SD 1.5 weights; test_default_model.py checks that path).
os.environ["DRAGSDK_MODEL"] = "tiny"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Triton fixes interpreter mode when kernels are defined (first import): without a CUDA device the kernels
# must run in the CPU interpreter, so set it before anything imports dragsdk.kernels.
if os.environ.get("TRITON_INTERPRET") is None and not (shutil.which("nvidia-smi") and _cuda_available()):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLE_SAMPLE = ROOT / "examples" / "dragbench-car"


def dragbench_samples() -> list[Path]:
    found = sorted(p.parent for p in SHARED_DATA.glob("DragBench/*/*/meta_data.pkl"))
    return found or [EXAMPLE_SAMPLE]


def drag100_samples() -> list[Path]:
    return sorted(p.parent for p in SHARED_DATA.glob("Drag100/*/points.json"))


@pytest.fixture(scope="session")
def tiny_model():
    from dragsdk.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def editor(tiny_model):
    from dragsdk import Editor

    return Editor(tiny_model, probe_energy_after=True)


@pytest.fixture(scope="session")
def car_sample():
    """A real non-square DragBench photograph (512×384, two pairs) and its drag spec."""
    from dragsdk.samples import load_sample

    folder = SHARED_DATA / "DragBench/building_city_view/YAN_2023-09-15-2231-44"
    return load_sample(folder if folder.is_dir() else EXAMPLE_SAMPLE)


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test: with several, reductions split differently from call to call and
    two identical edits can differ in the last bits (~1e-7), which tests of bit-exact equality must exclude."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
