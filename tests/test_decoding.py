"""Images and masks decoded as users mean them (issue 12 item 5): EXIF orientation, 16-bit and float data scaled,
animated images refused, one mask rule for files, data URLs, PIL images and arrays, sizes capped."""

import base64
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dragsdk.errors import SpecError
from dragsdk.io import MASK_THRESHOLD, load_image, load_mask, mask_to_data_url, size_note


def _quadrants(w: int = 40, h: int = 20) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return Image.fromarray(a)


@pytest.mark.parametrize(
    "orientation,transpose",
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)],
)
def test_exif_orientation_is_applied_to_images_and_masks(tmp_path, orientation, transpose):
    img = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "photo.png", exif=exif)
    shown = np.asarray(img.transpose(transpose))
    assert (np.asarray(load_image(tmp_path / "photo.png")) == shown).all()
    m = np.zeros((20, 40), np.uint8)
    m[:, :5] = 255
    Image.fromarray(m).save(tmp_path / "mask.png", exif=exif)
    assert (
        load_mask(tmp_path / "mask.png") == (np.asarray(Image.fromarray(m).transpose(transpose)) > 127)
    ).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG (Pillow mode I;16 or I)
    got = np.asarray(load_image(tmp_path / "deep.png"))[..., 0].astype(int)
    assert np.abs(got - ramp / 257).max() <= 1
    assert got[0, 128] not in (0, 255)  # mid-grey stays mid-grey


@pytest.mark.parametrize(
    "image,expected",
    [
        (Image.fromarray(np.full((4, 4), 0.5, np.float32), "F"), 128),  # F in [0, 1]
        (Image.fromarray(np.full((4, 4), 32896, np.int32), "I"), 128),  # I, 16-bit range
        (Image.fromarray(np.full((4, 4), 32896, np.uint16)), 128),  # I;16
    ],
)
def test_high_depth_pil_images_are_scaled(image, expected):
    assert np.abs(np.asarray(load_image(image)).astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "array,expected",
    [
        (np.full((4, 4, 3), 0.5, np.float32), 128),  # float in [0, 1]
        (np.full((4, 4, 3), 0.5, np.float64), 128),
        (np.full((4, 4, 3), 200.0, np.float32), 200),  # float already in [0, 255]
        (np.full((4, 4, 3), 65535, np.uint16), 255),  # integers over 255: 16-bit
        (np.full((4, 4, 3), 257 * 100, np.int32), 100),
        (np.full((4, 4), 100, np.uint8), 100),  # greyscale
        (np.full((4, 4, 4), 100, np.uint8), 100),  # RGBA: alpha dropped
    ],
)
def test_arrays_are_scaled_not_wrapped(array, expected):
    got = np.asarray(load_image(array))
    assert got.shape == (4, 4, 3) and np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "array,match",
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), -0.5, np.float32), r"\[0, 1\]"),
        (np.full((4, 4, 3), 70000, np.int32), "65535"),
        (np.zeros((4, 4, 5), np.uint8), r"\(H, W, 3\)"),
    ],
)
def test_arrays_that_cannot_be_scaled_are_refused(array, match):
    with pytest.raises(SpecError, match=match):
        load_image(array)


