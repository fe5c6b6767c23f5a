import numpy as np
import pytest

from dragsdk.geometry import Canvas


@pytest.mark.parametrize("size", [(512, 288), (512, 384), (512, 913), (640, 480), (100, 700)])
def test_fit_keeps_area_aspect_and_multiples_of_64(size):
    c = Canvas.fit(size, 768)
    assert c.size[0] % 64 == 0 and c.size[1] % 64 == 0
    assert abs(c.size[0] * c.size[1] - 768 * 768) / (768 * 768) < 0.25
    assert abs(c.size[0] / c.size[1] - size[0] / size[1]) / (size[0] / size[1]) < 0.2
    assert c.latent_size == (c.size[0] // 8, c.size[1] // 8)
    assert c.feature_size == (c.size[0] // 4, c.size[1] // 4)


def test_cells_clip_x_by_width_and_y_by_height_on_non_square_images():
    c = Canvas((512, 288), (768, 448))  # feature grid 192×112
    assert c.to_cell((511, 287), "feature") == (191, 111)
    assert c.to_cell((0, 0), "feature") == (0, 0)
    # A point near the right edge of a wide image keeps its column (the official code clipped x by the height).
    assert c.to_cell((500, 10), "feature")[0] > 112


def test_patches_shift_inward_and_keep_their_size():
    c = Canvas((512, 384), (512, 384))
    rows, cols = c.patch((0, 383), "feature", 1)
    assert len(rows) == 9 and rows.min() >= 0 and rows.max() == 95 and cols.min() == 0
    rows, cols = c.patch((256, 192), "latent", 1)
    assert sorted(set(rows.tolist())) == [23, 24, 25] and sorted(set(cols.tolist())) == [31, 32, 33]


def test_mask_to_grid_checks_size_and_resamples():
    c = Canvas((512, 384), (512, 384))
    m = np.zeros((384, 512), np.uint8)
    m[:192, :256] = 1
    g = c.mask_to_grid(m, "latent")
    assert g.shape == (48, 64) and g[:24, :32].all() and not g[24:, :].any() and not g[:, 32:].any()
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) = \(384, 512\)"):
        c.mask_to_grid(np.zeros((512, 512)), "latent")
