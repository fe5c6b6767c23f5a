"""The mode-author API (issue 14 items 1–3, 5): the engine applies the shared sampler settings to every mode,
one ``energy_scale`` quantity, ``dragsdk.authoring`` (mask fields, affine placement, one size convention) and the
two example packages loaded through their entry points."""

import importlib
import json
import sys

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

import dragsdk.authoring as authoring
from dragsdk.errors import SpecError
from dragsdk.geometry import Canvas
from dragsdk.modes import PlanContext, build_plan
from dragsdk.registry import Registry
from dragsdk.spec import ENERGY_UNIT

from .conftest import ROOT

EXAMPLES = ROOT / "examples"
BASE = EXAMPLES / "dragbench-car" / "original_image.png"
MASK = EXAMPLES / "dragbench-car" / "mask.png"
PACKAGES = {
    "copy-rect": ("dragsdk-example-plugin", "dragsdk_example_plugin"),
    "rotate": ("dragsdk-rotate-plugin", "dragsdk_rotate_plugin"),
    "pull": ("dragsdk-pull-plugin", "dragsdk_pull_plugin"),
}


def _example_module(mode: str, monkeypatch):
    folder, module = PACKAGES[mode]
    monkeypatch.syspath_prepend(str(EXAMPLES / folder))
    sys.modules.pop(module, None)
    return importlib.import_module(module)


@pytest.fixture
def registry(monkeypatch):
    reg = Registry()
    reg.load_entry_points()
    for mode in PACKAGES:
        reg.register_plugin(_example_module(mode, monkeypatch), mode)
    try:
        yield reg
    finally:
        for mode, (_, module) in PACKAGES.items():
            reg.unregister_plugin(mode)
            sys.modules.pop(module, None)


def _spec_dict(mode: str) -> dict:
    if mode == "rotate":
        return {
            "mode": "rotate",
            "mask": str(MASK),
            "angle": 30.0,
            "sampler": {"steps": 20, "resolution": 256},
        }
    data = json.loads((EXAMPLES / f"{mode}.json").read_text())
    for key in ("mask", "reference", "reference_mask"):
        if isinstance(data.get(key), str):
            data[key] = str(EXAMPLES / data[key])
    data.pop("energy_scale", None)
    data["sampler"] = {"steps": 20, "resolution": 256}
    return data


def _plan(registry, data: dict):
    mode = registry.modes[data["mode"]]
    spec = mode.spec_model.model_validate(data)
    img = Image.open(BASE).convert("RGB")
    canvas = Canvas.fit(img.size, spec.sampler.resolution)
    return build_plan(mode, spec, PlanContext(canvas, img, spec.sampler.steps)), spec


def _sampling(plan) -> tuple:
    """What the sampler takes from the plan for the settings under test."""
    sde = plan.sde and (plan.sde.start, plan.sde.end, plan.sde.eta_inside, plan.sde.eta_outside)
    kv = plan.kv and (plan.kv.start, plan.kv.end)
    return tuple(plan.guided_steps), kv, sde, dict(plan.time_travel)


