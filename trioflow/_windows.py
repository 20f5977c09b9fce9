"""Windows over time: the pure state machines (no Trio) behind ``trioflow.window``.

Theory of operation.

* Time is a number. In event time it is what the user's timestamp function returns for an
  item; in processing time it is the Trio clock when the item was received. A window is
  the half-open interval ``[start, end)``; an item at ``t`` belongs to a window when
  ``start <= t < end``.
* The *watermark* says "no item older than this is expected any more". A window fires
  (emits its result) when the watermark reaches its end: ``watermark >= end``. In event
  time the watermark is the newest timestamp seen minus ``max_delay`` (recomputed after
  each chunk of input, never moving back); when the input has been quiet for ``idle``
  seconds it follows the clock instead (``Watermark``). In processing time it is the clock.
* With ``lateness`` L, a fired window keeps its state until ``watermark >= end + L``; an
  item that arrives for it meanwhile updates it, and the window fires again at once, as
  an update (``WindowResult.update``). Then its state is dropped.
* An item is *too late* when the earliest window it belongs to has been dropped
  (``earliest_end + L <= watermark``; for sessions ``t < watermark - L``). It then goes into
  no window at all (never into some of its windows and not others) and is handed back to
  the caller, which emits it as ``Late`` or dead-letters it: never silently dropped.
* End of stream fires every window that has not fired yet (``flush``). A cancelled or
  failed run never calls ``flush``: nothing fires.
* Memory: ``open`` counts the (key, window) states held; ``max_windows`` bounds it, and
  going past it raises ``WindowLimitError``.

The runtime (``_runtime/_time.py``) owns the clock and the timers and calls ``add``,
``advance`` and ``flush``; everything here is plain Python, tested directly and by
Hypothesis against a batch computation (``tests/test_windows.py``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterable
from itertools import repeat
from typing import Any, Generic, TypeVar

import attrs

from ._errors import DefinitionTypeError, DefinitionValueError, TrioflowError

K = TypeVar("K")
R = TypeVar("R")
T = TypeVar("T")


def _check_positive(argument: str, value: object, *, allow_zero: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionTypeError(f"{argument} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        what = "a finite number >= 0" if allow_zero else "a positive finite number"
        raise DefinitionValueError(f"{argument} must be {what}, got {value!r}")
    return value


def _check_offset(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionTypeError(f"offset must be a finite number, got {value!r}")
    return value


def _check_fn(argument: str, value: object) -> None:
    if not callable(value):
        raise DefinitionTypeError(f"{argument} must be callable, got {value!r}")


# -- window kinds ---------------------------------------------------------------------------


@attrs.frozen
class Tumbling:
    """Fixed windows of ``size`` that do not overlap: ``[offset + k*size, offset + (k+1)*size)``.
    Each item is in exactly one window."""

    size: float
    offset: float = 0

    def __attrs_post_init__(self) -> None:
        _check_positive("size", self.size)
        _check_offset(self.offset)


@attrs.frozen
class Sliding:
    """Windows of ``size`` starting every ``step`` (``step <= size``): an item is in each of
    the ``ceil(size / step)`` (or so) windows that cover it."""

    size: float
    step: float
    offset: float = 0

    def __attrs_post_init__(self) -> None:
        _check_positive("size", self.size)
        _check_positive("step", self.step)
        _check_offset(self.offset)
        if self.step > self.size:
            raise DefinitionValueError(
                f"step must be <= size ({self.size!r}), got {self.step!r}: items between "
                "windows would belong to none"
            )


@attrs.frozen
class Session:
    """Per key, a window that stays open while items keep coming less than ``gap`` apart:
    ``[first, last + gap)``. Two sessions that an item bridges merge into one."""

    gap: float

    def __attrs_post_init__(self) -> None:
        _check_positive("gap", self.gap)


WindowKind = Tumbling | Sliding | Session


# -- time domains ---------------------------------------------------------------------------


@attrs.frozen
class ProcessingTime:
    """Time is the Trio clock when an item is received (``MockClock`` drives it in tests).
    Nothing is ever late; a window fires when the clock reaches its end."""


@attrs.frozen
class EventTime:
    """Time is ``timestamp(item)``, a number (e.g. epoch seconds).

    * ``max_delay``: bounded out-of-orderness; the watermark is the newest timestamp seen
      minus ``max_delay``, so an item at most that much older than the newest is on time.
    * ``idle``: seconds of the Trio clock; when no item arrived for that long the watermark
      follows the clock from the newest timestamp (``newest + time since it arrived``), so
      the windows of a quiet input still fire. ``None``: windows fire only on input.
    * ``lateness``: allowed lateness; a fired window keeps its state until the watermark
      passes ``end + lateness`` and fires again, as an update, for each item that arrives
      for it meanwhile.
    """

    timestamp: Callable[[Any], float]
    max_delay: float = attrs.field(default=0, kw_only=True)
    idle: float | None = attrs.field(default=None, kw_only=True)
    lateness: float = attrs.field(default=0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_fn("timestamp", self.timestamp)
        _check_positive("max_delay", self.max_delay, allow_zero=True)
        if self.idle is not None:
            _check_positive("idle", self.idle)
        _check_positive("lateness", self.lateness, allow_zero=True)


TimeDomain = ProcessingTime | EventTime


# -- aggregations ---------------------------------------------------------------------------


@attrs.frozen
class Reduce:
    """The window's result is ``fn(fn(first, second), third) ...`` over its items."""

    fn: Callable[[Any, Any], Any]

    def __attrs_post_init__(self) -> None:
        _check_fn("fn", self.fn)


