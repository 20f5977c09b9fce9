"""Cleanup assertions: no task outlives a block, every resource opened is closed.

A structured pipeline cannot leak a task into its own nursery: the nursery waits for it.
It can leak one into a nursery it was *given* (or a system task), where it keeps running
after the pipeline is gone. ``assert_no_leftovers`` finds those by comparing the whole Trio
task tree (walked from ``trio.lowlevel.current_root_task()``) before and after the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Generic, TypeVar, final

import trio

Res = TypeVar("Res")

#: Checkpoints given to tasks on their way out (already cancelled, running ``finally``)
#: before the tree is compared; a task still there after them is a leftover.
_SETTLE_CHECKPOINTS = 5


def _walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child)


def _all_tasks() -> set[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    if root is None:  # pragma: no cover - only outside a run, where no test can be
        return set()
    return set(_walk(root))


@asynccontextmanager
async def assert_no_leftovers() -> AsyncIterator[None]:
    """Assert that every task started inside the block has ended when it exits.

    ``async with assert_no_leftovers(): await run_my_pipeline()``. On exit the tasks get a
    few checkpoints to finish; then any task that exists now but did not on entry fails
    the block with an ``AssertionError`` listing the tasks' names. If the body raises, its
    exception propagates unchanged and nothing is checked. On cancellation of the body,
    the cancellation propagates and nothing is checked.
    """
    before = _all_tasks()
    yield
    for _ in range(_SETTLE_CHECKPOINTS):
        await trio.lowlevel.checkpoint()
    leftovers = _all_tasks() - before
    if leftovers:
        names = sorted(t.name for t in leftovers)
        raise AssertionError(
            f"{len(names)} task(s) started in the block are still running: {', '.join(names)}"
        )


@final
class _Tracked(Generic[Res]):
    """One tracked resource: counts the enter and the exit of the wrapped manager."""

    def __init__(self, tracker: ResourceTracker, cm: AbstractAsyncContextManager[Res]) -> None:
        self._tracker = tracker
        self._cm = cm

    async def __aenter__(self) -> Res:
        res = await self._cm.__aenter__()
        self._tracker.opened += 1
        return res

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._cm.__aexit__(exc_type, exc, tb)
        finally:
            self._tracker.closed += 1
            if exc is not None:
                self._tracker.closed_on_error += 1


@final
class ResourceTracker:
    """Counts the resources a stage opens and closes (``persistent(resource=...)``).

    ``tracker = ResourceTracker()``; ``tf.persistent(fn, resource=tracker.factory(connect))``;
    after the run, ``tracker.assert_all_closed()``. ``opened`` counts entered resources,
    ``closed`` the exits (whether or not the exit raised), ``closed_on_error`` the exits
    made while an exception (an error, or a cancellation) was propagating.
    """

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.closed_on_error = 0

    @property
    def open(self) -> int:
        """Resources entered and not exited yet."""
        return self.opened - self.closed

    def factory(
        self, make_resource: Callable[[], AbstractAsyncContextManager[Res]]
    ) -> Callable[[], AbstractAsyncContextManager[Res]]:
        """Wrap an async-context-manager factory so that each resource it makes is counted."""

        def make() -> AbstractAsyncContextManager[Res]:
            return _Tracked(self, make_resource())

        return make

    def assert_all_closed(self) -> None:
        """``AssertionError`` unless there were as many exits as enters: every resource
        opened was closed, none twice."""
        if self.open != 0:
            raise AssertionError(
                f"{self.open} of {self.opened} resource(s) were not closed "
                f"(opened {self.opened}, closed {self.closed})"
            )
