"""Griffe extension used by ``mkdocs build`` (mkdocs.yml) to read dragsdk's sources statically.

Two jobs, neither imports dragsdk (no torch, no model):

1. dragsdk ships sub-packages from folders outside ``dragsdk/`` (``[tool.setuptools] package-dir`` in
   pyproject.toml: ``dragsdk.backends`` = ``backends/``, ...); griffe only finds sub-packages inside the package
   folder, so this loads those folders as members of the ``dragsdk`` package.
2. Docstrings use Sphinx roles (``:class:`~dragsdk.geometry.Canvas```); this turns each into a cross-reference
   (a link when the target is on the site, code text otherwise) and logs a warning, which fails
   ``mkdocs build --strict``, when the target is a dragsdk name that does not exist.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport (a dependency of pytest there)
    import tomli as tomllib

logger = griffe.get_logger("griffe_dragsdk")

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(
    r":(?:py:)?(?:class|func|data|mod|meth|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[\w.]+)(?:\(\))?`"
)


def _lazy_names() -> dict[str, str]:
    """``dragsdk.Editor`` → ``dragsdk.editor.Editor``: the top-level names ``dragsdk/__init__.py`` imports lazily
    (its ``_LAZY`` table), which static analysis does not see as members."""
    tree = ast.parse((ROOT / "dragsdk" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return {f"dragsdk.{k}": f"{v}.{k}" for k, v in ast.literal_eval(node.value).items()}
    return {}


LAZY = _lazy_names()


def _package_dirs() -> dict[str, Path]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in setuptools.get("package-dir", {}).items() if "." in name}


class DragsdkDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "dragsdk":
            return
        for dotted, folder in _package_dirs().items():
            name = dotted.split(".", 1)[1]
            if name in pkg.members:
                continue
            self._visit_folder(name, folder, pkg, loader)
        self._rewrite(pkg)

    def _visit_folder(
        self, name: str, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader
    ) -> None:
        """One package folder: its ``__init__``, its modules and, recursively, its sub-packages (a folder holding an
        ``__init__.py``, e.g. ``plugins/region_drag/`` = ``dragsdk.plugins.region_drag``)."""
        sub = self._visit(name, folder / "__init__.py", parent, loader)
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py":
                self._visit(path.stem, path, sub, loader)
        for child in sorted(folder.iterdir()):
            if child.is_dir() and (child / "__init__.py").is_file() and child.name not in sub.members:
                self._visit_folder(child.name, child, sub, loader)

    @staticmethod
    def _visit(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        module = griffe.visit(
            name,
            path,
            path.read_text(encoding="utf-8"),
            parent=parent,
            extensions=loader.extensions,
            docstring_parser=loader.docstring_parser,
            docstring_options=loader.docstring_options,
            lines_collection=loader.lines_collection,
            modules_collection=loader.modules_collection,
        )
        parent.set_member(name, module)
        return module

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: self._ref(obj, m), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member)

    @staticmethod
    def _ref(obj: griffe.Object, match: re.Match[str]) -> str:
        target = match["target"]
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        head, _, rest = target.partition(".")
        scope = obj if obj.is_module or obj.is_class else obj.parent
        try:
            full = scope.resolve(head) + (f".{rest}" if rest else "") if scope is not None else target
        except griffe.NameResolutionError:
            full = target
        for name, where in LAZY.items():
            if full == name or full.startswith(f"{name}."):
                full = where + full[len(name) :]
        if full.startswith("dragsdk"):
            try:
                obj.modules_collection.get_member(full)
            except (KeyError, ValueError, griffe.AliasResolutionError):
                logger.warning("%s: cross-reference to %r, which does not exist", obj.path, target)
        return f'<autoref identifier="{full}" optional><code>{title}</code></autoref>'
