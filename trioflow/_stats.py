"""Observation: frozen snapshots returned by ``statistics()``. Reading them never changes a run.

``str(stats)`` (or ``stats.table()``) renders a snapshot as plain-text tables, aligned for a
terminal or a log: pure functions of the snapshot, with no dependency on a rendering library.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from ._overflow import Overflow
from ._stage import Lifecycle


class RunState(enum.Enum):
    """Where a run is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen(kw_only=True)
class StageStatistics:
    """Counters of one stage (source, stage or sink) at the moment of the snapshot."""

    name: str
    operator: str
    lifecycle: Lifecycle
    #: Index of the task group (segment) the stage runs in; fused stages share one.
    segment: int
    items_in: int
    items_out: int
    errors: int
    #: Calls of user code under way right now (worker pools: items being processed).
    in_flight: int
    #: Worker tasks (persistent pools) or the limit of concurrent tasks (on-demand).
    workers: int
    #: Ordered pools: finished results waiting for an earlier item (the reorder buffer).
    waiting: int
    #: Items dropped by ``on_error=Skip()``.
    skipped: int = 0
    #: Items sent to the dead-letter target by ``on_error=DeadLetter(...)``.
    dead_lettered: int = 0
    #: Calls retried by ``retry=Retry(...)`` (each extra attempt counts one).
    retries: int = 0
    #: Restarts by supervision (``restart=Restart(...)``) of workers or a source.
    restarts: int = 0
    #: ``window``: the (key, window) states held now (the stage's memory, bounded by
    #: ``max_windows``).
    open_windows: int = 0
    #: ``window``: items that came after their windows had closed for good (emitted as
    #: ``Late``, dead-lettered or failed, per ``on_late``).
    late: int = 0
    #: ``debounce``/``sample``: items replaced by a newer one before they could go.
    superseded: int = 0


@attrs.frozen(kw_only=True)
class EdgeStatistics:
    """One bounded edge between two task groups."""

    name: str
    #: In items; ``None`` for an unbounded edge.
    capacity: int | None
    #: Items queued now.
    depth: int
    #: The most items ever queued at once during the run.
    peak: int
    #: Items accepted by the edge so far.
    total: int
    #: What the edge does when full.
    overflow: Overflow = Overflow.BLOCK
    #: Items dropped by the overflow policy.
    dropped: int = 0
    #: Items still queued when the consumer stopped early (``take``), thrown away.
    discarded: int = 0


@attrs.frozen(kw_only=True)
class RunStatistics:
    """A snapshot of a whole run."""

    state: RunState
    stages: tuple[StageStatistics, ...]
    edges: tuple[EdgeStatistics, ...]

    def stage(self, name: str) -> StageStatistics:
        """The statistics of the stage called ``name`` (``KeyError`` if there is none)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def table(self) -> str:
        """The snapshot as plain text: the state, then one aligned row per stage (name,
        operator, lifecycle, in, out, in flight, errors, skipped, dead-lettered, retries,
        restarts) and one per edge (name, depth/capacity, peak, total, dropped).
        ``str(stats)`` is the same text."""
        return "\n".join([f"state: {self.state.value}", *tables(self)])

    def __str__(self) -> str:
        return self.table()


_STAGE_HEADER = ("stage", "operator", "lifecycle", "in", "out", "in flight", "errors",
                 "skipped", "dead-lettered", "retries", "restarts")
_EDGE_HEADER = ("edge", "depth/capacity", "peak", "total", "dropped")


def columns(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Aligned lines, two spaces between columns, no trailing blanks: a column whose cells
    all start with a digit (counts, ``depth/capacity``) is right-aligned, any other left."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    numeric = [bool(rows) and all(row[i][:1].isdigit() for row in cells[1:])
               for i in range(len(header))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.rjust(w) if num else c.ljust(w)
                  for c, w, num in zip(row, widths, numeric, strict=True)).rstrip()
        for row in cells
    ]


def tables(stats: RunStatistics) -> list[str]:
    """The stage table, a blank line, and the edge table (or a line saying there is none)."""
    stage_rows = [
        (s.name, s.operator, s.lifecycle.value, s.items_in, s.items_out, s.in_flight, s.errors,
         s.skipped, s.dead_lettered, s.retries, s.restarts)
        for s in stats.stages
    ]
    lines = [*columns(_STAGE_HEADER, stage_rows), ""]
    if not stats.edges:
        return [*lines, "no edges (every stage runs in one task)"]
    edge_rows = [
        (e.name, f"{e.depth}/{'unbounded' if e.capacity is None else e.capacity}", e.peak,
         e.total, e.dropped)
        for e in stats.edges
    ]
    return [*lines, *columns(_EDGE_HEADER, edge_rows)]
