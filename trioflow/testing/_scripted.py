"""A scripted source and a recording sink: deterministic ends for a flow under test.

``ScriptedSource`` plays a script of steps (items, ``Sleep``, ``Fail``, ``WaitFor``) through
``trioflow.source``, so timing and failures at the source are exact and, with Trio's
``MockClock``, virtual. ``RecordingSink`` notes every item with its arrival time on Trio's
clock, and (used as a stage) how the stream ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Generic, TypeVar

import attrs
import trio

from .._flow import DEFAULT_BUFFER, DEFAULT_CHUNK_SIZE, Flow
from .._operators import continuous, source
from .._runtime import Emit
from .._stage import Stage

T = TypeVar("T")


@attrs.frozen
class Sleep:
    """A script step: wait ``seconds`` on Trio's clock before the next step."""

    seconds: float


@attrs.frozen
class Fail:
    """A script step: raise ``exc`` from the source, which fails the run.

    Give an exception class (a fresh instance is raised on every run of the script) or an
    instance (raised as is: reuse it in one run only, since the run adds notes to it).
    """

    exc: BaseException | type[BaseException]


@attrs.frozen
class WaitFor:
    """A script step: wait until ``event`` is set (a ``trio.Event`` the test controls)."""

    event: trio.Event




@attrs.frozen(kw_only=True)
class Arrival(Generic[T]):
    """One item seen by a ``RecordingSink`` and when (``trio.current_time()``) it came."""

    item: T
    time: float


class ScriptedSource(Generic[T]):
    """A source that plays a script: ``ScriptedSource([1, 2, Sleep(5), 3, Fail(ValueError)])``.

    Plain values in the script are emitted one by one; ``Sleep(s)`` waits ``s`` seconds of
    Trio time, ``WaitFor(event)`` waits for a test's event, ``Fail(exc)`` raises. The stream
    completes at the end of the script. ``.flow`` is the flow to build on
    (``src.flow | tf.map(f)``); it can be run any number of times, replaying the script.

    ``emitted`` counts the items handed on so far (over all runs), and ``cancelled`` tells
    whether the last run stopped the script early (downstream stopped or the run was
    cancelled).
    """

    def __init__(self, script: Iterable[T | Sleep | Fail | WaitFor], *, name: str | None = None) -> None:
        self.script: tuple[T | Sleep | Fail | WaitFor, ...] = tuple(script)
        self.emitted = 0
        self.cancelled = False
        self._name = name

    @property
    def flow(self) -> Flow[T]:
        """A ``Flow`` (made with ``trioflow.source``) that plays the script when run."""
        return source(self._play, name=self._name)

    async def _play(self, emit: Emit[T]) -> None:
        self.cancelled = False
        try:
            for step in self.script:
                if isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                elif isinstance(step, WaitFor):
                    await step.event.wait()
                elif isinstance(step, Fail):
                    exc = step.exc
                    raise exc() if isinstance(exc, type) else exc
                else:
                    await emit(step)
                    self.emitted += 1
        except trio.Cancelled:
            self.cancelled = True
            raise


class RecordingSink(Generic[T]):
    """Records every item it receives, with its arrival time on Trio's clock.

    Use it either as a plain callable, ``flow | tf.sink(rec)``, or as a stage,
    ``flow | rec.stage`` (then ``.run()``), or let it run the flow: ``await rec.run(flow)``.
    A sink function never sees the end of the stream, so ``completed`` and ``cancelled``
    are only set in the stage forms: ``completed`` once the input ended cleanly,
    ``cancelled`` when the stream was cut short (the run failed or was cancelled, or a stage
    after it stopped early). The stage passes every item on unchanged.
    """

    def __init__(self) -> None:
        self.arrivals: list[Arrival[T]] = []
        self.completed = False
        self.cancelled = False

    def __call__(self, item: T) -> None:
        """Record ``item`` at ``trio.current_time()`` (the form ``tf.sink(rec)`` calls)."""
        self.arrivals.append(Arrival(item=item, time=trio.current_time()))

    @property
    def items(self) -> list[T]:
        """The recorded items, in arrival order."""
        return [a.item for a in self.arrivals]

    @property
    def times(self) -> list[float]:
        """The arrival times, in arrival order (items of one chunk share a time)."""
        return [a.time for a in self.arrivals]

    @property
    def stage(self) -> Stage[T, T]:
        """A ``continuous`` stage that records each item, passes it on, and notes how the
        stream ended."""
        return continuous(self._consume)

    async def _consume(self, items: AsyncIterator[T], emit: Emit[T]) -> None:
        self.completed = False
        self.cancelled = False
        try:
            async for item in items:
                self(item)
                await emit(item)
        except trio.Cancelled:
            self.cancelled = True
            raise
        self.completed = True

    async def run(
        self, flow: Flow[T], *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER
    ) -> None:
        """Run ``flow | self.stage`` to the end, recording as it goes.

        Raises the run's ``ExceptionGroup`` if it failed (``cancelled`` is then true). On
        cancellation from outside, the run is cancelled and ``trio.Cancelled`` propagates.
        """
        await (flow | self.stage).run(chunk_size=chunk_size, buffer=buffer)


