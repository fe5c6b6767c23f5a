"""The browser editor's bookkeeping (dragsdk.ui.state): no Gradio, no browser."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dragsdk.io import load_mask
from dragsdk.registry import get_registry
from dragsdk.ui.state import (
    MAX_DISPLAY_SIDE,
    MODES,
    REGION_INPUTS,
    Inputs,
    Session,
    UIError,
    add_click,
    build_spec,
    clear,
    control_for_field,
    describe_clicks,
    display_size,
    display_to_image,
    editor_background,
    editor_mask,
    find_samples,
    format_report,
    mask_from_layers,
    parse_setting,
    placement_preview,
    polygon_pairs,
    portable_spec,
    pydantic_message,
    render_overlay,
    sampler_defaults,
    shift_to,
    undo,
)

from .conftest import EXAMPLE_SAMPLE


def _session(size=(512, 384)) -> Session:
    s = Session()
    s.set_image(Image.new("RGB", size, (90, 120, 150)), "test")
    return s


def _box(size, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((size[1], size[0]), bool)
    m[y0:y1, x0:x1] = True
    return m


def _validate(spec: dict) -> object:
    """The spec as the editor would take it: validated by its mode's pydantic model."""
    return get_registry().spec_models()[spec["mode"]].model_validate(spec)


# -- coordinates --------------------------------------------------------------------------------------------------
def test_display_size_keeps_small_images_and_caps_large_ones():
    assert display_size((512, 384)) == (512, 384)
    assert display_size((MAX_DISPLAY_SIDE, 10)) == (MAX_DISPLAY_SIDE, 10)
    assert display_size((4000, 3000)) == (1024, 768)
    assert display_size((3000, 4000)) == (768, 1024)
    with pytest.raises(ValueError):
        display_size((0, 10))


@pytest.mark.parametrize("image", [(512, 384), (4000, 3000), (1500, 700), (33, 2000)])
def test_clicks_map_to_the_image_pixel_under_them_whatever_the_displayed_size(image):
    disp = display_size(image)
    kx, ky = image[0] / disp[0], image[1] / disp[1]
    for fx, fy in [(0.0, 0.0), (0.25, 0.5), (0.5, 0.75), (0.999, 0.999)]:
        xd, yd = fx * disp[0], fy * disp[1]
        x, y = display_to_image((xd, yd), disp, image)
        assert abs(x - xd * kx) <= 1 and abs(y - yd * ky) <= 1
        assert 0 <= x < image[0] and 0 <= y < image[1]
    # the same size: identity; the far edge (which rounding can report) is the last pixel
    assert display_to_image((131, 264), (512, 384), (512, 384)) == (131, 264)
    assert display_to_image(disp, disp, image) == (image[0] - 1, image[1] - 1)


def test_a_scaled_display_maps_clicks_to_original_pixels():
    assert display_to_image((512, 384), (1024, 768), (4000, 3000)) == (2000, 1500)
    assert display_to_image((10.4, 20.6), (1024, 768), (2048, 1536)) == (20, 41)


@pytest.mark.parametrize("xy", [None, (None, 3), (float("nan"), 2), (-1, 5), (5, 385), (513, 0), (1, 2, 3)])
def test_a_click_off_the_image_is_a_points_message(xy):
    with pytest.raises(UIError) as e:
        display_to_image(xy, (512, 384), (512, 384))
    assert e.value.control == "points"
    assert "image" in e.value.message


# -- clicks -------------------------------------------------------------------------------------------------------
def test_drag_clicks_alternate_handle_and_target_with_undo_and_clear():
    s = _session()
    assert "target" in add_click(s, "drag", (131, 264))
    assert "1 pair" in add_click(s, "drag", (200, 313))
    add_click(s, "drag", (359, 180))
    assert "now click its target" in describe_clicks(s, "drag")
    add_click(s, "drag", (323, 140))
    assert s.points("drag") == [(131, 264), (200, 313), (359, 180), (323, 140)]
    assert undo(s, "drag") == (323, 140)
    assert s.points("drag") == [(131, 264), (200, 313), (359, 180)]
    clear(s, "drag")
    assert s.points("drag") == [] and undo(s, "drag") is None
    add_click(s, "drag", (1, 1))
    add_click(s, "move", (2, 2))
    clear(s)
    assert s.points("drag") == [] and s.points("move") == []


