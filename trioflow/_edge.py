"""Edges: bounded queues of chunks between the tasks of a run.

Theory of operation. A Trio memory channel hop costs a scheduler pass on both sides for
every object, which caps a task-per-stage pipeline near 40k items/s on this hardware. An
edge here carries *chunks* (lists of items) and is bounded in *items*:

* ``put`` appends a chunk without yielding when there is room (a producer that is not
  blocked never pays a scheduler pass per item) and parks only when the edge is full.
* ``receive`` takes everything already waiting, up to ``max_items``, in one go and
  always passes through exactly one checkpoint, so consumers stay cancellable and fair.
  It never waits to fill a chunk: latency is never traded for batching.
* Capacity is in items: a chunk is accepted when it fits, or when the edge is empty (so a
  chunk larger than the capacity cannot deadlock). The edge therefore never holds more
  than ``max(capacity, largest chunk)`` items.
* Closing the receive side (downstream finished early, e.g. ``take``) makes every pending
  and future ``put`` raise ``DownstreamClosed``; closing every send side ends the stream
  after the queued chunks are drained (``receive`` returns ``None``).

Both closes are synchronous, so they are safe in ``finally`` blocks of cancelled tasks.
"""

from __future__ import annotations

from collections import deque
from typing import Any, final

from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled


class DownstreamClosed(Exception):
    """Internal signal: the consumer of an edge has stopped; the producer should stop too."""


@final
class Edge:
    __slots__ = (
        "_chunks",
        "_not_empty",
        "_not_full",
        "_producers",
        "capacity",
        "items",
        "name",
        "peak",
        "receive_closed",
        "total",
    )

    def __init__(self, name: str, capacity: int, producers: int = 1) -> None:
        self.name = name
        self.capacity = capacity
        self._chunks: deque[list[Any]] = deque()
        self.items = 0
        self.peak = 0
        self.total = 0
        self._producers = producers
        self.receive_closed = False
        self._not_empty = ParkingLot()
        self._not_full = ParkingLot()

    @property
    def send_closed(self) -> bool:
        return self._producers <= 0

    async def put(self, chunk: list[Any]) -> None:
        """Queue ``chunk``; yields only while the edge is full."""
        while True:
            if self.receive_closed:
                raise DownstreamClosed
            items = self.items
            if items == 0 or items + len(chunk) <= self.capacity:
                break
            await self._not_full.park()
        self._chunks.append(chunk)
        items += len(chunk)
        self.items = items
        self.total += len(chunk)
        if items > self.peak:
            self.peak = items
        if self._not_empty:
            self._not_empty.unpark()

    async def receive(self, max_items: int) -> list[Any] | None:
        """Take what is waiting (at least one chunk, up to ``max_items`` items when chunks
        can be merged), waiting if nothing is. ``None`` means the stream ended."""
        await checkpoint_if_cancelled()
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                n = len(chunk)
                if chunks and n < max_items:
                    # the edge owns queued chunks, so the first can be extended in place
                    while chunks and n + len(chunks[0]) <= max_items:
                        nxt = chunks.popleft()
                        chunk.extend(nxt)
                        n += len(nxt)
                self.items -= n
                if self._not_full:
                    self._not_full.unpark_all()
                await cancel_shielded_checkpoint()
                return chunk
            if self._producers <= 0 or self.receive_closed:
                await cancel_shielded_checkpoint()
                return None
            await self._not_empty.park()

    def close_send(self) -> None:
        """One producer is done. When all are, the consumer sees the end after draining."""
        if self._producers > 0:
            self._producers -= 1
            if self._producers == 0:
                self._not_empty.unpark_all()

    def close_receive(self) -> None:
        """The consumer is gone: drop what is queued and make producers stop."""
        if not self.receive_closed:
            self.receive_closed = True
            self._chunks.clear()
            self.items = 0
            self._not_full.unpark_all()
            self._not_empty.unpark_all()
