"""Workload "linear": ints -> map(x+1) -> filter(even) -> map(x*2) -> sum.

Pure CPU work, a few nanoseconds per step: what is measured is the framework's cost per
item. The trioflow variant is written as a user would write it, with lambdas; the planner
fuses the three synchronous stages and the sink into the source's task (one task, no
channel hop), and the source hands them chunks of items, so the per-item cost is a C-level
``map`` call per stage. Compare with a task per stage, where every item pays a channel
hop (a scheduler pass) at every edge.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import peers
import trio
from harness import Limit, Target, Variant, Workload
from trio.lowlevel import checkpoint

import trioflow as tf

#: A hand-written task that never blocks must still checkpoint now and then so other tasks
#: (and cancellation) get a turn. Once per 1024 items is rare enough to cost nothing and
#: is no more often than trioflow does it (its sources take chunks of up to 1024 items).
CHECKPOINT_EVERY = 1024
#: Capacity of each memory channel in the task-per-stage version (0 measures the same).
CHANNEL_CAPACITY = 512


def expected_sum(n: int) -> int:
    return sum(x * 2 for x in (x + 1 for x in range(n)) if x % 2 == 0)


# -- the trioflow way ----------------------------------------------------------------------


def linear_pipeline(n: int, add: Callable[[int], None]) -> tf.Pipeline[None]:
    """The pipeline as a user writes it: lambdas, and a sink that adds up."""
    return (
        tf.from_iterable(range(n))
        | tf.map(lambda x: x + 1)
        | tf.filter(lambda x: x % 2 == 0)
        | tf.map(lambda x: x * 2)
        | tf.sink(add)
    )


async def trioflow_sink(n: int) -> int:
    """The pipeline as a user writes it: lambdas, and a sink that adds up."""
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    await linear_pipeline(n, add).run()
    return total


def linear_flow(n: int, add: Callable[[int], None], ops: Any = tf, head: Any = None) -> tf.Pipeline[Any]:
    """The ``linear`` pipeline into ``add``, its stages from ``ops`` (``trioflow`` or
    ``trioflow.otel``), with ``head`` (a stage) right after the source if given."""
    flow = tf.from_iterable(range(n)) if head is None else tf.from_iterable(range(n)) | head
    return (
        flow
        | ops.map(lambda x: x + 1)
        | ops.filter(lambda x: x % 2 == 0)
        | ops.map(lambda x: x * 2)
        | ops.sink(add)
    )


async def trioflow_started(n: int) -> int:
    """``trioflow_sink`` started with ``nursery.start`` and awaited through its handle: the
    "off" side of the metrics comparison, built exactly like the "on" side."""
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(linear_flow(n, add).run)
        await handle.wait()
    return total


#: How often the metrics variant scrapes its endpoint (Prometheus's default is every 15 s).
SCRAPE_HZ = 5


async def trioflow_metrics(n: int) -> int:
    """The same run with ``trioflow.metrics.serve`` on, scraped over HTTP at ``SCRAPE_HZ``
    from a client task in the same Trio thread, so the client's work counts against the run
    too (a Prometheus server would scrape from another process)."""
    from trioflow import metrics  # the metrics extra: imported only by this variant

    total = 0
    scrapes = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    async def scraper(port: int) -> None:
        nonlocal scrapes
        while True:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                response = bytearray()
                while data := await stream.receive_some():
                    response += data
            if b"trioflow_stage_items_total" not in response:
                raise RuntimeError(f"bad scrape: {bytes(response[:200])!r}")
            scrapes += 1
            await trio.sleep(1 / SCRAPE_HZ)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(linear_flow(n, add).run)
        port = await nursery.start(metrics.serve, handle, 0)
        nursery.start_soon(scraper, port)
        await handle.wait()
        nursery.cancel_scope.cancel()
    if scrapes < 1:
        raise RuntimeError("the endpoint was never scraped")
    return total


async def trioflow_otel_unsampled(n: int) -> int:
    """The linear pipeline with every stage built by ``trioflow.otel`` and ``sample(0.0)``:
    what tracing costs the items it does not sample (one wrapper call per traced stage)."""
    from trioflow import otel  # the otel extra: imported only by this variant

    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    await linear_flow(n, add, ops=otel, head=otel.sample(0.0)).run()
    return total


async def trioflow_reduce(n: int) -> int:
    """The same with ``reduce``, which returns the sum from ``run()``."""
    return await (
        tf.from_iterable(range(n))
        | tf.map(lambda x: x + 1)
        | tf.filter(lambda x: x % 2 == 0)
        | tf.map(lambda x: x * 2)
        | tf.reduce(operator.add, 0)
    ).run()


async def trioflow_dashboard(n: int) -> int:
    """``trioflow_sink`` watched by the live dashboard (``trioflow.display.dashboard``) drawing
    on a terminal console (into memory) at its default 2 Hz: what being watched costs."""
    import io

    from rich.console import Console

    from trioflow.display import dashboard

    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    pipeline = linear_pipeline(n, add)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await dashboard(handle, console=console)
    return total


# -- references ------------------------------------------------------------------------------


def generator_chain(n: int) -> int:
    """Plain Python, no Trio: the floor for per-item cost."""
    return sum(x * 2 for x in (x + 1 for x in range(n)) if x % 2 == 0)


def plain_same_functions(n: int) -> int:
    """Plain Python calling the same kind of functions trioflow is given (three lambdas and
    a sink function per item): what calling user code costs, before any framework."""
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    for x in map(lambda x: x * 2, filter(lambda x: x % 2 == 0, map(lambda x: x + 1, range(n)))):
        add(x)
    return total


async def trio_task_per_stage(n: int) -> int:
    """Hand-written Trio, one task per stage, memory channels between them, item by item."""
    total = 0

    async def source(out: trio.MemorySendChannel[int]) -> None:
        async with out:
            for x in range(n):
                await out.send(x)

    async def map_stage(fn, inp: trio.MemoryReceiveChannel[int], out: trio.MemorySendChannel[int]) -> None:
        async with inp, out:
            async for x in inp:
                await out.send(fn(x))

    async def filter_even(inp: trio.MemoryReceiveChannel[int], out: trio.MemorySendChannel[int]) -> None:
        async with inp, out:
            async for x in inp:
                if x % 2 == 0:
                    await out.send(x)

    async def sink(inp: trio.MemoryReceiveChannel[int]) -> None:
        nonlocal total
        async with inp:
            async for x in inp:
                total += x

    s1, r1 = trio.open_memory_channel[int](CHANNEL_CAPACITY)
    s2, r2 = trio.open_memory_channel[int](CHANNEL_CAPACITY)
    s3, r3 = trio.open_memory_channel[int](CHANNEL_CAPACITY)
    s4, r4 = trio.open_memory_channel[int](CHANNEL_CAPACITY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source, s1)
        nursery.start_soon(map_stage, lambda x: x + 1, r1, s2)
        nursery.start_soon(filter_even, r2, s3)
        nursery.start_soon(map_stage, lambda x: x * 2, r3, s4)
        nursery.start_soon(sink, r4)
    return total


async def trio_fused(n: int) -> int:
    """Hand-written Trio, every step inline in one task, checkpointing every 1024 items."""
    total = 0
    for start in range(0, n, CHECKPOINT_EVERY):
        for i in range(start, min(start + CHECKPOINT_EVERY, n)):
            x = i + 1
            if x % 2 == 0:
                total += x * 2
        await checkpoint()
    return total


def workload(n: int, reps: int) -> Workload:
    return Workload(
        name="linear",
        title=f"{n:,} ints -> map(x+1) -> filter(even) -> map(x*2) -> sum",
        baseline="generator",
        expected=expected_sum(n),
        reps=reps,
        variants=[
            Variant("generator", generator_chain,
                    "plain generator chain, no Trio", n),
            Variant("plain_same_fns", plain_same_functions,
                    "plain Python, the same lambdas + sink function, no Trio", n),
            Variant("trio_fused", trio_fused,
                    "hand-written Trio, all steps in one task", n),
            Variant("trioflow", trioflow_sink,
                    "from_iterable | map | filter | map | sink, lambdas", n),
            Variant("trioflow_dashboard", trioflow_dashboard,
                    "same, watched by the live dashboard (2 Hz, into memory)", n),
            Variant("trioflow_reduce", trioflow_reduce,
                    "same, ending in reduce(operator.add, 0)", n),
            Variant("trio_task_per_stage", trio_task_per_stage,
                    "hand-written Trio, a task per stage, memory channels", n),
            *peers.linear_variants(n),
        ],
        targets=[
            Target("trioflow time / generator time", "trioflow", "generator",
                   limit=3.0, at_most=True),
            # reported, no goal: at this size (tens of ms) the dashboard's last frame, drawn
            # once after the run ended, is most of the difference; see linear_watched
            Target("dashboard on / off (time; includes drawing the last frame)",
                   "trioflow_dashboard", "trioflow", limit=None, at_most=True, fmt="{:.3f}x"),
            Target("task-per-stage time / trioflow time (speed-up)", "trio_task_per_stage",
                   "trioflow", limit=45.0, at_most=False, fmt="{:.0f}x"),
        ],
        notes=[] if peers.HAVE_AIOSTREAM else [peers.MISSING_NOTE],
    )


def metrics_workload(n: int, reps: int) -> Workload:
    return Workload(
        name="linear_metrics",
        title=f"{n:,} ints through the linear pipeline: Prometheus endpoint off and on; otel stages",
        baseline="trioflow_started",
        expected=expected_sum(n),
        reps=reps,
        variants=[
            Variant("trioflow_started", trioflow_started,
                    "the linear pipeline via nursery.start + handle.wait (metrics off)", n),
            Variant("trioflow_metrics", trioflow_metrics,
                    f"same, trioflow.metrics.serve on, scraped over HTTP at {SCRAPE_HZ} Hz", n),
            Variant("trioflow", trioflow_sink, "the linear pipeline with run() (no handle)", n),
            Variant("trioflow_otel_unsampled", trioflow_otel_unsampled,
                    "every stage from trioflow.otel, sample(0.0): no item traced", n),
        ],
        targets=[
            Target("metrics on / metrics off (time)", "trioflow_metrics", "trioflow_started",
                   limit=1.05, at_most=True, fmt="{:.3f}x"),
            Target("otel stages, nothing sampled / plain stages (time)", "trioflow_otel_unsampled",
                   "trioflow", limit=None, at_most=True),
        ],
    )

def watched_workload(n: int, reps: int) -> Workload:
    """The trioflow variant of ``linear`` on a run long enough (a few seconds) for the
    dashboard to draw several frames while it goes: on against off, in one run."""
    return Workload(
        name="linear_watched",
        title=f"{n:,} ints, linear, with the live dashboard on and off",
        baseline="trioflow",
        expected=expected_sum(n),
        reps=reps,
        variants=[
            Variant("trioflow", trioflow_sink,
                    "from_iterable | map | filter | map | sink, lambdas", n),
            Variant("trioflow_dashboard", trioflow_dashboard,
                    "same, watched by the live dashboard (2 Hz, into memory)", n),
        ],
        targets=[
            Target("dashboard on / off (time)", "trioflow_dashboard", "trioflow",
                   limit=1.05, at_most=True, fmt="{:.3f}x"),
        ],
        measure=lambda: drawing_share(n),
        limits=[Limit("time drawing frames / run time (dashboard on)", "drawing_share", 0.05,
                      at_most=True, fmt="{:.1%}")],
    )


def drawing_share(n: int) -> dict[str, float]:
    """One more run with the dashboard on, timing every frame it draws (rich's
    ``Live.refresh``, wrapped for this pass only): the share of the run's time the Trio
    thread spent drawing. Unlike the on/off ratio, it does not move with the machine's
    other load, which on a shared machine is larger than the effect measured."""
    import time

    from rich.live import Live

    spent = 0.0
    frames = 0
    refresh = Live.refresh

    def timed_refresh(self: Live) -> None:
        nonlocal spent, frames
        start = time.perf_counter()
        refresh(self)
        spent += time.perf_counter() - start
        frames += 1

    Live.refresh = timed_refresh  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        trio.run(trioflow_dashboard, n)
        elapsed = time.perf_counter() - start
    finally:
        Live.refresh = refresh  # type: ignore[method-assign]
    return {"drawing_share": spent / elapsed, "frames": frames}
