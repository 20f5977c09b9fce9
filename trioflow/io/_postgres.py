"""The PostgreSQL writer: a persistent stage whose workers each own one psycopg connection.

Theory of operation. psycopg 3's sync API runs in threads (``trio.to_thread.run_sync``
with the stage's own ``CapacityLimiter``); its async API runs only on asyncio. psycopg is
imported when a writer is defined, never when ``trioflow`` is.

One batch is one transaction. Appends travel by ``COPY``; upserts ``COPY`` into a
per-session temporary staging table, then ``INSERT ... SELECT DISTINCT ON (key) ... ON
CONFLICT (key) DO UPDATE`` (the last row of a key in a batch wins, as with row-by-row
upserts). The batch is emitted only after ``COMMIT`` returned.

Exactly once across a lost connection. The hard case is a COMMIT whose reply is lost with
the connection: the batch may or may not be in. Asking the server afterwards by
transaction id (``pg_xact_status``) is not enough: after a crash the restarted server can
hand the same id to another transaction, and a lost batch would pass for committed (the
SIGKILL test caught this). So each batch carries a token (a UUID) that its transaction
inserts first into a small commit log table (``trioflow_commits``, primary key on the
token). After a lost connection, the worker reconnects with backoff and writes the batch
again in a fresh transaction with the same token: if the first transaction committed,
the token insert fails with a unique violation, the new transaction is rolled back and the
batch counts as written; if the first one is still finishing on the server (its session
not yet gone), the insert waits for it on the unique index, then knows. Each worker keeps
one row there: a transaction deletes its worker's previous token. With ``commit_log=None``
a lost COMMIT reply makes the batch be written again (an upsert stays exact; an append
may then duplicate that batch).

Cancellation. A thread call is abandoned when Trio cancels it, and the statement it runs
is cancelled on the server (``conn.cancel_safe()``); the worker then waits (shielded,
bounded) for the thread to return and closes that connection, whose state is unknown. A
later batch of the same worker (after a per-call timeout, say) reconnects.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar, final

import trio

from .._errors import DefinitionTypeError, DefinitionValueError
from .._policies import FAIL, Backoff, DeadLetterEntry, OnError, Retry
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

T = TypeVar("T")

#: how long a cancelled call waits (shielded) for the server to cancel its statement
CANCEL_WAIT = 10.0
_STAGING = "_trioflow_staging"
_ROW_NUMBER = "_trioflow_n"
_rng = random.Random()  # backoff jitter
#: the default reconnect backoff: quick first tries, at most 2 s apart
RECONNECT = Backoff(min=0.05, max=2.0)


def import_psycopg(op: str) -> ModuleType:
    """psycopg, or an ImportError naming the extra to install."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(f"{op} needs psycopg 3: pip install 'trioflow[postgres]'") from exc
    return psycopg


def _lost(psycopg: ModuleType, conn: Any, exc: BaseException) -> bool:
    """Is ``exc`` a lost or unusable connection (as opposed to an error of the batch)?"""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if conn is None or conn.closed or conn.broken:
        return True
    state = getattr(exc, "sqlstate", None) or ""
    # 08: connection exception; 57P01-03: the server is shutting down or restarting
    return state.startswith("08") or state in ("57P01", "57P02", "57P03")


