"""Import contracts (issue 20, item 2): the layers of docs/architecture.md, checked on the source, not described.

The graph is built from the source with ``ast`` (every ``import`` statement, module level or inside a function,
relative ones resolved; ``if TYPE_CHECKING:`` blocks are not imports at run time and are skipped). import-linter
cannot be used as is here: its graph (grimp) finds a package's modules under the package's folder, while this
repository maps ``dragsdk.plugins`` / ``dragsdk.backends`` / ``dragsdk.kernels`` to the top-level folders
``plugins/``, ``backends/``, ``kernels/`` (pyproject ``package-dir``). A module reached only through
``importlib.import_module`` (the deprecated-name shims: ``dragsdk.spec.DragSpec``, ``dragsdk.io.restricted_load``,
``dragsdk.backends.select.bench_backends``) is deliberately not an edge: they exist for old imports only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = {
    "dragsdk": "dragsdk",
    "plugins": "dragsdk.plugins",
    "backends": "dragsdk.backends",
    "kernels": "dragsdk.kernels",
}

LAYERS: list[set[str]] = [
    {"errors", "defaults", "_source_layout", "concurrency", "families"},
    {"io", "cache", "geometry", "keys", "fidelity", "safe_pickle", "hookspecs"},
    {
        "spec",
        "samples",
        "energy",
        "attention",
        "features",
        "regions",
        "objects",
        "image_prompt",
        "specfile_base",
    },
    {
        "plan",
        "passes",
        "inversion",
        "cycle_sde",
        "sampler",
        "optimise",
        "finetune",
        "dryrun",
        "progress",
        "trace",
        "report",
        "models",
        "adapters",
        "proposal",
    },
    {"modes", "registry", "specfile", "authoring", "result"},
    {"session", "editor", "testing"},
    {"cli", "backend_bench", "ui", "eval", "__init__"},
]
"""The core's layers, lowest first (``dragsdk.<name>``; a subpackage by its first part). A module may import its own
layer and the ones below, never one above. The top layer holds the applications (CLI, UI, benchmarks)."""


def module_files() -> dict[str, tuple[Path, bool]]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if is_package else parts)])
            out[name] = (path, is_package)
    return out


def imported(path: Path, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules ``path`` imports (each import resolved to its longest known module prefix)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for test in ast.walk(tree)
        if isinstance(test, ast.If) and "TYPE_CHECKING" in ast.unparse(test.test)
        for part in test.body
        for node in ast.walk(part)
    }
    package = name if is_package else name.rpartition(".")[0]
    raw: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            raw |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & known
            raw |= submodules if len(submodules) == len(node.names) else {module}  # `from . import x`: x only
    out = set()
    for target in raw:
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and ".".join(parts) != name:
            out.add(".".join(parts))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported(path, name, pkg, known) for name, (path, pkg) in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_is_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _core(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "dragsdk" or (len(parts) > 1 and parts[1] in ("plugins", "backends", "kernels")):
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_core_imports_only_its_own_layer_and_those_below(graph):
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    unplaced = sorted({_core(n) for n in graph} - set(layer_of) - {None})
    assert not unplaced, f"core modules in no layer of LAYERS (add them): {unplaced}"
    upward = [
        f"{a} (layer {layer_of[_core(a)]}) imports {b} (layer {layer_of[_core(b)]})"
        for a, targets in graph.items()
        if _core(a) is not None
        for b in targets
        if _core(b) is not None and layer_of[_core(b)] > layer_of[_core(a)]
    ]
    assert not upward, upward


def test_the_core_names_no_mode(graph):
    below_apps = [n for n in graph if _core(n) is not None and _core(n) not in LAYERS[-1]]
    found = [f"{a} imports {b}" for a in below_apps for b in graph[a] if b.startswith("dragsdk.plugins")]
    assert not found, found


def test_plugins_and_examples_import_only_the_author_api(graph):
    """A built-in mode is written like anyone's: from the library it imports ``dragsdk.authoring`` only (and its
    own package's modules)."""
    found = []
    for name, targets in graph.items():
        if not name.startswith("dragsdk.plugins"):
            continue
        own = ".".join(
            name.split(".")[:3]
        )  # dragsdk.plugins.<plugin>: a module, or a package and its modules
        allowed = {"dragsdk.authoring", "dragsdk._source_layout" if name == "dragsdk.plugins" else ""}
        found += [
            f"{name} imports {b}"
            for b in targets
            if b not in allowed and b != own and not b.startswith(own + ".")
        ]
    for path in sorted((ROOT / "examples").glob("*/*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dragsdk"):
                module = node.module or ""
                if module != "dragsdk.authoring" and not module.startswith("dragsdk.backends.base"):
                    found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not found, found


def test_backends_import_only_the_backend_api(graph):
    """A backend imports, from the library, the backend API (``dragsdk.backends.base``, the other backends it
    builds on, ``dragsdk.kernels``) only; the API module itself may use the core."""
    api = {"dragsdk.backends.base", "dragsdk.backends.select", "dragsdk.backends"}
    found = [
        f"{a} imports {b}"
        for a, targets in graph.items()
        if a.startswith("dragsdk.backends.") and a not in api
        for b in targets
        if not b.startswith(("dragsdk.backends", "dragsdk.kernels")) and b != "dragsdk._source_layout"
    ]
    assert not found, found
