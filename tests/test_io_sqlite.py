"""trioflow.io's SQLite writer and dead-letter table, against real database files.

Real threads and a real file: these tests run on Trio's real clock. Waits are bounded by
generous ``fail_after`` guards; nothing compares timings."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from io_cases import SOCKET_COLUMNS, SOCKET_LETTERS, SOCKET_LINES, parse_socket_line, socket_letter_row

import trioflow as tf
import trioflow.io as tfio

GUARD = 60  # seconds: a hung test fails instead of blocking the suite

COLS = {"id": "INTEGER", "sensor": "TEXT NOT NULL", "value": "REAL"}


def rows_of(path: Path, sql: str = "SELECT id, sensor, value FROM readings ORDER BY id") -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn:  # closed now, not at the next gc
        return conn.execute(sql).fetchall()


def is_open(path: Path) -> bool:
    """Does this process hold the database file open (a connection not closed)?"""
    return any(Path(f.path) == path for f in psutil.Process().open_files())


def readings(n: int, start: int = 0, sensor: str = "s") -> list[dict[str, Any]]:
    return [{"id": i, "sensor": sensor, "value": i / 2} for i in range(start, start + n)]


async def test_insert_round_trip_emits_committed_batches(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    rows = readings(2500)
    with trio.fail_after(GUARD):
        out = await (tf.from_iterable(rows) | tf.batch(1000)
                     | tfio.write_sqlite(db, "readings", columns=COLS, create=True)).to_list()
    assert [len(b) for b in out] == [1000, 1000, 500]
    assert [r for b in out for r in b] == rows  # emitted unchanged, in order
    assert rows_of(db) == [(i, "s", i / 2) for i in range(2500)]
    assert not is_open(db)
    assert rows_of(db, "PRAGMA journal_mode") == [("wal",)]


async def test_tuples_and_mappings_mix_in_column_order(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    batch: list[tfio.Row] = [(1, "a", 1.5), {"value": 2.5, "id": 2, "sensor": "b"}, [3, "c", None]]
    with trio.fail_after(GUARD):
        await (tf.from_iterable([batch])
               | tfio.write_sqlite(db, "readings", columns=COLS, create=True)).run()
    assert rows_of(db) == [(1, "a", 1.5), (2, "b", 2.5), (3, "c", None)]


async def test_upsert_is_idempotent_and_updates(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    writer = tfio.write_sqlite(db, "readings", columns=COLS, key="id", create=True)
    with trio.fail_after(GUARD):
        for _ in range(2):  # the same ids twice: one row each
            await (tf.from_iterable(readings(3000)) | tf.batch(700) | writer).run()
        assert rows_of(db, "SELECT count(*), count(DISTINCT id) FROM readings") == [(3000, 3000)]
        # a re-sent id with new values updates its row; a key repeated in one batch: last wins
        await (tf.from_iterable([[{"id": 5, "sensor": "x", "value": 1.0},
                                  {"id": 5, "sensor": "y", "value": 2.0}]]) | writer).run()
    assert rows_of(db, "SELECT id, sensor, value FROM readings WHERE id = 5") == [(5, "y", 2.0)]
    assert rows_of(db, "SELECT count(*) FROM readings") == [(3000,)]


async def test_large_batches(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with trio.fail_after(GUARD):
        out = await (tf.from_iterable(range(200_000)) | tf.map(lambda i: (i, f"s{i % 7}", i * 0.5))
                     | tf.batch(100_000)
                     | tfio.write_sqlite(db, "readings", columns=COLS, key="id", create=True)).to_list()
    assert [len(b) for b in out] == [100_000, 100_000]
    assert rows_of(db, "SELECT count(*), sum(id), max(value) FROM readings") == [
        (200_000, sum(range(200_000)), 199_999 * 0.5)]


def _connection(path: Path, key: str | None) -> Any:
    """A writer's connection (its thread-side half), opened and set up, called directly."""
    from trioflow.io._sqlite import _SqliteConnection
    from trioflow.io._table import Table

    table = Table.build("write_sqlite", "readings", COLS, key, True)
    conn = _SqliteConnection(str(path), table, wal=True, synchronous="NORMAL", lock_timeout=None)
    conn.open()
    assert conn.setup()
    return conn


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 40), st.sampled_from("abc")), max_size=70),
                        max_size=4),
       max_rows=st.sampled_from([1, 2, 4, 16, 1024]), key=st.sampled_from([None, "id"]))
