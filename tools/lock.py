"""Write requirements/lock.txt from a virtual environment (``make lock``).

Usage: ``python tools/lock.py VENV LOCKFILE``. Freezes every distribution installed in ``VENV`` (pip and
setuptools included, dragsdk itself excluded), drops torch's local build tag (``2.13.0+cpu`` → ``2.13.0``, which
``==`` still matches) and writes them sorted under a header saying how the file was made.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

HEADER = """\
# The tested, fully pinned dependency set of dragsdk's development environment (constraints, not requirements).
# Produced by `make lock` (newest versions pyproject.toml allows, CPU torch 2.13.0, Python {python}) on {date};
# `make test` passed with exactly this set. `make demo`, `make test`, `make docs` and .ci/run install with it.
# Refresh: `make lock`, then `make test`; commit this file only if that passes.
"""


def frozen(venv: Path) -> list[str]:
    python = venv / "bin" / "python"
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e")) or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower() == "dragsdk":
            continue
        pins.append(f"{name}=={version.split('+', 1)[0] if name.lower() == 'torch' else version}")
    return sorted(pins, key=str.lower)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    venv, lock = Path(argv[0]), Path(argv[1])
    pins = frozen(venv)
    text = (
        HEADER.format(python=".".join(platform.python_version_tuple()[:2]), date=datetime.date.today())
        + "\n".join(pins)
        + "\n"
    )
    tmp = lock.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(lock)
    print(f"{lock}: {len(pins)} pinned distributions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
