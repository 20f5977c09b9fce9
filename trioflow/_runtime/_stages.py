"""Heads of stages that read one input edge in their own task, one call at a time:
``continuous``, async per-item stages, a timed ``batch``, and the pass-through head.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import trio
from trio.lowlevel import checkpoint_if_cancelled

from .._acks import TrackedBatcher
from .._ops import (
    Batcher,
    KeyMemory,
    LastKey,
    keyed_output,
    outputs_of,
    scan_output,
)
from .._plan import PlanNode
from .._stage import (
    DROPPED,
    BatchStage,
    ContinuousStage,
    DistinctStage,
    DistinctUntilChangedStage,
    FilterStage,
    FlatMapStage,
    FnSink,
    MapStage,
    ReduceSink,
    ScanStage,
    SkipWhileStage,
    TakeWhileStage,
    TapStage,
)
from ._segment import Head, Segment, _policy_call, _Status, streams_outputs
from ._sources import Emit


class _Items:
    """The input of a ``continuous`` stage: an async iterator over the incoming items."""

    def __init__(self, seg: Segment, head: Head) -> None:
        self._seg = seg
        self._head = head
        self._buf: deque[Any] = deque()

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> Any:
        if not self._buf:
            inp = self._seg.inp
            assert inp is not None
            # fed by a balance: take one item at a time, so the balance sends the rest to a
            # branch that can start them
            chunk = await inp.receive(1 if inp.demand else self._seg.chunk_size)
            if chunk is None:
                raise StopAsyncIteration
            self._head.n_in += len(chunk)
            self._buf.extend(chunk)
        return self._buf.popleft()


class ContinuousHead(Head):
    def __init__(self, node: PlanNode, spec: ContinuousStage[Any, Any]) -> None:
        super().__init__(node)
        self.fn = spec.fn

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        try:
            await self.fn(_Items(seg, self), Emit(seg, self))
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            raise


class AsyncEachHead(Head):
    """One async call per item, in order, in the segment's task (concurrency 1)."""

    def __init__(self, node: PlanNode, spec: Any) -> None:
        super().__init__(node)
        self.spec = spec
        self.fn: Callable[..., Any] = _policy_call(spec, spec.fn, self.guard)
        self.acc: Any = getattr(spec, "initial", None)

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        assert seg.inp is not None
        inp = seg.inp
        # one call at a time: fed by a balance, take no more than one item (the balance
        # sends the others to a branch that can start them now)
        size = 1 if inp.demand else seg.chunk_size
        step = self._step_for(seg)
        while True:
            chunk = await inp.receive(size)
            if chunk is None:
                return
            self.n_in += len(chunk)
            for item in chunk:
                self.in_flight = 1
                try:
                    await step(item)
                except Exception as exc:
                    if not await self.recover(exc, item):
                        raise
                    if self.envelope:  # a branch never drops an envelope (the join waits)
                        await seg.emit([(item[0], DROPPED)])
                finally:
                    self.in_flight = 0

    def _step_for(self, seg: Segment) -> Callable[[Any], Awaitable[None]]:
        spec = self.spec
        fn = self.fn
        emit = seg.emit

        if isinstance(spec, MapStage):
            async def step(item: Any) -> None:
                r = await fn(item)
                self.n_out += 1
                await emit([r])
        elif isinstance(spec, FilterStage):
            async def step(item: Any) -> None:
                if await fn(item):
                    self.n_out += 1
                    await emit([item])
        elif isinstance(spec, TapStage):
            async def step(item: Any) -> None:
                await fn(item)
                self.n_out += 1
                await emit([item])
        elif isinstance(spec, TakeWhileStage):
            async def step(item: Any) -> None:
                if not await fn(item):
                    await seg.stop_here(-1)
                self.n_out += 1
                await emit([item])
        elif isinstance(spec, SkipWhileStage):
            skipping = True

            async def step(item: Any) -> None:
                nonlocal skipping
                if skipping:
                    if await fn(item):
                        return
                    skipping = False  # fn is not called again
                self.n_out += 1
                await emit([item])
        elif isinstance(spec, DistinctStage | DistinctUntilChangedStage):
            keep = (KeyMemory(spec.max_keys).first if isinstance(spec, DistinctStage)
                    else LastKey().changed)

            async def step(item: Any) -> None:
                if keep(await fn(item)):
                    self.n_out += 1
                    await emit([item])
        elif isinstance(spec, ScanStage) and spec.key is not None:
            key, initial, tracked = spec.key, self.acc, spec.tracked
            accs: dict[Any, Any] = {}

            async def step(item: Any) -> None:
                # a failed item (key, unhashable key, fn) leaves every accumulator unchanged
                k = key(item)
                acc = await fn(accs.get(k, initial), item)
                accs[k] = acc
                self.n_out += 1
                await emit([keyed_output(k, acc, tracked)])
        elif isinstance(spec, ScanStage):
            tracked = spec.tracked

            async def step(item: Any) -> None:
                self.acc = await fn(self.acc, item)
                self.n_out += 1
                await emit([scan_output(self.acc, tracked)])
        elif isinstance(spec, FlatMapStage) and streams_outputs(spec, self.guard):
            async def step(item: Any) -> None:
                async with aclosing(fn(item)) as agen:
                    async for out in agen:
                        self.n_out += 1
                        await emit([out])
        elif isinstance(spec, FlatMapStage):
            # a function returning an iterable, or a generator collected per attempt (under
            # a policy, so that a failed item is never emitted in part)
            async def step(item: Any) -> None:
                outs = outputs_of(await fn(item))
                if outs:
                    self.n_out += len(outs)
                    await emit(outs)
        elif isinstance(spec, FnSink):
            async def step(item: Any) -> None:
                await fn(item)
        elif isinstance(spec, ReduceSink):
            async def step(item: Any) -> None:
                self.acc = await fn(self.acc, item)
        else:  # pragma: no cover - the planner only routes the kinds above here
            raise AssertionError(f"no async head for {spec!r}")
        return step

    def result(self) -> Any:
        return self.acc if isinstance(self.spec, ReduceSink) else None


