"""Keyed concurrency, adaptive pools, and overflow policies wired through stages."""

import functools
from collections import defaultdict

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), max_size=40),
    concurrency=st.integers(1, 6),
    per_key=st.integers(1, 3),
    ordered=st.booleans(),
    chunk_size=st.integers(1, 8),
)
def test_keyed_map_keeps_per_key_order(
    items: list[tuple[int, int]], concurrency: int, per_key: int, ordered: bool, chunk_size: int
) -> None:
    per_key = min(per_key, concurrency)
    running: dict[int, int] = defaultdict(int)
    peak_running: dict[int, int] = defaultdict(int)
    started: dict[int, list[int]] = defaultdict(list)

    async def work(x: tuple[int, int, int]) -> tuple[int, int, int]:
        key, delay, index = x
        started[key].append(index)
        running[key] += 1
        peak_running[key] = max(peak_running[key], running[key])
        await trio.sleep(delay)
        running[key] -= 1
        return x

    indexed = [(k, d, i) for i, (k, d) in enumerate(items)]

    async def main() -> list[tuple[int, int, int]]:
        stage = tf.map(work, concurrency=concurrency, key=lambda x: x[0], per_key=per_key,
                       ordered=ordered)
        return await (tf.from_iterable(indexed) | stage).to_list(chunk_size=chunk_size)

    out = run_virtual(main)
    assert sorted(out) == sorted(indexed)  # nothing lost or duplicated
    if ordered:
        assert out == indexed
    for key in {k for k, _, _ in indexed}:
        want = [i for k, _, i in indexed if k == key]
        assert [i for k, _, i in out if k == key] == want  # handed on in input order per key
        assert started[key] == want  # and started in input order
        assert peak_running[key] <= per_key


async def test_keyed_map_runs_different_keys_in_parallel(autojump_clock: trio.testing.MockClock) -> None:
    async def work(x: int) -> int:
        await trio.sleep(1)
        return x

    start = trio.current_time()
    out = await (tf.from_iterable(range(8)) | tf.map(work, concurrency=4, key=lambda x: x % 4)).to_list()
    assert out == list(range(8))
    assert trio.current_time() - start == pytest.approx(2)  # 4 keys in parallel, 2 items each


def test_keyed_definition_errors() -> None:
    async def f(x: int) -> int:
        return x

    with pytest.raises(tf.DefinitionValueError, match="per_key"):
        tf.map(f, concurrency=2, per_key=2)
    with pytest.raises(tf.DefinitionValueError, match="per_key"):
        tf.map(f, concurrency=2, key=abs, per_key=3)
    with pytest.raises(tf.DefinitionTypeError, match="key"):
        tf.map(f, concurrency=2, key=f)  # type: ignore[arg-type]


async def test_adaptive_pool_grows_and_shrinks(autojump_clock: trio.testing.MockClock) -> None:
    sizes: list[int] = []
    peak = 0
    running = 0

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return x

    async def slow_source(emit: tf.Emit[int]) -> None:
        await emit.many(list(range(40)))  # a burst...
        await trio.sleep(10)  # ...then quiet, long enough for idle workers to exit
        await emit(40)

    pipeline = tf.source(slow_source) | tf.map(work, concurrency=tf.Adaptive(min=2, max=8, idle=0.5),
                                             name="work") | tf.to_list()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await trio.sleep(0.1)
        sizes.append(handle.statistics().stage("work").workers)
        await trio.sleep(8)
        sizes.append(handle.statistics().stage("work").workers)
        await handle.wait()
    assert handle.result() == list(range(41))
    assert sizes[0] == 8 and peak == 8  # grew to max under the burst
    assert sizes[1] == 2  # shrank back to min when idle


def test_adaptive_validation() -> None:
    with pytest.raises(tf.DefinitionValueError, match="max"):
        tf.Adaptive(min=4, max=2)
    with pytest.raises(tf.DefinitionValueError, match="idle"):
        tf.Adaptive(max=2, idle=0)


async def test_overflow_drop_newest_counts_dropped(autojump_clock: trio.testing.MockClock) -> None:
    got: list[int] = []

    async def slow_sink(x: int) -> None:
        await trio.sleep(1)
        got.append(x)

    async def burst(emit: tf.Emit[int]) -> None:
        await emit.many(list(range(10)))

    pipeline = tf.source(burst) | tf.sink(slow_sink, buffer=4, overflow=tf.Overflow.DROP_NEWEST)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(functools.partial(pipeline.run, chunk_size=4))
        await handle.wait()
    (edge,) = handle.statistics().edges
    assert got == [0, 1, 2, 3]
    assert (edge.dropped, edge.total, edge.overflow) == (6, 4, tf.Overflow.DROP_NEWEST)


