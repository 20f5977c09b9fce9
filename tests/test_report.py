"""Run reports (``run(report=True)``, ``handle.report()``), printable statistics, and the
lifecycle label of resource-less pools."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf


async def _af(x: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return x


async def _atrue(x: Any) -> bool:
    await trio.lowlevel.checkpoint()
    return True


async def _aone(x: Any) -> list[Any]:
    await trio.lowlevel.checkpoint()
    return [x]


async def _anone(x: Any) -> None:
    await trio.lowlevel.checkpoint()


# ------------------------------------------------------------------------ lifecycle label


async def test_pooled_async_stages_are_labelled_pooled_not_persistent() -> None:
    # regression: map(async_fn, concurrency=N) reported lifecycle "persistent" although it
    # has no resource
    pipeline = (
        tf.from_iterable(range(5))
        | tf.map(_af, concurrency=2, name="m")
        | tf.map(_af, concurrency=tf.Adaptive(min=1, max=3), name="adaptive")
        | tf.filter(_atrue, concurrency=2, name="f")
        | tf.tap(_anone, concurrency=2, name="t")
        | tf.flat_map(_aone, concurrency=2, name="fm")
        | tf.sink(_anone, concurrency=2, name="s")
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
    stats = handle.statistics()
    pools = ["m", "adaptive", "f", "t", "fm", "s"]
    assert {name: stats.stage(name).lifecycle for name in pools} == dict.fromkeys(pools, tf.Lifecycle.POOLED)
    assert tf.Lifecycle.POOLED.value == "pooled"
    # one call at a time is no pool; a resource per worker is still persistent
    assert tf.map(_af, name="one").lifecycle is tf.Lifecycle.CONTINUOUS
    assert tf.sink(_anone).lifecycle is tf.Lifecycle.CONTINUOUS
    assert "segment 1 (pooled): m[map]" in str(pipeline.plan())


# ---------------------------------------------------------------------- report, property test


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Step:
    """One stage of a random chain: what it does, how it runs, which items fail, and what
    its error policy does with them."""

    kind: str  # map | filter | flat_map | tap
    mode: str  # sync (fused) | async (own task) | pool (ordered) | unordered
    #: the item fails (every attempt) when ``(x * 7 + salt) % mod == 0``
    mod: int
    salt: int
    policy: str  # skip | dead_letter | collect
    #: ``Retry(attempts=2)``: then every item's first failing attempt is retried once, and
    #: items with ``x % 4 == flaky`` fail on their first attempt only
    retry: bool
    flaky: int

    def fails(self, x: int) -> bool:
        return (x * 7 + self.salt) % self.mod == 0

    def apply(self, x: int) -> list[int]:
        """The reference: what the stage emits for an item that did not fail."""
        if self.kind == "map":
            return [3 * x + 1]
        if self.kind == "filter":
            return [x] if x % 3 != 0 else []
        if self.kind == "flat_map":
            return [2 * x, 2 * x + 1]
        return [x]


@st.composite
def steps(draw: st.DrawFn) -> Step:
    return Step(
        kind=draw(st.sampled_from(["map", "filter", "flat_map", "tap"])),
        mode=draw(st.sampled_from(["sync", "async", "pool", "unordered"])),
        mod=draw(st.sampled_from([2, 3, 5, 1_000_003])),
        salt=draw(st.integers(0, 10)),
        policy=draw(st.sampled_from(["skip", "dead_letter", "collect"])),
        retry=draw(st.booleans()),
        flaky=draw(st.integers(0, 3)),
    )


def _stage(step: Step, name: str, letters: list[tf.DeadLetterEntry]) -> tf.Stage[int, int]:
    first_tries: set[int] = set()  # items are unique in a stage: maps and flat_map are injective

    def call(x: int) -> Any:
        if step.fails(x):
            raise Boom(name, x)
        if step.retry and x % 4 == step.flaky and x not in first_tries:
            first_tries.add(x)
            raise Boom(name, x, "flaky")
        if step.kind == "filter":
            return x % 3 != 0
        if step.kind == "tap":
            return None
        out = step.apply(x)
        return out if step.kind == "flat_map" else out[0]

    async def acall(x: int) -> Any:
        await trio.sleep((x % 3) * 0.001)  # pools finish out of order
        return call(x)

    policy: tf.OnError = {"skip": tf.Skip(), "dead_letter": tf.DeadLetter(letters),
                          "collect": tf.Collect()}[step.policy]
    options: dict[str, Any] = {"on_error": policy, "name": name}
    if step.retry:
        options["retry"] = tf.Retry(attempts=2, backoff=tf.Backoff(min=0.01, jitter=0))
    if step.mode in ("pool", "unordered"):
        options["concurrency"] = 3
        options["ordered"] = step.mode == "pool"
    fn = call if step.mode == "sync" else acall
    op = {"map": tf.map, "filter": tf.filter, "flat_map": tf.flat_map, "tap": tf.tap}[step.kind]
    return op(fn, **options)  # type: ignore[operator, no-any-return]


@given(
    xs=st.lists(st.integers(0, 200), max_size=40, unique=True),
    chain=st.lists(steps(), min_size=1, max_size=5),
    via_handle=st.booleans(),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_report_counts_match_reference(xs: list[int], chain: list[Step], via_handle: bool) -> None:
    letters: list[tf.DeadLetterEntry] = []
    names = [f"s{i}" for i in range(len(chain))]
    flow: tf.Flow[int] = tf.from_iterable(xs)
    for step, name in zip(chain, names, strict=True):
        flow = flow | _stage(step, name, letters)
    pipeline = flow | tf.to_list()

    async def run() -> tf.RunReport[list[int]]:
        if not via_handle:
            return await pipeline.run(report=True)
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(partial(pipeline.run, report=True))
        return handle.report()

    # collected failures do not raise (nothing to catch here), fail-fast errors are none
    report: tf.RunReport[list[int]] = run_virtual(run)

    # the plain-Python expectation, stage by stage
    items, failed = list(xs), []
    filtered: dict[str, int] = {}
    expected: dict[str, dict[str, int]] = {}
    for step, name in zip(chain, names, strict=True):
        out: list[int] = []
        bad = [x for x in items if step.fails(x)]
        for x in items:
            if not step.fails(x):
                out.extend(step.apply(x))
        failed += [(name, x) for x in bad]
        filtered[name] = sum(1 for x in items if not step.fails(x) and not step.apply(x))
        n_bad = len(bad)
        expected[name] = {
            "items_in": len(items), "items_out": len(out), "errors": n_bad,
            "skipped": n_bad if step.policy == "skip" else 0,
            "dead_lettered": 0 if step.policy == "skip" else n_bad,
            "retries": sum(1 for x in items if step.fails(x) or x % 4 == step.flaky) if step.retry else 0,
        }
        items = out

    got = {name: {k: getattr(report.stage(name), k) for k in expected[name]} for name in names}
    assert got == expected
    # every item that entered a 1:1 stage is emitted, skipped, dead-lettered or filtered
    for step, name in zip(chain, names, strict=True):
        s = report.stage(name)
        if step.kind != "flat_map":
            assert s.items_in == s.items_out + s.skipped + s.dead_lettered + filtered[name]
    assert report.state is tf.RunState.COMPLETED
    assert report.errors == ()
    collected = [(f.stage, f.item) for f in report.failures]
    lettered = [(f.stage, f.item) for f in letters]
    policy_of = dict(zip(names, (s.policy for s in chain), strict=True))
    assert sorted(collected) == sorted(f for f in failed if policy_of[f[0]] == "collect")
    assert sorted(lettered) == sorted(f for f in failed if policy_of[f[0]] == "dead_letter")
    assert all(isinstance(f.exception, Boom) for f in report.failures)
    ordered = all(s.mode != "unordered" for s in chain)
    assert (report.result if ordered else sorted(report.result)) == (items if ordered else sorted(items))
    assert report.results == {"to_list": report.result}
    assert report.duration >= 0


# ------------------------------------------------------------------------ report, examples


def _parse(s: str) -> int:
    return int(s)


def _collecting() -> tf.Pipeline[list[int]]:
    return (tf.from_iterable(["1", "x", "3", "y"]) | tf.map(_parse, on_error=tf.Collect(), name="parse")
            | tf.to_list())


async def test_report_returns_collected_failures_instead_of_raising() -> None:
    report = await _collecting().run(report=True)
    assert report.state is tf.RunState.COMPLETED
    assert report.result == [1, 3]
    assert [(f.stage, f.item) for f in report.failures] == [("parse", "x"), ("parse", "y")]
    assert all(isinstance(f.exception, ValueError) for f in report.failures)
    assert report.stage("parse").dead_lettered == 2
    assert report.stages == report.statistics.stages


async def test_run_without_report_still_raises_collected_failures() -> None:
    with pytest.RaisesGroup(ValueError, ValueError, flatten_subgroups=False,
                            match=r"run completed; 2 item\(s\) failed"):
        await _collecting().run()


async def test_fail_fast_error_still_raises_with_report() -> None:
    pipeline = (tf.from_iterable(["1", "x", "3"]) | tf.map(_parse, on_error=tf.Collect(), name="c")
                | tf.map(_parse, name="strict") | tf.to_list())
    bad = tf.from_iterable(["1", "2", "x"]) | tf.map(_parse, name="strict") | tf.to_list()
    # one group level whose leaf is the original error, noted with its stage
    with pytest.RaisesGroup(ValueError, flatten_subgroups=False) as info:
        await bad.run(report=True)
    assert "'strict'" in info.value.exceptions[0].__notes__[0]
    # the collected failure goes with the real one, as without a report
    with pytest.RaisesGroup(ValueError, TypeError, flatten_subgroups=False):
        await (pipeline.flow | tf.map(lambda n: n + "!", name="typo") | tf.to_list()).run(report=True)


async def test_handle_cancel_with_report_returns_a_cancelled_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # also the regression: cancel of a run whose Collect() stage had collected a failure
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    pipeline = (tf.from_iterable(["1", "x", "3", "4"]) | tf.map(_parse, on_error=tf.Collect(), name="parse")
                | tf.map(slow, name="slow") | tf.to_list())
    reports: list[tf.RunReport[list[int]]] = []

    async def run(task_status: trio.TaskStatus[tf.RunHandle[list[int]]]) -> None:
        reports.append(await pipeline.run(report=True, task_status=task_status))

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run)
        await trio.sleep(1.5)
        handle.cancel()
    (report,) = reports  # run returned quietly, with a report
    assert report.state is tf.RunState.CANCELLED
    assert report.result == [1]
    assert [f.item for f in report.failures] == ["x"]
    assert report.duration == pytest.approx(1.5)
    assert handle.report() == report


async def test_outside_cancellation_propagates_with_report(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    pipeline = tf.from_iterable(range(5)) | tf.map(slow) | tf.to_list()
    with trio.move_on_after(2.5) as scope:
        await pipeline.run(report=True)
    assert scope.cancelled_caught


async def test_handle_report_only_after_the_end() -> None:
    gate = trio.Event()

    async def wait(x: int) -> int:
        await gate.wait()
        return x

    pipeline = tf.from_iterable(range(3)) | tf.map(wait) | tf.to_list()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        with pytest.raises(RuntimeError, match="no report yet: it is running"):
            handle.report()
        gate.set()
    report = handle.report()
    assert (report.state, report.result, report.failures) == (tf.RunState.COMPLETED, [0, 1, 2], ())


async def test_report_of_a_failed_run_from_the_handle() -> None:
    gate = trio.Event()

    async def parse_later(s: str) -> int:
        await gate.wait()
        return int(s)

    pipeline = tf.from_iterable(["1", "x"]) | tf.map(parse_later, name="strict") | tf.to_list()
    handles: list[tf.RunHandle[list[int]]] = []
    with pytest.RaisesGroup(pytest.RaisesGroup(ValueError)):
        async with trio.open_nursery() as nursery:
            handles.append(await nursery.start(partial(pipeline.run, report=True)))
            gate.set()
    report = handles[0].report()
    assert report.state is tf.RunState.FAILED
    assert [type(e) for e in report.errors] == [ValueError]
    assert report.stage("strict").errors == 1


async def test_report_duration_is_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    report = await (tf.from_iterable(range(3)) | tf.map(slow)).run(report=True)
    assert report.duration == pytest.approx(3.0)
    assert (report.result, report.results) == (None, {})  # a flow without a sink drops its items
    assert report.stage("map").items_out == 3


async def test_graph_report_indexed_by_sink() -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable(["1", "x", "2", "3"]))
    fan = g.broadcast(g.add(tf.map(_parse, on_error=tf.Collect(), name="parse"), src))
    evens = g.add(tf.to_list(name="evens"), g.add(tf.filter(lambda n: n % 2 == 0), fan))
    odds = g.add(tf.to_list(name="odds"), g.add(tf.filter(lambda n: n % 2 == 1), fan))
    report = await g.run(report=True)
    assert isinstance(report.result, tf.GraphResult)
    assert (report.result[evens], report.result[odds]) == ([2], [1, 3])
    assert report.results == {"evens": [2], "odds": [1, 3]}
    assert [(f.stage, f.item) for f in report.failures] == [("parse", "x")]


# ------------------------------------------------------------------------- printable tables


async def test_report_and_statistics_tables_exact_text(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(n: int) -> int:
        await trio.sleep(1)
        return n * 10

    pipeline = (tf.from_iterable(["1", "x", "3"]) | tf.map(_parse, on_error=tf.Collect(), name="parse")
                | tf.map(slow, concurrency=2, name="enrich") | tf.to_list())
    report = await pipeline.run(report=True)
    stats = """\
