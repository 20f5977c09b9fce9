"""Operator functions: the public way to build sources, stages and sinks.

Each docstring says, one line each, when the operator emits, when it backpressures, when
it completes, what cancels it, and what it does on error. "Fused" means the stage runs
inside its upstream neighbour's task (no channel hop); see ``docs/design.md``.

Every operator that runs user code per item (map, filter, flat_map, tap, take_while,
scan, persistent, on_demand, sink, reduce) also takes the error policies, as data:
``on_error=Fail()`` (default: fail fast) / ``Skip()`` / ``DeadLetter(target)`` /
``Collect()``, ``retry=Retry(attempts, backoff=Backoff(...), on=...)`` and ``timeout=``
seconds per call (async functions, or any function on a worker backend). "On error" in
each docstring describes the default; with ``Skip``, ``DeadLetter`` or ``Collect`` a failed
item is dropped (counted, sent to the target, or recorded for the run's report) and the
stage goes on. A stage with a retry, a timeout or a channel dead-letter target is not
fused.

``map``, ``filter``, ``tap``, ``flat_map``, ``take_while``, ``scan``, ``sink`` and ``reduce``
also take ``backend=`` (``Threads``,
``Processes``, ``Dask``; ``Inline()`` is the default): a plain function then runs off the
Trio thread, a chunk of items per call, and the stage is never fused (``docs/backends.md``).
"""

from __future__ import annotations

import builtins
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeGuard, TypeVar, overload

import trio

from ._backends import Backend
from ._flow import Flow
from ._overflow import Overflow, Unbounded
from ._policies import FAIL, OnError, Restart, Retry
from ._stage import (
    Adaptive,
    AsyncIterableSource,
    BatchStage,
    ChannelSource,
    ContinuousStage,
    FilterStage,
    FlatMapStage,
    FnSink,
    IterableSource,
    ListSink,
    MapStage,
    OnDemandStage,
    PeriodicSource,
    PersistentStage,
    ReduceSink,
    ScanStage,
    Sink,
    SkipStage,
    Stage,
    TakeStage,
    TakeWhileStage,
    TapStage,
    TaskSource,
)

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")
Res = TypeVar("Res")

# ---------------------------------------------------------------------------------- sources


def from_iterable(iterable: Iterable[T], *, name: str | None = None) -> Flow[T]:
    """A flow over a synchronous iterable (list, range, generator ...).

    * emits: items in iteration order, taken in chunks of up to ``chunk_size``;
    * backpressure: it is not iterated further while the next edge is full;
    * completes: when the iterable is exhausted;
    * cancelled: by the run's cancellation or when downstream stops (``take``);
    * on error: an exception from iteration fails the run, noted with the source's name;
      an iterator (``iter(x) is x``: a generator) that an earlier run took, or a generator
      that has finished, fails the run with ``SourceConsumedError``.

    Iteration runs on the Trio thread: an iterator that blocks blocks the run.
    """
    return Flow(source=IterableSource(iterable=iterable, name=name))


def from_async_iterable(iterable: AsyncIterable[T], *, name: str | None = None) -> Flow[T]:
    """A flow over an async iterable (an async generator, a stream object ...).

    * emits: each item as soon as the iterator yields it;
    * backpressure: the iterator is not advanced while the next edge is full;
    * completes: at ``StopAsyncIteration``; the iterator's ``aclose`` (if any) is then
      awaited, shielded and bounded to 5 s, on every exit path;
    * cancelled: by the run's cancellation or when downstream stops;
    * on error: an exception from the iterator fails the run.
    """
    return Flow(source=AsyncIterableSource(iterable=iterable, name=name))


def from_channel(channel: trio.abc.ReceiveChannel[T], *, name: str | None = None) -> Flow[T]:
    """A flow over a Trio receive channel; the run takes ownership of the channel.

    * emits: what arrives, draining what is already waiting (up to a chunk) at once;
    * backpressure: the channel is not read while the next edge is full, so the
      channel's own buffer fills and its senders block;
    * completes: when every sender closed the channel (``EndOfChannel``);
    * cancelled: by the run; the channel is closed on every exit path, so senders get
      ``BrokenResourceError`` once the run has stopped listening;
    * on error: an exception from ``receive`` fails the run, noted with the source's name;
      a second run over the same channel fails with ``SourceConsumedError``.
    """
    return Flow(source=ChannelSource(channel=channel, name=name))


