"""Live displays of a running pipeline in a terminal, drawn with rich: per-source progress
bars and a dashboard of every stage and edge.

Needs the ``rich`` extra (``pip install 'trioflow[rich]'``); ``import trioflow`` never
imports rich, only this module does. Both displays read the run's ``statistics()``
snapshots on their own timer (``interval``: 4 Hz for progress, 2 Hz for the dashboard by
default), never in the run's hot path, and redraw from the Trio thread (no refresh
thread). On a console that is not a terminal they draw nothing while the run goes.

* ``await progress(handle)``: a bar per source, with the fraction done and the time left
  when the source's total is known (``len()`` of a sized iterable, or ``total=``), else
  its count; then one plain summary line (printed on any console).
* ``await dashboard(handle)``: a table per stage (lifecycle, in, out, rate, in flight,
  errors, retries, restarts, dead letters) and per edge (depth, capacity, peak); the
  stage holding the run back (its input edge full, its output empty) is marked.

Each returns the last ``Sample`` once the run has ended (the last frame stays on screen);
cancelling one does not affect the run. ``run(progress=True)`` shows ``progress``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TaskID, TextColumn
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - the extra is part of the test extra
    raise ImportError("trioflow.display needs rich: pip install 'trioflow[rich]'") from exc

from ._runtime import RunHandle
from ._watch import DEFAULT_INTERVAL, Sample, bottleneck, edges_of, eta, source_totals, summary, watch

__all__ = ["dashboard", "dashboard_view", "progress"]


def _redraw(sample: Sample) -> bool:
    """Whether to draw ``sample`` now: not the first one (a run that ends within the first
    interval is drawn once, at its end), nor the final one (leaving the ``Live`` draws it)."""
    return sample.elapsed > 0 and not sample.final


# -- progress ----------------------------------------------------------------------------------


def _detail(done: int, total: int | None, rate: float) -> str:
    if total is None:
        return f"{done:,} items  {rate:,.0f}/s"
    pct = 100.0 if total == 0 else 100 * min(done, total) / total
    return f"{done:,}/{total:,}  {pct:3.0f}%  {rate:,.0f}/s  eta {eta(done, total, rate)}"


async def progress(
    handle: RunHandle[Any], *, console: Console | None = None, interval: float = DEFAULT_INTERVAL,
) -> Sample:
    """Show a progress bar per source of the run until it ends, then print one summary line.

    A source with a known total gets a bar with the fraction done, its rate and the time
    left; one without gets a moving bar, its count and rate. On a console that is not a
    terminal (stdout redirected) nothing is drawn until the summary line."""
    console = console or Console()
    totals = source_totals(handle)
    live = console.is_terminal
    bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                    console=console, auto_refresh=False)
    tasks: dict[str, TaskID] = {}

    def draw(sample: Sample) -> None:
        for name, total in totals.items():
            done = sample.statistics.stage(name).items_out
            detail = _detail(done, total, sample.rates.get(name, 0.0))
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total, completed=done, detail=detail)
            else:
                bars.update(tasks[name], completed=done, detail=detail)
        if _redraw(sample):
            bars.refresh()

    if live:
        with bars:
            last = await watch(handle, draw, interval=interval)
    else:
        last = await watch(handle, lambda _: None, interval=interval)
    console.print(summary(last, totals), highlight=False, markup=False)
    return last


# -- dashboard ---------------------------------------------------------------------------------


_STAGE_COLUMNS = ("stage", "lifecycle", "in", "out", "rate/s", "in flight", "errors", "retries",
                  "restarts", "dead letters", "")
_EDGE_COLUMNS = ("edge", "depth", "capacity", "peak", "total", "dropped")
_TEXT_COLUMNS = frozenset({"stage", "lifecycle", "edge", ""})


def _table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], str | None]],
           title: str | None = None) -> Table:
    """A table whose columns get their width from their cells here, so rich need not
    measure every cell at every frame (what makes a frame cheap); names left-aligned,
    counts right-aligned."""
    table = Table(title=title, title_justify="left", expand=False)
    for i, col in enumerate(header):
        width = max([len(col), *(len(cells[i]) for cells, _ in rows)])
        table.add_column(col, width=width, no_wrap=True, justify="left" if col in _TEXT_COLUMNS else "right")
    for cells, style in rows:
        table.add_row(*cells, style=style)
    return table


def dashboard_view(sample: Sample, segments: Mapping[int, tuple[list[int], list[int]]],
                   caption: str | None = None) -> Group:
    """The dashboard of one sample: a stage table, an edge table, and ``caption``.
    ``segments`` maps each segment to its input and output edges (``handle.plan``)."""
    stats = sample.statistics
    slow = bottleneck(stats, segments)
    stage_rows = [
        ((s.name, s.lifecycle.value, f"{s.items_in:,}", f"{s.items_out:,}",
          f"{sample.rates.get(s.name, 0.0):,.0f}", str(s.in_flight), str(s.errors), str(s.retries),
          str(s.restarts), str(s.dead_lettered), "<- slowest" if s.name == slow else ""),
         "bold red" if s.name == slow else None)
        for s in stats.stages
    ]
    parts: list[Any] = [_table(_STAGE_COLUMNS, stage_rows,
                               title=f"trioflow: {stats.state.value}, {sample.elapsed:.1f} s")]
    if stats.edges:
        edge_rows = [
            ((e.name, f"{e.depth:,}", "unbounded" if e.capacity is None else f"{e.capacity:,}",
              f"{e.peak:,}", f"{e.total:,}", f"{e.dropped:,}"), None)
            for e in stats.edges
        ]
        parts.append(_table(_EDGE_COLUMNS, edge_rows))
    if slow is not None:
        parts.append(Text(f"slowest stage: {slow} (its input edge is full, its output empty)",
                          style="red"))
    if caption:
        parts.append(Text(caption))
    return Group(*parts)


#: How often the dashboard redraws by default, in seconds (2 Hz: a frame of its tables costs
#: a few milliseconds of the Trio thread, and the run shares that thread).
DASHBOARD_INTERVAL = 0.5


async def dashboard(
    handle: RunHandle[Any], *, console: Console | None = None, interval: float = DASHBOARD_INTERVAL,
    caption: Callable[[], str] | None = None,
) -> Sample:
    """Show a live table of every stage and edge of the run until it ends; the last frame
    stays on screen. ``caption()``, if given, is a line shown under the tables (the
    caller's own counters, say), read at each redraw. Draws nothing on a console that is
    not a terminal."""
    console = console or Console()
    segments = edges_of(handle)
    if not console.is_terminal:
        return await watch(handle, lambda _: None, interval=interval)
    with Live(console=console, auto_refresh=False, transient=False) as live:

        def draw(sample: Sample) -> None:
            view = dashboard_view(sample, segments, caption() if caption else None)
            live.update(view, refresh=_redraw(sample))

        return await watch(handle, draw, interval=interval)
