"""Running: a plan becomes one nursery tree.

Theory of operation.

* One nursery per run. Each segment of the plan (a head plus the inline ops fused after it)
  is one task; worker pools add a child nursery inside their segment's task. Edges are
  bounded ``Edge`` queues of chunks.
* Segments start from the sink back to the source, each through ``nursery.start``: a
  segment reports started once its resources are built (persistent workers entered their
  resource, continuous sources said they are listening). ``run`` reports started to its own
  caller only when every segment has, so ``await nursery.start(flow.run)`` means ready.
* Completion flows down: a head whose input ended (or whose source is exhausted) flushes
  its fused ops and closes its output edge; the next segment then sees the end.
* Early stop flows up: when an op wants no more input (``take``), or the output edge's
  consumer has gone, the segment cancels its own scope (``Segment.scope``), so the head
  and any user code under way unwind exactly as on cancellation; the segment then closes
  its input edge, and the producer upstream stops the same way on its next ``put``.
* Failure cancels the tree: every task runs under ``Runner.guarded``, which records a user
  error (already annotated with stage and item) and cancels the run's nursery *before*
  the task's ``finally`` closes its edges, so downstream sees cancellation, never a clean
  end. Nothing takes a completion action after a failure: every completion path first
  passes ``checkpoint_if_cancelled``. Recorded errors are raised once, as a single
  ``ExceptionGroup`` level, after the nursery has exited; no error is swallowed by cleanup,
  because edges close synchronously.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, Generic, NoReturn, TypeVar, final

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._callables import CallKind
from ._edge import DownstreamClosed, Edge
from ._errors import RunAborted, UnroutableError, annotate
from ._ops import (
    Batcher,
    BatchOp,
    CallSinkOp,
    DiscardOp,
    FilterOp,
    FlatMapOp,
    ListSinkOp,
    MapOp,
    Op,
    ReduceSinkOp,
    ScanOp,
    SinkOp,
    SkipOp,
    TakeOp,
    TakeWhileOp,
    TapOp,
)
from ._plan import DEFAULT, Plan, PlanNode, PlanSegment, RoutePort
from ._policies import DeadLetterEntry, Fail, Guard, Restart, Supervisor, with_retry_and_timeout
from ._stage import (
    DROPPED,
    Adaptive,
    AsyncIterableSource,
    BalanceSpec,
    BatchStage,
    BroadcastSpec,
    ChannelSource,
    ContinuousStage,
    DiscardSink,
    FilterStage,
    FlatMapStage,
    FnSink,
    FnStage,
    IterableSource,
    JoinSpec,
    ListSink,
    MapStage,
    MergeSpec,
    OnDemandStage,
    OrderedMergeSpec,
    PeriodicSource,
    PersistentStage,
    ReduceSink,
    RouteSpec,
    ScanStage,
    Sink,
    SkipStage,
    TakeStage,
    TakeWhileStage,
    TapStage,
    TaskSource,
    ZipSpec,
)
from ._stats import EdgeStatistics, RunState, RunStatistics, StageStatistics

T = TypeVar("T")
R = TypeVar("R")

#: Bound on how long an async iterator's ``aclose`` may take when a run ends.
_ACLOSE_TIMEOUT = 5.0
#: Bound on how long closing a persistent worker's resource may take (shielded).
CLEANUP_TIMEOUT = 10.0


class _Status:
    """Forwards ``started()`` once, and remembers whether it was called."""

    __slots__ = ("_inner", "called")

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: object = None) -> None:
        if not self.called:
            self.called = True
            self._inner.started()


# -- heads ------------------------------------------------------------------------------------


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


class Head:
    """The first node of a segment: it pulls input (or produces it) and calls ``emit``."""

    operator = "head"

    def __init__(self, node: PlanNode | None, name: str = "") -> None:
        self.name: str = name if node is None else node.name
        self.node = node
        self.n_in = 0
        self.n_out = 0
        self.errors = 0
        self.in_flight = 0
        self.workers = 1
        self.waiting = 0
        self.guard: Guard | None = _guard_for(node) if node is not None else None
        self.envelope = bool(node is not None and getattr(node.spec, "envelope", False))

    async def run(self, seg: Segment, status: _Status) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def restarts(self) -> int:
        sup = getattr(self, "supervisor", None)
        return 0 if sup is None else int(sup.restarts)

    async def recover(self, exc: Exception, item: object) -> bool:
        """A call of user code failed on ``item``: apply the stage's error policy. Returns
        True when the item was skipped or dead-lettered (the caller goes on); False when
        the run must fail (the caller re-raises). Errors raised downstream (already noted
        by the stage they came from) are never this stage's to handle."""
        guard = self.guard
        if guard is None or guard.fails or getattr(exc, "_trioflow_annotated", False):
            self.failed(exc, item)
            return False
        self.errors += 1
        await guard.ahandle(exc, item[1] if self.envelope else item)  # type: ignore[index]
        return True

    def failed(self, exc: BaseException, item: object, *, has_item: bool = True) -> None:
        if getattr(exc, "_trioflow_annotated", False):
            return  # raised (and counted) by a fused op after this head, reached via emit
        self.errors += 1
        annotate(exc, self.name, item, has_item=has_item)

    def result(self) -> Any:
        return None

    async def release(self) -> None:
        """Close what the head owns when the run ends before the head ever ran (a failure
        while starting, ``take(0)``); a head that ran closes it itself."""


async def _bounded_shielded(fn: Callable[[], Awaitable[object]]) -> None:
    with trio.move_on_after(_ACLOSE_TIMEOUT) as cs:
        cs.shield = True
        await fn()


class IterableHead(Head):
    def __init__(self, node: PlanNode, spec: IterableSource[Any]) -> None:
        super().__init__(node)
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
            await emit(chunk)
            sizer.took(clock() - started)
            await checkpoint()


class AsyncIterableHead(Head):
    def __init__(self, node: PlanNode, spec: AsyncIterableSource[Any]) -> None:
        super().__init__(node)
        self.iterable = spec.iterable

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        try:
            it = aiter(self.iterable)
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            raise
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
            await _bounded_shielded(aclose)


