"""The ``trioflow`` command (also ``python -m trioflow``), built on click.

* ``trioflow run MODULE:ATTR``: run a ``Flow``, ``Pipeline`` or ``Graph`` (or a function,
  plain or async, that returns one) until it ends; Ctrl-C (or SIGTERM) drains it, a second
  one aborts it. ``--progress`` shows a bar per source, ``--dashboard`` a live table of
  every stage (both need ``trioflow[rich]``), ``--metrics-port`` serves Prometheus
  metrics (``trioflow[metrics]``).
* ``trioflow graph MODULE:ATTR --format mermaid|dot|svg|png``: print (or write with
  ``-o``) its plan as a diagram; svg and png need Graphviz's ``dot``.
* ``trioflow demo``: the demo pipeline (synthetic readings into SQLite).

Exit codes of ``run`` and ``demo``: 0 when the run completed (its input ended, or the first
Ctrl-C or SIGTERM drained it), 130 when it was aborted (a second signal, or the drain's
deadline) or interrupted outside the run, 1 when it failed; 2 for a usage error (a bad
option, a ``MODULE:ATTR`` that names nothing runnable).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import trio

#: Exit code after an abort or an interruption: 128 + SIGINT, as a shell reports Ctrl-C.
EXIT_INTERRUPTED = 130
#: Exit code of a run that failed.
EXIT_FAILED = 1
_HINT = "MODULE:ATTR"


# -- MODULE:ATTR --------------------------------------------------------------------------------


def _import_target(spec: str) -> Any:
    """The object ``spec`` (``module:attr``, ``attr`` may be dotted) names; a
    ``click.BadParameter`` naming what was not found (the module, or which attribute)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:ATTR (e.g. pipelines:flow), got {spec!r}",
                                 param_hint=_HINT)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise click.BadParameter(f"module {module_name!r} not found (looked in the current "
                                     "directory and sys.path)", param_hint=_HINT) from None
        raise click.BadParameter(f"importing module {module_name!r} failed: {exc}",
                                 param_hint=_HINT) from None
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(exc)).strip()
        raise click.BadParameter(f"importing module {module_name!r} failed: {detail}",
                                 param_hint=_HINT) from None
    obj: Any = module
    path = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = "" if path == module_name else f" ({path!r} has no {part!r})"
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}{where}",
                                     param_hint=_HINT)
        obj = getattr(obj, part)
        path = f"{path}.{part}" if path != module_name else f"{module_name}:{part}"
    return obj


def _runnable_kinds() -> tuple[type, ...]:
    import trioflow as tf

    return (tf.Flow, tf.Pipeline, tf.Graph)


async def _resolve(spec: str, obj: Any) -> Any:
    """``obj`` if it is a Flow, Pipeline or Graph, else what calling it (with no arguments,
    awaiting an async result) returns, which must be one."""
    kinds = _runnable_kinds()
    if not isinstance(obj, kinds) and callable(obj):
        made = obj()
        obj = await made if inspect.isawaitable(made) else made
    if not isinstance(obj, kinds):
        raise click.BadParameter(f"{spec!r} is a {type(obj).__name__}, not a Flow, Pipeline or Graph "
                                 "(nor a function returning one)", param_hint=_HINT)
    return obj


# -- the command group --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """trioflow: streaming pipelines for Trio."""


@cli.command()
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--progress", "show_progress", is_flag=True,
              help="show a progress bar per source (needs trioflow[rich])")
@click.option("--dashboard", "show_dashboard", is_flag=True,
              help="show a live table of every stage and edge (needs trioflow[rich])")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="serve Prometheus metrics on 127.0.0.1:PORT (needs trioflow[metrics])")
@click.option("--drain-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, metavar="SECONDS",
              help="after the first Ctrl-C, abort if the drain takes longer than this")
def run(target: str, show_progress: bool, show_dashboard: bool, metrics_port: int | None,
        drain_timeout: float) -> None:
    """Run the Flow, Pipeline or Graph MODULE:ATTR (or the function, plain or async,
    returning one) until it ends.

    MODULE is imported as `python -m` would (the current directory first). The first
    Ctrl-C (or SIGTERM) drains the run: the sources stop, what they handed over finishes;
    a second one aborts it. Prints how the run ended and the final statistics (the
    summary line with --progress, the last frame with --dashboard), then the result if
    there is one. Exit code 0 when it completed (or drained), 130 when aborted, 1 when it
    failed.
    """
    if show_progress and show_dashboard:
        raise click.UsageError("--progress and --dashboard draw on the same screen: choose one")
    if show_progress or show_dashboard:
        _need_rich("--progress" if show_progress else "--dashboard")
    serve = _metrics_hook() if metrics_port is not None else None
    obj = _import_target(target)
    try:
        code = trio.run(_run, target, obj, show_progress, show_dashboard, serve, metrics_port,
                        drain_timeout)
    except KeyboardInterrupt:  # a Ctrl-C before the run started or after it ended
        click.echo("trioflow run: interrupted", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code)


