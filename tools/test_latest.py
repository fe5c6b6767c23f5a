"""Run the fast subset against the newest upstream releases and name the package that broke it (``make test-latest``).

Runs ``pytest -m smoke`` in the current interpreter's environment (``.venv-latest``). It compares every installed
distribution with ``requirements/lock.txt``, the tested set. On a failure it prints one last line naming the
upstream distribution and version that broke, found in the failures' tracebacks: the deepest frame inside a
distribution whose version differs from the lock. When no such frame exists it names every distribution that
moved. The fix is either a code change or an upper bound in pyproject.toml with a comment saying why
(tests/test_dependencies.py requires the comment).

``make test-oldest`` runs it too, in ``.venv-oldest`` (every direct dependency at its lower bound) with
``--label test-oldest``: there the distribution it names is the one whose old version broke, and the fix is a raised
lower bound.

Usage: ``python tools/test_latest.py [--lock requirements/lock.txt] [--label test-latest] [pytest args...]``.
Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAME = re.compile(r"(?:site|dist)-packages/([A-Za-z0-9_]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def moved(lock: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Installed distributions whose version differs from the lock: name → (installed, locked or None)."""
    out = {}
    for dist in md.distributions():
        name = _norm(dist.metadata["Name"] or "")
        if not name or name == "dragsdk":
            continue
        version = dist.version.split("+", 1)[0]
        if lock.get(name) != version:
            out[name] = (version, lock.get(name))
    return out


def culprits(report: str, changed: dict[str, tuple[str, str | None]]) -> list[str]:
    """Distributions that moved, in the order their modules appear deepest-first in the failures' tracebacks."""
    owners = {mod: [_norm(d) for d in dists] for mod, dists in md.packages_distributions().items()}
    seen: list[str] = []
    for module in reversed(FRAME.findall(report)):
        for dist in owners.get(module, []):
            if dist in changed and dist not in seen:
                seen.append(dist)
    return seen


def _failures(junit: Path) -> tuple[int, str]:
    if not junit.exists():
        return 0, ""
    root = ET.parse(junit).getroot()
    texts = [
        (el.text or "") + (el.get("message") or "") for el in root.iter() if el.tag in ("failure", "error")
    ]
    return len(texts), "\n".join(texts)


def _describe(name: str, changed: dict[str, tuple[str, str | None]]) -> str:
    new, old = changed[name]
    return f"{name}=={new} (tested: {old})" if old else f"{name}=={new} (new, not in the lock)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements" / "lock.txt")
    parser.add_argument("--label", default="test-latest", help="the make target named in the output lines")
    args, pytest_args = parser.parse_known_args(argv)
    changed = moved(read_lock(args.lock))
    print(
        f"{args.label}: {len(changed)} distributions differ from {args.lock.name}: "
        + ", ".join(_describe(n, changed) for n in sorted(changed)),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        start = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-m",
                "smoke",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *pytest_args,
            ],
            cwd=ROOT,
        )
        took = time.monotonic() - start
        count, report = _failures(junit)
    if done.returncode == 0:
        print(f"{args.label}: the fast subset passed with these versions in {took:.0f} s")
        return 0
    names = culprits(report, changed)
    if names:
        print(
            f"{args.label}: FAILED ({count} failing tests) with {_describe(names[0], changed)}"
            + (
                f"; also in the tracebacks: {', '.join(_describe(n, changed) for n in names[1:])}"
                if names[1:]
                else ""
            )
        )
    else:
        print(
            f"{args.label}: FAILED ({count} failing tests, exit {done.returncode}); no moved distribution in the "
            f"tracebacks; moved: {', '.join(_describe(n, changed) for n in sorted(changed)) or 'none'}"
        )
    return done.returncode or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
