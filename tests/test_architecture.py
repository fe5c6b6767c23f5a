"""The shape of the edit path (issue 19): ``Editor.edit`` fits on a screen, no function on the edit path is over 80
lines of code, and the edit's stages are named methods of one session object."""

from __future__ import annotations

import ast
import io
import tokenize

import pytest

from .conftest import ROOT

EDIT_PATH = (
    "dragsdk/editor.py",
    "dragsdk/session.py",
    "dragsdk/sampler.py",
    "dragsdk/inversion.py",
    "dragsdk/cycle_sde.py",
    "dragsdk/passes.py",
    "dragsdk/keys.py",
)
MAX_LINES = 80
MAX_EDIT_LINES = 30


def _code_lines(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of code of a function: lines holding a token other than a comment, excluding its docstring."""
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    doc = set()
    body0 = node.body[0]
    if (
        isinstance(body0, ast.Expr)
        and isinstance(body0.value, ast.Constant)
        and isinstance(body0.value.value, str)
    ):
        doc = set(range(body0.lineno, body0.end_lineno + 1))
    seen = set()
    for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if tok.type in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            continue
        for row in range(tok.start[0], tok.end[0] + 1):
            seen.add(row + node.lineno - 1)
    return len(seen - doc)


def _functions(path: str) -> list[tuple[str, int]]:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    out = []
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                owner = parent.name + "." if isinstance(parent, ast.ClassDef) else ""
                out.append((f"{path}:{owner}{node.name}", _code_lines(source, node)))
    return out


@pytest.mark.parametrize("path", EDIT_PATH)
def test_no_function_on_the_edit_path_is_over_80_lines_of_code(path):
    long = [(name, n) for name, n in _functions(path) if n > MAX_LINES]
    assert not long, long


def test_editor_edit_fits_on_one_screen():
    sizes = dict(_functions("dragsdk/editor.py"))
    assert sizes["dragsdk/editor.py:Editor.edit"] <= MAX_EDIT_LINES


def test_the_line_counter_skips_the_docstring_comments_and_blank_lines():
    src = 'def f(a):\n    """doc\n    more"""\n    # note\n\n    x = (a +\n         1)\n    return x\n'
    (node,) = ast.parse(src).body
    assert _code_lines(src, node) == 4  # def, the two lines of x = ..., return


def test_an_edit_runs_the_named_stages_in_order(tiny_model, monkeypatch):
    from dragsdk import Editor
    from dragsdk.session import EditRun

    from .builtin_specs import IMAGE, builtin_specs

    order = []
    for stage in ("check_inputs", "prepare", "encode", "invert", "sample", "decode", "report"):
        original = getattr(EditRun, stage)
        monkeypatch.setattr(
            EditRun,
            stage,
            lambda self, *a, _f=original, _n=stage, **k: (order.append(_n), _f(self, *a, **k))[1],
        )
    Editor(tiny_model).edit(IMAGE, builtin_specs({"steps": 2, "resolution": 64})["move"])
    assert order == ["check_inputs", "prepare", "encode", "invert", "sample", "decode", "report"]


def _module_table() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]


def test_the_architecture_module_table_matches_the_files_on_disk():
    """Every module of dragsdk/ (its subpackages as folders) and the three top-level source folders has a row, and
    every row names something that exists."""
    rows = _module_table()
    assert len(rows) == len(set(rows)), "a module is listed twice"
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dragsdk").glob("*.py")}
    on_disk |= {p.parent.relative_to(ROOT).as_posix() + "/" for p in (ROOT / "dragsdk").glob("*/__init__.py")}
    on_disk |= {"plugins/", "backends/", "kernels/"}
    assert set(rows) == on_disk, (sorted(on_disk - set(rows)), sorted(set(rows) - on_disk))


def test_the_sources_are_ruff_formatted():
    """``ruff format`` is the project's formatter (pyproject ``[tool.ruff.format]``; ``make lint``): a change that
    is not formatted fails here, with the files named."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


RETIRED_TERMS = (
    "Reference feature",
    "reference feature",
    "reference_features",
    "reference forward",
    "step0_reference",
    "recompute_reference",
    "reference_profile",
    "cross_branch_attention_reference",
    "kernels.reference",
)
"""Former names whose "reference" meant something other than a reference image (docs/architecture.md, Terms)."""
ALLOWED = {"kernels/reference.py", "dragsdk/editor.py", "tests/test_architecture.py"}
"""The deprecated-name shim, Editor's deprecated ``reference_profile`` keyword, and this list."""


def test_reference_means_a_reference_image_only():
    found = []
    for folder in ("dragsdk", "plugins", "backends", "kernels", "docs", "examples", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT).as_posix()
            if path.suffix not in (".py", ".md") or rel in ALLOWED or "/build/" in rel:
                continue
            text = path.read_text()
            found += [f"{rel}: {term}" for term in RETIRED_TERMS if term in text]
    assert not found, found
