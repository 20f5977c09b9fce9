"""What both database writers share at run time: argument checks, errors, and the task that
turns a dead-letter channel into table rows.

Dead letters reach a table through a Trio channel: ``DeadLetter(target)`` calls a plain
function synchronously on the Trio thread, where a database write would block the run;
a ``SendChannel`` target is awaited. The channel given here (``DeadLetterTable``) hands
each entry to one task that writes what is waiting in one transaction per batch, and its
``send`` returns only once the entry's row is committed: so an item counts as
dead-lettered (and is acknowledged, and a client is answered ``err``) only after its
letter is in the table.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol

import trio

from .._errors import DefinitionTypeError, DefinitionValueError, TrioflowError
from .._operators import persistent
from .._policies import DeadLetterEntry, OnError, Retry
from .._stage import Stage
from ._table import R, Row

#: the columns of a dead-letter table unless others are given
DEAD_LETTER_COLUMNS: Mapping[str, str] = {
    "stage": "TEXT", "item": "TEXT", "error": "TEXT", "attempt": "INTEGER", "time": "DOUBLE PRECISION",
}
#: batches that may wait before a writer (beyond the ones its workers hold)
BATCHES_WAITING = 4
#: a dead-letter table keeps this much of an item's repr
ITEM_TEXT_LIMIT = 1024
#: most entries written in one dead-letter transaction
_DEAD_LETTER_BATCH = 1000


class TableError(TrioflowError, LookupError):
    """The target table is missing, or lacks a column the writer was told to write."""


def check_batch(op: str, batch: object) -> None:
    if not isinstance(batch, list | tuple) or (batch and not isinstance(batch[0], Mapping | tuple | list)):
        raise TypeError(
            f"{op} takes batches (lists of rows), got {type(batch).__name__}: put tf.batch(n) before it"
        )


def check_workers(op: str, workers: object) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise DefinitionTypeError(f"workers of {op} must be an int >= 1, got {workers!r}")
    if workers < 1:
        raise DefinitionValueError(f"workers of {op} must be an int >= 1, got {workers!r}")


def item_text(item: object) -> str:
    """The first ``ITEM_TEXT_LIMIT`` characters of ``repr(item)`` (a failing repr is noted)."""
    try:
        text = repr(item)
    except Exception:  # a broken __repr__ must not lose the letter
        text = f"<{type(item).__name__} object (repr failed)>"
    return text[:ITEM_TEXT_LIMIT]


def dead_letter_row(entry: DeadLetterEntry) -> tuple[object, ...]:
    """The default row of a dead-letter table: stage, item (repr, first 1 KiB), error (repr),
    attempt, time (``time.time()``)."""
    return (entry.stage, item_text(entry.item), repr(entry.exception), entry.attempt, entry.time)


class BatchWriter(Protocol):
    async def write(self, batch: Sequence[Row]) -> None: ...


@typing.final
class DeadLetterTable(trio.abc.SendChannel[DeadLetterEntry]):
    """The target of ``tf.DeadLetter`` for a dead-letter table: ``await send(entry)``
    returns once the entry's row is committed (several senders' entries share a
    transaction). Given by ``open_sqlite_dead_letters``/``open_postgres_dead_letters``;
    not built by users. Cancelled while waiting: the row may still be written."""

    def __init__(self, send: trio.MemorySendChannel[tuple[DeadLetterEntry, trio.Event]]) -> None:
        self._send = send

    async def send(self, value: DeadLetterEntry) -> None:
        committed = trio.Event()
        await self._send.send((value, committed))
        await committed.wait()

    def close(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        await trio.lowlevel.checkpoint()


@contextlib.asynccontextmanager
async def serve_dead_letters(
    writer: contextlib.AbstractAsyncContextManager[BatchWriter],
    row: Callable[[DeadLetterEntry], Row],
    buffer: int,
) -> AsyncIterator[DeadLetterTable]:
    send, receive = trio.open_memory_channel[tuple[DeadLetterEntry, trio.Event]](buffer)
    async with writer as w, trio.open_nursery() as nursery:
        nursery.start_soon(_drain, receive, w, row)
        table = DeadLetterTable(send)
        try:
            yield table
        finally:
            table.close()  # on every exit: the drain task then writes what is left and ends


async def _drain(receive: trio.MemoryReceiveChannel[tuple[DeadLetterEntry, trio.Event]],
                 writer: BatchWriter, row: Callable[[DeadLetterEntry], Row]) -> None:
    with receive:
        async for first in receive:
            entries = [first]
            while len(entries) < _DEAD_LETTER_BATCH:
                try:
                    entries.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await writer.write([row(e) for e, _ in entries])
            for _, committed in entries:
                committed.set()


def writer_stage(
    op: str, workers: int, name: str | None, on_error: OnError, retry: Retry | None,
    open_worker: Callable[[trio.CapacityLimiter], contextlib.AbstractAsyncContextManager[BatchWriter]],
) -> Stage[list[R], list[R]]:
    """The persistent stage of a writer: ``workers`` workers, each with the resource
    ``open_worker(limiter)`` (one limiter for the stage: its own threads), each batch
    written, then emitted. Its input edge holds ``BATCHES_WAITING`` batches: an edge is
    bounded in items, and here an item is a whole batch (the run's default of 512 would
    let half a million rows wait while the database is slower than the source)."""
    limiter = trio.CapacityLimiter(workers)

    def resource() -> contextlib.AbstractAsyncContextManager[BatchWriter]:
        return open_worker(limiter)

    async def write_batch(worker: BatchWriter, batch: list[R]) -> list[R]:
        await worker.write(batch)
        return batch

    return persistent(write_batch, resource=resource, workers=workers, name=name or op,
                      on_error=on_error, retry=retry, buffer=BATCHES_WAITING)


def check_dead_letter_args(op: str, buffer: object, row: object) -> None:
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 0:
        raise DefinitionValueError(f"buffer of {op} must be an int >= 0, got {buffer!r}")
    if row is not None and not callable(row):
        raise DefinitionTypeError(f"row of {op} must be a function (entry) -> row, got {row!r}")
