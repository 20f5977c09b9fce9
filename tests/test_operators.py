"""Every operator against its docstring contract, with exact expected outputs."""

from __future__ import annotations

import itertools
import operator
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

# ------------------------------------------------------------------------------ helpers


async def _aiter(xs: list[Any]) -> AsyncIterator[Any]:
    for x in xs:
        await trio.lowlevel.checkpoint()
        yield x


async def _double(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return 2 * x


# ------------------------------------------------------------------------------ from_iterable


async def test_from_iterable_list() -> None:
    assert await tf.from_iterable([3, 1, 2]).to_list() == [3, 1, 2]


async def test_from_iterable_empty() -> None:
    assert await tf.from_iterable([]).to_list() == []


async def test_from_iterable_generator_across_chunk_boundaries() -> None:
    def gen() -> Iterator[int]:
        yield from range(10)

    assert await tf.from_iterable(gen()).to_list(chunk_size=3) == list(range(10))


async def test_from_iterable_can_be_run_twice_when_iterable_is_reiterable() -> None:
    flow = tf.from_iterable(range(4)) | tf.map(lambda x: x * x)
    assert await flow.to_list() == [0, 1, 4, 9]
    assert await flow.to_list() == [0, 1, 4, 9]


async def test_from_iterable_iteration_error_fails_run_noted_with_source() -> None:
    def gen() -> Iterator[int]:
        yield 1
        raise KeyError("broken iterator")

    with pytest.RaisesGroup(KeyError) as info:
        await tf.from_iterable(gen(), name="src").to_list()
    (leaf,) = info.value.exceptions
    assert any("'src'" in note for note in leaf.__notes__)


async def test_flow_run_drops_output_and_returns_none() -> None:
    seen: list[int] = []
    result = await (tf.from_iterable(range(3)) | tf.tap(seen.append)).run()
    assert result is None
    assert seen == [0, 1, 2]


# ------------------------------------------------------------------------ from_async_iterable


async def test_from_async_iterable_async_generator() -> None:
    assert await tf.from_async_iterable(_aiter([5, 6, 7])).to_list() == [5, 6, 7]


async def test_from_async_iterable_plain_async_iterator_without_aclose() -> None:
    class Counter:
        def __init__(self, n: int) -> None:
            self.i = 0
            self.n = n

        def __aiter__(self) -> Counter:
            return self

        async def __anext__(self) -> int:
            await trio.lowlevel.checkpoint()
            if self.i >= self.n:
                raise StopAsyncIteration
            self.i += 1
            return self.i

    assert await tf.from_async_iterable(Counter(4)).to_list() == [1, 2, 3, 4]


async def test_from_async_iterable_generator_is_aclosed_on_early_stop() -> None:
    events: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await trio.lowlevel.checkpoint()
                yield i
        finally:
            events.append("closed")

    agen = numbers()
    out = await (tf.from_async_iterable(agen) | tf.take(3)).to_list()
    assert out == [0, 1, 2]
    assert events == ["closed"]
    assert agen.ag_frame is None  # finished, not merely suspended


async def test_from_async_iterable_generator_is_aclosed_when_async_downstream_stops() -> None:
    events: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await trio.lowlevel.checkpoint()
                yield i
        finally:
            events.append("closed")

    out = await (tf.from_async_iterable(numbers()) | tf.map(_double) | tf.take(4)).to_list(
        chunk_size=2, buffer=2
    )
    assert out == [0, 2, 4, 6]
    assert events == ["closed"]


async def test_from_async_iterable_error_fails_run() -> None:
    async def bad() -> AsyncIterator[int]:
        yield 1
        raise OSError("read failed")

    with pytest.RaisesGroup(OSError) as info:
        await tf.from_async_iterable(bad()).to_list()
    assert "from_async_iterable" in "".join(info.value.exceptions[0].__notes__)


# ------------------------------------------------------------------------------ from_channel


async def test_from_channel_drains_what_is_waiting_and_ends_at_end_of_channel() -> None:
    send, receive = trio.open_memory_channel[int](10)
    for i in range(7):
        send.send_nowait(i)
    send.close()
    assert await tf.from_channel(receive).to_list(chunk_size=3) == list(range(7))


async def test_from_channel_with_live_producer_completes_when_all_senders_close() -> None:
    send, receive = trio.open_memory_channel[int](0)
    async with trio.open_nursery() as nursery:

        async def produce(ch: trio.MemorySendChannel[int]) -> None:
            async with ch:
                for i in range(20):
                    await ch.send(i)

        nursery.start_soon(produce, send.clone())
        nursery.start_soon(produce, send)
        out = await tf.from_channel(receive).to_list()
    assert sorted(out) == sorted(list(range(20)) * 2)


async def test_from_channel_is_closed_after_completion() -> None:
    send, receive = trio.open_memory_channel[int](5)
    spare = send.clone()
    send.send_nowait(1)
    send.close()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_channel(receive) | tf.take(1) | tf.to_list()).run)
    assert handle.result() == [1]
    with pytest.raises(trio.BrokenResourceError):
        spare.send_nowait(2)
    with pytest.raises(trio.BrokenResourceError):
        await spare.send(2)


