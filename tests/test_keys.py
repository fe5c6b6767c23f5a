"""The inversion key is declared: every plan and spec field says whether the inversion depends on it, and the one
key builder carries every field that does."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from dragsdk.keys import InversionKey, declarations, inversion_key
from dragsdk.plan import EditPlan
from dragsdk.spec import EditSpec, SamplerSettings

from .builtin_specs import IMAGE, builtin_specs


@pytest.mark.parametrize("cls", [EditPlan, EditSpec, SamplerSettings])
def test_every_plan_and_spec_field_declares_whether_the_inversion_depends_on_it(cls):
    missing = [name for name, decl in declarations(cls).items() if decl is None]
    assert not missing, f"{cls.__name__} fields without an inverts() / no_inversion() declaration: {missing}"


def test_the_declaration_check_fails_for_a_field_without_one():
    @dataclasses.dataclass
    class Grown(EditPlan):
        new_flag: bool = False

    assert declarations(Grown)["new_flag"] is None


def test_a_declared_dependency_names_the_key_entry_that_carries_it():
    entries = {f.name for f in dataclasses.fields(InversionKey)}
    for cls in (EditPlan, EditSpec, SamplerSettings):
        for name, decl in declarations(cls).items():
            if decl is not None and decl.depends and not decl.how.startswith("through"):
                carried = {w.strip(" ,") for w in decl.how.split(":")[0].split(",")}
                assert carried <= entries, f"{cls.__name__}.{name}: {decl.how!r} names no InversionKey entry"


def test_the_key_is_frozen_and_changes_with_a_declared_field_only(tiny_model):
    from dragsdk import Editor

    editor = Editor(tiny_model)
    spec = builtin_specs({"steps": 6, "resolution": 64})["move"]
    img = Image.open(IMAGE).convert("RGB")

    def key(data):
        dry = editor.plan(IMAGE, data)
        return inversion_key(img, editor.resolve_spec(data), dry.plan, dry.canvas.size, "tiny", "w")

    base = key(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.steps = 3  # type: ignore[misc]
    assert key({**spec, "negative_prompt": "blurry"}) == base  # no_inversion()
    assert key({**spec, "sampler": {**spec["sampler"], "guidance_scale": 7.0}}) == base  # no_inversion()
    assert key({**spec, "prompt": "a red car"}) != base  # inverts("prompt")
    assert key({**spec, "sampler": {**spec["sampler"], "kv_start": 0.5}}) != base  # inverts("kv_steps")
