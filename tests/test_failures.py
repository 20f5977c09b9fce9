"""Fail-fast (DESIGN §3): one ExceptionGroup level of annotated originals, raised every
time, no completion action after a failure, clean cancellation, and ``Flow.open``."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

RUNS = 50


class Boom(ValueError):
    pass


def boom_at(n: int) -> Callable[[int], int]:
    def fn(x: int) -> int:
        if x == n:
            raise Boom(f"bad {x}")
        return x

    return fn


def aboom_at(n: int) -> Callable[[int], Any]:
    async def fn(x: int) -> int:
        await trio.lowlevel.checkpoint()
        if x == n:
            raise Boom(f"bad {x}")
        return x

    return fn


def single_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one leaf of a one-level group (no nested groups)."""
    assert len(group.exceptions) == 1, group.exceptions
    (leaf,) = group.exceptions
    assert not isinstance(leaf, BaseExceptionGroup)
    return leaf


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


async def run_expecting_boom(build: Callable[[], Any], *, runs: int = RUNS, **kw: Any) -> list[BaseException]:
    """Run a freshly built pipeline ``runs`` times; each must raise a one-level group of one
    ``Boom``. Returns the leaves."""
    leaves = []
    for _ in range(runs):
        with pytest.RaisesGroup(Boom, flatten_subgroups=False) as info:
            await build().run(**kw)
        leaves.append(single_leaf(info.value))
    return leaves


# ------------------------------------------------------------------ one group, annotated leaves


async def test_fused_stage_error_annotated_with_stage_and_item() -> None:
    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(100)) | tf.map(lambda x: x + 1) | tf.map(boom_at(42), name="check")
    )
    for leaf in leaves:
        assert type(leaf) is Boom and str(leaf) == "bad 42"
        assert "'check'" in notes(leaf) and "42" in notes(leaf)
        assert len(leaf.__notes__) == 1


async def test_async_stage_error_annotated() -> None:
    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(100)) | tf.map(aboom_at(17), name="fetch") | tf.to_list()
    )
    for leaf in leaves:
        assert "'fetch'" in notes(leaf) and "item 17" in notes(leaf)


async def test_pool_worker_error_annotated() -> None:
    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(100)) | tf.map(aboom_at(33), concurrency=4, name="pool")
    )
    for leaf in leaves:
        assert "'pool'" in notes(leaf) and "item 33" in notes(leaf)


async def test_on_demand_error_annotated() -> None:
    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(50)) | tf.on_demand(lambda: aboom_at(9), limit=3, name="od")
    )
    for leaf in leaves:
        assert "'od'" in notes(leaf) and "item 9" in notes(leaf)


async def test_persistent_fn_error_annotated() -> None:
    @asynccontextmanager
    async def conn() -> AsyncIterator[str]:
        yield "conn"

    async def fn(c: str, x: int) -> int:
        assert c == "conn"
        return boom_at(5)(x)

    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(50)) | tf.persistent(fn, resource=conn, workers=2, name="db")
    )
    for leaf in leaves:
        assert "'db'" in notes(leaf) and "item 5" in notes(leaf)


async def test_persistent_resource_factory_error() -> None:
    @asynccontextmanager
    async def conn() -> AsyncIterator[str]:
        await trio.lowlevel.checkpoint()
        raise Boom("connection refused")
        yield "never"  # pragma: no cover

    leaves = await run_expecting_boom(
        lambda: tf.from_iterable(range(5)) | tf.persistent(_identity_with, resource=conn, name="db")
    )
    for leaf in leaves:
        assert str(leaf) == "connection refused"
        assert "'db'" in notes(leaf) and "resource" in notes(leaf)


async def _identity_with(res: Any, x: Any) -> Any:
    return x


async def test_persistent_resource_factory_error_with_several_workers_is_one_group_level() -> None:
    @asynccontextmanager
    async def conn() -> AsyncIterator[str]:
        await trio.lowlevel.checkpoint()
        raise Boom("connection refused")
        yield "never"  # pragma: no cover

    for _ in range(RUNS):
        with pytest.raises(ExceptionGroup) as info:
            await (tf.from_iterable(range(5)) | tf.persistent(_identity_with, resource=conn, workers=3)).run()
        group = info.value
        assert group.exceptions
        assert all(type(e) is Boom for e in group.exceptions)


