"""The SQLite writer: a persistent stage whose workers each own one connection.

Theory of operation. ``sqlite3`` blocks, so every call runs in a worker thread through
``trio.to_thread.run_sync`` with the stage's own ``CapacityLimiter`` (one token per
worker: a burst of writers never starves other thread users, and vice versa). A worker's
connection is opened in its thread call (``check_same_thread=False``: it is used from
whichever pool thread runs the call, but only ever by one call at a time, its worker's).

One batch is one transaction: ``BEGIN IMMEDIATE`` takes the write lock up front, then the
rows and ``COMMIT``; any error rolls the whole batch back and is raised to the stage's
error policy.

The rows go in multi-row ``INSERT ... VALUES (...), (...), ...`` statements, not through
``executemany``: ``sqlite3`` lets go of the GIL around every statement step, so
``executemany`` takes the GIL back once per row, and while the Trio thread is busy (with the
next chunks of the pipeline) each of those takes a forced GIL switch (up to
``sys.getswitchinterval()``, 5 ms): measured here, 500 rows took 525 ms against a busy
thread, and a handful of multi-row statements 16-28 ms, their steps running beside the Trio
thread. The statements hold a power of two of rows each (so a partial batch reuses the
prepared statements of the connection's cache), up to what the connection's limits on
bound parameters and statement length allow. A statement whose values cannot be bound is
run again row by row, so the error names the row's parameter, as ``executemany``'s would.

Only after ``COMMIT`` returned is the batch emitted, so what follows the stage (and the
run's acknowledgements) sees committed rows only.

Waiting for a lock held by someone else must not end in an error ("database is locked")
and must stay cancellable. So the busy handler waits at most ``_LOCK_SLICE`` inside one
thread call; a call that could not take the lock returns, the worker checkpoints (Trio can
cancel it there), and tries again, until ``lock_timeout`` (default: for ever). A thread call
that runs is never abandoned on cancellation: it finishes (commit or rollback, a few
milliseconds for a batch), so the connection is never left mid-transaction.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Literal, final

import trio
import trio.lowlevel

from .._errors import DefinitionTypeError, DefinitionValueError
from .._policies import FAIL, DeadLetterEntry, OnError, Retry
from .._stage import Stage
from ._table import R, Row, Table, quote
from ._writer import (
    DEAD_LETTER_COLUMNS,
    DeadLetterTable,
    TableError,
    check_batch,
    check_dead_letter_args,
    check_workers,
    dead_letter_row,
    serve_dead_letters,
    writer_stage,
)

#: longest a busy handler waits inside one thread call before the worker checkpoints
_LOCK_SLICE = 0.2


@final
class _SqliteConnection:
    """One worker's connection (sync methods, each run in a thread)."""

    def __init__(self, path: str, table: Table, *, wal: bool, synchronous: str,
                 lock_timeout: float | None) -> None:
        self.path = path
        self.table = table
        self.wal = wal
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self.conn: sqlite3.Connection | None = None
        self.convert = table.row_converter()
        self.sql = table.insert_sql("?")
        #: INSERT statements by row count (powers of two, up to ``max_rows``)
        self._multi: dict[int, str] = {1: self.sql}
        self.max_rows = 1

    def open(self) -> None:
        # isolation_level=None: no implicit transactions, ours are explicit (BEGIN IMMEDIATE)
        self.conn = conn = sqlite3.connect(self.path, timeout=_LOCK_SLICE, isolation_level=None,
                                           check_same_thread=False)
        self.max_rows = _max_rows(len(self.table.columns),
                                  conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER),
                                  conn.getlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH) - len(self.sql))

    def setup(self) -> bool:
        """Set the journal mode, create or check the table. False: the database was locked
        for a whole slice (try again)."""
        try:
            self._setup(self.conn)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return False
            raise
        return True

    def _setup(self, conn: sqlite3.Connection | None) -> None:
        assert conn is not None
        if self.wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        t = self.table
        if t.create:
            conn.execute(t.create_sql())
        found = [r[1] for r in conn.execute(f"PRAGMA table_info({quote(t.name)})")]
        if not found:
            raise TableError(f"table {t.name!r} does not exist in {self.path!r} (pass create=True and "
                             f"column types to create it)")
        missing = [c for c in t.columns if c not in found]
        if missing:
            names = ", ".join(map(repr, missing))
            raise TableError(f"table {t.name!r} in {self.path!r} has no column {names}")

    def write(self, batch: Sequence[Row]) -> bool:
        """One batch in one transaction. False: the write lock could not be taken within
        one slice (nothing was done; try again)."""
        conn = self.conn
        assert conn is not None
        params = self.convert(batch)  # before BEGIN: a malformed row holds no lock
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return False
            raise
        try:
            self._insert(conn, params)
            self._commit(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return True

    def _insert(self, conn: sqlite3.Connection, params: Sequence[Sequence[object]]) -> None:
        """The rows, in multi-row statements of a power of two of rows each, in order."""
        n = len(params)
        pos = 0
        flat = itertools.chain.from_iterable
        while pos < n:
            k = _power_of_two_floor(min(n - pos, self.max_rows))
            rows = params[pos:pos + k]
            try:
                conn.execute(self._statement(k), list(flat(rows)))
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError):
                # a value that cannot be bound (nothing of the statement ran): row by row,
                # for an error that names the row's parameter
                conn.executemany(self.sql, rows)
                raise
            pos += k

    def _statement(self, rows: int) -> str:
        sql = self._multi.get(rows)
        if sql is None:
            sql = self._multi[rows] = self.table.insert_sql("?", rows=rows)
        return sql

    def _commit(self, conn: sqlite3.Connection) -> None:
        # with WAL the commit does not wait for readers; in rollback-journal mode it waits for
        # them to finish (our write lock is held meanwhile, so waiting is all there is to do)
        while True:
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            else:
                return

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