def test_clicks_are_kept_per_mode_and_a_new_image_drops_them():
    s = _session()
    add_click(s, "drag", (10, 10))
    add_click(s, "move", (20, 20))
    add_click(s, "move", (30, 40))
    assert s.points("drag") == [(10, 10)] and s.points("move") == [(30, 40)]  # move keeps the last click only
    s.set_image(Image.new("RGB", (64, 64)))
    assert s.points("drag") == [] and s.points("move") == []


def test_clicks_need_an_image_and_a_mode_that_takes_them():
    with pytest.raises(UIError) as e:
        add_click(Session(), "drag", (1, 1))
    assert e.value.control == "image"
    s = _session()
    with pytest.raises(UIError) as e:
        add_click(s, "appearance", (1, 1))
    assert e.value.control == "points"
    with pytest.raises(UIError, match="polygon vertices"):
        add_click(s, "region-drag", (1, 1), region_input=REGION_INPUTS[0])


def test_polygon_clicks_group_into_handle_then_target_polygons():
    s = _session()
    pts = [
        (100, 240),
        (160, 240),
        (160, 290),
        (100, 290),
        (170, 280),
        (230, 280),
        (230, 330),
        (170, 330),
        (5, 5),
    ]
    for p in pts:
        add_click(s, "region-drag", p, vertices=4, region_input=REGION_INPUTS[1])
    full, cur = polygon_pairs(s.points("region-drag"), 4)
    assert full == [(pts[:4], pts[4:8])] and cur == [(5, 5)]
    full3, cur3 = polygon_pairs(pts, 3)
    assert full3 == [(pts[:3], pts[3:6])] and cur3 == pts[6:]
    with pytest.raises(UIError):
        polygon_pairs(pts, 5)


# -- masks --------------------------------------------------------------------------------------------------------
def test_brushed_layers_become_a_mask_of_the_image_size():
    size = (512, 384)
    layer = np.zeros((384, 512, 4), np.uint8)
    layer[100:150, 200:300] = (230, 40, 40, 255)
    m = mask_from_layers([layer], size)
    assert m is not None and m.shape == (384, 512) and m.sum() == 50 * 100
    # a canvas the browser exported at half size is resampled to the image
    half = np.zeros((192, 256, 4), np.uint8)
    half[50:75, 100:150, 3] = 200
    m2 = mask_from_layers([half], size)
    assert m2.shape == (384, 512) and m2[110, 250] and not m2[10, 10]
    # nothing brushed: no mask; several layers: their union
    assert mask_from_layers([np.zeros((384, 512, 4), np.uint8)], size) is None
    assert mask_from_layers(None, size) is None
    assert mask_from_layers([layer, half], size).sum() == (m | m2).sum()
    value = {"background": np.full((384, 512, 4), 255, np.uint8), "layers": [layer], "composite": None}
    assert np.array_equal(editor_mask(value, size), m)
    assert editor_mask(None, size) is None
    assert editor_background(value).size == size and editor_background(None) is None


# -- specs --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_drag_spec_has_the_clicked_points_in_image_pixels_and_the_mask():
    s = _session((4000, 3000))  # displayed at 1024×768
    add_click(s, "drag", (256, 192))
    add_click(s, "drag", (512, 384))
    mask = _box((4000, 3000), 800, 600, 2400, 1800)
    spec = build_spec("drag", s, Inputs(prompt=" a car ", mask=mask, steps="4", resolution=128))
    assert spec["points"] == [{"handle": [1000, 750], "target": [2000, 1500]}]
    assert spec["prompt"] == "a car" and spec["sampler"] == {"steps": 4, "resolution": 128}
    assert np.array_equal(load_mask(spec["mask"]), mask)
    v = _validate(spec)
    assert v.points[0].handle == (1000, 750)
    # no mask brushed: none in the spec (the editor proposes one)
    assert "mask" not in build_spec("drag", s, Inputs())


