"""Lifecycles as spawning strategies (DESIGN §2): CONTINUOUS, PERSISTENT, ON_DEMAND."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

# -------------------------------------------------------------------------- resource tracker


class Resources:
    """An async context manager factory that records every resource's life."""

    def __init__(self, *, setup_time: float = 0.0, fail_on_enter: int | None = None) -> None:
        self.setup_time = setup_time
        self.fail_on_enter = fail_on_enter
        self.built = 0
        self.entered: list[int] = []
        self.ready: list[int] = []
        self.exited: list[tuple[int, type[BaseException] | None]] = []
        self.used: dict[int, list[Any]] = {}

    @property
    def open(self) -> set[int]:
        return set(self.entered) - {i for i, _ in self.exited}

    def __call__(self) -> AbstractAsyncContextManager[int]:
        self.built += 1
        return self._cm()

    @asynccontextmanager
    async def _cm(self) -> AsyncIterator[int]:
        rid = len(self.entered)
        self.entered.append(rid)
        if self.setup_time:
            await trio.sleep(self.setup_time)
        if self.fail_on_enter is not None and rid == self.fail_on_enter:
            self.exited.append((rid, None))
            raise ConnectionError(f"cannot connect resource {rid}")
        self.ready.append(rid)
        self.used[rid] = []
        try:
            yield rid
        except BaseException as exc:
            self.exited.append((rid, type(exc)))
            raise
        else:
            self.exited.append((rid, None))


def recording(res: Resources, *, delay: float = 0.0) -> Callable[[int, Any], Any]:
    async def fn(rid: int, item: Any) -> Any:
        res.used[rid].append(item)
        if delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        return (rid, item)

    return fn


# ------------------------------------------------------------------------------- lifecycles


def test_lifecycle_of_each_operator() -> None:
    async def af(x: int) -> int:
        return x

    res = Resources()
    assert tf.map(lambda x: x).lifecycle is tf.Lifecycle.CONTINUOUS
    assert tf.map(af).lifecycle is tf.Lifecycle.CONTINUOUS
    assert tf.map(af, concurrency=3).lifecycle is tf.Lifecycle.POOLED
    assert tf.persistent(recording(res), resource=res).lifecycle is tf.Lifecycle.PERSISTENT
    assert tf.on_demand(lambda: af).lifecycle is tf.Lifecycle.ON_DEMAND
    plan = (
        tf.from_iterable([1])
        | tf.persistent(recording(res), resource=res, name="p")
        | tf.on_demand(lambda: af, name="o")
        | tf.to_list()
    ).plan()
    by_name = {n.name: n.lifecycle for n in plan.nodes}
    assert by_name == {
        "from_iterable": tf.Lifecycle.CONTINUOUS,
        "p": tf.Lifecycle.PERSISTENT,
        "o": tf.Lifecycle.ON_DEMAND,
        "to_list": tf.Lifecycle.CONTINUOUS,
    }
    assert res.built == 0  # planning builds nothing


# ------------------------------------------------------------------------------- continuous


async def test_continuous_stage_is_one_task_keeping_state_for_the_whole_run() -> None:
    calls = 0

    async def numbered(items: AsyncIterator[str], emit: tf.Emit[str]) -> None:
        nonlocal calls
        calls += 1
        n = 0
        async for x in items:
            n += 1
            await emit(f"{n}:{x}")

    out = await (tf.from_iterable("abcde") | tf.continuous(numbered)).to_list(chunk_size=2)
    assert out == ["1:a", "2:b", "3:c", "4:d", "5:e"]
    assert calls == 1


# ------------------------------------------------------------------------------- persistent


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_builds_each_resource_once_and_reuses_it(workers: int) -> None:
    res = Resources()
    out = await (
        tf.from_iterable(range(50))
        | tf.persistent(recording(res), resource=res, workers=workers)
    ).to_list(chunk_size=4)
    assert [item for _, item in out] == list(range(50))
    assert res.built == workers
    assert sorted(res.entered) == list(range(workers))
    assert sorted(res.exited) == [(i, None) for i in range(workers)]
    # every item went through one of the resources, each exactly once
    assert sorted(x for items in res.used.values() for x in items) == list(range(50))
    assert all(rid in res.used for rid, _ in out)


async def test_persistent_work_is_shared_between_workers(autojump_clock: trio.testing.MockClock) -> None:
    res = Resources()
    await (
        tf.from_iterable(range(12))
        | tf.persistent(recording(res, delay=1), resource=res, workers=3)
    ).to_list()
    assert sorted(len(v) for v in res.used.values()) == [4, 4, 4]


async def test_persistent_unordered(autojump_clock: trio.testing.MockClock) -> None:
    res = Resources()

    async def fn(rid: int, x: int) -> int:
        await trio.sleep(x)
        return x

    out = await (
        tf.from_iterable([3, 1, 2]) | tf.persistent(fn, resource=res, workers=3, ordered=False)
    ).to_list()
    assert out == [1, 2, 3]


