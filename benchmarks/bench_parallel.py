"""Workload "parallel": a parallel block of 2, 4 and 8 I/O-bound functions per item.

Each function is ``await trio.sleep(0.01)`` (standing for an I/O call) and returns a value
of its own. ``parallel(*fns)`` runs an item's functions at once, so an item should take
about as long as one call, against ``k`` calls one after another for the plain sequential
loop: the speed-up ``sequential time / parallel time`` is ideally ``k``, and what it falls
short of ``k`` is the cost of starting ``k`` tasks per item and collecting their results.
Items go through one at a time on both sides (``parallel``'s default ``concurrency=1``),
so the comparison is of equal work: the same calls on the same items.

The real clock is used (this is a benchmark), so every call takes its 10 ms plus
``trio.sleep``'s overshoot (timer resolution). That makes the run long: a sequential block
of 8 costs 80+ ms per item, so the workload uses a few dozen items rather than hundreds (see
``docs/benchmarks.md``); the ratios do not depend on the item count.

Every variant returns whether its results (one tuple per item, ``(10x, 10x+1, ...)``) are
the expected ones, so a wrong result shows up as ``WRONG RESULT``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from harness import Target, Variant, Workload

import trioflow as tf

DELAY = 0.01
SIZES = (2, 4, 8)
#: speed-up sequential / parallel that each block size must reach
SPEEDUP_TARGETS = {2: 1.8, 4: 3.5, 8: 7.0}

Call = Callable[[int], Awaitable[int]]
Results = list[tuple[int, ...]]


def make_call(i: int) -> Call:
    """The ``i``-th function of a block: an I/O call returning ``10x + i``."""

    async def call(x: int) -> int:
        await trio.sleep(DELAY)
        return x * 10 + i

    call.__name__ = call.__qualname__ = f"call_{i}"
    return call


CALLS = [make_call(i) for i in range(max(SIZES))]


def expected_results(n: int, k: int) -> list[tuple[int, ...]]:
    return [tuple(x * 10 + i for i in range(k)) for x in range(n)]


# -- the trioflow way ----------------------------------------------------------------------


async def trioflow_parallel(n: int, k: int) -> list[tuple[int, ...]]:
    """A parallel block of the ``k`` functions, one item at a time."""
    return await (tf.from_iterable(range(n)) | tf.parallel(*CALLS[:k]) | tf.to_list()).run()


# -- references ------------------------------------------------------------------------------


async def sequential(n: int, k: int) -> list[tuple[int, ...]]:
    """A plain async loop: for each item, await each function in turn."""
    results = []
    for x in range(n):
        results.append(tuple([await fn(x) for fn in CALLS[:k]]))
    return results


async def trio_nursery(n: int, k: int) -> list[tuple[int, ...]]:
    """Hand-written Trio: for each item, a nursery with a task per function."""
    fns = CALLS[:k]
    results = []

    async def run(slots: list[int], i: int, fn: Call, x: int) -> None:
        slots[i] = await fn(x)

    for x in range(n):
        slots = [0] * k
        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(run, slots, i, fn, x)
        results.append(tuple(slots))
    return results


async def one_call(n: int) -> list[tuple[int, ...]]:
    """One call per item, awaited directly: the floor for any block (a block takes as long
    as its slowest function)."""
    return [(await CALLS[0](x),) for x in range(n)]


def checked(fn: Callable[[int, int], Awaitable[Results]], k: int) -> Callable[[int], Awaitable[bool]]:
    """``fn`` for a block of ``k``, returning whether its results are the expected ones."""

    async def run(n: int) -> bool:
        return await fn(n, k) == expected_results(n, k)

    return run


async def one_call_checked(n: int) -> bool:
    return await one_call(n) == expected_results(n, 1)


def workload(n: int, reps: int) -> Workload:
    variants = [Variant("one_call", one_call_checked,
                        "one call per item, awaited directly: the floor for a block", n)]
    targets = []
    for k in SIZES:
        variants += [
            Variant(f"sequential_{k}", checked(sequential, k),
                    f"plain async loop awaiting the {k} functions in turn per item", n),
            Variant(f"trioflow_{k}", checked(trioflow_parallel, k),
                    f"from_iterable | parallel({k} functions) | to_list()", n),
            Variant(f"trio_nursery_{k}", checked(trio_nursery, k),
                    f"hand-written Trio: a nursery with {k} tasks per item", n),
        ]
        targets.append(Target(f"block of {k}: sequential time / trioflow time (speed-up)",
                              f"sequential_{k}", f"trioflow_{k}", limit=SPEEDUP_TARGETS[k],
                              at_most=False))
    return Workload(
        name="parallel",
        title=f"{n:,} items, parallel block of 2/4/8 functions each awaiting trio.sleep({DELAY})",
        baseline="one_call",
        expected=True,
        reps=reps,
        variants=variants,
        targets=targets,
        notes=[f"ideal: one_call {n * DELAY * 1e3:.0f} ms, sequential_k k times that, "
               f"trioflow_k the same as one_call; trio.sleep overshoots by timer resolution",
               "items/s counts items (each with all k calls), one item at a time on every row"],
    )
