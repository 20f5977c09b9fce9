"""Fan-in heads: ``zip``, the join of ``fork_join``/``partition``, and the ordered merge.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from .._acks import combine
from .._plan import PlanNode
from .._stage import (
    DROPPED,
    JoinSpec,
)
from ._segment import Head, Segment, _Status


def _zipped(items: tuple[Any, ...]) -> Any:
    pair = combine(list(items))
    pair.value = tuple(pair.value)
    return pair


class _LockstepHead(Head):
    """A fan-in that reads its inputs in lockstep: one buffer per input, refilled when empty."""

    async def _refill(self, inputs: list[Any], bufs: list[deque[Any]], size: int) -> bool:
        """Fill every empty buffer from its input; False once any input has ended (then
        nothing later can be complete: the fan-in completes)."""
        for edge, buf in zip(inputs, bufs, strict=True):
            if not buf:
                chunk = await edge.receive(size)
                if chunk is None:
                    return False
                self.n_in += len(chunk)
                buf.extend(chunk)
        return True


class ZipHead(_LockstepHead):
    """Pairs items by position across its inputs: emits ``(a_i, b_i, ...)``; completes
    when any input completes (the other inputs are then stopped)."""

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        inputs = seg.inputs
        size = seg.chunk_size
        bufs: list[deque[Any]] = [deque() for _ in inputs]
        while True:
            if not await self._refill(inputs, bufs, size):
                return
            n = min(len(b) for b in bufs)
            out = [tuple(b.popleft() for b in bufs) for _ in range(n)]
            if self.tracked:  # a pair is done when it is: one ticket over its members
                out = [_zipped(pair) for pair in out]
            self.n_out += n
            await seg.emit(out)


class JoinHead(_LockstepHead):
    """Reunites ``(seq, value)`` envelopes from order-keeping inputs: emits the values of
    every ``seq`` (a tuple, or a dict with the spec's ``keys``), leaving out items that a
    branch filtered or skipped (they arrive as tombstones). Branches hand on one envelope
    per item, so the inputs are read in lockstep with bounded buffers; a ``seq`` missing
    from an input is still dropped from the others, defensively. When any input ends,
    nothing later can be complete, so the join completes."""

    def __init__(self, node: PlanNode) -> None:
        super().__init__(node)
        spec = node.spec
        assert isinstance(spec, JoinSpec)
        self.keys = spec.keys
        self.dropped = 0

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        inputs = seg.inputs
        size = seg.chunk_size
        bufs: list[deque[tuple[int, Any]]] = [deque() for _ in inputs]
        keys = self.keys
        while True:
            if not await self._refill(inputs, bufs, size):
                return
            out: list[Any] = []
            while all(bufs):
                top = max(b[0][0] for b in bufs)
                complete = True
                for b in bufs:
                    while b and b[0][0] < top:
                        b.popleft()
                        self.dropped += 1
                    complete = complete and bool(b)
                if complete:
                    values = tuple(b.popleft()[1] for b in bufs)
                    if any(v is DROPPED for v in values):
                        self.dropped += 1  # a branch filtered the item: an inner join
                        continue
                    out.append(values if keys is None else dict(zip(keys, values, strict=True)))
            if out:
                self.n_out += len(out)
                await seg.emit(out)


class OrderedMergeHead(Head):
    """Merges ``(seq, value)`` envelopes from order-keeping inputs back into ``seq`` order
    and emits the values. The next item is emitted as soon as it is the next ``seq`` or,
    when numbers are missing, once every live input has shown its next item. A reader task
    per input stops reading while ``2 * chunk_size`` items are buffered for it, so at most
    about three chunks wait per input (backpressure)."""

    async def run(self, seg: Segment, status: _Status) -> None:
        inputs = seg.inputs
        size = seg.chunk_size
        k = len(inputs)
        bufs: list[deque[tuple[int, Any]]] = [deque() for _ in inputs]
        live = [True] * k
        data = trio.lowlevel.ParkingLot()
        room = [trio.lowlevel.ParkingLot() for _ in inputs]

        async def reader(i: int, task_status: _Status) -> None:
            edge, buf = inputs[i], bufs[i]
            try:
                while True:
                    while len(buf) >= 2 * size:
                        await room[i].park()
                    chunk = await edge.receive(size)
                    if chunk is None:
                        return
                    self.n_in += len(chunk)
                    buf.extend(chunk)
                    data.unpark_all()
            finally:
                live[i] = False
                data.unpark_all()

        async with trio.open_nursery() as nursery:
            for i in range(k):
                nursery.start_soon(seg.runner.guarded, reader, i)
            status.started()
            nxt = 0
            while True:
                out: list[Any] = []
                while True:
                    best = -1
                    for i in range(k):
                        if bufs[i] and (best < 0 or bufs[i][0][0] < bufs[best][0][0]):
                            best = i
                    if best < 0:
                        break
                    seq = bufs[best][0][0]
                    if seq != nxt and not all(bufs[i] or not live[i] for i in range(k)):
                        break  # an earlier item may still come from an input with nothing queued
                    value = bufs[best].popleft()[1]
                    if value is not DROPPED:
                        out.append(value)
                    nxt = seq + 1
                    if room[best]:
                        room[best].unpark_all()
                if out:
                    self.n_out += len(out)
                    await seg.emit(out)
                    continue
                if not any(live) and not any(bufs):
                    return
                await data.park()


