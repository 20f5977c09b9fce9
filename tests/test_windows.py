"""The pure window state machines (``trioflow._windows``), against a batch computation.

The reference below is written independently of the machines: a window is found by
testing containment (``start <= t < end``) over candidate starts, lateness is decided from
the watermark the input had reached before the item's chunk, and sessions are found by
sorting. Timestamps and sizes are integers, so every comparison is exact.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._windows import (
    CollectAll,
    Fold,
    Late,
    Reduce,
    Session,
    Sliding,
    Tumbling,
    Watermark,
    WindowLimitError,
    WindowResult,
    make_windows,
)

Item = tuple[int, str, int]  # (timestamp, key, value)

SUM = Fold(0, lambda acc, x: acc + x[2])


def ts_of(x: Item) -> int:
    return x[0]


def key_of(x: Item) -> str:
    return x[1]


def run_machine(
    kind: Any, chunks: list[list[Item]], *, max_delay: int, lateness: int, agg: Any = SUM,
    keyed: bool = True,
) -> tuple[list[WindowResult[Any, Any]], list[Late[Any]]]:
    """Drive a machine as the runtime does in event time: add a chunk, then move the
    watermark to the newest timestamp minus ``max_delay``; flush at the end."""
    w = make_windows(kind, key=key_of if keyed else None, timestamp=ts_of, aggregate=agg,
                     lateness=lateness)
    mark = Watermark(max_delay, None)
    out: list[WindowResult[Any, Any]] = []
    late: list[Late[Any]] = []
    for chunk in chunks:
        fired, lt = w.add(chunk)
        out += fired
        late += lt
        if chunk:
            out += w.advance(mark.observe(max(x[0] for x in chunk), 0.0))
    out += w.flush()
    assert w.open == 0
    assert w.late == len(late)
    return out, late


# -- the reference --------------------------------------------------------------------------


def windows_of(kind: Tumbling | Sliding, t: int) -> list[tuple[int, int]]:
    step = int(kind.step if isinstance(kind, Sliding) else kind.size)
    size, offset = int(kind.size), int(kind.offset)
    starts = range(t - size - step, t + step + 1)
    return [(s, s + size) for s in starts if (s - offset) % step == 0 and s <= t < s + size]


def watermarks(chunks: list[list[Item]], max_delay: int) -> list[float]:
    """The watermark before each chunk."""
    wm, newest, out = -math.inf, -math.inf, []
    for chunk in chunks:
        out.append(wm)
        if chunk:
            newest = max(newest, *(x[0] for x in chunk))
            wm = max(wm, newest - max_delay)
    return out


def reference_late(
    kind: Any, chunks: list[list[Item]], max_delay: int, lateness: int
) -> tuple[list[Item], list[Item]]:
    on_time: list[Item] = []
    late: list[Item] = []
    for wm, chunk in zip(watermarks(chunks, max_delay), chunks, strict=True):
        for x in chunk:
            if isinstance(kind, Session):
                too_late = x[0] < wm - lateness
            else:
                too_late = min(e for _, e in windows_of(kind, x[0])) + lateness <= wm
            (late if too_late else on_time).append(x)
    return on_time, late


def batch_fixed(kind: Tumbling | Sliding, items: list[Item]) -> dict[tuple[str, int, int], int]:
    out: dict[tuple[str, int, int], int] = defaultdict(int)
    for t, k, v in items:
        for s, e in windows_of(kind, t):
            out[k, s, e] += v
    return dict(out)


def batch_sessions(gap: int, items: list[Item]) -> dict[tuple[str, int, int], int]:
    by_key: dict[str, list[Item]] = defaultdict(list)
    for x in items:
        by_key[x[1]].append(x)
    out = {}
    for k, xs in by_key.items():
        xs.sort()
        start, end, total = xs[0][0], xs[0][0] + gap, 0
        for t, _, v in xs:
            if t >= end:
                out[k, start, end] = total
                start, total = t, 0
            end = max(end, t + gap)
            total += v
        out[k, start, end] = total
    return out


def final(out: list[WindowResult[Any, Any]]) -> dict[tuple[Any, float, float], Any]:
    last: dict[tuple[Any, float, float], Any] = {}
    for r in out:
        last[r.key, r.start, r.end] = r.result
    return last


# -- strategies -----------------------------------------------------------------------------

items_st = st.lists(
    st.tuples(st.integers(0, 120), st.sampled_from("abc"), st.integers(-5, 20)), max_size=60
)
fixed_kinds = st.one_of(
    st.builds(Tumbling, st.integers(1, 20), st.integers(-7, 7)),
    st.integers(1, 20).flatmap(
        lambda size: st.builds(Sliding, st.just(size), st.integers(1, size), st.integers(-7, 7))
    ),
)


@st.composite
def chunked(draw: st.DrawFn, items: list[Item]) -> list[list[Item]]:
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=8)))
    bounds = [0, *cuts, len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def within_bound(draw: st.DrawFn, max_delay: int) -> list[Item]:
    """Items out of order by at most ``max_delay``: each is no older than the newest before
    it minus ``max_delay``."""
    bases = sorted(draw(st.lists(st.integers(0, 120), max_size=60)))
    return [(b - draw(st.integers(0, max_delay)), draw(st.sampled_from("abc")), draw(st.integers(-5, 20)))
            for b in bases]


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(kind=fixed_kinds, items=items_st, max_delay=st.integers(0, 15), lateness=st.integers(0, 15),
       data=st.data())
def test_fixed_windows_equal_the_batch_computation(
    kind: Tumbling | Sliding, items: list[Item], max_delay: int, lateness: int, data: st.DataObject
) -> None:
    chunks = data.draw(chunked(items))
    out, late = run_machine(kind, chunks, max_delay=max_delay, lateness=lateness)
    on_time, ref_late = reference_late(kind, chunks, max_delay, lateness)
    # every item is in the late output or in exactly its windows, never both, never lost
    assert [x.item for x in late] == ref_late
    assert final(out) == batch_fixed(kind, on_time)
    # a window's first firing is not an update; with no lateness there is never an update
    seen: set[tuple[Any, float, float]] = set()
    for r in out:
        assert r.update == ((r.key, r.start, r.end) in seen)
        seen.add((r.key, r.start, r.end))
    if lateness == 0:
        assert not any(r.update for r in out)


@settings(max_examples=300, deadline=None)
@given(gap=st.integers(1, 20), items=items_st, max_delay=st.integers(0, 15), data=st.data())
def test_sessions_equal_the_batch_computation(
    gap: int, items: list[Item], max_delay: int, data: st.DataObject
) -> None:
    chunks = data.draw(chunked(items))
    out, late = run_machine(Session(gap), chunks, max_delay=max_delay, lateness=0)
    on_time, ref_late = reference_late(Session(gap), chunks, max_delay, 0)
    assert [x.item for x in late] == ref_late
    assert final(out) == batch_sessions(gap, on_time)
    assert len(out) == len(final(out))  # each session fires once
    assert not any(r.update for r in out)


@settings(max_examples=300, deadline=None)
@given(gap=st.integers(1, 20), items=items_st, max_delay=st.integers(0, 15),
       lateness=st.integers(1, 15), data=st.data())
def test_sessions_with_lateness_end_with_the_batch_sessions(
    gap: int, items: list[Item], max_delay: int, lateness: int, data: st.DataObject
) -> None:
    chunks = data.draw(chunked(items))
    out, late = run_machine(Session(gap), chunks, max_delay=max_delay, lateness=lateness)
    on_time, ref_late = reference_late(Session(gap), chunks, max_delay, lateness)
    assert [x.item for x in late] == ref_late
    expected = batch_sessions(gap, on_time)
    got = final(out)
    # every batch session was emitted, its last firing with the batch result; any other
    # firing was of a session that a late item later merged into a bigger one
    for w, total in expected.items():
        assert got[w] == total
    for k, s, e in got.keys() - expected.keys():
        assert any(k2 == k and s2 <= s and e <= e2 for k2, s2, e2 in expected)


@settings(max_examples=200, deadline=None)
@given(kind=st.one_of(fixed_kinds, st.builds(Session, st.integers(1, 20))),
       max_delay=st.integers(0, 15), data=st.data())
def test_out_of_order_within_the_bound_equals_sorted_input(
    kind: Any, max_delay: int, data: st.DataObject
) -> None:
    items = data.draw(within_bound(max_delay))
    chunks = data.draw(chunked(items))
    out, late = run_machine(kind, chunks, max_delay=max_delay, lateness=0)
    sorted_out, _ = run_machine(kind, [sorted(items)], max_delay=0, lateness=0)
    assert late == []
    assert final(out) == final(sorted_out)
    assert not any(r.update for r in out)


@settings(max_examples=200, deadline=None)
@given(kind=st.one_of(fixed_kinds, st.builds(Session, st.integers(1, 20))), items=items_st,
       max_delay=st.integers(0, 15), data=st.data())
def test_each_item_is_in_exactly_its_windows_or_late(
    kind: Any, items: list[Item], max_delay: int, data: st.DataObject
) -> None:
    """With ``CollectAll`` the windows show their members: each on-time item is in exactly
    the windows that contain its timestamp (for sessions: exactly one, which spans it), a
    late item in none."""
    items = [(t, k, i) for i, (t, k, _) in enumerate(items)]  # values tell items apart
    chunks = data.draw(chunked(items))
    out, late = run_machine(kind, chunks, max_delay=max_delay, lateness=0, agg=CollectAll())
    on_time, _ = reference_late(kind, chunks, max_delay, 0)
    where: dict[Item, list[tuple[float, float]]] = defaultdict(list)
    for r in out:
        assert r.result, "a window is never empty"
        for x in r.result:
            assert x[1] == r.key and r.start <= x[0] < r.end
            where[x].append((r.start, r.end))
    assert set(where) == set(on_time)
    assert not set(where) & {lt.item for lt in late}
    for x in on_time:
        if isinstance(kind, Session):
            assert len(where[x]) == 1
        else:
            assert sorted(where[x]) == windows_of(kind, x[0])


# -- examples -------------------------------------------------------------------------------


def test_tumbling_fires_at_the_watermark_and_updates_within_lateness() -> None:
    w = make_windows(Tumbling(10), key=None, timestamp=ts_of, aggregate=SUM, lateness=5)
    assert w.add([(1, "a", 1), (9, "a", 2)]) == ([], [])
    assert w.advance(9) == []
    assert w.advance(10) == [WindowResult(None, 0, 10, 3)]
    assert w.open == 1  # kept for lateness
    # a late item within the lateness: the window fires again, as an update
    assert w.add([(5, "a", 10)]) == ([WindowResult(None, 0, 10, 13, update=True)], [])
    assert w.advance(15) == []
    assert w.open == 0
    fired, late = w.add([(5, "a", 100)])  # too late now
    assert fired == [] and late == [Late((5, "a", 100), 5, 15)]
    assert w.late == 1
    assert w.flush() == []


def test_reduce_and_collect_all() -> None:
    w = make_windows(Tumbling(10), key=key_of, timestamp=ts_of,
                     aggregate=Reduce(lambda a, b: a if a[2] >= b[2] else b))
    w.add([(1, "a", 5), (2, "b", 1), (3, "a", 7), (12, "a", 0)])
    assert w.advance(10) == [WindowResult("a", 0, 10, (3, "a", 7)), WindowResult("b", 0, 10, (2, "b", 1))]
    assert w.flush() == [WindowResult("a", 10, 20, (12, "a", 0))]
    c = make_windows(Session(3), key=None, timestamp=ts_of, aggregate=CollectAll())
    c.add([(1, "a", 0), (3, "b", 0), (9, "c", 0)])
    assert c.flush() == [WindowResult(None, 1, 6, [(1, "a", 0), (3, "b", 0)]),
                         WindowResult(None, 9, 12, [(9, "c", 0)])]


def test_sliding_item_in_every_window_that_covers_it() -> None:
    w = make_windows(Sliding(10, 5), key=None, timestamp=ts_of, aggregate=CollectAll())
    w.add([(7, "a", 0)])
    assert [(r.start, r.end) for r in w.flush()] == [(0, 10), (5, 15)]


def test_session_bridged_by_an_item_merges() -> None:
    w = make_windows(Session(5), key=None, timestamp=ts_of, aggregate=SUM)
    w.add([(0, "a", 1), (8, "a", 2)])
    assert w.open == 2
    w.add([(4, "a", 4)])  # [4, 9) overlaps [0, 5) and [8, 13)
    assert w.open == 1
    assert w.advance(12) == []
    assert w.advance(13) == [WindowResult(None, 0, 13, 7)]


def test_a_late_item_bridging_two_fired_sessions_updates_the_merged_session() -> None:
    # both sessions fired; a late item within the lateness bridges them: one update, for the
    # merged session, whose [start, end) holds both earlier results (docs/time.md)
    w = make_windows(Session(2), key=None, timestamp=ts_of, aggregate=SUM, lateness=10)
    w.add([(0, "a", 1), (3, "a", 2)])
    assert w.advance(10) == [WindowResult(None, 0, 2, 1), WindowResult(None, 3, 5, 2)]
    fired, late = w.add([(1.8, "a", 4)])  # [1.8, 3.8) overlaps [0, 2) and [3, 5)
    assert fired == [WindowResult(None, 0, 5, 7, update=True)] and late == []
    assert w.open == 1
    assert w.advance(15) == [] and w.open == 0  # dropped at end + lateness


def test_processing_time_timestamps_are_given() -> None:
    w = make_windows(Tumbling(2), key=None, timestamp=None, aggregate=CollectAll())
    w.add(["x", "y"], ts=1.5)
    assert w.next_end() == 2.0
    w.add(["z"], ts=2.0)
    assert w.advance(2.0) == [WindowResult(None, 0.0, 2.0, ["x", "y"])]
    assert w.next_end() == 4.0


def test_open_windows_are_capped_with_a_clear_error() -> None:
    w = make_windows(Tumbling(10), key=key_of, timestamp=ts_of, aggregate=SUM, max_windows=2)
    w.add([(1, "a", 1), (2, "b", 1)])
    with pytest.raises(WindowLimitError, match="max_windows=2"):
        w.add([(3, "c", 1)])


def test_watermark_follows_the_clock_when_idle() -> None:
    m = Watermark(max_delay=5, idle=10)
    assert m.wake_for(100) == math.inf  # nothing seen yet
    assert m.observe(100, now=0) == 95
    assert m.at(9.5) == 95
    assert m.wake_for(120) == 20  # idle at 10, then newest + (now - arrival) reaches 120 at 20
    assert m.at(10) == 110
    assert m.at(15) == 115
    assert m.observe(90, now=16) == 115  # never moves back
    assert m.at(25) == 115
    assert m.at(26) == 115  # idle again, but newest + (26 - 16) = 110 is behind
    assert m.at(36) == 120  # newest (100) + (36 - 16)


# -- the same properties through the runtime ------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(kind=st.one_of(fixed_kinds, st.builds(Session, st.integers(1, 20))), items=items_st,
       max_delay=st.integers(0, 15))
def test_window_operator_equals_the_batch_computation(kind: Any, items: list[Item], max_delay: int) -> None:
    """``tf.window`` in a run, one item per chunk (``chunk_size=1``): the late items and the
    window results are those of the reference, in a run as in the pure machine."""


    flow = tf.from_iterable(items) | tf.window(
        kind, SUM, key=key_of, time=tf.EventTime(ts_of, max_delay=max_delay))
    out = trio.run(functools.partial(flow.to_list, chunk_size=1))
    chunks = [[x] for x in items]
    on_time, ref_late = reference_late(kind, chunks, max_delay, 0)
    assert [r.item for r in out if isinstance(r, tf.Late)] == ref_late
    results = [r for r in out if isinstance(r, WindowResult)]
    expected = (batch_sessions(int(kind.gap), on_time) if isinstance(kind, Session)
                else batch_fixed(kind, on_time))
    assert final(results) == expected
    assert len(results) == len(expected)  # each window fired once (no lateness: no update)
