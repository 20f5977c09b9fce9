"""Operators over time: ``window`` and the rate controls ``throttle``, ``debounce``,
``sample`` and ``delay``. Specs are validated here, at definition; each runs as a head of
its own (``_runtime/_time.py``) that owns a timer on the Trio clock, so ``MockClock``
drives them in tests. The window state machines are in ``_windows`` (pure, no Trio).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, TypeVar

import attrs

from ._backends import Backend
from ._errors import DefinitionTypeError, DefinitionValueError
from ._overflow import Overflow, Unbounded
from ._policies import DeadLetter, Fail
from ._stage import Stage, check_int, check_optional_int, check_seconds
from ._windows import (
    CollectAll,
    EventTime,
    Fold,
    Late,
    ProcessingTime,
    Reduce,
    Session,
    Sliding,
    Tumbling,
    WindowResult,
)

T = TypeVar("T")


@attrs.frozen
class EmitLate:
    """``on_late=`` policy (the default): a too-late item is emitted downstream, in order,
    as a ``Late(item, timestamp, watermark)`` record beside the ``WindowResult`` records."""


#: The default ``on_late`` policy.
EMIT_LATE = EmitLate()

#: The default ``time`` of a window.
PROCESSING_TIME = ProcessingTime()

#: Default cap on the (key, window) states a ``window`` holds at once.
MAX_WINDOWS = 1_000_000


def _check_backend(operator: str, backend: object) -> None:
    if backend is None:
        return
    if not isinstance(backend, Backend):
        raise DefinitionTypeError(f"backend must be a Backend or None, got {backend!r}")
    if not backend.runs_inline:
        raise DefinitionValueError(
            f"{operator} keeps its state on the Trio thread and cannot run on {backend!r}: "
            "aggregate with a cheap fold (or CollectAll()) and put the heavy work in a "
            "map(..., backend=...) after the window"
        )


@attrs.frozen(kw_only=True)
class WindowStage(Stage[T, "WindowResult[Any, Any] | Late[T]"]):
    kind: Tumbling | Sliding | Session
    aggregate: Reduce | Fold | CollectAll
    key: Callable[[Any], Hashable] | None = None
    time: ProcessingTime | EventTime = PROCESSING_TIME
    on_late: EmitLate | DeadLetter | Fail = EMIT_LATE
    max_windows: int | None = MAX_WINDOWS

    operator: ClassVar[str] = "window"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.kind, Tumbling | Sliding | Session):
            raise DefinitionTypeError(
                f"kind must be Tumbling(...), Sliding(...) or Session(...), got {self.kind!r}")
        if not isinstance(self.aggregate, Reduce | Fold | CollectAll):
            raise DefinitionTypeError(
                f"aggregate must be Reduce(fn), Fold(initial, step) or CollectAll(), "
                f"got {self.aggregate!r}")
        if self.key is not None and not callable(self.key):
            raise DefinitionTypeError(f"key must be a function or None, got {self.key!r}")
        if not isinstance(self.time, ProcessingTime | EventTime):
            raise DefinitionTypeError(
                f"time must be ProcessingTime() or EventTime(...), got {self.time!r}")
        if not isinstance(self.on_late, EmitLate | DeadLetter | Fail):
            raise DefinitionTypeError(
                f"on_late must be EMIT_LATE, DeadLetter(target) or Fail(), got {self.on_late!r}")
        check_optional_int("max_windows", self.max_windows, minimum=1)


@attrs.frozen(kw_only=True)
class ThrottleStage(Stage[T, T]):
    rate: float
    per: float = 1.0
    burst: int = 1

    operator: ClassVar[str] = "throttle"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_seconds("rate", self.rate)
        check_seconds("per", self.per)
        check_int("burst", self.burst, minimum=1)


@attrs.frozen(kw_only=True)
class DebounceStage(Stage[T, T]):
    quiet: float

    operator: ClassVar[str] = "debounce"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_seconds("quiet", self.quiet)


@attrs.frozen(kw_only=True)
class SampleStage(Stage[T, T]):
    interval: float

    operator: ClassVar[str] = "sample"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_seconds("interval", self.interval)


@attrs.frozen(kw_only=True)
class DelayStage(Stage[T, T]):
    seconds: float
    max_pending: int = 10_000

    operator: ClassVar[str] = "delay"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_seconds("seconds", self.seconds)
        check_int("max_pending", self.max_pending, minimum=1)


# -- the operators ----------------------------------------------------------------------------


def window(
    kind: Tumbling | Sliding | Session,
    aggregate: Reduce | Fold | CollectAll,
    *,
    key: Callable[[T], Hashable] | None = None,
    time: ProcessingTime | EventTime = PROCESSING_TIME,
    on_late: EmitLate | DeadLetter | Fail = EMIT_LATE,
    max_windows: int | None = MAX_WINDOWS,
    backend: Backend | None = None,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, WindowResult[Any, Any] | Late[T]]:
    """Aggregate items over windows of time, per ``key`` (or all together when ``key`` is
    None): ``WindowResult(key, start, end, result, update)`` records.

    ``kind``: ``Tumbling(size)``, ``Sliding(size, step)`` or ``Session(gap)``.
    ``aggregate``: ``Reduce(fn)``, ``Fold(initial, step)`` or ``CollectAll()``.
    ``time``: ``ProcessingTime()`` (the Trio clock when an item is received) or
    ``EventTime(timestamp, max_delay=, idle=, lateness=)`` (see ``docs/time.md``).
    ``on_late``: what happens to an item that comes after its windows were closed for
    good: ``EMIT_LATE`` (emitted as ``Late(item, timestamp, watermark)``), ``DeadLetter(
    target)`` (a ``DeadLetterEntry`` with a ``LateItemError``) or ``Fail()`` (the run
    fails). Late items are counted (``late`` in ``statistics()``) whatever the policy.
    ``max_windows``: cap on the (key, window) states held at once (``open_windows`` in
    ``statistics()``); exceeding it fails the run with ``WindowLimitError``.

    * emits: a window's result when the watermark reaches its end (processing time: when
      the clock does); again, as an update, for each late item within ``lateness``; all
      windows still open when the input completes;
    * backpressure: results wait for room on the next edge; meanwhile no input is taken;
    * completes: after firing every open window, when the input completes;
    * cancelled: by the run or when downstream stops; a cancelled or failed run fires
      nothing;
    * on error: an exception from ``key``, the timestamp function or the aggregation
      fails the run, noted with the stage. ``backend=`` other than ``Inline()`` is refused
      at definition (the state lives on the Trio thread).
    """
    _check_backend("window", backend)
    return WindowStage(kind=kind, aggregate=aggregate, key=key, time=time, on_late=on_late,
                       max_windows=max_windows, name=name, buffer=buffer, overflow=overflow)


def throttle(
    rate: float,
    *,
    per: float = 1.0,
    burst: int = 1,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, T]:
    """Let at most ``rate`` items through per ``per`` seconds, with bursts of up to
    ``burst`` items: a token bucket holding ``burst`` tokens (full at the start), refilled
    at ``rate / per`` tokens a second; each item takes one. Items are never dropped.

    * emits: each item as soon as a token is free (the ``n``-th item after a full bucket
      empties at ``(n - burst) * per / rate`` seconds), in order;
    * backpressure: while it waits for a token it takes no input, so the edge before it
      fills and the producer blocks; it also waits for room on the next edge;
    * completes: when the input completes and what it holds has gone (it asks its input
      for only as many items as it has tokens for, so items wait in the edge before it;
      a chunk that the edge hands over whole is held here until its tokens come);
    * cancelled: by the run or when downstream stops;
    * on error: none of its own.
    """
    return ThrottleStage(rate=rate, per=per, burst=burst, name=name, buffer=buffer,
                         overflow=overflow)


def debounce(
    quiet: float,
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, T]:
    """Emit an item only once ``quiet`` seconds passed without a newer one: of a burst of
    items less than ``quiet`` apart, only the last goes on. The items it replaces are
    counted (``superseded`` in ``statistics()``).

    * emits: the latest item, ``quiet`` seconds after it arrived if nothing followed;
    * backpressure: waits for room on the next edge; meanwhile no input is taken;
    * completes: when the input completes, emitting the pending item at once;
    * cancelled: by the run or when downstream stops; a cancelled or failed run emits
      nothing more;
    * on error: none of its own.
    """
    return DebounceStage(quiet=quiet, name=name, buffer=buffer, overflow=overflow)


def sample(
    interval: float,
    *,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, T]:
    """Every ``interval`` seconds (ticks at ``start + k * interval``), emit the latest item
    received since the previous tick, if any. The items it replaces are counted
    (``superseded`` in ``statistics()``).

    * emits: at each tick, the newest item that arrived since the last tick (nothing when
      none did);
    * backpressure: waits for room on the next edge; meanwhile no input is taken (a tick
      missed while waiting is skipped, never emitted twice);
    * completes: when the input completes, emitting the pending latest item at once;
    * cancelled: by the run or when downstream stops; a cancelled or failed run emits
      nothing more;
    * on error: none of its own.
    """
    return SampleStage(interval=interval, name=name, buffer=buffer, overflow=overflow)


def delay(
    seconds: float,
    *,
    max_pending: int = 10_000,
    name: str | None = None,
    buffer: int | Unbounded | None = None,
    overflow: Overflow = Overflow.BLOCK,
) -> Stage[T, T]:
    """Emit each item ``seconds`` after it was received, in order.

    * emits: each item at its arrival time plus ``seconds`` (later if the next edge is full);
    * backpressure: once it holds ``max_pending`` items it takes no input until the oldest
      are due and handed on (a chunk that the edge hands over whole can take it past the
      cap by the rest of that chunk); it also waits for room on the next edge;
    * completes: when the input completes and the items it holds have come due and gone;
    * cancelled: by the run or when downstream stops; held items are dropped with the run;
    * on error: none of its own.
    """
    return DelayStage(seconds=seconds, max_pending=max_pending, name=name, buffer=buffer,
                      overflow=overflow)
