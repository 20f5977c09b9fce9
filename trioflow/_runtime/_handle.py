"""What a caller holds of a live run: ``RunHandle`` and the ``ItemStream`` of ``Flow.open``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar, final

import trio

from .._acks import settle, unwrap
from .._edge import Edge
from .._plan import Plan
from .._policies import DeadLetterEntry
from .._report import RunReport
from .._stage import check_bool
from .._stats import RunState, RunStatistics
from ._runner import Runner

R = TypeVar("R")
T = TypeVar("T")


@final
class RunHandle(Generic[R]):
    """A live run, as returned by ``await nursery.start(flow.run)``.

    ``statistics()`` reads a snapshot, ``cancel()`` aborts the run (``run`` then returns
    quietly), ``await wait()`` waits for the end and returns the final state,
    ``result()`` gives the sink's result of a completed run, and ``report()`` the
    ``RunReport`` of a run that has ended.
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

    @property
    def plan(self) -> Plan:
        """The plan the run follows: its segments (tasks), edges and nodes; the edges of
        ``statistics().edges`` are ``plan.edges``, index for index."""
        return self._runner.plan

    async def wait(self) -> RunState:
        """Wait until the run has ended (completed, failed or cancelled) and return how.
        Cancelling the waiter does not affect the run."""
        return await self._runner.wait_finished()

    def result(self) -> R:
        """The sink's result of a completed run; ``RuntimeError`` if it did not complete."""
        if self._runner.state is not RunState.COMPLETED:
            raise RuntimeError(f"the run has no result: it is {self._runner.state.value}")
        return self._sink_result()

    def _sink_result(self) -> R:
        if self._result is not None:
            return self._result()
        return self._runner.result()  # type: ignore[no-any-return]

    def report(self) -> RunReport[R]:
        """The ``RunReport`` of the run (results, counts, collected failures, duration),
        once it has ended in any state; ``RuntimeError`` while it is still running. For a
        failed or cancelled run, ``result`` is what the sinks held when it stopped."""
        runner = self._runner
        if not runner.finished:
            raise RuntimeError(f"the run has no report yet: it is {runner.state.value}")
        assert runner.started_at is not None and runner.finished_at is not None
        return RunReport(
            state=runner.state, result=self._sink_result(), results=runner.results(),
            failures=tuple(runner.collected), errors=tuple(runner.errors),
            duration=runner.finished_at - runner.started_at, statistics=runner.statistics(),
        )


async def run_to_completion(
    plan: Plan, task_status: trio.TaskStatus[Any], *, report: bool = False,
    result: Callable[[Runner], Any] | None = None, progress: bool = False,
) -> Any:
    """Run ``plan``; return what ``result(runner)`` gives (default: the last sink's result),
    or with ``report`` the run's ``RunReport``, raising for fail-fast errors only. With
    ``progress``, ``trioflow.display.progress`` watches the run beside it."""
    check_bool("progress", progress)
    runner = Runner(plan)
    handle: RunHandle[Any] = RunHandle(runner, None if result is None else lambda: result(runner))

    if progress:
        await _run_with_progress(runner, handle, task_status)
    else:
        await runner.run_tasks(lambda: task_status.started(handle))
    runner.raise_errors(collected=not report)
    return handle.report() if report else handle._sink_result()


async def _run_with_progress(runner: Runner, handle: RunHandle[Any],
                             task_status: trio.TaskStatus[Any]) -> None:
    try:
        from ..display import progress
    except ImportError as exc:
        raise ImportError(f"progress=True: {exc}") from exc

    async with trio.open_nursery() as nursery:

        def started() -> None:
            task_status.started(handle)
            nursery.start_soon(progress, handle)

        # the display ends by itself once the run has ended, with its summary line
        await runner.run_tasks(started)


class ItemStream(Generic[T]):
    """The output of ``Flow.open()``: ``async for item in stream`` or ``await stream.receive()``.

    Items arrive in chunks; iterating a chunk that is already here does not yield to the
    scheduler, so a loop body that never awaits runs at most one chunk between checkpoints.
    """

    def __init__(self, edge: Edge, chunk_size: int, tracked: bool = False) -> None:
        self._edge = edge
        self._chunk_size = chunk_size
        self._buf: deque[T] = deque()
        #: items are ``Tracked``: one taken by the caller is done (acknowledged)
        self._tracked = tracked

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
        item = self._buf.popleft()
        if self._tracked:
            settle(item)
            return unwrap(item)  # type: ignore[no-any-return]
        return item