def test_rows_go_in_as_executemany_would_put_them(tmp_path_factory: pytest.TempPathFactory,
                                                 batches: list[list[tuple[int, str]]], max_rows: int,
                                                 key: str | None) -> None:
    """Whatever the batch sizes (statements of 2**k rows, and the last of each size reused
    from the cache), the table ends as the rows applied one by one would leave it: in
    order, a key repeated within a batch or across batches ends with its last values."""
    path = tmp_path_factory.mktemp("multi") / "a.db"
    conn = _connection(path, key)
    conn.max_rows = max_rows
    try:
        reference: dict[int, tuple[int, str, float]] | list[tuple[int, str, float]] = {} if key else []
        for batch in batches:
            rows = [(i, s, i / 4) for i, s in batch]
            assert conn.write(rows)
            for row in rows:
                if isinstance(reference, dict):
                    reference[row[0]] = row
                else:
                    reference.append(row)
        expected = sorted(reference.values()) if isinstance(reference, dict) else reference
        sql = "SELECT id, sensor, value FROM readings ORDER BY " + ("id" if key else "rowid")
        assert rows_of(path, sql) == expected
        assert set(conn._multi) <= {1 << k for k in range(11)}  # powers of two only (1 included)
    finally:
        conn.close()


def test_statement_size_stays_within_the_connections_limits() -> None:
    from trioflow.io._sqlite import _max_rows

    assert _max_rows(3, 250_000, 1_000_000) == 1024  # capped
    assert _max_rows(3, 999, 1_000_000) == 256  # 999 parameters: 333 rows, down to a power of two
    assert _max_rows(40, 999, 1_000_000) == 16  # 24 rows of 40 values
    assert _max_rows(3, 32766, 300) == 32  # text: 8 characters a row
    assert _max_rows(2000, 999, 1_000_000) == 1  # wider than the limit: row by row


def test_a_value_that_cannot_be_bound_names_its_row_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = _connection(path, "id")
    try:
        rows: list[Any] = [(i, "s", i / 2) for i in range(300)]
        rows[200] = (200, {"not": "bindable"}, 1.0)
        with pytest.raises(sqlite3.ProgrammingError, match=r"parameter 2\b"):  # of row 200, not 602
            conn.write(rows)
        assert not conn.conn.in_transaction
    finally:
        conn.close()
    assert rows_of(path) == []


async def test_types_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    cols = {"i": "INTEGER", "f": "REAL", "t": "TEXT", "b": "BLOB", "n": "INTEGER"}
    row = (2**62, 1e-300, "naïve ☃ \x00 end", b"\x00\xff\x10", None)
    with trio.fail_after(GUARD):
        await (tf.from_iterable([[row]]) | tfio.write_sqlite(db, "t", columns=cols, create=True)).run()
    assert rows_of(db, "SELECT i, f, t, b, n FROM t") == [row]


