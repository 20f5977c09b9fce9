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
) -> RunHandle[Any]:
    """Run a pipeline, flow or graph until it ends or a signal arrives.

    The first of ``signals`` drains the run (``handle.drain(drain_timeout)``: the sources
    stop, what they handed over finishes, then the run ends); a second one aborts it
    (``handle.cancel()``). Returns the handle once the run has ended: ``handle.state`` says
    how (``COMPLETED``, ``CANCELLED``), ``handle.result()`` gives a completed run's result.
    A failure of the run is raised as usual. Must be called from the main thread (Trio's
    signal handling). On cancellation of the caller the run is cancelled with it.
    """
    if not (drain_timeout > 0 or math.isinf(drain_timeout)):
        raise ValueError(f"drain_timeout must be > 0, got {drain_timeout!r}")
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:
            handle: RunHandle[Any] = await nursery.start(runnable.run)

            async def watch() -> None:
                count = 0
                async for _ in received:
                    count += 1
                    if count == 1:
                        nursery.start_soon(handle.drain, drain_timeout)
                    else:
                        handle.cancel()
                        return

            nursery.start_soon(watch)
            await handle.wait()
            nursery.cancel_scope.cancel()
    return handle
