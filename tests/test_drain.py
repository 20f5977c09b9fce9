"""Graceful drain and signal handling: after a drain, every item a source handed over was
emitted, dead-lettered, skipped or filtered; a drain that takes too long aborts."""

import itertools
import os
import signal
from collections.abc import Iterator

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf
from trioflow.testing import assert_no_leftovers


@settings(max_examples=120, deadline=None)
@given(
    drain_at=st.floats(0, 30),
    concurrency=st.integers(1, 4),
    chunk_size=st.integers(1, 16),
    buffer=st.integers(1, 8),
    batch=st.integers(1, 5),
    source_kind=st.sampled_from(["iterable", "task", "periodic", "channel"]),
)
def test_drain_under_load_loses_nothing(
    drain_at: float, concurrency: int, chunk_size: int, buffer: int, batch: int, source_kind: str
) -> None:
    handed: list[int] = []

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            handed.append(i)
            yield i

    async def produce(emit: tf.Emit[int]) -> None:
        # a push source: it is not cancelled by a drain, it stops on its own
        for i in itertools.count():
            with emit.cancel_on_drain():
                await trio.sleep(0.1)
            if emit.draining:
                return
            handed.append(i)
            await emit(i)

    async def slow(x: int) -> int:
        await trio.sleep((x % 3) * 0.5)
        return x

    async def main() -> tuple[list[list[int]], tf.RunState]:
        if source_kind == "iterable":
            src: tf.Flow[int] = tf.from_iterable(numbers())
        elif source_kind == "task":
            src = tf.source(produce)
        elif source_kind == "periodic":
            src = tf.periodic(0.2) | tf.tap(handed.append)
        else:
            send, receive = trio.open_memory_channel[int](4)
            src = tf.from_channel(receive) | tf.tap(handed.append)
        pipeline = (
            src
            | tf.filter(lambda x: x % 7 != 3)
            | tf.map(slow, concurrency=concurrency)
            | tf.batch(batch, timeout=2)
            | tf.to_list()
        )
        async with trio.open_nursery() as nursery:
            if source_kind == "channel":
                async def feed() -> None:
                    with send:
                        for i in itertools.count():
                            try:
                                await send.send(i)
                            except trio.BrokenResourceError:
                                return
                nursery.start_soon(feed)
            handle = await nursery.start(lambda task_status: pipeline.run(
                chunk_size=chunk_size, buffer=buffer, task_status=task_status))
            await trio.sleep(drain_at)
            state = await handle.drain()
        return handle.result(), state

    batches, state = run_virtual(main)
    assert state is tf.RunState.COMPLETED
    got = [x for b in batches for x in b]
    assert all(0 < len(b) <= batch for b in batches)
    want = [x for x in handed if x % 7 != 3]
    assert got == want  # every handed-over item went through, once, in order


async def test_drain_timeout_aborts_a_stuck_run(autojump_clock: trio.testing.MockClock) -> None:
    async def stuck(x: int) -> None:
        await trio.sleep_forever()

    pipeline = tf.from_iterable(itertools.count()) | tf.sink(stuck)
    async with assert_no_leftovers(), trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        start = trio.current_time()
        state = await handle.drain(timeout=5)
    assert state is tf.RunState.CANCELLED
    assert trio.current_time() - start == 5


async def test_drain_lands_an_emit_that_was_waiting_for_room(autojump_clock: trio.testing.MockClock) -> None:
    emitted: list[int] = []

    async def produce(emit: tf.Emit[int]) -> None:
        for i in range(100):
            if emit.draining:
                return
            emitted.append(i)
            await emit(i)  # parks once the edge (buffer 2) is full

    got: list[int] = []

    async def slow(x: int) -> None:
        await trio.sleep(1)
        got.append(x)

    pipeline = tf.source(produce) | tf.sink(slow, buffer=2)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await trio.sleep(3.5)
        assert await handle.drain() is tf.RunState.COMPLETED
    assert got == emitted and len(got) < 100


async def test_run_until_signal_first_drains_second_aborts(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    pipeline = tf.from_iterable(itertools.count()) | tf.map(slow) | tf.to_list()
    async with trio.open_nursery() as nursery:
        async def send_one() -> None:
            await trio.sleep(10)
            os.kill(os.getpid(), signal.SIGTERM)

        nursery.start_soon(send_one)
        handle = await tf.run_until_signal(pipeline, drain_timeout=1000)
    assert handle.state is tf.RunState.COMPLETED
    assert handle.result() == list(range(len(handle.result())))

    async def stuck(x: int) -> None:
        await trio.sleep_forever()

    pipeline2 = tf.from_iterable(itertools.count()) | tf.sink(stuck)
    async with trio.open_nursery() as nursery:
        async def send_two() -> None:
            await trio.sleep(10)
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep(10)
            os.kill(os.getpid(), signal.SIGINT)

        nursery.start_soon(send_two)
        handle2 = await tf.run_until_signal(pipeline2, drain_timeout=1000)
    assert handle2.state is tf.RunState.CANCELLED
