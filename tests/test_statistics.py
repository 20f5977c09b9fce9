"""``handle.statistics()``: frozen snapshots of stages and edges, during and after a run."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf


async def _af(x: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return x


async def test_blocked_pipeline_statistics_and_completion() -> None:
    """A RUNNING pipeline blocked on a slow sink: the edge is full, the source waits."""
    release = trio.Event()

    async def slow_sink(x: int) -> None:
        await release.wait()

    pipeline = (
        tf.from_iterable(range(100), name="src")
        | tf.map(lambda x: x + 1, name="inc")
        | tf.sink(slow_sink, name="out", buffer=10)
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(functools.partial(pipeline.run, chunk_size=5))
        await trio.testing.wait_all_tasks_blocked()
        stats = handle.statistics()
        assert stats.state is tf.RunState.RUNNING
        assert handle.state is tf.RunState.RUNNING
        assert [s.name for s in stats.stages] == ["src", "inc", "out"]
        assert [s.segment for s in stats.stages] == [0, 0, 1]
        (edge,) = stats.edges
        assert edge.capacity == 10
        assert edge.depth == 10  # full
        assert edge.peak == 10
        assert edge.total == 15  # the sink took one chunk of 5, two more wait
        out = stats.stage("out")
        assert out.items_in == 5
        assert out.in_flight == 1
        assert out.items_out == 0
        inc = stats.stage("inc")
        # the fourth chunk went through the fused map and waits for room on the edge
        assert inc.items_in == inc.items_out == 20
        assert stats.stage("src").items_out == 20
        assert all(s.errors == 0 for s in stats.stages)

        release.set()
        assert await handle.wait() is tf.RunState.COMPLETED

    final = handle.statistics()
    assert final.state is tf.RunState.COMPLETED
    assert final.stage("src").items_out == 100
    assert final.stage("inc").items_in == final.stage("inc").items_out == 100
    assert final.stage("out").items_in == 100
    assert final.stage("out").in_flight == 0
    (edge,) = final.edges
    assert (edge.depth, edge.peak, edge.total) == (0, 10, 100)


async def test_statistics_are_frozen_snapshots() -> None:
    gate = trio.Event()

    async def wait(x: int) -> int:
        await gate.wait()
        return x

    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(3)) | tf.map(wait) | tf.to_list()).run)
        await trio.testing.wait_all_tasks_blocked()
        before = handle.statistics()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            before.state = tf.RunState.COMPLETED  # type: ignore[misc]
        gate.set()
    after = handle.statistics()
    assert before.state is tf.RunState.RUNNING
    assert before.stage("to_list").items_in == 0
    assert after.stage("to_list").items_in == 3
    assert handle.result() == [0, 1, 2]
    with pytest.raises(KeyError):
        after.stage("nope")


async def test_pool_statistics_workers_and_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    @asynccontextmanager
    async def res() -> AsyncIterator[str]:
        yield "r"

    gate = trio.Event()

    async def hold(x: int) -> int:
        await gate.wait()
        return x

    async def use(r: str, x: int) -> int:
        return x

    pipeline = (
        tf.from_iterable(range(20))
        | tf.map(hold, concurrency=3, name="pool")
        | tf.persistent(use, resource=res, workers=2, name="db")
        | tf.on_demand(lambda: _af, limit=4, name="od")
        | tf.to_list()
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await trio.testing.wait_all_tasks_blocked()
        stats = handle.statistics()
        pool = stats.stage("pool")
        assert pool.workers == 3
        assert pool.in_flight == 3
        assert pool.lifecycle is tf.Lifecycle.POOLED
        assert pool.operator == "map"
        assert stats.stage("db").workers == 2
        assert stats.stage("db").lifecycle is tf.Lifecycle.PERSISTENT
        assert stats.stage("od").workers == 4
        assert stats.stage("od").lifecycle is tf.Lifecycle.ON_DEMAND
        assert stats.stage("db").items_in == 0
        gate.set()
    final = handle.statistics()
    assert final.stage("pool").in_flight == 0
    assert final.stage("pool").items_in == final.stage("pool").items_out == 20
    assert final.stage("db").items_out == 20
    assert final.stage("od").items_out == 20
    assert final.stage("to_list").items_in == 20
    assert handle.result() == list(range(20))
    assert [e.total for e in final.edges] == [20, 20, 20]
    assert all(e.depth == 0 for e in final.edges)


async def test_ordered_pool_waiting_counts_reorder_buffer(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def first_slow(x: int) -> int:
        if x == 0:
            await gate.wait()
        return x

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            (tf.from_iterable(range(4)) | tf.map(first_slow, concurrency=4, name="m") | tf.to_list()).run
        )
        await trio.testing.wait_all_tasks_blocked()
        m = handle.statistics().stage("m")
        assert m.waiting == 3  # 1, 2, 3 finished, waiting for 0
        assert m.in_flight == 1
        assert m.items_out == 0
        gate.set()
    assert handle.statistics().stage("m").waiting == 0
    assert handle.result() == [0, 1, 2, 3]


async def test_edge_peak_never_exceeds_capacity() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            functools.partial(
                (tf.from_iterable(range(1000)) | tf.map(_af, buffer=10) | tf.to_list()).run, chunk_size=4
            )
        )
    (edge,) = handle.statistics().edges
    assert edge.capacity == 10
    assert 4 <= edge.peak <= 10
    assert edge.total == 1000
    assert handle.result() == list(range(1000))


async def test_edge_peak_single_oversized_chunk() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            functools.partial(
                (tf.from_iterable(range(1000)) | tf.map(_af, buffer=10) | tf.to_list()).run, chunk_size=256
            )
        )
    (edge,) = handle.statistics().edges
    # a chunk larger than the edge is admitted only when the edge is empty: never two
    assert edge.peak == 256
    assert edge.total == 1000


async def test_error_counter_and_failed_state() -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError(x)
        return x

    handle: tf.RunHandle[Any] | None = None
    with pytest.RaisesGroup(pytest.RaisesGroup(ValueError)):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start((tf.from_iterable(range(10)) | tf.map(_af) | tf.map(boom, name="b")
                                          | tf.to_list()).run)
    assert handle is not None
    assert handle.state is tf.RunState.FAILED
    stats = handle.statistics()
    assert stats.state is tf.RunState.FAILED
    assert stats.stage("b").errors == 1
    assert stats.stage("map").errors == 0
    with pytest.raises(RuntimeError, match="failed"):
        handle.result()


async def test_async_stage_error_counter() -> None:
    async def boom(x: int) -> int:
        await trio.lowlevel.checkpoint()
        raise ValueError(x)

    handle: tf.RunHandle[Any] | None = None
    with pytest.RaisesGroup(pytest.RaisesGroup(ValueError)):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start((tf.from_iterable(range(10)) | tf.map(boom, name="b")).run)
    assert handle is not None
    assert handle.statistics().stage("b").errors == 1
    assert handle.statistics().stage("b").in_flight == 0


async def test_state_transitions_running_to_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    states: list[tf.RunState] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.periodic(1.0) | tf.map(_af) | tf.to_list()).run)
        states.append(handle.state)
        await trio.sleep(2.5)
        states.append(handle.statistics().state)
        handle.cancel()
        states.append(await handle.wait())
    assert states == [tf.RunState.RUNNING, tf.RunState.RUNNING, tf.RunState.CANCELLED]
    stats = handle.statistics()
    assert stats.stage("periodic").items_out == 3
    assert stats.stage("to_list").items_in == 3


async def test_cancel_before_anything_runs() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(10)) | tf.map(_af) | tf.to_list()).run)
        handle.cancel()
    assert handle.state is tf.RunState.CANCELLED


@pytest.mark.parametrize("head", ["async map", "continuous", "source", "pool"])
async def test_error_in_fused_op_is_counted_once_on_that_op(head: str) -> None:
    """Regression: an error raised by a fused op reached its head through ``emit`` and was
    counted as an error of the head too."""

    async def forward(items: AsyncIterator[int], emit: tf.Emit[int]) -> None:
        async for x in items:
            await emit(x)

    gate = trio.Event()

    async def produce(emit: tf.Emit[int]) -> None:
        await gate.wait()  # start() must return before the failure, to get the handle
        for i in range(10):
            await emit(i)

    def boom(x: int) -> int:
        if x == 3:
            raise ValueError(x)
        return x

    src = tf.source(produce, name="h" if head == "source" else "src")
    if head == "async map":
        flow: tf.Flow[int] = src | tf.map(_af, name="h")
    elif head == "continuous":
        flow = src | tf.continuous(forward, name="h")
    elif head == "pool":
        flow = src | tf.map(_af, concurrency=2, name="h")
    else:
        flow = src
    handle: tf.RunHandle[Any] | None = None
    with pytest.RaisesGroup(pytest.RaisesGroup(ValueError)) as info:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start((flow | tf.map(boom, name="b")).run)
            gate.set()
    assert handle is not None
    stats = handle.statistics()
    assert stats.stage("b").errors == 1
    assert stats.stage("h").errors == 0
    (inner,) = info.value.exceptions
    assert isinstance(inner, ExceptionGroup)
    (leaf,) = inner.exceptions
    assert len(leaf.__notes__) == 1
    assert "'b'" in leaf.__notes__[0] and "item 3" in leaf.__notes__[0]