SETTINGS = {
    "schedule": {"end": 0.3, "dense_end": 0.1, "stride": 3},
    "kv_start": 0.7,  # after region-drag's first sampled step (10 of 20)
    "sde": {"start": 0.1, "end": 0.5, "eta_inside": 0.2},
    "time_travel": {"start": 0.2, "end": 0.6, "repeats": 2},
    "steps": 12,
}
MODES = [
    "drag",
    "move",
    "resize",
    "appearance",
    "paste",
    "region-drag",
    "dragdiffusion",
    "copy-rect",
    "rotate",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_sampler_setting_takes_effect_for_every_mode_or_is_refused_naming_it(registry, mode, setting):
    data = _spec_dict(mode)
    base, _ = _plan(registry, data)
    changed = {**data, "sampler": {**data["sampler"], setting: SETTINGS[setting]}}
    if setting in registry.modes[mode].unsupported_settings:
        with pytest.raises(SpecError) as e:
            _plan(registry, changed)
        assert e.value.field == f"sampler.{setting}"
        assert setting in registry.modes[mode].describe()["unsupported_settings"]
        # Sending the default value is not setting it: a host may always send the full defaults.
        default = getattr(registry.modes[mode].spec_model.model_fields["sampler"].default_factory(), setting)
        value = default.model_dump() if isinstance(default, BaseModel) else default
        same = {**data, "sampler": {**data["sampler"], setting: value}}
        _plan(registry, same)
    else:
        assert _sampling(_plan(registry, changed)[0]) != _sampling(base)


def test_a_mode_that_leaves_the_sampler_entries_unset_gets_the_settings_the_built_in_move_computes(registry):
    rotate, spec = _plan(registry, {**_spec_dict("rotate"), "sampler": {"steps": 50, "resolution": 256}})
    move, _ = _plan(registry, {**_spec_dict("move"), "sampler": {"steps": 50, "resolution": 256}})
    assert _sampling(rotate) == _sampling(move)
    assert rotate.time_travel == {22: 3, 24: 3, 26: 3, 28: 3} and rotate.kv.start == 5
    assert (rotate.sde.start, rotate.sde.end) == (11, 20) and rotate.sde.mask is rotate.sde_mask
    assert (
        (rotate.energy_scale, rotate.guidance_step) == (spec.energy_scale, spec.guidance_step) == (0.5, 0.08)
    )


def test_a_declared_setting_that_is_not_a_sampler_field_is_an_authoring_error(registry):
    from dragsdk import hookimpl

    mode = registry.modes["copy-rect"]
    bogus = type("Bogus", (type(mode),), {"unsupported_settings": frozenset({"shedule"}), "name": "bogus"})()
    spec = mode.spec_model.model_validate(_spec_dict("copy-rect"))
    img = Image.open(BASE).convert("RGB")
    with pytest.raises(ValueError, match="shedule"):
        build_plan(bogus, spec, PlanContext(Canvas.fit(img.size, 256), img, 20))

    class Plugin:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(bogus)

    registry.register_plugin(Plugin(), "bogus")
    try:
        assert "bogus" not in registry.modes
        assert any("shedule" in f.error for f in registry.failures)
    finally:
        registry.unregister_plugin("bogus")


@pytest.mark.parametrize("mode", ["drag", "move", "resize", "appearance", "paste", "rotate"])
def test_energy_scale_is_one_quantity_in_spec_plan_and_schema(registry, mode):
    data = {**_spec_dict(mode), "energy_scale": 1.25}
    plan, spec = _plan(registry, data)
    assert plan.energy_scale == spec.energy_scale == 1.25
    prop = registry.modes[mode].spec_model.model_json_schema()["properties"]["energy_scale"]
    assert prop["unit"] == "1000·λ" and "1000 × λ" in prop["description"]
    assert ENERGY_UNIT == 1000.0


def test_mask_ref_accepts_a_path_a_pil_image_an_array_and_a_data_url(registry):
    truth = np.asarray(Image.open(MASK).convert("L")) > 127
    spec_model = registry.modes["rotate"].spec_model
    forms = [str(MASK), Image.open(MASK), truth, truth.astype(np.float32), authoring.mask_to_data_url(truth)]
    for form in forms:
        spec = spec_model.model_validate({"mode": "rotate", "mask": form, "angle": 10})
        assert isinstance(spec.mask, str)
        assert np.array_equal(authoring.load_mask(spec.mask, size=(truth.shape[1], truth.shape[0])), truth)
    with pytest.raises(SpecError) as e:
        authoring.load_mask(truth, "reference_mask", size=(truth.shape[0], truth.shape[1] + 1))
    assert e.value.field == "reference_mask"


def _crop(m: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(m)
    return m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rotation": 90.0}, lambda m: np.rot90(m, 1)),  # counter-clockwise on screen
        ({"rotation": -90.0}, lambda m: np.rot90(m, -1)),
        ({"flip_x": True}, np.fliplr),
        ({"flip_y": True}, np.flipud),
        ({"scale": (2.0, 1.0)}, lambda m: np.repeat(m, 2, axis=1)),
    ],
)
def test_affine_placement_of_an_asymmetric_object_matches_the_array_transform(kwargs, expected):
    obj = np.zeros((64, 96), dtype=bool)
    obj[20:40, 30:36] = True  # an L: a vertical bar and a foot to the right
    obj[34:40, 36:50] = True
    image = Image.fromarray((obj * 255).astype(np.uint8)).convert("RGB")
    preview, placed = authoring.place_image(image, obj, authoring.affine(**kwargs), (3.0, -2.0))
    assert np.array_equal(_crop(placed), expected(_crop(obj)))
    assert np.array_equal(np.asarray(preview)[..., 0][placed] > 0, np.ones(placed.sum(), bool))


def test_shear_and_rotation_keep_the_area_and_centroid_on_every_grid():
    obj = np.zeros((128, 192), dtype=bool)
    obj[40:90, 60:100] = True
    canvas = Canvas((192, 128), (192, 128))
    a = authoring.affine(rotation=30.0, shear=0.3)
    for grid in ("working", "feature", "latent"):
        m = authoring.affine_map(canvas, obj, a, (10.0, 5.0), grid)
        placed = m.target_mask().numpy()
        area = canvas.mask_to_grid(obj, grid).sum().item()
        assert abs(placed.sum() - area) <= 0.1 * area + 4
        sx, sy = canvas.scale(grid)
        cy, cx = (np.argwhere(placed) + 0.5).mean(0)
        assert abs(cx / sx - (80 + 10)) < 2 / sx and abs(cy / sy - (65 + 5)) < 2 / sy
    with pytest.raises(SpecError) as e:
        authoring.affine_map(canvas, obj, authoring.affine(scale=(1.0, 0.0)), (0, 0), "latent", field="angle")
    assert e.value.field == "angle"


