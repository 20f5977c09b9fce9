"""Edges: bounded queues of chunks between the tasks of a run.

Theory of operation. A Trio memory channel hop costs a scheduler pass on both sides for
every object, which caps a task-per-stage pipeline near 40k items/s on this hardware. An
edge here carries *chunks* (lists of items) and is bounded in *items*:

* ``put`` appends a chunk without yielding when there is room (a producer that is not
  blocked never pays a scheduler pass per item) and parks only when the edge is full and
  its policy is ``Overflow.BLOCK``. The edge owns a chunk once it is put.
* Producers that wait for room wait in line, first come first served: a ``put`` that
  finds others waiting waits behind them even if its chunk would fit, and each time the
  consumer takes a chunk, the producers at the front of the line whose chunks now fit
  are let go on, their chunks queued in line order. Only those are woken: a thousand
  producers parked on one edge (a socket source's connections) cost one wake-up per
  admitted chunk, not a thousand per received chunk (measured: 56% -> 95% of the
  hand-written server at 1,000 connections, ``e2e_memory``).
* ``receive`` takes everything already waiting, up to ``max_items``, in one go and
  always passes through exactly one checkpoint, so consumers stay cancellable and fair.
  It never waits to fill a chunk: latency is never traded for batching.
* Capacity is in items (``None``: unbounded, asked for by name with ``UNBOUNDED``).
  What happens to an item that does not fit is the edge's `Overflow` policy, applied item
  by item even though items move in chunks:

  - ``BLOCK``: a chunk is accepted whole when it fits, or when the edge is empty (so a
    chunk larger than the capacity cannot deadlock); otherwise the producer parks. The
    edge therefore never holds more than ``max(capacity, largest chunk)`` items, and
    more than ``capacity`` only as a single chunk. Nothing is dropped. This is the hot
    path: it does per-chunk work only.
  - ``DROP_NEWEST``: the part of the chunk that fits is queued, the rest is dropped.
  - ``DROP_OLDEST``: the whole chunk is queued (its last ``capacity`` items if it is
    larger) and the oldest queued items are dropped, trimming the front chunk in place,
    until the edge holds ``capacity`` items.
  - ``KEEP_LATEST``: the queue is replaced by the chunk's last item, whatever the
    capacity: after any put the edge holds exactly one item, the newest.
  - ``FAIL``: a chunk that does not fit (even into an empty edge) raises
    ``EdgeOverflowError`` and nothing of it is queued.

  The non-``BLOCK`` policies never wait, so their ``put`` never yields at all. The
  dropping ones never hold more than ``capacity`` items (``KEEP_LATEST``: one).
* Counters, in items: ``total`` counts items that passed the policy (offered minus
  dropped; each is later delivered, still queued, or discarded), ``dropped`` the items the
  policy dropped, ``discarded`` the items thrown away by ``close_receive``, ``peak`` the
  highest depth. So ``offered == total + dropped`` and ``total == delivered + items +
  discarded`` (a put that raises offers nothing). ``total`` never decreases: a dropping
  put never leaves the edge shallower than it found it.
* Closing the receive side (downstream finished early, e.g. ``take``) makes every pending
  and future ``put`` raise ``DownstreamClosed``; closing every send side ends the stream
  after the queued chunks are drained (``receive`` returns ``None``).

Both closes are synchronous, so they are safe in ``finally`` blocks of cancelled tasks.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any, final

from outcome import Value
from trio.lowlevel import (
    Abort,
    ParkingLot,
    Task,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from ._overflow import EdgeOverflowError, Overflow

_BLOCK = Overflow.BLOCK
_DROP_OLDEST = Overflow.DROP_OLDEST
_DROP_NEWEST = Overflow.DROP_NEWEST
_KEEP_LATEST = Overflow.KEEP_LATEST
_FAIL = Overflow.FAIL


class DownstreamClosed(Exception):
    """Internal signal: the consumer of an edge has stopped; the producer should stop too."""


@final
class _Putter:
    """A producer waiting for room: its task, its chunk's size, and the chunk (``put``) or
    ``None`` (``wait_for_room``)."""

    __slots__ = ("chunk", "n", "task")

    def __init__(self, task: Task, n: int, chunk: list[Any] | None) -> None:
        self.task = task
        self.n = n
        self.chunk = chunk


@final
class Edge:
    """A bounded (or, by request, unbounded) queue of chunks with an overflow policy.

    Built by the runner, one per edge between two tasks. ``capacity`` is in items, ``None``
    for unbounded; ``producers`` is how many ``close_send`` calls end the stream.
    """

    __slots__ = (
        "_chunks",
        "_limit",
        "_not_empty",
        "_producers",
        "_putters",
        "capacity",
        "demand",
        "discarded",
        "dropped",
        "items",
        "name",
        "on_drop",
        "on_receive_closed",
        "overflow",
        "peak",
        "receive_closed",
        "takes_lots",
        "total",
        "wanted",
        "watchers",
    )

    def __init__(
        self,
        name: str,
        capacity: int | None,
        producers: int = 1,
        overflow: Overflow = Overflow.BLOCK,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"edge {name!r}: capacity must be at least 1 or None, got {capacity!r}")
        if not isinstance(overflow, Overflow):
            raise TypeError(f"edge {name!r}: overflow must be an Overflow, got {overflow!r}")
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        # unbounded is a limit nothing reaches, so the hot path compares ints only
        self._limit = sys.maxsize if capacity is None else capacity
        self._chunks: deque[list[Any]] = deque()
        self.items = 0
        self.peak = 0
        self.total = 0
        self.dropped = 0
        self.discarded = 0
        self._producers = producers
        self.receive_closed = False
        self._not_empty = ParkingLot()
        #: producers waiting for room on a full ``BLOCK`` edge, in arrival order (see `_admit`)
        self._putters: deque[_Putter] = deque()
        #: called (synchronously) when the consumer closes: lets an idle producer, one
        #: waiting for its own input rather than in ``put``, learn it is no longer wanted
        self.on_receive_closed: list[Callable[[], None]] = []
        #: called with the items the overflow policy drops (a run that tracks
        #: acknowledgements settles them); ``None``: nothing to tell, nothing collected
        self.on_drop: Callable[[list[Any]], None] | None = None
        #: lots of fan-out routers (``balance``) waiting for room on any of several edges
        self.watchers: list[ParkingLot] = []
        #: the edge is fed on demand (by a ``balance``): its consumer takes no more than it
        #: can start at once, and ``wanted`` says how many items a parked consumer asked for
        self.demand = False
        self.wanted = 0
        #: a run that tracks acknowledgements: the consumer takes a source's chunk as a
        #: ``LotChunk`` (plain values beside one lot) rather than one ``Tracked`` per item
        self.takes_lots = False

    @property
    def send_closed(self) -> bool:
        return self._producers <= 0

    async def put(self, chunk: list[Any]) -> None:
        """Queue ``chunk`` (the edge owns it from now on) under the overflow policy.

        Yields only while a ``BLOCK`` edge is full, or other producers wait for room
        (they go first: no overtaking); the other policies never yield. Raises
        ``DownstreamClosed`` once the receive side is closed, and ``EdgeOverflowError``
        when a ``FAIL`` edge cannot take the whole chunk. An empty chunk is not queued.
        Cancelled while waiting: nothing of the chunk was queued.
        """
        if self.overflow is not _BLOCK:
            self._offer(chunk)
            return
        if self.receive_closed:
            raise DownstreamClosed
        n = len(chunk)
        if not n:
            return  # a queued [] would be received as a chunk with no item
        items = self.items
        if self._putters or (items and items + n > self._limit):
            # behind the producers already waiting: `_admit` queues the chunk in its turn
            if not await self._wait_turn(_Putter(current_task(), n, chunk)):
                raise DownstreamClosed
            return
        self._queue(chunk, n)

    def _queue(self, chunk: list[Any], n: int) -> None:
        """Append a chunk of ``n`` items that fits (or goes into an empty edge)."""
        self._chunks.append(chunk)
        items = self.items + n
        self.items = items
        self.total += n
        if items > self.peak:
            self.peak = items
        if self._not_empty:
            self._not_empty.unpark()

    async def wait_for_room(self, n: int) -> None:
        """Wait until a ``put`` of ``n`` items would not wait (a ``BLOCK`` edge that is
        full), or the receive side is closed (the ``put`` then raises). Nothing is queued;
        another producer may take the room first. Cancelled: nothing happened."""
        if self.overflow is not _BLOCK or self.receive_closed:
            return
        items = self.items
        if self._putters or (items and items + n > self._limit):
            await self._wait_turn(_Putter(current_task(), n, None))

    async def _wait_turn(self, putter: _Putter) -> bool:
        """Wait behind the producers already waiting until ``_admit`` lets ``putter`` go
        on (having queued its chunk, if it has one): True; or the receive side closed
        meanwhile: False. Cancelled: removed from the line, nothing queued."""
        self._putters.append(putter)

        def abort(_: object) -> Abort:
            self._putters.remove(putter)
            self._admit()  # those behind it may fit now
            return Abort.SUCCEEDED

        return bool(await wait_task_rescheduled(abort))

    def _admit(self) -> None:
        """Let the waiting producers go on, first come first served, while their chunks
        fit (the first one also when the edge is empty): a ``put``'s chunk is queued here,
        in that order, and only the producers that go on are woken, never all of them."""
        putters = self._putters
        limit = self._limit
        while putters:
            first = putters[0]
            items = self.items
            n = first.n
            if items and items + n > limit:
                return
            putters.popleft()
            if first.chunk is not None:
                self._queue(first.chunk, n)
            reschedule(first.task, Value(True))

    def _offer(self, chunk: list[Any]) -> None:
        """``put`` for the policies that never wait: apply the policy synchronously."""
        if self.receive_closed:
            raise DownstreamClosed
        n = len(chunk)
        if not n:
            return
        chunks = self._chunks
        depth = self.items
        limit = self._limit
        overflow = self.overflow
        on_drop = self.on_drop
        dropped: list[Any] = []
        if overflow is _KEEP_LATEST:
            if on_drop is not None:
                dropped = [x for c in chunks for x in c] + chunk[:-1]
            chunks.clear()
            chunks.append([chunk[-1]])
            new_depth = 1
        elif depth + n <= limit:
            chunks.append(chunk)
            new_depth = depth + n
        elif overflow is _DROP_NEWEST:
            room = limit - depth
            if room > 0:
                chunks.append(chunk[:room])
            if on_drop is not None:
                dropped = chunk[max(room, 0):]
            new_depth = limit
        elif overflow is _DROP_OLDEST:
            if n >= limit:
                if on_drop is not None:
                    dropped = [x for c in chunks for x in c] + chunk[: n - limit]
                chunks.clear()
                chunks.append(chunk[n - limit :])
            else:
                excess = depth + n - limit
                while excess:
                    front = chunks[0]
                    if len(front) <= excess:
                        chunks.popleft()
                        excess -= len(front)
                        if on_drop is not None:
                            dropped.extend(front)
                    else:
                        if on_drop is not None:
                            dropped.extend(front[:excess])
                        del front[:excess]  # queued chunks belong to the edge
                        excess = 0
                chunks.append(chunk)
            new_depth = limit
        else:
            assert overflow is _FAIL
            assert self.capacity is not None  # an unbounded edge always has room
            raise EdgeOverflowError(self.name, self.capacity, depth, n)
        self.items = new_depth
        accepted = new_depth - depth
        self.total += accepted
        self.dropped += n - accepted
        if new_depth > self.peak:
            self.peak = new_depth
        if self._not_empty:
            self._not_empty.unpark()
        if dropped:
            on_drop(dropped)  # type: ignore[misc]  # (set whenever something was collected)

    async def receive(self, max_items: int) -> list[Any] | None:
        """Take what is waiting (at least one chunk, up to ``max_items`` items when chunks
        can be merged), waiting if nothing is. ``None`` means the stream ended.

        Passes through exactly one checkpoint. Cancelled: nothing was taken.
        """
        await checkpoint_if_cancelled()
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                n = len(chunk)
                if chunks and n < max_items and type(chunk) is list:
                    # the edge owns queued chunks, so the first can be extended in place
                    # (a ``LotChunk`` is never merged: its items are its lot's indices)
                    while chunks and n + len(chunks[0]) <= max_items and type(chunks[0]) is list:
                        nxt = chunks.popleft()
                        chunk.extend(nxt)
                        n += len(nxt)
                self.items -= n
                if self._putters:
                    self._admit()
                for lot in self.watchers:
                    lot.unpark_all()
                await cancel_shielded_checkpoint()
                return chunk
            if self._producers <= 0 or self.receive_closed:
                await cancel_shielded_checkpoint()
                return None
            if not self.watchers:
                await self._not_empty.park()
                continue
            # a router waits for a consumer that asks (``balance``): this one asks now
            self.wanted = max_items
            for lot in self.watchers:
                lot.unpark_all()
            try:
                await self._not_empty.park()
            finally:
                self.wanted = 0

    def close_send(self) -> None:
        """One producer is done. When all are, the consumer sees the end after draining."""
        if self._producers > 0:
            self._producers -= 1
            if self._producers == 0:
                self._not_empty.unpark_all()

    def close_receive(self) -> None:
        """The consumer is gone: discard what is queued (counted in ``discarded``, not in
        ``dropped``) and make producers stop."""
        if not self.receive_closed:
            self.receive_closed = True
            self.discarded += self.items
            self._chunks.clear()
            self.items = 0
            while self._putters:
                reschedule(self._putters.popleft().task, Value(False))
            self._not_empty.unpark_all()
            for lot in self.watchers:
                lot.unpark_all()
            for callback in self.on_receive_closed:
                callback()
