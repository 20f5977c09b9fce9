"""Ordered hand-on: the one rule by which a head with concurrent calls (the worker pool,
a stage on a worker backend) hands their results on.

Theory of operation.

* Admission: ``admit`` numbers a unit of work (an item, or a backend call's chunk) in
  input order and counts it against the ``window``: ``pending`` units are admitted and
  not yet handed on. The head does not admit while ``pending >= window``; it is told
  (``wake``) each time units are released, and decides itself whether to wake its feeder.
* A *slot* is what one unit's call gives: one result, or (``many``) a list of outputs.
  ``_SKIPPED`` (a skipped or dead-lettered item, a filtered one) keeps its unit's place
  in the order and is never handed on.
* Ordered: a finished slot waits in the buffer until every earlier one has been handed
  on; the task that deposits the next slot in line hands on the whole run of consecutive
  slots, one ``emit`` per run, and goes on with the runs deposited meanwhile (the
  others only leave their slot and return: ``emitting``). Unordered: a slot is handed on
  at once by its own task, or, if another task is handing on, with the next run that
  task takes (the slots left meanwhile go together). Handing on is ``emit`` (the
  segment's, given at ``start``), counted in the head's ``n_out``.
* ``deposit`` is ``place`` (synchronous: leave the slot; True when this task is the one to
  hand on) and ``hand_on``. A head may split them: the pool's workers ``place``, take the
  first run out of the buffer (``take``) and leave it to the pool's hand-on task
  (``hand_on(first=run)``), so a worker never emits between two calls.
* Per key (unordered, ``per_key > 1``): the same rule within each key, by key-local
  numbers (``number_in_key`` at admission, ``deposit_in_key``).
* A run counts against the window until its ``emit`` returned (or failed): while the
  next edge is full, the results behind it cannot pile up past ``window - 1``.
* ``stop`` (``take_while``'s false item on a backend) ends the hand-on: nothing from it on
  is handed on, and ``deposit`` returns True.
* The head's ``waiting`` statistic is the buffer's size: slots, or (``weigh``) the
  results inside them.
* Cost: ``deposit`` is the whole path from a worker to ``emit`` (no coroutine between),
  as the pool's own deposit was; alone, without a scheduler, it takes about 0.1-0.3 µs
  more per result than that code did (``_take`` and the head's ``wake`` are calls).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

from ._segment import _SKIPPED, Head


@final
class _Line:
    """One order to keep: the slots waiting for their turn, the number of the next to hand
    on, whether a task is handing on, and how many units were numbered (per key)."""

    __slots__ = ("emitting", "next", "numbered", "results")

    def __init__(self) -> None:
        self.results: dict[int, Any] = {}
        self.next = 0
        self.emitting = False
        self.numbered = 0


@final
class Reorder:
    """Results of concurrent calls handed on in input order (or as they come, unordered),
    with the admission count that bounds them; see the module's theory of operation."""

    __slots__ = (
        "_done", "_emit", "_head", "_keys", "_line", "_loose", "_stop", "_turn", "_waited", "many", "ordered",
        "pending", "seq", "weigh", "window",
    )

    def __init__(
        self,
        head: Head,
        wake: Callable[[], None],
        *,
        window: int,
        ordered: bool,
        many: bool = False,
        weigh: bool = False,
        stop: object = None,
    ) -> None:
        self._head = head
        self._done = wake
        self._emit: Callable[[list[Any]], Awaitable[None]] | None = None
        self._stop = stop
        self.window = window
        self.ordered = ordered
        self.many = many
        self.weigh = weigh
        #: the next unit's number; units admitted and not yet handed on
        self.seq = 0
        self.pending = 0
        self._line = _Line()
        #: unordered: slots left by their tasks while another task was handing on
        self._loose: list[Any] = []
        self._turn = trio.lowlevel.ParkingLot()
        self._waited = False
        #: per key (unordered, several running per key): the key's own order, while the
        #: key has units numbered and not handed on
        self._keys: dict[Any, tuple[_Line, dict[int, int]]] = {}

    @property
    def next(self) -> int:
        """The number of the next unit to hand on (ordered)."""
        return self._line.next

    @property
    def emitting(self) -> bool:
        """A task is handing results on (ordered); nothing else may meanwhile."""
        return self._line.emitting

    @emitting.setter
    def emitting(self, value: bool) -> None:
        self._line.emitting = value

    def start(self, emit: Callable[[list[Any]], Awaitable[None]]) -> None:
        """The run began: results are handed on through ``emit`` (the segment's)."""
        self._emit = emit

    def admit(self) -> int:
        """Number a unit and count it against the window."""
        seq = self.seq
        self.seq = seq + 1
        self.pending += 1
        return seq

    def admit_many(self, count: int) -> int:
        """Number ``count`` units at once (consecutive numbers) and count them against the
        window; returns the first number."""
        seq = self.seq
        self.seq = seq + count
        self.pending += count
        return seq

    def release(self, count: int) -> None:
        """``count`` units were handed on (or dropped): they leave the window."""
        self.pending -= count
        self._done()

    def my_turn(self, seq: int) -> bool:
        """Every unit before ``seq`` has been handed on, and nobody is handing on."""
        line = self._line
        return line.next == seq and not line.emitting

    async def wait_turn(self, seq: int) -> None:
        self._waited = True  # from now on, each hand-on wakes the workers waiting their turn
        while not self.my_turn(seq):
            await self._turn.park()

    def _outputs(self, slots: list[Any]) -> list[Any]:
        """What ``slots`` hold to hand on: the results, or (``many``) their outputs."""
        if self.many:
            return [out for outs in slots if outs is not _SKIPPED
                    for out in outs if out is not _SKIPPED]
        return [r for r in slots if r is not _SKIPPED]

    def _take(self, line: _Line) -> tuple[list[Any], int] | None:
        """Take ``line``'s run of consecutive slots from its next one, if that one is
        there: the run's outputs, and how many units it holds."""
        results = line.results
        nxt = first = line.next
        if nxt not in results:
            return None
        slots = []
        while nxt in results:
            slots.append(results.pop(nxt))
            nxt += 1
        line.next = nxt
        count = nxt - first
        self._head.waiting -= sum(map(len, slots)) if self.weigh else count
        return self._outputs(slots), count

    async def deposit(self, seq: int, slot: Any, line: _Line | None = None) -> bool:
        """Unit ``seq`` finished with ``slot``: hand it on now (unordered) or in its turn
        in ``line`` (the stage's order, or a key's). Returns True when a ``stop`` was
        reached (nothing after it is handed on)."""
        if not self.place(seq, slot, line):
            return False
        return await self.hand_on(line)

    def place(self, seq: int, slot: Any, line: _Line | None = None) -> bool:
        """The synchronous half of ``deposit``: leave ``slot`` in ``line``'s buffer
        (unordered: among the slots to hand on as they come). True when nobody is handing
        on and (ordered) its turn has come: the caller must then see that ``hand_on(line)``
        is awaited, now or by a task it wakes; False when the task handing on, or (ordered)
        an earlier unit's, will reach it. A slot so left costs no coroutine."""
        if line is None:
            line = self._line
            if not self.ordered:
                self._loose.append(slot)
                self._head.waiting += len(slot) if self.weigh else 1
                if line.emitting:
                    return False
                line.emitting = True
                return True
        line.results[seq] = slot
        self._head.waiting += len(slot) if self.weigh else 1
        if line.emitting or seq != line.next:
            return False
        line.emitting = True
        return True

    def take(self) -> tuple[list[Any], int] | None:
        """After ``place`` returned True, the stage's first run to hand on (unordered:
        every slot left), taken out of the buffer at once: a task that hands on later
        (``hand_on(first=...)``) then finds the buffer as a task handing on at once would."""
        return self._take(self._line) if self.ordered else self._take_loose()

    async def hand_on(self, line: _Line | None = None,
                      first: tuple[list[Any], int] | None = None) -> bool:
        """Hand on after ``place`` returned True: ``first`` (a run from ``take``), then
        ``line``'s runs of consecutive slots (unordered: every slot left), those left
        meanwhile too. See ``deposit``."""
        if line is None:
            line = self._line
            if not self.ordered:
                return await self._hand_on(self._take_loose, line, first)
        return await self._hand_on(lambda: self._take(line), line, first)

    def _take_loose(self) -> tuple[list[Any], int] | None:
        """Unordered: every slot left so far, as one run."""
        slots = self._loose
        if not slots:
            return None
        self._loose = []
        self._head.waiting -= sum(map(len, slots)) if self.weigh else len(slots)
        return self._outputs(slots), len(slots)

    async def _hand_on(self, take: Callable[[], tuple[list[Any], int] | None], line: _Line,
                       first: tuple[list[Any], int] | None = None) -> bool:
        run = first
        try:
            while run is not None or (run := take()) is not None:  # one run at a time
                outs, count = run
                stop = self._stop
                at = None if stop is None else next(
                    (i for i, r in enumerate(outs) if r is stop), None)
                if at is not None:
                    outs = outs[:at]  # the stop and everything after it are dropped
                try:
                    if outs:
                        assert self._emit is not None
                        self._head.n_out += len(outs)
                        await self._emit(outs)
                finally:
                    self.pending -= count  # handed on (or dropped): they leave the window
                    self._done()
                if at is not None:
                    return True
                run = None  # then those left meanwhile
            return False
        finally:
            line.emitting = False
            if self._waited:
                self._turn.unpark_all()  # a streaming worker whose turn it may be

    def number_in_key(self, seq: int, key: Any) -> None:
        """Number unit ``seq`` within its key (unordered, several running per key)."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = (_Line(), {})
        line, numbers = entry
        numbers[seq] = line.numbered
        line.numbered += 1

    async def deposit_in_key(self, seq: int, key: Any, slot: Any) -> None:
        """Unit ``seq`` of ``key`` finished: hand on, in input order within the key, the
        runs of the key's slots from it, if its turn has come."""
        line, numbers = self._keys[key]
        await self.deposit(numbers.pop(seq), slot, line)
        if not line.emitting and line.next == line.numbered:
            del self._keys[key]  # every numbered unit of the key is handed on