def test_sizes_are_w_h_and_the_energy_helpers_take_the_canvas_feature_size():
    import inspect

    canvas = Canvas((320, 192), (320, 192))
    assert canvas.feature_size == (80, 48) and canvas.latent_size == (40, 24)
    assert "grid_size" in inspect.signature(authoring.local_similarity).parameters
    feature = np.arange(48 * 80, dtype=np.float32).reshape(1, 1, 48, 80)
    import torch

    cells = (torch.tensor([47, 0]), torch.tensor([0, 79]))  # bottom-left and top-right cells of a wide grid
    got = authoring.gather_cells(torch.from_numpy(feature), cells, canvas.feature_size)[0]
    assert got.tolist() == [47 * 80, 79]


def test_every_authoring_name_is_documented_in_the_plugin_guide():
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name in authoring.__all__:
        assert f"`{name}" in text, name
        obj = getattr(authoring, name)
        if callable(obj) and getattr(obj, "__module__", "").startswith("dragsdk"):
            assert (obj.__doc__ or "").strip(), name


@pytest.mark.parametrize("mode", sorted(PACKAGES))
def test_example_packages_are_found_through_their_entry_points(tmp_path, monkeypatch, mode):
    import tomllib

    from .test_registry import _fake_distribution

    folder, module = PACKAGES[mode]
    eps = tomllib.loads((EXAMPLES / folder / "pyproject.toml").read_text())["project"]["entry-points"][
        "dragsdk"
    ]
    _fake_distribution(tmp_path, folder, eps)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES / folder))
    reg = Registry()
    reg.load_entry_points()
    try:
        assert mode in reg.modes, reg.failures
        assert reg.plugins[mode].distribution == folder
        source = (EXAMPLES / folder / f"{module}.py").read_text()
        imports = {
            line.split()[1]
            for line in source.splitlines()
            if line.startswith(("from dragsdk", "import dragsdk"))
        }
        assert imports == {"dragsdk.authoring"}, imports
        if mode == "rotate":
            assert len(source.splitlines()) < 100
    finally:
        sys.modules.pop(module, None)


def test_rotate_plugin_edits_with_energy_guidance_on_the_tiny_model(tiny_model, registry):
    from dragsdk import Editor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    obj = np.zeros((64, 96), dtype=bool)
    obj[16:48, 30:50] = True
    spec = {
        "mode": "rotate",
        "mask": obj,
        "angle": 90.0,
        "sampler": {"steps": 4, "resolution": 64, "time_travel": {"enabled": False}},
    }
    editor = Editor(tiny_model, registry=registry)
    result = editor.edit(image, spec)
    assert result.image.size == image.size
    guided = [e.step for e in result.report.energies]
    assert guided == result.plan.guided_steps and guided
    assert {"edit", "content"} <= set(result.report.energies[0].terms)
    assert all(e.grad_norm > 0 for e in result.report.energies)
    unguided = editor.edit(image, {**spec, "energy_scale": 0.0})
    assert not unguided.report.energies
    assert not np.array_equal(np.asarray(result.image), np.asarray(unguided.image))


def test_a_ui_description_is_checked_when_declared_and_when_the_mode_registers(registry):
    """A browser-editor description (``EditMode.ui``) that cannot work is an authoring error: two click inputs, a
    placement without its object's input, or a field the spec lacks (reported by the registry, the mode left out)."""
    from dragsdk import hookimpl

    with pytest.raises(ValueError, match="at most one click input"):
        authoring.ModeUI(points="points", placement=authoring.PlacementUI(object="mask"))
    with pytest.raises(ValueError, match="no reference input"):
        authoring.ModeUI(placement=authoring.PlacementUI(object="reference"))
    with pytest.raises(ValueError, match="tuple of field names"):
        authoring.ModeUI(fields="angle")  # type: ignore[arg-type]
    rotate = registry.modes["rotate"]
    assert rotate.ui.field_names() == ["scale", "angle", "mask", "dx", "dy"]
    typo = authoring.ModeUI(mask=authoring.MaskUI(), fields=("angel",))
    bogus = type("Bogus", (type(rotate),), {"ui": typo, "name": "bogus"})()

    class Plugin:
        @hookimpl
        def dragsdk_register_modes(self, register):
            register(bogus)

    registry.register_plugin(Plugin(), "bogus")
    try:
        assert "bogus" not in registry.modes
        assert any("['angel']" in f.error and "not fields of its spec" in f.error for f in registry.failures)
    finally:
        registry.unregister_plugin("bogus")
