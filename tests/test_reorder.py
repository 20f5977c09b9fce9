"""The ordered hand-on shared by the worker pool and the backend head (``Reorder``), on its
own: units admitted within a window, finishing in a random order (Hypothesis), some
skipped, some with several outputs, handed on through a slow or fast ``emit``.

Checked: ordered, the outputs are the inputs' outputs in input order; unordered and per
key, the same multiset (per key: in input order within the key); nothing lost or
duplicated; never more than ``window`` units admitted and not yet handed on, a run being
handed on included; ``waiting`` is the buffer's size and ends at zero; a ``stop`` that is
reached ends the hand-on. Time is virtual (MockClock with autojump)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioflow._runtime._reorder import Reorder
from trioflow._runtime._segment import _SKIPPED, Head

#: the marker that ends the hand-on
STOP = object()

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: one unit: how long its call takes (ticks), and what it gives: None (skipped) or outputs
units = st.lists(
    st.tuples(st.integers(0, 6), st.one_of(st.none(), st.integers(0, 3))), max_size=40
)


def outputs_of(i: int, spec: int | None) -> list[tuple[int, int]]:
    return [] if spec is None else [(i, j) for j in range(spec)]


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class Driver:
    """Feeds units through a ``Reorder`` as a head does, and checks the window on the way."""

    def __init__(self, *, window: int, ordered: bool, many: bool, weigh: bool,
                 emit_ticks: int, stop_at: tuple[int, int] | None = None) -> None:
        self.head = Head(None, "r")
        self.space = trio.lowlevel.ParkingLot()
        self.order = Reorder(self.head, self.wake, window=window, ordered=ordered,
                             many=many, weigh=weigh, stop=STOP)
        self.order.start(self.emit)
        self.window = window
        self.many = many
        self.emit_ticks = emit_ticks
        self.stop_at = stop_at
        self.got: list[Any] = []
        self.runs = 0
        self.stopped = False

    def check_window(self) -> None:
        assert 0 <= self.order.pending <= self.window

    def wake(self) -> None:
        self.check_window()
        if self.space:
            self.space.unpark()

    async def emit(self, outs: list[Any]) -> None:
        assert outs, "an empty run is never handed on"
        assert _SKIPPED not in outs and STOP not in outs
        self.check_window()
        self.runs += 1
        assert self.head.n_out >= len(self.got) + len(outs)  # counted as handed on
        await trio.sleep(self.emit_ticks)  # a full next edge: results pile up meanwhile
        self.check_window()
        self.got.extend(outs)

    def slot(self, i: int, spec: int | None) -> Any:
        if spec is None:
            return [_SKIPPED] if self.order.weigh else _SKIPPED
        outs: list[Any] = outputs_of(i, spec)
        if self.stop_at is not None and self.stop_at[0] == i:
            outs.insert(self.stop_at[1], STOP)  # take_while's false item, say
        if self.many:
            return outs
        return (i, spec)  # one result per unit

    async def call(self, seq: int, i: int, ticks: int, spec: int | None) -> None:
        await trio.sleep(ticks)
        if await self.order.deposit(seq, self.slot(i, spec)):
            self.stopped = True

    async def feed(self, specs: list[tuple[int, int | None]],
                   call: Callable[..., Awaitable[None]] | None = None) -> None:
        async with trio.open_nursery() as nursery:
            for i, (ticks, spec) in enumerate(specs):
                while self.order.pending >= self.window:
                    await self.space.park()
                seq = self.order.admit()
                assert seq == i
                self.check_window()
                nursery.start_soon(call or self.call, seq, i, ticks, spec)
        assert self.head.n_out == len(self.got)
        if not self.stopped:
            assert self.order.pending == 0, "every admitted unit was released"
            assert self.head.waiting == 0, "nothing is left in the buffer"


def expected(specs: list[tuple[int, int | None]], many: bool) -> list[Any]:
    if many:
        return [out for i, (_, spec) in enumerate(specs) for out in outputs_of(i, spec)]
    return [(i, spec) for i, (_, spec) in enumerate(specs) if spec is not None]


@PROPS
@given(units, st.integers(1, 8), st.booleans(), st.booleans(), st.integers(0, 2))
def test_ordered_hand_on_keeps_input_order(
    specs: list[tuple[int, int | None]], window: int, many: bool, weigh: bool, emit_ticks: int
) -> None:
    weigh = weigh and many  # weighing counts the outputs inside a slot: slots are lists
    d = Driver(window=window, ordered=True, many=many, weigh=weigh, emit_ticks=emit_ticks)
    run_virtual(functools.partial(d.feed, specs))
    assert d.got == expected(specs, many)
    assert d.order.next == len(specs)


@PROPS
@given(units, st.integers(1, 8), st.booleans(), st.integers(0, 2))
def test_unordered_hand_on_loses_and_repeats_nothing(
    specs: list[tuple[int, int | None]], window: int, many: bool, emit_ticks: int
) -> None:
    d = Driver(window=window, ordered=False, many=many, weigh=False, emit_ticks=emit_ticks)
    run_virtual(functools.partial(d.feed, specs))
    assert Counter(d.got) == Counter(expected(specs, many))


@PROPS
@given(units, st.integers(1, 8), st.integers(0, 2), st.integers(1, 3))
def test_per_key_hand_on_keeps_order_within_each_key(
    specs: list[tuple[int, int | None]], window: int, emit_ticks: int, keys: int
) -> None:
    d = Driver(window=window, ordered=False, many=False, weigh=False, emit_ticks=emit_ticks)

    async def call(seq: int, i: int, ticks: int, spec: int | None) -> None:
        await trio.sleep(ticks)
        await d.order.deposit_in_key(seq, i % keys, d.slot(i, spec))

    async def feed() -> None:
        async with trio.open_nursery() as nursery:
            for i, (ticks, spec) in enumerate(specs):
                while d.order.pending >= window:
                    await d.space.park()
                seq = d.order.admit()
                d.order.number_in_key(seq, i % keys)
                nursery.start_soon(call, seq, i, ticks, spec)
        assert d.order.pending == 0 and d.head.waiting == 0

    run_virtual(feed)
    want = expected(specs, False)
    assert Counter(d.got) == Counter(want)
    for k in range(keys):
        assert [r for r in d.got if r[0] % keys == k] == [r for r in want if r[0] % keys == k]


@PROPS
@given(units, st.integers(1, 8), st.data())
def test_hand_on_that_stops_hands_on_nothing_after(
    specs: list[tuple[int, int | None]], window: int, data: st.DataObject
) -> None:
    want = expected(specs, True)
    places = [(i, j) for i, (_, spec) in enumerate(specs) if spec is not None
              for j in range(spec + 1)]
    stop = data.draw(st.sampled_from(places)) if places else None
    d = Driver(window=window, ordered=True, many=True, weigh=True, emit_ticks=1, stop_at=stop)

    async def feed() -> None:
        # the head stops at the first stop (its scope is cancelled): so does the driver
        with trio.CancelScope() as cs:
            async def call(seq: int, i: int, ticks: int, spec: int | None) -> None:
                await d.call(seq, i, ticks, spec)
                if d.stopped:
                    cs.cancel()
            await d.feed(specs, call)

    run_virtual(feed)
    if stop is None:
        assert d.got == want and not d.stopped
    else:
        assert d.stopped
        assert d.got == [out for out in want if out < stop]


def test_waiting_counts_slots_or_the_results_inside_them() -> None:
    async def main() -> None:
        for weigh, want in ((False, 2), (True, 5)):
            head = Head(None, "r")

            async def emit(outs: list[Any]) -> None:
                raise AssertionError("nothing is handed on before unit 0")

            order = Reorder(head, lambda: None, window=4, ordered=True, many=True,
                            weigh=weigh)
            order.start(emit)
            for _ in range(3):
                order.admit()
            await order.deposit(1, [1, 2])
            await order.deposit(2, [3, _SKIPPED, 4])
            assert head.waiting == want
            assert order.pending == 3

    trio.run(main)