class ChannelHead(Head):
    def __init__(self, node: PlanNode, spec: ChannelSource[Any]) -> None:
        super().__init__(node)
        self.channel = spec.channel

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        channel = self.channel
        nowait = getattr(channel, "receive_nowait", None)
        try:
            while True:
                try:
                    with seg.drain_point() as cs:
                        first = await channel.receive()
                    if cs.cancelled_caught:
                        return
                except trio.EndOfChannel:
                    return
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


@final
class Emit(Generic[T]):
    """Hands items from user code (``trioflow.source``, ``trioflow.continuous``) to the
    rest of the pipeline.

    ``await emit(item)`` and ``await emit.many(items)`` return as soon as the items are
    queued; they wait only while the next edge is full (backpressure). When the pipeline
    downstream has stopped (``take`` was satisfied, the consumer left), the call raises
    ``trio.Cancelled``: the caller unwinds as on any cancellation.
    """

    __slots__ = ("_head", "_n", "_seg")

    def __init__(self, seg: Segment, head: Head) -> None:
        self._seg = seg
        self._head = head
        self._n = 0

    async def __call__(self, item: T) -> None:
        self._head.n_out += 1
        await self._seg.emit([item])
        self._n += 1
        if self._n >= self._seg.chunk_size or self._seg.draining:
            # a producer that never blocks still checkpoints; a draining one stops here
            self._n = 0
            await checkpoint()

    async def many(self, items: list[T] | tuple[T, ...]) -> None:
        """Emit several items together (one edge operation for all of them)."""
        chunk = list(items)
        if chunk:
            self._head.n_out += len(chunk)
            await self._seg.emit(chunk)
        await checkpoint()


class TaskSourceHead(Head):
    def __init__(self, node: PlanNode, spec: TaskSource[Any]) -> None:
        super().__init__(node)
        self.fn = spec.fn
        self.wants_status = spec.wants_status
        self.supervisor = Supervisor(spec.restart) if spec.restart is not None else None

    async def run(self, seg: Segment, status: _Status) -> None:
        emit: Emit[Any] = Emit(seg, self)
        try:
            # a drain cancels the user's source as a whole; its emits still land, because
            # the drain first lets the output edge take them without waiting
            with seg.drain_point():
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
            assert self._seg.inp is not None
            chunk = await self._seg.inp.receive(self._seg.chunk_size)
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


def _policy_call(spec: Any, fn: Callable[..., Any], guard: Guard | None) -> Callable[..., Any]:
    """``fn`` as an async callable, under the stage's retry and timeout. Async generators
    are returned as they are (they are iterated, not awaited)."""
    kind = getattr(spec, "kind", CallKind.ASYNC)
    if kind is CallKind.ASYNC_GEN:
        return fn
    retry, timeout = getattr(spec, "retry", None), getattr(spec, "timeout", None)
    if kind is CallKind.ASYNC and retry is None and timeout is None:
        return fn
    return with_retry_and_timeout(fn, kind is CallKind.ASYNC, retry, timeout,
                                  guard or Guard(spec.name or spec.operator, Fail()))


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
        size = seg.chunk_size
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
        elif isinstance(spec, ScanStage):
            async def step(item: Any) -> None:
                self.acc = await fn(self.acc, item)
                self.n_out += 1
                await emit([self.acc])
        elif isinstance(spec, FlatMapStage) and spec.kind is CallKind.ASYNC_GEN and self.guard:
            async def step(item: Any) -> None:
                # under an error policy the outputs are collected first, so an item that
                # fails half-way is skipped whole, never emitted in part
                async with aclosing(fn(item)) as agen:
                    outs = [out async for out in agen]
                if outs:
                    self.n_out += len(outs)
                    await emit(outs)
        elif isinstance(spec, FlatMapStage) and spec.kind is CallKind.ASYNC_GEN:
            async def step(item: Any) -> None:
                async with aclosing(fn(item)) as agen:
                    async for out in agen:
                        self.n_out += 1
                        await emit([out])
        elif isinstance(spec, FlatMapStage):
            async def step(item: Any) -> None:
                outs = list(await fn(item))
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

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        assert seg.inp is not None
        inp = seg.inp
        batcher = Batcher(self.size)
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


class _Skipped:
    __slots__ = ()


#: The "result" of an item a pool skipped or dead-lettered: it keeps the item's place in
#: the order (so later results are not held back) and is never emitted.
_SKIPPED = _Skipped()