def _need_rich(option: str) -> None:
    if importlib.util.find_spec("rich") is None:
        raise click.UsageError(f"{option} needs rich: install trioflow[rich]")


def _metrics_hook() -> Any:
    """``trioflow.metrics.serve``, or a usage error saying what to install. The contract:
    ``serve(handle, port, task_status=...)`` is an async function that serves the run's
    metrics on 127.0.0.1:``port`` and reports the bound port through ``nursery.start``; it
    runs as a task beside the run and is cancelled once the run has ended."""
    try:
        found = importlib.util.find_spec("trioflow.metrics") is not None
    except ImportError:
        found = False
    if found:
        try:
            metrics = importlib.import_module("trioflow.metrics")
        except ImportError as exc:
            raise click.UsageError(f"--metrics-port: {exc}; install trioflow[metrics]") from None
        return metrics.serve
    raise click.UsageError("--metrics-port needs trioflow.metrics: install trioflow[metrics]")


class _WithProgress:
    """The runnable with ``progress=True`` passed to its ``run``."""

    def __init__(self, runnable: Any) -> None:
        self._runnable = runnable

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> Any:
        return await self._runnable.run(progress=True, task_status=task_status)


async def _run(target: str, obj: Any, show_progress: bool, show_dashboard: bool, serve: Any,
               metrics_port: int | None, drain_timeout: float) -> int:
    from ._signals import run_until_signal
    from ._stats import RunState

    runnable = await _resolve(target, obj)
    if show_progress:
        runnable = _WithProgress(runnable)
    try:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                lambda task_status: run_until_signal(runnable, drain_timeout=drain_timeout,
                                                     task_status=task_status))
            if show_dashboard:
                from .display import dashboard

                nursery.start_soon(dashboard, handle)
            if serve is not None:
                # started, not start_soon: a port already taken fails here, and the bound
                # port (0 picks a free one) is known to print
                port = await nursery.start(serve, handle, metrics_port)
                click.echo(f"metrics: http://127.0.0.1:{port}/metrics", err=True)
            await handle.wait()
            nursery.cancel_scope.cancel()  # the metrics endpoint; the dashboard ended by itself
    except Exception as exc:  # the run failed: its errors, each noted with its stage
        click.echo("state: failed", err=True)
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
        return EXIT_FAILED
    stats = handle.statistics()
    if show_dashboard and sys.stdout.isatty():
        click.echo(f"state: {stats.state.value}")  # the dashboard's last frame shows the rest
    elif not show_progress:
        click.echo(stats.table())
    if stats.state is RunState.COMPLETED:
        result = handle.result()
        if result is not None:
            text = repr(result)
            click.echo(f"result: {text if len(text) <= 1000 else text[:1000] + ' ...'}")
        return 0
    return EXIT_INTERRUPTED


@cli.command()
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "svg", "png"]), default="mermaid",
              show_default=True, help="mermaid and dot are text; svg and png need Graphviz's dot")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              default=None, help="write to this file instead of stdout")
def graph(target: str, fmt: str, output: Path | None) -> None:
    """Print the plan of MODULE:ATTR (a Flow, Pipeline or Graph, or a function returning
    one) as a diagram: one box per segment (the stages fused into one task), an arrow per
    connection, labelled with the edge's capacity."""
    obj = _import_target(target)
    runnable = trio.run(_resolve, target, obj)
    plan = runnable.plan()
    if fmt in ("mermaid", "dot"):
        data = (plan.to_mermaid() if fmt == "mermaid" else plan.to_dot()).encode() + b"\n"
    else:
        from ._render import GraphvizNotFound

        try:
            data = plan.render(fmt)
        except GraphvizNotFound as exc:
            raise click.ClickException(str(exc)) from None
    if output is not None:
        output.write_bytes(data)
    elif fmt == "png" and sys.stdout.isatty():
        raise click.UsageError("--format png is binary: write it to a file with -o FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@cli.command()
@click.option("--records", type=click.IntRange(min=0), default=50_000, show_default=True,
              help="lines to generate")
@click.option("--forever", is_flag=True, help="generate lines until Ctrl-C or SIGTERM")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file (default: a temp file)")
@click.option("--write-delay", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="wait this long before each batch write, as a slow database would")
def demo(records: int, forever: bool, db: Path | None, write_delay: float) -> None:
    """Run the demo pipeline (synthetic readings into SQLite).

    Ctrl-C (or SIGTERM) drains it and prints the final statistics (exit code 0); a second
    one aborts it (exit code 130).
    """
    if forever and click.get_current_context().get_parameter_source("records") is \
            click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--records and --forever exclude each other")
    from ._demo import run_demo
    from ._stats import RunState

    try:
        state = trio.run(run_demo, None if forever else records, db, 1, write_delay)
    except KeyboardInterrupt:  # a Ctrl-C before the run started or after it ended
        click.echo("trioflow demo: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0 if state is RunState.COMPLETED else EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        cli.main(args=argv, prog_name="trioflow", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
