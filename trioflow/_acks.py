"""Acknowledgements: a source learns when each of its items is done.

Theory of operation.

* A source that asks for acknowledgements (``source(fn, on_ack=...)`` with ``emit(item,
  ack=token)``, or ``from_iterable(items, on_ack=...)``) hands on each item as a
  ``Tracked(value, ticket)``. A ``Ticket`` holds the source's token and a count of the
  item's parts still under way (``pending``, 1 at the start).
* Planning lifts every stage of such a run (``track``) so that user code sees the plain
  value and the ticket travels beside it: a map keeps the ticket on its result, a
  ``flat_map`` gives it to every child (one more part each), a ``batch`` or a ``zip``
  makes a ticket of its own over its members, a ``broadcast`` adds a part per extra
  branch. Nothing of this exists in a run whose sources ask for no acknowledgement: the
  plain stages run as they are, so the bookkeeping costs nothing there.
* A part *settles* when it is terminal: a sink handled it (its call returned, or a
  ``to_list`` took it), a filter dropped it, or an error policy skipped or dead-lettered it
  (after the letter was written; the error is kept). When the last part of a ticket
  settles, the source's token is acknowledged, as ``Ack(token, error)``: ``error`` is
  ``None`` when every part was handled, or the first error of a part that was skipped or
  dead-lettered. A ticket of a batch settles its members when it settles.
* Acknowledgements are collected by the run's ``Ledger`` and handed to the source's
  ``on_ack`` callback in batches, from a task of the run, so a callback may await (send a
  reply, acknowledge a log entry). A failed or cancelled run acknowledges nothing that
  did not settle; what had settled is still handed over (bounded, shielded).
* Items that a run never finished (cut off by ``take``/``take_while``, lost with a failed
  run) are never acknowledged: a source that redelivers what was not acknowledged (a
  log, a client that re-sends) gets at-least-once delivery, and an idempotent sink
  (an upsert) makes it effectively once.

Tickets are touched only on the Trio thread: stages on worker backends (threads,
processes, a cluster) are refused in a run that tracks acknowledgements.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, final


@final
class Ack(NamedTuple):
    """The acknowledgement of one item of a source: ``token`` is what the source gave with
    the item; ``error`` is ``None`` when the item was handled (committed by a sink, or
    dropped by a filter), or the error of a part of it that an error policy skipped or
    dead-lettered (after the dead letter was written), or ``ItemDropped`` when an overflow
    policy dropped it. (A named tuple: one is made per item, so it is cheap to build.)"""

    token: Any
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the item was handled without an error."""
        return self.error is None


class _Ledger(Protocol):
    def ready(self, token: Any, error: BaseException | None) -> None: ...


@final
class Ticket:
    """One source item (or one batch of tracked items) on its way: settles once every part
    is terminal. Not thread-safe: tickets live on the Trio thread."""

    __slots__ = ("error", "ledger", "members", "pending", "token")

    def __init__(self, ledger: _Ledger | None, token: Any, members: list[Ticket] | None = None) -> None:
        self.ledger = ledger
        self.token = token
        self.members = members
        self.pending = 1
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None = None) -> None:
        """One part is terminal (``error``: it was skipped or dead-lettered)."""
        if error is not None and self.error is None:
            self.error = error
        self.pending -= 1
        if self.pending:
            return
        if self.members is not None:
            for member in self.members:
                member.settle(self.error)
        elif self.ledger is not None:
            self.ledger.ready(self.token, self.error)


@final
class Tracked:
    """An item of a run that tracks acknowledgements: the value user code sees, and its
    ticket (``None`` for items no source asked to acknowledge)."""

    __slots__ = ("ticket", "value")

    def __init__(self, value: Any, ticket: Ticket | None) -> None:
        self.value = value
        self.ticket = ticket

    def __repr__(self) -> str:
        return f"Tracked({self.value!r})"


def settle(item: Any, error: BaseException | None = None) -> None:
    """Settle a tracked item's part (nothing for an untracked item)."""
    if type(item) is Tracked and item.ticket is not None:
        item.ticket.settle(error)


def combine(items: list[Any]) -> Any:
    """One tracked item over several (a batch, a zipped tuple): its ticket settles every
    member's part when it settles."""
    tickets = [t.ticket for t in items if t.ticket is not None]
    return Tracked([t.value for t in items], Ticket(None, None, tickets) if tickets else None)


def unwrap(item: Any) -> Any:
    """The value user code sees (an untracked item is its own value)."""
    return item.value if type(item) is Tracked else item