class PoolHead(Head):
    """Concurrent calls: ``map(concurrency=N)``, ``persistent`` and ``on_demand``.

    The segment's task feeds items to the workers (or spawns a task per item for
    on-demand). At most ``limit`` items are between admission and hand-off:
    in ordered mode ``limit`` is the reorder window (in-flight calls are limited to N
    separately, finished results wait in the reorder buffer for their turn); unordered,
    ``limit`` is 2·N so a worker finds its next item ready. A worker hands its result on
    itself, without yielding when the next edge has room, and takes the next item at once.

    Keyed (``map(key=...)``): an item waits in its key's queue while ``per_key`` items of
    that key are running, so items of one key start in input order; results of one key
    are handed on in input order (globally in input order when ``ordered``).

    Adaptive (``Adaptive(min, max, idle)``): the pool starts with ``min`` workers; the
    feeder adds one when it queues an item and no worker is idle (up to ``max``); a worker
    idle for ``idle`` seconds exits while more than ``min`` remain.
    """

    def __init__(self, node: PlanNode, spec: Any) -> None:
        super().__init__(node)
        self.spec = spec
        self.resource: Callable[[], Any] | None = None
        self.factory: Callable[[], Any] | None = None
        self.key_fn: Callable[[Any], Any] | None = None
        self.per_key = 1
        size: int | Adaptive
        if isinstance(spec, MapStage):
            size = spec.concurrency
            self.fn: Callable[..., Any] = spec.fn
            self.key_fn = spec.key
            self.per_key = spec.per_key
        elif isinstance(spec, PersistentStage):
            size = spec.workers
            self.fn = spec.fn
            self.resource = spec.resource
        else:
            assert isinstance(spec, OnDemandStage)
            size = spec.limit
            self.factory = spec.factory
            self.fn = spec.factory
        restart = getattr(spec, "restart", None)
        self.supervisor = Supervisor(restart) if isinstance(restart, Restart) else None
        # retries and timeouts wrap the call; error policies are applied around it
        self.fn = _policy_call(spec, self.fn, self.guard)
        self._instance_call = _policy_call(spec, _call_any, self.guard)
        if isinstance(size, Adaptive):
            self.min_workers, self.max_workers, self.idle = size.min, size.max, size.idle
            self.adaptive = True
        else:
            self.min_workers = self.max_workers = size
            self.idle = math.inf
            self.adaptive = False
        self.workers = 0 if self.factory is None else self.max_workers
        self.ordered: bool = spec.ordered
        n = self.max_workers
        self.limit = (spec.window or 2 * n) if self.ordered else 2 * n
        # the feeder, once blocked on the limit, is woken only when it can admit a run of
        # items (half the queue's headroom), not once per finished item: one scheduler
        # pass per run instead of per item, while workers still find items queued
        self._wake_below = self.limit - max(1, (self.limit - n) // 2)
        self._ready = 0
        self._all_ready = trio.Event()
        self._queue: deque[tuple[int, Any, Any]] = deque()
        self._work = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._closed = False
        self._pending = 0
        self._running = 0
        self._idle_workers = 0
        self._seq = 0
        self._next = 0
        self._results: dict[int, Any] = {}
        self._emitting = False
        self._seg: Segment | None = None
        self._nursery: trio.Nursery | None = None
        # keyed state: per key, items running or queued to run; items waiting their turn;
        # and (unordered, per_key > 1) the per-key reorder buffers
        self._key_busy: dict[Any, int] = {}
        self._key_wait: dict[Any, deque[tuple[int, Any, Any]]] = {}
        self._key_seq: dict[Any, int] = {}
        self._key_next: dict[Any, int] = {}
        self._key_results: dict[Any, dict[int, Any]] = {}
        self._item_kseq: dict[int, int] = {}

    async def run(self, seg: Segment, status: _Status) -> None:
        self._seg = seg
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.factory is None:
                # start all workers at once and wait once (not one nursery.start each)
                for _ in range(self.min_workers):
                    self._spawn_worker()
                if self.resource is not None:
                    await self._all_ready.wait()  # every worker entered its resource
            status.started()
            await self._feed(seg, nursery)
            self._closed = True
            self._idle_workers -= len(self._work.unpark_all())

    def _spawn_worker(self) -> None:
        assert self._nursery is not None and self._seg is not None
        self.workers += 1
        self._nursery.start_soon(self._seg.runner.guarded, self._worker)

    async def _feed(self, seg: Segment, nursery: trio.Nursery) -> None:
        assert seg.inp is not None
        inp = seg.inp
        spawn = self.factory is not None
        limit = self.limit
        n = self.max_workers
        key_fn = self.key_fn
        while True:
            chunk = await inp.receive(seg.chunk_size)
            if chunk is None:
                return
            self.n_in += len(chunk)
            for item in chunk:
                while self._pending >= limit or (spawn and self._running >= n):
                    await self._space.park()
                seq = self._seq
                self._seq = seq + 1
                self._pending += 1
                if spawn:
                    self._running += 1
                    nursery.start_soon(seg.runner.guarded, self._one, seq, item)
                    continue
                if key_fn is None:
                    self._queue.append((seq, item, None))
                else:
                    self._admit_keyed(seq, item, key_fn)
                if self._idle_workers:
                    self._wake_one()
                elif self.adaptive and self.workers < n and self._queue:
                    self._spawn_worker()

    def _admit_keyed(self, seq: int, item: Any, key_fn: Callable[[Any], Any]) -> None:
        try:
            k = key_fn(item)
            busy = self._key_busy.get(k, 0)
        except Exception as exc:  # an unhashable key is an error of the key function too
            self.failed(exc, item)
            raise
        if not self.ordered and self.per_key > 1:
            kseq = self._key_seq.get(k, 0)
            self._key_seq[k] = kseq + 1
            self._item_kseq[seq] = kseq
        if busy < self.per_key:
            self._key_busy[k] = busy + 1
            self._queue.append((seq, item, k))
        else:
            self._key_wait.setdefault(k, deque()).append((seq, item, k))

    def _release_key(self, k: Any) -> None:
        waiting = self._key_wait.get(k)
        if waiting:
            self._queue.append(waiting.popleft())  # the key's slot passes to its next item
            if not waiting:
                del self._key_wait[k]
            if self._idle_workers:
                self._wake_one()
        else:
            busy = self._key_busy[k] - 1
            if busy:
                self._key_busy[k] = busy
            else:
                del self._key_busy[k]

    def _wake_one(self) -> None:
        # the waker, not the woken worker, takes it off the idle count: until it runs, the
        # worker must not be counted idle, or the feeder would not grow an adaptive pool
        self._idle_workers -= len(self._work.unpark())

    def _admitted_done(self, count: int) -> None:
        self._pending -= count
        if self._space and self._pending <= self._wake_below:
            self._space.unpark()

    async def _worker(self, task_status: _Status) -> None:
        try:
            if self.resource is None:
                await self._work_loop(None, [None])
                return
            current: list[tuple[int, Any, Any] | None] = [None]
            ready = False
            while True:
                try:
                    ready = await self._serve_with_resource(current, ready)
                except Exception as exc:
                    delay = self._restart_delay(exc)
                    if delay is None:
                        raise
                    if current[0] is not None:
                        # the failed item is retried on the fresh resource (at-least-once)
                        self._queue.appendleft(current[0])
                        current[0] = None
                    await trio.sleep(delay)
                else:
                    return
        finally:
            self.workers -= 1

    def _restart_delay(self, exc: Exception) -> float | None:
        """Supervision: how long to wait before restarting after ``exc``, or None to fail.
        Errors that came from downstream (through ``emit``) are never restarted."""
        if self.supervisor is None or getattr(exc, "trioflow_stage", None) != self.name:
            return None
        return self.supervisor.on_failure(trio.current_time())

    @property
    def restarts(self) -> int:
        return 0 if self.supervisor is None else self.supervisor.restarts

    async def _serve_with_resource(
        self, current: list[tuple[int, Any, Any] | None], ready: bool
    ) -> bool:
        assert self.resource is not None
        try:
            cm = self.resource()
            res = await cm.__aenter__()
        except Exception as exc:
            self.failed(exc, None, has_item=False)
            exc.add_note(f"trioflow: while building the resource of a worker of {self.name!r}")
            raise
        try:
            if not ready:
                ready = True
                self._ready += 1
                if self._ready == self.min_workers:
                    self._all_ready.set()
            await self._work_loop(res, current)
        except BaseException as exc:
            # resources are closed on every exit path, shielded so cancellation cannot
            # interrupt the close, and bounded so a close that hangs cannot hang the
            # run; the original error is what propagates, and an error of the close
            # itself is recorded beside it (never silently replaces it)
            await self._close_resource(cm, exc)
            raise
        else:
            runner = self._seg.runner if self._seg is not None else None
            if runner is not None and runner.errors:
                # the input ended cleanly, but the run has failed meanwhile: close as on
                # an error, so a resource that commits on a clean exit does not
                await self._close_resource(cm, RunAborted(
                    f"closing a worker of {self.name!r}: the run failed elsewhere"))
            else:
                with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    await cm.__aexit__(None, None, None)
        return ready

    async def _close_resource(self, cm: Any, exc: BaseException) -> None:
        try:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
        except Exception as close_exc:
            if close_exc is exc:
                return
            annotate(close_exc, self.name, has_item=False)
            close_exc.add_note("trioflow: raised while closing a worker's resource after an error")
            if self._seg is not None:
                self._seg.runner.fail(close_exc)

    async def _work_loop(self, res: Any, current: list[tuple[int, Any, Any] | None]) -> None:
        queue = self._queue
        fn = self.fn
        with_resource = self.resource is not None
        keyed = self.key_fn is not None
        while True:
            if not queue:
                if self._closed:
                    return
                self._idle_workers += 1
                woken = False
                try:
                    with trio.move_on_after(self.idle) as cs:  # idle is inf unless adaptive
                        await self._work.park()
                    woken = not cs.cancelled_caught
                finally:
                    if not woken:
                        self._idle_workers -= 1
                if not woken and not queue and self.workers > self.min_workers:
                    return  # idle for `idle` seconds: shrink
                continue
            job = queue.popleft()
            seq, item, k = job
            current[0] = job
            self.in_flight += 1
            try:
                r = await (fn(res, item) if with_resource else fn(item))
            except Exception as exc:
                if not await self.recover(exc, item):
                    raise
                # its place in the order is handed on, empty (in a branch: a tombstone)
                r = (item[0], DROPPED) if self.envelope else _SKIPPED
            finally:
                self.in_flight -= 1
            current[0] = None
            if keyed:
                self._release_key(k)
                if not self.ordered and self.per_key > 1:
                    await self._deposit_keyed(seq, k, r)
                    continue
            await self._deposit(seq, r)

    async def _one(self, seq: int, item: Any, task_status: _Status) -> None:
        assert self.factory is not None
        self.in_flight += 1
        try:
            try:
                instance = self.factory()
                if hasattr(instance, "__aenter__"):
                    async with instance as entered:
                        r = await self._instance_call(entered, item)
                else:
                    r = await self._instance_call(instance, item)
            except Exception as exc:
                if not await self.recover(exc, item):
                    raise
                r = (item[0], DROPPED) if self.envelope else _SKIPPED
        finally:
            self.in_flight -= 1
            self._running -= 1
            if self._space:
                self._space.unpark()
        await self._deposit(seq, r)

    async def _deposit(self, seq: int, result: Any) -> None:
        seg = self._seg
        assert seg is not None
        if not self.ordered:
            if result is _SKIPPED:
                self._admitted_done(1)
                return
            self.n_out += 1
            try:
                await seg.emit([result])
            finally:
                self._admitted_done(1)
            return
        results = self._results
        results[seq] = result
        self.waiting = len(results)
        if self._emitting:
            return
        self._emitting = True
        try:
            while self._next in results:
                batch = []
                nxt = self._next
                while nxt in results:
                    batch.append(results.pop(nxt))
                    nxt += 1
                count = nxt - self._next
                self._next = nxt
                self.waiting = len(results)
                batch = [r for r in batch if r is not _SKIPPED]
                self.n_out += len(batch)
                # the batch counts against the window until it is handed on: while the next
                # edge is full, results behind it must not pile up past ``window - 1``
                if batch:
                    await seg.emit(batch)
                self._admitted_done(count)
        finally:
            self._emitting = False

    async def _deposit_keyed(self, seq: int, k: Any, result: Any) -> None:
        """Unordered with ``per_key > 1``: hand results on in input order within each key."""
        seg = self._seg
        assert seg is not None
        kseq = self._item_kseq.pop(seq)
        results = self._key_results.setdefault(k, {})
        results[kseq] = result
        self.waiting += 1
        nxt = self._key_next.get(k, 0)
        if kseq != nxt:
            return  # an earlier item of this key is still running; it will hand this on
        batch = []
        while nxt in results:
            batch.append(results.pop(nxt))
            nxt += 1
        self._key_next[k] = nxt
        if not results:
            del self._key_results[k]
        if nxt == self._key_seq.get(k):  # every admitted item of the key is handed on
            del self._key_next[k], self._key_seq[k]
        self.waiting -= len(batch)
        count = len(batch)
        batch = [r for r in batch if r is not _SKIPPED]
        self.n_out += len(batch)
        try:
            if batch:
                await seg.emit(batch)
        finally:
            self._admitted_done(count)


async def _call_any(target: Any, item: Any) -> Any:
    result = target(item)
    if inspect.isawaitable(result):
        result = await result
    return result


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


class ZipHead(Head):
    """Pairs items by position across its inputs: emits ``(a_i, b_i, ...)``; completes
    when any input completes (the other inputs are then stopped)."""

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        inputs = seg.inputs
        size = seg.chunk_size
        bufs: list[deque[Any]] = [deque() for _ in inputs]
        while True:
            for edge, buf in zip(inputs, bufs, strict=True):
                if not buf:
                    chunk = await edge.receive(size)
                    if chunk is None:
                        return
                    self.n_in += len(chunk)
                    buf.extend(chunk)
            n = min(len(b) for b in bufs)
            out = [tuple(b.popleft() for b in bufs) for _ in range(n)]
            self.n_out += n
            await seg.emit(out)


class JoinHead(Head):
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
            for edge, buf in zip(inputs, bufs, strict=True):
                if not buf:
                    chunk = await edge.receive(size)
                    if chunk is None:
                        return
                    self.n_in += len(chunk)
                    buf.extend(chunk)
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


class Router:
    """The output of a segment that ends in a fan-out junction: decides, per chunk, which
    edges get which items. Shares ``put``/``close_send`` with ``Edge``."""

    def __init__(self, node: PlanNode, edges: list[Edge]) -> None:
        self.node = node
        self.edges = edges
        self.live = list(edges)
        self.n_in = 0
        self.n_out = 0
        self.errors = 0

    async def put(self, chunk: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close_send(self) -> None:
        for edge in self.edges:
            edge.close_send()

    def _dead(self, edge: Edge) -> None:
        if edge in self.live:
            self.live.remove(edge)
        if not self.live:
            raise DownstreamClosed


class BroadcastRouter(Router):
    """Every item to every live branch, each through its own bounded edge: the slowest
    branch sets the pace; a branch that stopped (``take``) is skipped from then on."""

    async def put(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        live = list(self.live)
        last = len(live) - 1
        for i, edge in enumerate(live):
            try:
                # every put gets a list of its own (the last the original): consumers may
                # extend chunks in place, and one edge may be fed twice (merge(fan, fan))
                await edge.put(chunk if i == last else list(chunk))
                self.n_out += len(chunk)
            except DownstreamClosed:
                self._dead(edge)


class BalanceRouter(Router):
    """Each item to one branch: the chunk goes to the branches with the most room first,
    split to fit; when every branch is full it waits for the first one to drain."""

    def __init__(self, node: PlanNode, edges: list[Edge]) -> None:
        super().__init__(node, edges)
        self._space = trio.lowlevel.ParkingLot()
        for edge in edges:
            edge.watchers.append(self._space)

    async def put(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        while chunk:
            for edge in list(self.live):
                if edge.receive_closed:
                    self._dead(edge)
            best = max(self.live, key=_room)
            room = _room(best)
            if room <= 0 and best.items:
                await self._space.park()
                continue
            part, chunk = (chunk, []) if room >= len(chunk) else (chunk[:room], chunk[room:])
            try:
                await best.put(part)
                self.n_out += len(part)
            except DownstreamClosed:
                chunk = part + chunk
                self._dead(best)


class RouteRouter(Router):
    """Each item to the branch named by ``key(item)``; unmatched keys go to the default
    branch, or fail the run with ``UnroutableError`` when there is none. Items for a branch
    that stopped are dropped."""

    def __init__(self, node: PlanNode, edges: list[Edge], ports: tuple[Any, ...]) -> None:
        super().__init__(node, edges)
        spec = node.spec
        assert isinstance(spec, RouteSpec)
        self.key = spec.key
        self.by_key: dict[Any, Edge] = {}
        self.default: Edge | None = None
        for port, edge in zip(ports, edges, strict=True):
            if port is DEFAULT:
                self.default = edge
            else:
                assert isinstance(port, RoutePort)
                self.by_key[port.key] = edge

    def _unroutable(self, key: object) -> NoReturn:
        raise UnroutableError(
            f"route {self.node.name!r}: no branch for key {key!r} and no default branch"
        )

    async def put(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        parts: dict[int, tuple[Edge, list[Any]]] = {}
        key = self.key
        by_key = self.by_key
        item = None
        try:
            for item in chunk:
                edge = by_key.get(key(item), self.default)
                if edge is None:
                    self._unroutable(key(item))
                slot = parts.get(id(edge))
                if slot is None:
                    parts[id(edge)] = (edge, [item])
                else:
                    slot[1].append(item)
        except Exception as exc:
            self.errors += 1
            annotate(exc, self.node.name, item)
            raise
        for edge, items in parts.values():
            if edge.receive_closed:
                self._dead(edge)
                continue
            try:
                await edge.put(items)
                self.n_out += len(items)
            except DownstreamClosed:
                self._dead(edge)


def _room(edge: Edge) -> int:
    return (edge.capacity if edge.capacity is not None else 1 << 62) - edge.items


def _make_router(node: PlanNode, edges: list[Edge], ports: tuple[Any, ...]) -> Router:
    spec = node.spec
    if isinstance(spec, BroadcastSpec):
        return BroadcastRouter(node, edges)
    if isinstance(spec, BalanceSpec):
        return BalanceRouter(node, edges)
    assert isinstance(spec, RouteSpec)
    return RouteRouter(node, edges, ports)


Output = Edge | Router


# -- segments ---------------------------------------------------------------------------------


@final
class Segment:
    """A head plus the inline ops fused after it, run as one task."""

    def __init__(
        self,
        runner: Runner,
        plan: PlanSegment,
        head: Head,
        ops: list[Op],
        inputs: list[Edge],
        out: Output | None,
        chunk_size: int,
    ) -> None:
        self.runner = runner
        self.plan = plan
        self.head = head
        self.ops = tuple(ops)
        self.inputs = inputs
        self.inp = inputs[0] if inputs else None
        self.out = out
        self.chunk_size = chunk_size
        self.scope = trio.CancelScope()
        #: whether ``head.run`` was entered (if not, ``head.release`` must close its resources)
        self.head_ran = False
        #: a source segment asked to stop producing (``drain``)
        self.draining = False
        self._drain_scopes: set[trio.CancelScope] = set()
        #: index of the op that asked to stop (-1: the head itself); None while running
        self.stopped_at: int | None = None
        self.downstream_gone = False
        for i, op in enumerate(self.ops):
            if op.done:
                self.stopped_at = i
        out_edges = out.edges if isinstance(out, Router) else [out] if out is not None else []
        for edge in out_edges:
            edge.on_receive_closed.append(self._on_downstream_closed)

    def _on_downstream_closed(self) -> None:
        """A consumer of this segment stopped. When all have, stop now, even if the head
        is waiting for input rather than in ``put`` (where it would otherwise notice)."""
        out = self.out
        edges = out.edges if isinstance(out, Router) else [out] if out is not None else []
        if all(e.receive_closed for e in edges):
            self.downstream_gone = True
            self.scope.cancel()

    @contextlib.contextmanager
    def drain_point(self) -> Iterator[trio.CancelScope]:
        """Where a source waits for input: ``drain`` cancels this wait (and nothing else:
        items already handed over are never lost). ``cancelled_caught`` tells the source
        to stop."""
        cs = trio.CancelScope()
        if self.draining:
            cs.cancel()
        self._drain_scopes.add(cs)
        try:
            with cs:
                yield cs
        finally:
            self._drain_scopes.discard(cs)

    def request_drain(self) -> None:
        """Stop this source: it produces nothing more, its fused ops are flushed and its
        output ends cleanly. A put under way still lands (the edge may take one chunk over
        capacity), then the waits of the source are cancelled."""
        if self.draining:
            return
        self.draining = True
        out = self.out
        edges = out.edges if isinstance(out, Router) else [out] if out is not None else []
        for edge in edges:
            edge.allow_overfill()
        for cs in list(self._drain_scopes):
            cs.cancel()

    async def emit(self, items: list[Any]) -> None:
        """Pass items through the fused ops and queue the result on the output edge."""
        stop = -2
        for i, op in enumerate(self.ops):
            items = op.process(items)
            if op.done:
                stop = i
            if not items:
                break
        if items and self.out is not None:
            try:
                await self.out.put(items)
            except DownstreamClosed:
                self.downstream_gone = True
                self.scope.cancel()
                await checkpoint()
        if stop != -2:
            await self.stop_here(stop)

    async def stop_here(self, index: int) -> None:
        """Node ``index`` (an op, or -1 for the head) wants no more input: unwind the head
        as a cancellation, then finish the nodes after ``index``."""
        if self.stopped_at is None or index > self.stopped_at:
            self.stopped_at = index
        self.scope.cancel()
        await checkpoint()

    async def run(self, task_status: _Status) -> None:
        try:
            with self.scope:
                if self.stopped_at is None:
                    self.head_ran = True
                    await self.head.run(self, task_status)
            task_status.started()
            if self.downstream_gone:
                return
            if self.stopped_at is not None:
                for edge in self.inputs:
                    edge.close_receive()  # early stop travels upstream
            await checkpoint_if_cancelled()  # a failed run is cancelled, not completed
            start = 0 if self.stopped_at is None else self.stopped_at + 1
            await self._flush(start)
        except Exception as exc:
            # cancel the run *before* the finally below closes the output edge: a consumer
            # parked on that edge would otherwise wake to a clean end of stream (DESIGN §3)
            self.runner.fail(exc)
            raise
        finally:
            for edge in self.inputs:
                edge.close_receive()
            if self.out is not None:
                self.out.close_send()
            if not self.head_ran:
                await self.head.release()

    async def _flush(self, start: int) -> None:
        ops = self.ops
        for i in range(start, len(ops)):
            items = ops[i].flush()
            for op in ops[i + 1 :]:
                if not items:
                    break
                items = op.process(items)
            if items and self.out is not None:
                try:
                    await self.out.put(items)
                except DownstreamClosed:
                    return

    def sink_result(self) -> Any:
        if self.ops and isinstance(self.ops[-1], SinkOp):
            return self.ops[-1].result()
        return self.head.result()


# -- building ---------------------------------------------------------------------------------


def _make_op(node: PlanNode) -> Op:
    op = _build_op(node)
    op.guard = _guard_for(node)
    op.envelope = bool(getattr(node.spec, "envelope", False))
    return op


def _guard_for(node: PlanNode) -> Guard | None:
    spec = node.spec
    if getattr(spec, "runs_user_code", False) and spec.has_policies:  # type: ignore[union-attr]
        return Guard(node.name, spec.on_error)  # type: ignore[union-attr]
    return None


def _build_op(node: PlanNode) -> Op:
    spec = node.spec
    name = node.name
    if isinstance(spec, MapStage):
        return MapOp(name, spec.fn)
    if isinstance(spec, FilterStage):
        return FilterOp(name, spec.fn)
    if isinstance(spec, FlatMapStage):
        return FlatMapOp(name, spec.fn)
    if isinstance(spec, TapStage):
        return TapOp(name, spec.fn)
    if isinstance(spec, TakeWhileStage):
        return TakeWhileOp(name, spec.fn)
    if isinstance(spec, ScanStage):
        return ScanOp(name, spec.fn, spec.initial)
    if isinstance(spec, TakeStage):
        return TakeOp(name, spec.count)
    if isinstance(spec, SkipStage):
        return SkipOp(name, spec.count)
    if isinstance(spec, BatchStage):
        return BatchOp(name, spec.size)
    if isinstance(spec, FnSink):
        return CallSinkOp(name, spec.fn)
    if isinstance(spec, ListSink):
        return ListSinkOp(name)
    if isinstance(spec, ReduceSink):
        return ReduceSinkOp(name, spec.fn, spec.initial)
    if isinstance(spec, DiscardSink):
        return DiscardOp(name)
    raise AssertionError(f"no inline op for {spec!r}")  # pragma: no cover


def _make_head(node: PlanNode) -> Head:
    spec = node.spec
    if isinstance(spec, IterableSource):
        return IterableHead(node, spec)
    if isinstance(spec, AsyncIterableSource):
        return AsyncIterableHead(node, spec)
    if isinstance(spec, ChannelSource):
        return ChannelHead(node, spec)
    if isinstance(spec, PeriodicSource):
        return PeriodicHead(node, spec)
    if isinstance(spec, TaskSource):
        return TaskSourceHead(node, spec)
    if isinstance(spec, ContinuousStage):
        return ContinuousHead(node, spec)
    if isinstance(spec, BatchStage):
        return BatchTimerHead(node, spec)
    if isinstance(spec, FnStage | FnSink | ReduceSink) and spec.runs_elsewhere:
        from ._backend_head import BackendHead  # (it builds on this module's Head)

        return BackendHead(node, spec)
    if isinstance(spec, MapStage) and spec.pooled:
        return PoolHead(node, spec)
    if isinstance(spec, PersistentStage | OnDemandStage):
        return PoolHead(node, spec)
    return AsyncEachHead(node, spec)


def _guard_stats(guard: Guard | None) -> dict[str, int]:
    if guard is None:
        return {}
    return {"skipped": guard.skipped, "dead_lettered": guard.dead_lettered, "retries": guard.retries}


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _sole_cancelled(exc: BaseException) -> trio.Cancelled | None:
    """The first ``Cancelled`` of a group that holds nothing else (at any depth), or None."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    matched, rest = exc.split(trio.Cancelled)
    if rest is not None or matched is None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, trio.Cancelled)
    return leaf


@final
class Runner:
    """The live state of one run. Built by ``Flow.run``/``Pipeline.run``/``Flow.open``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.errors: list[Exception] = []
        #: exceptions passed to ``fail`` (before flattening), so recording is idempotent
        self._failures: list[Exception] = []
        self.state = RunState.STARTING
        self._scope: trio.CancelScope | None = None
        self._cancel_requested = False
        self.draining = False
        self._linked: list[trio.CancelScope] = []
        self._finished = trio.Event()
        #: failures recorded by stages with ``on_error=Collect()``
        self.collected: list[DeadLetterEntry] = []
        self.edges: list[Edge] = [
            Edge(e.name, e.capacity, e.producers, e.overflow) for e in plan.edges
        ]
        self.segments: list[Segment] = []
        self.routers: list[Router] = []
        self._output: Edge | None = None
        for seg_plan in plan.segments:
            out_edges = [self.edges[i] for i in seg_plan.output.edges]
            out: Output | None = None
            if seg_plan.output.junction is not None:
                out = _make_router(seg_plan.output.junction, out_edges, seg_plan.output.ports)
                self.routers.append(out)
            elif out_edges:
                (out,) = out_edges
            if seg_plan.output.to_caller:
                self._output = out_edges[-1]
            if seg_plan.pass_head:
                head: Head = PassHead(None, seg_plan.label)
                op_nodes = seg_plan.nodes
            elif isinstance(seg_plan.nodes[0].spec, ZipSpec):
                head = ZipHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, JoinSpec):
                head = JoinHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, OrderedMergeSpec):
                head = OrderedMergeHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, MergeSpec):
                head = PassHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            else:
                head = _make_head(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            ops = [_make_op(n) for n in op_nodes]
            for guard in [head.guard, *(op.guard for op in ops)]:
                if guard is not None:
                    guard.report = self.collected
            inputs = [self.edges[i] for i in seg_plan.inputs]
            self.segments.append(Segment(self, seg_plan, head, ops, inputs, out, plan.chunk_size))

    @property
    def output(self) -> Edge | None:
        """The edge read by the caller (``Flow.open``), if any."""
        return self._output

    def also_cancel(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` as well when the run fails (used by ``Flow.open``)."""
        self._linked.append(scope)

    def fail(self, exc: Exception) -> None:
        """Record a failure and cancel the whole run (fail-fast).

        A group raised by user code (say, from a nursery inside a source) is flattened into
        its leaves, each keeping the group's notes, so a run raises one level only.
        Idempotent: a segment records its error before closing its edges, then ``guarded``
        sees the same exception again."""
        if any(e is exc for e in self._failures):
            return
        self._failures.append(exc)
        if isinstance(exc, ExceptionGroup):
            notes = getattr(exc, "__notes__", [])
            for leaf in _leaves(exc):
                for note in notes:
                    leaf.add_note(note)
                self.errors.append(leaf)
        else:
            self.errors.append(exc)
        if self._scope is not None:
            self._scope.cancel()
        for scope in self._linked:
            scope.cancel()

    def cancel(self) -> None:
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def drain(self) -> None:
        """Stop every source; what they handed over flows on to the sinks."""
        self.draining = True
        for seg in self.segments:
            if not seg.inputs:
                seg.request_drain()

    async def guarded(
        self, fn: Callable[..., Awaitable[None]], *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a task of this run: user errors are recorded and cancel the run."""
        status = task_status if isinstance(task_status, _Status) else _Status(task_status)
        try:
            await fn(*args, task_status=status)
        except Exception as exc:
            self.fail(exc)
        finally:
            status.started()

    async def run_tasks(self, on_ready: Callable[[], None]) -> None:
        """Run every segment in one nursery; call ``on_ready`` when all are ready (not if
        the run failed while starting). Does not raise recorded errors: ``raise_errors``
        does, after the nursery is gone."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._cancel_requested:
                    nursery.cancel_scope.cancel()
                for seg in reversed(self.segments):
                    await nursery.start(self.guarded, seg.run)
                if not self.errors:
                    self.state = RunState.RUNNING
                    on_ready()
        except BaseException as exc:  # cancelled from outside (or interrupted)
            self.state = RunState.FAILED if self.errors else RunState.CANCELLED
            cancelled = _sole_cancelled(exc)
            if cancelled is not None:
                # trio wraps the tasks' Cancelled in (nested) nursery groups; an outside
                # cancellation is documented to propagate as one plain trio.Cancelled
                raise cancelled from None
            raise
        else:
            if self.errors:
                self.state = RunState.FAILED
            elif self._cancel_requested:
                self.state = RunState.CANCELLED
            else:
                self.state = RunState.COMPLETED
        finally:
            # segments never started (the run failed or was cancelled while starting)
            # still close what their heads own
            for seg in self.segments:
                if not seg.head_ran:
                    seg.head_ran = True
                    await seg.head.release()
            self._finished.set()

    def raise_errors(self, extra: Exception | None = None) -> None:
        """Raise the recorded errors as one ExceptionGroup level (nothing if none)."""
        if self.errors:
            errors = [*self.errors, extra] if extra is not None else list(self.errors)
            errors += [e.exception for e in self.collected if isinstance(e.exception, Exception)]
            raise ExceptionGroup(f"trioflow run failed with {len(errors)} error(s)", errors)
        if self.collected:
            leaves = [e.exception for e in self.collected if isinstance(e.exception, Exception)]
            if extra is not None:
                leaves.append(extra)
            raise ExceptionGroup(
                f"trioflow run completed; {len(self.collected)} item(s) failed (on_error=Collect())",
                leaves,
            )

    def result(self) -> Any:
        """The result of the last segment's sink (linear flows have one sink)."""
        return self.segments[-1].sink_result()

    def results(self) -> dict[str, Any]:
        """Every sink's result, by sink name (graphs may have several sinks)."""
        out: dict[str, Any] = {}
        for seg in self.segments:
            nodes = seg.plan.nodes
            if nodes and isinstance(nodes[-1].spec, Sink):
                out[nodes[-1].name] = seg.sink_result()
        return out

    async def wait_finished(self) -> RunState:
        await self._finished.wait()
        return self.state

    def statistics(self) -> RunStatistics:
        stages: list[StageStatistics] = []
        for seg in self.segments:
            h = seg.head
            if h.node is not None:
                stages.append(StageStatistics(
                    name=h.name, operator=h.node.operator, lifecycle=h.node.lifecycle,
                    segment=seg.plan.index, items_in=h.n_in, items_out=h.n_out, errors=h.errors,
                    in_flight=h.in_flight, workers=h.workers, waiting=h.waiting,
                    restarts=h.restarts, **_guard_stats(h.guard),
                ))
            op_nodes = seg.plan.nodes if seg.plan.pass_head else seg.plan.nodes[1:]
            for node, op in zip(op_nodes, seg.ops, strict=True):
                stages.append(StageStatistics(
                    name=op.name, operator=node.operator, lifecycle=node.lifecycle,
                    segment=seg.plan.index, items_in=op.n_in, items_out=op.n_out,
                    errors=op.errors, in_flight=0, workers=1, waiting=0,
                    **_guard_stats(op.guard),
                ))
            if isinstance(seg.out, Router):
                r = seg.out
                stages.append(StageStatistics(
                    name=r.node.name, operator=r.node.operator, lifecycle=r.node.lifecycle,
                    segment=seg.plan.index, items_in=r.n_in, items_out=r.n_out, errors=r.errors,
                    in_flight=0, workers=1, waiting=0,
                ))
        edges = tuple(
            EdgeStatistics(name=e.name, capacity=e.capacity, depth=e.items, peak=e.peak,
                           total=e.total, overflow=e.overflow, dropped=e.dropped,
                           discarded=e.discarded)
            for e in self.edges
        )
        return RunStatistics(state=self.state, stages=tuple(stages), edges=edges)


@final
class RunHandle(Generic[R]):
    """A live run, as returned by ``await nursery.start(flow.run)``.

    ``statistics()`` reads a snapshot, ``cancel()`` aborts the run (``run`` then returns
    quietly), ``await wait()`` waits for the end and returns the final state, and
    ``result()`` gives the sink's result of a completed run.
    """

    __slots__ = ("_result", "_runner")

    def __init__(self, runner: Runner, result: Callable[[], R] | None = None) -> None:
        self._runner = runner
        self._result = result

    def statistics(self) -> RunStatistics:
        """A frozen snapshot of every stage's counters and every edge's depth."""
        return self._runner.statistics()

    def cancel(self) -> None:
        """Abort the run now: every task is cancelled; ``run`` returns without raising."""
        self._runner.cancel()

    def failures(self) -> list[DeadLetterEntry]:
        """The failures recorded so far by stages with ``on_error=Collect()``."""
        return list(self._runner.collected)

    async def drain(self, timeout: float = math.inf) -> RunState:  # noqa: ASYNC109 - the abort point, not a deadline for the caller
        """Stop the sources, let every item they handed over finish through to the sinks,
        and wait for the run to end; if that takes more than ``timeout`` seconds, abort
        (``cancel``). Returns the final state: ``COMPLETED`` after a full drain (the run
        then completes normally and ``run`` returns the sinks' results), ``CANCELLED`` if
        the timeout aborted it. Cancelling the caller does not affect the run."""
        self._runner.drain()
        with trio.move_on_after(timeout):
            return await self._runner.wait_finished()
        self._runner.cancel()
        return await self._runner.wait_finished()

    @property
    def state(self) -> RunState:
        return self._runner.state

    async def wait(self) -> RunState:
        """Wait until the run has ended (completed, failed or cancelled) and return how.
        Cancelling the waiter does not affect the run."""
        return await self._runner.wait_finished()

    def result(self) -> R:
        """The sink's result of a completed run; ``RuntimeError`` if it did not complete."""
        if self._runner.state is not RunState.COMPLETED:
            raise RuntimeError(f"the run has no result: it is {self._runner.state.value}")
        if self._result is not None:
            return self._result()
        return self._runner.result()  # type: ignore[no-any-return]


async def run_to_completion(plan: Plan, task_status: trio.TaskStatus[Any]) -> Any:
    runner = Runner(plan)
    handle: RunHandle[Any] = RunHandle(runner)

    await runner.run_tasks(lambda: task_status.started(handle))
    runner.raise_errors()
    return runner.result()


class ItemStream(Generic[T]):
    """The output of ``Flow.open()``: ``async for item in stream`` or ``await stream.receive()``.

    Items arrive in chunks; iterating a chunk that is already here does not yield to the
    scheduler, so a loop body that never awaits runs at most one chunk between checkpoints.
    """

    def __init__(self, edge: Edge, chunk_size: int) -> None:
        self._edge = edge
        self._chunk_size = chunk_size
        self._buf: deque[T] = deque()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> T:
        """The next item; ``trio.EndOfChannel`` when the flow completed."""
        if not self._buf:
            chunk = await self._edge.receive(self._chunk_size)
            if chunk is None:
                raise trio.EndOfChannel
            self._buf.extend(chunk)
        return self._buf.popleft()
