import pickle

import numpy as np
import pytest

from dragsdk.errors import SpecError, UnsafePickleError
from dragsdk.io import atomic_write, load_mask, mask_to_data_url, save_image_atomic
from dragsdk.safe_pickle import restricted_load
from dragsdk.samples import load_sample

from .conftest import drag100_samples, dragbench_samples


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "meta_data.pkl"
    bad.write_bytes(pickle.dumps({"prompt": "x", "points": [[0, 0], [1, 1]], "mask": _Exploit(marker)}))
    with pytest.raises(UnsafePickleError, match="system"):
        restricted_load(bad)
    assert not marker.exists()


def test_malicious_sample_folder_is_refused(tmp_path):
    from PIL import Image

    marker = tmp_path / "pwned"
    Image.new("RGB", (64, 64)).save(tmp_path / "original_image.png")
    (tmp_path / "meta_data.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UnsafePickleError):
        load_sample(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("folder", dragbench_samples(), ids=lambda p: p.name)
def test_every_dragbench_sample_loads_through_the_restricted_unpickler(folder):
    from PIL import Image

    image_path, spec = load_sample(folder)
    w, h = Image.open(image_path).size
    mask = load_mask(spec["mask"])
    assert mask.shape == (h, w) and mask.any()
    assert len(spec["points"]) >= 1


@pytest.mark.parametrize("folder", drag100_samples(), ids=lambda p: p.name)
def test_every_drag100_sample_loads(folder):
    from PIL import Image

    image_path, spec = load_sample(folder)
    w, h = Image.open(image_path).size
    assert load_mask(spec["mask"]).shape == (h, w)
    assert spec["prompt"] == "" and len(spec["points"]) >= 1


def test_mask_data_url_round_trip_and_bad_urls():
    m = np.random.default_rng(0).random((7, 9)) > 0.5
    assert (load_mask(mask_to_data_url(m)) == m).all()
    with pytest.raises(SpecError, match="mask: a mask data URL must start"):
        load_mask("data:text/plain,hello")
    with pytest.raises(SpecError, match="mask: no mask file"):
        load_mask("/nonexistent/mask.png")


def test_atomic_write_never_overwrites_a_protected_input(tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.new("RGB", (8, 8), "red").save(src)
    before = src.read_bytes()
    with pytest.raises(SpecError, match="out: refusing to overwrite the input"):
        save_image_atomic(Image.new("RGB", (8, 8), "blue"), src, protect=(src,))
    assert src.read_bytes() == before


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    dest = tmp_path / "out.txt"

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(dest, fail)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
