"""The everyday operators: skip_while, take_last, distinct, distinct_until_changed,
start_with, enumerate, concat, concurrency= on filter/tap/flat_map/sink, and the outcome
re-exports for parallel(...).

Property tests compare each operator with a plain-Python reference across chunk sizes,
buffers and modes (fused plain function, async function in a task, worker pool);
contract tests check when each emits, what a failed or cancelled run emits, and the
backpressure bound of a concurrent flat_map over async generators."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf

SETTINGS = settings(max_examples=40, deadline=None)
xs_strategy = st.lists(st.integers(-20, 20), max_size=60)
run_args = st.fixed_dictionaries({"chunk_size": st.integers(1, 9), "buffer": st.integers(1, 6)})


def _run(flow: tf.Flow[Any], run: dict[str, int]) -> list[Any]:
    return run_virtual(lambda: flow.to_list(**run))  # type: ignore[no-any-return]


def _async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same function as an async one (runs in a task, not fused), yielding once."""
    async def afn(*args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    return afn


async def _slow_numbers(xs: list[int]) -> AsyncIterator[int]:
    for x in xs:  # small async chunks upstream: the op sees chunk boundaries everywhere
        await trio.sleep(0.001)
        yield x


def _source(xs: list[int], slow: bool) -> tf.Flow[int]:
    return tf.from_async_iterable(_slow_numbers(xs)) if slow else tf.from_iterable(xs)


# -- references ----------------------------------------------------------------------------------


def ref_distinct(xs: list[Any], key: Callable[[Any], Hashable], max_keys: int | None) -> list[Any]:
    recent: list[Hashable] = []  # most recent last
    out = []
    for x in xs:
        k = key(x)
        if k in recent:
            recent.remove(k)
            recent.append(k)
            continue
        out.append(x)
        recent.append(k)
        if max_keys is not None and len(recent) > max_keys:
            recent.pop(0)
    return out


def ref_until_changed(xs: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    return [next(group) for _, group in itertools.groupby(xs, key)]


KEYS: dict[str, Callable[[int], int]] = {"id": lambda x: x, "mod3": lambda x: x % 3,
                                         "abs": abs, "sign": lambda x: (x > 0) - (x < 0)}
PREDS: dict[str, Callable[[int], bool]] = {"neg": lambda x: x < 0, "small": lambda x: abs(x) < 10,
                                           "always": lambda x: True, "never": lambda x: False}


# -- property tests: fused and async variants against the references -----------------------------


@SETTINGS
@given(xs=xs_strategy, pred=st.sampled_from(sorted(PREDS)), is_async=st.booleans(),
       slow=st.booleans(), run=run_args)
def test_skip_while_matches_dropwhile(xs: list[int], pred: str, is_async: bool, slow: bool,
                                      run: dict[str, int]) -> None:
    fn = _async(PREDS[pred]) if is_async else PREDS[pred]
    got = _run(_source(xs, slow) | tf.skip_while(fn), run)
    assert got == list(itertools.dropwhile(PREDS[pred], xs))


@SETTINGS
@given(xs=xs_strategy, n=st.integers(0, 70), slow=st.booleans(), run=run_args)
def test_take_last_matches_slice(xs: list[int], n: int, slow: bool, run: dict[str, int]) -> None:
    got = _run(_source(xs, slow) | tf.take_last(n), run)
    assert got == (xs[-n:] if n else [])


@SETTINGS
@given(xs=xs_strategy, key=st.sampled_from(sorted(KEYS)), max_keys=st.none() | st.integers(1, 5),
       is_async=st.booleans(), slow=st.booleans(), run=run_args)
def test_distinct_matches_reference(xs: list[int], key: str, max_keys: int | None,
                                    is_async: bool, slow: bool, run: dict[str, int]) -> None:
    fn = _async(KEYS[key]) if is_async else KEYS[key]
    got = _run(_source(xs, slow) | tf.distinct(fn, max_keys=max_keys), run)
    assert got == ref_distinct(xs, KEYS[key], max_keys)


@SETTINGS
@given(xs=xs_strategy, key=st.sampled_from(sorted(KEYS)), is_async=st.booleans(),
       slow=st.booleans(), run=run_args)
def test_distinct_until_changed_matches_groupby(xs: list[int], key: str, is_async: bool,
                                                slow: bool, run: dict[str, int]) -> None:
    fn = _async(KEYS[key]) if is_async else KEYS[key]
    got = _run(_source(xs, slow) | tf.distinct_until_changed(fn), run)
    assert got == ref_until_changed(xs, KEYS[key])


@SETTINGS
@given(xs=xs_strategy, prefix=st.lists(st.integers(), max_size=4), start=st.integers(-5, 5),
       slow=st.booleans(), run=run_args)
def test_start_with_and_enumerate_match_reference(xs: list[int], prefix: list[int], start: int,
                                                  slow: bool, run: dict[str, int]) -> None:
    got = _run(_source(xs, slow) | tf.start_with(*prefix) | tf.enumerate(start), run)
    assert got == list(enumerate([*prefix, *xs], start))


@SETTINGS
@given(parts=st.lists(xs_strategy, min_size=1, max_size=4), slow=st.booleans(), run=run_args)
def test_concat_matches_chain(parts: list[list[int]], slow: bool, run: dict[str, int]) -> None:
    flow = tf.concat(*(_source(p, slow) | tf.map(lambda x: x * 2) for p in parts)) | tf.map(abs)
    assert _run(flow, run) == [abs(x * 2) for p in parts for x in p]


async def _jitter(x: int) -> None:
    await trio.sleep((x * 7919 % 13) / 1000)  # deterministic, out-of-order finishing times


async def _afilter(x: int) -> bool:
    await _jitter(x)
    return x % 3 != 0


async def _aflat(x: int) -> list[int]:
    await _jitter(x)
    return [x] * (x % 3)


async def _agen(x: int) -> AsyncIterator[int]:
    for i in range(x % 4):
        await _jitter(x + i)
        yield x * 10 + i


@SETTINGS
@given(xs=st.lists(st.integers(0, 50), max_size=40), op=st.sampled_from(["filter", "tap", "flat",
       "gen"]), concurrency=st.integers(1, 6), ordered=st.booleans(), run=run_args)
def test_concurrent_operators_match_reference(xs: list[int], op: str, concurrency: int,
                                              ordered: bool, run: dict[str, int]) -> None:
    ordered = ordered or concurrency == 1
    seen: list[int] = []

    async def side(x: int) -> None:
        await _jitter(x)
        seen.append(x)

    stages: dict[str, tuple[tf.Stage[int, int], list[int]]] = {
        "filter": (tf.filter(_afilter, concurrency=concurrency, ordered=ordered),
                   [x for x in xs if x % 3 != 0]),
        "tap": (tf.tap(side, concurrency=concurrency, ordered=ordered), xs),
        "flat": (tf.flat_map(_aflat, concurrency=concurrency, ordered=ordered),
                 [y for x in xs for y in [x] * (x % 3)]),
        "gen": (tf.flat_map(_agen, concurrency=concurrency, ordered=ordered),
                [x * 10 + i for x in xs for i in range(x % 4)]),
    }
    stage, expected = stages[op]
    got = _run(tf.from_iterable(xs) | stage, run)
    if ordered:
        assert got == expected
    else:
        assert sorted(got) == sorted(expected)
    if op == "tap":
        assert sorted(seen) == sorted(xs)


@SETTINGS
@given(xs=st.lists(st.integers(0, 50), max_size=40), concurrency=st.integers(1, 6), run=run_args)
def test_concurrent_sink_calls_every_item_once(xs: list[int], concurrency: int,
                                               run: dict[str, int]) -> None:
    got: list[int] = []

    async def write(x: int) -> None:
        await _jitter(x)
        got.append(x)

    run_virtual(lambda: (tf.from_iterable(xs) | tf.sink(write, concurrency=concurrency)).run(**run))
    assert sorted(got) == sorted(xs)


# -- contracts: when they emit; nothing after a failure or a cancellation ---------------------------


async def test_take_last_emits_only_when_the_input_ends() -> None:
    send, receive = trio.open_memory_channel[int](10)
    got: list[int] = []
    async with (tf.from_channel(receive) | tf.take_last(2)).open() as items:
        for i in range(5):
            await send.send(i)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                got.extend([x async for x in items])

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # every item taken, none emitted while the input is open
            await send.aclose()
    assert got == [3, 4]


def _fails_after(n: int) -> Any:
    def gen() -> Any:
        yield from range(n)
        raise ValueError("source broke")

    return gen()


@pytest.mark.parametrize("stage", [tf.take_last(3), tf.start_with(-1)])
async def test_a_failed_run_emits_nothing_from_the_end(stage: tf.Stage[int, int]) -> None:
    got: list[int] = []
    n = 5 if stage.operator == "take_last" else 0  # start_with: the input fails before any item
    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable(_fails_after(n)) | stage | tf.sink(got.append)).run()
    assert got == []


async def test_a_cancelled_run_emits_nothing_from_take_last() -> None:
    send, receive = trio.open_memory_channel[int](10)
    got: list[int] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_channel(receive) | tf.take_last(2)
                                      | tf.sink(got.append)).run)
        for i in range(4):
            await send.send(i)
        await trio.testing.wait_all_tasks_blocked()
        handle.cancel()
    assert handle.state is tf.RunState.CANCELLED
    assert got == []