@final
class _PgConnection:
    """One connection and the sync work done on it (each method runs in a thread)."""

    def __init__(self, psycopg: ModuleType, conninfo: str, table: Table, connect_timeout: float,
                 commit_log: str | None) -> None:
        self.psycopg = psycopg
        self.conninfo = conninfo
        self.table = table
        self.connect_timeout = connect_timeout
        self.commit_log = commit_log
        if commit_log is not None:
            log = quote(commit_log)
            self.log_create_sql = (f"CREATE TABLE IF NOT EXISTS {log} (token uuid PRIMARY KEY, "
                                   f"at timestamptz NOT NULL DEFAULT now())")
            self.log_insert_sql = f"INSERT INTO {log} (token) VALUES (%s)"
            self.log_delete_sql = f"DELETE FROM {log} WHERE token = %s"
        self.convert = table.row_converter()
        t = table
        self.copy_sql = f"COPY {t.qname} ({t.column_list}) FROM STDIN"
        if t.key:
            keys = ", ".join(quote(k) for k in t.key)
            self.staging_sql = (
                f"CREATE TEMP TABLE IF NOT EXISTS {quote(_STAGING)} ON COMMIT DELETE ROWS AS "
                f"SELECT {t.column_list}, 0::bigint AS {quote(_ROW_NUMBER)} FROM {t.qname} WITH NO DATA"
            )
            self.copy_sql = (f"COPY {quote(_STAGING)} ({t.column_list}, {quote(_ROW_NUMBER)}) "
                             f"FROM STDIN")
            self.merge_sql = (
                f"INSERT INTO {t.qname} ({t.column_list}) SELECT DISTINCT ON ({keys}) {t.column_list} "
                f"FROM {quote(_STAGING)} ORDER BY {keys}, {quote(_ROW_NUMBER)} DESC {t.conflict_clause()}"
            )

    def connect(self, abandoned: threading.Event) -> Any:
        conn = self.psycopg.connect(self.conninfo, autocommit=False, connect_timeout=self.connect_timeout)
        if abandoned.is_set():  # Trio gave up on this call: nobody will use or close it
            conn.close()
        return conn

    def setup(self, conn: Any) -> None:
        """Create or check the table, and the staging table of an upsert (which waits for
        a lock on the table: run through ``_call``, so that it can be cancelled)."""
        t = self.table
        with conn.cursor() as cur:
            # workers starting together would race in CREATE TABLE IF NOT EXISTS (a unique
            # violation in the catalog): one at a time
            lock = "SELECT pg_advisory_xact_lock(hashtext(%s))"
            if t.create:
                cur.execute(lock, (f"trioflow create {t.name}",))
                cur.execute(t.create_sql())
            if self.commit_log is not None:
                cur.execute(lock, (f"trioflow create {self.commit_log}",))
                cur.execute(self.log_create_sql)
            cur.execute(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
                "AND a.attnum > 0 AND NOT a.attisdropped", (quote(t.name),))
            found = {r[0] for r in cur.fetchall()}
            if not found:
                raise TableError(f"table {t.name!r} does not exist (pass create=True and column types "
                                 f"to create it)")
            missing = [c for c in t.columns if c not in found]
            if missing:
                raise TableError(f"table {t.name!r} has no column {', '.join(map(repr, missing))}")
            if t.key:
                cur.execute(self.staging_sql)
        conn.commit()

    def write(self, conn: Any, batch: Sequence[Row], token: str | None, previous: str | None) -> bool:
        """One batch, one transaction. False: the batch's token is in the commit log, so an
        earlier transaction of this batch committed (nothing was written now)."""
        params = self.convert(batch)
        try:
            with conn.cursor() as cur:
                if token is not None:
                    try:
                        cur.execute(self.log_insert_sql, (token,))
                    except self.psycopg.errors.UniqueViolation:
                        conn.rollback()
                        return False
                    if previous is not None:
                        cur.execute(self.log_delete_sql, (previous,))
                with cur.copy(self.copy_sql) as copy:
                    if self.table.key:
                        for i, r in enumerate(params):
                            copy.write_row((*r, i))
                    else:
                        for r in params:
                            copy.write_row(r)
                if self.table.key:
                    cur.execute(self.merge_sql)
            conn.commit()
        except BaseException:
            if not (conn.closed or conn.broken):
                conn.rollback()
            raise
        return True