async def test_from_channel_sender_gets_broken_resource_after_early_stop() -> None:
    send, receive = trio.open_memory_channel[int](100)
    for i in range(10):
        send.send_nowait(i)
    out = await (tf.from_channel(receive) | tf.take(3)).to_list()
    assert out == [0, 1, 2]
    with pytest.raises(trio.BrokenResourceError):
        await send.send(99)


async def test_from_channel_sender_gets_broken_resource_after_failure() -> None:
    send, receive = trio.open_memory_channel[int](100)
    send.send_nowait(1)

    def boom(x: int) -> None:
        raise RuntimeError(x)

    with pytest.RaisesGroup(RuntimeError):
        await (tf.from_channel(receive) | tf.sink(boom)).run()
    with pytest.raises(trio.BrokenResourceError):
        send.send_nowait(2)


async def test_from_channel_blocked_sender_is_woken_with_broken_resource() -> None:
    send, receive = trio.open_memory_channel[int](0)
    outcome: list[str] = []

    async def producer() -> None:
        try:
            for i in itertools.count():
                await send.send(i)
        except trio.BrokenResourceError:
            outcome.append("broken")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        assert await (tf.from_channel(receive) | tf.take(5)).to_list() == [0, 1, 2, 3, 4]
    assert outcome == ["broken"]


# ---------------------------------------------------------------------------------- periodic


async def test_periodic_tick_times_without_drift(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[int, float]] = []
    t0 = trio.current_time()
    await (tf.periodic(2.5, count=4) | tf.sink(lambda k: seen.append((k, trio.current_time())))).run()
    assert seen == [(k, t0 + k * 2.5) for k in range(4)]
    assert trio.current_time() == t0 + 3 * 2.5  # completes right after the last tick