async def test_start_with_emits_its_items_on_an_empty_input() -> None:
    assert await (tf.from_iterable([]) | tf.start_with(1, 2)).to_list() == [1, 2]


async def test_skip_while_stops_calling_fn_after_the_prefix() -> None:
    calls: list[int] = []

    def pred(x: int) -> bool:
        calls.append(x)
        return x < 3

    out = await (tf.from_iterable([1, 2, 3, 1, 2]) | tf.skip_while(pred)).to_list(chunk_size=2)
    assert out == [3, 1, 2]
    assert calls == [1, 2, 3]


async def test_distinct_unhashable_key_is_an_error_of_the_item() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(TypeError, check=lambda e: any(
            "distinct" in n for n in getattr(e, "__notes__", [])))):
        await (tf.from_iterable([[1], [2]]) | tf.distinct()).to_list()


async def test_enumerate_counts_across_chunks_and_statistics() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable("abcde") | tf.enumerate(10, name="num")
                                      | tf.to_list()).run)
    assert handle.result() == [(10, "a"), (11, "b"), (12, "c"), (13, "d"), (14, "e")]
    (num,) = [s for s in handle.statistics().stages if s.name == "num"]
    assert (num.items_in, num.items_out, num.operator) == (5, 5, "enumerate")


# -- concat ----------------------------------------------------------------------------------------