@final
class PostgresWorker:
    """The resource of one worker of a PostgreSQL writer (built by the stage; not for users)."""

    def __init__(self, conn: _PgConnection, limiter: trio.CapacityLimiter, backoff: Backoff,
                 give_up_after: float | None) -> None:
        self._c = conn
        self._limiter = limiter
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._conn: Any = None
        #: rows committed by this worker
        self.rows = 0
        #: connections this worker opened again after losing one
        self.reconnects = 0
        #: the commit-log token of this worker's last committed batch (deleted by the next)
        self._previous: str | None = None

    async def connect(self) -> None:
        abandoned = threading.Event()
        try:
            # only the network connect runs abandoned on cancellation (bounded by
            # connect_timeout); every statement runs through _call
            self._conn = await trio.to_thread.run_sync(
                self._c.connect, abandoned, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            abandoned.set()  # the thread closes the connection it may still open
            raise
        try:
            await self._call(self._c.setup)
        except BaseException:
            await self._drop()
            raise

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        finished = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def run() -> T:
            try:
                return fn(conn, *args)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(finished.set)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            # the statement still runs in the abandoned thread: cancel it on the server, wait
            # for the thread to return, and never use this connection again
            self._conn = None
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_WAIT):
                with contextlib.suppress(Exception):
                    await trio.to_thread.run_sync(conn.cancel_safe)
                await finished.wait()
                await trio.to_thread.run_sync(conn.close)
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def write(self, batch: Sequence[Row]) -> None:
        """Write and commit one batch, reconnecting with backoff after a lost connection
        (the batch is then written again only if its transaction did not commit).
        On cancellation the running statement is cancelled on the server and the connection
        closed; whether the batch committed is then unknown (an upsert may be re-sent)."""
        check_batch("write_postgres", batch)
        if not batch:
            return
        psycopg = self._c.psycopg
        started = trio.current_time()
        attempt = 0
        token = None if self._c.commit_log is None else str(uuid.uuid4())
        while True:
            try:
                if self._conn is None:
                    await self.connect()
                    self.reconnects += 1
                await self._call(self._c.write, batch, token, self._previous)
                break
            except psycopg.OperationalError as exc:
                if not _lost(psycopg, self._conn, exc):
                    raise
                await self._drop()
                attempt += 1
                delay = self._backoff.delay(attempt, _rng)
                if (self._give_up_after is not None
                        and trio.current_time() + delay - started > self._give_up_after):
                    raise
                await trio.sleep(delay)
        self._previous = token
        self.rows += len(batch)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


def _conninfo(psycopg: ModuleType, op: str, url: object, application_name: str) -> str:
    if not isinstance(url, str):
        raise DefinitionTypeError(f"url of {op} must be a str (a postgresql:// URL or key=value "
                                  f"connection string), got {url!r}")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DefinitionValueError(f"url of {op} is not a valid connection string: {exc}") from None
    if "application_name" in params:
        return url
    return str(psycopg.conninfo.make_conninfo(url, application_name=application_name))


def _check_number(op: str, what: str, value: object, *, none: bool = False) -> None:
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise DefinitionValueError(f"{what} of {op} must be a number > 0{' or None' if none else ''}, "
                                   f"got {value!r}")


def _check_commit_log(op: str, commit_log: object) -> None:
    if commit_log is not None and (not isinstance(commit_log, str) or not commit_log):
        raise DefinitionValueError(f"commit_log of {op} must be a table name or None, got {commit_log!r}")


def open_postgres_worker(
    psycopg: ModuleType, conninfo: str, table: Table, *, backoff: Backoff, give_up_after: float | None,
    connect_timeout: float, commit_log: str | None, limiter: trio.CapacityLimiter | None = None,
) -> contextlib.AbstractAsyncContextManager[PostgresWorker]:
    """A worker connected (table checked or created) on enter, its connection closed on exit.
    The first connection is not retried: a run whose database is unreachable fails to start."""

    @contextlib.asynccontextmanager
    async def cm() -> AsyncIterator[PostgresWorker]:
        lim = limiter if limiter is not None else trio.CapacityLimiter(1)
        w = PostgresWorker(_PgConnection(psycopg, conninfo, table, connect_timeout, commit_log), lim, backoff,
                           give_up_after)
        await w.connect()
        try:
            yield w
        finally:
            await w.close()

    return cm()


