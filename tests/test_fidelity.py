"""One profile mechanism for every mode (issue 19, item 4): option tables resolved into typed frozen objects,
``plan.fidelity`` as the engine's one source of fidelity flags, one report format."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Literal

import pytest

from dragsdk.fidelity import Fidelity, ProfileTable, option
from dragsdk.plan import EditPlan
from dragsdk.registry import get_registry

from .builtin_specs import BUILTIN_MODES, IMAGE, builtin_specs
from .conftest import ROOT


@dataclasses.dataclass(frozen=True)
class _Options:
    mask_resampling: Literal["nearest", "area"] = option(
        "nearest", "area", "area masks", improvement="area-masks"
    )
    to_uint8: Literal["truncate", "round"] = option("truncate", "round", "round to 8 bits")


TABLE = ProfileTable(_Options)


def test_a_table_resolves_each_profile_into_its_typed_frozen_options():
    assert TABLE.resolve("official") == _Options("nearest", "truncate")
    assert TABLE.resolve("dragsdk") == _Options("area", "round")
    assert TABLE.resolve(["area-masks"]) == _Options("area", "truncate")  # only the listed improvement
    assert TABLE.resolve([]) == TABLE.resolve("official")
    # a spec's per-option field overrides its profile's value; None leaves it
    assert TABLE.resolve("official", {"to_uint8": "round", "mask_resampling": None}) == _Options(
        "nearest", "round"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        TABLE.resolve("official").to_uint8 = "round"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown improvement 'nope'"):
        TABLE.resolve(["nope"])
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        TABLE.resolve("official", {"nope": 1})
    with pytest.raises(ValueError, match="profile must be"):
        TABLE.resolve("best")


def test_fidelity_carries_the_engine_options_the_label_and_every_option_as_name_value():
    f = TABLE.fidelity(["area-masks"], TABLE.resolve(["area-masks"]))
    assert f.profile == "official+area-masks"
    assert f.options == ("mask_resampling=area", "to_uint8=truncate")
    assert f.to_uint8 == "truncate"  # an engine option the table has is taken from it
    assert f.vae_latent == Fidelity().vae_latent  # one it lacks keeps the engine default


def test_a_table_refuses_what_is_not_a_frozen_dataclass_of_options():
    @dataclasses.dataclass
    class Mutable:
        a: int = option(0, 1, "a")

    @dataclasses.dataclass(frozen=True)
    class Plain:
        a: int = 0

    @dataclasses.dataclass(frozen=True)
    class Twice:
        a: int = option(0, 1, "a", improvement="x")
        b: int = option(0, 1, "b", improvement="x")

    for cls, words in ((Mutable, "frozen dataclass"), (Plain, "not made with option"), (Twice, "names two")):
        with pytest.raises(TypeError, match=words):
            ProfileTable(cls)


def test_the_spec_schema_offers_the_table_improvements():
    schema = json.dumps(_spec_model(TABLE).model_json_schema())
    assert "area-masks" in schema and "official" in schema and "round to 8 bits" in schema


def _spec_model(table):
    from dragsdk.spec import EditSpec

    class S(EditSpec):
        mode: str = "s"
        profile: table.spec_type() = table.spec_field()  # type: ignore[valid-type]

    return S


@pytest.mark.parametrize("mode", BUILTIN_MODES)
def test_every_builtin_mode_declares_its_profiles_in_one_table(mode):
    m = get_registry().modes[mode]
    table = m.profiles
    assert isinstance(table, ProfileTable)
    # official resolves to the declared defaults: the official code's behaviour
    official = table.resolve("official")
    assert [getattr(official, n) for n in table.names] == [r[2] for r in table.rows()]
    # the spec's profile field accepts exactly the table's improvement names besides the two profiles
    schema = json.dumps(m.spec_model.model_json_schema()["properties"]["profile"])
    for name in table.improvements:
        assert f'"{name}"' in schema
    # dragsdk modes --json shows the table
    rows = m.describe()["profiles"]
    assert [r["option"] for r in rows] == list(table.names)


def test_no_mode_or_engine_module_tests_an_improvement_name_by_hand():
    names = set()
    for mode in BUILTIN_MODES:
        names |= set(get_registry().modes[mode].profiles.improvements)
    offenders = []
    for path in [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "dragsdk").rglob("*.py")]:
        text = path.read_text()
        for name in names:
            for m in re.finditer(rf"[\"']{re.escape(name)}[\"']", text):
                before = text[max(0, m.start() - 12) : m.start()]
                if not before.endswith(("improvement=", "aliases=(")):
                    line = text.count("\n", 0, m.start()) + 1
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, (
        "improvement names tested by hand (resolve the table and read its typed options): " + str(offenders)
    )


def test_the_plan_holds_fidelity_flags_in_one_place_only():
    engine = {f.name for f in dataclasses.fields(Fidelity)}
    plan_fields = {f.name for f in dataclasses.fields(EditPlan)}
    assert engine & plan_fields == set(), "a fidelity flag outside plan.fidelity"
    assert "fidelity" in plan_fields


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drag", "region-drag"])
def test_the_report_has_one_profile_format_for_every_mode(tiny_model, mode):
    from dragsdk import Editor
    from dragsdk.testing import check_profiles

    specs = builtin_specs({"steps": 3, "resolution": 64})
    result = Editor(tiny_model).edit(IMAGE, {**specs[mode], "profile": "dragsdk"})
    m = get_registry().modes[mode]
    check_profiles(m, m.spec_model.model_validate({**specs[mode], "profile": "dragsdk"}), result)
    improved = {f"{o}={b}" for o, _, _, b, _ in m.profiles.rows()}
    assert result.report.profile == "dragsdk" and set(result.report.profile_options) == improved


def test_the_conformance_check_refuses_a_mode_whose_report_bypasses_its_table():
    from types import SimpleNamespace

    from dragsdk.testing import ConformanceError, check_profiles

    mode = SimpleNamespace(profiles=TABLE)
    spec = SimpleNamespace(profile="official")
    good = SimpleNamespace(
        report=SimpleNamespace(
            profile="official", profile_options=["mask_resampling=nearest", "to_uint8=truncate"]
        )
    )
    check_profiles(mode, spec, good)  # type: ignore[arg-type]
    # a plan left with the default Fidelity: no options reported
    bare = SimpleNamespace(report=SimpleNamespace(profile="", profile_options=[]))
    with pytest.raises(ConformanceError, match="profiles: report profile ''"):
        check_profiles(mode, spec, bare)  # type: ignore[arg-type]
    partial = SimpleNamespace(
        report=SimpleNamespace(profile="official", profile_options=["to_uint8=truncate"])
    )
    with pytest.raises(ConformanceError, match="every option of the table"):
        check_profiles(mode, spec, partial)  # type: ignore[arg-type]


def test_a_former_improvement_name_still_resolves():
    from dragsdk.spec import DRAG_PROFILES, DragSpec

    assert "recorded-reference" not in DRAG_PROFILES.improvements  # documented under its new name only
    spec = DragSpec.model_validate(
        {"prompt": "", "points": [[[1, 1], [2, 2]]], "profile": ["recorded-reference"]}
    )
    assert DRAG_PROFILES.resolve(spec.profile).guidance_features == "recorded"