async def test_concat_starts_the_second_flow_only_after_the_first_completed() -> None:
    send, receive = trio.open_memory_channel[int](10)
    started = trio.Event()

    async def second(emit: tf.Emit) -> None:
        started.set()
        await emit.many(["a", "b"])

    flow = tf.concat(tf.from_channel(receive), tf.source(second)) | tf.map(str)
    async with flow.open() as items:
        await send.send(1)
        assert await items.receive() == "1"
        await trio.testing.wait_all_tasks_blocked()
        assert not started.is_set()
        await send.aclose()
        assert [x async for x in items] == ["a", "b"]
    assert started.is_set()


async def test_concat_error_names_the_stage_and_the_flow() -> None:
    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    flow = tf.concat(tf.from_iterable([1]), tf.from_iterable([2]) | tf.map(boom, name="explode"),
                     name="both")
    got: list[int] = []
    with pytest.RaisesGroup(ValueError) as info:
        await (flow | tf.sink(got.append)).run()
    notes = "\n".join(info.value.exceptions[0].__notes__)
    assert "explode" in notes and "flow #1 of 'both'" in notes
    assert got == [1]


async def test_concat_cancelled_stops_the_running_flow_and_never_starts_the_next() -> None:
    started = trio.Event()

    async def second(emit: tf.Emit) -> None:
        started.set()

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            (tf.concat(tf.periodic(1.0), tf.source(second)) | tf.to_list()).run)
        await trio.testing.wait_all_tasks_blocked()  # the first flow waits for its next tick
        handle.cancel()
    assert handle.state is tf.RunState.CANCELLED
    assert not started.is_set()


async def test_concat_stops_with_take_downstream(autojump_clock: trio.testing.MockClock) -> None:
    flow = tf.concat(tf.from_iterable([0]), tf.periodic(1.0)) | tf.take(3)
    assert await flow.to_list() == [0, 0, 1]


