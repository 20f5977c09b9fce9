"""Workload "io_map": items that each await an I/O call, run 64 at a time.

Each call is ``await trio.sleep(0.005)``: the time is spent waiting, so what is measured
is how well a pool keeps 64 calls in flight (how quickly a finished worker gets its next
item) and what ordering costs. The real clock is used (this is a benchmark, not a test),
so figures carry timer noise: the median of several runs is reported.

The reference does the waiting and nothing else: 64 tasks with staggered starts, each
doing its share of the calls back to back (see ``reference``: staggered, so that the
reference does not pay a lock-step wake-up of all 64 tasks on every wave). Comparison
rows: the earlier lock-step reference; a hand-written task per item; and what one writes
without a framework: a feeder, 64 workers and memory channels, with a reorder dict for
ordered output.
"""

from __future__ import annotations

import functools

import peers
import trio
from harness import Target, Variant, Workload

import trioflow as tf
from trioflow._runtime import _pool

DELAY = 0.005
CONCURRENCY = 64


async def fetch(x: int) -> int:
    """Stands for an I/O call (an HTTP request, a database query)."""
    await trio.sleep(DELAY)
    return x * 10


# -- the trioflow way ----------------------------------------------------------------------


async def trioflow_map(n: int, ordered: bool) -> list[int]:
    """``map`` of an async function with ``concurrency=64``: a pool of 64 workers."""
    results = await (
        tf.from_iterable(range(n)) | tf.map(fetch, concurrency=CONCURRENCY, ordered=ordered)
    ).to_list()
    return results if ordered else sorted(results)


async def trioflow_map_unspread(n: int, ordered: bool) -> list[int]:
    """The same pool with its de-synchronising off (a comparison row: what spreading the
    calls that end together is worth here; see ``PoolHead._desync``)."""
    saved = _pool.PACE_MIN_WORKERS
    _pool.PACE_MIN_WORKERS = 1 << 30
    try:
        return await trioflow_map(n, ordered)
    finally:
        _pool.PACE_MIN_WORKERS = saved


# -- references ------------------------------------------------------------------------------


async def reference(n: int) -> list[int]:
    """Only the calls, with staggered starts: the lower bound this benchmark measures against.

    Item ``i`` goes to task ``i % 64``, so task ``k`` does its share, ``ceil((n - k) / 64)``
    calls, back to back; the tasks with one call more (``k < n % 64``) start first. Task
    ``k`` starts at ``k * DELAY / 64`` after the first, so the wake-ups are spread over each
    ``DELAY`` instead of all 64 landing together. Without the stagger every task wakes in
    the same scheduler pass on every wave, and the wave lasts as long as all 64 wake-ups
    take to process one after the other (``reference_lockstep``): a lock-step that the
    reference itself pays, which flatters a pool measured against it. Ideally (no timer
    overshoot, no CPU cost) this takes ``(n + 63) / 64 * DELAY``: one call every
    ``DELAY / 64``, the most that 64 concurrent calls of ``DELAY`` can sustain. In practice
    Trio's timers fire at epoll's millisecond resolution, so the wake-ups land in about five
    groups a millisecond apart: the finest spread the timers allow.
    """
    results = [0] * n
    start = trio.current_time()

    async def worker(k: int) -> None:
        await trio.sleep_until(start + k * DELAY / CONCURRENCY)
        for i in range(k, n, CONCURRENCY):
            results[i] = await fetch(i)

    async with trio.open_nursery() as nursery:
        for k in range(CONCURRENCY):
            nursery.start_soon(worker, k)
    return results


async def reference_lockstep(n: int) -> list[int]:
    """The earlier reference: 64 tasks started together, taking the next index from a shared
    counter. Every wave's 64 wake-ups land in one scheduler pass (lock-step)."""
    results = [0] * n
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            results[i] = await fetch(i)

    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker)
    return results


async def trio_task_per_item(n: int, ordered: bool) -> list[int]:
    """A task per item, at most 64 at once (a ``CapacityLimiter``); results written into
    their slot (ordered) or appended as they finish (unordered)."""
    limiter = trio.CapacityLimiter(CONCURRENCY)
    slots = [0] * n
    finished: list[int] = []

    async def one(i: int) -> None:
        try:
            r = await fetch(i)
        finally:
            limiter.release_on_behalf_of(i)
        if ordered:
            slots[i] = r
        else:
            finished.append(r)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire_on_behalf_of(i)
            nursery.start_soon(one, i)
    return slots if ordered else sorted(finished)