def periodic(interval: float, *, count: int | None = None, name: str | None = None) -> Flow[int]:
    """A flow of tick numbers 0, 1, 2 ... one every ``interval`` seconds (Trio's clock).

    * emits: tick ``k`` at ``start + k * interval`` (the first at once), without drift;
    * backpressure: a tick waits for room; if that wait spans a whole interval, timing
      restarts from now (missed ticks are skipped, never emitted in a burst);
    * completes: after ``count`` ticks, or never when ``count`` is None;
    * cancelled: by the run or when downstream stops (``take``);
    * on error: none of its own.
    """
    return Flow(source=PeriodicSource(interval=interval, count=count, name=name))


def source(
    fn: Callable[..., Awaitable[None]], *, name: str | None = None, restart: Restart | None = None
) -> Flow[Any]:
    """A continuous source from an async function ``fn(emit)`` that produces items.

    ``fn`` calls ``await emit(item)`` or ``await emit.many(items)``. If ``fn`` accepts a
    ``task_status`` keyword it is called with one and must call ``task_status.started()``
    once it is ready (a port bound, a file open): ``nursery.start(flow.run)`` waits for it.

    * emits: whatever ``fn`` emits, in the order it emits;
    * backpressure: ``emit`` waits while the next edge is full;
    * completes: when ``fn`` returns;
    * cancelled: by the run, or when downstream stops: ``emit`` then raises
      ``trio.Cancelled`` so ``fn`` unwinds as on any cancellation. A drain does not
      cancel ``fn``: it reads ``emit.draining`` (or waits for input under ``with
      emit.cancel_on_drain():``), stops taking input, emits what it holds and returns;
      only at the drain's deadline is it cancelled, and the run then ends ``CANCELLED``;
    * on error: an exception from ``fn`` fails the run; with ``restart=Restart(...)``
      ``fn`` is called again (with backoff, within the restart budget) and goes on
      emitting into the same pipeline.
    """
    return Flow(source=TaskSource(fn=fn, name=name, restart=restart))


# ----------------------------------------------------------------------------------- stages


