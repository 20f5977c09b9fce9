"""Heads of the operators over time (``window``, ``throttle``, ``debounce``, ``sample``,
``delay``): each reads its input edge in its own task and owns one timer, a deadline on the
Trio clock under which it waits for input (``trio.move_on_at``), as ``batch(timeout=)``
does. When the deadline passes first, the head acts on the time (a window fires, a
debounced item goes); when input comes first, it acts on the input. Completion takes the
usual path: the input ended cleanly, ``checkpoint_if_cancelled`` (a failed run is
cancelled, not completed), then whatever is held is emitted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
from trio.lowlevel import checkpoint_if_cancelled

from .._plan import PlanNode
from .._policies import DeadLetter, Guard
from .._time import DebounceStage, DelayStage, EmitLate, SampleStage, ThrottleStage, WindowStage
from .._windows import EventTime, Late, LateItemError, Watermark, make_windows
from ._segment import Head, Segment, _Status

_NOTHING: Any = object()


async def _receive(seg: Segment, deadline: float, size: int) -> tuple[bool, list[Any] | None]:
    """``(received, chunk)``: a chunk of at most ``size`` items (``None`` at the end of the
    input), or ``(False, None)`` when ``deadline`` came first."""
    assert seg.inp is not None
    with trio.move_on_at(deadline):
        return True, await seg.inp.receive(size)
    return False, None


class WindowHead(Head):
    """``window``: the state machine of ``_windows``, a watermark, and a timer at the
    clock time when the watermark reaches the end of the earliest open window."""

    def __init__(self, node: PlanNode, spec: WindowStage[Any]) -> None:
        super().__init__(node)
        time = spec.time
        self.event = isinstance(time, EventTime)
        self.machine = make_windows(
            spec.kind, key=spec.key,
            timestamp=time.timestamp if isinstance(time, EventTime) else None,
            aggregate=spec.aggregate,
            lateness=time.lateness if isinstance(time, EventTime) else 0,
            max_windows=spec.max_windows,
        )
        self.mark = (Watermark(time.max_delay, time.idle) if isinstance(time, EventTime)
                     else None)
        self.on_late = spec.on_late
        if not isinstance(spec.on_late, EmitLate):
            self.guard = Guard(self.name, spec.on_late)

    @property
    def open_windows(self) -> int:
        return self.machine.open

    @property
    def late(self) -> int:
        return self.machine.late

    def _deadline(self) -> float:
        end = self.machine.next_end()
        if end is None:
            return math.inf
        if self.mark is None:
            return end  # processing time: the clock is the watermark
        return self.mark.wake_for(end)

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        w = self.machine
        mark = self.mark
        while True:
            deadline = self._deadline()
            received, chunk = await _receive(seg, deadline, seg.chunk_size)
            now = trio.current_time()
            if mark is None:
                out = w.advance(now)
            else:
                wm = mark.at(now)
                end = w.next_end()
                if not received and end is not None:
                    # the timer was set for when the watermark reaches this end
                    wm = mark.value = max(wm, end)
                out = w.advance(wm)
            if received and chunk is None:
                if out:
                    await self._emit(seg, out)
                break
            if chunk:
                self.n_in += len(chunk)
                try:
                    fired, late = w.add(chunk, now)
                except Exception as exc:
                    self.failed(exc, None, has_item=False)
                    raise
                out += fired
                if mark is not None:
                    out += w.advance(mark.observe(w.newest, now))
                if late:
                    out = await self._late(late, out)
            if out:
                await self._emit(seg, out)
        await checkpoint_if_cancelled()  # a failed run is cancelled, not completed
        out = w.flush()
        if out:
            await self._emit(seg, out)

    async def _emit(self, seg: Segment, out: list[Any]) -> None:
        self.n_out += len(out)
        await seg.emit(out)

    async def _late(self, late: list[Late[Any]], out: list[Any]) -> list[Any]:
        """Too-late items: emitted as ``Late`` records, dead-lettered, or the run fails."""
        if isinstance(self.on_late, EmitLate):
            return out + late
        guard = self.guard
        assert guard is not None
        for lt in late:
            exc = LateItemError(
                f"item with timestamp {lt.timestamp!r} came after the watermark "
                f"{lt.watermark!r} had closed its windows for good")
            if isinstance(self.on_late, DeadLetter):
                await guard.ahandle(exc, lt.item)
            else:
                self.failed(exc, lt.item)
                raise exc
        return out


class ThrottleHead(Head):
    """``throttle``: a token bucket kept as GCRA (a theoretical arrival time ``tat``: the
    next item may go at ``tat - tolerance``), so emission times are sums of the interval,
    exact under ``MockClock``. It asks its input for only as many items as it has tokens
    for, so the items that wait, wait in the edge before it (backpressure); when the edge
    hands over a bigger chunk whole, the rest is held here (``waiting``) and goes first."""

    def __init__(self, node: PlanNode, spec: ThrottleStage[Any]) -> None:
        super().__init__(node)
        self.interval = spec.per / spec.rate
        self.burst = spec.burst
        self.tolerance = (spec.burst - 1) * self.interval

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        assert seg.inp is not None
        inp = seg.inp
        interval, tolerance, burst = self.interval, self.tolerance, self.burst
        tat = -math.inf
        held: list[Any] = []  # the rest of a chunk the edge handed over whole
        while True:
            now = trio.current_time()
            if tat - tolerance > now:
                await trio.sleep_until(tat - tolerance)
                now = trio.current_time()
            if tat <= now:
                tokens = burst
            else:
                tokens = max(1, min(burst, math.floor((now - tat + tolerance) / interval) + 1))
            if not held:
                chunk = await inp.receive(tokens)
                if chunk is None:
                    return
                self.n_in += len(chunk)
                held = chunk
                now = trio.current_time()
            out, held = held[:tokens], held[tokens:]
            self.waiting = len(held)
            for _ in out:
                tat = max(tat, now) + interval
            self.n_out += len(out)
            await seg.emit(out)


class _LatestHead(Head):
    """Keeps only the latest item (``debounce``, ``sample``); the ones it replaces are
    counted as ``superseded``."""

    def __init__(self, node: PlanNode) -> None:
        super().__init__(node)
        self.superseded = 0
        self.pending: Any = _NOTHING

    def take(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        self.superseded += len(chunk) - (1 if self.pending is _NOTHING else 0)
        self.pending = chunk[-1]

    async def emit_pending(self, seg: Segment) -> None:
        if self.pending is not _NOTHING:
            item, self.pending = self.pending, _NOTHING
            self.n_out += 1
            await seg.emit([item])

    async def finish(self, seg: Segment) -> None:
        await checkpoint_if_cancelled()  # a failed run is cancelled, not completed
        await self.emit_pending(seg)


class DebounceHead(_LatestHead):
    """``debounce``: the timer is ``quiet`` seconds after the latest item."""

    def __init__(self, node: PlanNode, spec: DebounceStage[Any]) -> None:
        super().__init__(node)
        self.quiet = spec.quiet

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        deadline = math.inf
        while True:
            received, chunk = await _receive(seg, deadline, seg.chunk_size)
            if not received:
                deadline = math.inf
                await self.emit_pending(seg)
                continue
            if chunk is None:
                break
            self.take(chunk)
            deadline = trio.current_time() + self.quiet
        await self.finish(seg)


class SampleHead(_LatestHead):
    """``sample``: ticks at ``start + k * interval`` (``k`` counted, so no drift)."""

    def __init__(self, node: PlanNode, spec: SampleStage[Any]) -> None:
        super().__init__(node)
        self.interval = spec.interval

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        interval = self.interval
        start = trio.current_time()
        k = 1
        while True:
            received, chunk = await _receive(seg, start + k * interval, seg.chunk_size)
            if not received:
                await self.emit_pending(seg)
                # the next tick after now (ticks missed while the emit waited are skipped)
                k = max(k + 1, math.floor((trio.current_time() - start) / interval) + 1)
                continue
            if chunk is None:
                break
            self.take(chunk)
        await self.finish(seg)


class DelayHead(Head):
    """``delay``: held chunks in a queue of ``(due, chunk)``, the timer at the oldest due."""

    def __init__(self, node: PlanNode, spec: DelayStage[Any]) -> None:
        super().__init__(node)
        self.seconds = spec.seconds
        self.max_pending = spec.max_pending

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        held: deque[tuple[float, list[Any]]] = deque()
        ended = False
        while held or not ended:
            deadline = held[0][0] if held else math.inf
            room = self.max_pending - self.waiting
            if ended or room <= 0:
                await trio.sleep_until(deadline)
            else:
                received, chunk = await _receive(seg, deadline, min(room, seg.chunk_size))
                if received:
                    if chunk is None:
                        ended = True
                        await checkpoint_if_cancelled()  # a failed run is not completed
                    else:
                        self.n_in += len(chunk)
                        self.waiting += len(chunk)
                        held.append((trio.current_time() + self.seconds, chunk))
            now = trio.current_time()
            out: list[Any] = []
            while held and held[0][0] <= now:
                out += held.popleft()[1]
            if out:
                self.waiting -= len(out)
                self.n_out += len(out)
                await seg.emit(out)


#: The head of each operator over time, by spec type (for ``_build``).
TIME_HEADS: dict[type, Callable[[PlanNode, Any], Head]] = {
    WindowStage: WindowHead, ThrottleStage: ThrottleHead, DebounceStage: DebounceHead,
    SampleStage: SampleHead, DelayStage: DelayHead,
}
