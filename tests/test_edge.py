"""Edge: the chunk queue between tasks, under each overflow policy.

Unit tests pin exact contents and counters after short sequences of puts; the Hypothesis
properties at the end drive random put/receive sequences (one task, and a producer and a
consumer task) and check the accounting, the order, the bound and, for BLOCK, no loss.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from trioflow._edge import DownstreamClosed, Edge
from trioflow._errors import TrioflowError
from trioflow._overflow import UNBOUNDED, EdgeOverflowError, Overflow, Unbounded

SCALE = float(os.environ.get("TRIOFLOW_HYPOTHESIS_SCALE", "1"))
PROPS = settings(max_examples=max(1, int(150 * SCALE)), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

NEVER_WAIT = [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.KEEP_LATEST, Overflow.FAIL]
#: virtual seconds: with the autojump clock, tasks that wait forever reach it at once
DEADLOCK = 1000.0

DROPPING = [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.KEEP_LATEST]


def queued(edge: Edge) -> list[Any]:
    """The queued items, front first (white-box: the tests mirror the module)."""
    return [x for chunk in edge._chunks for x in chunk]


async def put_nowait(edge: Edge, chunk: list[Any]) -> None:
    """``put`` inside an already-cancelled scope: a put that yields would raise Cancelled."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await edge.put(chunk)
    assert not scope.cancelled_caught, "put yielded although it did not have to wait"


# -- the policy values ------------------------------------------------------------------------


def test_overflow_members_and_repr() -> None:
    assert [o.name for o in Overflow] == ["BLOCK", "DROP_OLDEST", "DROP_NEWEST", "KEEP_LATEST", "FAIL"]
    assert repr(Overflow.DROP_OLDEST) == "Overflow.DROP_OLDEST"
    assert [o for o in Overflow if o.waits] == [Overflow.BLOCK]
    assert [o for o in Overflow if o.drops] == DROPPING
    assert (Overflow.__doc__ or "").strip()


def test_unbounded_is_a_named_singleton() -> None:
    assert Unbounded() is UNBOUNDED
    assert repr(UNBOUNDED) == "trioflow.UNBOUNDED"
    assert pickle.loads(pickle.dumps(UNBOUNDED)) is UNBOUNDED
    assert copy.copy(UNBOUNDED) is UNBOUNDED
    assert copy.deepcopy({"buffer": UNBOUNDED})["buffer"] is UNBOUNDED
    assert (Unbounded.__doc__ or "").strip()


def test_edge_overflow_error_names_edge_and_capacity() -> None:
    exc = EdgeOverflowError("parse -> store", 64, 60, 10)
    assert isinstance(exc, TrioflowError)
    assert "'parse -> store'" in str(exc)
    assert "64" in str(exc)
    assert (exc.edge, exc.capacity, exc.depth, exc.offered) == ("parse -> store", 64, 60, 10)
    exc.add_note("a note")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.edge, back.capacity, back.depth, back.offered, str(back)) == (
        exc.edge, exc.capacity, exc.depth, exc.offered, str(exc))
    assert back.__notes__ == ["a note"]


def test_edge_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Edge("e", 0)
    with pytest.raises(TypeError, match="overflow"):
        Edge("e", 4, overflow="drop_oldest")  # type: ignore[arg-type]


def test_edge_defaults() -> None:
    edge = Edge("e", 4)
    assert edge.overflow is Overflow.BLOCK
    assert (edge.capacity, edge.items, edge.peak, edge.total, edge.dropped, edge.discarded) == (
        4, 0, 0, 0, 0, 0)


# -- BLOCK ------------------------------------------------------------------------------------


async def test_block_waits_until_room_then_delivers_everything_in_order(autojump_clock: Any) -> None:
    edge = Edge("e", 4)
    await put_nowait(edge, [1, 2, 3])
    done = trio.Event()

    async def producer() -> None:
        await edge.put([4, 5])  # 3 + 2 > 4: waits
        done.set()

    with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once, not at the timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert queued(edge) == [1, 2, 3]
            assert await edge.receive(10) == [1, 2, 3]
            await done.wait()
    assert queued(edge) == [4, 5]
    assert (edge.total, edge.dropped, edge.peak) == (5, 0, 3)


