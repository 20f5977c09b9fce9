"""Error policies: skip, dead-letter, retry with backoff, timeouts, on every operator
that runs user code, fused or not, sequential or pooled."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf


class Boom(Exception):
    pass




# -- the invariant: emitted + dead-lettered + skipped + filtered == input, exactly once -----

MODES = ["sync", "async", "pool", "pool_unordered", "keyed", "retry_sync"]


def make_map(mode: str, bad: set[int], policy: tf.OnError) -> tf.Stage[int, int]:
    def fn(x: int) -> int:
        if x in bad:
            raise Boom(x)
        return x * 10

    async def afn(x: int) -> int:
        await trio.sleep(x % 3)
        return fn(x)

    if mode == "sync":
        return tf.map(fn, on_error=policy, name="m")
    if mode == "async":
        return tf.map(afn, on_error=policy, name="m")
    if mode == "pool":
        return tf.map(afn, concurrency=3, on_error=policy, name="m")
    if mode == "pool_unordered":
        return tf.map(afn, concurrency=3, ordered=False, on_error=policy, name="m")
    if mode == "keyed":
        return tf.map(afn, concurrency=3, key=lambda x: x % 2, per_key=2, ordered=False,
                      on_error=policy, name="m")
    assert mode == "retry_sync"
    return tf.map(fn, on_error=policy, retry=tf.Retry(attempts=2, backoff=tf.Backoff(min=0.5)), name="m")


@settings(max_examples=150, deadline=None)
@given(
    xs=st.lists(st.integers(0, 30), unique=True, max_size=40),
    bad=st.sets(st.integers(0, 30)),
    mode=st.sampled_from(MODES),
    skip=st.booleans(),
    chunk_size=st.integers(1, 8),
)
def test_every_item_is_emitted_dead_lettered_skipped_or_filtered_once(
    xs: list[int], bad: set[int], mode: str, skip: bool, chunk_size: int
) -> None:
    letters: list[tf.DeadLetterEntry] = []
    policy: tf.OnError = tf.Skip() if skip else tf.DeadLetter(letters)

    async def main() -> tuple[list[int], tf.RunStatistics]:
        flow = (
            tf.from_iterable(xs)
            | tf.filter(lambda x: x % 5 != 0, name="f")
            | make_map(mode, bad, policy)
        )
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(lambda task_status: (flow | tf.to_list()).run(
                chunk_size=chunk_size, task_status=task_status))
            await handle.wait()
        return handle.result(), handle.statistics()

    out, stats = run_virtual(main)
    filtered = [x for x in xs if x % 5 == 0]
    failed = [x for x in xs if x % 5 != 0 and x in bad]
    emitted = [x // 10 for x in out]
    seen = Counter(emitted) + Counter(filtered) + Counter(failed)
    assert seen == Counter(xs)  # exactly once each
    m = stats.stage("m")
    if skip:
        assert (m.skipped, m.dead_lettered, letters) == (len(failed), 0, [])
    else:
        assert m.dead_lettered == len(failed) and m.skipped == 0
        assert sorted(e.item for e in letters) == sorted(failed)
        assert all(isinstance(e.exception, Boom) and e.stage == "m" for e in letters)
        assert all(e.attempt == (2 if mode == "retry_sync" else 1) for e in letters)
    if mode in ("sync", "async", "pool", "retry_sync"):
        assert emitted == [x for x in xs if x % 5 != 0 and x not in bad]  # order kept


# -- each operator ---------------------------------------------------------------------------


def bad_on(values: set[int]):  # type: ignore[no-untyped-def]
    def check(x: int) -> int:
        if x in values:
            raise Boom(x)
        return x

    return check


async def test_skip_on_fused_operators() -> None:
    chk = bad_on({2})
    cases: list[tuple[tf.Stage[int, Any], list[Any]]] = [
        (tf.filter(lambda x: chk(x) % 2 == 0, on_error=tf.Skip()), [0, 4]),
        (tf.flat_map(lambda x: [chk(x)] * 2, on_error=tf.Skip()), [0, 0, 1, 1, 3, 3, 4, 4]),
        (tf.tap(chk, on_error=tf.Skip()), [0, 1, 3, 4]),
        (tf.take_while(lambda x: chk(x) < 4, on_error=tf.Skip()), [0, 1, 3]),
        (tf.scan(lambda a, x: a + chk(x), 0, on_error=tf.Skip()), [0, 1, 4, 8]),
    ]
    for stage, want in cases:
        assert await (tf.from_iterable(range(5)) | stage).to_list() == want, stage


async def test_flat_map_generator_failing_half_way_emits_nothing_of_that_item() -> None:
    def gen(x: int):  # type: ignore[no-untyped-def]
        yield x
        if x == 1:
            raise Boom(x)
        yield x

    async def agen(x: int):  # type: ignore[no-untyped-def]
        yield x
        if x == 1:
            raise Boom(x)
        yield x

    for fn in (gen, agen):
        out = await (tf.from_iterable(range(3)) | tf.flat_map(fn, on_error=tf.Skip())).to_list()
        assert out == [0, 0, 2, 2]


async def test_skip_on_sinks_and_reduce() -> None:
    got: list[int] = []
    chk = bad_on({1, 3})
    await (tf.from_iterable(range(5)) | tf.sink(lambda x: got.append(chk(x)), on_error=tf.Skip())).run()
    assert got == [0, 2, 4]
    total = await (tf.from_iterable(range(5)) | tf.reduce(lambda a, x: a + chk(x), 0,
                                                          on_error=tf.Skip())).run()
    assert total == 6


async def test_persistent_and_on_demand_skip(autojump_clock: trio.testing.MockClock) -> None:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def res():  # type: ignore[no-untyped-def]
        yield "r"

    async def use(r: str, x: int) -> int:
        await trio.sleep(1)
        return bad_on({3})(x)

    class Inst:
        async def __call__(self, x: int) -> int:
            await trio.sleep(1)
            return bad_on({4})(x)

    out = await (tf.from_iterable(range(6)) | tf.persistent(use, resource=res, workers=2,
                                                            on_error=tf.Skip())).to_list()
    assert out == [0, 1, 2, 4, 5]
    out = await (tf.from_iterable(range(6)) | tf.on_demand(Inst, limit=3, on_error=tf.Skip())).to_list()
    assert out == [0, 1, 2, 3, 5]


async def test_dead_letter_to_channel_file_and_function(tmp_path: Path) -> None:
    send, receive = trio.open_memory_channel[tf.DeadLetterEntry](10)
    out = await (tf.from_iterable(range(4)) | tf.map(bad_on({1}), on_error=tf.DeadLetter(send))).to_list()
    assert out == [0, 2, 3]
    entry = receive.receive_nowait()
    assert (entry.item, entry.attempt, entry.stage) == (1, 1, "map")
    assert "Boom" in entry.traceback

    path = tmp_path / "dead.jsonl"
    await (tf.from_iterable(range(4)) | tf.map(bad_on({2, 3}), on_error=tf.DeadLetter(path))).to_list()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["item"] for line in lines] == ["2", "3"]

    seen: list[int] = []
    to_fn = tf.DeadLetter(lambda e: seen.append(e.item))
    await (tf.from_iterable(range(4)) | tf.map(bad_on({0}), on_error=to_fn)).run()
    assert seen == [0]


async def test_retry_backoff_waits_follow_the_policy(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    async def flaky(x: int) -> int:
        calls.append(trio.current_time())
        if len(calls) < 4:
            raise Boom(x)
        return x

    start = trio.current_time()
    retry = tf.Retry(attempts=5, backoff=tf.Backoff(min=1, max=3, factor=2, jitter=0))
    out = await (tf.from_iterable([7]) | tf.map(flaky, retry=retry, name="r")).to_list()
    assert out == [7]
    waits = [b - a for a, b in zip([start, *calls], calls, strict=False)][1:]
    assert waits == [1, 2, 3]  # 1, 2, then 4 capped at 3


async def test_retry_gives_up_and_attempts_reach_the_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    letters: list[tf.DeadLetterEntry] = []

    async def always(x: int) -> int:
        raise Boom(x)

    retry = tf.Retry(attempts=3, backoff=tf.Backoff(min=0.1, jitter=0.5))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable([1, 2]) | tf.map(always, retry=retry,
                                      on_error=tf.DeadLetter(letters), name="a") | tf.to_list()).run)
        await handle.wait()
    assert [(e.item, e.attempt) for e in letters] == [(1, 3), (2, 3)]
    assert handle.statistics().stage("a").retries == 4


async def test_retry_only_on_matching_errors(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def wrong(x: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError(x)

    with pytest.RaisesGroup(KeyError):
        await (tf.from_iterable([1]) | tf.map(wrong, retry=tf.Retry(attempts=5, on=(Boom,)))).run()
    assert calls == 1


async def test_retries_do_not_block_other_items_of_a_pool(autojump_clock: trio.testing.MockClock) -> None:
    done: dict[int, float] = {}
    tries: Counter[int] = Counter()

    async def fn(x: int) -> int:
        tries[x] += 1
        if x == 0 and tries[x] < 3:
            raise Boom(x)
        await trio.sleep(1)
        done[x] = trio.current_time()
        return x

    retry = tf.Retry(attempts=3, backoff=tf.Backoff(min=10, jitter=0))
    out = await (tf.from_iterable(range(4)) | tf.map(fn, concurrency=2, ordered=False, retry=retry)).to_list()
    assert sorted(out) == [0, 1, 2, 3]
    assert max(done[1], done[2], done[3]) < done[0]  # the others finished while 0 backed off


async def test_timeout_is_an_error_like_any_other(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(x)
        return x

    out = await (tf.from_iterable([1, 5, 2]) | tf.map(slow, timeout=3, on_error=tf.Skip())).to_list()
    assert out == [1, 2]
    with pytest.RaisesGroup(trio.TooSlowError):
        await (tf.from_iterable([1, 5]) | tf.map(slow, timeout=3)).run()


def test_policy_definition_errors() -> None:
    with pytest.raises(tf.DefinitionValueError, match="timeout needs an async fn"):
        tf.map(abs, timeout=1)
    with pytest.raises(tf.DefinitionTypeError, match="on_error"):
        tf.map(abs, on_error="skip")  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionValueError, match="attempts"):
        tf.Retry(attempts=0)
    with pytest.raises(tf.DefinitionValueError, match="max of Backoff"):
        tf.Backoff(min=2, max=1)
    with pytest.raises(tf.DefinitionTypeError, match="target"):
        tf.DeadLetter(42)
    from trioflow._stage import TakeStage

    with pytest.raises(tf.DefinitionValueError, match="no user code"):
        TakeStage(count=3, on_error=tf.Skip())


def test_policies_change_fusion() -> None:
    plan = (tf.from_iterable([1]) | tf.map(abs, on_error=tf.Skip()) | tf.map(abs, retry=tf.Retry())).plan()
    assert [[n.name for n in s.nodes] for s in plan.segments] == [
        ["from_iterable", "map"], ["map_2", "discard"]
    ]


async def test_fail_is_still_the_default_and_downstream_errors_are_not_skipped() -> None:
    def boom(x: int) -> int:
        raise Boom(x)

    async def ident(x: int) -> int:
        return x

    # the async stage skips its own errors, not those of the fused stage after it
    with pytest.RaisesGroup(Boom):
        await (tf.from_iterable([1]) | tf.map(ident, on_error=tf.Skip()) | tf.map(boom)).run()


async def test_collect_finishes_the_run_then_raises_every_failure() -> None:
    got: list[int] = []
    pipeline = (
        tf.from_iterable(range(10))
        | tf.map(bad_on({2, 5}), on_error=tf.Collect(), name="check")
        | tf.sink(got.append)
    )
    handles = []
    # the run's group (Boom, Boom) arrives wrapped by the test's own nursery
    with pytest.RaisesGroup(pytest.RaisesGroup(Boom, Boom)):
        async with trio.open_nursery() as nursery:
            handles.append(await nursery.start(pipeline.run))
    (handle,) = handles
    assert got == [0, 1, 3, 4, 6, 7, 8, 9]  # the run completed: every other item went through
    assert handle.state is tf.RunState.COMPLETED
    assert [(e.item, e.stage) for e in handle.failures()] == [(2, "check"), (5, "check")]
    assert handle.statistics().stage("check").dead_lettered == 2


async def test_collect_report_and_single_group_level() -> None:
    collect = tf.map(bad_on({1, 4}), on_error=tf.Collect(), name="c")
    pipeline = tf.from_iterable(range(6)) | collect | tf.to_list()
    with pytest.RaisesGroup(Boom, Boom, flatten_subgroups=False) as info:
        await pipeline.run()
    assert "completed" in str(info.value)
    assert sorted(e.args[0] for e in info.value.exceptions) == [1, 4]
    assert all(any("'c'" in n for n in e.__notes__) for e in info.value.exceptions)


async def test_parallel_block_follows_the_stage_error_policy(autojump_clock: trio.testing.MockClock) -> None:
    tries: Counter[int] = Counter()

    async def flaky(x: int) -> int:
        tries[x] += 1
        if x == 1 and tries[x] < 2:
            raise Boom(x)
        if x == 2:
            raise Boom(x)
        return x

    async def double(x: int) -> int:
        return 2 * x

    letters: list[tf.DeadLetterEntry] = []
    stage = tf.parallel(flaky, double, on_error=tf.DeadLetter(letters),
                        retry=tf.Retry(attempts=2, backoff=tf.Backoff(min=1, jitter=0)))
    out = await (tf.from_iterable(range(4)) | stage).to_list()
    assert out == [(0, 0), (1, 2), (3, 6)]
    assert [(e.item, e.attempt) for e in letters] == [(2, 2)]


# -- with the public testing kit: fault schedules over every policy ---------------------------

from trioflow import testing as tft  # noqa: E402
from trioflow.testing import strategies as tfs  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(
    schedule=tfs.fault_schedules(20),
    run=tfs.run_settings(),
    policy=st.sampled_from(["skip", "dead_letter", "collect"]),
    pooled=st.booleans(),
)
def test_fault_schedules_with_the_testing_kit(
    schedule: frozenset[int], run: tfs.RunSettings, policy: str, pooled: bool
) -> None:
    letters: list[tf.DeadLetterEntry] = []
    on_error: tf.OnError = {"skip": tf.Skip(), "dead_letter": tf.DeadLetter(letters),
                            "collect": tf.Collect()}[policy]

    async def triple(x: int) -> int:
        await trio.sleep(x % 2)
        return 3 * x

    faulty = tft.fail_on_call(triple, schedule)
    stage = tf.map(faulty, concurrency=3 if pooled else 1, on_error=on_error, name="t")

    async def main() -> tft.RunResult[int]:
        return await tft.run_on_list(stage, range(20), chunk_size=run.chunk_size, buffer=run.buffer)

    result = run_virtual(main)
    # calls are numbered in the order they start: with one worker that is item order
    failed_calls = set(faulty.faulted)
    assert failed_calls == set(schedule)
    assert len(result.outputs) + len(failed_calls) == 20
    assert sorted(result.outputs) == result.outputs  # ordered
    stats = result.statistics
    assert stats is not None
    t = stats.stage("t")
    if policy == "skip":
        assert result.ok and t.skipped == len(failed_calls)
    elif policy == "dead_letter":
        assert result.ok and len(letters) == t.dead_lettered == len(failed_calls)
        assert sorted(e.item for e in letters) == sorted(set(range(20)) - {x // 3 for x in result.outputs})
    else:
        assert len(result.errors) == len(failed_calls) == t.dead_lettered
        assert all(isinstance(e, tft.InjectedFault) for e in result.errors)
