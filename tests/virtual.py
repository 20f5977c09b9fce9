"""Running a test's async function in virtual time (Trio's MockClock, autojump).

A deadlock cannot hang the suite: virtual time jumps to the deadline and the run fails
with ``trio.TooSlowError``."""

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

#: virtual seconds after which a run counts as deadlocked
DEADLOCK = 100_000


def run_virtual(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    async def guarded() -> Any:
        with trio.fail_after(DEADLOCK):
            return await fn(*args)

    return trio.run(guarded, clock=trio.testing.MockClock(autojump_threshold=0))