#: most rows in one INSERT statement (more saves little: one statement step per 1,024 rows)
_MAX_ROWS = 1024


def _max_rows(columns: int, max_params: int, max_text: int) -> int:
    """The most rows (a power of two) of ``columns`` values that one statement may hold
    within the connection's limits on bound parameters and on statement length."""
    return _power_of_two_floor(max(1, min(_MAX_ROWS, max_params // columns,
                                          max_text // (2 * columns + 2))))


def _power_of_two_floor(n: int) -> int:
    """The largest power of two not above ``n`` (``n`` >= 1)."""
    return 1 << (n.bit_length() - 1)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


@final
class SqliteWorker:
    """The resource of one worker of a SQLite writer (built by the stage; not for users)."""

    def __init__(self, conn: _SqliteConnection, limiter: trio.CapacityLimiter) -> None:
        self._conn = conn
        self._limiter = limiter
        #: rows committed by this worker
        self.rows = 0

    async def setup(self) -> None:
        """Journal mode, table: waits (cancellably) while another connection holds a lock."""
        await self._until_locked(self._conn.setup)

    async def write(self, batch: Sequence[Row]) -> None:
        """Write and commit one batch; on cancellation, the thread call in progress (at most
        one lock slice or one transaction) is finished first, then ``Cancelled`` is raised."""
        check_batch("write_sqlite", batch)
        if not batch:
            return
        await self._until_locked(self._conn.write, batch)
        self.rows += len(batch)

    async def _until_locked(self, fn: Callable[..., bool], *args: object) -> None:
        """Call ``fn`` in a thread until it could take the lock it needs (it returns True)."""
        timeout = self._conn.lock_timeout
        deadline = None if timeout is None else trio.current_time() + timeout
        while not await trio.to_thread.run_sync(fn, *args, limiter=self._limiter):
            if deadline is not None and trio.current_time() >= deadline:
                raise sqlite3.OperationalError(
                    f"database is locked: the lock on {self._conn.path!r} was not free within "
                    f"lock_timeout={timeout}s"
                )
            await trio.lowlevel.checkpoint()  # where a long wait for the lock can be cancelled


def _check_common(op: str, synchronous: object, lock_timeout: object, wal: object) -> None:
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise DefinitionValueError(f"synchronous of {op} must be 'OFF', 'NORMAL', 'FULL' or 'EXTRA', "
                                   f"got {synchronous!r}")
    t = lock_timeout
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or math.isnan(t) or t < 0):
        raise DefinitionValueError(f"lock_timeout of {op} must be a number >= 0 or None, got {t!r}")
    if not isinstance(wal, bool):
        raise DefinitionTypeError(f"wal of {op} must be True or False, got {wal!r}")


def _check_path(op: str, path: object) -> str:
    if not isinstance(path, str | os.PathLike):
        raise DefinitionTypeError(f"path of {op} must be a str or a path, got {path!r}")
    return os.fspath(path)


def open_sqlite_worker(path: str | os.PathLike[str], table: Table, *, wal: bool = True,
                       synchronous: str = "NORMAL", lock_timeout: float | None = None,
                       limiter: trio.CapacityLimiter | None = None,
                       ) -> contextlib.AbstractAsyncContextManager[SqliteWorker]:
    """A connection, opened (and the table checked or created) on enter, closed on exit."""

    @contextlib.asynccontextmanager
    async def cm() -> AsyncIterator[SqliteWorker]:
        lim = limiter if limiter is not None else trio.CapacityLimiter(1)
        conn = _SqliteConnection(os.fspath(path), table, wal=wal, synchronous=synchronous,
                                 lock_timeout=lock_timeout)
        await trio.to_thread.run_sync(conn.open, limiter=lim)
        try:
            worker = SqliteWorker(conn, lim)
            await worker.setup()
            yield worker
        finally:
            with trio.CancelScope(shield=True):  # the close must happen, also when cancelled
                await trio.to_thread.run_sync(conn.close, limiter=lim)

    return cm()


def write_sqlite(
    path: str | os.PathLike[str],
    table: str,
    *,
    columns: Sequence[str] | Mapping[str, str],
    key: str | Sequence[str] | None = None,
    create: bool = False,
    wal: bool = True,
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL",
    lock_timeout: float | None = None,
    workers: int = 1,
    name: str | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
) -> Stage[list[R], list[R]]:
    """A stage that writes each batch of rows to a SQLite table in one transaction, then
    emits the batch.

    Put it after ``tf.batch(n)``: ``flow | tf.batch(1000, timeout=0.1) | write_sqlite(...)``.
    A row is a mapping (looked up by column name) or a tuple/list in column order.
    ``columns`` names the columns written, or maps them to SQL types; with ``create=True``
    (which needs the types) the table is created when missing, otherwise it must exist
    with those columns (checked when the run starts: ``TableError``). ``key`` (a column or
    several): upsert, ``INSERT ... ON CONFLICT (key) DO UPDATE`` the other columns, so
    writing a row twice leaves one row (the key must be a primary key or unique); without
    ``key``, plain inserts. ``wal``: switch the database to write-ahead logging (readers
    never block the writer); ``synchronous``: SQLite's durability setting (``NORMAL`` with
    WAL survives a process crash, ``FULL`` also a power loss). ``lock_timeout``: how long a
    batch may wait for a write lock held by another connection before failing (default:
    for ever, cancellably). ``workers``: connections, one per worker (SQLite admits one
    writer at a time, so more than one rarely helps).

    * emits: each batch, unchanged, once its transaction committed (in input order);
    * backpressure: takes the next batch when a worker is free; waits while the database
      is locked by another writer;
    * completes: when its input completed and every batch is committed; connections closed;
    * cancelled: by the run; a transaction in progress is finished (committed or rolled
      back) before the worker stops, never left open;
    * on error: a failing row rolls back its whole batch; the error then goes to
      ``retry`` and ``on_error`` (fail-fast by default; ``tf.DeadLetter(...)`` dead-letters
      the whole batch); a missing table fails the run's start.
    """
    op = "write_sqlite"
    path_s = _check_path(op, path)
    spec = Table.build(op, table, columns, key, create)
    _check_common(op, synchronous, lock_timeout, wal)
    check_workers(op, workers)
    return writer_stage(op, workers, name, on_error, retry, lambda limiter: open_sqlite_worker(
        path_s, spec, wal=wal, synchronous=synchronous, lock_timeout=lock_timeout, limiter=limiter))


def open_sqlite_dead_letters(
    path: str | os.PathLike[str],
    table: str = "dead_letters",
    *,
    columns: Mapping[str, str] = DEAD_LETTER_COLUMNS,
    row: Callable[[DeadLetterEntry], Row] | None = None,
    buffer: int = 0,
) -> contextlib.AbstractAsyncContextManager[DeadLetterTable]:
    """A dead-letter table: ``async with open_sqlite_dead_letters(path) as letters:`` gives a
    channel to pass as ``tf.DeadLetter(letters)``; a task writes what it receives to
    ``table`` (created when missing), in one transaction per group of entries waiting.

    By default a row is ``(stage, item, error, attempt, time)``: the stage name, the item's
    repr (first 1 KiB), the exception's repr, the attempt that failed last and the
    wall-clock time. ``columns`` (name to SQL type) and ``row`` (entry to row) store
    something else, e.g. a connection and line number taken from the item.

    On leaving the block normally, the entries still queued are written before it exits
    (the run must be over by then). Cancellation, or an error leaving the block, cancels
    the writer: entries not yet committed are lost. ``send`` returns once the entry's row
    is committed, so ``DeadLetter`` counts an item (and its acknowledgement settles) only
    then. ``buffer``: entries queued for the writer beyond the one it is writing.
    """
    op = "open_sqlite_dead_letters"
    path_s = _check_path(op, path)
    check_dead_letter_args(op, buffer, row)
    spec = Table.build(op, table, columns, None, True)
    return serve_dead_letters(open_sqlite_worker(path_s, spec), row or dead_letter_row, buffer)
