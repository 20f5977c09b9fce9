"""Overflow policies: what an edge does with items that arrive when it is full.

Policies are plain data (DESIGN §1): a stage is given ``overflow=Overflow.DROP_OLDEST``,
never a string or a boolean that implies one. The edge applies the policy item by item,
even though it moves items in chunks: a chunk that only partly fits is split.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Final, final

from ._errors import TrioflowError

__all__ = ["UNBOUNDED", "EdgeOverflowError", "Overflow", "Unbounded"]


class Overflow(enum.Enum):
    """What an edge does when an item arrives and the edge holds ``capacity`` items.

    ``BLOCK`` (the default): backpressure. The producer waits until the consumer has made
    room. Memory is bounded by the capacity, nothing is lost, and a slow consumer slows
    every stage upstream of it (latency grows upstream, not in the edge). A chunk larger
    than the capacity is accepted whole when the edge is empty, so it cannot deadlock.

    ``DROP_OLDEST``: the edge makes room by dropping the oldest queued items. The producer
    never waits; memory is bounded by the capacity; the consumer always sees the newest
    ``capacity`` items, so latency stays bounded; losses are the stale items, counted in
    the edge's ``dropped`` statistic. Use for telemetry where fresh data matters most.

    ``DROP_NEWEST``: the edge keeps what it holds and drops the arriving items that do not
    fit. The producer never waits; memory is bounded by the capacity; items that get
    through are delivered in order, but a backlog of old items may be delivered late;
    losses are the newest items, counted in ``dropped``. Use to shed load at the door.

    ``KEEP_LATEST``: conflation. Whatever its capacity, the edge holds only the newest
    item; each arrival replaces what was waiting. The producer never waits; memory is one
    item; a slow consumer always gets the latest value (lowest latency); every superseded
    value is dropped and counted. Use for state (a price, a position, a gauge), not events.

    ``FAIL``: an arrival that does not fit raises `EdgeOverflowError` in the producer, and
    nothing of that chunk is queued. The producer never waits; memory is bounded by the
    capacity (strictly: no exception for a chunk larger than the capacity); nothing is
    lost silently, the run fails instead (fail-fast, DESIGN §3). Use where overflow means
    the system is mis-sized and should stop rather than slow down or lose data.
    """

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    KEEP_LATEST = "keep_latest"
    FAIL = "fail"

    def __repr__(self) -> str:
        return f"Overflow.{self.name}"

    @property
    def waits(self) -> bool:
        """Whether a producer may wait for room (only ``BLOCK``: the others never wait)."""
        return self is Overflow.BLOCK

    @property
    def drops(self) -> bool:
        """Whether the policy may drop items (``DROP_OLDEST``, ``DROP_NEWEST``, ``KEEP_LATEST``)."""
        return self in _DROPPING


_DROPPING: Final = frozenset({Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.KEEP_LATEST})


@final
class Unbounded:
    """The type of `UNBOUNDED`, the one value that asks for an edge without a capacity.

    Memory is bounded by construction in trioflow (DESIGN §4), so an unbounded edge must be
    asked for by name: ``buffer=trioflow.UNBOUNDED``. There is only one instance.
    """

    __slots__ = ()
    _instance: ClassVar[Unbounded | None] = None

    def __new__(cls) -> Unbounded:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "trioflow.UNBOUNDED"

    def __reduce__(self) -> str:
        # pickles (to a worker process, say) as a reference to the singleton
        return "UNBOUNDED"

    def __copy__(self) -> Unbounded:
        return self

    def __deepcopy__(self, memo: object) -> Unbounded:
        return self


#: Pass as ``buffer=trioflow.UNBOUNDED`` for an edge with no capacity limit: producers never
#: wait and memory grows with the backlog. Compare with ``is``.
UNBOUNDED: Final = Unbounded()


class EdgeOverflowError(TrioflowError):
    """An item arrived at a full edge whose policy is ``Overflow.FAIL``.

    Raised in the producer by ``put``; nothing of the offending chunk was queued. The
    message names the edge and its capacity; the attributes ``edge``, ``capacity``,
    ``depth`` (items queued) and ``offered`` (items in the refused chunk) hold the same.
    """

    def __init__(self, edge: str, capacity: int, depth: int, offered: int) -> None:
        self.edge = edge
        self.capacity = capacity
        self.depth = depth
        self.offered = offered
        super().__init__(
            f"edge {edge!r} overflowed its capacity of {capacity} items "
            f"({depth} queued, {offered} more offered; overflow=Overflow.FAIL)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # the default would call ``cls(message)``; keep the fields and any notes instead
        return (type(self), (self.edge, self.capacity, self.depth, self.offered), self.__dict__)


class ItemDropped(TrioflowError):
    """Why an item was acknowledged with an error although nothing failed: the overflow
    policy of an edge (``DROP_OLDEST``, ``DROP_NEWEST``, ``KEEP_LATEST``) dropped it. The
    attributes ``edge`` and ``overflow`` name the edge and its policy. Never raised: it is
    the ``error`` of the item's ``Ack``."""

    def __init__(self, edge: str, overflow: Overflow) -> None:
        self.edge = edge
        self.overflow = overflow
        super().__init__(f"dropped by edge {edge!r} (overflow=Overflow.{overflow.name})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.edge, self.overflow), self.__dict__)
