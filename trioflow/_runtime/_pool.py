"""The worker pool head: ``map(concurrency=N)``, ``persistent`` and ``on_demand``.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from itertools import repeat
from typing import Any

import trio

from .._callables import CallKind
from .._errors import RunAborted, annotate
from .._ops import outputs_of
from .._plan import PlanNode
from .._policies import Restart, Supervisor
from .._stage import (
    Adaptive,
    FilterStage,
    FlatMapStage,
    FnSink,
    MapStage,
    OnDemandStage,
    PersistentStage,
    PooledFnStage,
    TapStage,
)
from ._reorder import Reorder
from ._segment import _SKIPPED, CLEANUP_TIMEOUT, Head, Segment, _policy_call, _Status, streams_outputs

#: a fixed pool of at least this many workers de-synchronises calls that end together
PACE_MIN_WORKERS = 8
#: ... and spreads such a bunch at most once every this many call lengths
PACE_EVERY = 10
#: ... once the bunch has reached this fraction (1/PACE_BUNCH) of the workers
PACE_BUNCH = 2


class PoolHead(Head):
    """Concurrent calls: ``map(concurrency=N)``, ``persistent`` and ``on_demand``.

    The segment's task feeds items to the workers (or spawns a task per item for
    on-demand). At most ``limit`` items are between admission and hand-off:
    in ordered mode ``limit`` is the reorder window (in-flight calls are limited to N
    separately, finished results wait in the reorder buffer for their turn); unordered,
    ``limit`` is 2·N so a worker finds its next item ready. A worker leaves its result
    (``Reorder.place``) and takes the next item at once; the hand-on task
    (``_hand_on_task``) hands on what was left, once per scheduler pass rather than once
    per worker (keyed pools, streamed generators and on-demand tasks hand on themselves).
    The feeder holds a received chunk until all of it is admitted (``_admit_runs``).
    Admission and order follow ``Reorder`` (``_reorder.py``), as on a worker backend.

    Keyed (``map(key=...)``): an item waits in its key's queue while ``per_key`` items of
    that key are running, so items of one key start in input order; results of one key
    are handed on in input order (globally in input order when ``ordered``).

    Adaptive (``Adaptive(min, max, idle)``): the pool starts with ``min`` workers; the
    feeder adds one when it queues an item and no worker is idle (up to ``max``); a worker
    idle for ``idle`` seconds exits while more than ``min`` remain.

    ``filter``/``tap``/``flat_map``/``sink`` with ``concurrency=N`` use the same pool; a
    ``post`` step turns the call's result into what is deposited (the item if kept, else
    ``_SKIPPED``, which keeps its place in the order; for ``flat_map`` a list of outputs,
    ``many``). An async generator of ``flat_map`` (without error policies) is streamed
    (``_stream``): its outputs are handed on as they come once its item's turn has come;
    before that the worker holds at most ``inner_limit`` of them and does not advance the
    generator (ordered); unordered, every output is handed on at once.
    """

    def __init__(self, node: PlanNode, spec: Any) -> None:
        super().__init__(node)
        self.spec = spec
        self.resource: Callable[[], Any] | None = None
        self.factory: Callable[[], Any] | None = None
        self.key_fn: Callable[[Any], Any] | None = None
        self.per_key = 1
        #: what a call's result becomes (``None``: the result itself, as for ``map``)
        self.post: Callable[[Any, Any], Any] | None = None
        #: the deposited results are lists of outputs (``flat_map``)
        self.many = False
        #: an async generator streamed by ``_stream`` (``flat_map`` without error policies)
        self.streaming = False
        self.inner_limit = 0
        self.fn: Callable[..., Any]
        size: int | Adaptive
        if isinstance(spec, PooledFnStage | FnSink):
            size = spec.concurrency
            self.fn = spec.fn
            self.post = _post_for(spec)
            self.many = isinstance(spec, FlatMapStage)
        elif isinstance(spec, MapStage):
            size = spec.concurrency
            self.fn = spec.fn
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
        if streams_outputs(spec, self.guard):
            self.streaming = True
            self.inner_limit = spec.inner_limit
        self._instance_call = _policy_call(spec, _call_any, self.guard)
        if isinstance(size, Adaptive):
            self.min_workers, self.max_workers, self.idle = size.min, size.max, size.idle
            self.adaptive = True
        else:
            self.min_workers = self.max_workers = size
            self.idle = math.inf
            self.adaptive = False
        self.workers = 0 if self.factory is None else self.max_workers
        self.ordered: bool = getattr(spec, "ordered", False)  # a sink has no order to keep
        n = self.max_workers
        self.limit = (getattr(spec, "window", None) or 2 * n) if self.ordered else 2 * n
        # the feeder, once blocked on the limit, is woken only when it can admit a run of
        # items (half the queue's headroom), not once per finished item: one scheduler
        # pass per run instead of per item, while workers still find items queued
        self._wake_below = self.limit - max(1, (self.limit - n) // 2)
        self._ready = 0
        #: the chunk the feeder holds while its items are admitted (see `_admit_runs`)
        self._held: list[Any] | None = None
        self._held_at = 0
        self._all_ready = trio.Event()
        # de-synchronising (see `_desync`): a fixed pool of at least PACE_MIN_WORKERS
        self._pace = self.factory is None and not self.adaptive and n >= PACE_MIN_WORKERS
        self._mean_call = 0.0  # moving average of a call's duration
        self._last_done = -math.inf  # when the last call ended
        self._bunch = 0  # how many calls ended, one right after the other, before this one
        self._paced_until = -math.inf  # no new spreading before this time (see `_desync`)
        self._bunch_at = int(n / PACE_BUNCH)  # the bunch's member from which it is spread
        self._half_gap = 0.5 / n  # a call ending within mean * this of the last is in its bunch
        self._queue: deque[tuple[int, Any, Any]] = deque()
        # a fixed or adaptive pool without keys or streaming hands results on from one task
        self._handoff = self.factory is None and self.key_fn is None and not self.streaming
        #: the run a worker took for the hand-on task (see `_hand_on_task`)
        self._hand_on_run: tuple[list[Any], int] | None = None
        self._hand_on_lot = trio.lowlevel.ParkingLot()
        self._workers_done = False
        self._work = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._closed = False
        self._running = 0
        self._idle_workers = 0
        # admission, and the order in which results are handed on (per key too)
        self._order = Reorder(self, self._wake_feeder, window=self.limit,
                              ordered=self.ordered, many=self.many)
        self._seg: Segment | None = None
        self._nursery: trio.Nursery | None = None
        # keyed state: per key, items running or queued to run; items waiting their turn
        self._key_busy: dict[Any, int] = {}
        self._key_wait: dict[Any, deque[tuple[int, Any, Any]]] = {}

    async def run(self, seg: Segment, status: _Status) -> None:
        self._seg = seg
        self._order.start(seg.emit)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.factory is None:
                # start all workers at once and wait once (not one nursery.start each)
                for _ in range(self.min_workers):
                    self._spawn_worker()
                if self.resource is not None:
                    await self._all_ready.wait()  # every worker entered its resource
            if self._handoff:
                nursery.start_soon(seg.runner.guarded, self._hand_on_task)
            status.started()
            await self._feed(seg, nursery)
            self._closed = True
            self._idle_workers -= len(self._work.unpark_all())
            if self.workers == 0:
                self._all_workers_done()

    def _spawn_worker(self) -> None:
        assert self._nursery is not None and self._seg is not None
        self.workers += 1
        if self.resource is None:
            self._nursery.start_soon(self._plain_worker)
        else:
            self._nursery.start_soon(self._seg.runner.guarded, self._worker)

    async def _plain_worker(self) -> None:
        """A worker without a resource: ``_work_loop`` with the runner's guard written out
        (one coroutine fewer on the path of every call's wake-up)."""
        try:
            await self._work_loop(None, [None])
        except Exception as exc:
            assert self._seg is not None
            self._seg.runner.fail(exc)
        finally:
            self._worker_ended()

    async def _feed(self, seg: Segment, nursery: trio.Nursery) -> None:
        assert seg.inp is not None
        inp = seg.inp
        spawn = self.factory is not None
        limit = self.limit
        n = self.max_workers
        key_fn = self.key_fn
        take = seg.chunk_size
        order = self._order
        while True:
            if inp.demand:
                # fed by a balance: take only what the pool can start now, so the balance
                # sends the rest to a branch that can (items queued here would wait)
                while (take := self._startable()) <= 0:
                    await self._space.park()
            chunk = await inp.receive(take)
            if chunk is None:
                return
            self.n_in += len(chunk)
            if not spawn and key_fn is None:
                await self._admit_runs(chunk)
                continue
            for item in chunk:
                while order.pending >= limit or (spawn and self._running >= n):
                    await self._space.park()
                seq = order.admit()
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

    async def _admit_runs(self, chunk: list[Any]) -> None:
        """Queue ``chunk`` for the workers (a fixed or adaptive pool, no keys). The feeder
        holds the chunk until all of it is admitted: as many items as the window admits
        now, the rest by whoever releases room (``_wake_feeder``, synchronously, in the
        task handing results on), so that admitting costs no task switch of its own; the
        feeder wakes again only to receive the next chunk."""
        self._held = chunk
        self._held_at = 0
        self._admit_held()
        while self._held is not None:
            await self._space.park()

    def _admit_held(self) -> None:
        """Admit what the window allows of the held chunk, numbered together, with one
        wake-up for as many idle workers as there are new items (and, adaptive, new workers
        for the rest); wake the feeder once the whole chunk is admitted."""
        chunk = self._held
        assert chunk is not None
        order = self._order
        k = min(self.limit - order.pending, len(chunk) - self._held_at)
        if k <= 0:
            return
        i = self._held_at
        seq = order.admit_many(k)
        self._queue.extend(zip(range(seq, seq + k), chunk[i:i + k] if k < len(chunk) else chunk,
                               repeat(None)))
        self._held_at = i = i + k
        if i == len(chunk):
            self._held = None
            if self._space:
                self._space.unpark()
        woken = min(self._idle_workers, k)
        if woken:
            self._idle_workers -= len(self._work.unpark(count=woken))
        if self.adaptive:
            for _ in range(min(k - woken, self.max_workers - self.workers)):
                self._spawn_worker()

    def _startable(self) -> int:
        """How many more items the pool could start at once: free task slots (on-demand)
        or idle workers (plus the workers an adaptive pool may still add), within the
        admission window."""
        if self.factory is not None:
            free = self.max_workers - self._running
        else:
            free = self._idle_workers + (self.max_workers - self.workers if self.adaptive else 0)
        return min(free, self.limit - self._order.pending)

    def _admit_keyed(self, seq: int, item: Any, key_fn: Callable[[Any], Any]) -> None:
        try:
            k = key_fn(item)
            busy = self._key_busy.get(k, 0)
        except Exception as exc:  # an unhashable key is an error of the key function too
            self.failed(exc, item)
            raise
        if not self.ordered and self.per_key > 1:
            self._order.number_in_key(seq, k)
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

    def _wake_feeder(self) -> None:
        """Results left the window: admit from the held chunk now, or wake the feeder once
        it may admit a run of items."""
        if self._held is not None:
            self._admit_held()
        elif self._space and self._order.pending <= self._wake_below:
            self._space.unpark()

    async def _worker(self, task_status: _Status) -> None:
        try:
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
            self._worker_ended()

    def _worker_ended(self) -> None:
        self.workers -= 1
        if self._closed and self.workers == 0:
            self._all_workers_done()

    def _all_workers_done(self) -> None:
        self._workers_done = True
        self._hand_on_lot.unpark()

    async def _hand_on_task(self, task_status: _Status) -> None:
        """Hands on what the workers leave (``Reorder.place``), from one task: a worker
        whose result may be handed on takes the run out of the buffer (``Reorder.take``,
        so the buffer never holds more than ``window - 1`` results, as when a worker
        handed on itself), wakes this task and takes its next item at once; the results
        left meanwhile go on with the run, one ``emit`` for all of them instead of one per
        worker (ordered: per run of consecutive results). Ends when every worker has
        ended and nothing is left to hand on."""
        order = self._order
        while True:
            if self._hand_on_run is not None:
                run, self._hand_on_run = self._hand_on_run, None
                await order.hand_on(first=run)
            elif self._workers_done:
                return
            else:
                await self._hand_on_lot.park()

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
        post = self.post
        streaming = self.streaming
        with_resource = self.resource is not None
        keyed = self.key_fn is not None
        pace = self._pace
        order = self._order
        place = order.place
        # results are handed on by the pool's hand-on task (see `_hand_on_task`)
        handoff = self._handoff
        lot = self._hand_on_lot
        # the clock's own method: `trio.current_time()` goes through two more calls
        now = trio.lowlevel.current_clock().current_time
        started = 0.0
        while True:
            if not queue:
                if await self._idle():
                    return
                continue
            job = queue.popleft()
            seq, item, k = job
            current[0] = job
            self.in_flight += 1
            r: Any
            if pace:
                started = now()
            try:
                if streaming:
                    r = await self._stream(seq, item)
                else:
                    r = await (fn(res, item) if with_resource else fn(item))
                    if post is not None:
                        r = post(item, r)
            except Exception as exc:
                if not await self.recover(exc, item):
                    raise
                # its place in the order is handed on, empty (in a branch: a tombstone)
                r = self.tombstone(item) if self.envelope else _SKIPPED
            finally:
                self.in_flight -= 1
            current[0] = None
            if keyed:
                self._release_key(k)
                if not self.ordered and self.per_key > 1:
                    await self._order.deposit_in_key(seq, k, r)
                    continue
            if place(seq, r):  # nobody is handing on, and (ordered) its turn has come
                if handoff:
                    self._hand_on_run = order.take()  # out of the buffer now, on in a moment
                    lot.unpark()
                else:
                    await order.hand_on()  # this worker hands the run on
            if pace and (delay := self._desync(started, now())):
                await trio.sleep(delay)

    async def _idle(self) -> bool:
        """The queue is empty: wait for an item. True when the worker is to end (the input
        ended, or an adaptive pool's worker was idle for ``idle`` seconds)."""
        if self._closed:
            return True
        self._idle_workers += 1
        if self._space:
            self._space.unpark()  # a feeder on a balance's edge waits for a free worker
        woken = False
        try:
            if self.adaptive:  # an idle worker leaves after `idle` seconds
                with trio.move_on_after(self.idle) as cs:
                    await self._work.park()
                woken = not cs.cancelled_caught
            else:
                await self._work.park()
                woken = True
        finally:
            if not woken:
                self._idle_workers -= 1
        return not woken and not self._queue and self.workers > self.min_workers

    def _desync(self, started: float, now: float) -> float:
        """How long a worker whose call began at ``started`` and has just ended waits before
        taking its next item: zero unless calls are ending in a bunch while work is queued.

        Calls of equal length started together end together, and each worker then starts
        its next call at once, so the pool runs in waves (lock-step): every wave's wake-ups
        land in one scheduler pass, and the wave lasts as long as Trio takes to run them
        all one after the other, on top of the call itself (about 10% of the throughput at
        64 calls of 5 ms). When a call ends less than half of ``mean/N`` after the previous one
        (``mean/N`` is the spacing of N calls of length ``mean`` spread evenly) it belongs to
        the same bunch;
        the ``m``-th call of a bunch, from ``N/2`` on, while at least N items wait, waits
        ``m * mean / N`` before its next call: the starts of the bunch's later half are
        spread over the rest of one call's length. (Smaller bunches are what Trio's
        millisecond timers make of evenly phased calls anyway; spreading them only delays
        their calls: see docs/design.md, "Calls that end together are spread".) Calls of uneven
        length never bunch, so they never wait. The cost is about half a call's length of
        throughput per spread bunch; a bunch forms again only after a pause of the whole
        process (a busy machine), so a bunch is spread at most once every ``PACE_EVERY``
        call lengths, which bounds what spreading can cost where pauses are frequent.
        """
        mean = self._mean_call
        mean = self._mean_call = (now - started) if not mean else (
            mean + (now - started - mean) * 0.0625)
        if now - self._last_done < mean * self._half_gap:
            m = self._bunch = self._bunch + 1
        else:
            m = self._bunch = 0
        self._last_done = now
        if m < self._bunch_at:
            return 0.0
        n = self.max_workers
        spacing = mean / n
        if m == self._bunch_at:  # a bunch begins: spread it, unless one was spread a moment ago
            seg = self._seg
            backlog = len(self._queue) + (
                seg.inp.items if seg is not None and seg.inp is not None else 0)
            if backlog < n or now < self._paced_until:
                self._bunch = -n  # let this bunch pass unspread
                return 0.0
            self._paced_until = now + PACE_EVERY * mean
        return (m % n) * spacing

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
                r = self.tombstone(item) if self.envelope else _SKIPPED
        finally:
            self.in_flight -= 1
            self._running -= 1
            if self._space:
                self._space.unpark()
        await self._order.deposit(seq, r)

    async def _stream(self, seq: int, item: Any) -> list[Any]:
        """Run ``flat_map``'s async generator on ``item``, handing outputs on as they come
        when its turn has come (unordered: always); before its turn hold at most
        ``inner_limit`` outputs, without advancing the generator. Returns the outputs still
        held, which the order hands on in their turn."""
        seg = self._seg
        assert seg is not None
        held: list[Any] = []
        order = self._order
        async with aclosing(self.fn(item)) as agen:
            async for out in agen:
                held.append(out)
                if self.ordered and not order.my_turn(seq):
                    if len(held) < self.inner_limit:
                        continue
                    await order.wait_turn(seq)
                self.n_out += len(held)
                if not self.ordered:
                    await seg.emit(held)
                else:
                    order.emitting = True  # nothing else is handed on meanwhile
                    try:
                        await seg.emit(held)
                    finally:
                        order.emitting = False
                held = []
        return held


def _post_filter(item: Any, result: Any) -> Any:
    return item if result else _SKIPPED


def _post_tap(item: Any, result: Any) -> Any:
    return item


def _post_sink(item: Any, result: Any) -> Any:
    return _SKIPPED  # done, nothing to hand on


def _post_flat(item: Any, result: Any) -> Any:
    return outputs_of(result)


def _post_for(spec: PooledFnStage[Any, Any] | FnSink[Any]) -> Callable[[Any, Any], Any] | None:
    if isinstance(spec, FilterStage):
        return _post_filter
    if isinstance(spec, TapStage):
        return _post_tap
    if isinstance(spec, FnSink):
        return _post_sink
    if isinstance(spec, FlatMapStage) and spec.kind is CallKind.ASYNC:
        return _post_flat
    return None  # an async generator: its outputs are collected or streamed


async def _call_any(target: Any, item: Any) -> Any:
    result = target(item)
    if inspect.isawaitable(result):
        result = await result
    return result