async def test_iterable_source_error() -> None:
    def gen() -> Iterator[int]:
        yield from range(10)
        raise Boom("source broke")

    leaves = await run_expecting_boom(lambda: tf.from_iterable(gen(), name="feed") | tf.map(lambda x: x))
    for leaf in leaves:
        assert "'feed'" in notes(leaf)


async def test_task_source_error() -> None:
    async def produce(emit: tf.Emit[int]) -> None:
        await emit(1)
        await trio.lowlevel.checkpoint()
        raise Boom("producer broke")

    leaves = await run_expecting_boom(lambda: tf.source(produce, name="prod") | tf.map(aboom_at(-1)))
    for leaf in leaves:
        assert "'prod'" in notes(leaf)


async def test_sink_error() -> None:
    async def write(x: int) -> None:
        await trio.lowlevel.checkpoint()
        if x == 3:
            raise Boom("disk full")

    leaves = await run_expecting_boom(lambda: tf.from_iterable(range(10)) | tf.sink(write, name="out"))
    for leaf in leaves:
        assert "'out'" in notes(leaf) and "item 3" in notes(leaf)


async def test_continuous_stage_error() -> None:
    async def fn(items: AsyncIterator[int], emit: tf.Emit[int]) -> None:
        async for x in items:
            if x == 4:
                raise Boom("state broke")
            await emit(x)

    leaves = await run_expecting_boom(lambda: tf.from_iterable(range(10)) | tf.continuous(fn, name="st"))
    for leaf in leaves:
        assert "'st'" in notes(leaf)


async def test_except_star_catches_the_original_exception() -> None:
    caught: list[BaseException] = []
    try:
        await (tf.from_iterable(range(10)) | tf.map(aboom_at(2)) | tf.to_list()).run()
    except* ValueError as group:
        caught.extend(group.exceptions)
    assert len(caught) == 1
    assert type(caught[0]) is Boom


async def test_error_item_repr_is_short() -> None:
    big = "x" * 10_000

    def fail(s: str) -> str:
        raise Boom("too big")

    leaves = await run_expecting_boom(lambda: tf.from_iterable([big]) | tf.map(fail), runs=1)
    note = leaves[0].__notes__[0]
    assert "xxx" in note
    assert len(note) < 200


async def test_two_failing_stages_still_one_group_level() -> None:
    async def fail_slowly(x: int) -> int:
        await trio.lowlevel.checkpoint()
        raise Boom("a")

    def fail_sink(x: int) -> None:
        raise KeyError("b")

    for _ in range(RUNS):
        with pytest.raises(ExceptionGroup) as info:
            await (
                tf.from_iterable(range(10)) | tf.map(fail_slowly, concurrency=3) | tf.sink(fail_sink)
            ).run()
        for leaf in info.value.exceptions:
            assert not isinstance(leaf, BaseExceptionGroup)
            assert isinstance(leaf, Boom | KeyError)
            assert "trioflow: raised in stage" in notes(leaf)


# ------------------------------------------------------------------- no completion after failure


async def test_failure_partial_batch_not_flushed_async_upstream() -> None:
    flushed: list[list[int]] = []

    def build() -> tf.Pipeline[None]:
        return tf.from_iterable(range(10)) | tf.map(aboom_at(5)) | tf.batch(100) | tf.sink(flushed.append)

    await run_expecting_boom(build)
    assert flushed == []


