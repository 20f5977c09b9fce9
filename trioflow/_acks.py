"""Acknowledgements: a source learns when each of its items is done.

Theory of operation.

* A source that asks for acknowledgements (``source(fn, on_ack=...)`` with ``emit(item,
  ack=token)`` or ``emit.many(items, acks=tokens)``, or ``from_iterable(items,
  on_ack=...)``) hands on each item as a ``Tracked(value, ticket, index)``. The ticket of
  a source's items is a ``Lot``: one per chunk the source handed on together, holding the
  chunk's tokens, so the bookkeeping is per chunk: an item is only its index in its lot.
  The lot counts each item's parts still under way (1 at the start; the counts are made
  only when an item gets more parts than one), keeps an item's error only when it has one,
  and collects the indices of the items that are done.
* Planning lifts every stage of such a run (``track``) so that user code sees the plain
  value and the ticket travels beside it: a map keeps the ticket on its result, a
  ``flat_map`` gives it to every child (one more part each), a ``batch`` or a ``zip``
  makes a ``Ticket`` of its own over its members, a ``broadcast`` adds a part per extra
  branch. Nothing of this exists in a run whose sources ask for no acknowledgement: the
  plain stages run as they are, so the bookkeeping costs nothing there.
* A part *settles* when it is terminal: a sink handled it (its call returned, or a
  ``to_list`` took it), a filter dropped it, or an error policy skipped or dead-lettered it
  (after the letter was written; the error is kept). When the last part of an item
  settles, its index joins its lot's done list; a lot whose done list was empty is queued
  on the run's ``Ledger`` (once per hand-over, not once per item). The source's token is
  then acknowledged, as ``Ack(token, error)``: ``error`` is ``None`` when every part was
  handled, or the first error of a part that was skipped or dead-lettered. A ticket of a
  batch settles its members when it settles.
* Acknowledgements are collected by the run's ``Ledger`` and handed to the source's
  ``on_ack`` callback in batches, from a task of the run, so a callback may await (send a
  reply, acknowledge a log entry). A failed or cancelled run acknowledges nothing that
  did not settle; what had settled is still handed over (bounded, shielded). A source of
  the library may take them per chunk instead (``per_chunk``: one ``Settled`` per lot and
  hand-over, no ``Ack`` per item).
* Items that a run never finished (cut off by ``take``/``take_while``, lost with a failed
  run) are never acknowledged: a source that redelivers what was not acknowledged (a
  log, a client that re-sends) gets at-least-once delivery, and an idempotent sink
  (an upsert) makes it effectively once.

Tickets are touched only on the Trio thread: stages on worker backends (threads,
processes, a cluster) are refused in a run that tracks acknowledgements.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar, final


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
    def ready(self, lot: Lot) -> None: ...


@final
class Lot:
    """The tickets of the items a source handed on together (one chunk): ``tokens`` is what
    the source gave (one token per item, or one for the chunk when its ``on_ack`` takes
    acknowledgements per chunk), ``size`` the number of items. Item ``i`` is done when its
    last part settles. Not thread-safe: lots live on the Trio thread."""

    __slots__ = ("done", "errors", "ledger", "parts", "size", "tokens")

    def __init__(self, ledger: _Ledger, tokens: Any, size: int) -> None:
        self.ledger = ledger
        self.tokens = tokens
        self.size = size
        #: parts under way per item; ``None`` while every item has one (the common case)
        self.parts: list[int] | None = None
        #: indices of the items done since the ledger last took them
        self.done: list[int] = []
        #: the first error of each item that has one
        self.errors: dict[int, BaseException] | None = None

    def add(self, index: int, parts: int) -> None:
        """Item ``index`` has ``parts`` more parts under way (fewer when negative)."""
        counts = self.parts
        if counts is None:
            counts = self.parts = [1] * self.size
        counts[index] += parts

    def settle(self, index: int, error: BaseException | None = None) -> None:
        """One part of item ``index`` is terminal (``error``: it was skipped or
        dead-lettered)."""
        if error is not None:
            errors = self.errors
            if errors is None:
                self.errors = {index: error}
            elif index not in errors:
                errors[index] = error
        counts = self.parts
        if counts is not None:
            left = counts[index] - 1
            counts[index] = left
            if left:
                return
        done = self.done
        done.append(index)
        if len(done) == 1:  # the first since the ledger took them: queue the lot
            self.ledger.ready(self)

    def settle_many(self, indices: list[int], error: BaseException | None = None) -> None:
        """``settle`` for each of ``indices`` (a batch's members from this lot)."""
        if self.parts is not None:
            for index in indices:
                self.settle(index, error)
            return
        if error is not None:
            errors = self.errors
            if errors is None:
                errors = self.errors = {}
            for index in indices:
                errors.setdefault(index, error)
        done = self.done
        was_empty = not done
        done += indices
        if was_empty and done:  # the first since the ledger took them: queue the lot
            self.ledger.ready(self)

    def take(self) -> list[int]:
        """The indices of the items done since the last call (the ledger's)."""
        done = self.done
        self.done = []
        return done


@final
class Ticket:
    """A batch (or a zipped tuple) of tracked items on its way: settles every member once
    each of its parts is terminal. Its members are kept by ticket, as ``(ticket,
    indices)`` runs (a batch's members mostly come from a few lots), so the members' own
    ``Tracked`` wrappers are not kept alive. Not thread-safe: tickets live on the Trio
    thread."""

    __slots__ = ("error", "members", "pending")

    def __init__(self, members: list[tuple[Lot | Ticket, list[int]]]) -> None:
        self.members = members
        self.pending = 1
        self.error: BaseException | None = None

    def add(self, index: int, parts: int) -> None:
        """``parts`` more parts under way (``index`` is always 0 here)."""
        self.pending += parts

    def settle(self, index: int, error: BaseException | None = None) -> None:
        """One part is terminal (``error``: it was skipped or dead-lettered)."""
        if error is not None and self.error is None:
            self.error = error
        self.pending -= 1
        if self.pending:
            return
        error = self.error
        for ticket, indices in self.members:
            ticket.settle_many(indices, error)

    def settle_many(self, indices: list[int], error: BaseException | None = None) -> None:
        """``settle`` once per entry of ``indices`` (this ticket is a member of a batch)."""
        for index in indices:
            self.settle(index, error)


@final
class Tracked:
    """An item of a run that tracks acknowledgements: the value user code sees, its ticket
    (``None`` for items no source asked to acknowledge) and its index in the ticket's lot."""

    __slots__ = ("index", "ticket", "value")

    def __init__(self, value: Any, ticket: Lot | Ticket | None, index: int) -> None:
        self.value = value
        self.ticket = ticket
        self.index = index

    def __repr__(self) -> str:
        return f"Tracked({self.value!r})"


@final
class Settled(NamedTuple):
    """What a per-chunk ``on_ack`` gets for one lot at a hand-over: the lot's ``token`` (as
    the source gave it), the ``indices`` of its items done since the last hand-over, and
    the ``errors`` of its items that failed (by index; ``None``: none did)."""

    token: Any
    indices: list[int]
    errors: dict[int, BaseException] | None


_F = TypeVar("_F", bound=Callable[..., Any])


def per_chunk(on_ack: _F) -> _F:
    """Mark a source's ``on_ack`` as taking a list of ``Settled`` (one per lot) instead of
    a list of ``Ack`` (one per item); its source hands on chunks with one token each
    (``Emit._many_lot``). For the library's own sources."""
    on_ack.__dict__["trioflow_per_chunk"] = True
    return on_ack


def is_per_chunk(on_ack: object) -> bool:
    return getattr(on_ack, "trioflow_per_chunk", False) is True


def settle(item: Any, error: BaseException | None = None) -> None:
    """Settle a tracked item's part (nothing for an untracked item)."""
    if type(item) is Tracked and item.ticket is not None:
        item.ticket.settle(item.index, error)


def _runs(items: list[Any], members: list[tuple[Lot | Ticket, list[int]]]) -> None:
    """Add the tickets of tracked ``items`` to ``members``, as ``(ticket, indices)`` runs (a
    run goes on from the last member's, if the first items share its ticket)."""
    last, indices = members[-1] if members else (None, [])
    for t in items:
        ticket = t.ticket
        if ticket is None:
            continue
        if ticket is not last:  # a run of members from one lot (or one ticket)
            last, indices = ticket, []
            members.append((ticket, indices))
        indices.append(t.index)


def combine(items: list[Any]) -> Any:
    """One tracked item over several (a batch, a zipped tuple): its ticket settles every
    member's part when it settles."""
    members: list[tuple[Lot | Ticket, list[int]]] = []
    _runs(items, members)
    return Tracked([t.value for t in items], Ticket(members) if members else None, 0)


@final
class LotChunk(list[Any]):
    """Items of one lot travelling whole: the plain values, their lot beside them, and the
    items' indices in the lot (``None``: value ``i`` is item ``i``), so no item is wrapped
    in a ``Tracked``. A source hands one on; a fused ``map`` gives its results the same lot
    and indices, a fused ``filter`` keeps one (settling what it drops), a ``route`` splits
    one into one per branch, a tracked ``batch`` takes it in. Any other stage gets
    ``tracked()`` instead (``Segment.emit`` and planning see to it: an edge carries one
    only when its consumer ``takes_lots``), and an edge never merges one with another
    chunk."""

    __slots__ = ("indices", "lot")

    def __init__(self, values: list[Any], lot: Lot, indices: list[int] | None = None) -> None:
        super().__init__(values)
        self.lot = lot
        self.indices = indices

    def tracked(self) -> list[Tracked]:
        """The items as ``Tracked`` (for a stage that takes them one by one)."""
        n = len(self)
        indices = range(n) if self.indices is None else self.indices
        return list(map(Tracked, self, itertools.repeat(self.lot, n), indices))

    def like(self, values: list[Any]) -> LotChunk:
        """``values`` (one per item of this chunk, in order) beside the same lot and
        indices."""
        return LotChunk(values, self.lot, self.indices)


class TrackedBatcher:
    """``Batcher`` for tracked items: a batch is one ``Tracked`` over its members (as
    ``combine``), and the members' wrappers are let go as they arrive: the batch being
    filled keeps their values and ``(ticket, indices)`` runs only."""

    __slots__ = ("current", "members", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        #: the values of the batch being filled
        self.current: list[Any] = []
        self.members: list[tuple[Lot | Ticket, list[int]]] = []

    def add(self, chunk: list[Any]) -> list[Any]:
        """Add tracked items; return the batches that became full (in order)."""
        size = self.size
        full: list[Any] = []
        pos, n = 0, len(chunk)
        if type(chunk) is LotChunk:  # plain values: the members are indices of one lot
            lot, members, indices = chunk.lot, self.members, chunk.indices
            while pos < n:
                end = min(n, pos + size - len(self.current))
                self.current += chunk[pos:end]
                members.append((lot, list(range(pos, end)) if indices is None else indices[pos:end]))
                pos = end
                if len(self.current) == size:
                    full.append(self._finish())
                    members = self.members
            return full
        while pos < n:
            part = chunk[pos : pos + size - len(self.current)]
            pos += len(part)
            self.current += [t.value for t in part]
            _runs(part, self.members)
            if len(self.current) == size:
                full.append(self._finish())
        return full

    def take_partial(self) -> list[Any]:
        """Return the partial batch (if any) and start a new one."""
        return [self._finish()] if self.current else []

    def _finish(self) -> Tracked:
        members = self.members
        batch = Tracked(self.current, Ticket(members) if members else None, 0)
        self.current, self.members = [], []
        return batch


def plain_of(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """The plain function a synchronous map or a key was lifted from (``None``: ``fn`` is
    not such a lift): what a stage applies to the values of a ``LotChunk``."""
    return getattr(fn, "trioflow_plain", None)


def unwrap(item: Any) -> Any:
    """The value user code sees (an untracked item is its own value)."""
    return item.value if type(item) is Tracked else item