async def test_block_accepts_an_oversized_chunk_only_into_an_empty_edge(autojump_clock: Any) -> None:
    edge = Edge("e", 3)
    await put_nowait(edge, list(range(10)))  # empty: accepted whole, no deadlock
    assert edge.items == 10 and edge.peak == 10
    with trio.move_on_after(1) as scope:  # not empty: waits (the clock autojumps)
        await edge.put([10])
    assert scope.cancelled_caught
    assert queued(edge) == list(range(10))
    assert edge.dropped == 0


async def test_wait_for_room_waits_like_put_but_queues_nothing(autojump_clock: Any) -> None:
    edge = Edge("e", 4)
    await edge.wait_for_room(10)  # empty: even an oversized chunk would go in
    await edge.put([1, 2, 3])
    await edge.wait_for_room(1)  # 3 + 1 fits
    assert edge.items == 3 and queued(edge) == [1, 2, 3]
    woke: list[float] = []

    async def waiter() -> None:
        await edge.wait_for_room(2)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert woke == []  # 3 + 2 does not fit
        assert await edge.receive(1) == [1, 2, 3]
    assert woke == [1.0] and edge.items == 0 and edge.total == 3  # nothing was queued
    await edge.put([4, 5, 6, 7])
    edge.close_receive()
    await edge.wait_for_room(1)  # the consumer left: returns, and put raises
    with pytest.raises(DownstreamClosed):
        await edge.put([8])
    for overflow in NEVER_WAIT:
        full = Edge("f", 1, overflow=overflow)
        await full.put([1])
        with trio.fail_after(1):
            await full.wait_for_room(5)  # a policy that never waits: at once


async def test_block_empty_chunk_is_not_queued() -> None:
    edge = Edge("e", 3)
    await put_nowait(edge, [])
    assert edge.items == 0 and not edge._chunks and edge.total == 0
    edge.close_send()
    assert await edge.receive(5) is None


async def test_unbounded_never_blocks() -> None:
    edge = Edge("e", None)
    for i in range(100):
        await put_nowait(edge, list(range(i * 100, (i + 1) * 100)))
    assert edge.capacity is None
    assert edge.items == edge.total == edge.peak == 10_000
    assert edge.dropped == 0
    assert await edge.receive(20_000) == list(range(10_000))


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_unbounded_drops_and_fails_nothing(overflow: Overflow) -> None:
    edge = Edge("e", None, overflow=overflow)
    for i in range(50):
        await put_nowait(edge, list(range(i * 10, (i + 1) * 10)))
    if overflow is Overflow.KEEP_LATEST:
        assert queued(edge) == [499]  # conflation ignores the capacity, even "no limit"
        assert edge.dropped == 499
    else:
        assert queued(edge) == list(range(500))
        assert edge.dropped == 0


# -- DROP_NEWEST ------------------------------------------------------------------------------


async def test_drop_newest_keeps_what_fits_and_drops_the_rest() -> None:
    edge = Edge("e", 5, overflow=Overflow.DROP_NEWEST)
    await put_nowait(edge, [1, 2, 3])
    await put_nowait(edge, [4, 5, 6, 7])
    assert queued(edge) == [1, 2, 3, 4, 5]
    assert edge.dropped == 2
    await put_nowait(edge, [8])  # full: all dropped
    assert queued(edge) == [1, 2, 3, 4, 5]
    assert (edge.dropped, edge.total) == (3, 5)
    assert await edge.receive(10) == [1, 2, 3, 4, 5]
    await put_nowait(edge, list(range(9, 21)))  # larger than the capacity, into an empty edge
    assert queued(edge) == [9, 10, 11, 12, 13]
    assert (edge.dropped, edge.total, edge.peak, edge.items) == (10, 10, 5, 5)


