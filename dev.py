#!/usr/bin/env python3
"""Bootstrap for running trioflow's nox sessions on a fresh machine.

A fresh machine has Python 3.11+ but usually no nox, and PEP 668 system
Pythons refuse ``pip install`` outside a virtualenv.  So this stdlib-only
script keeps a private virtualenv in ``.venv-dev/`` holding just nox, creates
it when missing, and hands off to it:

    python3 dev.py                  # usage + list of sessions
    python3 dev.py tests            # nox -s tests
    python3 dev.py tests -k pipe    # nox -s tests -- -k pipe
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-dev"
PYTHON = VENV / "bin" / "python"


def ensure_nox() -> None:
    """Create .venv-dev/ and install nox into it if needed."""
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.name}/", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    has_nox = subprocess.run([str(PYTHON), "-c", "import nox"], capture_output=True).returncode == 0
    if not has_nox:
        print("dev.py: installing nox", file=sys.stderr, flush=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "nox>=2024.4"], check=True)


def nox(*args: str) -> int:
    return subprocess.run([str(PYTHON), "-m", "nox", *args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    ensure_nox()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return nox("-l")
    session, extra = argv[0], argv[1:]
    if extra and extra[0] == "--":
        extra = extra[1:]
    return nox("-s", session, *(["--", *extra] if extra else []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
