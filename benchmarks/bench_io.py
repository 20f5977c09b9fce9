"""Workload "io_map": items that each await an I/O call, run 64 at a time.

Each call is ``await trio.sleep(0.005)``: the time is spent waiting, so what is measured
is how well a pool keeps 64 calls in flight (how quickly a finished worker gets its next
item) and what ordering costs. The real clock is used (this is a benchmark, not a test),
so figures carry timer noise: the median of several runs is reported.

The reference does the waiting and nothing else: 64 tasks pulling indices from a shared
counter. The hand-written Trio version is what one writes without a framework: a feeder,
64 workers and memory channels, with a reorder dict for ordered output.
"""

from __future__ import annotations

import functools

import peers
import trio
from harness import Target, Variant, Workload

import trioflow as tf

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


# -- references ------------------------------------------------------------------------------


async def reference_workers(n: int) -> list[int]:
    """Only the calls: 64 tasks take the next index from a shared counter, no pipeline."""
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
            Variant("reference", reference_workers,
                    "64 tasks pulling indices from a shared counter, no pipeline", n),
            Variant("trioflow_ordered", functools.partial(trioflow_map, ordered=True),
                    "map(fetch, concurrency=64)", n),
            Variant("trioflow_unordered", functools.partial(trioflow_map, ordered=False),
                    "map(fetch, concurrency=64, ordered=False)", n),
            Variant("trio_ordered", functools.partial(trio_hand_written, ordered=True),
                    "hand-written feeder + 64 workers + channels + reorder dict", n),
            Variant("trio_unordered", functools.partial(trio_hand_written, ordered=False),
                    "hand-written feeder + 64 workers + channels", n),
            *peers.io_variants(n, delay=DELAY, concurrency=CONCURRENCY),
        ],
        targets=[
            Target("trioflow ordered throughput / reference", "trioflow_ordered", "reference",
                   limit=0.97, at_most=False, fmt="{:.1%}", invert=True),
            Target("trioflow unordered throughput / reference", "trioflow_unordered",
                   "reference", limit=0.97, at_most=False, fmt="{:.1%}", invert=True),
        ],
        notes=[f"ideal: ceil({n}/{CONCURRENCY}) rounds of {DELAY * 1e3:.0f} ms = "
               f"{-(-n // CONCURRENCY) * DELAY * 1e3:.0f} ms; trio.sleep overshoots by timer resolution",
               *([] if peers.HAVE_AIOSTREAM else [peers.MISSING_NOTE])],
    )