async def test_a_failing_row_rolls_back_its_whole_batch(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    rows = readings(3000)
    rows[1500] = {"id": 1500, "sensor": None, "value": 0.0}  # NOT NULL: fails mid-batch 2
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(sqlite3.IntegrityError):
            await (tf.from_iterable(rows) | tf.batch(1000)
                   | tfio.write_sqlite(db, "readings", columns=COLS, create=True)).run()
    # batch 1 committed; batch 2 (ids 1000..1999) none of it, not even its first 500 rows
    assert rows_of(db, "SELECT count(*), min(id), max(id) FROM readings") == [(1000, 0, 999)]
    assert not is_open(db)


async def test_a_failed_batch_can_be_dead_lettered_into_a_table(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    rows = readings(30)
    rows[15] = {"id": 15, "sensor": None, "value": 0.0}
    with trio.fail_after(GUARD):
        async with tfio.open_sqlite_dead_letters(db) as letters:
            out = await (tf.from_iterable(rows) | tf.batch(10)
                         | tfio.write_sqlite(db, "readings", columns=COLS, create=True,
                                             on_error=tf.DeadLetter(letters))).to_list()
    assert [b[0]["id"] for b in out] == [0, 20]
    assert rows_of(db, "SELECT count(*) FROM readings") == [(20,)]
    [(stage, item, error, attempt, when)] = rows_of(
        db, "SELECT stage, item, error, attempt, time FROM dead_letters")
    assert stage == "write_sqlite"
    assert item.startswith("[{'id': 10,")
    assert "IntegrityError" in error and "NOT NULL" in error
    assert attempt == 1 and when > 1e9


async def test_the_socket_examples_dead_letter_table(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with trio.fail_after(GUARD):
        async with tfio.open_sqlite_dead_letters(db, columns=SOCKET_COLUMNS, row=socket_letter_row,
                                                 buffer=10) as letters:
            await (tf.from_iterable(SOCKET_LINES)
                   | tf.map(parse_socket_line, on_error=tf.DeadLetter(letters))).run()
    got = rows_of(db, "SELECT connection, line, error, length(raw) FROM dead_letters ORDER BY rowid")
    assert got == SOCKET_LETTERS


async def test_default_dead_letter_item_is_cut_to_1_kib(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    def boom(x: str) -> str:
        raise RuntimeError("no")

    with trio.fail_after(GUARD):
        async with tfio.open_sqlite_dead_letters(db, "letters") as letters:
            await (tf.from_iterable(["y" * 10_000]) | tf.map(boom, on_error=tf.DeadLetter(letters))).run()
    assert rows_of(db, "SELECT length(item), error FROM letters") == [(1024, "RuntimeError('no')")]


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_a_locked_database_makes_commits_wait_without_errors(tmp_path: Path, journal: str) -> None:
    """In WAL mode the batches wait for the write lock; in rollback-journal mode the writer's
    start waits too (switching to WAL needs the lock)."""
    db = tmp_path / "a.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT NOT NULL, value REAL)")
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO readings VALUES (-1, 'other', 0)")
        locked.set()
        release.wait(GUARD)
        other.execute("COMMIT")
        other.close()

    committed: list[int] = []

    async def release_later() -> None:
        # hold the lock for about 2 s of batches arriving (each waits: none may fail)
        await trio.sleep(2)
        assert committed == []  # nothing got past the lock
        release.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            holder = threading.Thread(target=hold_lock)
            holder.start()
            await trio.to_thread.run_sync(locked.wait)
            nursery.start_soon(release_later)
            await (tf.from_iterable(readings(5000)) | tf.batch(1000)
                   | tfio.write_sqlite(db, "readings", columns=list(COLS), key="id")
                   | tf.tap(lambda b: committed.append(len(b)))).run()
        await trio.to_thread.run_sync(holder.join)
    assert committed == [1000] * 5
    assert rows_of(db, "SELECT count(*) FROM readings") == [(5001,)]


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """The table ``readings``, with another connection holding the write lock meanwhile."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, value REAL)")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        yield


async def test_lock_timeout_fails_the_batch(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with write_locked(db):
        with trio.fail_after(GUARD):
            with pytest.RaisesGroup(pytest.RaisesExc(sqlite3.OperationalError, match="lock_timeout=0.3")):
                await (tf.from_iterable([readings(3)])
                       | tfio.write_sqlite(db, "readings", columns=COLS, lock_timeout=0.3)).run()
    assert not is_open(db)


async def test_cancelled_while_waiting_for_a_lock_writes_nothing_and_closes(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with write_locked(db):
        with trio.fail_after(GUARD):
            with trio.move_on_after(0.5) as scope:
                await (tf.from_iterable([readings(3)])
                       | tfio.write_sqlite(db, "readings", columns=COLS)).run()
        assert scope.cancelled_caught
    # (SQLite keeps a closed connection's file descriptor while another connection of the
    # process holds a POSIX lock on the file, so this is checked once the other is closed)
    assert not is_open(db)
    assert rows_of(db, "SELECT count(*) FROM readings") == [(0,)]


async def test_a_missing_table_fails_the_start(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(pytest.RaisesExc(tfio.TableError, match="'readings' does not exist")):
            await (tf.from_iterable([readings(1)]) | tfio.write_sqlite(db, "readings", columns=COLS)).run()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE readings (id INTEGER, sensor TEXT)")
        with pytest.RaisesGroup(pytest.RaisesExc(tfio.TableError, match="no column 'value'")):
            await (tf.from_iterable([readings(1)]) | tfio.write_sqlite(db, "readings", columns=COLS)).run()
    assert not is_open(db)


async def test_single_rows_instead_of_batches_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with trio.fail_after(GUARD):
        with pytest.RaisesGroup(pytest.RaisesExc(TypeError, match=r"put tf.batch\(n\) before it")):
            await (tf.from_iterable(readings(2))
                   | tfio.write_sqlite(db, "readings", columns=COLS, create=True)).run()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"columns": []}, tf.DefinitionValueError, "at least one column"),
        ({"columns": "id"}, tf.DefinitionTypeError, "sequence of names"),
        ({"columns": ["id", "id"]}, tf.DefinitionValueError, "repeat"),
        ({"columns": ["id"], "key": "other"}, tf.DefinitionValueError, "'other' is not one of"),
        ({"columns": ["id"], "create": True}, tf.DefinitionValueError, "needs the column types"),
        ({"columns": ["id"], "workers": 0}, tf.DefinitionValueError, "workers"),
        ({"columns": ["id"], "synchronous": "sometimes"}, tf.DefinitionValueError, "synchronous"),
        ({"columns": ["id"], "lock_timeout": -1}, tf.DefinitionValueError, "lock_timeout"),
    ],
)
def test_bad_arguments_fail_at_definition(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        tfio.write_sqlite("x.db", "t", **kwargs)


def test_importing_trioflow_io_imports_no_driver() -> None:
    code = "import sys, trioflow, trioflow.io; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_psycopg_names_the_extra() -> None:
    # fault injection: this environment has psycopg; hide it the way a missing package looks
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "import trioflow.io as tfio\n"
            "try:\n    tfio.write_postgres('postgresql://x/y', 't', columns=['a'])\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'trioflow[postgres]'" in out.stdout


def test_trioflow_io_exports_each_public_name_once_with_a_docstring() -> None:
    assert len(tfio.__all__) == len(set(tfio.__all__))
    for name in tfio.__all__:
        obj = getattr(tfio, name)
        assert (obj.__doc__ or "").strip(), name
        if callable(obj) and name.startswith(("write_", "open_")):
            assert "cancel" in obj.__doc__.lower(), f"{name} says what cancellation does"


async def test_an_item_is_acknowledged_only_after_its_dead_letter_row_is_committed(tmp_path: Path) -> None:
    db = tmp_path / "letters.db"
    seen_in_table: list[bool] = []

    def on_ack(acks: list[tf.Ack]) -> None:
        for ack in acks:
            if not ack.ok:
                with sqlite3.connect(db) as conn:
                    items = [r[0] for r in conn.execute("SELECT item FROM dead_letters")]
                seen_in_table.append(repr(ack.token) in items)

    def parse(v: int) -> int:
        if v % 5 == 0:
            raise ValueError(v)
        return v

    async with tfio.open_sqlite_dead_letters(db) as letters:
        out = await (tf.from_iterable(range(50), on_ack=on_ack)
                     | tf.map(parse, on_error=tf.DeadLetter(letters)) | tf.to_list()).run()
    assert out == [v for v in range(50) if v % 5]
    assert seen_in_table == [True] * 10  # every rejected item's row was there when it was acked


def test_a_writer_lets_few_batches_wait_before_it(tmp_path: Path) -> None:
    """An edge is bounded in items, and before a writer an item is a batch: the writer's
    edge holds a few batches, not the run's default of 512 (half a million rows)."""
    flow = (tf.from_iterable(range(10)) | tf.batch(1000)
            | tfio.write_sqlite(tmp_path / "w.db", "t", columns={"v": "INTEGER"}, create=True))
    (edge,) = [e for e in flow.plan().edges if e.name.endswith("write_sqlite")]
    assert edge.capacity == 4