def test_region_drag_specs_from_brushed_regions_and_from_polygons():
    s = _session()
    h, t = _box((512, 384), 100, 200, 160, 260), _box((512, 384), 200, 220, 260, 280)
    spec = build_spec("region-drag", s, Inputs(handle_region=h, target_region=t))
    assert np.array_equal(load_mask(spec["regions"][0]["handle"]), h)
    assert np.array_equal(load_mask(spec["regions"][0]["target"]), t)
    _validate(spec)
    with pytest.raises(UIError) as e:
        build_spec("region-drag", s, Inputs(handle_region=h))
    assert e.value.control == "mask" and "target region" in e.value.message
    poly = [(100, 240), (160, 240), (160, 290), (170, 280), (230, 280), (230, 330)]
    for p in poly:
        add_click(s, "region-drag", p, vertices=3, region_input=REGION_INPUTS[1])
    spec = build_spec("region-drag", s, Inputs(region_input=REGION_INPUTS[1], vertices=3))
    assert spec["polygons"] == [
        {"handle": [list(p) for p in poly[:3]], "target": [list(p) for p in poly[3:]]}
    ]
    _validate(spec)
    add_click(s, "region-drag", (1, 1), vertices=3, region_input=REGION_INPUTS[1])
    with pytest.raises(UIError, match="1 of 6 vertices"):
        build_spec("region-drag", s, Inputs(region_input=REGION_INPUTS[1], vertices=3))


def test_move_and_resize_shift_the_object_centre_to_the_click():
    s = _session()
    obj = _box((512, 384), 100, 200, 200, 260)  # centroid (150, 230): pixel centres
    add_click(s, "move", (299, 199))
    spec = build_spec("move", s, Inputs(mask=obj, scale=1.0))
    assert (spec["dx"], spec["dy"]) == (149.5, -30.5) == shift_to((299, 199), obj)  # pixel (299, 199) centre
    _validate(spec)
    spec = build_spec("resize", s, Inputs(mask=obj, scale=0.5))
    assert spec["scale"] == 0.5 and "dx" not in spec  # resize: the click is optional
    _validate(spec)


def test_paste_and_appearance_name_the_reference_and_its_mask(tmp_path):
    s = _session()
    ref = Image.new("RGB", (256, 256), (200, 100, 50))
    ref_path = tmp_path / "reference.png"
    ref.save(ref_path)
    ref_mask = _box((256, 256), 64, 64, 128, 128)  # → base box (128..256, 96..192), centroid (192, 144)
    add_click(s, "paste", (299, 199))
    inputs = Inputs(
        reference=ref,
        reference_mask=ref_mask,
        reference_path=str(ref_path),
        scale=0.8,
        reference_prompt="a cat",
    )
    spec = build_spec("paste", s, inputs)
    # The official paste scales about the image centre C = (256, 192), then shifts: the click's centre p lands at
    # C + 0.8·(c − C) + d, so d = p − C − 0.8·(c − C) = (299.5 − 256 + 51.2, 199.5 − 192 + 38.4).
    assert spec["reference"] == str(ref_path) and (spec["dx"], spec["dy"]) == (94.7, 45.9)
    centroid_rule = build_spec("paste", s, Inputs(**{**inputs.__dict__, "profile": ["centroid-placement"]}))
    assert (centroid_rule["dx"], centroid_rule["dy"]) == (107.5, 55.5)  # p − c
    assert spec["scale"] == 0.8 and spec["reference_prompt"] == "a cat"
    assert np.array_equal(load_mask(spec["reference_mask"]), ref_mask)
    _validate(spec)
    assert portable_spec(spec)["reference"] == "reference.png" and spec["reference"] == str(ref_path)
    inputs.mask = _box((512, 384), 10, 10, 50, 50)
    spec = build_spec("appearance", s, inputs)
    assert "dx" not in spec and load_mask(spec["mask"]).sum() == 40 * 40
    _validate(spec)


