"""The dependency policy (make test-latest, make test-oldest, requirements/lock.txt): pyproject.toml keeps ranges with
lower bounds, every upper bound says why, the lock pins a set pyproject allows, test-latest names the package that
broke, and test-oldest installs every runtime dependency at its lower bound."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from packaging.requirements import Requirement

from .conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport (a dependency of pytest there)
    import tomli as tomllib

PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "lock.txt"
LOCKED_EXTRAS = ("dev", "onnx", "ray", "ui")  # what the Makefile installs into .venv


def _spec_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, requirement, comment) of every quoted requirement inside a dependency array of ``text``."""
    out, inside = [], False
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if re.match(r"^(dependencies|[A-Za-z0-9_-]+)\s*=\s*\[", stripped) and (
            stripped.startswith("dependencies") or inside_optional(text, number)
        ):
            inside = True
        if inside:
            code, _, comment = raw.partition("#")
            for req in re.findall(r'"([^"]+)"', code):
                out.append((number, req, comment.strip()))
            if "]" in code:
                inside = False
    return out


def inside_optional(text: str, number: int) -> bool:
    """Whether line ``number`` is in the ``[project.optional-dependencies]`` table."""
    table = ""
    for line in text.splitlines()[:number]:
        if line.startswith("["):
            table = line.strip()
    return table == "[project.optional-dependencies]"


def uncommented_upper_bounds(text: str) -> list[str]:
    bad = []
    for number, req, comment in _spec_lines(text):
        if (
            any(s.operator in ("<", "<=", "==", "~=", "!=", "===") for s in Requirement(req).specifier)
            and not comment
        ):
            bad.append(
                f"pyproject.toml:{number}: {req!r} has an upper bound or pin without a comment saying why"
            )
    return bad


def test_the_checker_flags_an_upper_bound_without_a_comment_and_accepts_one_with():
    text = '[project]\ndependencies = [\n    "torch>=2.4",\n    "diffusers>=0.30,<0.50",\n]\n'
    assert len(uncommented_upper_bounds(text)) == 1 and "diffusers" in uncommented_upper_bounds(text)[0]
    ok = text.replace('<0.50",', '<0.50",  # 0.50 renames the attention processors (issue link)')
    assert uncommented_upper_bounds(ok) == []
    extras = '[project.optional-dependencies]\ndev = ["pytest>=8", "ruff==0.5"]\n'
    assert len(uncommented_upper_bounds(extras)) == 1


def test_every_upper_bound_in_pyproject_carries_its_reason():
    assert uncommented_upper_bounds(PYPROJECT.read_text(encoding="utf-8")) == []


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_the_spec_walk_sees_every_requirement():
    walked = {Requirement(r).name for _, r, _ in _spec_lines(PYPROJECT.read_text(encoding="utf-8"))}
    assert {r.name for r in _requirements()} <= walked


def test_every_direct_dependency_has_a_lower_bound():
    for req in _requirements():
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{req} has no lower bound"


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_requirement_at_a_version_pyproject_allows():
    pins = _lock()
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is missing from requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock {name}=={pins[name]} outside {req}"
        )
    assert pins.get("torch") == "2.13.0"  # the CPU wheel on this machine's disk


def _tool(name: str = "test_latest"):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_latest_names_the_moved_distribution_deepest_in_the_traceback():
    tool = _tool()
    report = (
        "/x/.venv-latest/lib/python3.11/site-packages/dragsdk_stub/a.py:1: in f\n"
        "/x/.venv-latest/lib/python3.11/site-packages/diffusers/loaders/peft.py:12: in <module>\n"
        "/x/.venv-latest/lib/python3.11/site-packages/transformers/utils/import_utils.py:40: in <module>\n"
        "E   ImportError: cannot import name 'X' from 'kernels'\n"
    )
    changed = {"transformers": ("5.26.0", "5.25.0"), "diffusers": ("0.43.0", "0.42.1")}
    assert tool.culprits(report, changed) == ["transformers", "diffusers"]
    assert tool.culprits(report, {"numpy": ("3.0", "2.3")}) == []
    assert tool._describe("transformers", changed) == "transformers==5.26.0 (tested: 5.25.0)"


def test_test_latest_reads_the_lock_and_sees_what_moved(tmp_path):
    tool = _tool()
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\nPyYAML==1.0\ntorch==2.13.0\n", encoding="utf-8")
    pins = tool.read_lock(lock)
    assert pins == {"pyyaml": "1.0", "torch": "2.13.0"}
    changed = tool.moved(pins)
    assert "pyyaml" in changed and changed["pyyaml"][1] == "1.0"  # PyYAML 1.0 is not what is installed
    assert "torch" not in changed  # 2.13.0+cpu is the locked 2.13.0


def test_test_oldest_pins_every_runtime_dependency_at_its_lower_bound(tmp_path):
    oldest = _tool("oldest")
    pins = oldest.lower_bounds(PYPROJECT)
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert set(pins) == {Requirement(r).name for r in project["dependencies"]}
    for req in map(Requirement, project["dependencies"]):
        if req.name != "torch":
            assert req.specifier.contains(pins[req.name]), f"{req.name}=={pins[req.name]} outside {req}"
    assert pins["torch"] == "2.13.0"  # the CPU wheel on this machine's disk, whatever the bound says
    toml = tmp_path / "pyproject.toml"
    toml.write_text(
        '[project]\ndependencies = ["numpy>=1.24,<3", "kornia >= 0.7 ; python_version>=\'3.10\'", '
        '"torch>=2.4"]\n',
        encoding="utf-8",
    )
    assert oldest.lower_bounds(toml) == {"numpy": "1.24", "kornia": "0.7", "torch": "2.13.0"}
    toml.write_text('[project]\ndependencies = ["numpy<3"]\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="no >= lower bound"):
        oldest.lower_bounds(toml)


@pytest.mark.parametrize("target", ["test", "test-latest", "test-oldest", "lock", "demo", "docs"])
def test_the_makefile_has_the_documented_targets(target):
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M)