@overload
def map(
    fn: Callable[[T], Awaitable[U]],
    *,
    concurrency: int | Adaptive | None = None,
    ordered: bool = True,
    window: int | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key: int = 1,
    backend: Backend | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Stage[T, U]: ...
@overload
def map(
    fn: Callable[[T], U],
    *,
    concurrency: int | Adaptive | None = None,
    ordered: bool = True,
    window: int | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key: int = 1,
    backend: Backend | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Stage[T, U]: ...
def map(
    fn: Callable[[T], Any],
    *,
    concurrency: int | Adaptive | None = None,
    ordered: bool = True,
    window: int | None = None,
    key: Callable[[T], Hashable] | None = None,
    per_key: int = 1,
    backend: Backend | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Stage[T, Any]:
    """Apply ``fn`` to every item; ``fn`` may be a plain or an async function.

    A plain function is fused (runs in the upstream task, per chunk). An async function
    runs in a task of its own; with ``concurrency=N`` in a pool of N worker tasks.

    * emits: ``fn(item)`` for each item; in input order unless ``ordered=False``, which
      emits each result as soon as it is ready;
    * backpressure: at most N calls run at once; items are admitted (queued for a worker)
      only while fewer than ``window`` items (default 2·N) are between the oldest not yet
      emitted and the newest admitted (unordered: fewer than 2·N admitted and not yet
      handed on), so finished results waiting for their turn never exceed ``window - 1``;
      results wait while the next edge is full;
    * completes: when the input completed and every call finished and was emitted;
    * cancelled: by the run, or when downstream stops; calls under way are cancelled;
    * on error: the exception fails the run (fail-fast), noted with stage and item.

    ``concurrency=Adaptive(min=, max=, idle=)`` sizes the pool by demand (see ``Adaptive``).
    ``key=`` makes the concurrency keyed (like Akka's ``mapAsyncPartitioned``): different
    keys run in parallel, while items with equal keys start one after another (at most
    ``per_key`` at once) and are handed on in their input order, also with
    ``ordered=False``; an item waiting for its key's turn counts against the window.

    ``backend=Threads(...)``, ``Processes(...)`` or ``Dask(...)`` runs a plain ``fn`` off the
    Trio thread, ``chunk`` items per backend call, with ``concurrency`` calls in flight
    (default: the backend's ``limit``); the stage is never fused. Backpressure: no more
    input is taken while ``concurrency`` calls run, or (ordered) while ``2 * concurrency``
    calls are not yet handed on. Error policies apply per item; ``retry`` calls the failed
    items again, and ``timeout`` is per item (each call then carries one item; a call over
    the limit is abandoned, killed or cancelled, and fails with ``trio.TooSlowError``).
    ``key``, ``window`` and ``Adaptive`` are not supported with a worker backend yet
    (refused at definition). Cancellation abandons thread calls (their results are
    discarded), kills process jobs and cancels Dask futures; see ``docs/backends.md``.
    """
    if concurrency is None:
        concurrency = backend.default_concurrency if isinstance(backend, Backend) else 1
    return MapStage(fn=fn, concurrency=concurrency, ordered=ordered, window=window, key=key,
                    per_key=per_key, backend=backend, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout)


@overload
def filter(
    fn: Callable[[T], TypeGuard[U]], *, name: str | None = None, buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, U]: ...
@overload
def filter(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]: ...
def filter(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, Any]:
    """Keep the items for which ``fn(item)`` is true (plain functions are fused). A
    ``TypeGuard`` predicate narrows the item type for the rest of the chain.

    * emits: each kept item, in order;
    * backpressure: no item is tested while the next edge is full;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FilterStage(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def flat_map(
    fn: Callable[[T], Iterable[U]] | Callable[[T], AsyncIterator[U]]
    | Callable[[T], Awaitable[Iterable[U]]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, U]:
    """Replace each item by the items of ``fn(item)``: a function returning an iterable,
    a generator function, an async function returning an iterable, or an async generator.

    * emits: the produced items in order, item by item for async generators;
    * backpressure: an async generator is not advanced while the next edge is full;
    * completes: when the input completes and the last iterable is exhausted;
    * cancelled: by the run or when downstream stops; an async generator is closed;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FlatMapStage(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def tap(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]:
    """Call ``fn(item)`` for its side effect and pass the item on unchanged.

    * emits: every item, in order, after ``fn`` returned for it;
    * backpressure: as ``map``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item.
    """
    return TapStage(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def take(count: int, *, name: str | None = None) -> Stage[T, T]:
    """Pass the first ``count`` items on, then stop (fused).

    * emits: the first ``count`` items;
    * backpressure: as its upstream;
    * completes: after the ``count``-th item (or when the input completes earlier); the
      stages before it are then stopped, so ``take`` ends an infinite source;
    * cancelled: by the run;
    * on error: none of its own.
    """
    return TakeStage(count=count, name=name)


def skip(count: int, *, name: str | None = None) -> Stage[T, T]:
    """Drop the first ``count`` items, pass the rest on (fused).

    * emits: every item after the first ``count``, in order;
    * backpressure: as its upstream;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: none of its own.
    """
    return SkipStage(count=count, name=name)


def take_while(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]:
    """Pass items on while ``fn(item)`` is true; stop at the first false one (dropped).

    * emits: the leading items for which ``fn`` is true;
    * backpressure: as ``filter``;
    * completes: at the first false item (upstream is then stopped) or when the input does;
    * cancelled: by the run;
    * on error: the exception fails the run, noted with stage and item.
    """
    return TakeWhileStage(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def scan(
    fn: Callable[[A, T], A] | Callable[[A, T], Awaitable[A]],
    initial: A,
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, A]:
    """Running accumulation: emits ``acc = fn(acc, item)`` after each item, starting from
    ``initial`` (which itself is not emitted), like ``itertools.accumulate(..., initial=)[1:]``.

    * emits: one accumulated value per item, in order;
    * backpressure: as ``map``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item.
    """
    return ScanStage(fn=fn, initial=initial, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def batch(
    size: int,
    *,
    timeout: float | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, list[T]]:
    """Group items into lists of up to ``size`` items.

    Rules: a batch is never empty; a batch is emitted as soon as it holds ``size`` items;
    with ``timeout``, a partial batch is emitted once its *first* item has waited
    ``timeout`` seconds (the timer starts at the first item of each batch, not at the last
    emission); when the input completes the partial batch is flushed; when the run fails
    or is cancelled, the partial batch is dropped (a failed run takes no completion action).

    * emits: full batches at once, partial ones on timeout or completion;
    * backpressure: batches wait for room on the next edge; meanwhile no input is taken;
    * completes: after flushing, when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: none of its own. Without ``timeout`` the stage is fused.
    """
    return BatchStage(size=size, timeout=timeout, name=name, buffer=buffer, overflow=overflow)


def persistent(
    fn: Callable[[Res, T], Awaitable[U]],
    *,
    resource: Callable[[], AbstractAsyncContextManager[Res]],
    workers: int | Adaptive = 1,
    ordered: bool = True,
    window: int | None = None,
    restart: Restart | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Stage[T, U]:
    """A pool of ``workers`` tasks, each owning a resource built once and reused.

    Each worker enters ``resource()`` (an async context manager: a DB connection, a
    client) when the run starts, then calls ``await fn(res, item)`` for every item it
    takes. The run reports ready only once every worker has its resource. Each resource is
    exited on every exit path (completion, error, cancellation), shielded from cancellation.

    * emits: ``fn(res, item)`` results, in input order unless ``ordered=False``;
    * backpressure: as ``map(concurrency=workers)``;
    * completes: when the input completed and every call was emitted; resources closed;
    * cancelled: by the run or when downstream stops;
    * on error: an error from ``fn`` or from building a resource fails the run; with
      ``restart=Restart(...)`` the worker closes its resource, waits, builds a new one and
      retries the failed item (within the restart budget; beyond it the run fails).
    """
    return PersistentStage(fn=fn, resource=resource, workers=workers, ordered=ordered, restart=restart,
                           window=window, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout)


def on_demand(
    factory: Callable[[], Callable[[T], U] | Callable[[T], Awaitable[U]]],
    *,
    limit: int = 1,
    ordered: bool = True,
    window: int | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Stage[T, U]:
    """A fresh task and a fresh stage instance per item, at most ``limit`` at once.

    For each item, ``instance = factory()``; if the instance is an async context manager
    it is entered (and exited after the item); then ``instance(item)`` (plain or async)
    gives the result. The instance is discarded after its item: nothing leaks from one
    item to the next.

    * emits: one result per item, in input order unless ``ordered=False``;
    * backpressure: no new task while ``limit`` are running (or the window is full);
    * completes: when the input completed and every task finished;
    * cancelled: by the run or when downstream stops; running tasks are cancelled;
    * on error: the exception fails the run, noted with stage and item.
    """
    return OnDemandStage(factory=factory, limit=limit, ordered=ordered, window=window,
                         name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout)


def continuous(
    fn: Callable[[AsyncIterator[T], Any], Awaitable[None]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, Any]:
    """A stage run as one long-lived task: ``await fn(items, emit)``.

    ``items`` is an async iterator over the input; ``await emit(x)`` hands ``x`` on.
    Use it for stateful operators that may also produce without input.

    * emits: whatever ``fn`` emits, when it emits it;
    * backpressure: ``emit`` waits while the next edge is full; input is taken only
      when ``fn`` asks for the next item;
    * completes: when ``fn`` returns;
    * cancelled: by the run, or when downstream stops (``emit`` raises ``trio.Cancelled``);
    * on error: the exception fails the run, noted with the stage's name.
    """
    return ContinuousStage(fn=fn, name=name, buffer=buffer, overflow=overflow)


# ------------------------------------------------------------------------------------ sinks


def sink(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Sink[T, None]:
    """End a flow by calling ``fn(item)`` for every item; the run returns ``None``.

    * emits: nothing (a sink); plain functions are fused into the upstream task;
    * backpressure: the next item is not taken until ``fn`` returned for this one;
    * completes: when the input completes;
    * cancelled: by the run;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FnSink(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def to_list(*, name: str | None = None) -> Sink[T, builtins.list[T]]:
    """End a flow by collecting every item; the run returns the list (in arrival order).

    * emits: nothing (a sink; fused);
    * backpressure: none of its own (the list grows with the input);
    * completes: when the input completes;
    * cancelled: by the run (``handle.cancel()`` leaves the items collected so far);
    * on error: none of its own.
    """
    return ListSink(name=name)


def reduce(
    fn: Callable[[A, T], A] | Callable[[A, T], Awaitable[A]],
    initial: A,
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Sink[T, A]:
    """End a flow by folding: ``acc = fn(acc, item)`` from ``initial``; returns ``acc``.

    * emits: nothing (a sink); plain functions are fused into the upstream task;
    * backpressure: the next item is not taken until ``fn`` returned for this one;
    * completes: when the input completes;
    * cancelled: by the run;
    * on error: the exception fails the run, noted with stage and item.
    """
    return ReduceSink(fn=fn, initial=initial, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)