@pytest.mark.parametrize(
    ("mode", "inputs", "control", "words"),
    [
        ("drag", Inputs(), "points", "no points"),
        ("move", Inputs(), "mask", "object mask is empty"),
        ("move", Inputs(mask=np.zeros((384, 512), bool)), "mask", "empty"),
        ("resize", Inputs(), "mask", "empty"),
        ("appearance", Inputs(), "reference", "reference image"),
        ("paste", Inputs(reference=Image.new("RGB", (8, 8))), "reference", "reference mask is empty"),
        ("region-drag", Inputs(), "mask", "handle region is empty"),
        ("region-drag", Inputs(region_input=REGION_INPUTS[1]), "points", "no polygons"),
        ("drag", Inputs(steps="ten"), "points", "no points"),
    ],
)
def test_invalid_input_names_the_control_that_shows_the_message(mode, inputs, control, words):
    with pytest.raises(UIError) as e:
        build_spec(mode, _session(), inputs)
    assert e.value.control == control and words in e.value.message


def test_pending_handles_points_off_the_image_and_bad_settings_are_refused():
    s = _session()
    add_click(s, "drag", (10, 10))
    with pytest.raises(UIError, match="has no target"):
        build_spec("drag", s, Inputs())
    add_click(s, "drag", (500, 380))
    s.image = Image.new("RGB", (256, 256))  # points clicked on a larger image
    with pytest.raises(UIError) as e:
        build_spec("drag", s, Inputs())
    assert e.value.control == "points" and "outside the 256×256 image" in e.value.message
    s.image = Image.new("RGB", (512, 384))
    with pytest.raises(UIError) as e:
        build_spec("drag", s, Inputs(steps="4.5"))
    assert e.value.control == "settings" and "whole number" in e.value.message
    with pytest.raises(UIError) as e:
        build_spec("drag", s, Inputs(mask=np.ones((10, 10), bool)))
    assert e.value.control == "mask" and "10×10" in e.value.message
    with pytest.raises(UIError) as e:
        build_spec("drag", Session(), Inputs())
    assert e.value.control == "image"
    with pytest.raises(UIError):
        build_spec("nope", s, Inputs())


def test_settings_parse_empty_as_the_mode_default():
    assert parse_setting("", "steps") is None and parse_setting(None, "steps") is None
    assert (
        parse_setting(" 20 ", "steps") == 20
        and parse_setting(7.0, "seed") == 7
        and parse_setting("1e2", "x") == 100
    )
    for bad in ("abc", "2.5", 2.5, "inf"):
        with pytest.raises(UIError):
            parse_setting(bad, "steps")
    assert sampler_defaults("drag")["steps"] == 50 and sampler_defaults("region-drag")["steps"] == 20
    assert sampler_defaults("nope") == {}


def test_spec_errors_map_to_the_control_beside_the_field():
    assert control_for_field("points[1].target") == "points"
    assert control_for_field("polygons[0].handle") == "points"
    assert control_for_field("dx, dy") == "points" and control_for_field("scale") == "points"
    assert control_for_field("mask") == "mask" and control_for_field("regions[0].handle") == "mask"
    assert (
        control_for_field("reference_mask") == "reference" and control_for_field("reference") == "reference"
    )
    assert control_for_field("sampler.steps") == "settings"
    assert control_for_field("image") == "image" and control_for_field("prompt") == "prompt"
    assert control_for_field("backend") == "run"
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        _validate({"mode": "paste", "reference": "r.png", "reference_mask": "m.png", "scale": 3.0})
    control, message = pydantic_message(e.value)
    assert control == "points" and message.startswith("scale:")
    with pytest.raises(ValidationError) as e:
        _validate({"mode": "drag", "points": [[[1, 1], [2, 2]]], "sampler": {"steps": 1}})
    assert pydantic_message(e.value)[0] == "settings"
    with pytest.raises(ValueError):
        UIError("nowhere", "x")


# -- drawing and report -------------------------------------------------------------------------------------------
def test_overlay_draws_the_clicks_on_the_displayed_copy():
    s = _session((2048, 1536))
    assert render_overlay(Session(), "drag") is None
    add_click(s, "drag", (100, 100))
    add_click(s, "drag", (300, 200))
    add_click(s, "drag", (600, 600))  # pending handle
    img = render_overlay(s, "drag")
    assert img.size == (1024, 768)
    a = np.asarray(img).astype(int)
    base = np.array([90, 120, 150])
    for x, y in [(100, 100), (300, 200), (600, 600)]:
        assert np.abs(a[y, x] - base).sum() > 60  # a dot is drawn there
    assert np.abs(a[700, 100] - base).sum() < 5  # and nothing far away
    for mode in MODES:
        assert render_overlay(
            s,
            mode,
            Inputs(
                mask=_box((2048, 1536), 100, 100, 400, 400),
                reference=Image.new("RGB", (64, 64)),
                reference_mask=_box((64, 64), 8, 8, 24, 24),
            ),
        ).size == (1024, 768)