@attrs.frozen
class Fold:
    """The window's result is ``step(... step(step(initial, first), second) ...)``.
    ``initial`` is shared by every window: ``step`` must return a new accumulator rather
    than change ``initial`` in place (as with ``functools.reduce``)."""

    initial: Any
    step: Callable[[Any, Any], Any]

    def __attrs_post_init__(self) -> None:
        _check_fn("step", self.step)


@attrs.frozen
class CollectAll:
    """The window's result is the list of its items, in arrival order."""


Aggregation = Reduce | Fold | CollectAll


# -- records --------------------------------------------------------------------------------


@attrs.frozen
class WindowResult(Generic[K, R]):
    """What a window emits: its key (``None`` when unkeyed), ``[start, end)``, the result,
    and whether it is an update (a late item changed a window that had already fired)."""

    key: K
    start: float
    end: float
    result: R
    update: bool = False


@attrs.frozen
class Late(Generic[T]):
    """An item that arrived after its windows were closed for good (``on_late=EMIT``):
    the item, its timestamp, and the watermark it missed."""

    item: T
    timestamp: float
    watermark: float


#: What ``add`` returns: the windows that fired (late items within the lateness) and the
#: items that came too late.
Added = tuple[list[WindowResult[Any, Any]], list[Late[Any]]]


class LateItemError(TrioflowError):
    """The error a too-late item carries to a dead-letter target (``on_late=DeadLetter``)
    or that fails the run (``on_late=Fail()``)."""


class WindowLimitError(TrioflowError):
    """More (key, window) states were open at once than ``max_windows`` allows."""


# -- watermark ------------------------------------------------------------------------------


class Watermark:
    """Event-time watermark: ``newest - max_delay``; after ``idle`` seconds without input,
    ``newest + (now - last_arrival)``. Never moves back."""

    __slots__ = ("idle", "last_arrival", "max_delay", "newest", "value")

    def __init__(self, max_delay: float, idle: float | None) -> None:
        self.max_delay = max_delay
        self.idle = idle
        self.newest = -math.inf
        self.last_arrival = -math.inf
        self.value = -math.inf

    def observe(self, newest: float, now: float) -> float:
        """Input arrived at ``now`` whose newest timestamp is ``newest``: the watermark."""
        if newest > self.newest:
            self.newest = newest
        self.last_arrival = now
        wm = self.newest - self.max_delay
        if wm > self.value:
            self.value = wm
        return self.value

    def at(self, now: float) -> float:
        """The watermark at ``now`` with no new input."""
        idle = self.idle
        if idle is not None and self.newest > -math.inf and now - self.last_arrival >= idle:
            wm = self.newest + (now - self.last_arrival)
            if wm > self.value:
                self.value = wm
        return self.value

    def wake_for(self, end: float) -> float:
        """The clock time at which, with no new input, the watermark reaches ``end`` (it
        follows the clock once the input is idle); ``inf`` when it never does."""
        if self.idle is None or self.newest == -math.inf:
            return math.inf
        return max(self.last_arrival + self.idle, self.last_arrival + (end - self.newest))


