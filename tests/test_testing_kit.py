"""The public testing kit, ``trioflow.testing``: every helper, including how it fails.

Anything timed runs on virtual time (``autojump_clock`` or ``MockClock``); assertions on
time compare Trio-clock values, never wall-clock ones.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf
import trioflow.testing as tft
from trioflow.testing import (
    Fail,
    InjectedFault,
    RecordingSink,
    ResourceTracker,
    ScriptedSource,
    Sleep,
    WaitFor,
    assert_no_leftovers,
    fail_on_call,
    fail_with_probability,
    hang_on_call,
    open_probes,
    run_on_list,
    slow_down,
)
from trioflow.testing import strategies as tfst


def double(x: int) -> int:
    return x * 2


async def adouble(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return x * 2


# -- public surface -----------------------------------------------------------------------------


def test_testing_names_are_exported_once_and_documented() -> None:
    for module in (tft, tfst):
        assert len(module.__all__) == len(set(module.__all__))
        missing = [n for n in module.__all__ if not (getattr(module, n).__doc__ or "").strip()]
        assert missing == []


def test_public_async_apis_say_what_cancellation_does() -> None:
    for obj in (tft.run_on_list, tft.open_probes, tft.assert_no_leftovers, tft.RecordingSink.run,
                tft.SourceProbe.send, tft.SourceProbe.fail, tft.SinkProbe.expect_next,
                tft.SinkProbe.expect_error, tft.FaultyAsyncFunction.__call__):
        assert "cancel" in (obj.__doc__ or "").lower(), obj


def test_import_does_not_need_hypothesis() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None  # as if it were not installed
        import trioflow.testing
        assert "hypothesis" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            import trioflow.testing.strategies
        except ImportError as exc:
            assert "trioflow[test]" in str(exc), exc
        else:
            raise SystemExit("strategies imported without hypothesis")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# -- run_on_list --------------------------------------------------------------------------------


async def test_run_on_list_runs_a_stage_on_a_list() -> None:
    result = await run_on_list(tf.map(double, name="d") | tf.filter(lambda x: x > 2), [1, 2, 3])
    assert result.outputs == [4, 6]
    assert result.ok and result.errors == ()
    assert result.state is tf.RunState.COMPLETED
    assert result.statistics is not None
    assert result.statistics.stage("d").items_in == 3


async def test_run_on_list_runs_a_flow() -> None:
    result = await run_on_list(tf.from_iterable("abc") | tf.map(str.upper), chunk_size=1, buffer=1)
    assert result.outputs == ["A", "B", "C"]


async def test_run_on_list_reports_a_failure_instead_of_raising() -> None:
    def boom(x: int) -> int:
        if x == 8:
            raise ValueError("eight")
        return x

    result = await run_on_list(tf.map(adouble) | tf.map(boom, name="boom"), range(3, 6), chunk_size=1)
    assert not result.ok
    assert result.state is tf.RunState.FAILED
    err = result.error(ValueError)
    assert str(err) == "eight"
    assert any("boom" in note and "8" in note for note in err.__notes__)
    assert result.outputs == [6][: len(result.outputs)]  # what arrived before the failure
    with pytest.raises(AssertionError, match="exactly one KeyError"):
        result.error(KeyError)


async def test_run_on_list_can_raise_the_group() -> None:
    with pytest.raises(ExceptionGroup) as info:
        await run_on_list(tf.map(lambda x: 1 // x), [0], raise_on_error=True)
    assert [type(e) for e in info.value.exceptions] == [ZeroDivisionError]


async def test_run_on_list_without_statistics_when_failing_before_ready() -> None:
    @asynccontextmanager
    async def unreachable() -> AsyncIterator[str]:
        raise OSError("no database")
        yield "conn"  # pragma: no cover

    async def use(conn: str, x: int) -> int:
        return x  # pragma: no cover

    result = await run_on_list(tf.persistent(use, resource=unreachable), [1])
    assert result.statistics is None
    assert result.state is tf.RunState.FAILED
    assert isinstance(result.error(), OSError)


async def test_run_on_list_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="items must be omitted"):
        await run_on_list(tf.from_iterable([1]), [1])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="items is required"):
        await run_on_list(tf.map(double))  # type: ignore[call-overload]


# -- ScriptedSource and RecordingSink -----------------------------------------------------------


async def test_scripted_source_plays_its_script_on_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = ScriptedSource([1, 2, Sleep(5), 3, Sleep(1.5), 4])
    rec: RecordingSink[int] = RecordingSink()
    start = trio.current_time()
    await (src.flow | tf.map(double) | tf.sink(rec)).run()
    assert rec.items == [2, 4, 6, 8]
    assert [t - start for t in rec.times] == [0, 0, 5, 6.5]
    assert src.emitted == 4 and not src.cancelled
    assert rec.completed is False  # a sink function never sees the end of the stream


async def test_scripted_source_replays(autojump_clock: trio.testing.MockClock) -> None:
    src = ScriptedSource(["a", Sleep(1), "b"])
    assert await src.flow.to_list() == ["a", "b"]
    assert await src.flow.to_list() == ["a", "b"]
    assert src.emitted == 4


async def test_scripted_source_waits_for_an_event(autojump_clock: trio.testing.MockClock) -> None:
    go = trio.Event()
    src = ScriptedSource([1, WaitFor(go), 2])
    rec: RecordingSink[int] = RecordingSink()

    async def release() -> None:
        await trio.sleep(7)
        go.set()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        await rec.run(src.flow)
    assert rec.items == [1, 2]
    assert [t - start for t in rec.times] == [0, 7]
    assert rec.completed and not rec.cancelled


async def test_scripted_failure_fails_the_run_and_the_recorder_sees_no_clean_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = ScriptedSource([1, Sleep(1), Fail(KeyError), 2])
    rec: RecordingSink[int] = RecordingSink()
    with pytest.raises(ExceptionGroup) as info:
        await rec.run(src.flow, chunk_size=1)
    assert [type(e) for e in info.value.exceptions] == [KeyError]
    assert rec.items == [1]
    assert rec.cancelled and not rec.completed


async def test_recording_stage_passes_items_on_and_sees_an_early_stop() -> None:
    src = ScriptedSource(range(10))
    rec: RecordingSink[int] = RecordingSink()
    assert await (src.flow | rec.stage | tf.take(2)).to_list() == [0, 1]
    assert rec.cancelled and not rec.completed
    assert rec.items[:2] == [0, 1]


async def test_scripted_fail_with_an_instance() -> None:
    boom = ValueError("once")
    result = await run_on_list(ScriptedSource([Fail(boom)]).flow)
    assert result.errors == (boom,)


# -- probes -------------------------------------------------------------------------------------


async def test_probes_drive_a_stage(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double)) as (src, snk):
        await src.send(1)
        await snk.expect_next(2)
        await src.send_many([2, 3])
        await snk.expect_next_many([4, 6])
        await snk.expect_no_message(10)
        await src.send(5)
        assert await snk.receive_next() == 10
        src.complete()
        await snk.expect_complete()
    assert src.sent == 4 and snk.received == 4


async def test_expect_next_mismatch_is_an_assertion_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double)) as (src, snk):
        await src.send(1)
        with pytest.raises(AssertionError, match="expected item 3, got 2"):
            await snk.expect_next(3)


async def test_expect_next_times_out_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double), timeout=2.5) as (_src, snk):
        start = trio.current_time()
        with pytest.raises(AssertionError, match=r"got nothing within 2.5 s"):
            await snk.expect_next(1)
        assert trio.current_time() - start == 2.5
        snk.timeout = 30
        with pytest.raises(AssertionError, match=r"within 30 s"):
            await snk.expect_complete()


async def test_expect_no_message_fails_on_an_item(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(adouble)) as (src, snk):
        await src.send(1)
        with pytest.raises(AssertionError, match="expected no message for 1 s, got item 2"):
            await snk.expect_no_message(1)


async def test_expect_complete_on_an_erroring_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(lambda x: 1 // x)) as (src, snk):
        await src.send(0)
        with pytest.raises(AssertionError, match="expected completion, but the stream failed") as info:
            await snk.expect_complete()
        assert isinstance(info.value.__cause__, ExceptionGroup)


async def test_expect_complete_fails_on_a_pending_item(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double)) as (src, snk):
        await src.send(1)
        with pytest.raises(AssertionError, match="expected completion, got item 2"):
            await snk.expect_complete()


async def test_expect_error_returns_the_failure(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double, name="twice")) as (src, snk):
        await src.send(1)
        await snk.expect_next(2)
        await src.fail(ValueError("upstream broke"))
        exc = await snk.expect_error(ValueError)
        assert str(exc) == "upstream broke"
        assert any("source-probe" in note for note in exc.__notes__)
    # the source probe was cancelled by nothing: it failed; the stage's error was looked at,
    # so leaving the block raises nothing


async def test_expect_error_mismatches(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(lambda x: 1 // x)) as (src, snk):
        await src.send(0)
        with pytest.raises(AssertionError, match="expected a failure with KeyError, but the stream "
                                                 "failed with ZeroDivisionError"):
            await snk.expect_error(KeyError)
    async with open_probes(tf.map(double)) as (src, snk):
        src.complete()
        with pytest.raises(AssertionError, match="but the stream completed"):
            await snk.expect_error(ValueError)
    async with open_probes(tf.map(double)) as (src, snk):
        await src.send(4)
        with pytest.raises(AssertionError, match="got item 8"):
            await snk.expect_error()


async def test_expect_next_after_the_end(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double)) as (src, snk):
        src.complete()
        with pytest.raises(AssertionError, match="expected item 1, but the stream completed"):
            await snk.expect_next(1)
        with pytest.raises(AssertionError, match="already completed"):
            await src.send(1)


async def test_an_unobserved_failure_is_raised_at_exit(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with open_probes(tf.map(lambda x: 1 // x)) as (src, _snk):
            await src.send(0)
            await trio.sleep(1)
    assert [type(e) for e in info.value.exceptions] == [ZeroDivisionError]


async def test_a_body_error_propagates_unchanged(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(KeyError):
        async with open_probes(tf.map(double)) as (src, _snk):
            await src.send(1)
            raise KeyError("from the test")


async def test_sink_cancel_stops_upstream(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(double)) as (src, snk):
        await src.send(1)
        await snk.expect_next(2)
        snk.cancel()
        # the source is waiting for the test, not emitting: it must be stopped all the same
        await src.expect_cancellation()
        with pytest.raises(AssertionError, match="source was cancelled"):
            await src.send(3)
        with pytest.raises(AssertionError, match="probe was cancelled"):
            await snk.expect_next(4)


async def test_a_stage_ending_early_completes_and_cancels_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_probes(tf.map(adouble) | tf.take(2)) as (src, snk):
        await src.send_many([1, 2, 3])
        await snk.expect_next_many([2, 4])
        await snk.expect_complete()
        await src.expect_cancellation()


async def test_expect_cancellation_fails_while_the_source_is_wanted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_probes(tf.map(double)) as (src, _snk):
        with pytest.raises(AssertionError, match="still listening"):
            await src.expect_cancellation()
    async with open_probes(tf.map(double)) as (src, snk):
        src.complete()
        await snk.expect_complete()
        with pytest.raises(AssertionError, match="not cancelled"):
            await src.expect_cancellation()


async def test_send_fails_under_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    async with open_probes(tf.map(adouble), chunk_size=1, buffer=1, timeout=5) as (src, snk):
        sent = 0
        with pytest.raises(AssertionError, match="backpressuring"):
            for i in range(100):
                await src.send(i)
                sent += 1
        assert 0 < sent < 10  # bounded by the edges and the probes, not by the test
        await snk.expect_next_many([2 * i for i in range(sent)])


async def test_probes_with_a_persistent_stage_close_its_resources(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = ResourceTracker()

    @asynccontextmanager
    async def connect() -> AsyncIterator[dict[int, int]]:
        yield {}

    async def remember(db: dict[int, int], x: int) -> int:
        db[x] = x
        return len(db)

    async with assert_no_leftovers():
        async with open_probes(tf.persistent(remember, resource=tracker.factory(connect))) as (src, snk):
            assert tracker.opened == 1  # ready means resources are open
            await src.send_many([5, 6, 5])
            await snk.expect_next_many([1, 2, 2])
    tracker.assert_all_closed()


# -- fault injection ----------------------------------------------------------------------------


def test_fail_on_call_fails_the_kth_call_and_stays_sync() -> None:
    f = fail_on_call(double, 3)
    assert not inspect.iscoroutinefunction(type(f).__call__)
    assert [f(1), f(2)] == [2, 4]
    with pytest.raises(InjectedFault, match="call 3"):
        f(3)
    assert f(4) == 8
    assert f.calls == 4 and f.faulted == [3]


def test_fail_on_call_with_several_calls_and_an_exception_class() -> None:
    f = fail_on_call(double, {1, 3}, KeyError)
    with pytest.raises(KeyError):
        f(1)
    assert f(2) == 4
    with pytest.raises(KeyError):
        f(3)
    assert f.faulted == [1, 3]


async def test_fail_on_call_in_a_pipeline_names_the_item() -> None:
    f = fail_on_call(adouble, 2, ValueError("second"))
    assert inspect.iscoroutinefunction(type(f).__call__)
    result = await run_on_list(tf.map(f, name="flaky"), [10, 20, 30], chunk_size=1)
    assert [str(e) for e in result.errors] == ["second"]
    assert any("20" in note and "flaky" in note for note in result.errors[0].__notes__)
    assert result.outputs == [20]


def test_fail_with_probability_is_deterministic() -> None:
    def faults(seed: int, p: float = 0.3) -> list[int]:
        f = fail_with_probability(double, p, seed)
        for i in range(200):
            with suppress(InjectedFault):
                f(i)
        assert f.calls == 200
        return f.faulted

    assert faults(1) == faults(1)
    assert faults(1) != faults(2)
    assert 30 < len(faults(1)) < 90
    assert faults(5, 0.0) == [] and faults(5, 1.0) == list(range(1, 201))


async def test_fail_with_probability_wraps_async_functions() -> None:
    f = fail_with_probability(adouble, 1.0, seed=0, exc=OSError)
    with pytest.raises(OSError, match="call 1"):
        await f(1)


async def test_hang_on_call_hangs_until_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    f = hang_on_call(double, 2)  # a sync function becomes async
    start = trio.current_time()
    with trio.move_on_after(60) as scope:
        result = await run_on_list(tf.map(f), [1, 2, 3], chunk_size=1)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 60
    assert f.calls == 2 and f.faulted == [2]
    with trio.fail_after(1):
        result = await run_on_list(tf.map(hang_on_call(adouble, 5)), [1, 2, 3])
    assert result.outputs == [2, 4, 6]


async def test_slow_down_costs_virtual_time_only(autojump_clock: trio.testing.MockClock) -> None:
    f = slow_down(adouble, 2.0)
    start = trio.current_time()
    result = await run_on_list(tf.map(f), [1, 2, 3])
    assert result.outputs == [2, 4, 6]
    assert trio.current_time() - start == 6.0
    assert f.calls == 3 and f.faulted == []
    pooled = slow_down(double, 2.0)
    start = trio.current_time()
    await run_on_list(tf.map(pooled, concurrency=3), [1, 2, 3])
    assert trio.current_time() - start == 2.0


def test_fault_wrappers_check_their_arguments() -> None:
    async def agen(x: int) -> AsyncIterator[int]:
        yield x

    with pytest.raises(ValueError, match="counted from 1"):
        fail_on_call(double, 0)
    with pytest.raises(ValueError, match="probability"):
        fail_with_probability(double, 1.5, seed=0)
    with pytest.raises(ValueError, match="seconds"):
        slow_down(double, -1)
    with pytest.raises(TypeError, match="async generator"):
        hang_on_call(agen, 1)
    with pytest.raises(TypeError, match="exception"):
        fail_on_call(double, 1, "boom")  # type: ignore[call-overload]


# -- cleanup ------------------------------------------------------------------------------------


async def test_assert_no_leftovers_catches_a_leaked_task() -> None:
    async def leaky_stage(nursery: trio.Nursery) -> None:
        nursery.start_soon(trio.sleep_forever, name="forgotten-heartbeat")

    async with trio.open_nursery() as outer:
        with pytest.raises(AssertionError, match=r"1 task.*forgotten-heartbeat"):
            async with assert_no_leftovers():
                await leaky_stage(outer)
        outer.cancel_scope.cancel()


async def test_assert_no_leftovers_passes_for_a_finished_pipeline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with assert_no_leftovers():
        await run_on_list(tf.map(slow_down(adouble, 1), concurrency=4), range(20))
        async with open_probes(tf.map(adouble, concurrency=2)) as (src, snk):
            await src.send(1)
            await snk.expect_next(2)


async def test_assert_no_leftovers_lets_a_body_error_through() -> None:
    with pytest.raises(KeyError):
        async with assert_no_leftovers():
            raise KeyError


async def test_resource_tracker_counts_opens_and_closes() -> None:
    tracker = ResourceTracker()

    @asynccontextmanager
    async def connect() -> AsyncIterator[str]:
        yield "conn"

    async def use(conn: str, x: int) -> int:
        if x == 99:
            raise ValueError(x)
        return x

    stage = tf.persistent(use, resource=tracker.factory(connect), workers=3)
    assert (await run_on_list(stage, [1, 2])).outputs == [1, 2]
    assert (tracker.opened, tracker.closed, tracker.closed_on_error) == (3, 3, 0)
    assert not (await run_on_list(stage, [99])).ok
    assert tracker.opened == 6 and tracker.open == 0
    assert tracker.closed_on_error >= 1  # the failing worker's (idle ones may have ended first)
    tracker.assert_all_closed()

    make = tracker.factory(connect)
    await make().__aenter__()  # entered and never exited
    with pytest.raises(AssertionError, match="1 of 7 resource"):
        tracker.assert_all_closed()


# -- strategies ---------------------------------------------------------------------------------

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])




@PROPS
@given(chain=tfst.chains(), xs=tfst.items(), run=tfst.run_settings())
def test_chains_match_their_reference(
    chain: tuple[tf.Stage[int, int], tfst.Reference], xs: list[int], run: tfst.RunSettings
) -> None:
    stage, reference = chain

    async def main() -> list[int]:
        result = await run_on_list(stage, xs, chunk_size=run.chunk_size, buffer=run.buffer,
                                   raise_on_error=True)
        return result.outputs

    assert run_virtual(main) == reference(xs)


@PROPS
@given(schedule=tfst.fault_schedules(8), run=tfst.run_settings())
def test_the_first_scheduled_fault_fails_the_run(schedule: frozenset[int], run: tfst.RunSettings) -> None:
    f = fail_on_call(adouble, schedule)

    async def main() -> tft.RunResult[int]:
        return await run_on_list(tf.map(f), range(8), chunk_size=run.chunk_size, buffer=run.buffer)

    result = run_virtual(main)
    if not schedule:
        assert result.ok and result.outputs == [2 * x for x in range(8)]
    else:
        first = min(schedule)
        assert [type(e) for e in result.errors] == [InjectedFault]
        assert f.faulted == [first]  # fail-fast: no call after the failing one
        assert result.outputs == [2 * x for x in range(first - 1)][: len(result.outputs)]


@given(st.data())
def test_strategies_draw_what_they_say(data: st.DataObject) -> None:
    xs = data.draw(tfst.items(max_size=5))
    assert len(xs) <= 5 and all(isinstance(x, int) for x in xs)
    schedule = data.draw(tfst.fault_schedules(4, max_failures=1))
    assert len(schedule) <= 1 and schedule <= {1, 2, 3, 4}
    stage, reference = data.draw(tfst.chains(max_length=2))
    assert isinstance(stage, tf.Stage) and 1 <= len(reference.steps) <= 2
    assert repr(reference)  # spells the chain, for readable failing examples