def test_move_preview_shows_the_object_at_its_new_place():
    s = Session()
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 20:40] = 255  # a white square, centroid (30, 50)
    s.set_image(Image.fromarray(img))
    add_click(s, "move", (129, 49))
    out = np.asarray(render_overlay(s, "move", Inputs(mask=_box((200, 100), 20, 40, 40, 60))))
    assert out[42, 122].mean() > 200 and out[57, 137].mean() > 200  # the square is drawn at its new place
    assert out[42, 22].mean() < 240 and out[42, 80].mean() < 5  # its old place is greyed, the rest unchanged


def _cells_on_pixels(cells, size) -> np.ndarray:
    """A latent-cell mask drawn on ``size`` = (W, H) image pixels (each pixel takes the cell holding its centre)."""
    (lh, lw), (w, h) = cells.shape, size
    rows = np.minimum(((np.arange(h) + 0.5) * lh / h).astype(int), lh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * lw / w).astype(int), lw - 1)
    return cells.numpy()[rows[:, None], cols[None, :]]


@pytest.mark.parametrize("profile", ["official", "dragsdk", ["centroid-placement"]])
@pytest.mark.parametrize("mode", ["paste", "move", "resize"])
def test_placement_preview_draws_the_plans_placed_mask(editor, tmp_path, mode, profile):
    """Off-centre object, scale 0.5, non-square image: about the image centre (official) and about the object's
    centroid the object lands in different places; the preview draws exactly the plan's edit mask either way."""
    size = (320, 192)
    s = _session(size)
    inputs = Inputs(scale=0.5, profile=profile)
    if mode == "paste":
        ref = Image.new("RGB", (160, 96), (200, 30, 30))
        ref.save(tmp_path / "ref.png")
        inputs.reference, inputs.reference_mask = ref, _box((160, 96), 100, 10, 140, 40)
    else:
        inputs.mask = _box(size, 200, 20, 280, 80)
    add_click(s, mode, (230, 120))
    place = placement_preview(mode, s, inputs, editor.registry, editor.model.default_resolution)
    assert place is not None

    spec = build_spec(mode, s, Inputs(**{**inputs.__dict__, "reference_path": str(tmp_path / "ref.png")}))
    dry = editor.plan(s.image, spec)
    np.testing.assert_array_equal(place.region, _cells_on_pixels(dry.plan.edit_mask, size))
    other = "official" if profile != "official" else ["centroid-placement"]
    elsewhere = editor.plan(s.image, {**spec, "profile": other}).plan.edit_mask
    assert (
        place.region != _cells_on_pixels(elsewhere, size)
    ).mean() > 0.01  # the profiles place it differently
    drawn = np.asarray(
        render_overlay(s, mode, inputs, editor.registry, editor.model.default_resolution)
    ).astype(int)
    base = np.asarray(s.image).astype(int)
    ys, xs = np.nonzero(place.region & ~_box(size, 200, 100, 260, 140))  # away from the click's dot and arrow
    assert (np.abs(drawn[ys, xs] - base[ys, xs]).sum(-1) > 10).all()  # the placed region is tinted


def test_report_says_whether_the_inversion_was_reused():
    from dragsdk.report import EditReport

    r = EditReport(
        mode="drag",
        model="tiny",
        backend="eager",
        backend_reason="auto: first; cannot: x",
        device="cpu",
        dtype="float32",
        image_size=(512, 384),
        working_size=(128, 128),
        steps=4,
        seed=42,
        phase_seconds={"encode": 0.1, "invert": 0.5, "sample": 1.0, "decode": 0.1},
        unet_evaluations={"forward": 12},
        notes=["a note"],
    )
    text = format_report(r, 2.0)
    assert (
        "Image inverted in 0.50 s" in text
        and "eager" in text
        and "| encode | invert | sample | decode | total |" in text
    )
    assert "1.70 s" in text and "a note" in text and "cannot" not in text
    r.inversion_reused = True
    assert "Inversion reused" in format_report(r)