async def test_drop_newest_does_not_touch_the_callers_list_when_splitting() -> None:
    edge = Edge("e", 2, overflow=Overflow.DROP_NEWEST)
    chunk = [1, 2, 3]
    await put_nowait(edge, chunk)
    assert chunk == [1, 2, 3]
    assert queued(edge) == [1, 2]


# -- DROP_OLDEST ------------------------------------------------------------------------------


async def test_drop_oldest_drops_queued_items_oldest_first() -> None:
    edge = Edge("e", 5, overflow=Overflow.DROP_OLDEST)
    await put_nowait(edge, [1, 2, 3])
    await put_nowait(edge, [4, 5, 6, 7])
    assert queued(edge) == [3, 4, 5, 6, 7]
    assert edge.dropped == 2
    await put_nowait(edge, [8])
    assert queued(edge) == [4, 5, 6, 7, 8]
    assert (edge.dropped, edge.total, edge.items) == (3, 5, 5)
    await put_nowait(edge, list(range(9, 22)))  # 13 items: keeps the last 5 of them
    assert queued(edge) == [17, 18, 19, 20, 21]
    assert (edge.dropped, edge.total, edge.peak) == (3 + 5 + 8, 5, 5)
    assert await edge.receive(10) == [17, 18, 19, 20, 21]


async def test_drop_oldest_trims_across_several_queued_chunks() -> None:
    edge = Edge("e", 6, overflow=Overflow.DROP_OLDEST)
    for chunk in ([1, 2], [3, 4], [5, 6]):
        await put_nowait(edge, chunk)
    await put_nowait(edge, [7, 8, 9])
    assert queued(edge) == [4, 5, 6, 7, 8, 9]
    assert [len(c) for c in edge._chunks] == [1, 2, 3]
    assert edge.dropped == 3
    # receive still merges whole chunks up to max_items
    assert await edge.receive(3) == [4, 5, 6]
    assert await edge.receive(3) == [7, 8, 9]


async def test_drop_oldest_wakes_a_waiting_consumer_with_the_newest_items(autojump_clock: Any) -> None:
    edge = Edge("e", 3, overflow=Overflow.DROP_OLDEST)
    got: list[list[int] | None] = []

    async def consumer() -> None:
        got.append(await edge.receive(10))

    with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once, not at the timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(10):  # the consumer cannot run in between: put never yields
                await put_nowait(edge, [i])
    assert got == [[7, 8, 9]]
    assert edge.dropped == 7


# -- KEEP_LATEST ------------------------------------------------------------------------------


async def test_keep_latest_holds_exactly_the_newest_item() -> None:
    edge = Edge("e", 100, overflow=Overflow.KEEP_LATEST)
    await put_nowait(edge, [1, 2, 3])
    assert queued(edge) == [3]
    assert edge.dropped == 2
    await put_nowait(edge, [4])
    assert queued(edge) == [4]
    assert edge.dropped == 3
    assert await edge.receive(10) == [4]
    await put_nowait(edge, [5, 6])
    assert queued(edge) == [6]
    # offered 6 = total 2 (delivered 4, queued 6) + dropped 4
    assert (edge.total, edge.dropped, edge.items, edge.peak) == (2, 4, 1, 1)


async def test_keep_latest_slow_consumer_always_gets_the_latest_value(autojump_clock: Any) -> None:
    edge = Edge("gauge", 8, overflow=Overflow.KEEP_LATEST)
    seen: list[int] = []

    async def producer() -> None:
        for i in range(100):
            await edge.put([i])
            await trio.sleep(1)
        edge.close_send()

    async def consumer() -> None:
        while (chunk := await edge.receive(10)) is not None:
            assert len(chunk) == 1
            seen.extend(chunk)
            await trio.sleep(7.5)  # slower than the producer

    with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once, not at the timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(producer)
    assert seen == sorted(seen)
    assert seen[-1] == 99
    assert len(seen) < 20
    assert edge.total + edge.dropped == 100
    assert edge.total == len(seen)