class BatchTimerHead(Head):
    """``batch(size, timeout=...)``: the timer starts at the first item of each batch."""

    def __init__(self, node: PlanNode, spec: BatchStage[Any]) -> None:
        super().__init__(node)
        self.size = spec.size
        assert spec.timeout is not None
        self.timeout = spec.timeout
        self.tracked_items = spec.tracked

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        assert seg.inp is not None
        inp = seg.inp
        # tracked: batches carry one ticket over their members
        batcher = TrackedBatcher(self.size) if self.tracked_items else Batcher(self.size)
        deadline = math.inf
        while True:
            received = False
            chunk: list[Any] | None = None
            with trio.move_on_at(deadline):
                chunk = await inp.receive(seg.chunk_size)
                received = True
            if not received:  # the oldest item of the partial batch waited `timeout`
                partial = batcher.take_partial()
                deadline = math.inf
                if partial:
                    self.n_out += 1
                    await seg.emit(partial)
                continue
            if chunk is None:
                break
            now = trio.current_time()
            self.n_in += len(chunk)
            was_empty = not batcher.current
            full = batcher.add(chunk)
            if full:
                self.n_out += len(full)
                await seg.emit(full)
            if not batcher.current:
                deadline = math.inf
            elif was_empty or full:
                deadline = now + self.timeout
        await checkpoint_if_cancelled()  # a failed run is cancelled, not completed
        partial = batcher.take_partial()
        if partial:
            self.n_out += 1
            await seg.emit(partial)


class PassHead(Head):
    """Reads the segment's input edge and hands each chunk to the fused ops. Used for a
    ``merge`` (an edge with several producers) and for inline stages that could not be
    fused into their producer (right after a fan-out, say)."""

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        assert seg.inp is not None
        inp = seg.inp
        size = seg.chunk_size
        emit = seg.emit
        while True:
            chunk = await inp.receive(size)
            if chunk is None:
                return
            self.n_in += len(chunk)
            self.n_out += len(chunk)
            await emit(chunk)


