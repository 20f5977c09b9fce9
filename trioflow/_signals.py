"""Running a pipeline until SIGINT/SIGTERM: the first signal drains, the second aborts."""

from __future__ import annotations

import math
import signal
from typing import Any, Protocol

import trio

from ._runtime import RunHandle


class _Runnable(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> Any: ...


async def run_until_signal(
    runnable: _Runnable,
    *,
    drain_timeout: float = 30.0,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    task_status: trio.TaskStatus[RunHandle[Any]] = trio.TASK_STATUS_IGNORED,
) -> RunHandle[Any]:
    """Run a pipeline, flow or graph until it ends or a signal arrives.

    The first of ``signals`` drains the run (``handle.drain(drain_timeout)``: the sources
    stop, what they handed over finishes, then the run ends); a second one aborts it
    (``handle.cancel()``). Returns the handle once the run has ended: ``handle.state`` says
    how (``COMPLETED``, ``CANCELLED``), ``handle.result()`` gives a completed run's result.
    A failure of the run is raised as usual. Must be called from the main thread (Trio's
    signal handling). On cancellation of the caller the run is cancelled with it.

    ``handle = await nursery.start(run_until_signal, pipeline)`` gives the live handle once
    the run is ready (to watch its statistics, or drain it yourself), while signals keep
    draining and aborting it as above.
    """
    if not (drain_timeout > 0 or math.isinf(drain_timeout)):
        raise ValueError(f"drain_timeout must be > 0, got {drain_timeout!r}")
    failure: list[Exception] = []

    async def run(*, task_status: trio.TaskStatus[RunHandle[Any]]) -> None:
        try:
            await runnable.run(task_status=task_status)
        except Exception as exc:  # the run's own group: raised below as it is, not wrapped
            failure.append(exc)

    handle: RunHandle[Any] | None = None
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:
            try:
                handle = await nursery.start(run)
            except RuntimeError:
                if not failure:
                    raise  # (the run failed while starting: raised below)
            if handle is not None:
                running = handle
                task_status.started(handle)

                async def watch() -> None:
                    count = 0
                    async for _ in received:
                        count += 1
                        if count == 1:
                            nursery.start_soon(running.drain, drain_timeout)
                        else:
                            running.cancel()
                            return

                nursery.start_soon(watch)
                await handle.wait()
            nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    assert handle is not None
    return handle