# -- FAIL -------------------------------------------------------------------------------------


async def test_fail_raises_and_queues_nothing_of_the_chunk() -> None:
    edge = Edge("a -> b", 5, overflow=Overflow.FAIL)
    await put_nowait(edge, [1, 2, 3])
    with pytest.raises(EdgeOverflowError, match=r"'a -> b'.*capacity of 5") as info:
        await put_nowait(edge, [4, 5, 6])
    assert (info.value.depth, info.value.offered) == (3, 3)
    assert queued(edge) == [1, 2, 3]
    assert (edge.items, edge.total, edge.dropped, edge.peak) == (3, 3, 0, 3)
    await put_nowait(edge, [4, 5])  # fits exactly
    with pytest.raises(EdgeOverflowError):
        await put_nowait(edge, [6])
    assert queued(edge) == [1, 2, 3, 4, 5]
    assert await edge.receive(10) == [1, 2, 3, 4, 5]


async def test_fail_raises_for_a_chunk_larger_than_the_capacity_even_when_empty() -> None:
    edge = Edge("e", 3, overflow=Overflow.FAIL)
    with pytest.raises(EdgeOverflowError):
        await put_nowait(edge, [1, 2, 3, 4])
    assert edge.items == 0 and not edge._chunks and edge.total == 0


# -- every policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", NEVER_WAIT)
async def test_non_block_put_never_yields_even_when_full(overflow: Overflow) -> None:
    edge = Edge("e", 2, overflow=overflow)
    await put_nowait(edge, [1, 2])
    try:
        await put_nowait(edge, [3, 4, 5])
    except EdgeOverflowError:
        assert overflow is Overflow.FAIL
    assert edge.items <= 2


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_put_with_room_does_not_yield(overflow: Overflow) -> None:
    edge = Edge("e", 10, overflow=overflow)
    await put_nowait(edge, [1, 2, 3])
    await put_nowait(edge, [4])


@pytest.mark.parametrize("overflow", NEVER_WAIT)
async def test_fifo_order_within_what_is_kept(overflow: Overflow) -> None:
    edge = Edge("e", 4, overflow=overflow)
    got: list[int] = []
    for i in range(0, 40, 2):
        with contextlib.suppress(EdgeOverflowError):
            await edge.put([i, i + 1])
        if i % 6 == 0:
            got.extend(await edge.receive(3) or [])
    edge.close_send()
    while (chunk := await edge.receive(3)) is not None:
        got.extend(chunk)
    assert got == sorted(got)
    assert len(set(got)) == len(got)
    assert got[-1] == 39 or overflow in (Overflow.DROP_NEWEST, Overflow.FAIL)


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_close_receive_makes_put_raise_and_counts_discarded(overflow: Overflow) -> None:
    edge = Edge("e", 3, overflow=overflow)
    await put_nowait(edge, [1, 2])
    dropped = edge.dropped
    edge.close_receive()
    assert edge.receive_closed
    assert edge.items == 0 and not edge._chunks
    assert edge.discarded == (1 if overflow is Overflow.KEEP_LATEST else 2)
    assert edge.dropped == dropped  # discarding is not dropping
    with pytest.raises(DownstreamClosed):
        await edge.put([3])
    with pytest.raises(DownstreamClosed):  # before any overflow handling, FAIL included
        await edge.put([4, 5, 6, 7, 8])
    assert await edge.receive(10) is None
    edge.close_receive()  # idempotent
    assert edge.discarded == (1 if overflow is Overflow.KEEP_LATEST else 2)