# -- concurrent flat_map: the buffering bound ------------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False])
async def test_concurrent_flat_map_generators_do_not_run_ahead(ordered: bool) -> None:
    produced = [0] * 6

    async def endless(x: int) -> AsyncIterator[int]:
        for i in range(10_000):
            produced[x] += 1
            await trio.lowlevel.checkpoint()
            yield i

    kw: dict[str, Any] = {"inner_buffer": 3} if ordered else {}
    flow = tf.from_iterable(range(6)) | tf.flat_map(endless, concurrency=3, ordered=ordered, **kw)
    async with flow.open(buffer=4, chunk_size=2) as items:
        await items.receive()
        await trio.testing.wait_all_tasks_blocked()  # nobody reads: everything stalls
        snapshot = list(produced)
        await trio.testing.wait_all_tasks_blocked()
        assert produced == snapshot  # stalled, not running ahead
    # the edges hold 4 items (+1 in the hand of the reader); in flight: one per worker
    if ordered:
        assert produced[0] <= 4 + 2 + 1  # item 0's turn: streamed into the edges
        assert all(n <= 3 for n in produced[1:])  # the others hold inner_buffer at most
    else:
        assert sum(produced) <= 4 + 2 + 3


async def test_concurrent_flat_map_overlaps_items(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> AsyncIterator[int]:
        await trio.sleep(1)
        yield x

    start = trio.current_time()
    out = await (tf.from_iterable(range(8)) | tf.flat_map(slow, concurrency=4)).to_list()
    assert out == list(range(8))
    assert trio.current_time() - start == pytest.approx(2)  # two waves of four, virtual time


# -- error policies ------------------------------------------------------------------------------


def _bad_on(bad: set[int]) -> Callable[[int], Any]:
    def fn(x: int) -> Any:
        if x in bad:
            raise ValueError(x)
        return x

    return fn


@pytest.mark.parametrize("is_async", [False, True])
async def test_skip_while_and_distinct_skip_failed_items(is_async: bool) -> None:
    key = _bad_on({3})
    fn: Any = _async(key) if is_async else key
    distinct = await (tf.from_iterable([1, 3, 1, 2]) | tf.distinct(fn, on_error=tf.Skip())).to_list()
    assert distinct == [1, 2]

    def pred(x: int) -> bool:
        return _bad_on({3})(x) < 2

    p: Any = _async(pred) if is_async else pred
    skipped = await (tf.from_iterable([0, 3, 1, 5, 0]) | tf.skip_while(p, on_error=tf.Skip())).to_list()
    assert skipped == [5, 0]
    until = await (tf.from_iterable([1, 1, 3, 1, 2])
                   | tf.distinct_until_changed(fn, on_error=tf.Skip())).to_list()
    assert until == [1, 2]


async def test_skip_while_fails_the_run_naming_the_stage() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, check=lambda e: any(
            "prefix" in n for n in e.__notes__))):
        await (tf.from_iterable([1, 3]) | tf.skip_while(_bad_on({3}), name="prefix")).to_list()


async def test_concurrent_filter_retries_and_skips(autojump_clock: trio.testing.MockClock) -> None:
    attempts: dict[int, int] = {}

    async def flaky(x: int) -> bool:
        attempts[x] = attempts.get(x, 0) + 1
        await trio.sleep(0.1)
        if x == 4 or (x == 2 and attempts[x] == 1):
            raise ValueError(x)
        return x % 2 == 0

    stage = tf.filter(flaky, concurrency=3, retry=tf.Retry(attempts=2, on=(ValueError,)), on_error=tf.Skip())
    assert await (tf.from_iterable(range(8)) | stage).to_list() == [0, 2, 6]
    assert attempts[2] == 2 and attempts[4] == 2


async def test_concurrent_flat_map_generator_is_retried_whole(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = {"n": 0}

    async def half_then_fail(x: int) -> AsyncIterator[int]:
        calls["n"] += 1
        yield x
        await trio.sleep(0.1)
        if calls["n"] == 1:
            raise ValueError("first attempt")
        yield -x

    stage = tf.flat_map(half_then_fail, concurrency=2, retry=tf.Retry(attempts=2, on=(ValueError,)))
    assert await (tf.from_iterable([5]) | stage).to_list() == [5, -5]  # 5 not emitted twice
    assert calls["n"] == 2


async def test_concurrent_sink_dead_letters_failures(autojump_clock: trio.testing.MockClock) -> None:
    letters: list[tf.DeadLetterEntry] = []
    done: list[int] = []

    async def write(x: int) -> None:
        await trio.sleep(0.1)
        if x == 3:
            raise ValueError(x)
        done.append(x)

    await (tf.from_iterable(range(6))
           | tf.sink(write, concurrency=3, on_error=tf.DeadLetter(letters.append))).run()
    assert sorted(done) == [0, 1, 2, 4, 5]
    assert [e.item for e in letters] == [3]


async def test_concurrent_tap_failure_fails_the_run() -> None:
    async def side(x: int) -> None:
        await trio.lowlevel.checkpoint()
        _bad_on({2})(x)

    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable(range(5)) | tf.tap(side, concurrency=2, name="side")).to_list()


