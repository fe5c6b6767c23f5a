"""Documentation (issue 14, item 4): the API reference builds from the docstrings with ``mkdocs build --strict``
and documents every name an embedder, a mode author and a backend author imports; user-facing texts (docstrings,
spec JSON Schemas, docs pages) carry no internal-notes vocabulary."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dragsdk
import dragsdk.authoring
import dragsdk.backends.base
from dragsdk.registry import get_registry

from .conftest import ROOT

# Words of the project's internal notes that mean nothing to a user: sources are cited as the paper (arXiv id,
# section, equation) or the official code's file:line instead.
DENY = re.compile(r"dossier|shared/research|parity report|parity audit", re.IGNORECASE)

SOURCE_FOLDERS = ("dragsdk", "plugins", "backends", "kernels")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings_handlers") is None
    ):
        pytest.skip("mkdocs / mkdocstrings[python] not installed (the dev extra installs them)")
    out = tmp_path_factory.mktemp("site")
    run = _build(ROOT / "mkdocs.yml", out)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def _build(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _anchors(site: Path, page: str) -> set[str]:
    html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
    return set(re.findall(r'id="(dragsdk[\w.]*)"', html))


def _top_level_anchor(name: str) -> str:
    """Where the reference documents ``dragsdk.<name>``: classes and functions under their defining module (the
    top-level names are lazy re-exports), anything else under ``dragsdk``."""
    obj = getattr(dragsdk, name)
    module = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
    if module and module.startswith("dragsdk.") and getattr(obj, "__qualname__", None) == name:
        return f"{module}.{name}"
    return f"dragsdk.{name}"


@pytest.mark.slow
@pytest.mark.smoke
def test_the_embedder_reference_documents_every_top_level_name(site):
    anchors = _anchors(site, "embedding") | _anchors(site, "specs")
    missing = sorted(n for n in dragsdk.__all__ if _top_level_anchor(n) not in anchors)
    assert not missing, f"dragsdk names without a heading in reference/embedding or /specs: {missing}"
    assert {
        "dragsdk.models.load_model",
        "dragsdk.editor.Editor.edit",
        "dragsdk.dryrun.DryRun",
        "dragsdk.cache.LRUCache",
        "dragsdk.report.EditReport",
    } <= anchors


@pytest.mark.slow
def test_the_author_reference_documents_every_name_of_dragsdk_authoring(site):
    anchors = _anchors(site, "authoring")
    missing = sorted(n for n in dragsdk.authoring.__all__ if f"dragsdk.authoring.{n}" not in anchors)
    assert not missing, f"dragsdk.authoring names without a heading in reference/authoring: {missing}"
    assert "dragsdk.authoring.EditMode.plan" in anchors and "dragsdk.authoring.Canvas.to_cell" in anchors


@pytest.mark.slow
def test_the_backend_reference_documents_the_backend_interface_and_the_hooks(site):
    anchors = _anchors(site, "backends")
    base = dragsdk.backends.base
    methods = [n for n, v in vars(base.Backend).items() if not n.startswith("_") and callable(v)]
    assert {"Backend", "Capabilities", "KVSource", "join_sources", "hookimpl"} <= set(
        base.__all__
    ) and methods
    expected = {f"dragsdk.backends.base.{n}" for n in base.__all__} | {
        f"dragsdk.backends.base.Backend.{m}" for m in methods
    }
    assert not expected - anchors, sorted(expected - anchors)
    assert "dragsdk.kernels.oracle.cross_branch_attention_oracle" in anchors
    hooks = _anchors(site, "plugins")
    assert {
        "dragsdk.hookspecs.dragsdk_register_modes",
        "dragsdk.hookspecs.dragsdk_register_backends",
        "dragsdk.registry.Registry",
    } <= hooks


@pytest.mark.slow
def test_sphinx_roles_become_links_and_no_raw_role_reaches_the_page(site):
    pages = {
        p: (site / "reference" / p / "index.html").read_text(encoding="utf-8")
        for p in ("embedding", "specs", "authoring", "plugins", "backends")
    }
    for page, html in pages.items():
        assert not re.search(r":(class|func|meth|mod|data|attr):`", html), page
        assert "<autoref" not in html, page  # every cross-reference was resolved or dropped to code text
    # ":class:`EditPlan`" in the authoring module docstring is a link to where EditPlan is documented.
    assert re.search(
        r'<a class="autorefs autorefs-internal"[^>]*href="#dragsdk\.authoring\.EditPlan"', pages["authoring"]
    )


@pytest.mark.slow
def test_a_broken_link_fails_the_strict_build(site, tmp_path):
    """The site's own configuration, on a page that builds, then with a link to a missing page."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    handler = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    handler["paths"] = [str(ROOT)]
    handler["options"]["extensions"] = [f"{ROOT / 'docs' / 'griffe_dragsdk.py'}:DragsdkDocs"]
    docs = tmp_path / "docs"
    docs.mkdir()
    config.update(docs_dir=str(docs), nav=["index.md"])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config), encoding="utf-8")

    (docs / "index.md").write_text("# Page\n\n::: dragsdk.errors\n", encoding="utf-8")
    assert _build(tmp_path / "mkdocs.yml", tmp_path / "ok").returncode == 0  # the set-up itself builds
    (docs / "index.md").write_text("# Page\n\nSee [specs](specs.md).\n", encoding="utf-8")
    run = _build(tmp_path / "mkdocs.yml", tmp_path / "broken")
    assert run.returncode != 0 and "specs.md" in run.stderr


