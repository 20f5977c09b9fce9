"""Progress bars and the live dashboard (trioflow.display), rendered by rich's recording
console and read back as text; the poller and the bottleneck rule of trioflow._watch.

Time is Trio's MockClock (autojump): the sources sleep between items so the displays,
which read snapshots every 0.25 s of that clock, draw several frames during a run.
"""

from __future__ import annotations

import functools
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console
from test_ctrl_c import ROOT, Tmux

import trioflow as tf
from trioflow import display
from trioflow._stage import Lifecycle
from trioflow._stats import EdgeStatistics, RunState, RunStatistics, StageStatistics
from trioflow._watch import Sample, bottleneck, eta, next_sample, summary, watch


def terminal() -> Console:
    """A console that believes it draws on a 120-column terminal, and records."""
    return Console(record=True, force_terminal=True, width=120, file=io.StringIO(), color_system=None)


def ticks(n: int, every: float = 0.01) -> tf.Flow[int]:
    async def produce(emit: tf.Emit[int]) -> None:
        for i in range(n):
            await emit(i)
            await trio.sleep(every)

    return tf.source(produce, name="ticks")


async def test_progress_bar_of_a_sized_source_shows_fraction_rate_and_eta(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(0.01)
        return x

    console = terminal()
    pipeline = tf.from_iterable(range(300), name="numbers") | tf.map(slow, buffer=4) | tf.to_list()
    async with trio.open_nursery() as nursery:
        # chunks of one item: the source hands items over as the writer takes them
        handle = await nursery.start(functools.partial(pipeline.run, chunk_size=1))
        last = await display.progress(handle, console=console)
    assert last.final and last.statistics.state is RunState.COMPLETED
    text = console.export_text()
    # the frames: done/total, percent, rate, time left
    frames = re.findall(r"numbers [━╸ ]+ (\d+)/300\s+(\d+)%\s+([\d,]+)/s\s+eta (\d:\d\d:\d\d|-:--:--)", text)
    assert len(frames) >= 10, text  # 3 s of virtual time at 4 Hz
    partial = [f for f in frames if 100 < int(f[0]) < 250]
    assert partial, frames
    for done, pct, rate, left in partial:  # about 100 items/s: 1 to 2 s left
        assert int(pct) == round(int(done) * 100 / 300)
        assert 80 <= int(rate) <= 120 and left in ("0:00:01", "0:00:02"), frames
    assert frames[-1][:2] == ("300", "100") and frames[-1][3] == "0:00:00"
    # then the summary line: 3 s of virtual time for 300 items
    assert text.rstrip().splitlines()[-1] == "completed in 3.00 s: numbers 300 items (100/s)"


async def test_progress_of_a_source_without_total_shows_count_and_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console = terminal()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((ticks(100) | tf.to_list()).run)
        await display.progress(handle, console=console)
    lines = console.export_text().splitlines()
    counts = [line for line in lines if line.startswith("ticks") and " items  " in line]
    assert counts and not any("eta" in line for line in counts), lines
    assert "100 items  " in counts[-1]
    assert lines[-1] == "completed in 1.00 s: ticks 100 items (100/s)"


async def test_total_given_to_a_source_makes_a_bar_with_fraction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def produce(emit: tf.Emit[int]) -> None:
        for i in range(50):
            await emit(i)
            await trio.sleep(0.01)

    def generated() -> Any:
        yield from range(40)

    assert tf.source(produce, total=50).source.expected_items() == 50
    assert tf.from_iterable(generated(), total=40).source.expected_items() == 40
    assert tf.from_iterable(generated()).source.expected_items() is None
    assert tf.from_iterable([1, 2, 3]).source.expected_items() == 3
    assert tf.periodic(1.0, count=7).source.expected_items() == 7
    console = terminal()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.source(produce, name="made", total=50) | tf.to_list()).run)
        await display.progress(handle, console=console)
    assert "50/50  100%" in console.export_text()


async def test_progress_of_a_graph_has_a_bar_per_source(autojump_clock: trio.testing.MockClock) -> None:
    graph = tf.Graph()
    merged = graph.merge(graph.add(tf.from_iterable(range(40), name="left")), graph.add(ticks(30)))
    graph.add(tf.to_list(name="all"), merged)
    console = terminal()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(graph.run)
        await display.progress(handle, console=console)
    text = console.export_text()
    assert "40/40  100%" in text and "30 items" in text
    assert text.rstrip().splitlines()[-1] == (
        "completed in 0.30 s: left 40 items (133/s), ticks 30 items (100/s)")


def test_total_is_checked_at_definition() -> None:
    with pytest.raises(tf.DefinitionValueError, match="total"):
        tf.from_iterable([1], total=-1)
    with pytest.raises(tf.DefinitionTypeError, match="total"):
        tf.from_iterable([1], total="many")  # type: ignore[arg-type]


