#!/usr/bin/env python3
"""Bootstrap for running trioflow's nox sessions on a fresh machine.

A fresh machine has Python 3.11+ but usually no nox, and PEP 668 system
Pythons refuse ``pip install`` outside a virtualenv.  So this stdlib-only
script keeps a private virtualenv in ``.venv-dev/`` holding just nox, creates
it when missing, and hands off to it:

    python3 dev.py                  # usage + list of sessions
    python3 dev.py tests            # nox -s tests
    python3 dev.py tests -k pipe    # nox -s tests -- -k pipe

Ctrl-C: the terminal sends SIGINT to dev.py and to the command it runs (they share a
process group). dev.py lets the command finish its own shutdown (the demo drains and
prints its statistics), then exits quietly with the command's exit code if that is
non-zero (it says more: nox's 130, a failure) and with 130 otherwise.

SIGTERM (a CI runner giving up, ``kill``) reaches dev.py alone: dev.py passes it on to
the command as SIGINT, the signal nox turns into stopping its own session command (nox
does not handle SIGTERM: it would die and leave that command running), waits for the
command, and exits with 143.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import venv
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-dev"
PYTHON = VENV / "bin" / "python"
#: Exit code after Ctrl-C: 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: Exit code after SIGTERM: 128 + SIGTERM.
EXIT_TERMINATED = 128 + signal.SIGTERM


def run(cmd: list[str], cwd: Path | None = None) -> int:
    """Run ``cmd`` to its end and return its exit code (128 + N if signal N killed it).

    A Ctrl-C reaches the child as well (one process group), so while the child runs, SIGINT
    here only notes that it came: the child decides how to stop, and is waited for. After a
    Ctrl-C the result is the child's code if non-zero, else ``EXIT_INTERRUPTED``. A SIGTERM
    sent to this process alone is passed on to the child as SIGINT, and the result is
    ``EXIT_TERMINATED`` once the child has ended.
    """
    interrupted = terminated = False
    proc: subprocess.Popen[bytes] | None = None

    def note(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    def terminate(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, note)
    previous_term = signal.signal(signal.SIGTERM, terminate)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd)
        if terminated:  # SIGTERM came while the child was being started
            proc.send_signal(signal.SIGINT)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    if code < 0:
        code = 128 - code
    if terminated:
        return EXIT_TERMINATED
    if interrupted and code == 0:
        return EXIT_INTERRUPTED
    return code


def ensure_nox() -> None:
    """Create .venv-dev/ and install nox into it if needed."""
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.name}/", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    has_nox = subprocess.run([str(PYTHON), "-c", "import nox"], capture_output=True).returncode == 0
    if not has_nox:
        print("dev.py: installing nox", file=sys.stderr, flush=True)
        code = run([str(PYTHON), "-m", "pip", "install", "-q", "nox>=2024.4"])
        if code:
            raise SystemExit(code)


def nox(*args: str) -> int:
    return run([str(PYTHON), "-m", "nox", *args], cwd=ROOT)


def main(argv: list[str]) -> int:
    ensure_nox()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return nox("-l")
    session, extra = argv[0], argv[1:]
    if extra and extra[0] == "--":
        extra = extra[1:]
    return nox("-s", session, *(["--", *extra] if extra else []))


def cli(argv: list[str]) -> int:
    """``main`` with a quiet Ctrl-C: no traceback, exit code 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:  # outside a child (creating the virtualenv, say)
        print("dev.py: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