async def test_start_returns_only_after_every_persistent_resource_is_entered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    res1 = Resources(setup_time=5)
    res2 = Resources(setup_time=2)
    gate = trio.Event()

    async def source(emit: tf.Emit[int]) -> None:
        await gate.wait()
        await emit.many(list(range(6)))

    pipeline = (
        tf.source(source)
        | tf.persistent(recording(res1), resource=res1, workers=3)
        | tf.persistent(recording(res2), resource=res2, workers=2)
        | tf.to_list()
    )
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        assert sorted(res1.ready) == [0, 1, 2]
        assert sorted(res2.ready) == [0, 1]
        assert res1.exited == [] and res2.exited == []
        assert trio.current_time() - t0 >= 5
        assert handle.state is tf.RunState.RUNNING
        gate.set()
    assert [x for _, (_, x) in handle.result()] == list(range(6))
    assert res1.open == set() and res2.open == set()


async def _assert_closed(res: Resources, workers: int) -> None:
    assert sorted(res.entered) == list(range(workers))
    assert res.open == set()
    assert len(res.exited) == workers


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_completion(workers: int) -> None:
    res = Resources()
    await (tf.from_iterable(range(10)) | tf.persistent(recording(res), resource=res, workers=workers)).run()
    await _assert_closed(res, workers)
    assert all(exc is None for _, exc in res.exited)


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_error_in_another_stage(workers: int) -> None:
    def bad_sink(x: Any) -> None:
        raise ValueError("sink broke")

    for _ in range(10):
        res = Resources()
        with pytest.RaisesGroup(ValueError):
            await (
                tf.from_iterable(itertools.count())
                | tf.persistent(recording(res), resource=res, workers=workers)
                | tf.sink(bad_sink)
            ).run()
        await _assert_closed(res, workers)


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_error_in_fn(workers: int) -> None:
    async def fn(rid: int, x: int) -> int:
        await trio.lowlevel.checkpoint()
        if x == 5:
            raise KeyError(x)
        return x

    for _ in range(10):
        res = Resources()
        with pytest.RaisesGroup(KeyError):
            await (
                tf.from_iterable(range(100)) | tf.persistent(fn, resource=res, workers=workers)
            ).run(chunk_size=4)
        await _assert_closed(res, workers)


async def test_persistent_resource_exit_sees_the_error_of_its_own_worker() -> None:
    res = Resources()

    async def fn(rid: int, x: int) -> int:
        raise KeyError(x)

    with pytest.RaisesGroup(KeyError):
        await (tf.from_iterable([1]) | tf.persistent(fn, resource=res)).run()
    assert res.exited == [(0, KeyError)]


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_outside_cancellation(
    autojump_clock: trio.testing.MockClock, workers: int
) -> None:
    res = Resources()
    with trio.move_on_after(7.5) as cs:
        await (
            tf.periodic(1.0) | tf.persistent(recording(res, delay=0.25), resource=res, workers=workers)
        ).run()
    assert cs.cancelled_caught
    await _assert_closed(res, workers)
    assert sorted(x for v in res.used.values() for x in v) == list(range(8))


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_handle_cancel(
    autojump_clock: trio.testing.MockClock, workers: int
) -> None:
    res = Resources()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            (tf.periodic(1.0) | tf.persistent(recording(res), resource=res, workers=workers)).run
        )
        await trio.sleep(3.5)
        assert res.open == set(range(workers))
        handle.cancel()
    assert handle.state is tf.RunState.CANCELLED
    await _assert_closed(res, workers)


@pytest.mark.parametrize("workers", [1, 3])
async def test_persistent_resources_closed_on_early_stop_by_take(workers: int) -> None:
    res = Resources()
    out = await (
        tf.from_iterable(itertools.count())
        | tf.persistent(recording(res), resource=res, workers=workers)
        | tf.take(5)
    ).to_list(chunk_size=2, buffer=4)
    assert [x for _, x in out] == [0, 1, 2, 3, 4]
    await _assert_closed(res, workers)


async def test_persistent_resource_closed_while_a_call_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    res = Resources()

    async def hang(rid: int, x: int) -> int:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    with trio.move_on_after(3):
        await (tf.from_iterable([1, 2]) | tf.persistent(hang, resource=res, workers=2)).run()
    await _assert_closed(res, 2)
    # the workers were cancelled in the middle of a call: their resources saw it
    assert [exc for _, exc in res.exited] == [trio.Cancelled, trio.Cancelled]


async def test_persistent_failed_resource_factory_closes_the_other_resources() -> None:
    res = Resources(fail_on_enter=1)
    with pytest.RaisesGroup(ConnectionError):
        await (
            tf.from_iterable(range(5)) | tf.persistent(recording(res), resource=res, workers=3)
        ).run()
    assert res.open == set()
    assert sum(len(v) for v in res.used.values()) == 0  # nothing ran: the run never got ready


# -------------------------------------------------------------------------------- on_demand


