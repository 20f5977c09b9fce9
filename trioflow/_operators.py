"""Operator functions: the public way to build sources, stages and sinks.

Each docstring says, one line each, when the operator emits, when it backpressures, when
it completes, what cancels it, and what it does on error. "Fused" means the stage runs
inside its upstream neighbour's task (no channel hop); see ``docs/design.md``.

Every operator that runs user code per item (map, filter, flat_map, tap, take_while,
skip_while, distinct, distinct_until_changed, scan, persistent, on_demand, sink, reduce)
also takes the error policies, as data:
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
``skip_while``, ``distinct`` and ``distinct_until_changed`` keep state between items on the
Trio thread and refuse a worker backend at definition. ``map``, ``filter``, ``tap``,
``flat_map`` and ``sink`` take ``concurrency=N`` (async functions: one worker pool).
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

from ._acks import Ack
from ._backends import Backend
from ._errors import DefinitionTypeError
from ._flow import Flow
from ._overflow import Overflow, Unbounded
from ._policies import FAIL, OnError, Restart, Retry
from ._stage import (
    Adaptive,
    AsyncIterableSource,
    BatchStage,
    ChannelSource,
    ConcatSource,
    ContinuousStage,
    DistinctStage,
    DistinctUntilChangedStage,
    EnumerateStage,
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
    SkipWhileStage,
    Stage,
    StartWithStage,
    TakeLastStage,
    TakeStage,
    TakeWhileStage,
    TapStage,
    TaskSource,
    identity,
)

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")
K = TypeVar("K")
Res = TypeVar("Res")

@overload
def _concurrency(concurrency: int | None, backend: Backend | None) -> int: ...
@overload
def _concurrency(concurrency: Adaptive, backend: Backend | None) -> Adaptive: ...
@overload
def _concurrency(concurrency: int | Adaptive | None, backend: Backend | None) -> int | Adaptive: ...
def _concurrency(concurrency: int | Adaptive | None, backend: Backend | None) -> int | Adaptive:
    """``concurrency=None``: the backend's default number of calls in flight, else 1."""
    if concurrency is not None:
        return concurrency
    return backend.default_concurrency if isinstance(backend, Backend) else 1


# ---------------------------------------------------------------------------------- sources


def from_iterable(
    iterable: Iterable[T],
    *,
    name: str | None = None,
    on_ack: Callable[[list[Ack]], object] | None = None,
    total: int | None = None,
) -> Flow[T]:
    """A flow over a synchronous iterable (list, range, generator ...).

    ``total=n`` tells progress displays (``run(progress=True)``) how many items to expect
    when the iterable has no ``len()`` (a generator); a sized one needs none.

    ``on_ack=callback`` asks for acknowledgements: each item is its own token, and
    ``callback(acks)`` gets ``Ack(item, error)`` values once items are done (see
    ``docs/acknowledgements.md``).

    * emits: items in iteration order, taken in chunks of up to ``chunk_size``;
    * backpressure: it is not iterated further while the next edge is full;
    * completes: when the iterable is exhausted;
    * cancelled: by the run's cancellation or when downstream stops (``take``);
    * on error: an exception from iteration fails the run, noted with the source's name;
      an iterator (``iter(x) is x``: a generator) that an earlier run took, or a generator
      that has finished, fails the run with ``SourceConsumedError``.

    Iteration runs on the Trio thread: an iterator that blocks blocks the run.
    """
    return Flow(source=IterableSource(iterable=iterable, name=name, on_ack=on_ack, total=total))