async def test_close_receive_wakes_a_parked_block_put(autojump_clock: Any) -> None:
    edge = Edge("e", 2)
    await put_nowait(edge, [1, 2])
    raised = trio.Event()

    async def producer() -> None:
        with pytest.raises(DownstreamClosed):
            await edge.put([3])
        raised.set()

    with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once, not at the timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            edge.close_receive()
    assert raised.is_set()
    assert (edge.discarded, edge.total) == (2, 2)


# -- producers waiting for room: first come, first served -------------------------------------


async def test_waiting_producers_go_first_come_first_served(autojump_clock: Any) -> None:
    # the edge is full; A waits to put 3 items, then B to put 1. Taking 2 items leaves room
    # for B's chunk but not A's: B does not overtake A, and both go on, in line, once A fits
    edge = Edge("e", 4)
    await put_nowait(edge, [0, 1])
    await put_nowait(edge, [2, 3])
    done: list[str] = []

    async def producer(name: str, chunk: list[Any]) -> None:
        await edge.put(chunk)
        done.append(name)

    with trio.fail_after(DEADLOCK):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer, "A", ["a1", "a2", "a3"])
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(producer, "B", ["b1"])
            await trio.testing.wait_all_tasks_blocked()
            assert await edge.receive(2) == [0, 1]
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and queued(edge) == [2, 3]  # B waits behind A
            assert await edge.receive(2) == [2, 3]
    # both went on in the same receive; their chunks are queued in line order (the two
    # tasks then resume in whatever order Trio runs that batch)
    assert sorted(done) == ["A", "B"]
    assert queued(edge) == ["a1", "a2", "a3", "b1"]
    assert (edge.total, edge.peak, edge.items) == (8, 4, 4)


async def test_a_put_finding_producers_in_line_waits_behind_them(autojump_clock: Any) -> None:
    edge = Edge("e", 3)
    await put_nowait(edge, [0, 1, 2])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge.put, ["a"])
        await trio.testing.wait_all_tasks_blocked()
        assert await edge.receive(1) == [0, 1, 2]  # "a" goes in, room for 2 more
        assert queued(edge) == ["a"]
        with trio.move_on_after(1):
            await edge.put(["b"])  # room, and nobody in line: at once
        assert queued(edge) == ["a", "b"]


