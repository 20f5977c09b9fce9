"""Watching a run from the outside: a poller that reads the frozen ``statistics()``
snapshots on its own timer, a few times a second.

Nothing here runs in the hot path: the run's tasks never call into an observer, take no
lock and pay nothing per item for being watched. What a display shows is computed from
two snapshots (rates) and from the plan (which edge feeds which stage).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from ._runtime import RunHandle
from ._stage import Source
from ._stats import EdgeStatistics, RunState, RunStatistics, StageStatistics

#: How often displays redraw by default, in seconds (4 Hz).
DEFAULT_INTERVAL = 0.25

#: Over how many seconds rates are averaged by default.
RATE_WINDOW = 2.0

ENDED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})


@attrs.frozen(kw_only=True)
class Sample:
    """One look at a run: its snapshot, when it was taken (Trio's clock), and what changed
    since the previous look."""

    statistics: RunStatistics
    #: ``trio.current_time()`` when the snapshot was read
    time: float
    #: ``trio.current_time()`` of the first sample of this watch
    started: float
    #: items per second out of each stage (by name) since the previous sample
    rates: Mapping[str, float]
    #: the run had ended when this snapshot was read: it is the last one
    final: bool

    @property
    def elapsed(self) -> float:
        return self.time - self.started


def _count(s: StageStatistics) -> int:
    """What a stage's rate counts: the items it took in, or for a source (which takes
    none) the items it emitted."""
    return s.items_in or s.items_out


def next_sample(stats: RunStatistics, now: float, previous: Sample | None,
                since: Sample | None = None) -> Sample:
    """The sample of ``stats`` read at ``now``, with rates since ``since`` (default: the
    ``previous`` sample)."""
    base = since or previous
    rates: dict[str, float] = {}
    if base is not None and now > base.time:
        before = {s.name: _count(s) for s in base.statistics.stages}
        dt = now - base.time
        rates = {s.name: (_count(s) - before.get(s.name, 0)) / dt for s in stats.stages}
    return Sample(statistics=stats, time=now, started=now if previous is None else previous.started,
                  rates=rates, final=stats.state in ENDED)


async def watch(
    handle: RunHandle[Any],
    on_sample: Callable[[Sample], object],
    *,
    interval: float = DEFAULT_INTERVAL,
    window: float = RATE_WINDOW,
) -> Sample:
    """Call ``on_sample`` with a ``Sample`` of the run now, then every ``interval`` seconds,
    and once more as soon as the run has ended (that sample has ``final`` set); return the
    last sample. Rates are averaged over the last ``window`` seconds (sources hand items
    over in chunks: a shorter window jumps). Cancelling the watcher does not affect the
    run."""
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    recent: deque[Sample] = deque()
    sample: Sample | None = None
    while True:
        now = trio.current_time()
        while len(recent) > 1 and now - recent[1].time >= window:
            recent.popleft()  # keep the newest sample at least ``window`` old as the base
        sample = next_sample(handle.statistics(), now, sample, recent[0] if recent else None)
        recent.append(sample)
        on_sample(sample)
        if sample.final:
            return sample
        with trio.move_on_after(interval):
            await handle.wait()


def source_totals(handle: RunHandle[Any]) -> dict[str, int | None]:
    """Every source of the run by name, with how many items it will emit if known."""
    return {node.name: node.spec.expected_items() for node in handle.plan.nodes
            if isinstance(node.spec, Source)}


def edges_of(handle: RunHandle[Any]) -> dict[int, tuple[list[int], list[int]]]:
    """For each segment (by index): the indices of its input edges and of its output edges."""
    return {seg.index: (list(seg.inputs), list(seg.output.edges)) for seg in handle.plan.segments}


def bottleneck(stats: RunStatistics, segments: Mapping[int, tuple[list[int], list[int]]],
               *, full: float = 0.8, empty: float = 0.2) -> str | None:
    """The stage holding the run back, if one is: the head of the segment whose input edge
    is (nearly) full while its output edges are (nearly) empty, or that ends the run (a sink
    segment) with a full input. Among several, the one with the fullest input."""

    def fill(e: EdgeStatistics) -> float | None:
        return None if not e.capacity else e.depth / e.capacity

    best: tuple[float, str] | None = None
    heads: dict[int, str] = {}
    for s in stats.stages:
        heads.setdefault(s.segment, s.name)
    for seg, (inputs, outputs) in segments.items():
        if seg not in heads or not inputs:
            continue
        in_fill = [f for i in inputs if i < len(stats.edges) and (f := fill(stats.edges[i])) is not None]
        if not in_fill or max(in_fill) < full:
            continue
        out_fill = [fill(stats.edges[i]) for i in outputs if i < len(stats.edges)]
        if any(f is not None and f > empty for f in out_fill):
            continue
        if best is None or max(in_fill) > best[0]:
            best = (max(in_fill), heads[seg])
    return None if best is None else best[1]


def summary(sample: Sample, totals: Mapping[str, int | None]) -> str:
    """One plain line about a run: how it ended, how long it took, and each source's count
    and mean rate, e.g. ``completed in 1.25 s: numbers 10,000 items (8,000/s)``."""
    stats = sample.statistics
    elapsed = sample.elapsed
    parts = []
    for name in totals:
        n = stats.stage(name).items_out
        rate = f" ({n / elapsed:,.0f}/s)" if elapsed > 0 else ""
        parts.append(f"{name} {n:,} items{rate}")
    errors = sum(s.errors for s in stats.stages)
    tail = f", {errors:,} error{'' if errors == 1 else 's'}" if errors else ""
    return f"{stats.state.value} in {elapsed:.2f} s: {', '.join(parts) or 'no source'}{tail}"


def eta(done: int, total: int, rate: float) -> str:
    """The time left at ``rate`` items/s, as ``H:MM:SS`` (``-:--:--`` when unknown)."""
    if rate <= 0 or done >= total:
        return "0:00:00" if done >= total else "-:--:--"
    secs = round((total - done) / rate)
    return f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}"
