"""Parallel blocks (DESIGN §3): the pure policy state machine against a brute-force model,
the runtime against a plain-Python model of each policy in virtual time, and examples of
each policy, the timeout, cancellation and definition-time validation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._parallel import Decision, ParallelStage, decide
from trioflow._stage import MapStage


class Boom(ValueError):
    def __init__(self, index: int) -> None:
        super().__init__(f"boom {index}")
        self.index = index


def block_of(stage: tf.Stage[Any, Any]) -> Callable[[Any], Any]:
    """The per-item async function a parallel stage runs (to drive a block directly)."""
    assert isinstance(stage, MapStage)
    return stage.fn


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


@dataclass
class Tracker:
    """What the branch functions saw: which completed (in order), which are alive."""

    alive: int = 0
    started: int = 0
    completed: list[int] = field(default_factory=list)


def branch(tracker: Tracker, index: int, delay: float | None, ok: bool, *, result: Any = None) -> Any:
    """A branch function: ``delay=None`` makes it a plain (sync) function, otherwise it is
    async and sleeps ``delay`` seconds of virtual time; then it returns or raises Boom."""
    value = ("v", index) if result is None else result
    if delay is None:
        def fn(item: Any) -> Any:
            tracker.started += 1
            tracker.completed.append(index)
            if not ok:
                raise Boom(index)
            return value
    else:
        async def fn(item: Any) -> Any:
            tracker.alive += 1
            tracker.started += 1
            try:
                await trio.sleep(delay)
                tracker.completed.append(index)
                if not ok:
                    raise Boom(index)
                return value
            finally:
                tracker.alive -= 1
    fn.__qualname__ = fn.__name__ = f"b{index}"
    return fn


def summary(o: outcome.Outcome[Any] | None, index: int) -> Any:
    if o is None:
        return None
    if isinstance(o, outcome.Value):
        return o.value
    assert isinstance(o, outcome.Error)
    return ("e", type(o.error).__name__, index)


# =============================================================== the pure state machine


def brute_force(policy: tf.ParallelPolicy, n: int, oks: Sequence[bool]) -> Decision:
    """The model: a block fails as soon as *every* way the unfinished functions could end
    leads to failure (BestEffort never fails), FirstK succeeds as soon as every way leads to
    success, and the others decide when everything finished."""

    def final_ok(successes: int) -> bool:
        if isinstance(policy, tf.AllOrNothing):
            return successes == n
        if isinstance(policy, tf.BestEffort):
            return True
        assert isinstance(policy, tf.AtLeast | tf.FirstK)
        return successes >= policy.k

    succeeded = sum(oks)
    remaining = n - len(oks)
    endings = [
        succeeded + sum(rest) for rest in itertools.product([False, True], repeat=remaining)
    ]
    if remaining == 0:
        return Decision.SUCCEED if final_ok(succeeded) else Decision.FAIL
    if not isinstance(policy, tf.BestEffort) and not any(map(final_ok, endings)):
        return Decision.FAIL
    if isinstance(policy, tf.FirstK) and all(map(final_ok, endings)):
        return Decision.SUCCEED
    return Decision.CONTINUE


@st.composite
def policies(draw: st.DrawFn, n: int, *, k_max: int | None = None) -> tf.ParallelPolicy:
    k_max = n if k_max is None else k_max
    kind = draw(st.sampled_from(["all", "best", "atleast", "firstk"]))
    if kind == "all":
        return tf.AllOrNothing()
    if kind == "best":
        return tf.BestEffort()
    k = draw(st.integers(1, k_max))
    return tf.AtLeast(k) if kind == "atleast" else tf.FirstK(k)


def as_outcomes(oks: Sequence[bool]) -> list[outcome.Outcome[Any]]:
    return [outcome.Value(i) if ok else outcome.Error(Boom(i)) for i, ok in enumerate(oks)]


@given(st.data())
def test_decide_matches_brute_force_model(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 7), label="n")
    policy = data.draw(policies(n, k_max=n + 1), label="policy")
    oks = data.draw(st.lists(st.booleans(), max_size=n), label="arrivals")
    for end in range(len(oks) + 1):
        prefix = oks[:end]
        assert decide(policy, n, as_outcomes(prefix)) is brute_force(policy, n, prefix), prefix


@given(st.data())
def test_decide_is_stable_and_total(data: st.DataObject) -> None:
    """Once decided, further arrivals never change the decision (so late arrivals can be
    ignored), and with every function finished the block is always decided."""
    n = data.draw(st.integers(1, 7), label="n")
    policy = data.draw(policies(n), label="policy")
    oks = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="arrivals")
    first = None
    for end in range(n + 1):
        d = decide(policy, n, as_outcomes(oks[:end]))
        if first is not None:
            assert d is first
        elif d is not Decision.CONTINUE:
            first = d
    assert first is not None
    if isinstance(policy, tf.BestEffort):
        assert first is Decision.SUCCEED


def test_decide_examples() -> None:
    v, e = outcome.Value(1), outcome.Error(Boom(0))
    assert decide(tf.AllOrNothing(), 3, [v, v]) is Decision.CONTINUE
    assert decide(tf.AllOrNothing(), 3, [v, e]) is Decision.FAIL
    assert decide(tf.AllOrNothing(), 2, [v, v]) is Decision.SUCCEED
    assert decide(tf.BestEffort(), 2, [e]) is Decision.CONTINUE
    assert decide(tf.BestEffort(), 2, [e, e]) is Decision.SUCCEED
    assert decide(tf.AtLeast(2), 3, [v, v]) is Decision.CONTINUE  # runs everything
    assert decide(tf.AtLeast(2), 3, [e, e]) is Decision.FAIL  # 2 can't be reached
    assert decide(tf.FirstK(2), 3, [e, v, v]) is Decision.SUCCEED
    assert decide(tf.FirstK(2), 4, [v]) is Decision.CONTINUE
    with pytest.raises(ValueError, match="3 outcomes for a block of 2"):
        decide(tf.BestEffort(), 2, [v, v, v])


# ========================================================= the runtime against a model

# A pattern: per function (delay in ms or None for a plain function, succeeds?). The
# timeout is half a millisecond off every delay, so nothing finishes in the same tick as
# the deadline (that race has no single right answer).


@dataclass(frozen=True)
class Expected:
    result: Any  # what the block returns or raises, summarised
    consumed: int  # how many arrivals the decision took
    time: float  # virtual seconds from the start of the block to its end


def model(
    policy: tf.ParallelPolicy,
    pattern: Sequence[tuple[int | None, bool]],
    order: Sequence[int],
    timeout_ms: float | None,
) -> Expected:
    """The plain-Python meaning of a block, walked along an arrival order (which the caller
    checks is consistent with the delays: only ties may be ordered either way)."""
    n = len(pattern)
    slots: list[Any] = [None] * n
    first_error: Any = None
    succeeded = failed = 0

    def ms(i: int) -> int:
        return pattern[i][0] or 0

    def block_error(now: float) -> Expected:
        return Expected(("block", tuple(slots), first_error), consumed, now)

    consumed = 0
    for i in order:
        if timeout_ms is not None and ms(i) > timeout_ms:
            break  # cannot have arrived: it was cancelled at the deadline
        consumed += 1
        now = ms(i) / 1000
        ok = pattern[i][1]
        slots[i] = ("v", i) if ok else ("e", "Boom", i)
        if ok:
            succeeded += 1
        else:
            failed += 1
            first_error = first_error or slots[i]
        if isinstance(policy, tf.AllOrNothing) and not ok:
            return Expected(("raise", slots[i]), consumed, now)
        if isinstance(policy, tf.AtLeast | tf.FirstK) and failed > n - policy.k:
            return block_error(now)
        if isinstance(policy, tf.FirstK) and succeeded >= policy.k:
            return Expected(("ok", tuple(slots)), consumed, now)
    if consumed < n:
        if timeout_ms is None:
            return Expected(("undecided",), consumed, math.nan)  # the block ended too early
        now = timeout_ms / 1000
        for i in range(n):
            if slots[i] is None:
                slots[i] = ("e", "TooSlowError", i)
                failed += 1
                first_error = first_error or slots[i]
    else:
        now = max(ms(i) for i in range(n)) / 1000
    if isinstance(policy, tf.BestEffort):
        return Expected(("ok", tuple(slots)), consumed, now)
    if isinstance(policy, tf.AllOrNothing):
        if failed:
            return Expected(("raise", first_error), consumed, now)
        return Expected(("ok", tuple(slots)), consumed, now)
    assert isinstance(policy, tf.AtLeast | tf.FirstK)
    if succeeded >= policy.k:
        return Expected(("ok", tuple(slots)), consumed, now)
    return block_error(now)


def branch_index(exc: BaseException, labels: Sequence[str]) -> int:
    (index,) = [i for i, label in enumerate(labels) if f"parallel branch {label}" in notes(exc)]
    return index


async def observe(
    stage: tf.Stage[Any, Any], labels: Sequence[str], named: bool
) -> tuple[Any, float]:
    """Run one block; return its summarised result or error and its virtual duration."""
    start = trio.current_time()
    try:
        result = await block_of(stage)("item")
    except tf.ParallelBlockError as exc:
        outcomes = exc.outcomes
        if named:
            assert isinstance(outcomes, dict)
            assert list(outcomes) == [f"k{i}" for i in range(len(labels))]
            outcomes = tuple(outcomes.values())
        assert isinstance(outcomes, tuple)
        cause = exc.__cause__
        assert isinstance(cause, Exception)
        summarised = ("block", tuple(summary(o, i) for i, o in enumerate(outcomes)),
                      ("e", type(cause).__name__, branch_index(cause, labels)))
        return summarised, trio.current_time() - start
    except (Boom, trio.TooSlowError) as exc:
        return ("raise", ("e", type(exc).__name__, branch_index(exc, labels))), (
            trio.current_time() - start
        )
    elapsed = trio.current_time() - start
    if named:
        assert isinstance(result, dict)
        assert list(result) == [f"k{i}" for i in range(len(labels))]
        result = tuple(result.values())
    assert isinstance(result, tuple)
    entries = tuple(r if not isinstance(r, outcome.Outcome) else summary(r, i) for i, r in enumerate(result))
    return ("ok", entries), elapsed


@st.composite
def patterns(draw: st.DrawFn) -> list[tuple[int | None, bool]]:
    n = draw(st.integers(1, 5))
    delay = st.one_of(st.none(), st.integers(0, 4))  # small range: many ties
    return draw(st.lists(st.tuples(delay, st.booleans()), min_size=n, max_size=n))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_block_matches_model(data: st.DataObject) -> None:
    pattern = data.draw(patterns(), label="pattern")
    n = len(pattern)
    policy = data.draw(policies(n), label="policy")
    timeout_ms = data.draw(st.one_of(st.none(), st.integers(0, 4).map(lambda t: t + 0.5)),
                           label="timeout_ms")
    named = data.draw(st.booleans(), label="named")
    tracker = Tracker()
    fns = [branch(tracker, i, None if d is None else d / 1000, ok) for i, (d, ok) in enumerate(pattern)]
    timeout = None if timeout_ms is None else timeout_ms / 1000
    if named:
        stage: tf.Stage[Any, Any] = tf.parallel(
            policy=policy, timeout=timeout, **{f"k{i}": fn for i, fn in enumerate(fns)}
        )
        labels = [repr(f"k{i}") for i in range(n)]
    else:
        stage = tf.parallel(*fns, policy=policy, timeout=timeout)
        labels = [f"#{i} b{i}" for i in range(n)]

    async def main() -> tuple[Any, float]:
        got = await observe(stage, labels, named)
        assert tracker.alive == 0, "a branch task outlived its block"
        return got

    got, elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    def ms(i: int) -> int:
        return pattern[i][0] or 0

    order = tracker.completed
    assert len(order) == len(set(order))
    assert [ms(i) for i in order] == sorted(ms(i) for i in order), "arrivals out of time order"
    expected = model(policy, pattern, order, timeout_ms)
    assert got == expected.result
    assert elapsed == pytest.approx(expected.time, abs=1e-9)
    # Everything due before the decision arrived before it ...
    due = {i for i in range(n) if ms(i) / 1000 < expected.time}
    assert due <= set(order[: expected.consumed])
    # ... and whatever completed after it (its result discarded) was an async sibling woken
    # in the very tick of the decision: a plain function is never called once decided, and
    # a sibling due later never completes.
    for i in order[expected.consumed:]:
        assert pattern[i][0] is not None
        assert ms(i) / 1000 == pytest.approx(expected.time)


# ============================================================================== examples


async def test_all_or_nothing_tuple_of_values() -> None:
    async def double(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return 2 * x

    def neg(x: int) -> int:
        return -x

    out = await (tf.from_iterable([1, 2, 3]) | tf.parallel(double, neg, str)).to_list()
    assert out == [(2, -1, "1"), (4, -2, "2"), (6, -3, "3")]


async def test_named_form_gives_dicts_in_declaration_order() -> None:
    async def score(x: int) -> float:
        await trio.lowlevel.checkpoint()
        return x / 2

    out = await (tf.from_iterable([1, 2]) | tf.parallel(zeta=str, alpha=score)).to_list()
    assert out == [{"zeta": "1", "alpha": 0.5}, {"zeta": "2", "alpha": 1.0}]
    assert [list(d) for d in out] == [["zeta", "alpha"]] * 2


async def test_speedup_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(*[branch(tracker, i, 0.010, True) for i in range(4)])
    start = trio.current_time()
    assert await block_of(stage)(0) == tuple(("v", i) for i in range(4))
    assert trio.current_time() - start == pytest.approx(0.010)  # not 0.040


async def test_concurrency_runs_blocks_side_by_side(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(0.010)
        return x

    start = trio.current_time()
    out = await (tf.from_iterable(range(4)) | tf.parallel(slow, slow, concurrency=2)).to_list()
    assert out == [(x, x) for x in range(4)]
    assert trio.current_time() - start == pytest.approx(0.020)


async def test_all_or_nothing_first_failure_cancels_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.010, True), branch(tracker, 1, 0.002, False),
                        branch(tracker, 2, 0.005, False))
    start = trio.current_time()
    with pytest.raises(Boom) as info:
        await block_of(stage)(0)
    assert info.value.index == 1  # the first to fail, not the first declared
    assert "parallel branch #1 b1" in notes(info.value)
    assert trio.current_time() - start == pytest.approx(0.002)
    assert tracker.completed == [1]
    assert tracker.alive == 0


async def test_all_or_nothing_failure_at_run_level_keeps_the_original(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fine(x: int) -> int:
        await trio.sleep(10)
        return x

    def check(x: int) -> int:
        if x == 2:
            raise KeyError(x)
        return x

    flow = tf.from_iterable(range(5)) | tf.parallel(fine=fine, validate=check)
    caught = []
    try:
        await flow.to_list()
    except* KeyError as group:
        caught.extend(group.exceptions)
    (exc,) = caught
    assert isinstance(exc, KeyError)
    assert "parallel branch 'validate'" in notes(exc)
    assert "stage 'parallel'" in notes(exc)
    assert trio.current_time() == pytest.approx(20)  # items 0 and 1; item 2 failed at once


async def test_best_effort_collects_outcomes_and_never_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.003, False), branch(tracker, 1, None, True),
                        branch(tracker, 2, 0.010, True), policy=tf.BestEffort())
    result = await block_of(stage)(0)
    assert isinstance(result, tuple)
    first, second, third = result
    assert isinstance(first, outcome.Error) and isinstance(first.error, Boom)
    assert second == outcome.Value(("v", 1))
    assert third == outcome.Value(("v", 2))
    assert sorted(tracker.completed) == [0, 1, 2]


async def test_best_effort_run_emits_outcomes() -> None:
    def half(x: int) -> float:
        if x == 0:
            raise ZeroDivisionError(x)
        return 1 / x

    out = await (tf.from_iterable([0, 2]) | tf.parallel(half, str, policy=tf.BestEffort())).to_list()
    assert isinstance(out[0][0], outcome.Error)
    assert isinstance(out[0][0].error, ZeroDivisionError)
    assert out[0][1] == outcome.Value("0")
    assert out[1] == (outcome.Value(0.5), outcome.Value("2"))


async def test_at_least_runs_everything_on_success(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 0.002, False),
                        branch(tracker, 2, 0.009, True), policy=tf.AtLeast(2))
    start = trio.current_time()
    result = await block_of(stage)(0)
    assert [summary(o, i) for i, o in enumerate(result)] == [
        ("v", 0), ("e", "Boom", 1), ("v", 2)
    ]
    assert None not in result
    assert trio.current_time() - start == pytest.approx(0.009)


async def test_at_least_fails_early_once_out_of_reach(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.004, False), branch(tracker, 1, 0.001, False),
                        branch(tracker, 2, 0.050, True), policy=tf.AtLeast(2))
    start = trio.current_time()
    with pytest.raises(tf.ParallelBlockError, match="needed 2 of 3") as info:
        await block_of(stage)(0)
    assert trio.current_time() - start == pytest.approx(0.004)  # not 0.050
    cause = info.value.__cause__
    assert isinstance(cause, Boom) and cause.index == 1  # the first failure to arrive
    outcomes = info.value.outcomes
    assert isinstance(outcomes, tuple)
    assert [summary(o, i) for i, o in enumerate(outcomes)] == [
        ("e", "Boom", 0), ("e", "Boom", 1), None
    ]
    assert tracker.completed == [1, 0]
    assert tracker.alive == 0


async def test_at_least_failure_at_run_level() -> None:
    def bad(x: int) -> int:
        raise ValueError(x)

    flow = tf.from_iterable([1]) | tf.parallel(a=bad, b=bad, c=str, policy=tf.AtLeast(2))
    with pytest.RaisesGroup(tf.ParallelBlockError) as info:
        await flow.to_list()
    (exc,) = info.value.exceptions
    assert isinstance(exc, tf.ParallelBlockError)
    assert isinstance(exc.outcomes, dict)
    assert list(exc.outcomes) == ["a", "b", "c"]
    assert isinstance(exc.__cause__, ValueError)


async def test_first_k_returns_early_with_none_for_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.030, True), branch(tracker, 1, 0.001, False),
                        branch(tracker, 2, 0.002, True), branch(tracker, 3, 0.003, True),
                        policy=tf.FirstK(2))
    start = trio.current_time()
    result = await block_of(stage)(0)
    assert trio.current_time() - start == pytest.approx(0.003)
    assert [summary(o, i) for i, o in enumerate(result)] == [
        None, ("e", "Boom", 1), ("v", 2), ("v", 3)
    ]
    assert tracker.completed == [1, 2, 3]
    assert tracker.alive == 0


async def test_first_k_fails_once_out_of_reach(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, False), branch(tracker, 1, 0.002, False),
                        branch(tracker, 2, 0.009, True), policy=tf.FirstK(2))
    with pytest.raises(tf.ParallelBlockError) as info:
        await block_of(stage)(0)
    assert trio.current_time() == pytest.approx(0.002)
    assert isinstance(info.value.outcomes, tuple)
    assert info.value.outcomes[2] is None
    assert tracker.alive == 0


async def test_timeout_all_or_nothing_raises_too_slow(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 1.0, True),
                        branch(tracker, 2, 2.0, True), timeout=0.5)
    with pytest.raises(trio.TooSlowError) as info:
        await block_of(stage)(0)
    assert "parallel branch #1 b1" in notes(info.value)  # the first unfinished, by position
    assert "within 0.5 s" in str(info.value)
    assert trio.current_time() == pytest.approx(0.5)
    assert tracker.completed == [0]
    assert tracker.alive == 0


async def test_timeout_best_effort_marks_unfinished(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 1.0, True),
                        timeout=0.5, policy=tf.BestEffort())
    result = await block_of(stage)(0)
    assert [summary(o, i) for i, o in enumerate(result)] == [("v", 0), ("e", "TooSlowError", 1)]


async def test_timeout_at_least_can_still_succeed(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 0.002, True),
                        branch(tracker, 2, 60.0, True), timeout=1, policy=tf.AtLeast(2))
    result = await block_of(stage)(0)
    assert [summary(o, i) for i, o in enumerate(result)] == [
        ("v", 0), ("v", 1), ("e", "TooSlowError", 2)
    ]
    assert trio.current_time() == pytest.approx(1.0)


async def test_timeout_first_k_fails(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 60.0, True),
                        timeout=1, policy=tf.FirstK(2))
    with pytest.raises(tf.ParallelBlockError) as info:
        await block_of(stage)(0)
    assert isinstance(info.value.__cause__, trio.TooSlowError)
    assert isinstance(info.value.outcomes, tuple)
    assert [summary(o, i) for i, o in enumerate(info.value.outcomes)] == [
        ("v", 0), ("e", "TooSlowError", 1)
    ]


async def test_timeout_counts_per_item(autojump_clock: trio.testing.MockClock) -> None:
    async def slow_on_odd(x: int) -> int:
        await trio.sleep(0.3 if x % 2 else 0.1)
        return x

    stage = tf.parallel(slow_on_odd, policy=tf.BestEffort(), timeout=0.2)
    out = await (tf.from_iterable(range(4)) | stage).to_list()
    assert [isinstance(o, outcome.Value) for (o,) in out] == [True, False, True, False]
    assert trio.current_time() == pytest.approx(0.1 + 0.2 + 0.1 + 0.2)


async def test_result_after_the_decision_is_discarded(autojump_clock: trio.testing.MockClock) -> None:
    """A sibling that swallows Cancelled and returns (or raises) has no say any more."""

    async def stubborn(x: int) -> str:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            return "late"
        return "never"

    async def stubborn_raiser(x: int) -> str:
        try:
            await trio.sleep(10)
        finally:
            raise KeyError("late")  # replaces Cancelled on purpose

    async def quick(x: int) -> str:
        await trio.sleep(0.001)
        return "quick"

    result = await block_of(tf.parallel(stubborn, quick, stubborn_raiser, policy=tf.FirstK(1)))(0)
    assert result == (None, outcome.Value("quick"), None)

    async def failing(x: int) -> str:
        await trio.sleep(0.001)
        raise Boom(0)

    with pytest.raises(Boom):  # not the later KeyError
        await block_of(tf.parallel(stubborn_raiser, failing))(0)


async def test_outer_cancellation_stops_every_branch(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(*[branch(tracker, i, 10.0, True) for i in range(3)],
                        policy=tf.BestEffort(), timeout=60)
    with trio.move_on_after(1) as scope:
        await block_of(stage)(0)
    assert scope.cancelled_caught  # the run's cancellation is not turned into TooSlowError
    assert tracker.completed == []
    assert tracker.alive == 0


async def test_cancelling_the_run_stops_running_blocks(autojump_clock: trio.testing.MockClock) -> None:
    tracker = Tracker()
    stage = tf.parallel(branch(tracker, 0, 10.0, True), branch(tracker, 1, 10.0, True),
                        concurrency=2)
    with trio.move_on_after(1):
        await (tf.from_iterable(range(10)) | stage).to_list()
    assert tracker.started == 4  # two blocks of two
    assert tracker.completed == []
    assert tracker.alive == 0


async def test_plain_function_not_called_once_decided() -> None:
    calls = []

    def boom(x: int) -> int:
        calls.append("boom")
        raise Boom(0)

    def other(x: int) -> int:
        calls.append("other")
        return x

    # The two start in either order (Trio's scheduler); if ``boom`` runs first, ``other``
    # must never be called. Repeat so both orders occur.
    seen = set()
    for _ in range(50):
        calls.clear()
        with pytest.raises(Boom):
            await block_of(tf.parallel(boom, other))(0)
        seen.add(tuple(calls))
        assert calls in (["boom"], ["other", "boom"])
    assert seen == {("boom",), ("other", "boom")}


async def test_ties_in_the_same_tick(autojump_clock: trio.testing.MockClock) -> None:
    """Two successes in the same tick under FirstK(1): one is used, the other is either
    cancelled or arrives late and is discarded; either way exactly one Value."""
    seen = set()
    for _ in range(50):
        tracker = Tracker()
        stage = tf.parallel(branch(tracker, 0, 0.001, True), branch(tracker, 1, 0.001, True),
                            policy=tf.FirstK(1))
        result = await block_of(stage)(0)
        assert sum(isinstance(o, outcome.Value) for o in result) == 1
        assert result.count(None) == 1
        seen.add(result.index(None))
        assert tracker.alive == 0
    assert seen == {0, 1}


# ============================================================= definition and planning


def test_stage_is_a_named_map_stage() -> None:
    async def a(x: int) -> int:
        return x

    stage = tf.parallel(a, a, concurrency=3, ordered=False)
    assert isinstance(stage, ParallelStage) and isinstance(stage, MapStage)
    assert stage.concurrency == 3 and stage.ordered is False
    assert stage.lifecycle is tf.Lifecycle.POOLED
    assert stage.name is None
    assert tf.parallel(a, name="fanout").name == "fanout"


def test_plan_names_parallel_blocks() -> None:
    flow = tf.from_iterable([1]) | tf.parallel(str, repr) | tf.parallel(str) | tf.parallel(
        str, name="mine")
    names = [node.name for node in flow.plan().nodes]
    assert names[1:4] == ["parallel", "parallel_2", "mine"]
    assert [node.operator for node in flow.plan().nodes][1:4] == ["parallel"] * 3


def test_policies_are_plain_frozen_data() -> None:
    assert tf.AtLeast(2) == tf.AtLeast(k=2)
    assert tf.AtLeast(2) != tf.FirstK(2)
    assert tf.AllOrNothing() == tf.AllOrNothing() != tf.BestEffort()
    assert len({tf.AtLeast(1), tf.AtLeast(1), tf.FirstK(1)}) == 2
    assert repr(tf.FirstK(3)) == "FirstK(k=3)"
    with pytest.raises(AttributeError):
        tf.AtLeast(2).k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: tf.AtLeast(0), tf.DefinitionValueError, "k of AtLeast must be >= 1"),
        (lambda: tf.FirstK(-1), tf.DefinitionValueError, "k of FirstK must be >= 1"),
        (lambda: tf.AtLeast("2"), tf.DefinitionTypeError, "k of AtLeast must be an int"),
        (lambda: tf.FirstK(True), tf.DefinitionTypeError, "k of FirstK must be an int"),
        (lambda: tf.parallel(), tf.DefinitionTypeError, "at least one function"),
        (lambda: tf.parallel(str, a=str), tf.DefinitionTypeError, "not both"),
        (lambda: tf.parallel(str, policy=tf.BestEffort), tf.DefinitionTypeError,
         r"policy must be a policy instance such as BestEffort\(...\)"),
        (lambda: tf.parallel(str, policy="all"), tf.DefinitionTypeError, "policy must be"),
        (lambda: tf.parallel(str, repr, policy=tf.AtLeast(3)), tf.DefinitionValueError,
         r"policy AtLeast\(k=3\) needs k <= the number of functions \(2\)"),
        (lambda: tf.parallel(a=str, policy=tf.FirstK(2)), tf.DefinitionValueError, "k <="),
        (lambda: tf.parallel(str, 3), tf.DefinitionTypeError, "function #1 of parallel must be callable"),
        (lambda: tf.parallel(str, timeout=0), tf.DefinitionValueError, "timeout must be"),
        (lambda: tf.parallel(str, timeout=-1), tf.DefinitionValueError, "timeout must be"),
        (lambda: tf.parallel(str, timeout=math.nan), tf.DefinitionValueError, "timeout must be"),
        (lambda: tf.parallel(str, timeout="1"), tf.DefinitionTypeError, "timeout must be"),
        (lambda: tf.parallel(str, concurrency=0), tf.DefinitionValueError, "concurrency must be"),
        (lambda: tf.parallel(str, ordered=None), tf.DefinitionTypeError, "ordered must be"),
        (lambda: tf.parallel(str, name=""), tf.DefinitionValueError, "name must be"),
        (lambda: tf.parallel(str, buffer=0), tf.DefinitionValueError, "buffer must be"),
    ],
)
def test_definition_errors_name_the_argument(build: Callable[[], object], error: type[Exception],
                                             match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_generator_functions_are_rejected() -> None:
    def gen(x: int) -> Any:
        yield x

    async def agen(x: int) -> Any:
        yield x

    with pytest.raises(tf.DefinitionTypeError, match="function 'g' of parallel must be a plain or async"):
        tf.parallel(f=str, g=gen)
    with pytest.raises(tf.DefinitionTypeError, match=r"function #0 of parallel .* async generator"):
        tf.parallel(agen)


def test_parallel_docstring_states_its_contract() -> None:
    doc = (tf.parallel.__doc__ or "").lower()
    for word in ("emits", "backpressure", "completes", "cancelled", "on error"):
        assert word in doc, word
    for name in ("AllOrNothing", "BestEffort", "AtLeast", "FirstK", "ParallelBlockError",
                 "ParallelPolicy"):
        assert (getattr(tf, name).__doc__ or "").strip(), name
