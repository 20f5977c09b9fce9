"""Workload "fanout": ints broadcast to three branches, each a cheap ``map``, merged into a sum.

    source -> broadcast -+-> map(x+1) -+
                         +-> map(x*2) -+-> merge -> reduce(add)
                         +-> map(x-3) -+

The trioflow version is written with the Graph API. A broadcast or a merge is a
fan-out/fan-in point, so the graph cannot be fused into one task as a linear pipeline is:
the planner gives the source (with the broadcast), each branch, and the merge (with the
sink) a task of their own, connected by edges. What is measured is what those edges cost
per item: trioflow moves items across an edge in chunks (up to 1024 items per hop), the
hand-written version one at a time (six channel hops per item: three sends from the source,
one from each branch into the merge channel).

Peak memory is measured apart from the timings, in one extra run under ``tracemalloc``:
with bounded edges it should stay a few MB however long the stream is.
"""

from __future__ import annotations

import functools
import operator
import tracemalloc

import trio
from bench_linear import CHANNEL_CAPACITY
from harness import Limit, Target, Variant, Workload

import trioflow as tf


def plus_one(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def minus_three(x: int) -> int:
    return x - 3


BRANCHES = (plus_one, double, minus_three)
#: the peak traced allocation of a trioflow run must stay at or under this (MB)
PEAK_MB = 8.0


def expected_sum(n: int) -> int:
    return sum(f(x) for x in range(n) for f in BRANCHES)


# -- the trioflow way ----------------------------------------------------------------------


async def trioflow_graph(n: int) -> int:
    """broadcast to three ``map`` nodes, merge them into a ``reduce``: the Graph API."""
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(n))))
    branches = [g.add(tf.map(f), fan) for f in BRANCHES]
    out = g.add(tf.reduce(operator.add, 0), g.merge(*branches))
    return (await g.run())[out]


# -- references ------------------------------------------------------------------------------


def plain_loop(n: int) -> int:
    """Plain Python, no Trio: one loop calling the three functions per item (for context)."""
    total = 0
    for x in range(n):
        total += plus_one(x)
        total += double(x)
        total += minus_three(x)
    return total


async def trio_task_per_node(n: int) -> int:
    """Hand-written Trio, a task per node, memory channels between them, item by item: the
    source sends each item to three channels, each branch maps it and sends it into one
    shared merge channel (three producers, each with a clone of its send side), one sink
    task adds up."""
    total = 0

    async def source(outs: list[trio.MemorySendChannel[int]]) -> None:
        try:
            for x in range(n):
                for out in outs:
                    await out.send(x)
        finally:
            for out in outs:
                await out.aclose()

    async def branch(fn, inp: trio.MemoryReceiveChannel[int], out: trio.MemorySendChannel[int]) -> None:
        async with inp, out:
            async for x in inp:
                await out.send(fn(x))

    async def sink(inp: trio.MemoryReceiveChannel[int]) -> None:
        nonlocal total
        async with inp:
            async for x in inp:
                total += x

    merge_send, merge_recv = trio.open_memory_channel[int](CHANNEL_CAPACITY)
    branch_sends = []
    async with trio.open_nursery() as nursery:
        async with merge_send:
            for fn in BRANCHES:
                s, r = trio.open_memory_channel[int](CHANNEL_CAPACITY)
                branch_sends.append(s)
                nursery.start_soon(branch, fn, r, merge_send.clone())
        nursery.start_soon(source, branch_sends)
        nursery.start_soon(sink, merge_recv)
    return total


# -- peak memory -----------------------------------------------------------------------------


def peak_memory(n: int) -> dict[str, float]:
    """One trioflow run under ``tracemalloc``, traced from just before the graph is built to
    just after it finished (inside ``trio.run``, like the timings): the peak of the memory
    allocated meanwhile, in MB. Untimed: tracing makes every allocation several times
    slower."""

    async def traced() -> tuple[int, int]:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            result = await trioflow_graph(n)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        if result != expected_sum(n):
            raise AssertionError(f"fanout: wrong result under tracemalloc: {result}")
        return peak - before, result

    growth, _ = trio.run(traced)
    return {"trioflow_peak_mb": growth / 1e6}


def workload(n: int, reps: int) -> Workload:
    return Workload(
        name="fanout",
        title=f"{n:,} ints -> broadcast to map(x+1), map(x*2), map(x-3) -> merge -> sum",
        baseline="plain_loop",
        expected=expected_sum(n),
        reps=reps,
        variants=[
            Variant("plain_loop", plain_loop,
                    "plain Python, one loop calling the three functions, no Trio", n),
            Variant("trioflow", trioflow_graph,
                    "Graph: broadcast -> 3 x map -> merge -> reduce(operator.add, 0)", n),
            Variant("trio_task_per_node", trio_task_per_node,
                    "hand-written Trio, a task per node, memory channels, item by item", n),
        ],
        targets=[
            Target("trioflow throughput / task-per-node throughput (speed-up)",
                   "trio_task_per_node", "trioflow", limit=10.0, at_most=False, fmt="{:.0f}x"),
        ],
        measure=functools.partial(peak_memory, n),
        limits=[
            Limit("trioflow peak traced memory over a run (tracemalloc)", "trioflow_peak_mb",
                  limit=PEAK_MB, at_most=True, fmt="{:.2f} MB"),
        ],
        notes=[f"edges: trioflow's default buffer and the hand-written channels both hold "
               f"{CHANNEL_CAPACITY} items; peak memory is from one extra, untimed run"],
    )