# -- backends --------------------------------------------------------------------------------------


def _is_even(x: int) -> bool:
    return x % 2 == 0


def _pair(x: int) -> list[int]:
    return [x, x]


async def test_concurrency_on_a_threads_backend() -> None:
    # (real threads: no autojump clock, which would move virtual time while they work)
    xs = list(range(30))
    backend = tf.Threads(limit=3, chunk=4)
    kept = await (tf.from_iterable(xs) | tf.filter(_is_even, backend=backend, concurrency=2,
                                                   ordered=False)).to_list()
    assert sorted(kept) == [x for x in xs if x % 2 == 0]
    flat = await (tf.from_iterable(xs) | tf.flat_map(_pair, backend=backend)).to_list()
    assert flat == [y for x in xs for y in (x, x)]
    got: list[int] = []
    await (tf.from_iterable(xs) | tf.sink(got.append, backend=backend, concurrency=2)).run()
    assert sorted(got) == xs
    assert tf.filter(_is_even, backend=tf.Threads(limit=8)).concurrency == 8  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [
    lambda b: tf.skip_while(_is_even, backend=b),
    lambda b: tf.distinct(abs, backend=b),
    lambda b: tf.distinct_until_changed(abs, backend=b),
])
async def test_stateful_operators_refuse_worker_backends(make: Callable[[Any], Any]) -> None:
    with pytest.raises(tf.DefinitionValueError, match="backend=Threads"):
        make(tf.Threads())
    stage = make(tf.Inline())  # the Trio thread is fine
    assert await (tf.from_iterable([3, 2, -3]) | stage).to_list() in ([3, 2, -3], [3, 2])


# -- definition errors name the argument -------------------------------------------------------------


async def _anoop(x: int) -> None:
    await trio.lowlevel.checkpoint()


async def _agen_noop(x: int) -> AsyncIterator[int]:
    yield x


@pytest.mark.parametrize(("make", "error", "argument"), [
    (lambda: tf.take_last(-1), ValueError, "count"),
    (lambda: tf.take_last("3"), TypeError, "count"),
    (lambda: tf.distinct(3), TypeError, "key"),
    (lambda: tf.distinct(max_keys=0), ValueError, "max_keys"),
    (lambda: tf.distinct_until_changed("k"), TypeError, "key"),
    (lambda: tf.skip_while(None), TypeError, "fn"),
    (lambda: tf.enumerate("1"), TypeError, "start"),
    (lambda: tf.concat(), ValueError, "flows"),
    (lambda: tf.concat(tf.from_iterable([1]), [2]), TypeError, "flows"),
    (lambda: tf.filter(_is_even, concurrency=2), ValueError, "concurrency"),
    (lambda: tf.filter(_anoop, concurrency=0), ValueError, "concurrency"),
    (lambda: tf.tap(_anoop, ordered=False), ValueError, "ordered"),
    (lambda: tf.sink(_anoop, concurrency=1.5), TypeError, "concurrency"),
    (lambda: tf.flat_map(_agen_noop, inner_buffer=3), ValueError, "inner_buffer"),
    (lambda: tf.flat_map(_agen_noop, concurrency=2, inner_buffer=0), ValueError, "inner_buffer"),
])
def test_definition_errors_name_the_argument(make: Callable[[], Any], error: type[Exception],
                                             argument: str) -> None:
    with pytest.raises(error, match=argument) as info:
        make()
    assert isinstance(info.value, tf.DefinitionError)


def test_concurrent_filter_in_a_fork_join_branch_keeps_order() -> None:
    async def main() -> list[Any]:
        return await (tf.from_iterable(range(6))
                      | tf.fork_join(tf.filter(_afilter, concurrency=3), tf.map(str))).to_list()

    assert run_virtual(main) == [(x, str(x)) for x in range(6) if x % 3 != 0]
    with pytest.raises(tf.DefinitionValueError, match="ordered=False"):
        tf.fork_join(tf.filter(_afilter, concurrency=3, ordered=False), tf.map(str))