class _Steps(trio.abc.Instrument):
    """Counts the steps of the tasks whose names start with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith(self.prefix):
            self.steps += 1


async def test_taking_a_chunk_wakes_only_the_producers_that_can_go_on(autojump_clock: Any) -> None:
    # 50 producers wait to put one item each into a full edge of capacity 1: each receive
    # lets exactly one go on, and wakes no other (no herd of 50 wake-ups per receive)
    edge = Edge("e", 1)
    await put_nowait(edge, [-1])
    steps = _Steps("producer")
    got: list[Any] = []
    with trio.fail_after(DEADLOCK):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(edge.put, [i], name=f"producer-{i}")
                await trio.testing.wait_all_tasks_blocked()  # in line in order 0, 1, ...
            trio.lowlevel.add_instrument(steps)
            try:
                for expected in range(-1, 50):
                    before = steps.steps
                    got.extend(await edge.receive(1))
                    await trio.testing.wait_all_tasks_blocked()
                    # the producer let go on finishes in one step; nobody else ran
                    assert steps.steps - before == (1 if expected < 49 else 0)
            finally:
                trio.lowlevel.remove_instrument(steps)
    assert got == list(range(-1, 50))


async def test_a_cancelled_producer_leaves_the_line_and_those_behind_go_on(
    autojump_clock: Any
) -> None:
    edge = Edge("e", 4)
    await put_nowait(edge, [0, 1])
    await put_nowait(edge, [2, 3])
    done: list[str] = []
    a_scope = trio.CancelScope()

    async def put_a() -> None:
        with a_scope:
            await edge.put(["a1", "a2", "a3"])
            done.append("A")

    async def put_b() -> None:
        await edge.put(["b1"])
        done.append("B")

    with trio.fail_after(DEADLOCK):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put_a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(put_b)  # in line behind A
            await trio.testing.wait_all_tasks_blocked()
            assert await edge.receive(2) == [0, 1]  # room for B's 1, not for A's 3
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # B waits behind A
            a_scope.cancel()  # A leaves the line: B fits and goes on
    assert done == ["B"]
    assert queued(edge) == [2, 3, "b1"] and edge.total == 5  # nothing of A's chunk


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_close_send_by_all_producers_ends_the_stream_after_draining(overflow: Overflow) -> None:
    edge = Edge("e", 3, producers=2, overflow=overflow)
    await put_nowait(edge, [1])
    edge.close_send()
    assert not edge.send_closed
    await put_nowait(edge, [2])
    edge.close_send()
    assert edge.send_closed
    want = [2] if overflow is Overflow.KEEP_LATEST else [1, 2]
    assert await edge.receive(10) == want
    assert await edge.receive(10) is None
    assert await edge.receive(10) is None


async def test_close_send_wakes_a_waiting_consumer_with_the_end(autojump_clock: Any) -> None:
    edge = Edge("e", 3, overflow=Overflow.DROP_OLDEST)
    got: list[Any] = []

    async def consumer() -> None:
        got.append(await edge.receive(10))

    with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once, not at the timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            edge.close_send()
    assert got == [None]


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_receive_passes_exactly_one_checkpoint(overflow: Overflow) -> None:
    edge = Edge("e", 10, overflow=overflow)
    await put_nowait(edge, [1, 2])
    queued_before = queued(edge)
    with trio.CancelScope() as scope:
        scope.cancel()
        await edge.receive(10)  # cancelled: raises before taking anything
    assert scope.cancelled_caught
    assert edge.items in (1, 2)
    assert await edge.receive(10) == queued_before


# -- properties -------------------------------------------------------------------------------

capacities = st.one_of(st.integers(1, 6), st.none())
put_cmd = st.tuples(st.just("put"), st.integers(0, 9))
recv_cmd = st.tuples(st.just("receive"), st.integers(1, 8))
yield_cmd = st.tuples(st.just("yield"), st.just(0))


def check_accounting(
    edge: Edge, offered: list[int], delivered: list[int], *, in_flight: bool = False,
    pending: list[int] | None = None,
) -> None:
    # (a) accepted + dropped == offered, and everything accepted is accounted for (a chunk
    # may be in flight: receive counts it out before its checkpoint, the consumer sees it after).
    # ``pending``: the chunk of a BLOCK put under way, offered once it left the producers'
    # line (the consumer's receive queues it, before the put returns)
    in_line = any(p.chunk is pending for p in edge._putters)
    accepted = len(offered) + (len(pending) if pending is not None and not in_line else 0)
    assert edge.total + edge.dropped == accepted
    if in_flight:
        assert edge.total >= len(delivered) + edge.items + edge.discarded
    else:
        assert edge.total == len(delivered) + edge.items + edge.discarded
    assert edge.items == sum(map(len, edge._chunks))
    assert all(edge._chunks), "an empty chunk was queued"
    assert edge.peak >= edge.items


def check_bound(edge: Edge, overflow: Overflow, capacity: int | None) -> None:
    # (c) never deeper than the capacity, except BLOCK's single oversized chunk
    if overflow is Overflow.KEEP_LATEST:
        assert edge.items <= 1
    elif capacity is not None and edge.items > capacity:
        assert overflow is Overflow.BLOCK and len(edge._chunks) == 1, (edge.items, capacity)


async def consume_script(edge: Edge, receives: list[tuple[str, int]], delivered: list[int],
                         check: Callable[[], None]) -> None:
    """A consumer task's script (receives of at most ``arg`` items, yields), checking after
    each receive; then it takes the rest until the stream ends."""
    for op, arg in receives:
        if op == "yield":
            await trio.lowlevel.checkpoint()
            continue
        got = await edge.receive(arg)
        if got is None:
            return
        assert got
        delivered.extend(got)
        check()
    while (got := await edge.receive(5)) is not None:
        delivered.extend(got)


def is_subsequence(sub: list[int], seq: list[int]) -> bool:
    it = iter(seq)
    return all(x in it for x in sub)


@pytest.mark.parametrize("overflow", NEVER_WAIT)
@PROPS
@given(capacity=capacities, script=st.lists(st.one_of(put_cmd, recv_cmd), max_size=30),
       end_by_close_receive=st.booleans())
def test_never_waiting_policies_match_an_item_level_model(
    overflow: Overflow, capacity: int | None, script: list[tuple[str, int]], end_by_close_receive: bool,
) -> None:
    """One task: a policy that never waits is a pure function of the put/receive sequence.
    The queue, item by item, must equal a model that applies the policy to single items."""

    async def main() -> None:
        edge = Edge("p", capacity, overflow=overflow)
        model: list[int] = []  # the queue, flat
        offered: list[int] = []
        delivered: list[int] = []
        next_item = 0
        for op, arg in script:
            if op == "put":
                chunk = list(range(next_item, next_item + arg))
                next_item += arg
                before = (queued(edge), edge.total, edge.dropped, edge.peak)
                try:
                    await put_nowait(edge, chunk)
                except EdgeOverflowError:
                    assert overflow is Overflow.FAIL
                    assert capacity is not None and len(model) + arg > capacity
                    assert (queued(edge), edge.total, edge.dropped, edge.peak) == before
                else:
                    offered += chunk
                    limit = capacity if capacity is not None else len(model) + arg
                    if not chunk:
                        pass
                    elif overflow is Overflow.KEEP_LATEST:
                        model = chunk[-1:]
                    elif overflow is Overflow.DROP_NEWEST:
                        model = (model + chunk)[:max(limit, len(model))]
                    elif overflow is Overflow.DROP_OLDEST:
                        model = (model + chunk)[-limit:]
                    else:
                        model = model + chunk
            elif edge.items:
                got = await edge.receive(arg)
                assert got and got == model[: len(got)]
                model = model[len(got):]
                delivered += got
            assert queued(edge) == model
            check_accounting(edge, offered, delivered)
            check_bound(edge, overflow, capacity)
        if end_by_close_receive:
            depth = edge.items
            edge.close_receive()
            assert edge.discarded == depth
        else:
            edge.close_send()
            while (got := await edge.receive(4)) is not None:
                delivered += got
            assert delivered[len(delivered) - len(model):] == model
        check_accounting(edge, offered, delivered)
        # (b) delivered items are a subsequence of the offered ones, in order
        assert is_subsequence(delivered, offered)
        if overflow is Overflow.FAIL or (capacity is None and overflow is not Overflow.KEEP_LATEST):
            assert edge.dropped == 0

    trio.run(main)


@pytest.mark.parametrize("overflow", list(Overflow))
@PROPS
@given(
    capacity=capacities,
    puts=st.lists(st.one_of(put_cmd, yield_cmd), max_size=25),
    receives=st.lists(st.one_of(recv_cmd, yield_cmd), max_size=25),
)
def test_producer_and_consumer_tasks(
    overflow: Overflow, capacity: int | None, puts: list[tuple[str, int]],
    receives: list[tuple[str, int]],
) -> None:
    """A producer task and a consumer task interleave freely (BLOCK puts park)."""
    offered: list[int] = []
    under_way: list[list[int]] = []  # the chunk of a put under way (the list itself)
    delivered: list[int] = []
    refused = 0
    largest = max((n for op, n in puts if op == "put"), default=0)

    async def producer(edge: Edge) -> None:
        nonlocal refused
        next_item = 0
        try:
            for op, arg in puts:
                if op == "yield":
                    await trio.lowlevel.checkpoint()
                    continue
                chunk = list(range(next_item, next_item + arg))
                next_item += arg
                if overflow is not Overflow.BLOCK or edge.items == 0 or (
                        capacity is None or edge.items + arg <= capacity):
                    put = put_nowait(edge, chunk)  # must not yield: never waits, or has room
                else:
                    put = edge.put(chunk)
                under_way.append(chunk)
                try:
                    await put
                except EdgeOverflowError:
                    refused += 1
                    continue
                finally:
                    under_way.clear()
                offered.extend(chunk)
                check_accounting(edge, offered, delivered, in_flight=True)
                check_bound(edge, overflow, capacity)
        finally:
            edge.close_send()

    async def consumer(edge: Edge) -> None:
        def check() -> None:
            check_accounting(edge, offered, delivered, pending=under_way[0] if under_way else None)
            check_bound(edge, overflow, capacity)

        await consume_script(edge, receives, delivered, check)

    async def main() -> Edge:
        edge = Edge("p", capacity, overflow=overflow)
        with trio.fail_after(DEADLOCK):  # a lost wake-up fails at once on the autojump clock
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer, edge)
                nursery.start_soon(consumer, edge)
        return edge

    edge = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    note(f"offered={offered} delivered={delivered} dropped={edge.dropped}")
    check_accounting(edge, offered, delivered)
    assert edge.items == 0 and edge.discarded == 0
    assert is_subsequence(delivered, offered)
    if overflow is Overflow.BLOCK:
        # (d) backpressure never loses anything
        assert edge.dropped == 0
        assert delivered == offered
        assert edge.peak <= max(capacity or 0, largest) or capacity is None
    elif overflow is Overflow.FAIL:
        assert edge.dropped == 0
        assert delivered == offered
    else:
        assert refused == 0
        if capacity is not None and overflow is not Overflow.KEEP_LATEST:
            assert edge.peak <= capacity


@PROPS
@given(
    capacity=st.integers(1, 6),
    producers=st.lists(st.lists(st.one_of(put_cmd, yield_cmd), max_size=8), min_size=2, max_size=4),
    receives=st.lists(st.one_of(recv_cmd, yield_cmd), max_size=20),
    seed=st.integers(0, 2**32 - 1),
)
def test_many_producers_are_served_in_the_order_they_put(
    capacity: int, producers: list[list[tuple[str, int]]], receives: list[tuple[str, int]],
    seed: int,
) -> None:
    """Several producer tasks put into one BLOCK edge while a consumer takes: the items
    come out in exactly the order in which the ``put`` calls were made (a put that finds
    others waiting waits behind them, and those let go on are queued in line order), none
    is lost, and the bound holds."""
    calls: list[int] = []  # the items of each put, in the order the calls began

    async def producer(edge: Edge, p: int, script: list[tuple[str, int]]) -> None:
        try:
            for k, (op, arg) in enumerate(script):
                if op == "yield":
                    await trio.lowlevel.checkpoint()
                    continue
                chunk = [p * 1000 + k * 10 + j for j in range(arg)]
                calls.extend(chunk)  # no checkpoint between this and the put's own start
                await edge.put(chunk)
                check_bound(edge, Overflow.BLOCK, capacity)
        finally:
            edge.close_send()

    delivered: list[int] = []

    async def consumer(edge: Edge) -> None:
        await consume_script(edge, receives, delivered,
                             lambda: check_bound(edge, Overflow.BLOCK, capacity))

    async def main() -> Edge:
        edge = Edge("p", capacity, producers=len(producers))
        with trio.fail_after(DEADLOCK):
            async with trio.open_nursery() as nursery:
                for p, script in enumerate(producers):
                    nursery.start_soon(producer, edge, p, script)
                nursery.start_soon(consumer, edge)
        return edge

    # the order in which Trio runs a batch of tasks is random: vary it with the example
    trio._core._run._r.seed(seed)  # type: ignore[attr-defined]
    edge = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    note(f"calls={calls} delivered={delivered}")
    assert delivered == calls
    assert edge.items == 0 and edge.total == len(calls) and edge.dropped == 0