async def test_failure_partial_timed_batch_not_flushed(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[list[int]] = []

    def build() -> tf.Pipeline[None]:
        return (
            tf.from_iterable(range(10))
            | tf.map(aboom_at(5))
            | tf.batch(100, timeout=60)
            | tf.sink(flushed.append)
        )

    await run_expecting_boom(build)
    assert flushed == []


def _end_recorder(ends: list[str]) -> Callable[..., Any]:
    async def watch(items: AsyncIterator[Any], emit: tf.Emit[Any]) -> None:
        try:
            async for x in items:
                await emit(x)
        except trio.Cancelled:
            ends.append("cancelled")
            raise
        except BaseException:
            ends.append("error")
            raise
        ends.append("clean")

    return watch


@pytest.mark.parametrize("chunk_size", [1, 256])
@pytest.mark.parametrize("upstream", ["fused", "async", "pool", "source", "iterable"])
async def test_downstream_never_sees_clean_end_after_failure(upstream: str, chunk_size: int) -> None:
    """Regression: a failing segment closed its output edge before cancelling the run, so a
    consumer parked on that edge woke to a clean end of stream (seen with large chunks)."""
    ends: list[str] = []

    def gen() -> Iterator[int]:
        yield from range(5)
        raise Boom("source broke")

    async def produce(emit: tf.Emit[int]) -> None:
        await emit(1)
        raise Boom("producer broke")

    def build() -> Any:
        if upstream == "fused":
            flow = tf.from_iterable(range(10)) | tf.map(boom_at(5))
        elif upstream == "async":
            flow = tf.from_iterable(range(10)) | tf.map(aboom_at(5))
        elif upstream == "pool":
            flow = tf.from_iterable(range(10)) | tf.map(aboom_at(5), concurrency=3)
        elif upstream == "source":
            flow = tf.source(produce)
        else:
            flow = tf.from_iterable(gen())
        return flow | tf.continuous(_end_recorder(ends)) | tf.to_list()

    await run_expecting_boom(build, chunk_size=chunk_size)
    assert "clean" not in ends
    assert ends == ["cancelled"] * RUNS


async def test_clean_end_is_seen_on_success() -> None:
    """The recorder used above does see a clean end when nothing fails."""
    ends: list[str] = []
    flow = tf.from_iterable(range(5)) | tf.map(aboom_at(-1)) | tf.continuous(_end_recorder(ends))
    out = await flow.to_list()
    assert out == [0, 1, 2, 3, 4]
    assert ends == ["clean"]


async def test_failure_reduce_result_is_not_returned() -> None:
    """A failed run raises; it never returns the partial fold as if complete."""
    results: list[int] = []
    for _ in range(10):
        with pytest.RaisesGroup(Boom):
            pipeline = tf.from_iterable(range(10)) | tf.map(aboom_at(7)) | tf.reduce(lambda a, x: a + x, 0)
            results.append(await pipeline.run())
    assert results == []


# ----------------------------------------------------------------------------- cancellation


async def test_outside_cancellation_propagates_as_cancelled_and_leaves_nothing_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def produce(emit: tf.Emit[int]) -> None:
        try:
            for i in itertools.count():
                await emit(i)
                await trio.sleep(1)
        finally:
            log.append("source done")

    async def slow(x: int) -> int:
        await trio.sleep(0.5)
        return x

    baseline = trio.lowlevel.current_statistics().tasks_living
    propagated: list[type[BaseException]] = []
    seen: list[int] = []
    with trio.move_on_after(5.25) as cs:
        try:
            await (
                tf.source(produce)
                | tf.map(slow, concurrency=2)
                | tf.continuous(_end_recorder(ends := []))
                | tf.sink(seen.append)
            ).run()
        except BaseException as exc:
            propagated.append(type(exc))
            raise
    assert cs.cancelled_caught
    assert propagated == [trio.Cancelled]
    assert seen == [0, 1, 2, 3, 4]
    assert log == ["source done"]
    assert ends == ["cancelled"]
    assert trio.lowlevel.current_statistics().tasks_living == baseline


async def test_handle_cancel_returns_quietly_with_partial_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.periodic(1.0) | tf.to_list()).run)
        await trio.sleep(2.5)
        handle.cancel()
        assert await handle.wait() is tf.RunState.CANCELLED
    assert handle.state is tf.RunState.CANCELLED
    with pytest.raises(RuntimeError):
        handle.result()


# ------------------------------------------------------------------------------- Flow.open()


