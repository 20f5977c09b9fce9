"""Probes: drive a stage item by item from the test, and check what it does.

In the spirit of Akka Streams' ``TestSource``/``TestSink``:

    async with open_probes(tf.map(f) | tf.take(2)) as (src, snk):
        await src.send(1)
        await snk.expect_next(f(1))
        src.complete()
        await snk.expect_complete()

Theory of operation. The stage runs as ``source(probe) | stage | continuous(writer)`` in a
task of a nursery owned by ``open_probes``. The source probe's function reads a zero-capacity
memory channel, so ``await src.send(x)`` returns once the pipeline took ``x``: a pipeline
that backpressures makes ``send`` wait (and time out, with an ``AssertionError``). The
writer at the end sends each item into another zero-capacity channel read by the sink
probe, so the pipeline advances only as fast as the test reads: the test is the demand.

The sink probe learns how the stream ended from the *run*, not from the writer: the task
running the pipeline records the outcome (completed, or the ``ExceptionGroup``) and only
then closes the items channel, so "no more items" and "how it ended" are seen together
and a failure can never look like a clean end. ``snk.cancel()`` cancels the writer's own
scope; it then returns, which stops the pipeline upstream the same way ``take`` does.

When the block exits, a pipeline still running is cancelled. A pipeline failure that the
test never looked at (no ``expect_error``) is raised from the ``async with``, so no error
is dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar, final

import attrs
import trio

from .._errors import short_repr
from .._flow import DEFAULT_BUFFER, DEFAULT_CHUNK_SIZE
from .._operators import continuous, source
from .._runtime import Emit, RunHandle
from .._stage import Stage
from ._run import _leaves

In = TypeVar("In")
Out = TypeVar("Out")

#: Default time (on Trio's clock) a probe waits for the pipeline, as in Akka's TestKit.
DEFAULT_TIMEOUT = 3.0


@attrs.frozen
class _Many:
    items: tuple[Any, ...]


@attrs.frozen
class _Failure:
    exc: BaseException


class _Outcome:
    """What the run task learned about how the pipeline ended."""

    def __init__(self) -> None:
        self.finished = trio.Event()
        self.error: ExceptionGroup[Exception] | None = None
        #: Whether a test looked at ``error`` (so it is not raised again at exit).
        self.error_seen = False
        self.handle: RunHandle[None] | None = None


@final
class SourceProbe(Generic[In]):
    """The test's end of the pipeline's input (built by ``open_probes``, not by users).

    ``await send(x)``, ``await send_many(xs)``, ``complete()``, ``await fail(exc)``,
    ``await expect_cancellation()``. Every wait is bounded by the probe's timeout on Trio's
    clock and fails with an ``AssertionError`` that says what was waited for.
    """

    def __init__(self, timeout: float) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](0)
        #: How long (seconds of Trio's clock) each wait of this probe may take; settable.
        self.timeout = timeout
        self._stopped = trio.Event()
        self._cancelled = False
        self._completed = False
        #: Items the pipeline has taken from the probe so far.
        self.sent = 0

    # -- the pipeline's side ------------------------------------------------------------------

    async def _produce(self, emit: Emit[In]) -> None:
        try:
            with self._receive:
                async for msg in self._receive:
                    if isinstance(msg, _Failure):
                        raise msg.exc
                    if isinstance(msg, _Many):
                        await emit.many(msg.items)
                    else:
                        await emit(msg)
        except trio.Cancelled:
            self._cancelled = True
            raise
        finally:
            self._stopped.set()

    # -- the test's side -----------------------------------------------------------------------

    async def _put(self, msg: object, what: str) -> None:
        limit = self.timeout
        if self._completed:
            raise AssertionError(f"source probe: cannot send {what}: the probe was already completed")
        try:
            with trio.fail_after(limit):
                await self._send.send(msg)
        except trio.TooSlowError:
            raise AssertionError(
                f"source probe: the pipeline did not take {what} within {limit} s "
                "(Trio clock): it is backpressuring or stuck"
            ) from None
        except trio.BrokenResourceError:
            how = "was cancelled" if self._cancelled else "has stopped"
            raise AssertionError(
                f"source probe: cannot send {what}: the pipeline's source {how} (the run ended, "
                "or downstream stopped consuming)"
            ) from None

    async def send(self, item: In) -> None:
        """Hand ``item`` to the pipeline; returns once the source took it.

        Fails with ``AssertionError`` if the pipeline does not take it within the timeout
        (backpressure) or no longer listens. On cancellation the item is not sent.
        """
        await self._put(item, f"item {short_repr(item)}")
        self.sent += 1

    async def send_many(self, items: Iterable[In]) -> None:
        """Hand several items to the pipeline at once, as one chunk (``emit.many``).

        Fails like ``send``. On cancellation none of the items is sent.
        """
        batch = tuple(items)
        await self._put(_Many(batch), f"{len(batch)} items")
        self.sent += len(batch)

    def complete(self) -> None:
        """End the input cleanly: the source returns once it has taken what was sent."""
        self._completed = True
        self._send.close()

    async def fail(self, exc: BaseException) -> None:
        """Make the source raise ``exc``, which fails the run (fail-fast).

        Fails with ``AssertionError`` if the source no longer listens. On cancellation
        nothing is raised in the pipeline.
        """
        await self._put(_Failure(exc), f"the failure {exc!r}")

    async def expect_cancellation(self) -> None:
        """Wait until the pipeline stopped the source by cancelling it (downstream stopped
        consuming, a stage ended early, or the run failed).

        ``AssertionError`` if that does not happen within the timeout or the source ended
        otherwise (completed, or failed by ``fail``). On cancellation it stops waiting.
        """
        limit = self.timeout
        with trio.move_on_after(limit):
            await self._stopped.wait()
        if not self._stopped.is_set():
            raise AssertionError(
                f"source probe: expected the pipeline to cancel the source within {limit} s "
                "(Trio clock), but it is still listening"
            )
        if not self._cancelled:
            raise AssertionError("source probe: the source stopped, but it was not cancelled")


@final
class SinkProbe(Generic[Out]):
    """The test's end of the pipeline's output (built by ``open_probes``, not by users).

    Each ``expect_*`` reads the next signal (an item, the end of the stream, or the run's
    failure) and fails with an ``AssertionError`` if it is not the expected one or does not
    come within the timeout (Trio's clock: instant under ``autojump_clock``). The pipeline
    advances only as the test reads: nothing is buffered in the probe.
    """

    def __init__(self, timeout: float, outcome: _Outcome) -> None:
        self._send, self._receive = trio.open_memory_channel[Out](0)
        #: How long (seconds of Trio's clock) each wait of this probe may take; settable.
        self.timeout = timeout
        self._outcome = outcome
        self._scope: trio.CancelScope | None = None
        self._cancel_requested = False
        #: Items the test has received so far.
        self.received = 0

    # -- the pipeline's side ------------------------------------------------------------------

    async def _consume(self, items: AsyncIterator[Out], emit: Emit[Any]) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._cancel_requested:
                scope.cancel()
            async for item in items:
                await self._send.send(item)
        # returning, after snk.cancel() too, ends the stage: the stages before it are then
        # stopped as by ``take``

    def _close(self) -> None:
        self._send.close()

    # -- the test's side -----------------------------------------------------------------------

    async def _next(self, expecting: str, limit: float | None = None) -> tuple[bool, Any]:
        """``(True, item)`` for an item, ``(False, None)`` when the stream has ended."""
        if self._cancel_requested:
            raise AssertionError(f"sink probe: expected {expecting}, but the probe was cancelled")
        if limit is None:
            limit = self.timeout
        try:
            with trio.fail_after(limit):
                item = await self._receive.receive()
        except trio.TooSlowError:
            raise AssertionError(
                f"sink probe: expected {expecting}, got nothing within {limit} s (Trio clock)"
            ) from None
        except trio.EndOfChannel:
            return False, None
        self.received += 1
        return True, item

    def _ended(self, expecting: str) -> AssertionError:
        error = self._outcome.error
        if error is None:
            return AssertionError(f"sink probe: expected {expecting}, but the stream completed")
        self._outcome.error_seen = True
        leaves = ", ".join(repr(e) for e in _leaves(error))
        failure = AssertionError(f"sink probe: expected {expecting}, but the stream failed: {leaves}")
        failure.__cause__ = error
        return failure

    async def receive_next(self) -> Out:
        """The next item, whatever it is (for checks a plain ``==`` cannot express).

        ``AssertionError`` if the stream ends or nothing comes within the timeout. On
        cancellation no item is lost: it stays for the next read.
        """
        got, item = await self._next("an item")
        if not got:
            raise self._ended("an item")
        return item  # type: ignore[no-any-return]

    async def expect_next(self, value: Out) -> None:
        """Expect the next item to equal ``value``.

        ``AssertionError`` on a different item, the end of the stream, or a timeout. On
        cancellation no item is lost.
        """
        expecting = f"item {short_repr(value)}"
        got, item = await self._next(expecting)
        if not got:
            raise self._ended(expecting)
        if item != value:
            raise AssertionError(f"sink probe: expected {expecting}, got {short_repr(item)}")

    async def expect_next_many(self, values: Iterable[Out]) -> None:
        """Expect the next items to equal ``values``, in order (each within the timeout).

        Fails like ``expect_next`` at the first difference; on cancellation no item is lost.
        """
        for i, value in enumerate(values):
            expecting = f"item {short_repr(value)} (at position {i})"
            got, item = await self._next(expecting)
            if not got:
                raise self._ended(expecting)
            if item != value:
                raise AssertionError(f"sink probe: expected {expecting}, got {short_repr(item)}")

    async def expect_no_message(self, seconds: float) -> None:
        """Expect nothing at all (no item, no end, no error) during ``seconds`` of Trio time.

        ``AssertionError`` if something comes; on cancellation it stops watching.
        """
        with trio.move_on_after(seconds):
            got, item = await self._next("no message", math.inf)
            if got:
                raise AssertionError(
                    f"sink probe: expected no message for {seconds} s, got item {short_repr(item)}"
                )
            raise self._ended(f"no message for {seconds} s")

    async def expect_complete(self) -> None:
        """Expect the stream to end cleanly now (no further item, no error).

        ``AssertionError`` on an item, a failure (chained as the cause) or a timeout. On
        cancellation it stops waiting.
        """
        got, item = await self._next("completion")
        if got:
            raise AssertionError(f"sink probe: expected completion, got item {short_repr(item)}")
        await self._outcome.finished.wait()  # already set: the channel closes after it
        if self._outcome.error is not None:
            raise self._ended("completion")

    async def expect_error(
        self, kind: type[Exception] = Exception
    ) -> Exception:
        """Expect the run to fail now with an exception of type ``kind``; return it.

        The run's ``ExceptionGroup`` must contain a ``kind`` among its leaves. Looking at
        the failure this way means ``open_probes`` will not raise it again at exit.
        ``AssertionError`` on an item, a clean end, another kind of error, or a timeout. On
        cancellation it stops waiting.
        """
        expecting = f"a failure with {kind.__name__}"
        got, item = await self._next(expecting)
        if got:
            raise AssertionError(f"sink probe: expected {expecting}, got item {short_repr(item)}")
        error = self._outcome.error
        if error is None:
            raise AssertionError(f"sink probe: expected {expecting}, but the stream completed")
        self._outcome.error_seen = True
        leaves = _leaves(error)
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
        failure = AssertionError(
            f"sink probe: expected {expecting}, but the stream failed with "
            + ", ".join(repr(e) for e in leaves)
        )
        failure.__cause__ = error
        raise failure

    def cancel(self) -> None:
        """Stop consuming: the pipeline's last stage returns, so every stage before it (and
        the source) is stopped, as with ``take``. Further ``expect_*`` calls fail.

        Synchronous: the pipeline reacts when its tasks next run; check it with
        ``await src.expect_cancellation()``."""
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()


class _Status:
    """Forwards the run's ``started(handle)`` to ``nursery.start``, keeping the handle, so a
    run that fails while starting can still report started (and its failure to the probe)."""

    def __init__(self, inner: trio.TaskStatus[None], outcome: _Outcome) -> None:
        self._inner = inner
        self._outcome = outcome
        self.called = False

    def started(self, value: RunHandle[None] | None = None) -> None:
        self._outcome.handle = value
        if not self.called:
            self.called = True
            self._inner.started()


@asynccontextmanager
async def open_probes(
    stage: Stage[In, Out],
    *,
    # an assertion deadline (the probes fail the test), not a cancellation deadline: a
    # caller who wants the whole block bounded wraps it in a cancel scope as usual
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffer: int = DEFAULT_BUFFER,
) -> AsyncIterator[tuple[SourceProbe[In], SinkProbe[Out]]]:
    """Run ``stage`` (or a chain) between a source probe and a sink probe.

    ``async with open_probes(stage) as (src, snk):`` the pipeline runs in the background
    (ready, resources open, when the body starts); the test drives it with ``src`` and
    checks it with ``snk``. ``timeout`` is the probes' default wait, in seconds of Trio's
    clock. When the block exits, a pipeline still running is cancelled; if the pipeline
    failed and no ``expect_error`` looked at it, its ``ExceptionGroup`` is raised from the
    ``async with``. An exception from the body propagates unchanged. If the block is
    cancelled from outside, the pipeline is cancelled with it.
    """
    outcome = _Outcome()
    src: SourceProbe[In] = SourceProbe(timeout)
    snk: SinkProbe[Out] = SinkProbe(timeout, outcome)
    flow = source(src._produce, name="source-probe") | stage | continuous(snk._consume, name="sink-probe")

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        status = _Status(task_status, outcome)
        try:
            await flow.run(chunk_size=chunk_size, buffer=buffer, task_status=status)
        except ExceptionGroup as group:
            outcome.error = group
        finally:
            # the outcome is recorded before the sink probe can see the end of the stream
            outcome.finished.set()
            snk._close()
            if not status.called:
                status.called = True
                task_status.started()

    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        try:
            yield src, snk
        except Exception as exc:
            body_error = exc
        finally:
            if outcome.handle is not None:
                outcome.handle.cancel()
            else:
                nursery.cancel_scope.cancel()
    if outcome.error is not None and not outcome.error_seen:
        if body_error is None:
            raise outcome.error
        body_error.add_note(f"open_probes: the pipeline also failed: {outcome.error!r}")
    if body_error is not None:
        raise body_error