def test_animated_images_are_refused_unless_a_frame_is_chosen(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(SpecError, match="animated.*2 frames"):
        load_image(tmp_path / "anim.gif")
    assert tuple(np.asarray(load_image(tmp_path / "anim.gif", frame=1))[0, 0]) == (0, 0, 255)
    with pytest.raises(SpecError, match="frame 5 does not exist"):
        load_image(tmp_path / "anim.gif", frame=5)


# -- masks -----------------------------------------------------------------------------------------------------


def _as_sources(img: Image.Image, tmp_path):
    """The same mask as a file, a data URL, a PIL image and an array."""
    path = tmp_path / "m.png"
    img.save(path)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return {"file": path, "data_url": url, "pil": Image.open(path), "array": np.asarray(img)}


def _brush_layer() -> tuple[Image.Image, np.ndarray]:
    """Red strokes on a transparent layer (how a brush editor exports): inside = the strokes."""
    a = np.zeros((10, 12, 4), np.uint8)
    a[2:6, 3:9] = (255, 0, 0, 255)
    a[7, 1] = (255, 255, 255, 40)  # a faint, mostly transparent white speck: outside
    return Image.fromarray(a, "RGBA"), (a[..., 3] > 127)


@pytest.mark.parametrize("source", ["file", "data_url", "pil", "array"])
def test_alpha_is_honoured_the_same_way_for_every_kind_of_mask(tmp_path, source):
    img, expected = _brush_layer()
    assert (load_mask(_as_sources(img, tmp_path)[source]) == expected).all()


@pytest.mark.parametrize("source", ["file", "data_url", "pil", "array"])
def test_a_zero_one_mask_png_is_read_as_dragbench_writes_it(tmp_path, source):
    m = np.zeros((10, 12), np.uint8)
    m[3:7, 2:5] = 1
    assert (load_mask(_as_sources(Image.fromarray(m), tmp_path)[source]) == (m == 1)).all()


@pytest.mark.parametrize("source", ["file", "data_url", "pil", "array"])
def test_soft_masks_use_one_threshold_everywhere(tmp_path, source):
    soft = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (3, 1))  # 0..240 in steps of 16
    got = load_mask(_as_sources(Image.fromarray(soft), tmp_path)[source])
    assert (got == (soft / 255 > MASK_THRESHOLD)).all()
    f = soft.astype(np.float32) / 255
    assert (load_mask(f) == got).all()  # a float array in [0, 1] agrees with the 8-bit file


def test_an_opaque_rgba_mask_is_read_by_its_values(tmp_path):
    a = np.zeros((6, 6, 4), np.uint8)
    a[..., 3] = 255
    a[1:3, 1:3, :3] = 255
    assert (load_mask(Image.fromarray(a, "RGBA")) == (a[..., 0] == 255)).all()


def test_mask_data_urls_are_written_by_the_same_rule(tmp_path):
    img, expected = _brush_layer()
    assert (load_mask(mask_to_data_url(img)) == expected).all()
    assert (load_mask(mask_to_data_url(np.asarray(img))) == expected).all()


# -- sizes -----------------------------------------------------------------------------------------------------


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that declares ``w``×``h`` pixels (a decompression bomb as far as its header goes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "w,h", [(10_000, 10_000), (40_000, 40_000)]
)  # over our cap; over Pillow's bomb limit too
@pytest.mark.parametrize("loader", [load_image, load_mask])
def test_oversized_images_and_masks_are_refused_from_the_header(tmp_path, w, h, loader):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(w, h))
    with pytest.raises(SpecError, match="megapixel"):
        loader(tmp_path / "bomb.png")


def test_the_size_cap_is_configurable_by_environment_and_argument(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    monkeypatch.setenv("DRAGSDK_MAX_MEGAPIXELS", "0.005")
    with pytest.raises(SpecError, match=r"0.01 megapixels\), more than the 0.005-megapixel limit"):
        load_image(tmp_path / "small.png")
    with pytest.raises(SpecError, match="0.005-megapixel"):
        load_mask(np.zeros((100, 100), bool))
    assert load_image(tmp_path / "small.png", max_megapixels=1).size == (100, 100)
    monkeypatch.setenv("DRAGSDK_MAX_MEGAPIXELS", "lots")
    with pytest.raises(SpecError, match="DRAGSDK_MAX_MEGAPIXELS: expected a positive number"):
        load_image(tmp_path / "small.png")


def test_size_note_only_for_inputs_far_larger_than_the_working_size():
    assert size_note((512, 512), (512, 512)) is None
    assert size_note((1000, 1000), (768, 768)) is None
    note = size_note((4000, 3000), (768, 576))
    assert note is not None and "4000×3000" in note and "27×" in note and "768×576" in note


@pytest.mark.slow
def test_an_edit_of_a_far_larger_input_says_so_in_its_report(editor):
    img = Image.fromarray((np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    spec = {"mode": "drag", "points": [[[200, 200], [230, 210]]], "sampler": {"steps": 2, "resolution": 128}}
    notes = editor.edit(img, spec).report.notes
    assert any("512×512" in n and "128×128" in n for n in notes)
