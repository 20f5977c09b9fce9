"""The demo pipeline behind ``python -m trioflow demo``: sensor readings into SQLite.

A source produces newline-delimited JSON records (as a socket reader would), a fused
chain parses and validates them, an async stage enriches them concurrently, a timed batch
groups them, and a persistent worker owning one SQLite connection writes each batch in one
transaction. It shows every lifecycle and prints the plan and the run's statistics.

It runs under ``run_until_signal``: the first Ctrl-C (or SIGTERM) drains the run (the
reader stops taking input, what it handed over is written), the second aborts it; either
way the final statistics are printed. ``run_demo`` returns how the run ended.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeGuard

import trio

from . import _operators as tf
from ._runtime import Emit, RunHandle
from ._signals import run_until_signal
from ._stats import RunState

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    site TEXT NOT NULL,
    value REAL NOT NULL
)
"""

SITES = {f"s{i}": site for i, site in enumerate(["north", "south", "east", "west"] * 4)}

#: Lines per "receive_some" of the reader.
CHUNK = 500


def make_chunks(count: int | None, seed: int) -> Iterator[list[bytes]]:
    """Synthetic input, ``CHUNK`` lines at a time (endless if ``count`` is None): one JSON
    record per line, with about 1% malformed lines."""
    rng = random.Random(seed)
    ids = itertools.count() if count is None else iter(range(count))
    while chunk := list(itertools.islice(ids, CHUNK)):
        lines = []
        for i in chunk:
            if rng.random() < 0.01:
                lines.append(b'{"id": broken\n')
            else:
                rec = {"id": i, "sensor": f"s{rng.randrange(16)}", "value": round(rng.gauss(20, 5), 3)}
                lines.append(json.dumps(rec).encode() + b"\n")
        yield lines


def parse(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def is_record(rec: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return rec is not None and isinstance(rec.get("sensor"), str) and isinstance(rec.get("id"), int)


async def enrich(rec: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()  # stands for a lookup in a remote service
    return {**rec, "site": SITES.get(rec["sensor"], "unknown")}


@asynccontextmanager
async def sqlite_writer(path: Path) -> AsyncIterator[sqlite3.Connection]:
    """One connection, owned by one worker, used from worker threads one call at a time."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
        conn.commit()
        return conn

    conn = await trio.to_thread.run_sync(connect)
    try:
        yield conn
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(conn.close)


async def write_batch(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> int:
    def write() -> int:
        with conn:  # one transaction per batch; idempotent on the record id
            conn.executemany(
                "INSERT OR REPLACE INTO readings (id, sensor, site, value) VALUES (?, ?, ?, ?)",
                [(r["id"], r["sensor"], r["site"], r["value"]) for r in rows],
            )
        return len(rows)

    return await trio.to_thread.run_sync(write)


async def run_demo(records: int | None, db: Path | None, seed: int = 1,
                   write_delay: float = 0.0) -> RunState:
    """Run the demo on ``records`` lines (endless if None) until its input ends or a signal
    drains or aborts it; print the plan, then the final statistics. Returns the run's final
    state: ``COMPLETED`` (input ended, or drained), ``CANCELLED`` (aborted)."""
    chunks = make_chunks(records, seed)
    stopped_early = False
    with tempfile.TemporaryDirectory() as tmp:
        path = db if db is not None else Path(tmp) / "demo.sqlite3"

        async def reader(emit: Emit[bytes], *, task_status: trio.TaskStatus[None]) -> None:
            nonlocal stopped_early
            task_status.started()  # a socket reader would report once it is listening
            print("running: Ctrl-C (or SIGTERM) drains and prints the statistics, "
                  "a second one aborts", flush=True)
            read = 0
            for chunk in chunks:  # one "receive_some" carries many records
                if emit.draining:  # a push source finishes on its own: no new input, return
                    stopped_early = True
                    print(f"draining: the reader stopped after {read:,} lines; writing what it "
                          "handed over (Ctrl-C again aborts)", flush=True)
                    return
                await emit.many(chunk)
                read += len(chunk)

        async def store(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> int:
            await trio.sleep(write_delay)  # a slow database (--write-delay); an abort cancels here
            return await write_batch(conn, rows)

        pipeline = (
            tf.source(reader, name="reader")
            | tf.map(parse, name="parse")
            | tf.filter(is_record, name="valid")
            | tf.map(enrich, concurrency=8, name="enrich")
            | tf.batch(1000, timeout=0.25, name="batch")
            | tf.persistent(store, resource=lambda: sqlite_writer(path), workers=1, buffer=4,
                            name="sqlite")
            | tf.reduce(lambda total, n: total + n, 0, name="count")
        )
        print(pipeline.plan(), flush=True)
        started = time.perf_counter()
        handle: RunHandle[int] = await run_until_signal(pipeline)
        elapsed = time.perf_counter() - started
        stats = handle.statistics()
        lines_in = stats.stage("reader").items_out
        conn = sqlite3.connect(path)
        try:
            (stored,) = conn.execute("SELECT COUNT(*) FROM readings").fetchone()
            by_site = conn.execute(
                "SELECT site, COUNT(*), ROUND(AVG(value), 2) FROM readings GROUP BY site ORDER BY site"
            ).fetchall()
        finally:
            conn.close()
        how = {RunState.COMPLETED: " (drained: the reader stopped early)" if stopped_early else "",
               RunState.CANCELLED: " (aborted: what was not yet committed is not stored)"}
        print(f"\nstate: {stats.state.value}{how.get(stats.state, '')}")
        written = handle.result() if stats.state is RunState.COMPLETED else None
        rows = "?" if written is None else f"{written:,}"
        print(f"{lines_in:,} lines in, {rows} rows written, {stored:,} rows in {path.name}, "
              f"{lines_in / elapsed:,.0f} lines/s")
        for site, n, avg in by_site:
            print(f"  {site:<6} {n:>6} readings, mean {avg}")
        print("\nstage statistics:")
        for s in stats.stages:
            print(f"  {s.name:<8} {s.lifecycle.value:<10} in {s.items_in:>6}  out {s.items_out:>6}"
                  f"  errors {s.errors}")
        for e in stats.edges:
            print(f"  edge {e.name:<22} capacity {e.capacity:>4}  peak {e.peak:>4}", flush=True)
        if written is not None and stored != written:
            raise SystemExit(f"demo check failed: {written} written but {stored} stored")
        return stats.state
