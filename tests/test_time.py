"""The operators over time on the runtime, driven by ``MockClock`` (``autojump_clock``):
every test asserts the exact clock times at which results are emitted."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

Schedule = list[tuple[float, Any]]


def timed_source(schedule: Schedule, end: float) -> tf.Flow[Any]:
    """Emits each item at its time (relative to the run's start), then ends at ``end``."""

    async def produce(emit: tf.Emit[Any]) -> None:
        t0 = trio.current_time()
        for at, item in schedule:
            await trio.sleep_until(t0 + at)
            await emit(item)
        await trio.sleep_until(t0 + end)

    return tf.source(produce)


async def emissions(flow: tf.Flow[Any], stage: tf.Stage[Any, Any]) -> list[tuple[float, Any]]:
    seen: list[tuple[float, Any]] = []
    t0 = trio.current_time()
    await (flow | stage | tf.sink(lambda r: seen.append((trio.current_time() - t0, r)))).run()
    return seen


W = tf.WindowResult
SUM = tf.Fold(0, lambda acc, x: acc + x[2])


# -- processing time ------------------------------------------------------------------------


async def test_tumbling_processing_time_fires_at_each_window_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(1, "a"), (4, "b"), (12, "c"), (35, "d")], end=37)
    seen = await emissions(src, tf.window(tf.Tumbling(10), tf.CollectAll()))
    # windows fire when the clock reaches their end; the last one when the input ends
    assert seen == [(10, W(None, 0, 10, ["a", "b"])), (20, W(None, 10, 20, ["c"])),
                    (37, W(None, 30, 40, ["d"]))]


async def test_sliding_processing_time_keyed(autojump_clock: trio.testing.MockClock) -> None:
    src = timed_source([(1, ("k", 1)), (6, ("j", 2)), (6, ("k", 3))], end=100)
    seen = await emissions(src, tf.window(tf.Sliding(10, 5), tf.Reduce(lambda a, b: (a[0], a[1] + b[1])),
                                          key=lambda x: x[0]))
    # the item at 1 is in [-5, 5) and [0, 10); those at 6 in [0, 10) and [5, 15)
    assert seen == [
        (5, W("k", -5, 5, ("k", 1))),
        (10, W("k", 0, 10, ("k", 4))), (10, W("j", 0, 10, ("j", 2))),
        (15, W("j", 5, 15, ("j", 2))), (15, W("k", 5, 15, ("k", 3))),
    ]


async def test_session_processing_time_closes_after_the_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(0, ("a", 1)), (3, ("a", 2)), (4, ("b", 5)), (20, ("a", 7))], end=21)
    seen = await emissions(src, tf.window(tf.Session(5), tf.Fold(0, lambda acc, x: acc + x[1]),
                                          key=lambda x: x[0]))
    # a's session [0, 8) fires at 8, b's [4, 9) at 9; the last one at the end of input
    assert seen == [(8, W("a", 0, 8, 3)), (9, W("b", 4, 9, 5)), (21, W("a", 20, 25, 7))]


# -- event time -----------------------------------------------------------------------------


def ev(t: int, key: str = "k", v: int = 1) -> tuple[int, str, int]:
    return (t, key, v)


async def test_event_time_watermark_lateness_updates_and_late_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # one item per second of the clock (the item at clock time i is items[i])
    items = [ev(1), ev(8), ev(13, v=10), ev(5, v=100), ev(16), ev(4, v=1000), ev(21), ev(3)]
    src = timed_source(list(enumerate(items)), end=10)
    time = tf.EventTime(lambda x: x[0], max_delay=2, lateness=5)
    stage: tf.Stage[Any, Any] = tf.window(tf.Tumbling(10), SUM, key=lambda x: x[1], time=time, name="w")
    seen = await emissions(src, stage)
    assert seen == [
        (2, W("k", 0, 10, 2)),  # the watermark reached 13 - 2 = 11 >= 10
        (3, W("k", 0, 10, 102, update=True)),  # t=5 after it fired: within the lateness
        (5, W("k", 0, 10, 1102, update=True)),  # watermark 14: 10 + 5 > 14, still kept
        # at 6 the watermark is 19: [0, 10) is dropped (10 + 5 <= 19), so t=3 is too late
        (7, tf.Late(ev(3), 3, 19)),
        (10, W("k", 10, 20, 11)),  # 19 < 20: fires only when the input ends
        (10, W("k", 20, 30, 1)),
    ]