# -- parallel(...) outcomes, without importing outcome -------------------------------------------------


async def test_parallel_best_effort_results_unwrap_with_trioflow_names() -> None:
    def ok(x: int) -> int:
        return x + 1

    def bad(x: int) -> int:
        raise KeyError(x)

    (row,) = await (tf.from_iterable([1]) | tf.parallel(ok, bad, policy=tf.BestEffort())).to_list()
    good, failed = row
    assert isinstance(good, tf.Value) and isinstance(good, tf.Outcome)
    assert good.unwrap() == 2 and good.value == 2
    assert isinstance(failed, tf.Error) and isinstance(failed.error, KeyError)
    with pytest.raises(KeyError):
        failed.unwrap()


# -- keyed scan ------------------------------------------------------------------------------------


def ref_keyed_scan(xs: list[int], key: Callable[[int], Hashable], fails: Callable[[int], bool]
                   ) -> list[tuple[Hashable, tuple[int, int]]]:
    """One (count, total) per key; a failing item is dropped and changes nothing."""
    accs: dict[Hashable, tuple[int, int]] = {}
    out = []
    for x in xs:
        if fails(x):
            continue
        k = key(x)
        n, total = accs.get(k, (0, 0))
        accs[k] = (n + 1, total + x)
        out.append((k, accs[k]))
    return out


def _count_and_sum(acc: tuple[int, int], x: int) -> tuple[int, int]:
    if x == 13:  # the failing item of the property below
        raise ValueError(x)
    return (acc[0] + 1, acc[1] + x)


@SETTINGS
@given(xs=xs_strategy, key=st.sampled_from(sorted(KEYS)), is_async=st.booleans(),
       slow=st.booleans(), run=run_args)
def test_keyed_scan_matches_reference(xs: list[int], key: str, is_async: bool, slow: bool,
                                      run: dict[str, int]) -> None:
    fn = _async(_count_and_sum) if is_async else _count_and_sum
    flow = _source(xs, slow) | tf.scan(fn, (0, 0), key=KEYS[key], on_error=tf.Skip())
    assert _run(flow, run) == ref_keyed_scan(xs, KEYS[key], lambda x: x == 13)


async def test_keyed_scan_starts_every_run_from_initial() -> None:
    flow = tf.from_iterable("abab") | tf.scan(lambda n, _: n + 1, 0, key=str.upper)
    first = await flow.to_list()
    assert first == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert await flow.to_list() == first


async def test_keyed_scan_failure_of_key_fails_the_run_or_is_dead_lettered() -> None:
    def key(x: int) -> int:
        if x < 0:
            raise KeyError(x)
        return x % 2

    with pytest.raises(ExceptionGroup) as info:
        await (tf.from_iterable([1, -1, 2]) | tf.scan(lambda a, x: a + x, 0, key=key)).to_list()
    assert info.group_contains(KeyError)
    letters: list[tf.DeadLetterEntry] = []
    out = await (tf.from_iterable([1, -1, 3, [4]])  # -1: the key fails; [4]: unhashable key
                 | tf.scan(lambda a, x: a + x, 0, key=lambda x: key(x) if isinstance(x, int) else x,
                           on_error=tf.DeadLetter(letters))).to_list()
    assert out == [(1, 1), (1, 4)]
    assert [(e.item, type(e.exception)) for e in letters] == [(-1, KeyError), ([4], TypeError)]


@pytest.mark.parametrize("is_async", [False, True])
async def test_keyed_scan_with_acknowledgements_acks_each_item_once_and_keeps_its_state(
    is_async: bool,
) -> None:
    acked: list[tf.Ack] = []
    items = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]

    def add(acc: int, item: tuple[str, int]) -> int:
        return acc + item[1]

    # the map after the scan changes the value it is handed: the accumulators must not see it
    flow = (tf.from_iterable(items, on_ack=acked.extend)
            | tf.scan(_async(add) if is_async else add, 0, key=lambda item: item[0])
            | tf.map(lambda kv: (kv[0], kv[1] * 100)))
    assert await flow.to_list() == [("a", 100), ("b", 200), ("a", 400), ("b", 600), ("a", 900)]
    assert sorted(a.token for a in acked) == sorted(items)
    assert all(a.error is None for a in acked)