@pytest.mark.slow
def test_a_sphinx_role_naming_a_missing_dragsdk_object_is_a_warning_and_a_real_one_a_cross_reference(
    site, caplog
):
    import griffe

    spec = importlib.util.spec_from_file_location("griffe_dragsdk", ROOT / "docs" / "griffe_dragsdk.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    package = griffe.load("dragsdk", search_paths=[ROOT], extensions=griffe.load_extensions(ext.DragsdkDocs))
    assert "base" in package["backends"].members  # the package-dir sub-packages are loaded
    modes = package["modes"]
    with caplog.at_level("WARNING"):
        text = ext.ROLE.sub(
            lambda m: ext.DragsdkDocs._ref(modes, m),
            ":class:`~dragsdk.modes.EditMod`, :class:`EditMode`, :meth:`dragsdk.Editor.edit`",
        )
    assert "EditMod'" in caplog.text and "EditMode'" not in caplog.text and "Editor" not in caplog.text
    assert '<autoref identifier="dragsdk.modes.EditMode" optional><code>EditMode</code></autoref>' in text
    # a lazy top-level name (dragsdk/__init__.py _LAZY) points where the reference documents it
    assert (
        '<autoref identifier="dragsdk.editor.Editor.edit" optional><code>dragsdk.Editor.edit</code>' in text
    )


@pytest.mark.slow
def test_the_generated_reference_has_no_internal_vocabulary(site):
    for page in (site / "reference").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not DENY.search(text), f"{page.relative_to(site)}: {DENY.search(text)[0]!r}"


def _docstrings(path: Path) -> Iterator[tuple[int, str]]:
    """Every docstring of a source file: module, class, function and attribute (a string statement)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            yield node.lineno, node.value.value


def _source_files() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_docstring_walk_sees_the_public_docstrings():
    texts = [text for path in _source_files() for _, text in _docstrings(path)]
    assert len(_source_files()) > 40 and len(texts) > 500
    assert any("Decode a mask given in any" in t for t in texts)  # dragsdk.authoring.load_mask


def test_no_docstring_carries_internal_vocabulary():
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {DENY.search(text)[0]!r}"
        for path in _source_files()
        for line, text in _docstrings(path)
        if DENY.search(text)
    ]
    assert not hits, "\n".join(hits)


def _schema_strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _schema_strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_strings(value, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node


def test_no_spec_schema_of_a_registered_mode_carries_internal_vocabulary():
    models = get_registry().spec_models()
    assert {"drag", "move", "resize", "appearance", "paste", "region-drag"} <= set(models)
    strings = [
        (f"{mode}{where}", text)
        for mode, model in models.items()
        for where, text in _schema_strings(model.model_json_schema(), "")
    ]
    assert any(where.endswith(".description") for where, _ in strings)
    hits = [f"{where}: {text[:80]!r}" for where, text in strings if DENY.search(text)]
    assert not hits, "\n".join(hits)


def test_no_docs_page_carries_internal_vocabulary():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in pages
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if DENY.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_deny_list_catches_the_vocabulary_it_is_for():
    schema = {"properties": {"x": {"description": "defaults (Dossier §5)"}}}
    assert [w for w, t in _schema_strings(schema, "") if DENY.search(t)] == [".properties.x.description"]
    assert DENY.search("see ../shared/research/parity/regiondrag.md") and not DENY.search(
        "arXiv 2307.02421 §3.4"
    )