async def test_out_of_order_within_max_delay_is_not_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    items = [ev(3), ev(1), ev(12), ev(9), ev(11), ev(25), ev(19)]
    src = timed_source(list(enumerate(items)), end=10)
    time = tf.EventTime(lambda x: x[0], max_delay=6)
    seen = await emissions(src, tf.window(tf.Tumbling(10), SUM, time=time))
    assert seen == [(5, W(None, 0, 10, 3)), (10, W(None, 10, 20, 3)), (10, W(None, 20, 30, 1))]


async def test_idle_input_advances_the_watermark_with_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(0, ev(100)), (1, ev(104))], end=60)
    time = tf.EventTime(lambda x: x[0], max_delay=30, idle=5)
    seen = await emissions(src, tf.window(tf.Tumbling(10), SUM, time=time))
    # quiet from clock 1: idle at 6, when the watermark jumps to 104 + 5 = 109; it reaches
    # 110 at clock 7, and [100, 110) fires then, long before the input ends at 60
    assert seen == [(7, W(None, 100, 110, 2))]


async def test_late_items_to_dead_letters_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    letters: list[tf.DeadLetterEntry] = []
    src = timed_source(list(enumerate([ev(1), ev(30), ev(2, v=7)])), end=3)
    stage: tf.Stage[Any, Any] = tf.window(tf.Tumbling(10), SUM, time=tf.EventTime(lambda x: x[0]),
                      on_late=tf.DeadLetter(letters), name="w")
    out: list[Any] = []
    flow = src | stage | tf.sink(out.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await handle.wait()
        stats = handle.statistics().stage("w")
    assert out == [W(None, 0, 10, 1), W(None, 30, 40, 1)]
    assert [e.item for e in letters] == [ev(2, v=7)]
    assert isinstance(letters[0].exception, tf.LateItemError)
    assert (stats.late, stats.dead_lettered, stats.open_windows) == (1, 1, 0)


async def test_late_item_with_fail_policy_fails_the_run() -> None:
    flow = tf.from_iterable([ev(1), ev(30), ev(2)]) | tf.window(
        tf.Tumbling(10), SUM, time=tf.EventTime(lambda x: x[0]), on_late=tf.Fail())
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list(chunk_size=1)
    assert info.group_contains(tf.LateItemError)


async def test_statistics_count_open_window_state_per_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()

    async def produce(emit: tf.Emit[Any]) -> None:
        await emit.many([ev(1, "a"), ev(2, "b"), ev(3, "c"), ev(15, "a")])
        await gate.wait()

    out: list[Any] = []
    flow = tf.source(produce) | tf.window(tf.Tumbling(10), SUM, key=lambda x: x[1],
                                          time=tf.EventTime(lambda x: x[0], max_delay=100),
                                          name="w") | tf.sink(out.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().stage("w").open_windows == 4
        assert out == []
        gate.set()
        await handle.wait()
    assert len(out) == 4
    assert handle.statistics().stage("w").open_windows == 0


async def test_too_many_open_windows_fail_with_a_clear_error() -> None:
    flow = tf.from_iterable(range(10)) | tf.window(
        tf.Tumbling(10), tf.CollectAll(), key=lambda x: x, time=tf.EventTime(float),
        max_windows=5)
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    assert info.group_contains(tf.WindowLimitError, match="max_windows=5")


# -- end of stream, failure, cancellation ---------------------------------------------------


async def test_failed_run_fires_no_window(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []

    async def produce(emit: tf.Emit[int]) -> None:
        await emit.many([1, 2, 3])
        await trio.sleep(1)
        raise RuntimeError("boom")

    flow = tf.source(produce) | tf.window(tf.Tumbling(10), tf.CollectAll()) | tf.sink(seen.append)
    with pytest.raises(ExceptionGroup) as info:
        await flow.run()
    assert info.group_contains(RuntimeError)
    assert seen == []


async def test_cancelled_run_fires_no_window(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []

    async def produce(emit: tf.Emit[int]) -> None:
        await emit.many([1, 2, 3])
        await trio.sleep_forever()

    flow = tf.source(produce) | tf.window(tf.Tumbling(10), tf.CollectAll()) | tf.sink(seen.append)
    with trio.move_on_after(5):
        await flow.run()
    assert seen == []


async def test_user_function_error_fails_the_run_naming_the_stage() -> None:
    flow = tf.from_iterable([1, 2]) | tf.window(
        tf.Tumbling(10), tf.Reduce(lambda a, b: a / 0), time=tf.EventTime(float), name="win")
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    assert info.group_contains(ZeroDivisionError)
    assert "win" in str(info.value.exceptions[0].__notes__)


# -- rate control ---------------------------------------------------------------------------


async def test_throttle_token_bucket_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    seen = await emissions(tf.from_iterable(range(6)), tf.throttle(2, per=1, burst=3))
    # a full bucket of 3 goes at once, then one every 0.5 s
    assert seen == [(0, 0), (0, 1), (0, 2), (0.5, 3), (1.0, 4), (1.5, 5)]


async def test_throttle_refills_while_idle_and_never_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(0, "a"), (0, "b"), (0, "c"), (10, "d"), (10, "e"), (10, "f")], end=11)
    seen = await emissions(src, tf.throttle(1, per=2, burst=2))
    assert seen == [(0, "a"), (0, "b"), (2, "c"), (10, "d"), (10, "e"), (12, "f")]


async def test_throttle_backpressures_its_input(autojump_clock: trio.testing.MockClock) -> None:
    produced: list[float] = []

    async def produce(emit: tf.Emit[int]) -> None:
        for i in range(8):
            await emit(i)
            produced.append(trio.current_time())

    flow = tf.source(produce) | tf.throttle(1, buffer=2) | tf.sink(lambda x: None)
    await flow.run()
    # the producer runs ahead of the throttle (one item a second) by the edge's 2 items
    # and the one the throttle took: then each emit waits for a token to be used
    assert produced == [0, 0, 0, 1, 2, 3, 4, 5]


async def test_debounce_emits_the_last_item_after_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(0, 1), (1, 2), (2, 3), (10, 4), (20, 5), (21, 6)], end=22)
    flow = src | tf.debounce(3, name="d")
    seen: list[tuple[float, Any]] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            (flow | tf.sink(lambda r: seen.append((trio.current_time(), r)))).run)
        await handle.wait()
        stats = handle.statistics().stage("d")
    # 6 is pending when the input ends at 22: it goes at once
    assert seen == [(5, 3), (13, 4), (22, 6)]
    assert stats.superseded == 3