async def test_progress_on_a_console_that_is_not_a_terminal_prints_only_the_summary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((ticks(20) | tf.to_list()).run)
        await display.progress(handle, console=console)
    assert out.getvalue() == "completed in 0.20 s: ticks 20 items (100/s)\n"


async def test_run_progress_true_when_stdout_is_not_a_terminal(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str],
) -> None:
    result = await (ticks(30) | tf.reduce(lambda a, x: a + x, 0)).run(progress=True)
    assert result == sum(range(30))
    assert capsys.readouterr().out == "completed in 0.30 s: ticks 30 items (100/s)\n"


async def test_run_progress_summary_counts_errors_and_the_failure_is_raised_as_without(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(x: int) -> int:
        if x == 5:
            raise ValueError("five")
        return x

    with pytest.raises(ExceptionGroup) as info:
        await (ticks(30) | tf.map(boom, name="boom") | tf.to_list()).run(progress=True)
    assert [str(e) for e in info.value.exceptions] == ["five"]
    out = capsys.readouterr().out
    assert out.startswith("failed in ") and out.endswith(", 1 error\n"), out


def test_run_progress_is_checked() -> None:
    with pytest.raises(tf.DefinitionTypeError, match="progress"):
        trio.run(lambda: tf.from_iterable([1]).run(progress="yes"))  # type: ignore[call-overload]


# -- the dashboard ------------------------------------------------------------------------------


def slow_pipeline() -> tf.Pipeline[list[int]]:
    """A fast source, a fused parse, a slow writer behind a small edge: the writer's input
    fills while its output (the sink, fused) has no edge."""

    async def write(x: int) -> int:
        await trio.sleep(0.05)
        return x

    return (tf.from_iterable(range(200), name="numbers") | tf.map(lambda x: x + 1, name="parse")
            | tf.map(write, name="write", buffer=8) | tf.to_list(name="rows"))


async def test_dashboard_draws_every_stage_and_edge_and_marks_the_slowest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console = terminal()
    frames: list[str] = []
    pipeline = slow_pipeline()
    async with trio.open_nursery() as nursery:
        # chunks of one item: the source refills the writer's input as soon as it has room
        handle = await nursery.start(functools.partial(pipeline.run, chunk_size=1))
        segments = {s.index: (list(s.inputs), list(s.output.edges)) for s in handle.plan.segments}
        # the statistics' edges are the plan's, index for index
        assert [e.name for e in handle.statistics().edges] == [e.name for e in handle.plan.edges]

        def keep(sample: Sample) -> None:  # the same view, rendered by a second console
            view = terminal()
            view.print(display.dashboard_view(sample, segments, caption="sent 1,234"))
            frames.append(view.export_text())

        nursery.start_soon(watch, handle, keep)
        last = await display.dashboard(handle, console=console, caption=lambda: "sent 1,234")
    assert last.statistics.state is RunState.COMPLETED
    # the writer's input edge is full most of the run: the frames that mark a stage as the
    # slowest all mark the writer, and most frames do
    marked = [f for f in frames if "<- slowest" in f]
    assert len(marked) > len(frames) // 2, frames
    for frame in marked:
        slow = [line.split()[1] for line in frame.splitlines() if "<- slowest" in line]
        assert slow == ["write"], frame
        assert "slowest stage: write (its input edge is full, its output empty)" in frame
    middle = marked[len(marked) // 2]
    rows = {line.split()[1]: line for line in middle.splitlines() if line.startswith("│ ")
            and len(line.split()) > 2}
    assert {"numbers", "parse", "write", "rows"} <= set(rows), middle
    header = next(line for line in middle.splitlines() if "lifecycle" in line)
    for column in ("in", "out", "rate/s", "in flight", "errors", "retries", "restarts", "dead letters"):
        assert f" {column} " in header, header
    assert "parse -> write" in middle and "8 " in middle  # the edge and its capacity
    assert "sent 1,234" in middle
    # the last frame stays on the terminal: the run completed, every item out of the writer
    text = console.export_text()
    assert "trioflow: completed" in text
    final = [line for line in text.splitlines() if line.startswith("│ write ")][-1]
    assert final.split("│")[3].strip() == "200" and final.split("│")[4].strip() == "200", final


async def test_dashboard_on_a_console_that_is_not_a_terminal_draws_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(slow_pipeline().run)
        last = await display.dashboard(handle, console=console)
    assert out.getvalue() == ""
    assert last.final and last.statistics.stage("rows").items_in == 200


# -- the poller and its rules -------------------------------------------------------------------


async def test_watch_samples_on_its_timer_and_once_at_the_end(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Sample] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((ticks(100) | tf.to_list()).run)
        last = await watch(handle, seen.append, interval=0.25)
    assert last is seen[-1] and last.final and not any(s.final for s in seen[:-1])
    assert [round(s.elapsed, 2) for s in seen[:4]] == [0.0, 0.25, 0.5, 0.75]
    assert seen[2].rates["ticks"] == pytest.approx(100, rel=0.1)  # 25 items in 0.25 s
    assert last.statistics.stage("ticks").items_out == 100


def test_watch_interval_is_checked() -> None:
    with pytest.raises(ValueError, match="interval"):
        trio.run(lambda: watch(None, print, interval=0))  # type: ignore[arg-type]


def _stats(depths: list[tuple[int, int | None]]) -> RunStatistics:
    stages = tuple(
        StageStatistics(name=f"s{i}", operator="map", lifecycle=Lifecycle.CONTINUOUS, segment=i,
                        items_in=0, items_out=0, errors=0, in_flight=0, workers=1, waiting=0)
        for i in range(len(depths) + 1))
    edges = tuple(EdgeStatistics(name=f"e{i}", capacity=cap, depth=d, peak=d, total=d)
                  for i, (d, cap) in enumerate(depths))
    return RunStatistics(state=RunState.RUNNING, stages=stages, edges=edges)


@pytest.mark.parametrize(("depths", "slowest"), [
    ([(10, 10), (0, 10)], "s1"),          # s1: input full, output empty
    ([(10, 10), (10, 10)], "s2"),         # s1's output is full too: s2 (a sink segment) holds it
    ([(1, 10), (2, 10)], None),           # nothing full
    ([(9, 10), (0, 10)], "s1"),           # 90% is full enough
    ([(10, None), (0, 10)], None),        # an unbounded edge is never full
])
def test_bottleneck_is_the_stage_whose_input_is_full_and_output_empty(
    depths: list[tuple[int, int | None]], slowest: str | None,
) -> None:
    # a chain: segment i reads edge i-1 and writes edge i
    n = len(depths)
    segments = {i: ([i - 1] if i else [], [i] if i < n else []) for i in range(n + 1)}
    assert bottleneck(_stats(depths), segments) == slowest


def test_eta_and_summary_text() -> None:
    assert eta(50, 100, 10.0) == "0:00:05"
    assert eta(0, 100_000, 10.0) == "2:46:40"
    assert eta(10, 100, 0.0) == "-:--:--"
    assert eta(100, 100, 0.0) == "0:00:00"
    stats = _stats([(0, 10)])
    first = next_sample(stats, 10.0, None)
    later = next_sample(stats, 12.5, first)
    assert later.elapsed == 2.5 and later.rates == {"s0": 0.0, "s1": 0.0}
    assert summary(later, {"s0": None}) == "running in 2.50 s: s0 0 items (0/s)"


def test_importing_trioflow_imports_neither_rich_nor_click() -> None:
    code = "import sys, trioflow, trioflow.io; print(sorted({'rich', 'click'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_display_without_rich_says_what_to_install() -> None:
    code = ("import sys; sys.modules['rich'] = None\nimport trio, trioflow as tf\n"
            "try:\n    trio.run(lambda: tf.from_iterable([1]).run(progress=True))\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "progress=True: trioflow.display needs rich: pip install 'trioflow[rich]'"


# -- a real terminal ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_socket_demo_in_a_terminal_shows_the_live_dashboard(tmp_path: Path) -> None:
    """examples/socket_to_db.py --demo in a real terminal (tmux): while it runs the screen
    holds the dashboard; the last frame stays above the demo's summary."""
    example = ROOT / "examples" / "socket_to_db.py"
    # (pytest's COLUMNS would fix rich's width at 80: the terminal's own size is wanted)
    command = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, str(example),
                          "--listen", "127.0.0.1:0", "--db", str(tmp_path / "readings.db"),
                          "--demo", "100000"])
    term = Tmux(tmp_path, command)
    try:
        running = term.wait_until("trioflow: running")
        text = term.wait_for_exit()
    finally:
        term.close()
    assert "trioflow: running" in running, running
    lines = [line.rstrip() for line in text.splitlines()]
    header = next((line for line in lines if "lifecycle" in line), None)
    assert header is not None, text
    for column in ("stage", "in", "out", "rate/s", "in flight", "errors", "retries", "restarts",
                   "dead letters"):
        assert f" {column} " in header, header
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│ ")]
    rows = {row[0]: row for row in cells}
    assert {"socket", "batch", "write_sqlite", "socket -> batch", "batch -> write_sqlite"} <= set(rows), text
    assert "trioflow: completed" in text
    # the writer's last count is what the demo says it committed... in batches: its input
    # is the batch stage's output, and the socket handed over every line it accepted
    done = next(line for line in lines if line.startswith("done: "))
    committed = int(done.split()[1].replace(",", ""))
    socket_out = int(rows["socket"][3].replace(",", ""))
    assert socket_out == committed > 0, text
    assert lines.index(done) > lines.index(header)  # the table stays, the summary follows
    assert "Traceback" not in text