async def test_on_demand_fresh_instance_per_item() -> None:
    instances: list[object] = []

    class Parser:
        def __init__(self) -> None:
            self.calls = 0
            instances.append(self)

        def __call__(self, x: int) -> tuple[int, int]:
            self.calls += 1
            return (x, self.calls)

    out = await (tf.from_iterable(range(10)) | tf.on_demand(Parser)).to_list()
    # each instance saw exactly one item: no state leaks from one item to the next
    assert out == [(i, 1) for i in range(10)]
    assert len(instances) == 10
    assert len({id(i) for i in instances}) == 10


async def test_on_demand_async_instance() -> None:
    made = 0

    def factory() -> Callable[[int], Any]:
        nonlocal made
        made += 1

        async def call(x: int) -> int:
            await trio.lowlevel.checkpoint()
            return x * 3

        return call

    out = await (tf.from_iterable(range(5)) | tf.on_demand(factory, limit=2)).to_list()
    assert out == [0, 3, 6, 9, 12]
    assert made == 5


@pytest.mark.parametrize("limit", [1, 3])
async def test_on_demand_respects_limit(autojump_clock: trio.testing.MockClock, limit: int) -> None:
    running = 0
    peak = 0

    def factory() -> Callable[[int], Any]:
        async def call(x: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await trio.sleep(1)
            running -= 1
            return x

        return call

    t0 = trio.current_time()
    out = await (tf.from_iterable(range(9)) | tf.on_demand(factory, limit=limit)).to_list()
    assert out == list(range(9))
    assert peak == limit
    assert trio.current_time() - t0 == 9 // limit


async def test_on_demand_unordered(autojump_clock: trio.testing.MockClock) -> None:
    def factory() -> Callable[[int], Any]:
        async def call(x: int) -> int:
            await trio.sleep(x)
            return x

        return call

    out = await (tf.from_iterable([3, 1, 2]) | tf.on_demand(factory, limit=3, ordered=False)).to_list()
    assert out == [1, 2, 3]


class Instance:
    """An on-demand stage instance that is an async context manager."""

    log: list[tuple[str, int]]

    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log
        self.id = len([e for e in log if e[0] == "new"])
        log.append(("new", self.id))

    async def __aenter__(self) -> Instance:
        await trio.lowlevel.checkpoint()
        self.log.append(("enter", self.id))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await trio.lowlevel.checkpoint()
        self.log.append(("exit", self.id))

    async def __call__(self, x: int) -> int:
        assert ("enter", self.id) in self.log and ("exit", self.id) not in self.log
        self.log.append(("call", self.id))
        await trio.lowlevel.checkpoint()
        if x < 0:
            raise ValueError(x)
        return x + 100


async def test_on_demand_enters_and_exits_async_context_manager_instances() -> None:
    log: list[tuple[str, int]] = []
    out = await (tf.from_iterable(range(6)) | tf.on_demand(lambda: Instance(log), limit=2)).to_list()
    assert out == [100, 101, 102, 103, 104, 105]
    for i in range(6):
        events = [e for e, n in log if n == i]
        assert events == ["new", "enter", "call", "exit"]
    assert len(log) == 24


async def test_on_demand_instance_exited_on_error() -> None:
    log: list[tuple[str, int]] = []
    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable([1, -1]) | tf.on_demand(lambda: Instance(log), limit=1)).run()
    entered = {n for e, n in log if e == "enter"}
    exited = {n for e, n in log if e == "exit"}
    assert entered == exited == {0, 1}


async def test_on_demand_instances_exited_on_outside_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    class Slow:
        async def __aenter__(self) -> Slow:
            log.append("enter")
            return self

        async def __aexit__(self, *exc: object) -> None:
            log.append("exit")

        async def __call__(self, x: int) -> int:
            await trio.sleep_forever()
            raise AssertionError  # pragma: no cover

    with trio.move_on_after(5) as cs:
        await (tf.from_iterable(range(10)) | tf.on_demand(Slow, limit=3)).run()
    assert cs.cancelled_caught
    assert log.count("enter") == 3
    assert log.count("exit") == 3


async def test_on_demand_stops_with_take() -> None:
    made = 0

    def factory() -> Callable[[int], int]:
        nonlocal made
        made += 1
        return lambda x: x * x

    out = await (
        tf.from_iterable(itertools.count()) | tf.on_demand(factory, limit=2) | tf.take(4)
    ).to_list(chunk_size=2, buffer=2)
    assert out == [0, 1, 4, 9]
    assert made < 20


async def test_regression_error_while_closing_a_resource_is_not_lost() -> None:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def conn():  # type: ignore[no-untyped-def]
        try:
            yield None
        finally:
            raise OSError("close failed")

    async def boom(c: None, x: int) -> int:
        raise KeyError(x)

    with pytest.RaisesGroup(KeyError, OSError) as info:
        await (tf.from_iterable([1]) | tf.persistent(boom, resource=conn)).run()
    (os_err,) = [e for e in info.value.exceptions if isinstance(e, OSError)]
    assert any("closing a worker's resource" in n for n in os_err.__notes__)