async def test_sample_emits_the_latest_each_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = timed_source([(1, "a"), (2, "b"), (7, "c"), (16, "d"), (19, "e")], end=19.5)
    seen = await emissions(src, tf.sample(5))
    # ticks at 5, 10, 15 (nothing new: no emission), 20; the input ends at 19.5 with "e"
    assert seen == [(5, "b"), (10, "c"), (19.5, "e")]


async def test_delay_shifts_every_item(autojump_clock: trio.testing.MockClock) -> None:
    src = timed_source([(0, "a"), (1, "b"), (1.5, "c"), (9, "d")], end=9)
    seen = await emissions(src, tf.delay(2))
    # "d" arrives as the input ends; it still waits its 2 s
    assert seen == [(2, "a"), (3, "b"), (3.5, "c"), (11, "d")]


async def test_delay_holds_at_most_max_pending(autojump_clock: trio.testing.MockClock) -> None:
    src = timed_source([(0, i) for i in range(5)], end=0)
    seen = await emissions(src, tf.delay(1, max_pending=2))
    # it takes two, waits until they are due and gone, then takes the next two
    assert seen == [(1, 0), (1, 1), (2, 2), (2, 3), (3, 4)]


# -- definition -----------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "match"), [
    (lambda: tf.Tumbling(0), "size must be a positive"),
    (lambda: tf.Sliding(5, 10), "step must be <= size"),
    (lambda: tf.Session(-1), "gap must be a positive"),
    (lambda: tf.EventTime(lambda x: x, max_delay=-1), "max_delay"),
    (lambda: tf.EventTime(lambda x: x, idle=0), "idle"),
    (lambda: tf.EventTime(3), "timestamp must be callable"),  # type: ignore[arg-type]
    (lambda: tf.window(tf.Tumbling(1), tf.CollectAll(), max_windows=0), "max_windows"),
    (lambda: tf.window(tf.Tumbling(1), tf.CollectAll(), backend=tf.Threads()), "Trio thread"),
    (lambda: tf.window(tf.Tumbling(1), "sum"), "aggregate must be"),  # type: ignore[arg-type]
    (lambda: tf.window(tf.Tumbling(1), tf.CollectAll(), on_late=tf.Skip()), "on_late"),  # type: ignore[arg-type]
    (lambda: tf.throttle(0), "rate"),
    (lambda: tf.throttle(1, burst=0), "burst"),
    (lambda: tf.debounce(-1), "quiet"),
    (lambda: tf.sample(0), "interval"),
    (lambda: tf.delay(float("nan")), "seconds"),
])
def test_bad_arguments_fail_at_definition(make: Any, match: str) -> None:
    with pytest.raises(tf.DefinitionError, match=match):
        make()