def from_async_iterable(
    iterable: AsyncIterable[T], *, name: str | None = None, total: int | None = None
) -> Flow[T]:
    """A flow over an async iterable (an async generator, a stream object ...).

    ``total=n``: how many items to expect, for progress displays (``run(progress=True)``).

    * emits: each item as soon as the iterator yields it;
    * backpressure: the iterator is not advanced while the next edge is full;
    * completes: at ``StopAsyncIteration``; the iterator's ``aclose`` (if any) is then
      awaited, shielded and bounded to 5 s, on every exit path;
    * cancelled: by the run's cancellation or when downstream stops;
    * on error: an exception from the iterator fails the run.
    """
    return Flow(source=AsyncIterableSource(iterable=iterable, name=name, total=total))


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
    fn: Callable[..., Awaitable[None]],
    *,
    name: str | None = None,
    restart: Restart | None = None,
    on_ack: Callable[[list[Ack]], object] | None = None,
    total: int | None = None,
) -> Flow[Any]:
    """A continuous source from an async function ``fn(emit)`` that produces items.

    ``total=n``: how many items ``fn`` will emit, for progress displays
    (``run(progress=True)``).

    ``fn`` calls ``await emit(item)`` or ``await emit.many(items)``. If ``fn`` accepts a
    ``task_status`` keyword it is called with one and must call ``task_status.started()``
    once it is ready (a port bound, a file open): ``nursery.start(flow.run)`` waits for it.

    ``on_ack=callback`` asks for acknowledgements: ``await emit(item, ack=token)`` (or
    ``emit.many(items, acks=tokens)``) gives each item a token, and ``callback(acks)``
    (plain or async, called from a task of the run, in batches) gets ``Ack(token,
    error)`` once the item is done: handled by the sink or dropped by a filter (``error``
    None), or skipped or dead-lettered downstream (the error). Nothing that was not done
    is ever acknowledged, also when the run fails (``docs/acknowledgements.md``).

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
    return Flow(source=TaskSource(fn=fn, name=name, restart=restart, on_ack=on_ack, total=total))


def concat(*flows: Flow[T], name: str | None = None) -> Flow[T]:
    """A flow of the items of ``flows``, one flow after another: the second starts only
    once the first completed. It is a source: go on with ``|``
    (``concat(a, b) | map(f)``), and use it as a flow inside another ``concat``.

    Each flow runs as a nested run inside this source's task, its edges as large as this
    source's output edge; its stages do not appear in the outer run's ``statistics()``
    (the concat source counts the items it handed on). A flow can be any ``Flow``, with
    stages of its own (``concat(from_iterable(header), body | map(f))``).

    * emits: the items of the first flow in its order, then those of the second ...;
    * backpressure: the running flow is not read while the next edge is full, so its
      own edges fill and its source waits;
    * completes: when the last flow completed;
    * cancelled: by the run or when downstream stops: the flow under way is cancelled and
      later flows never start; a drain drains the flow under way and starts no later one;
    * on error: an error in a flow fails the run, noted with the stage inside that flow
      and with "in flow #i of 'concat'".
    """
    for index, flow in builtins.enumerate(flows):
        if not isinstance(flow, Flow):
            raise DefinitionTypeError(
                f"flows: argument #{index} of concat must be a Flow (a source with stages, no "
                f"sink), got {flow!r}"
            )
    return Flow(source=ConcatSource(flows=flows, name=name))


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
    return MapStage(fn=fn, concurrency=_concurrency(concurrency, backend), ordered=ordered,
                    window=window, key=key, per_key=per_key, backend=backend, name=name,
                    buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout)


@overload
def filter(
    fn: Callable[[T], TypeGuard[U]], *, concurrency: int | None = None, ordered: bool = True,
    name: str | None = None, buffer: int | Unbounded | None = None,
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
    concurrency: int | None = None,
    ordered: bool = True,
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
    concurrency: int | None = None,
    ordered: bool = True,
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

    ``concurrency=N`` tests up to N items at once with an async ``fn``, in the worker pool
    of ``map(concurrency=N)`` (same window and backpressure); a dropped item keeps its
    place, so ``ordered=True`` hands the kept ones on in input order. With ``backend=``,
    ``concurrency`` is the number of backend calls in flight (default: its ``limit``).

    * emits: each kept item, in input order (``ordered=False``: as soon as it is tested);
    * backpressure: no item is tested while the next edge is full; with ``concurrency``,
      as ``map(concurrency=N)``;
    * completes: when the input completes and every test finished;
    * cancelled: by the run or when downstream stops; tests under way are cancelled;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FilterStage(fn=fn, concurrency=_concurrency(concurrency, backend), ordered=ordered,
        name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def flat_map(
    fn: Callable[[T], Iterable[U]] | Callable[[T], AsyncIterator[U]]
    | Callable[[T], Awaitable[Iterable[U]]],
    *,
    concurrency: int | None = None,
    ordered: bool = True,
    inner_buffer: int | None = None,
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

    ``concurrency=N`` (an async function or async generator) runs up to N items at once in
    the worker pool of ``map(concurrency=N)``. Ordered (the default), the outputs of each
    item are handed on after all outputs of the items before it; an async generator whose
    item's turn has not come is advanced until it holds ``inner_buffer`` outputs (default
    64) and then waits, so at most about ``window * inner_buffer`` outputs are held (window:
    2·N items). Unordered, each output is handed on as soon as it is produced (outputs of
    different items interleave). Under an error policy (``on_error``, ``retry``,
    ``timeout``) a generator's (sync or async) outputs are collected whole before any is
    handed on, so a failed item is retried or skipped whole and never emitted in part: a
    retry calls ``fn(item)`` again and iterates it from the start, and what the failed
    attempt had yielded is discarded, never emitted twice.

    * emits: the produced items in order, item by item for async generators; with
      ``concurrency``, in input order of their items unless ``ordered=False``;
    * backpressure: an async generator is not advanced while the next edge is full (nor,
      ordered under ``concurrency``, while it holds ``inner_buffer`` outputs before its
      turn); items are admitted as in ``map(concurrency=N)``;
    * completes: when the input completes and the last iterable is exhausted;
    * cancelled: by the run or when downstream stops; an async generator is closed;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FlatMapStage(fn=fn, concurrency=_concurrency(concurrency, backend), ordered=ordered,
        inner_buffer=inner_buffer, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def tap(
    fn: Callable[[T], Any] | Callable[[T], Awaitable[Any]],
    *,
    concurrency: int | None = None,
    ordered: bool = True,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]:
    """Call ``fn(item)`` for its side effect and pass the item on unchanged.

    ``concurrency=N`` calls an async ``fn`` on up to N items at once (the pool of
    ``map(concurrency=N)``); ``ordered=False`` then hands each item on as soon as its call
    returned.

    * emits: every item, in order (unless ``ordered=False``), after ``fn`` returned for it;
    * backpressure: as ``map`` (with ``concurrency``, as ``map(concurrency=N)``);
    * completes: when the input completes and every call finished;
    * cancelled: by the run or when downstream stops; calls under way are cancelled;
    * on error: the exception fails the run, noted with stage and item.
    """
    return TapStage(fn=fn, concurrency=_concurrency(concurrency, backend), ordered=ordered,
        name=name, buffer=buffer, overflow=overflow,
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


def skip_while(
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
    """Drop items while ``fn(item)`` is true; from the first false one on, pass every item
    (``fn`` is not called again). A plain ``fn`` is fused; an async one runs in a task.

    ``backend=`` other than ``Inline()`` is refused: whether the prefix is over is state
    on the Trio thread.

    * emits: the first item for which ``fn`` is false and every item after it, in order;
    * backpressure: as ``filter``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item; with ``Skip`` or
      ``DeadLetter`` the failed item is dropped and the prefix goes on.
    """
    return SkipWhileStage(fn=fn, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def distinct(
    key: Callable[[T], Hashable] | Callable[[T], Awaitable[Hashable]] | None = None,
    *,
    max_keys: int | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]:
    """Pass each item whose ``key(item)`` (the item itself by default) was not seen before.

    Memory: the stage remembers every key it has seen, for the whole run, so it grows
    with the number of distinct keys. ``max_keys=n`` bounds it: only the ``n`` most
    recently seen keys are remembered (a key seen again counts as recent), and a key
    forgotten since passes again. Keys must be hashable (an unhashable key is an error of
    the item). A plain ``key`` is fused; an async one runs in a task; ``backend=`` other
    than ``Inline()`` is refused (the memory lives on the Trio thread).

    * emits: the first item of each key, in order;
    * backpressure: as ``filter``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item; with ``Skip`` or
      ``DeadLetter`` the failed item is dropped and its key is not remembered.
    """
    return DistinctStage(fn=identity if key is None else key, max_keys=max_keys, name=name,
        buffer=buffer, overflow=overflow, on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def distinct_until_changed(
    key: Callable[[T], Any] | Callable[[T], Awaitable[Any]] | None = None,
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, T]:
    """Drop each item whose ``key(item)`` (the item itself by default) equals (``==``) the
    key of the last item passed on: runs of equal keys become their first item. Memory:
    one key. A plain ``key`` is fused; an async one runs in a task; ``backend=`` other than
    ``Inline()`` is refused.

    * emits: the first item of each run of equal keys, in order;
    * backpressure: as ``filter``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item; with ``Skip`` or
      ``DeadLetter`` the failed item is dropped and the last key stays as it was.
    """
    return DistinctUntilChangedStage(fn=identity if key is None else key, name=name,
        buffer=buffer, overflow=overflow, on_error=on_error, retry=retry, timeout=timeout,
        backend=backend)


def take_last(count: int, *, name: str | None = None) -> Stage[T, T]:
    """Keep the last ``count`` items and pass them on when the input completes (fused).

    Memory: ``count`` items. A failed or cancelled run emits nothing (a failed run takes
    no completion action); a drained run completes, so it emits the last items drained.

    * emits: the last ``count`` items, in order, all at once at the end of the input;
    * backpressure: none of its own until the end (it takes every item), then as its
      downstream;
    * completes: when the input completes, after emitting;
    * cancelled: by the run or when downstream stops; it then emits nothing;
    * on error: none of its own.
    """
    return TakeLastStage(count=count, name=name)


def start_with(*items: T, name: str | None = None) -> Stage[T, T]:
    """Put ``items`` before the input's items (fused).

    Being fused, the items go out together with the first chunk of the input, or when
    the input completes empty; a source that is slow to produce delays them. For items
    that must go out at once, put a source first: ``concat(from_iterable(items), flow)``.

    * emits: ``items`` first, then every input item, in order;
    * backpressure: as its upstream;
    * completes: when the input completes (after emitting ``items`` if not done yet);
    * cancelled: by the run or when downstream stops; a run that fails or is cancelled
      before any input emits nothing;
    * on error: none of its own.
    """
    return StartWithStage(items=items, name=name)


def enumerate(start: int = 0, *, name: str | None = None) -> Stage[T, tuple[int, T]]:
    """Number the items: emit ``(i, item)`` with ``i`` counting from ``start`` (fused).

    * emits: one ``(i, item)`` pair per item, in order;
    * backpressure: as its upstream;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: none of its own.
    """
    return EnumerateStage(start=start, name=name)


@overload
def scan(
    fn: Callable[[A, T], A] | Callable[[A, T], Awaitable[A]],
    initial: A,
    *,
    key: None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, A]: ...
@overload
def scan(
    fn: Callable[[A, T], A] | Callable[[A, T], Awaitable[A]],
    initial: A,
    *,
    key: Callable[[T], K],
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, tuple[K, A]]: ...
def scan(
    fn: Callable[[A, T], A] | Callable[[A, T], Awaitable[A]],
    initial: A,
    *,
    key: Callable[[T], K] | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Stage[T, A] | Stage[T, tuple[K, A]]:
    """Running accumulation: emits ``acc = fn(acc, item)`` after each item, starting from
    ``initial`` (which itself is not emitted), like ``itertools.accumulate(..., initial=)[1:]``.

    Keyed (``key=k``, a plain function): one accumulator per key, each starting from
    ``initial``; an item updates only its key's accumulator, ``acc = fn(acc_of_key, item)``,
    and the stage emits ``(key, acc)``. Every key seen stays in memory until the run ends
    (the state grows with the number of distinct keys). ``initial`` is shared by all keys:
    use an immutable value, and have ``fn`` return a new accumulator rather than change the
    one it is given. Not available with a worker ``backend=``.

    * emits: one accumulated value (keyed: one ``(key, acc)``) per item, in order;
    * backpressure: as ``map``;
    * completes: when the input completes;
    * cancelled: by the run or when downstream stops;
    * on error: the exception fails the run, noted with stage and item; under
      ``on_error=Skip()``/``DeadLetter(...)`` the failed item (an error from ``fn`` or from
      ``key``, or an unhashable key) is dropped and the accumulators stay as they were.
    """
    stage: ScanStage[T, Any] = ScanStage(
        fn=fn, initial=initial, key=key, name=name, buffer=buffer, overflow=overflow,
        on_error=on_error, retry=retry, timeout=timeout, backend=backend)
    return stage


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
    concurrency: int | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    timeout: float | None = None,
    backend: Backend | None = None,
) -> Sink[T, None]:
    """End a flow by calling ``fn(item)`` for every item; the run returns ``None``.

    ``concurrency=N`` calls an async ``fn`` on up to N items at once, in the worker pool of
    ``map(concurrency=N)``, in no particular order of completion (calls start in input
    order).

    * emits: nothing (a sink); plain functions are fused into the upstream task;
    * backpressure: the next item is not taken until ``fn`` returned for this one (with
      ``concurrency``: while N calls run and N more items wait for a worker);
    * completes: when the input completes and every call finished;
    * cancelled: by the run; calls under way are cancelled;
    * on error: the exception fails the run, noted with stage and item.
    """
    return FnSink(fn=fn, concurrency=_concurrency(concurrency, backend),
        name=name, buffer=buffer, overflow=overflow,
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