# -- the state machines ---------------------------------------------------------------------

_NOTHING: Any = object()


def _steps(agg: Aggregation) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """``(first, step)``: the accumulator of a window's first item, and the next one."""
    if isinstance(agg, Reduce):
        return (lambda x: x), agg.fn
    if isinstance(agg, Fold):
        initial, fstep = agg.initial, agg.step
        return (lambda x: fstep(initial, x)), fstep

    def append(acc: list[Any], x: Any) -> list[Any]:
        acc.append(x)
        return acc

    return (lambda x: [x]), append


class Windows:
    """Base of the window state machines. ``add`` takes a chunk of items (and, in processing
    time, the one timestamp they all have) and returns ``(results, late)``; ``advance``
    moves the watermark and returns what fired; ``flush`` fires everything still open."""

    def __init__(
        self,
        *,
        key: Callable[[Any], Hashable] | None,
        timestamp: Callable[[Any], float] | None,
        aggregate: Aggregation,
        lateness: float = 0,
        max_windows: int | None = None,
    ) -> None:
        self.key = key
        self.timestamp = timestamp
        self.aggregate = aggregate
        self.lateness = lateness
        self.max_windows = max_windows
        self.watermark = -math.inf
        #: (key, window) states held now
        self.open = 0
        #: items handed back as too late
        self.late = 0
        #: the newest timestamp added (what an event-time watermark follows)
        self.newest = -math.inf

    def _grew(self) -> None:
        self.open += 1
        if self.max_windows is not None and self.open > self.max_windows:
            raise WindowLimitError(
                f"more than max_windows={self.max_windows} (key, window) states open at once: "
                "raise max_windows, lower max_delay/lateness, or use fewer keys"
            )

    def add(self, items: list[Any], ts: float | None = None) -> Added:
        raise NotImplementedError  # pragma: no cover

    def advance(self, watermark: float) -> list[WindowResult[Any, Any]]:
        raise NotImplementedError  # pragma: no cover

    def flush(self) -> list[WindowResult[Any, Any]]:
        """End of stream: fire every window that has not fired, and hold nothing more."""
        out = self.advance(math.inf)
        self._clear()
        self.open = 0
        return out

    def _clear(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def next_end(self) -> float | None:
        """The end of the earliest window that has not fired (its firing time)."""
        raise NotImplementedError  # pragma: no cover


class FixedWindows(Windows):
    """Tumbling and sliding windows, fixed by the timestamp alone. Window ``i`` is
    ``[offset + i*step, offset + i*step + size)`` (``step == size`` when tumbling); windows
    are indexed by ``i`` so that every item computes the same start exactly.

    State: ``wins[i][key] = accumulator``; ``pending`` is a heap of the windows that have
    not fired, ``retained`` the fired ones kept for lateness (in firing order), and
    ``fired[i]`` the keys a retained window has emitted."""

    def __init__(self, kind: Tumbling | Sliding, **kw: Any) -> None:
        super().__init__(**kw)
        self.size = kind.size
        self.step = kind.step if isinstance(kind, Sliding) else kind.size
        self.offset = kind.offset
        self.wins: dict[float, dict[Any, Any]] = {}
        self.pending: list[float] = []
        self.retained: list[float] = []  # a heap
        self.fired: dict[float, set[Any]] = {}

    def bounds(self, i: float) -> tuple[float, float]:
        start = self.offset + i * self.step
        return start, start + self.size

    def _open(self, i: float) -> dict[Any, Any]:
        d: dict[Any, Any] = {}
        self.wins[i] = d
        if self.bounds(i)[1] > self.watermark:
            heapq.heappush(self.pending, i)
        else:  # opened by a late item past its end: it fires as items come, kept for lateness
            heapq.heappush(self.retained, i)
            self.fired[i] = set()
        return d

    def add(self, items: list[Any], ts: float | None = None) -> Added:
        first, step = _steps(self.aggregate)
        stamps: Iterable[Any] = map(self.timestamp, items) if self.timestamp is not None else repeat(ts)
        keys = map(self.key, items) if self.key is not None else repeat(None)
        size, stride, offset = self.size, self.step, self.offset
        tumbling = stride == size
        wins = self.wins
        wm = self.watermark
        # window i ends at offset + i*stride + size: it is gone (dropped) when that is
        # <= watermark - lateness, and has passed its end (fired) when it is <= watermark
        gone = wm - self.lateness - offset - size
        past = wm - offset - size
        out: list[WindowResult[Any, Any]] = []
        late: list[Late[Any]] = []
        newest = self.newest
        for x, t, k in zip(items, stamps, keys, strict=False):  # (repeat is endless)
            if t > newest:
                newest = t
            last = (t - offset) // stride
            i = last if tumbling else (t - offset - size) // stride + 1  # the earliest
            if i * stride <= gone:
                late.append(Late(x, t, wm))
                continue
            while True:
                d = wins.get(i)
                if d is None:
                    d = self._open(i)
                acc = d.get(k, _NOTHING)
                if acc is _NOTHING:
                    self._grew()
                    d[k] = acc = first(x)
                else:
                    d[k] = acc = step(acc, x)
                if i * stride <= past:  # past its end: fires (again) now
                    out.append(self._refire(i, k, acc))
                if i >= last:
                    break
                i += 1
        self.newest = newest
        self.late += len(late)
        return out, late

    def _refire(self, i: float, k: Any, acc: Any) -> WindowResult[Any, Any]:
        """A late item changed window ``i`` (past its end, kept for lateness): it fires now,
        as an update when this key had fired before."""
        fired = self.fired[i]
        update = k in fired
        fired.add(k)
        start, end = self.bounds(i)
        return WindowResult(k, start, end, acc, update)

    def advance(self, watermark: float) -> list[WindowResult[Any, Any]]:
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list[WindowResult[Any, Any]] = []
        pending, wins = self.pending, self.wins
        lateness = self.lateness
        while pending and self.bounds(pending[0])[1] <= watermark:
            i = heapq.heappop(pending)
            d = wins[i]
            start, end = self.bounds(i)
            out.extend([WindowResult(k, start, end, acc) for k, acc in d.items()])
            if lateness:
                heapq.heappush(self.retained, i)
                self.fired[i] = set(d)
            else:
                del wins[i]
                self.open -= len(d)
        retained = self.retained
        while retained and self.bounds(retained[0])[1] + lateness <= watermark:
            i = heapq.heappop(retained)
            del self.fired[i]
            self.open -= len(wins.pop(i))
        return out

    def _clear(self) -> None:
        self.retained.clear()
        self.fired.clear()
        self.wins.clear()

    def next_end(self) -> float | None:
        return self.bounds(self.pending[0])[1] if self.pending else None


class _Session:
    __slots__ = ("end", "fired", "fired_end", "items", "start")

    def __init__(self, start: float, end: float, items: list[Any]) -> None:
        self.start = start
        self.end = end
        self.items = items
        #: it has emitted a result (a later firing is an update)
        self.fired = False
        #: the end it last fired with (a timer for that end is spent)
        self.fired_end = -math.inf


class SessionWindows(Windows):
    """Session windows per key. A session keeps its items until it fires (two sessions can
    merge, and a fold has no way to merge two accumulators): the aggregation runs when it
    fires. ``sessions[key]`` lists the key's open sessions; ``timers`` and ``purges`` are
    heaps of ``(due, n, key, session)``, entries made stale by a merge or an extension
    skipped when they come up."""

    def __init__(self, kind: Session, **kw: Any) -> None:
        super().__init__(**kw)
        self.gap = kind.gap
        self.sessions: dict[Any, list[_Session]] = {}
        self.timers: list[tuple[float, int, Any, _Session]] = []
        self.purges: list[tuple[float, int, Any, _Session]] = []
        self.n = 0

    def _fire(self, k: Any, s: _Session) -> WindowResult[Any, Any]:
        first, step = _steps(self.aggregate)
        items = s.items
        acc = first(items[0])
        for x in items[1:]:
            acc = step(acc, x)
        update = s.fired
        s.fired = True
        s.fired_end = s.end
        if self.lateness:
            self._push(self.purges, s.end + self.lateness, k, s)
        return WindowResult(k, s.start, s.end, acc, update)

    def _push(self, heap: list[tuple[float, int, Any, _Session]], due: float, k: Any,
              s: _Session) -> None:
        self.n += 1
        heapq.heappush(heap, (due, self.n, k, s))

    def add(self, items: list[Any], ts: float | None = None) -> Added:
        keyf, tsf, gap = self.key, self.timestamp, self.gap
        wm = self.watermark
        horizon = wm - self.lateness
        out: list[WindowResult[Any, Any]] = []
        late: list[Late[Any]] = []
        sessions = self.sessions
        for x in items:
            t = tsf(x) if tsf is not None else ts
            assert t is not None
            if t > self.newest:
                self.newest = t
            if t < horizon:  # it could only merge with sessions already dropped
                late.append(Late(x, t, wm))
                continue
            k = keyf(x) if keyf is not None else None
            lst = sessions.get(k)
            if lst is None:
                lst = sessions[k] = []
            hi = t + gap
            # the sessions [start, end) that this item's [t, t + gap) overlaps merge with it
            merged = [m for m in lst if m.start < hi and t < m.end]
            if merged:
                s = merged[0]
                old_end = s.end
                for m in merged[1:]:
                    s.items.extend(m.items)
                    s.start = min(s.start, m.start)
                    s.end = max(s.end, m.end)
                    s.fired = s.fired or m.fired
                    lst.remove(m)
                    self.open -= 1
                    m.items = []  # its timers go stale
                s.items.append(x)
                s.start = min(s.start, t)
                s.end = max(s.end, hi)
                changed = s.end != old_end or len(merged) > 1
            else:
                s = _Session(t, hi, [x])
                lst.append(s)
                self._grew()
                changed = True
            if s.end <= wm:  # past its end already (a late item): fires (again) now
                out.append(self._fire(k, s))
            elif changed:
                self._push(self.timers, s.end, k, s)
        self.late += len(late)
        return out, late

    def _drop(self, k: Any, s: _Session) -> None:
        lst = self.sessions[k]
        lst.remove(s)
        if not lst:
            del self.sessions[k]
        self.open -= 1
        s.items = []

    def advance(self, watermark: float) -> list[WindowResult[Any, Any]]:
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list[WindowResult[Any, Any]] = []
        timers = self.timers
        while timers and timers[0][0] <= watermark:
            end, _, k, s = heapq.heappop(timers)
            if not s.items or s.end != end or s.fired_end == end:
                continue  # merged away, extended, or fired already
            out.append(self._fire(k, s))
            if not self.lateness:
                self._drop(k, s)
        purges = self.purges
        while purges and purges[0][0] <= watermark:
            due, _, k, s = heapq.heappop(purges)
            if s.items and s.end + self.lateness == due:
                self._drop(k, s)
        return out

    def _clear(self) -> None:
        self.sessions.clear()
        self.timers.clear()
        self.purges.clear()

    def next_end(self) -> float | None:
        timers = self.timers
        while timers:
            end, _, _, s = timers[0]
            if s.items and s.end == end and s.fired_end != end:
                return end
            heapq.heappop(timers)
        return None


def make_windows(
    kind: WindowKind,
    *,
    key: Callable[[Any], Hashable] | None,
    timestamp: Callable[[Any], float] | None,
    aggregate: Aggregation,
    lateness: float = 0,
    max_windows: int | None = None,
) -> Windows:
    """The state machine for ``kind``."""
    kw: dict[str, Any] = dict(key=key, timestamp=timestamp, aggregate=aggregate,
                              lateness=lateness, max_windows=max_windows)
    if isinstance(kind, Session):
        return SessionWindows(kind, **kw)
    return FixedWindows(kind, **kw)