async def test_periodic_count_zero_emits_nothing(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    assert await tf.periodic(1.0, count=0).to_list() == []
    assert trio.current_time() == t0


async def test_periodic_infinite_with_take(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    assert await (tf.periodic(0.5) | tf.take(5)).to_list() == [0, 1, 2, 3, 4]
    assert trio.current_time() == t0 + 4 * 0.5


async def test_periodic_infinite_is_cancelled_by_outer_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []
    with trio.move_on_after(10.5) as cs:
        await (tf.periodic(1.0) | tf.sink(seen.append)).run()
    assert cs.cancelled_caught
    assert seen == list(range(11))  # ticks at 0, 1, ..., 10


async def test_periodic_restarts_timing_after_a_long_stall_never_bursts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that holds the edge for many intervals must not get a burst of the
    ticks it missed: the tick that waited for room restarts the timing from now."""
    emitted: list[tuple[int, float]] = []
    seen: list[tuple[int, float]] = []
    t0 = trio.current_time()

    async def slow_first(k: int) -> None:
        seen.append((k, trio.current_time() - t0))
        if k == 0:
            await trio.sleep(10)

    await (
        tf.periodic(1.0, count=6)
        | tf.tap(lambda k: emitted.append((k, trio.current_time() - t0)))
        | tf.sink(slow_first, buffer=1)
    ).run()
    # tick 1 fits in the buffer of 1, tick 2 waits for room from t=2 to t=10; that wait
    # spans more than an interval, so timing restarts at t=10 (tick 3 at once, as the first
    # tick of a run) instead of emitting the ticks due at 3, 4, ..., 9
    assert emitted == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 10.0), (4, 11.0), (5, 12.0)]
    assert seen == [(0, 0.0), (1, 10.0), (2, 10.0), (3, 10.0), (4, 11.0), (5, 12.0)]


# ------------------------------------------------------------------------------------ source


async def test_source_without_task_status() -> None:
    async def produce(emit: tf.Emit[int]) -> None:
        for i in range(3):
            await emit(i)
        await emit.many([10, 11])
        await emit.many([])

    assert await tf.source(produce).to_list() == [0, 1, 2, 10, 11]


async def test_source_with_task_status_start_waits_for_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    gate = trio.Event()

    async def server(emit: tf.Emit[str], *, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(3)  # binding a port, say
        log.append("listening")
        task_status.started()
        await gate.wait()
        await emit("hello")

    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.source(server) | tf.to_list()).run)
        assert log == ["listening"]
        assert handle.state is tf.RunState.RUNNING
        gate.set()
    assert handle.result() == ["hello"]


async def test_source_emit_raises_cancelled_when_downstream_stops() -> None:
    log: list[str] = []

    async def produce(emit: tf.Emit[int]) -> None:
        try:
            for i in itertools.count():
                await emit(i)
        except trio.Cancelled:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    assert await (tf.source(produce) | tf.take(3)).to_list() == [0, 1, 2]
    assert log == ["cancelled", "finally"]


# ----------------------------------------------------------------------------------------- map


async def test_map_sync() -> None:
    assert await (tf.from_iterable(range(5)) | tf.map(lambda x: x + 10)).to_list() == [10, 11, 12, 13, 14]


async def test_map_async() -> None:
    assert await (tf.from_iterable(range(5)) | tf.map(_double)).to_list() == [0, 2, 4, 6, 8]


async def _sleep_for(x: int) -> int:
    await trio.sleep(x)
    return x


async def test_map_concurrent_ordered_keeps_input_order(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    out = await (tf.from_iterable([3, 1, 2, 5, 4]) | tf.map(_sleep_for, concurrency=5)).to_list()
    assert out == [3, 1, 2, 5, 4]
    assert trio.current_time() - t0 == 5  # the calls overlapped


async def test_map_concurrent_unordered_emits_by_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = await (
        tf.from_iterable([3, 1, 2, 5, 4]) | tf.map(_sleep_for, concurrency=5, ordered=False)
    ).to_list()
    assert out == [1, 2, 3, 4, 5]


async def test_map_concurrency_bounds_running_calls(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return x

    t0 = trio.current_time()
    out = await (tf.from_iterable(range(12)) | tf.map(work, concurrency=3)).to_list()
    assert out == list(range(12))
    assert peak == 3
    assert trio.current_time() - t0 == 4


@pytest.mark.parametrize(("window", "expected_started"), [(4, [0, 1, 2, 3]), (None, list(range(8)))])
async def test_map_window_bounds_items_started_ahead_of_the_oldest(
    autojump_clock: trio.testing.MockClock, window: int | None, expected_started: list[int]
) -> None:
    started: list[int] = []
    first_done: list[list[int]] = []

    async def work(x: int) -> int:
        started.append(x)
        await trio.sleep(100 if x == 0 else 1)
        if x == 0:
            first_done.append(list(started))
        return x

    out = await (
        tf.from_iterable(range(20)) | tf.map(work, concurrency=4, window=window)
    ).to_list()
    assert out == list(range(20))
    assert first_done == [expected_started]


# -------------------------------------------------------------------------------------- filter


async def test_filter_sync() -> None:
    assert await (tf.from_iterable(range(10)) | tf.filter(lambda x: x % 3 == 0)).to_list() == [0, 3, 6, 9]


async def test_filter_async() -> None:
    async def odd(x: int) -> bool:
        await trio.lowlevel.checkpoint()
        return x % 2 == 1

    assert await (tf.from_iterable(range(8)) | tf.filter(odd)).to_list() == [1, 3, 5, 7]


async def test_filter_uses_truthiness() -> None:
    assert await (tf.from_iterable([0, "", "a", None, [1], []]) | tf.filter(lambda x: x)).to_list() == [
        "a",
        [1],
    ]


# ------------------------------------------------------------------------------------ flat_map


async def test_flat_map_list_returning_fn() -> None:
    out = await (tf.from_iterable([1, 2, 3]) | tf.flat_map(lambda x: [x] * x)).to_list()
    assert out == [1, 2, 2, 3, 3, 3]


async def test_flat_map_sync_generator() -> None:
    def expand(x: int) -> Iterator[str]:
        for i in range(x):
            yield f"{x}.{i}"

    out = await (tf.from_iterable([0, 2, 1]) | tf.flat_map(expand)).to_list()
    assert out == ["2.0", "2.1", "1.0"]


async def test_flat_map_async_generator() -> None:
    async def expand(x: int) -> AsyncIterator[int]:
        for i in range(x):
            await trio.lowlevel.checkpoint()
            yield x * 10 + i

    out = await (tf.from_iterable([2, 0, 3]) | tf.flat_map(expand)).to_list()
    assert out == [20, 21, 30, 31, 32]


async def test_flat_map_async_fn_returning_iterable() -> None:
    async def expand(x: int) -> tuple[int, ...]:
        await trio.lowlevel.checkpoint()
        return tuple(range(x))

    out = await (tf.from_iterable([3, 0, 2]) | tf.flat_map(expand)).to_list()
    assert out == [0, 1, 2, 0, 1]


async def test_flat_map_async_generator_is_closed_when_downstream_stops() -> None:
    closed: list[int] = []

    async def expand(x: int) -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await trio.lowlevel.checkpoint()
                yield i
        finally:
            closed.append(x)

    out = await (tf.from_iterable([7, 8]) | tf.flat_map(expand) | tf.take(3)).to_list()
    assert out == [0, 1, 2]
    assert closed == [7]


# --------------------------------------------------------------------------------------- batch


async def test_batch_size_only() -> None:
    out = await (tf.from_iterable(range(10)) | tf.batch(3)).to_list(chunk_size=4)
    assert out == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


async def test_batch_exact_multiple_has_no_trailing_empty_batch() -> None:
    assert await (tf.from_iterable(range(4)) | tf.batch(2)).to_list() == [[0, 1], [2, 3]]
    assert await (tf.from_iterable([]) | tf.batch(2)).to_list() == []


async def _emit_at(emit: tf.Emit[str], schedule: list[tuple[float, str]], end: float) -> None:
    t0 = trio.current_time()
    for at, item in schedule:
        await trio.sleep_until(t0 + at)
        await emit(item)
    await trio.sleep_until(t0 + end)


async def _timed_batches(
    schedule: list[tuple[float, str]], end: float, size: int, batch_timeout: float
) -> list[tuple[float, list[str]]]:
    seen: list[tuple[float, list[str]]] = []
    t0 = trio.current_time()

    async def produce(emit: tf.Emit[str]) -> None:
        await _emit_at(emit, schedule, end)

    await (
        tf.source(produce)
        | tf.batch(size, timeout=batch_timeout)
        | tf.sink(lambda b: seen.append((trio.current_time() - t0, b)))
    ).run()
    return seen


async def test_batch_timeout_timer_starts_at_first_item_of_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await _timed_batches([(0, "a"), (4, "b"), (8, "c")], end=20, size=3, batch_timeout=5)
    # "a" waited 5 s at t=5 (not 5 s after "b"); "c" opened a new batch at t=8
    assert seen == [(5, ["a", "b"]), (13, ["c"])]


async def test_batch_timeout_never_emits_empty_batch_and_full_batches_go_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await _timed_batches(
        [(1, "a"), (1, "b"), (2, "c"), (30, "d")], end=60, size=2, batch_timeout=5
    )
    # the full batch leaves at once; long silences produce no (empty) batches
    assert seen == [(1, ["a", "b"]), (7, ["c"]), (35, ["d"])]


async def test_batch_timeout_flushes_partial_batch_at_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await _timed_batches([(0, "a"), (1, "b"), (2, "c")], end=3, size=5, batch_timeout=10)
    assert seen == [(3, ["a", "b", "c"])]


async def test_batch_timeout_timer_restarts_for_items_left_after_a_full_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[float, list[int]]] = []
    t0 = trio.current_time()

    async def produce(emit: tf.Emit[int]) -> None:
        await emit.many([1, 2, 3])  # one chunk: a full batch and one left over
        await trio.sleep(100)

    await (
        tf.source(produce)
        | tf.batch(2, timeout=4)
        | tf.sink(lambda b: seen.append((trio.current_time() - t0, b)))
    ).run()
    assert seen == [(0, [1, 2]), (4, [3])]


@pytest.mark.parametrize("batch_timeout", [None, 5.0])
async def test_batch_partial_not_flushed_when_run_fails(batch_timeout: float | None) -> None:
    seen: list[list[int]] = []

    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("source broke")

    for _ in range(20):
        with pytest.RaisesGroup(ValueError):
            await (
                tf.from_iterable(gen(), name="src")
                | tf.batch(10, timeout=batch_timeout)
                | tf.sink(seen.append)
            ).run(chunk_size=1)
    assert seen == []


# ---------------------------------------------------------------------------------------- take


async def test_take() -> None:
    assert await (tf.from_iterable(range(10)) | tf.take(3)).to_list() == [0, 1, 2]


async def test_take_more_than_available() -> None:
    assert await (tf.from_iterable(range(3)) | tf.take(10)).to_list() == [0, 1, 2]


async def test_take_zero_never_iterates_source() -> None:
    pulled: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(5):
            pulled.append(i)
            yield i

    assert await (tf.from_iterable(gen()) | tf.take(0)).to_list() == []
    assert pulled == []


async def test_take_stops_infinite_source_after_first_chunk() -> None:
    pulled = 0

    def gen() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    assert await (tf.from_iterable(gen()) | tf.take(5)).to_list(chunk_size=8) == [0, 1, 2, 3, 4]
    assert pulled == 8  # one chunk, nothing more


async def test_take_after_async_stage_stops_upstream() -> None:
    pulled = 0

    def gen() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    out = await (tf.from_iterable(gen()) | tf.map(_double) | tf.take(3)).to_list(chunk_size=4, buffer=8)
    assert out == [0, 2, 4]
    # bounded by what fits in flight: the map's chunk, the edge, one blocked chunk
    assert pulled <= 4 + 8 + 4


async def test_take_after_two_async_stages_stops_everything() -> None:
    async def inc(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x + 1

    out = await (
        tf.periodic(0.001) | tf.map(_double) | tf.map(inc, concurrency=3) | tf.take(4)
    ).to_list(chunk_size=2, buffer=2)
    assert out == [1, 3, 5, 7]


async def test_take_counts_across_chunks() -> None:
    assert await (tf.from_iterable(range(100)) | tf.take(7)).to_list(chunk_size=3) == list(range(7))


# ---------------------------------------------------------------------------------------- skip


async def test_skip() -> None:
    assert await (tf.from_iterable(range(6)) | tf.skip(2)).to_list() == [2, 3, 4, 5]


async def test_skip_across_chunks_zero_and_more_than_available() -> None:
    assert await (tf.from_iterable(range(10)) | tf.skip(5)).to_list(chunk_size=2) == [5, 6, 7, 8, 9]
    assert await (tf.from_iterable(range(3)) | tf.skip(0)).to_list() == [0, 1, 2]
    assert await (tf.from_iterable(range(3)) | tf.skip(5)).to_list() == []


async def test_skip_then_take() -> None:
    assert await (tf.from_iterable(itertools.count()) | tf.skip(3) | tf.take(2)).to_list() == [3, 4]


# ---------------------------------------------------------------------------------- take_while


async def test_take_while_sync() -> None:
    out = await (tf.from_iterable([1, 2, 3, 10, 1, 2]) | tf.take_while(lambda x: x < 5)).to_list()
    assert out == [1, 2, 3]


async def test_take_while_sync_stops_infinite_source() -> None:
    out = await (tf.from_iterable(itertools.count()) | tf.take_while(lambda x: x < 4)).to_list(chunk_size=3)
    assert out == [0, 1, 2, 3]


async def test_take_while_async() -> None:
    async def small(x: int) -> bool:
        await trio.lowlevel.checkpoint()
        return x < 5

    out = await (tf.from_iterable([1, 2, 3, 10, 1, 2]) | tf.take_while(small)).to_list()
    assert out == [1, 2, 3]


async def test_take_while_async_stops_infinite_source() -> None:
    async def small(x: int) -> bool:
        await trio.lowlevel.checkpoint()
        return x < 3

    out = await (tf.from_iterable(itertools.count()) | tf.take_while(small)).to_list()
    assert out == [0, 1, 2]


async def test_take_while_all_true() -> None:
    assert await (tf.from_iterable(range(4)) | tf.take_while(lambda x: True)).to_list() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------- scan


async def test_scan_emits_accumulated_values_not_initial() -> None:
    out = await (tf.from_iterable([1, 2, 3, 4]) | tf.scan(operator.add, 100)).to_list(chunk_size=3)
    assert out == [101, 103, 106, 110]


async def test_scan_async() -> None:
    async def concat(acc: str, x: int) -> str:
        await trio.lowlevel.checkpoint()
        return acc + str(x)

    out = await (tf.from_iterable([1, 2, 3]) | tf.scan(concat, "")).to_list()
    assert out == ["1", "12", "123"]


async def test_scan_empty_input_emits_nothing() -> None:
    assert await (tf.from_iterable([]) | tf.scan(operator.add, 0)).to_list() == []


# ----------------------------------------------------------------------------------------- tap


async def test_tap_sync_passes_items_unchanged() -> None:
    seen: list[int] = []
    out = await (tf.from_iterable([4, 5, 6]) | tf.tap(lambda x: seen.append(x * 2))).to_list()
    assert out == [4, 5, 6]
    assert seen == [8, 10, 12]


async def test_tap_async_passes_items_unchanged() -> None:
    seen: list[int] = []

    async def record(x: int) -> str:
        await trio.lowlevel.checkpoint()
        seen.append(x)
        return "ignored"

    out = await (tf.from_iterable([4, 5, 6]) | tf.tap(record)).to_list()
    assert out == [4, 5, 6]
    assert seen == [4, 5, 6]


# ---------------------------------------------------------------------------------- continuous


async def test_continuous_stateful_operator() -> None:
    async def pairs(items: AsyncIterator[int], emit: tf.Emit[tuple[int, int]]) -> None:
        prev = None
        async for x in items:
            if prev is not None:
                await emit((prev, x))
            prev = x
        await emit(("end", prev))

    out = await (tf.from_iterable([1, 2, 3]) | tf.continuous(pairs)).to_list()
    assert out == [(1, 2), (2, 3), ("end", 3)]


async def test_continuous_may_produce_without_input() -> None:
    async def prefix(items: AsyncIterator[int], emit: tf.Emit[Any]) -> None:
        await emit("header")
        async for x in items:
            await emit(x)
        await emit("footer")

    out = await (tf.from_iterable([]) | tf.continuous(prefix)).to_list()
    assert out == ["header", "footer"]


async def test_continuous_emit_raises_cancelled_when_downstream_stops() -> None:
    log: list[str] = []

    async def forever(items: AsyncIterator[int], emit: tf.Emit[int]) -> None:
        try:
            for i in itertools.count():
                await emit(i)
        except trio.Cancelled:
            log.append("cancelled")
            raise

    out = await (tf.from_iterable([1]) | tf.continuous(forever) | tf.take(2)).to_list()
    assert out == [0, 1]
    assert log == ["cancelled"]


# --------------------------------------------------------------------------------------- sinks


async def test_sink_sync() -> None:
    seen: list[int] = []
    assert await (tf.from_iterable(range(4)) | tf.sink(seen.append)).run() is None
    assert seen == [0, 1, 2, 3]


async def test_sink_async() -> None:
    seen: list[int] = []

    async def write(x: int) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(x)

    assert await (tf.from_iterable(range(4)) | tf.map(lambda x: -x) | tf.sink(write)).run() is None
    assert seen == [0, -1, -2, -3]


async def test_to_list_sink() -> None:
    assert await (tf.from_iterable("abc") | tf.to_list()).run() == ["a", "b", "c"]


async def test_to_list_after_async_stage() -> None:
    assert await (tf.from_iterable(range(300)) | tf.map(_double) | tf.to_list()).run() == [
        2 * i for i in range(300)
    ]


async def test_reduce_sync() -> None:
    assert await (tf.from_iterable(range(1, 6)) | tf.reduce(operator.mul, 1)).run() == 120


async def test_reduce_async() -> None:
    async def add(acc: list[int], x: int) -> list[int]:
        await trio.lowlevel.checkpoint()
        return [*acc, x]

    assert await (tf.from_iterable([3, 1, 2]) | tf.reduce(add, [])).run() == [3, 1, 2]


async def test_reduce_empty_returns_initial() -> None:
    assert await (tf.from_iterable([]) | tf.reduce(operator.add, 42)).run() == 42