def test_sample_folders_are_found_under_the_roots(tmp_path):
    found = find_samples([EXAMPLE_SAMPLE.parent, tmp_path / "missing"])
    assert found["examples/dragbench-car"] == EXAMPLE_SAMPLE
    assert find_samples([EXAMPLE_SAMPLE]) == {"dragbench-car": EXAMPLE_SAMPLE}
    d = tmp_path / "Drag100" / "cat_0"
    d.mkdir(parents=True)
    (d / "points.json").write_text('{"points": [[1, 2], [3, 4]]}')
    Image.new("RGB", (8, 8)).save(d / "original.jpg")
    assert find_samples([tmp_path]) == {f"{tmp_path.name}/Drag100/cat_0": d}


@pytest.mark.parametrize("profile", ["official", ["centroid-placement"]])
@pytest.mark.parametrize(
    ("mode", "scale"),
    [("move", 1.0), ("move", 0.6), ("resize", 0.5), ("resize", 1.4), ("paste", 0.5), ("paste", 1.2)],
)
def test_the_clicked_point_becomes_the_placed_objects_centre_under_every_profile(
    editor, tmp_path, mode, scale, profile
):
    """The shift the page writes puts the object's centroid under the click whether the profile scales about the
    image centre (official) or about the object (centroid-placement): read back from the plan's latent paste."""
    size = (320, 192)
    s = _session(size)
    inputs = Inputs(scale=scale, profile=profile)
    if mode == "paste":
        ref = Image.new("RGB", size, (200, 30, 30))
        ref.save(tmp_path / "ref.png")
        inputs.reference, inputs.reference_mask = ref, _box(size, 40, 30, 100, 80)
        inputs.reference_path = str(tmp_path / "ref.png")
    else:
        inputs.mask = _box(size, 200, 20, 260, 70)
    click = (150, 110)
    add_click(s, mode, click)
    dry = editor.plan(s.image, build_spec(mode, s, inputs))
    paste = dry.plan.init[0]
    gw, gh = dry.canvas.latent_size
    x = (paste.target_cols.double().mean().item() + 0.5) * size[0] / gw
    y = (paste.target_rows.double().mean().item() + 0.5) * size[1] / gh
    cell = size[0] / gw
    assert abs(x - (click[0] + 0.5)) <= 1.5 * cell and abs(y - (click[1] + 0.5)) <= 1.5 * cell, (x, y, cell)


# -- modes from their UI descriptions -----------------------------------------------------------------------------
def test_the_page_offers_every_registered_mode_as_its_ui_description_says():
    from dragsdk.ui.forms import page_modes

    registry = get_registry()
    pages = page_modes(registry)
    assert set(pages) == set(registry.modes) and tuple(pages) == MODES
    assert MODES[:6] == (
        "drag",
        "region-drag",
        "move",
        "resize",
        "paste",
        "appearance",
    )  # the built-ins' order
    for name in ("drag", "region-drag", "move", "resize", "paste", "appearance"):
        page = pages[name]
        assert page.declared and page.ui is registry.modes[name].ui and not page.missing, name
    assert (
        pages["paste"].scale_max == 1.5 and pages["move"].scale_max == 2.0
    )  # the fields' maxima, capped at 2
    assert (
        pages["move"].mask_required and not pages["drag"].mask_required
    )  # move's UI asks more than its schema
    assert pages["appearance"].mask_required  # from the schema: a field without a default


