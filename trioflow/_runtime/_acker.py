"""The run's side of acknowledgements: a ``Ledger`` per source that asked for them.

Tickets settle synchronously wherever an item becomes terminal (a sink, a filter, an error
policy); a lot with items newly done is queued on the ledger (once per hand-over, not once
per item), which wakes its task. The task takes the done items of every queued lot and
hands them to the source's ``on_ack`` in one call (so a callback may await, and acks are
handed over in batches rather than one call per item): as one ``Ack`` per item, or, for an
``on_ack`` marked ``per_chunk``, as one ``Settled`` per lot. The task ends when every segment of the
run has; on a failed or cancelled run it still hands over what had settled (shielded,
bounded), and nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, final

import trio

from .._acks import Ack, Lot, Settled, is_per_chunk
from .._errors import annotate

_new_ack = tuple.__new__  # (a named tuple, without its __new__)

#: Bound on handing over the last acknowledgements when a run ends by failure or cancellation.
FLUSH_TIMEOUT = 5.0


@final
class Ledger:
    """Collects the acknowledgements of one source and hands them to its ``on_ack``."""

    __slots__ = ("_closed", "_lot", "_lots", "acked", "name", "on_ack", "per_chunk")

    def __init__(self, on_ack: Callable[[list[Any]], Any], name: str) -> None:
        self.on_ack = on_ack
        self.name = name
        #: ``on_ack`` takes one ``Settled`` per lot rather than one ``Ack`` per item
        self.per_chunk = is_per_chunk(on_ack)
        #: lots with items done since the last hand-over
        self._lots: list[Lot] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        #: acknowledgements handed to ``on_ack`` so far
        self.acked = 0

    def ready(self, lot: Lot) -> None:
        """Items of ``lot`` are done, the first since the last hand-over (called
        synchronously, on the Trio thread)."""
        lots = self._lots
        lots.append(lot)
        if len(lots) == 1:  # the first since the last hand-over: the task may be parked
            self._lot.unpark()

    def close(self) -> None:
        """Every segment has ended: hand over what is queued, then stop."""
        self._closed = True
        self._lot.unpark_all()

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            while True:
                while not self._lots:
                    if self._closed:
                        return
                    await self._lot.park()
                await self._hand_over()
        finally:
            if self._lots:
                # the run failed or was cancelled: what had settled is still done
                with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                    await self._hand_over()

    def _take(self) -> tuple[list[Any], int]:
        """What the queued lots hold, for ``on_ack``, and how many items that is."""
        lots, self._lots = self._lots, []
        if self.per_chunk:
            settled = [_new_ack(Settled, (lot.tokens, lot.take(), lot.errors)) for lot in lots]
            return settled, sum(len(s.indices) for s in settled)
        acks: list[Ack] = []
        for lot in lots:
            tokens, errors = lot.tokens, lot.errors
            if errors is None:
                acks += [_new_ack(Ack, (tokens[i], None)) for i in lot.take()]
            else:
                acks += [_new_ack(Ack, (tokens[i], errors.get(i))) for i in lot.take()]
        return acks, len(acks)

    async def _hand_over(self) -> None:
        batch, n = self._take()
        try:
            result = self.on_ack(batch)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            annotate(exc, self.name, has_item=False)
            exc.add_note(f"trioflow: raised by on_ack of {self.name!r}")
            raise
        self.acked += n
