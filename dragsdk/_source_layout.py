"""Keep a source checkout's top-level ``plugins/``, ``backends/`` and ``kernels/`` from shadowing other packages.

Those folders are installed as ``dragsdk.plugins``, ``dragsdk.backends`` and ``dragsdk.kernels`` (pyproject.toml,
``[tool.setuptools] package-dir``); the wheel has no top-level package of those names. But Python puts the
current folder (``python -c``, ``python -m``, a REPL) or a script's folder first on ``sys.path``, and anything may
put a checkout's root on ``PYTHONPATH`` (subprocesses, Ray workers). From there ``import kernels`` would find this
project's folder before Hugging Face's ``kernels`` distribution, which transformers imports.

Each of the three ``__init__.py`` files calls :func:`yield_bare_name` first when it is imported under its bare
name: the module then replaces itself with the next module of that name on ``sys.path`` (the installed one), or
raises ``ModuleNotFoundError`` as if the folder were not there. Nothing of the folder runs under the bare name.

Why not the other ways: renaming the folders changes the layout of the design; removing the ``__init__.py`` files
(namespace portions, which yield to a regular package) breaks setuptools' editable installs, whose finder cannot
resolve a namespace sub-package of a regular package mapped to another folder (``dragsdk.kernels`` then fails to
import), and drops ``dragsdk.kernels``' package-level API.

Limit: ``importlib.util.find_spec("kernels")`` from the checkout's root still names the folder (a lookup does not
import); the name only resolves to it on import, and the import yields.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_root(entry: str) -> bool:
    try:
        return os.path.samefile(entry or os.getcwd(), _ROOT)
    except OSError:
        return False


def yield_bare_name(name: str) -> None:
    """Replace the bare-named module ``name`` (being imported) with the next one of that name on ``sys.path``.

    Called at the top of ``plugins/__init__.py``, ``backends/__init__.py`` and ``kernels/__init__.py`` when their
    ``__name__`` is the bare folder name. The import statement that triggered it receives the installed module
    (the import system returns ``sys.modules[name]`` after the module body ran).

    Raises:
        ModuleNotFoundError: no other module called ``name`` is importable (the same error as without the folder).
    """
    path = [entry for entry in sys.path if not _is_root(entry)]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