def test_the_ui_package_names_no_mode():
    """The page's behaviour comes from the modes' UI descriptions: no string in dragsdk/ui is a mode's name."""
    import ast

    from .conftest import ROOT

    names = set(get_registry().modes)
    found = []
    for path in sorted((ROOT / "dragsdk" / "ui").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not found, found


def _rotate_inputs(size, **kw) -> Inputs:
    return Inputs(mask=_box(size, 60, 40, 120, 90), scale=0.8, steps=2, resolution=64, **kw)


def test_an_installed_third_party_mode_is_offered_and_builds_a_spec_the_editor_accepts(tiny_model, tmp_path):
    """The rotate example, installed (found through its entry point), is listed with its UI description: the mask
    editor, a click for the object's centre, the scale slider and an `angle` box built from its schema; what the
    page holds becomes a RotateSpec the editor plans, and the preview is the plan's placement."""
    from pydantic import ValidationError

    from dragsdk import Editor
    from dragsdk.ui.forms import page_modes

    from .example_registry import example_registry

    size = (192, 128)
    with example_registry(tmp_path) as reg:
        pages = page_modes(reg)
        assert "rotate" in pages and list(pages)[:6] == list(MODES)[:6]  # after the built-ins (order 100)
        page = pages["rotate"]
        assert page.declared and page.mask_required and page.scale_max == 2.0
        (angle,) = page.controls
        assert (angle.name, angle.kind, angle.required) == ("angle", "number", True)
        assert "[-360, 360]" in angle.info and angle.placeholder == "required"
        assert "**object**" in page.help and "*angle*" in page.help

        s = _session(size)
        assert "optional" in describe_clicks(s, "rotate", registry=reg)
        with pytest.raises(UIError) as e:  # no angle: a message beside the settings
            build_spec("rotate", s, _rotate_inputs(size), reg)
        assert e.value.control == "settings" and "angle is required" in e.value.message
        with pytest.raises(UIError) as e:
            build_spec("rotate", s, _rotate_inputs(size, fields={"angle": "ten"}), reg)
        assert e.value.control == "settings" and "number" in e.value.message
        with pytest.raises(UIError) as e:
            build_spec("rotate", s, Inputs(fields={"angle": "30"}), reg)
        assert e.value.control == "mask" and "the object is empty" in e.value.message

        assert add_click(s, "rotate", (120, 60), registry=reg) == "the object's centre goes to (120, 60)"
        inputs = _rotate_inputs(size, fields={"angle": " 30 "})
        spec = build_spec("rotate", s, inputs, reg)
        assert spec["angle"] == 30.0 and spec["scale"] == 0.8
        assert (spec["dx"], spec["dy"]) == shift_to((120, 60), inputs.mask)  # about the object's centroid
        assert np.array_equal(load_mask(spec["mask"]), inputs.mask)
        model = reg.spec_models()["rotate"]
        rotate = model.model_validate(spec)
        assert type(rotate).__name__ == "RotateSpec" and rotate.angle == 30.0

        editor = Editor(tiny_model, registry=reg)
        dry = editor.plan(s.image, spec)
        place = placement_preview("rotate", s, inputs, reg, editor.model.default_resolution)
        assert place is not None
        np.testing.assert_array_equal(place.region, _cells_on_pixels(dry.plan.edit_mask, size))
        ys, xs = np.nonzero(place.region)
        cell = size[0] / dry.canvas.latent_size[0]
        assert abs(xs.mean() - 120.5) <= 1.5 * cell and abs(ys.mean() - 60.5) <= 1.5 * cell
        assert render_overlay(s, "rotate", inputs, reg).size == size

        with pytest.raises(ValidationError) as e:  # out of the schema's range: beside the settings too
            model.model_validate(build_spec("rotate", s, _rotate_inputs(size, fields={"angle": 400}), reg))
        control, message = pydantic_message(e.value, page)
        assert control == "settings" and message.startswith("angle:")
    with pytest.raises(UIError) as e:  # the process registry has no rotate
        build_spec("rotate", s, inputs)
    assert e.value.control == "run" and "unknown mode 'rotate'" in e.value.message


def _plugin_with(*modes):
    from dragsdk.authoring import hookimpl

    class Plugin:
        @hookimpl
        def dragsdk_register_modes(self, register):
            for m in modes:
                register(m)

    return Plugin()


def test_a_mode_without_a_ui_description_gets_one_from_its_schema(tiny_model, tmp_path):
    """Mask fields → the mask editor, point pairs → clicks, numbers / whole numbers / booleans / string choices →
    settings controls; a required field the page cannot fill is named, and such a mode is listed but refused."""
    from typing import Literal

    from pydantic import Field

    from dragsdk.authoring import EditMode, EditSpec, MaskRef, PointPair, mask_field
    from dragsdk.registry import Registry
    from dragsdk.ui.forms import page_modes

    class NudgeSpec(EditSpec):
        mode: Literal["nudge"] = "nudge"
        points: list[PointPair] = Field(..., min_length=1, max_length=8)
        region: MaskRef | None = mask_field("where it may change")
        amount: float = Field(..., ge=0.0, le=1.0, description="how far")
        passes: int = Field(2, ge=1, le=5)
        smooth: bool = False
        style: Literal["soft", "hard"] = "soft"

    class NoteSpec(NudgeSpec):
        mode: Literal["note"] = "note"  # type: ignore[assignment]
        note: str = Field(..., description="free text")

    class Nudge(EditMode[NudgeSpec]):
        name, spec_model, description = "nudge", NudgeSpec, "nudge points"

        def plan(self, spec, ctx):
            return registry.modes["drag"].plan(spec, ctx)

    class Note(Nudge):
        name, spec_model = "note", NoteSpec

    registry = Registry()
    registry.load_entry_points()
    registry.register_plugin(_plugin_with(Nudge(), Note()), "derived")
    try:
        pages = page_modes(registry)
        nudge, note = pages["nudge"], pages["note"]
        assert not nudge.declared and not nudge.missing
        assert (nudge.ui.points, nudge.ui.mask.field, nudge.ui.fields) == (
            "points",
            "region",
            ("amount", "passes", "smooth", "style"),
        )
        kinds = {c.name: (c.kind, c.required, c.default, c.choices) for c in nudge.controls}
        assert kinds == {
            "amount": ("number", True, None, ()),
            "passes": ("integer", False, 2, ()),
            "smooth": ("boolean", False, False, ()),
            "style": ("choice", False, "soft", ("soft", "hard")),
        }
        assert nudge.mask_label == "Region: brush it (optional)" and "No UI description" in nudge.help
        assert "nudge points" in nudge.help
        assert note.missing == ("note",) and "cannot offer `note`" in note.help

        s = _session((64, 48))
        add_click(s, "nudge", (10, 10), registry=registry)
        add_click(s, "nudge", (20, 12), registry=registry)
        fields = {
            "amount": "0.5",
            "passes": "3",
            "smooth": True,
            "style": "soft",
        }  # style left at its default
        spec = build_spec(
            "nudge", s, Inputs(fields=fields, region_input="", mask=_box((64, 48), 0, 0, 30, 30)), registry
        )
        assert spec["points"] == [{"handle": [10, 10], "target": [20, 12]}]
        assert (spec["amount"], spec["passes"], spec["smooth"]) == (0.5, 3, True) and "style" not in spec
        assert "region" in spec
        NudgeSpec.model_validate(spec)
        with pytest.raises(UIError) as e:
            build_spec("nudge", s, Inputs(fields={**fields, "passes": "2.5"}), registry)
        assert e.value.control == "settings" and "whole number" in e.value.message
        add_click(s, "note", (10, 10), registry=registry)
        with pytest.raises(UIError) as e:
            build_spec("note", s, Inputs(fields=fields), registry)
        assert e.value.control == "run" and "`note`" in e.value.message
    finally:
        registry.unregister_plugin("derived")


def test_dragdiffusion_offers_its_lora_steps_so_the_page_can_skip_the_official_lora():
    from dragsdk.ui.forms import page_modes

    reg = get_registry()
    page = page_modes(reg)["dragdiffusion"]
    controls = {c.name: c for c in page.controls}
    assert set(controls) == {"lora_steps", "n_pix_step"} and controls["lora_steps"].kind == "integer"
    assert "80" in controls["lora_steps"].info  # the default shown: the official LoRA
    s = _session((128, 96))
    add_click(s, "dragdiffusion", (30, 40), registry=reg)
    add_click(s, "dragdiffusion", (50, 40), registry=reg)
    spec = build_spec("dragdiffusion", s, Inputs(fields={"lora_steps": "0", "n_pix_step": " 5 "}), reg)
    model = reg.spec_models()["dragdiffusion"].model_validate(spec)
    assert model.lora_steps == 0 and model.n_pix_step == 5 and len(model.points) == 1
    default = reg.spec_models()["dragdiffusion"].model_validate(build_spec("dragdiffusion", s, Inputs(), reg))
    assert default.lora_steps == 80
