"""The head of a stage whose calls run on a backend (``map(fn, backend=Threads(...))``).

Theory of operation.

* The segment's task feeds: it takes what is waiting on the input edge (up to one call's
  worth, never waiting to fill a chunk), cuts it into sub-chunks of the backend's
  ``chunk`` items, and starts one task per sub-chunk, each making one backend call.
* Backpressure: at most ``concurrency`` calls run at once, and at most ``window`` calls
  are admitted and not yet handed on (ordered: ``2 * concurrency``, so the next calls run
  while a finished chunk waits for an earlier one; unordered: ``concurrency``). While
  either bound is reached, the feeder takes no more input, so the input edge fills and
  the stages upstream wait.
* Order: ordered, results wait in a reorder buffer (by call number) and are handed on in
  input order; unordered, each call's results are handed on as soon as it finishes (in
  input order within the call). Admission and order are the pool's rule (``Reorder``,
  ``_reorder.py``), a call's results making one slot.
* Errors: a backend call returns one outcome per item; a failed item goes through
  ``Head.recover``, exactly like any other stage (Fail / Skip / DeadLetter / Collect). A
  failure of the call itself (``BackendError``: pickling, a dead worker) fails the run.
* Cancellation: the call tasks run in a nursery inside the segment's scope; cancelling
  the run cancels the calls, as the backend documents (threads are abandoned, process
  jobs are killed).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import outcome
import trio

from .._backends import Backend, BackendRunner
from .._ops import outputs_of
from .._plan import PlanNode
from .._stage import (
    FilterStage,
    FlatMapStage,
    FnSink,
    FnStage,
    ReduceSink,
    ScanStage,
    TakeWhileStage,
    TapStage,
)
from ._reorder import Reorder
from ._segment import _SKIPPED, Head, Segment, _Status


class BackendHead(Head):
    """``map``, ``filter``, ``tap`` or ``flat_map`` of a plain function on a worker backend
    (``Threads``, ``Processes``, ``Dask``): the same chunked calls; what a result becomes
    downstream depends on the operator (the value, the item if true, the item, the items)."""

    def __init__(self, node: PlanNode, spec: FnStage[Any, Any] | FnSink[Any] | ReduceSink[Any]) -> None:
        super().__init__(node)
        assert spec.backend is not None
        self.backend: Backend = spec.backend
        concurrency = getattr(spec, "concurrency", spec.backend.default_concurrency)
        assert isinstance(concurrency, int)
        # what one item's result becomes downstream (the call itself is the same for all)
        self.fn: Callable[[Any], Any] = spec.fn
        self.post: Callable[[Any, Any], list[Any]] = _post_map
        if isinstance(spec, FilterStage):
            self.post = _post_filter
        elif isinstance(spec, TapStage):
            self.post = _post_tap
        elif isinstance(spec, FlatMapStage):
            self.fn = Materialized(spec.fn)  # generators do not travel: lists do
            self.post = _post_flat
        elif isinstance(spec, FnSink):
            self.post = _post_sink
        elif isinstance(spec, TakeWhileStage):
            self.post = _post_take_while
        # scan and reduce fold a whole chunk in one call, in order: one call at a time
        self.fold: FoldChunk | None = None
        self.acc: Any = None
        self.is_reduce = isinstance(spec, ReduceSink)
        if isinstance(spec, ScanStage | ReduceSink):
            self.fold = FoldChunk(spec.fn)
            self.acc = spec.initial
            concurrency = 1
        self.retry = spec.retry
        self.timeout = spec.timeout
        self._rng = random.Random()
        # a timeout is per item: calls then carry one item each
        self.chunk = 1 if spec.timeout is not None else spec.backend.chunk
        self.concurrency = concurrency
        self.workers = concurrency
        self.ordered = getattr(spec, "ordered", True)
        self.window = 2 * self.concurrency if self.ordered else self.concurrency
        self._running = 0
        self._space = trio.lowlevel.ParkingLot()
        # admission, and the order in which the calls' results are handed on: a call's
        # results are one slot, counted item by item in ``waiting``
        self._order = Reorder(self, self._wake, window=self.window, ordered=self.ordered,
                              many=True, weigh=True, stop=_STOP)
        self._seg: Segment | None = None

    async def run(self, seg: Segment, status: _Status) -> None:
        self._seg = seg
        self._order.start(seg.emit)
        opened = False
        try:
            async with self.backend.open(self.name) as runner:
                opened = True
                async with trio.open_nursery() as nursery:
                    status.started()
                    await self._feed(seg, nursery, runner)
        except Exception as exc:
            if not opened:  # a missing extra, say: name the stage
                self.failed(exc, None, has_item=False)
            raise

    async def _feed(self, seg: Segment, nursery: trio.Nursery, runner: BackendRunner) -> None:
        assert seg.inp is not None
        inp = seg.inp
        size = self.chunk
        guarded = seg.runner.guarded
        order = self._order
        while True:
            chunk = await inp.receive(size)
            if chunk is None:
                return
            self.n_in += len(chunk)
            for start in range(0, len(chunk), size):
                part = chunk if len(chunk) <= size else chunk[start:start + size]
                while self._running >= self.concurrency or order.pending >= self.window:
                    await self._space.park()
                seq = order.admit()
                self._running += 1
                self.in_flight += len(part)
                nursery.start_soon(guarded, self._call, runner, seq, part)

    async def _one_call(self, runner: BackendRunner, items: list[Any]) -> list[Any]:
        if self.timeout is None:
            return await runner.call_chunk(self.fn, items)
        # with a timeout every call carries one item (see __init__), so the limit is per
        # item; the backend gives the call up as on any cancellation (threads abandon it,
        # processes kill the job, Dask cancels the future)
        with trio.move_on_after(self.timeout):
            return await runner.call_chunk(self.fn, items)
        return [outcome.Error(trio.TooSlowError()) for _ in items]

    async def _call_with_policies(self, runner: BackendRunner, items: list[Any]) -> list[Any]:
        """One call for the chunk, then, under ``retry``, new calls for the items whose
        errors the policy retries, after the backoff; each error left carries its
        attempt number (``trioflow_attempts``) for dead letters."""
        outs = await self._one_call(runner, items)
        retry = self.retry
        attempts = [1] * len(items)
        if retry is not None:
            attempt = 1
            while attempt < retry.attempts:
                redo = [i for i, o in enumerate(outs)
                        if isinstance(o, outcome.Error) and retry.retries(o.error)]
                if not redo:
                    break
                if self.guard is not None:
                    self.guard.retries += len(redo)
                await trio.sleep(retry.backoff.delay(attempt, self._rng))
                attempt += 1
                again = await self._one_call(runner, [items[i] for i in redo])
                for i, o in zip(redo, again, strict=True):
                    outs[i] = o
                    attempts[i] = attempt
        for o, n in zip(outs, attempts, strict=True):
            if isinstance(o, outcome.Error):
                with contextlib.suppress(AttributeError):
                    o.error.trioflow_attempts = n  # type: ignore[attr-defined]
        return outs

    def _wake(self) -> None:
        if (self._space and self._running < self.concurrency
                and self._order.pending < self.window):
            self._space.unpark()

    def result(self) -> Any:
        return self.acc if self.is_reduce else None

    async def _call_fold(self, runner: BackendRunner, seq: int, items: list[Any]) -> None:
        """scan/reduce: the chunk is folded in one call from the current accumulator; a
        failed item leaves the accumulator unchanged and goes through the error policy."""
        assert self.fold is not None
        try:
            (out,) = await runner.call_chunk(self.fold, [(self.acc, items)])
            steps = out.unwrap()
            results = await self._apply_fold(items, steps)
        except Exception as exc:
            self.failed(exc, None, has_item=False)  # (a no-op for an already noted error)
            raise
        finally:
            self._running -= 1
            self.in_flight -= len(items)
        self._wake()
        await self._deposit(seq, results)

    async def _apply_fold(self, items: list[Any], steps: list[tuple[str, Any]]) -> list[Any]:
        results: list[Any] = []
        for item, step in zip(items, steps, strict=True):
            if step[0] == "ok":
                self.acc = step[1]
                if not self.is_reduce:
                    results.append(step[1])
            elif not await self.recover(step[1], item):
                raise step[1]
        return results

    async def _call(
        self, runner: BackendRunner, seq: int, items: list[Any], task_status: _Status
    ) -> None:
        if self.fold is not None:
            await self._call_fold(runner, seq, items)
            return
        try:
            outs = await self._call_with_policies(runner, items)
        except Exception as exc:  # the call itself failed (BackendError): no item policy
            self.failed(exc, None, has_item=False)
            raise
        finally:
            self._running -= 1
            self.in_flight -= len(items)
        self._wake()
        results: list[Any] = []
        post = self.post
        for item, out in zip(items, outs, strict=True):
            if isinstance(out, outcome.Value):
                results.extend(post(item, out.value))
                continue
            assert isinstance(out, outcome.Error)
            err = out.error
            if not isinstance(err, Exception):  # pragma: no cover - only Exception is captured
                raise err
            if not await self.recover(err, item):
                raise err
            # its place in the order is handed on, empty (in a branch: a tombstone)
            results.append(self.tombstone(item) if self.envelope else _SKIPPED)
        await self._deposit(seq, results)

    async def _deposit(self, seq: int, results: list[Any]) -> None:
        if await self._order.deposit(seq, results):
            assert self._seg is not None
            await self._seg.stop_here(-1)  # take_while: the first false item ends the stage


def _post_map(item: Any, result: Any) -> list[Any]:
    return [result]


def _post_filter(item: Any, result: Any) -> list[Any]:
    return [item] if result else []


def _post_tap(item: Any, result: Any) -> list[Any]:
    return [item]


def _post_flat(item: Any, result: Any) -> list[Any]:
    return outputs_of(result)


def _post_sink(item: Any, result: Any) -> list[Any]:
    return []


class _Stop:
    __slots__ = ()


#: take_while's false item: everything after it is dropped and the stage stops
_STOP = _Stop()


def _post_take_while(item: Any, result: Any) -> list[Any]:
    return [item] if result else [_STOP]


class FoldChunk:
    """``fn`` folded over a chunk from an accumulator, in the worker: ``((acc, items))``
    gives one ``("ok", acc)`` or ``("error", exc)`` per item (a failed item leaves the
    accumulator unchanged). Picklable when ``fn`` is."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def __call__(self, job: tuple[Any, list[Any]]) -> list[tuple[str, Any]]:
        acc, items = job
        steps: list[tuple[str, Any]] = []
        for item in items:
            try:
                acc = self.fn(acc, item)
            except Exception as exc:
                steps.append(("error", exc))
            else:
                steps.append(("ok", acc))
        return steps

    def __reduce__(self) -> tuple[Any, ...]:
        return (FoldChunk, (self.fn,))


class Materialized:
    """``fn`` with its iterable result turned into a list in the worker (picklable when
    ``fn`` is): a generator cannot be sent back from a process or a cluster."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> list[Any]:
        return outputs_of(self.fn(item))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Materialized, (self.fn,))