def write_postgres(
    url: str,
    table: str,
    *,
    columns: Sequence[str] | Mapping[str, str],
    key: str | Sequence[str] | None = None,
    create: bool = False,
    workers: int = 1,
    reconnect: Backoff = RECONNECT,
    give_up_after: float | None = 60.0,
    connect_timeout: float = 10.0,
    application_name: str = "trioflow",
    commit_log: str | None = "trioflow_commits",
    name: str | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
) -> Stage[list[R], list[R]]:
    """A stage that writes each batch of rows to a PostgreSQL table in one transaction, then
    emits the batch. Needs ``pip install 'trioflow[postgres]'`` (psycopg 3).

    Put it after ``tf.batch(n)``; rows, ``columns``, ``key`` and ``create`` are as for
    ``write_sqlite``. Without ``key`` rows are appended with ``COPY``; with ``key`` they
    are upserted (``INSERT ... ON CONFLICT (key) DO UPDATE``, fed by ``COPY`` through a
    temporary table; the last row of a key in one batch wins). ``url``: a
    ``postgresql://`` URL or a ``key=value`` connection string. ``workers``: connections,
    one per worker (batches are written concurrently, emitted in input order).

    A lost connection (server restarted or killed, network cut) is opened again with
    ``reconnect`` backoff; the batch in hand is then written again in a fresh transaction
    unless its first transaction committed (the reply lost with the connection), which the
    ``commit_log`` table tells (a token per batch, one row per worker, created when
    missing), so each batch is committed exactly once; ``commit_log=None``: no log, and
    such a batch is written again (exact for an upsert, a duplicate for an append). After
    ``give_up_after`` seconds of failing on one batch (None: never) the last error is
    raised. The first connection, when the run starts, is not retried.

    * emits: each batch, unchanged, once its transaction committed (in input order);
    * backpressure: takes the next batch when a worker is free; waits while reconnecting;
    * completes: when its input completed and every batch is committed; connections closed;
    * cancelled: by the run; the running statement is cancelled on the server and the
      connection closed, so no server session stays busy;
    * on error: an error of the batch (a constraint, a bad value) rolls the whole batch back
      and goes to ``retry`` and ``on_error`` (fail-fast by default; ``tf.DeadLetter(...)``
      dead-letters the whole batch); a lost connection is retried as above, first.
    """
    op = "write_postgres"
    psycopg = import_psycopg(op)
    conninfo = _conninfo(psycopg, op, url, application_name)
    spec = Table.build(op, table, columns, key, create)
    _check_commit_log(op, commit_log)
    check_workers(op, workers)
    if not isinstance(reconnect, Backoff):
        raise DefinitionTypeError(f"reconnect of {op} must be a Backoff, got {reconnect!r}")
    _check_number(op, "give_up_after", give_up_after, none=True)
    _check_number(op, "connect_timeout", connect_timeout)
    return writer_stage(op, workers, name, on_error, retry, lambda limiter: open_postgres_worker(
        psycopg, conninfo, spec, backoff=reconnect, give_up_after=give_up_after,
        connect_timeout=connect_timeout, commit_log=commit_log, limiter=limiter))


def open_postgres_dead_letters(
    url: str,
    table: str = "dead_letters",
    *,
    columns: Mapping[str, str] = DEAD_LETTER_COLUMNS,
    row: Callable[[DeadLetterEntry], Row] | None = None,
    buffer: int = 0,
    reconnect: Backoff = RECONNECT,
    give_up_after: float | None = 60.0,
    application_name: str = "trioflow",
    commit_log: str | None = "trioflow_commits",
) -> contextlib.AbstractAsyncContextManager[DeadLetterTable]:
    """A dead-letter table in PostgreSQL, as ``open_sqlite_dead_letters`` is in SQLite: the
    block gives a channel for ``tf.DeadLetter(...)``; a task appends what it receives to
    ``table`` (created when missing), reconnecting like ``write_postgres``.

    On leaving the block normally, the entries still queued are written first.
    Cancellation, or an error leaving the block, cancels the writer (its running statement
    is cancelled on the server): entries not yet committed are lost."""
    op = "open_postgres_dead_letters"
    psycopg = import_psycopg(op)
    conninfo = _conninfo(psycopg, op, url, application_name)
    check_dead_letter_args(op, buffer, row)
    _check_number(op, "give_up_after", give_up_after, none=True)
    spec = Table.build(op, table, columns, None, True)
    _check_commit_log(op, commit_log)
    return serve_dead_letters(
        open_postgres_worker(psycopg, conninfo, spec, backoff=reconnect, give_up_after=give_up_after,
                             connect_timeout=10.0, commit_log=commit_log),
        row or dead_letter_row, buffer)
