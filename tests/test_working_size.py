"""The working size an edit runs at (issue 21, item 2): a mode's official size, the family default, an explicit
``sampler.resolution`` winning over both, and every planner (edit, dry run, CLI before loading) agreeing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dragsdk import Editor
from dragsdk.errors import SpecError
from dragsdk.geometry import Canvas
from dragsdk.models import peek_layout
from dragsdk.modes import working_canvas
from dragsdk.registry import get_registry

DENSE = {"mode": "region-drag", "dense_points": [[100, 100], [120, 110]], "sampler": {"steps": 4}}


def _image(w: int, h: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(h, w, 3) * 255).astype("uint8"))


def _resize_numpy_image_size(w: int, h: int, max_resolution: int) -> tuple[int, int]:
    """DragonDiffusion's ``resize_numpy_image`` (``src/utils/utils.py:7-19``) size rule, written out on its own."""
    k = math.sqrt(max_resolution * max_resolution / (h * w))
    return int(np.round(w * k / 64)) * 64, int(np.round(h * k / 64)) * 64


@pytest.fixture(scope="module")
def tiny_editor(tiny_model):
    return Editor(tiny_model)


def test_region_drag_official_edits_a_dragbench_sized_image_at_its_own_size(tiny_editor):
    dry = tiny_editor.plan(_image(512, 384), DENSE)
    assert dry.canvas.size == (512, 384)
    assert "working_size=image" in dry.plan.notes[0]


@pytest.mark.parametrize(
    "extra",
    [{"profile": "dragsdk"}, {"working_size": "model"}],
    ids=["dragsdk-profile", "working_size-model"],
)
def test_region_drag_model_working_size_is_the_family_default(tiny_editor, extra):
    dry = tiny_editor.plan(_image(512, 384), {**DENSE, **extra})
    assert dry.canvas.size == Canvas.fit((512, 384), 768).size == (896, 640)


def test_an_explicit_resolution_wins_over_the_modes_size(tiny_editor):
    spec = {**DENSE, "sampler": {"steps": 4, "resolution": 256}}
    assert tiny_editor.plan(_image(512, 384), spec).canvas.size == Canvas.fit((512, 384), 256).size


@pytest.mark.slow
def test_sides_that_are_not_multiples_of_8_are_floored_and_the_output_keeps_the_image_size(tiny_editor):
    img = _image(205, 141)
    assert tiny_editor.plan(img, DENSE).canvas.size == (200, 136)
    result = tiny_editor.edit(img, {**DENSE, "dense_points": [[50, 50], [60, 58]]})
    assert result.image.size == (205, 141)
    assert tuple(result.report.working_size) == (200, 136)


def test_dragdiffusion_official_edits_at_the_images_own_size_and_model_size_at_the_default(tiny_editor):
    spec = {"mode": "dragdiffusion", "points": [[[100, 100], [120, 110]]], "sampler": {"steps": 4}}
    assert tiny_editor.plan(_image(517, 389), spec).canvas.size == (512, 384)
    spec["profile"] = ["model-size"]
    assert tiny_editor.plan(_image(517, 389), spec).canvas.size == Canvas.fit((517, 389), 768).size


def test_dragondiffusion_modes_keep_resize_numpy_image_at_768(tiny_editor):
    mask = np.zeros((384, 512), np.uint8)
    mask[100:200, 100:200] = 1
    spec = {"mode": "move", "mask": mask, "dx": 20, "dy": 0}
    assert tiny_editor.plan(_image(512, 384), spec).canvas.size == _resize_numpy_image_size(512, 384, 768)


def test_other_families_use_their_default_under_the_official_profile():
    mode = get_registry().modes["region-drag"]
    spec = mode.spec_model.model_validate(DENSE)
    canvas = working_canvas(mode, spec, (512, 384), "sdxl", 1024)
    assert canvas is not None and canvas.size == Canvas.fit((512, 384), 1024).size


def test_a_mode_asking_for_a_size_off_the_latent_grid_is_refused_naming_the_field():
    base = get_registry().modes["region-drag"]

    class Odd(type(base)):  # type: ignore[misc]
        def working_size(self, spec, image_size, family):
            return (100, 100)

    spec = base.spec_model.model_validate(DENSE)
    with pytest.raises(SpecError, match="sampler.resolution.*multiples of 8"):
        working_canvas(Odd(), spec, (512, 384), "sd1", 768)


def test_the_cli_plans_before_loading_at_the_same_size():
    """peek_layout gives the family and default the loaded model will have, so the pre-load plan uses the mode's
    size too; unknown models plan after loading."""
    assert peek_layout("tiny") == ("sd1", 768)
    assert peek_layout("tiny-sdxl") == ("sdxl", 1024)
    assert peek_layout("no/such-model-in-the-cache") is None
    mode = get_registry().modes["region-drag"]
    spec = mode.spec_model.model_validate(DENSE)
    family, resolution = peek_layout("tiny") or (None, None)
    canvas = working_canvas(mode, spec, (512, 384), family, resolution)
    assert canvas is not None and canvas.size == (512, 384)
    assert working_canvas(mode, spec, (512, 384), None, None) is None