stage          operator       lifecycle   in  out  in flight  errors  skipped  dead-lettered  retries  restarts
from_iterable  from_iterable  continuous   0    3          0       0        0              0        0         0
parse          map            continuous   3    2          0       1        0              1        0         0
enrich         map            pooled       2    2          0       0        0              0        0         0
to_list        to_list        continuous   2    0          0       0        0              0        0         0

edge             depth/capacity  peak  total  dropped
parse -> enrich           0/512     2      2        0""".splitlines()  # noqa: E501
    assert str(report.statistics).splitlines() == ["state: completed", *stats]
    assert report.statistics.table() == str(report.statistics)
    assert str(report).splitlines() == [
        "run completed in 1.000 s: 1 failure(s) collected, 0 error(s)",
        *stats,
        "",
        "failed in  attempt  item  exception",
        """parse            1  'x'   ValueError("invalid literal for int() with base 10: 'x'")""",
    ]
    assert report.table() == str(report)


def test_statistics_table_unbounded_edge_and_no_edges() -> None:
    stage = tf.StageStatistics(
        name="write", operator="persistent", lifecycle=tf.Lifecycle.PERSISTENT, segment=1,
        items_in=12, items_out=9, errors=3, in_flight=4, workers=4, waiting=0, skipped=1,
        dead_lettered=2, retries=5, restarts=1,
    )
    edge = tf.EdgeStatistics(name="src -> write", capacity=None, depth=1234, peak=2000,
                             total=10_000, dropped=0)
    running = tf.RunStatistics(state=tf.RunState.RUNNING, stages=(stage,), edges=(edge,))
    assert str(running) == """\
state: running
stage  operator    lifecycle   in  out  in flight  errors  skipped  dead-lettered  retries  restarts
write  persistent  persistent  12    9          4       3        1              2        5         1

edge          depth/capacity  peak  total  dropped
src -> write  1234/unbounded  2000  10000        0"""
    fused = tf.RunStatistics(state=tf.RunState.CANCELLED, stages=(stage,), edges=())
    assert str(fused).splitlines()[-2:] == ["", "no edges (every stage runs in one task)"]