async def test_overflow_keep_latest_conflates(autojump_clock: trio.testing.MockClock) -> None:
    got: list[int] = []

    async def slow_sink(x: int) -> None:
        await trio.sleep(1)
        got.append(x)

    async def ticks(emit: tf.Emit[int]) -> None:
        for i in range(20):
            await emit(i)
            await trio.sleep(0.3)

    await (tf.source(ticks) | tf.sink(slow_sink, overflow=tf.Overflow.KEEP_LATEST)).run()
    assert got[0] == 0 and got[-1] == 19
    assert got == sorted(got) and len(got) < 20  # only the newest value survives


async def test_overflow_fail_fails_the_run() -> None:
    async def never(x: int) -> None:
        await trio.sleep_forever()

    with pytest.RaisesGroup(tf.EdgeOverflowError):
        await (tf.from_iterable(range(100)) | tf.sink(never, buffer=8, overflow=tf.Overflow.FAIL)).run(
            chunk_size=8
        )


def test_overflow_definition_checks() -> None:
    async def f(x: int) -> None: ...

    with pytest.raises(tf.DefinitionValueError, match="UNBOUNDED"):
        tf.sink(f, buffer=tf.UNBOUNDED, overflow=tf.Overflow.DROP_OLDEST)
    with pytest.raises(tf.DefinitionValueError, match="chunk_size"):
        (tf.from_iterable([1]) | tf.sink(f, buffer=4, overflow=tf.Overflow.DROP_NEWEST)).plan(chunk_size=16)
    with pytest.raises(tf.DefinitionTypeError, match="overflow"):
        tf.sink(f, overflow="drop")  # type: ignore[arg-type]


async def test_unbounded_edge_never_blocks_producer() -> None:
    gate = trio.Event()

    async def held(x: int) -> None:
        await gate.wait()

    async def src(emit: tf.Emit[int]) -> None:
        await emit.many(list(range(5000)))
        gate.set()  # reached only because the unbounded edge took everything at once

    pipeline = tf.source(src) | tf.sink(held, buffer=tf.UNBOUNDED)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await handle.wait()
    (edge,) = handle.statistics().edges
    assert edge.capacity is None and edge.peak == 5000


# -- de-synchronising a pool whose calls end together (issue 9: the I/O pool target) --------


async def _start_times(n: int, concurrency: int, durations: list[float], ordered: bool) -> tuple[
        list[float], list[int], float]:
    starts: list[float] = []

    async def call(i: int) -> int:
        starts.append(trio.current_time())
        await trio.sleep(durations[i % len(durations)])
        return i

    t0 = trio.current_time()
    out = await (tf.from_iterable(range(n))
                 | tf.map(call, concurrency=concurrency, ordered=ordered)).to_list()
    return [s - t0 for s in starts], out, trio.current_time() - t0


@pytest.mark.parametrize("ordered", [True, False])
async def test_pool_spreads_calls_that_end_together(
    autojump_clock: trio.testing.MockClock, ordered: bool
) -> None:
    # 64 calls of 1 s started together end together (lock-step); with 640 items queued the
    # pool spreads the next starts over one call's length, as 64 evenly phased workers
    starts, out, took = await _start_times(640, 64, [1.0], ordered)
    assert (out if ordered else sorted(out)) == list(range(640))
    assert starts[:64] == [0.0] * 64  # the first wave starts at once: no latency added
    second = sorted(starts[64:128])
    assert len({round(s, 6) for s in second}) >= 32  # spread, not one instant
    assert second[0] >= 1.0 and second[-1] < 2.0  # within one call's length
    # the cost is bounded: at most one call's length on top of the 10 waves
    assert took <= 11.0


async def test_pool_does_not_delay_a_short_burst(autojump_clock: trio.testing.MockClock) -> None:
    # after the first wave fewer than 64 items wait: no spreading, the run takes 2 waves
    starts, out, took = await _start_times(128, 64, [1.0], True)
    assert out == list(range(128))
    assert sorted(set(starts)) == [0.0, 1.0]
    assert took == 2.0


async def test_pool_never_delays_calls_of_uneven_length(
    autojump_clock: trio.testing.MockClock
) -> None:
    # calls of different lengths do not end together, so no worker ever waits: every call
    # starts the moment a worker is free (the same schedule as a pool without spreading)
    durations = [0.5 + (i * 37 % 64) / 64 for i in range(64)]
    starts, out, _ = await _start_times(640, 64, durations, True)
    assert out == list(range(640))
    # replay: a free worker takes the next item at once, so each start is the earliest end
    free = [0.0] * 64
    expected = []
    for i in range(640):
        t = min(free)
        expected.append(t)
        free[free.index(t)] = t + durations[i % 64]
    assert sorted(starts) == pytest.approx(sorted(expected))
