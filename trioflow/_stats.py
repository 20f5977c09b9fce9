"""Observation: frozen snapshots returned by ``statistics()``. Reading them never changes a run."""

from __future__ import annotations

import enum

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