async def trio_hand_written(n: int, ordered: bool) -> list[int]:
    """A feeder, 64 workers and a collector, connected by memory channels."""
    results: list[int] = []
    items_send, items_recv = trio.open_memory_channel[int](0)
    done_send, done_recv = trio.open_memory_channel[tuple[int, int]](CONCURRENCY)

    async def feeder() -> None:
        async with items_send:
            for i in range(n):
                await items_send.send(i)

    async def worker(inp: trio.MemoryReceiveChannel[int],
                     out: trio.MemorySendChannel[tuple[int, int]]) -> None:
        async with inp, out:
            async for i in inp:
                await out.send((i, await fetch(i)))

    async def collector() -> None:
        async with done_recv:
            if not ordered:
                async for _, r in done_recv:
                    results.append(r)
                return
            waiting: dict[int, int] = {}
            next_seq = 0
            async for seq, r in done_recv:
                waiting[seq] = r
                while next_seq in waiting:
                    results.append(waiting.pop(next_seq))
                    next_seq += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder)
        nursery.start_soon(collector)
        async with items_recv, done_send:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker, items_recv.clone(), done_send.clone())
    return results if ordered else sorted(results)


def workload(n: int, reps: int) -> Workload:
    return Workload(
        name="io_map",
        title=f"{n:,} items, each awaiting trio.sleep({DELAY}), concurrency {CONCURRENCY}",
        baseline="reference",
        expected=[x * 10 for x in range(n)],
        reps=reps,
        variants=[
            Variant("reference", reference,
                    "64 tasks, task k starting at k*5ms/64 and doing calls k, k+64, ... back to "
                    "back; no pipeline", n),
            Variant("trioflow_ordered", functools.partial(trioflow_map, ordered=True),
                    "map(fetch, concurrency=64)", n),
            Variant("trioflow_unordered", functools.partial(trioflow_map, ordered=False),
                    "map(fetch, concurrency=64, ordered=False)", n),
            Variant("trioflow_ordered_unspread",
                    functools.partial(trioflow_map_unspread, ordered=True),
                    "map(fetch, concurrency=64) with the pool's de-synchronising off", n),
            Variant("reference_lockstep", reference_lockstep,
                    "the earlier reference: 64 tasks started together, a shared counter", n),
            Variant("trio_task_per_item", functools.partial(trio_task_per_item, ordered=True),
                    "hand-written: a task per item, 64 at once (CapacityLimiter)", n),
            Variant("trio_ordered", functools.partial(trio_hand_written, ordered=True),
                    "hand-written feeder + 64 workers + channels + reorder dict", n),
            Variant("trio_unordered", functools.partial(trio_hand_written, ordered=False),
                    "hand-written feeder + 64 workers + channels", n),
            *peers.io_variants(n, delay=DELAY, concurrency=CONCURRENCY),
        ],
        targets=[
            Target("trioflow ordered throughput / staggered reference", "trioflow_ordered",
                   "reference", limit=0.97, at_most=False, fmt="{:.1%}", invert=True),
            Target("trioflow unordered throughput / staggered reference", "trioflow_unordered",
                   "reference", limit=0.97, at_most=False, fmt="{:.1%}", invert=True),
            *[Target(f"{name} throughput / staggered reference", name, "reference", limit=None,
                     at_most=False, fmt="{:.1%}", invert=True)
              for name in ("trioflow_ordered_unspread", "reference_lockstep", "trio_task_per_item",
                           "trio_ordered", "trio_unordered")],
        ],
        notes=[f"ideal: ({n} + {CONCURRENCY - 1}) / {CONCURRENCY} calls of {DELAY * 1e3:.0f} ms back to "
               f"back = {(n + CONCURRENCY - 1) / CONCURRENCY * DELAY * 1e3:.0f} ms (one call every "
               f"{DELAY / CONCURRENCY * 1e6:.0f} us); each trio.sleep overshoots by up to the 1 ms "
               "timer resolution",
               *([] if peers.HAVE_AIOSTREAM else [peers.MISSING_NOTE])],
    )
