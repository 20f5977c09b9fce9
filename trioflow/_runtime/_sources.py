"""Source heads: iterables, async iterables, channels, ticks, and user sources that push
through ``Emit``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any, Generic, TypeVar, final

import trio
from trio.lowlevel import checkpoint

from .._acks import Lot, LotChunk, Tracked
from .._edge import Edge
from .._errors import SourceConsumedError
from .._plan import PlanNode
from .._policies import Guard, Supervisor
from .._stage import (
    AsyncIterableSource,
    ChannelSource,
    IterableSource,
    PeriodicSource,
    TaskSource,
)
from ._segment import Head, Segment, _bounded_shielded, _Status

T = TypeVar("T")


class ChunkSizer:
    """Adapts how many items a source takes per chunk to the cost of processing them.

    Fused stages run a whole chunk between two checkpoints. Big chunks amortise the
    per-chunk cost (a checkpoint is about 4 µs); but a chunk of expensive items would hold
    the Trio thread too long. So the size starts small (low latency for the first items),
    doubles while a chunk takes under half of ``BUDGET`` and halves when one takes more,
    within ``1 .. maximum``. The time is CPU time spent in the chunk (``perf_counter``
    around synchronous work and non-blocking hand-off), not Trio's clock.
    """

    BUDGET = 0.001
    __slots__ = ("maximum", "size")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.size = min(16, maximum)

    def took(self, seconds: float) -> None:
        if seconds < self.BUDGET / 2:
            if self.size < self.maximum:
                self.size = min(self.size * 2, self.maximum)
        elif seconds > self.BUDGET and self.size > 1:
            self.size //= 2


_ONE_SHOT = {
    "from_iterable": "an iterator",
    "from_async_iterable": "an async iterator",
    "from_channel": "a channel (a run owns its channel and closes it when it ends)",
}


def _take_one_shot(
    head: Head, spec: IterableSource[Any] | AsyncIterableSource[Any] | ChannelSource[Any], it: object
) -> None:
    """A run starts a one-shot source: fail, noted with the source stage, if an earlier run
    took it or it is a generator that has already finished (it would yield nothing)."""
    finished = getattr(it, "gi_frame", getattr(it, "ag_frame", False)) is None
    if spec.once.take() and not finished:
        return
    what = _ONE_SHOT.get(spec.operator, "a one-shot source")
    exc = SourceConsumedError(
        f"source {head.name!r} is {what} that "
        f"{'has already finished' if finished else 'an earlier run took'}: a one-shot source "
        "runs once. Build the flow anew for each run (over a fresh iterator or channel), or "
        "give from_iterable a collection that can be iterated again (a list, a range)"
    )
    head.failed(exc, None, has_item=False)
    raise exc


class IterableHead(Head):
    def __init__(self, node: PlanNode, spec: IterableSource[Any]) -> None:
        super().__init__(node)
        self.spec = spec
        self.iterable = spec.iterable

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        sizer = ChunkSizer(seg.chunk_size)
        islice = itertools.islice
        emit = seg.emit
        clock = time.perf_counter
        try:
            it = iter(self.iterable)
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            raise
        if it is self.iterable:
            _take_one_shot(self, self.spec, it)
        ledger = self.ledger
        while not seg.draining:
            started = clock()
            try:
                chunk = list(islice(it, sizer.size))
            except Exception as exc:
                self.failed(exc, None, has_item=False)
                raise
            if not chunk:
                return
            self.n_out += len(chunk)
            if self.tracked:  # each item is its own token, the chunk a lot
                if ledger is None:
                    await emit([Tracked(x, None, 0) for x in chunk])
                else:
                    await _emit_lot(seg, Lot(ledger, chunk, len(chunk)), chunk)
            else:
                await emit(chunk)
            sizer.took(clock() - started)
            await checkpoint()


class AsyncIterableHead(Head):
    def __init__(self, node: PlanNode, spec: AsyncIterableSource[Any]) -> None:
        super().__init__(node)
        self.spec = spec
        self.iterable = spec.iterable

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        try:
            it = aiter(self.iterable)
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            raise
        if it is self.iterable:
            _take_one_shot(self, self.spec, it)
        try:
            emit = seg.emit
            n = 0
            while True:
                try:
                    with seg.drain_point() as cs:
                        item = await anext(it)
                    if cs.cancelled_caught:
                        return
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    self.failed(exc, None, has_item=False)
                    raise
                self.n_out += 1
                await emit([item])
                n += 1
                if n >= seg.chunk_size:  # an iterator that never blocks still checkpoints
                    n = 0
                    await checkpoint()
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await _bounded_shielded(aclose)

    async def release(self) -> None:
        aclose = getattr(self.iterable, "aclose", None)  # an iterator that is its own aiter
        if aclose is not None:
            self.spec.once.take()  # closed: a later run would find nothing
            await _bounded_shielded(aclose)


class ChannelHead(Head):
    def __init__(self, node: PlanNode, spec: ChannelSource[Any]) -> None:
        super().__init__(node)
        self.spec = spec
        self.channel = spec.channel

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        channel = self.channel
        nowait = getattr(channel, "receive_nowait", None)
        _take_one_shot(self, self.spec, channel)  # before the try: never close another run's channel
        try:
            while True:
                try:
                    with seg.drain_point() as cs:
                        first = await channel.receive()
                    if cs.cancelled_caught:
                        return
                except trio.EndOfChannel:
                    return
                except Exception as exc:  # a channel closed elsewhere, say: name the stage
                    self.failed(exc, None, has_item=False)
                    raise
                chunk = [first]
                if nowait is not None:
                    try:
                        while len(chunk) < seg.chunk_size:
                            chunk.append(nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        pass
                self.n_out += len(chunk)
                await seg.emit(chunk)
        finally:
            await self.release()

    async def release(self) -> None:
        # the run owns the channel: closing it tells the producer nobody listens any more
        self.spec.once.take()
        close = getattr(self.channel, "close", None)
        if close is not None:
            close()
        else:
            await _bounded_shielded(self.channel.aclose)


class PeriodicHead(Head):
    def __init__(self, node: PlanNode, spec: PeriodicSource) -> None:
        super().__init__(node)
        self.interval = spec.interval
        self.count = spec.count

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        interval = self.interval
        start = trio.current_time()
        k = 0
        ticks = itertools.count() if self.count is None else range(self.count)
        for tick in ticks:
            target = start + k * interval
            now = trio.current_time()
            if now > target + interval:
                # backpressure held us past a whole tick: restart timing, never burst
                start, k, target = now, 0, now
            with seg.drain_point() as cs:
                await trio.sleep_until(target)
            if cs.cancelled_caught:
                return
            self.n_out += 1
            await seg.emit([tick])
            k += 1


class _NoAck:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no ack>"


_NO_ACK: Any = _NoAck()


async def _emit_lot(seg: Segment, lot: Lot, items: list[Any]) -> None:
    """Emit a chunk whose items are the ``lot``'s, beside it, as a ``LotChunk``: it goes on
    whole as far as the stages take one (a fused ``map`` or ``filter``, a ``route``, a
    tracked ``batch``, an edge to such a stage); the first that does not gets each item
    wrapped in a ``Tracked`` (``Segment.emit``). A wrapper per item costs its allocation and, since the
    items of a chunk live together until a batch takes them, garbage collections that scan
    them (the values themselves are often tuples the collector stops tracking)."""
    out = seg.out
    if not seg.ops and isinstance(out, Edge) and not out.takes_lots:
        await out.wait_for_room(len(items))  # the values wait for room unwrapped
    await seg.emit(LotChunk(items, lot))


def _tracked(head: Head, item: Any, ack: object) -> Tracked:
    ledger = head.ledger
    if ack is _NO_ACK or ledger is None:
        return Tracked(item, None, 0)
    return Tracked(item, Lot(ledger, [ack], 1), 0)


@final
class Emit(Generic[T]):
    """Hands items from user code (``trioflow.source``, ``trioflow.continuous``) to the
    rest of the pipeline.

    ``await emit(item)`` and ``await emit.many(items)`` return as soon as the items are
    queued; they wait only while the next edge is full (backpressure). When the pipeline
    downstream has stopped (``take`` was satisfied, the consumer left), the call raises
    ``trio.Cancelled``: the caller unwinds as on any cancellation.

    Drain (``handle.drain``, the first Ctrl-C of ``run_until_signal``) does not cancel a
    source that pushes through ``emit``: the source is told, and finishes on its own. It
    reads ``emit.draining``, or waits for input under ``with emit.cancel_on_drain():`` (the
    wait is cancelled when a drain begins), or ``await emit.wait_drain()``; it then stops
    taking new input, emits what it holds (``emit`` keeps working) and returns. Only when
    the drain's deadline passes is the run cancelled, source and all, and then the run
    ends ``CANCELLED``, never as a clean completion.
    """

    __slots__ = ("_head", "_n", "_seg")

    def __init__(self, seg: Segment, head: Head) -> None:
        self._seg = seg
        self._head = head
        self._n = 0

    def _counts(self, guard: Guard) -> None:
        """Count ``guard``'s skips, dead letters and retries as the source stage's own (a
        connector that applies a policy to its bad input, as ``tcp_source``'s ``rejects``:
        they show in ``statistics()``, the dashboard and the metrics)."""
        self._head.side_guards.append(guard)

    async def __call__(self, item: T, *, ack: object = _NO_ACK) -> None:
        """Hand on ``item``; ``ack`` is its token when the source asked for
        acknowledgements (``on_ack=``): the token comes back in an ``Ack`` once the item
        is done."""
        head = self._head
        head.n_out += 1
        if head.tracked:
            item = _tracked(head, item, ack)  # type: ignore[assignment]
        await self._seg.emit([item])
        self._n += 1
        if self._n >= self._seg.chunk_size:
            # a producer that never blocks still checkpoints
            self._n = 0
            await checkpoint()

    async def many(
        self, items: list[T] | tuple[T, ...], *, acks: list[Any] | tuple[Any, ...] | None = None
    ) -> None:
        """Emit several items together (one edge operation for all of them); ``acks``, when
        given, holds each item's token (as ``ack`` of ``emit``), in the same order."""
        chunk: list[Any] = list(items)
        head = self._head
        if acks is not None and len(acks) != len(chunk):
            raise ValueError(f"acks: {len(acks)} tokens for {len(chunk)} items")
        if chunk:
            head.n_out += len(chunk)
            ledger = head.ledger
            if not head.tracked:
                await self._seg.emit(chunk)
            elif acks is None or ledger is None:
                await self._seg.emit([Tracked(x, None, 0) for x in chunk])
            elif any(a is _NO_ACK for a in acks):  # one lot for the chunk, without the gaps
                lot = Lot(ledger, acks, len(chunk))
                await self._seg.emit([Tracked(x, None if a is _NO_ACK else lot, i)
                                      for i, (x, a) in enumerate(zip(chunk, acks, strict=True))])
            else:  # one lot for the chunk: an item is its index in it
                await _emit_lot(self._seg, Lot(ledger, acks, len(chunk)), chunk)
        await checkpoint()

    async def _many_lot(self, items: list[T], token: object) -> None:
        """Emit several items with one token for all of them (the library's own sources,
        whose ``on_ack`` is marked ``per_chunk``): it comes back in a ``Settled`` with the
        indices of the items done. Without a ledger (no ``on_ack``) as ``many``."""
        head = self._head
        ledger = head.ledger
        if ledger is None or not ledger.per_chunk:
            raise TypeError("Emit._many_lot needs a source whose on_ack is marked per_chunk")
        n = len(items)
        if n:
            head.n_out += n
            await _emit_lot(self._seg, Lot(ledger, token, n), items)
        await checkpoint()

    @property
    def draining(self) -> bool:
        """True once a drain of the run began: take no new input, emit what you hold, return."""
        return self._seg.draining

    def cancel_on_drain(self) -> contextlib.AbstractContextManager[trio.CancelScope]:
        """A cancel scope that is cancelled when a drain begins (at once if one has):
        wrap the waits for new input in it (``accept``, ``receive_some``), never the
        emits. ``scope.cancelled_caught`` tells whether the drain ended the block."""
        return self._seg.drain_point()

    async def wait_drain(self) -> None:
        """Wait until a drain of the run begins (returns at once if one has)."""
        with self._seg.drain_point():
            await trio.sleep_forever()


class TaskSourceHead(Head):
    def __init__(self, node: PlanNode, spec: TaskSource[Any]) -> None:
        super().__init__(node)
        self.fn = spec.fn
        self.wants_status = spec.wants_status
        self.supervisor = Supervisor(spec.restart) if spec.restart is not None else None

    async def run(self, seg: Segment, status: _Status) -> None:
        emit: Emit[Any] = Emit(seg, self)
        try:
            # a drain does not cancel the user's source: it learns of the drain through
            # ``emit`` and returns on its own (see ``Emit``), so what it holds is not lost
            while True:
                try:
                    if self.wants_status:
                        await self.fn(emit, task_status=status)
                    else:
                        status.started()
                        await self.fn(emit)
                except Exception as exc:
                    if self.supervisor is None or getattr(exc, "_trioflow_annotated", False):
                        raise  # (an annotated error came from downstream, via emit)
                    delay = self.supervisor.on_failure(trio.current_time())
                    if delay is None:
                        raise
                    self.errors += 1
                    await trio.sleep(delay)
                else:
                    return
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            raise
