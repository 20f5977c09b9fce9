"""The run's side of acknowledgements: a ``Ledger`` per source that asked for them.

Tickets settle synchronously wherever an item becomes terminal (a sink, a filter, an error
policy); the ledger only queues the resulting ``Ack`` and wakes its task, which hands the
queue to the source's ``on_ack`` in one call (so a callback may await, and acks are handed
over in batches rather than one call per item). The task ends when every segment of the
run has; on a failed or cancelled run it still hands over what had settled (shielded,
bounded), and nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, final

import trio

from .._acks import Ack
from .._errors import annotate

_new_ack = tuple.__new__

#: Bound on handing over the last acknowledgements when a run ends by failure or cancellation.
FLUSH_TIMEOUT = 5.0


@final
class Ledger:
    """Collects the acknowledgements of one source and hands them to its ``on_ack``."""

    __slots__ = ("_acks", "_closed", "_lot", "acked", "name", "on_ack")

    def __init__(self, on_ack: Callable[[list[Ack]], Any], name: str) -> None:
        self.on_ack = on_ack
        self.name = name
        self._acks: list[Ack] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        #: acknowledgements handed to ``on_ack`` so far
        self.acked = 0

    def ready(self, token: Any, error: BaseException | None) -> None:
        """An item of the source is done (called synchronously, on the Trio thread)."""
        acks = self._acks
        acks.append(_new_ack(Ack, (token, error)))  # (the named tuple, without its __new__)
        if len(acks) == 1:  # the first since the last hand-over: the task may be parked
            self._lot.unpark()

    def close(self) -> None:
        """Every segment has ended: hand over what is queued, then stop."""
        self._closed = True
        self._lot.unpark_all()

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            while True:
                while not self._acks:
                    if self._closed:
                        return
                    await self._lot.park()
                await self._hand_over()
        finally:
            if self._acks:
                # the run failed or was cancelled: what had settled is still done
                with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                    await self._hand_over()

    async def _hand_over(self) -> None:
        batch, self._acks = self._acks, []
        try:
            result = self.on_ack(batch)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            annotate(exc, self.name, has_item=False)
            exc.add_note(f"trioflow: raised by on_ack of {self.name!r}")
            raise
        self.acked += len(batch)