async def _nothing(emit: tf.Emit[Any]) -> None:
    pass


@pytest.mark.parametrize("stage", [
    tf.window(tf.Tumbling(1), tf.CollectAll(), name="w"),
    tf.debounce(1, name="w"), tf.sample(1, name="w"),
])
def test_time_operators_in_a_run_with_acknowledgements_are_refused_at_definition(
    stage: tf.Stage[Any, Any],
) -> None:
    flow = tf.source(_nothing, on_ack=lambda acks: None) | stage
    with pytest.raises(tf.DefinitionValueError, match="'w' does not carry acknowledgements"):
        flow.plan()


@pytest.mark.parametrize("stage", ["throttle", "delay"])
async def test_throttle_and_delay_carry_acknowledgements(
    autojump_clock: trio.testing.MockClock, stage: str,
) -> None:
    # they pass items on unchanged: each item is acknowledged when the sink has it, not
    # when it passed the rate control
    acks: list[tf.Ack] = []
    stored: list[tuple[float, int]] = []
    step = tf.throttle(1, per=1.0) if stage == "throttle" else tf.delay(1.0)
    acked_when_stored: list[bool] = []

    def store(x: int) -> None:
        acked_when_stored.append(x in {a.token for a in acks})
        stored.append((trio.current_time(), x))

    start = trio.current_time()
    await (tf.from_iterable([1, 2, 3], on_ack=acks.extend) | step | tf.sink(store)).run()
    assert [x for _, x in stored] == [1, 2, 3]
    assert acked_when_stored == [False, False, False]
    assert sorted(a.token for a in acks) == [1, 2, 3] and all(a.ok for a in acks)
    times = [round(t - start, 6) for t, _ in stored]
    assert times == ([0.0, 1.0, 2.0] if stage == "throttle" else [1.0, 1.0, 1.0])