async def test_open_streams_items() -> None:
    async with (tf.from_iterable(range(5)) | tf.map(aboom_at(-1))).open() as items:
        out = [x async for x in items]
    assert out == [0, 1, 2, 3, 4]


async def test_open_receive_raises_end_of_channel_at_completion() -> None:
    async with tf.from_iterable([1]).open() as items:
        assert await items.receive() == 1
        with pytest.raises(trio.EndOfChannel):
            await items.receive()


async def test_open_early_break_cancels_pipeline() -> None:
    log: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await trio.lowlevel.checkpoint()
                yield i
        finally:
            log.append("closed")

    baseline = trio.lowlevel.current_statistics().tasks_living
    got: list[int] = []
    async with (tf.from_async_iterable(numbers()) | tf.map(aboom_at(-1))).open() as items:
        async for x in items:
            got.append(x)
            if x == 3:
                break
    assert got == [0, 1, 2, 3]
    assert log == ["closed"]
    assert trio.lowlevel.current_statistics().tasks_living == baseline


async def test_open_body_exception_propagates_unchanged() -> None:
    class BodyError(Exception):
        pass

    for _ in range(RUNS):
        original = BodyError("from the body")
        with pytest.raises(BodyError) as info:
            async with (tf.from_iterable(itertools.count()) | tf.map(aboom_at(-1))).open() as items:
                async for x in items:
                    if x == 2:
                        raise original
        assert info.value is original
        assert not isinstance(info.value, BaseExceptionGroup)


async def test_open_pipeline_failure_raised_as_group_and_body_is_cancelled() -> None:
    for _ in range(RUNS):
        body: list[str] = []
        with pytest.RaisesGroup(Boom, flatten_subgroups=False) as info:
            async with (tf.from_iterable(range(100)) | tf.map(aboom_at(10), name="m")).open() as items:
                try:
                    async for _x in items:
                        pass
                except trio.Cancelled:
                    body.append("cancelled")
                    raise
                body.append("clean end")
        assert body == ["cancelled"]
        assert "'m'" in notes(single_leaf(info.value))


async def test_open_pipeline_failure_cancels_a_body_that_is_not_receiving() -> None:
    body: list[str] = []
    with pytest.RaisesGroup(Boom, flatten_subgroups=False):
        async with (tf.from_iterable(range(100)) | tf.map(aboom_at(50))).open() as items:
            assert await items.receive() == 0
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body.append("cancelled")
                raise
    assert body == ["cancelled"]


async def test_open_outside_cancellation_propagates_as_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[int] = []
    propagated: list[type[BaseException]] = []
    baseline = trio.lowlevel.current_statistics().tasks_living
    with trio.move_on_after(2.5) as cs:
        try:
            async with tf.periodic(1.0).open() as items:
                async for x in items:
                    got.append(x)
        except BaseException as exc:
            propagated.append(type(exc))
            raise
    assert cs.cancelled_caught
    assert propagated == [trio.Cancelled]
    assert got == [0, 1, 2]
    assert trio.lowlevel.current_statistics().tasks_living == baseline


async def test_source_failing_before_started_raises_from_start() -> None:
    async def bad(emit: tf.Emit[int], *, task_status: trio.TaskStatus[None]) -> None:
        await trio.lowlevel.checkpoint()
        raise Boom("cannot bind")

    for _ in range(RUNS):
        with pytest.RaisesGroup(pytest.RaisesGroup(Boom, flatten_subgroups=False)):
            async with trio.open_nursery() as nursery:
                await nursery.start(tf.source(bad, name="server").run)


async def test_handle_cancel_run_returns_what_the_sink_had(autojump_clock: trio.testing.MockClock) -> None:
    results: list[list[int]] = []

    async def run(task_status: trio.TaskStatus[tf.RunHandle[list[int]]]) -> None:
        results.append(await (tf.periodic(1.0) | tf.to_list()).run(task_status=task_status))

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run)
        await trio.sleep(2.5)
        handle.cancel()
    assert results == [[0, 1, 2]]
