"""Workloads "e2e_sqlite", "e2e_postgres" and "e2e_memory": the socket-to-database pipeline
end to end (issue 10), against the same server written by hand with Trio alone.

The job is the one ``examples/socket_to_db.py`` does: clients send NDJSON readings
``{"id": i, "sensor": "s3", "value": 1.5}`` over loopback TCP; the server parses each line
with the example's ``parse`` (``json.loads`` and validation into an ``(id, sensor, value)``
tuple), batches the rows (1000, or whatever arrived within 50 ms), upserts each batch on
``id`` in one transaction and, after the commit, answers ``ok <id>`` on the connection
that sent the line. ``C`` clients (10; 1,000 in ``e2e_memory``) send at once, each on its
own connection in 64 KiB writes, and read their replies while they send; a client closes
once it has all its replies. A run ends when every client has closed; its result is the
table's ``(count(*), sum(id))`` (and a wrong result if a client missed a reply).

* ``trioflow``: ``tcp_source(0, decode=parse, replies=Replies(ok=ok)) | batch(1000,
  timeout=0.05) | write_sqlite(path, "readings", columns=..., key="id")`` (or
  ``write_postgres``): the example's pipeline.
* ``plain``: hand-written Trio: ``trio.serve_listeners``; per connection, read chunks,
  split lines keeping the tail, parse, hand the chunk's rows to one writer task through a
  bounded memory channel (capacity 16 chunks); the writer cuts batches of at most 1000
  rows (or what arrived within 50 ms), writes each through ``trio.to_thread.run_sync`` in
  one transaction, then queues ``ok <id>`` lines to each connection's reply task, which
  writes them with ``send_all``. SQLite: ``BEGIN IMMEDIATE``, ``executemany`` of
  ``INSERT ... ON CONFLICT (id) DO UPDATE``, ``COMMIT`` (bench_db.PlainSqlite).
  PostgreSQL: psycopg ``COPY`` into a temporary staging table, then
  ``INSERT ... SELECT DISTINCT ON (id) ... ON CONFLICT (id) DO UPDATE`` and commit: what
  ``write_postgres(..., key=...)`` does, without its commit-log token.
* ``*_noack``: the same without replies: clients send and close; the run ends once every
  row is committed (trioflow: a ``sink`` after the writer counts the committed rows).

``e2e_memory`` times the pipeline with replies at 1,000 connections, and its measurement
pass (untimed) streams 10 x N records (1,000,000 in the full run) through the trioflow
pipeline without replies, sampling the process's resident memory (``/proc/self/statm``)
as the committed count passes 10%, 50% and 100%; then it holds 1,000 connections open at
once (every client connects, then all send together) with N records and replies, and
records the memory per connection.

The clients run in the same process and ``trio.run`` as the server, for every variant
(same cost in each); loopback only, two cores shared with the database.
"""

from __future__ import annotations

import collections
import math
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import bench_db
import trio
from bench_tcp import HOST, WRITE, payloads
from harness import Limit, Target, Variant, Workload

import trioflow as tf
import trioflow.io as tfio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from socket_to_db import ok, parse  # the example's own parser and reply

BATCH = 1000
TIMEOUT = 0.05
COLUMNS = list(bench_db.COLUMNS)
Row = tuple[int, str, float]


# -- the clients (the same for every variant) ----------------------------------------------


async def exchange(stream: trio.SocketStream, payload: bytes) -> int:
    """Send ``payload`` in 64 KiB writes while reading the replies, until there is one per
    line; returns the ``ok`` replies."""
    async def send() -> None:
        for i in range(0, len(payload), WRITE):
            await stream.send_all(payload[i:i + WRITE])

    lines = payload.count(b"\n")
    got = seen = 0
    tail = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while seen < lines:
            data = await stream.receive_some(65536)
            if not data:
                break
            *done, tail = (tail + data).split(b"\n")
            seen += len(done)
            got += sum(1 for r in done if r.startswith(b"ok "))
    return got


async def clients(port: int, data: list[bytes], replies: bool) -> int:
    """Every connection sends its payload in 64 KiB writes; with ``replies`` it reads them
    while it sends and closes once it has one per line. Returns the ``ok`` replies."""
    got = 0

    async def client(payload: bytes) -> None:
        nonlocal got
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            if not replies:
                for i in range(0, len(payload), WRITE):
                    await stream.send_all(payload[i:i + WRITE])
                return

            replied = await exchange(stream, payload)
            got += replied  # not `got += await ...`: that reads got before the await

    async with trio.open_nursery() as nursery:
        for payload in data:
            nursery.start_soon(client, payload)
    return got


# -- the trioflow way ----------------------------------------------------------------------


async def trioflow_server(n: int, data: list[bytes], writer: tf.Stage[list[Row], list[Row]],
                          replies: bool) -> int:
    """The example's pipeline; returns the clients' ``ok`` count (n without replies)."""
    servers: list[tfio.TcpServer] = []
    committed = 0
    all_in = trio.Event()

    def count(batch: list[Row]) -> None:
        nonlocal committed
        committed += len(batch)
        if committed >= n:
            all_in.set()

    flow = (tfio.tcp_source(0, host=HOST, decode=parse, max_connections=2048,
                            replies=tfio.Replies(ok=ok) if replies else None,
                            on_listening=servers.append)
            | tf.batch(BATCH, timeout=TIMEOUT) | writer)
    async with trio.open_nursery() as nursery:
        if replies:
            handle = await nursery.start(flow.run)
            got = await clients(servers[0].port, data, replies=True)
        else:
            handle = await nursery.start((flow | tf.sink(count)).run)
            await clients(servers[0].port, data, replies=False)
            await all_in.wait()
            got = n
        handle.cancel()
    return got


# -- reference: the same server by hand ----------------------------------------------------


class _Conn:
    """A connection's reply queue, written by its own task (the writer never waits for a
    client)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.send, self.receive = trio.open_memory_channel[bytes](math.inf)

    async def reply_task(self) -> None:
        async for data in self.receive:
            parts = [data]
            while True:
                try:
                    parts.append(self.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self.stream.send_all(b"".join(parts))


async def plain_server(n: int, data: list[bytes], write: Callable[[list[Row]], None],
                       replies: bool) -> int:
    """Hand-written Trio: a handler per connection, one writer task, a bounded channel."""
    rows_in, rows_out = trio.open_memory_channel[tuple[_Conn | None, list[Row]]](16)
    committed = 0
    all_in = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        conn = _Conn(stream) if replies else None
        async with trio.open_nursery() as nursery:
            if conn is not None:
                nursery.start_soon(conn.reply_task)
            tail, line_no = b"", 0
            async for chunk in stream:
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                rows = []
                for line in lines:
                    line_no += 1
                    try:
                        rows.append(parse(line))
                    except ValueError as exc:
                        if conn is not None:
                            conn.send.send_nowait(f"err {line_no} {exc}\n".encode())
                if rows:
                    await rows_in.send((conn, rows))
            # the client closes once it has every reply: nothing is left to write
            nursery.cancel_scope.cancel()

    async def writer() -> None:
        nonlocal committed
        segments: collections.deque[tuple[_Conn | None, list[Row]]] = collections.deque()
        waiting = 0
        deadline = math.inf
        while True:
            if not waiting:
                segments.append(seg := await rows_out.receive())
                waiting += len(seg[1])
                deadline = trio.current_time() + TIMEOUT
            while waiting < BATCH:
                try:
                    seg = rows_out.receive_nowait()
                except trio.WouldBlock:
                    with trio.move_on_at(deadline) as scope:
                        seg = await rows_out.receive()
                    if scope.cancelled_caught:
                        break
                segments.append(seg)
                waiting += len(seg[1])
            batch: list[Row] = []
            owners = []
            while segments and len(batch) < BATCH:
                conn, rows = segments[0]
                room = BATCH - len(batch)
                if len(rows) <= room:
                    segments.popleft()
                    part = rows
                else:
                    part, segments[0] = rows[:room], (conn, rows[room:])
                batch += part
                owners.append((conn, part))
            waiting -= len(batch)
            deadline = trio.current_time() + TIMEOUT
            await trio.to_thread.run_sync(write, batch)
            for conn, part in owners:
                if conn is not None:
                    conn.send.send_nowait(b"".join(b"ok %d\n" % r[0] for r in part))
            committed += len(batch)
            if committed >= n:
                all_in.set()

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        got = await clients(port, data, replies)
        if not replies:
            await all_in.wait()
            got = n
        nursery.cancel_scope.cancel()
    return got


# -- the databases -----------------------------------------------------------------------------


class PlainPostgres:
    """By hand with psycopg, as ``write_postgres(..., key="id")`` does it: per batch, COPY
    into a temporary staging table, ``INSERT ... SELECT DISTINCT ON (id) ... ON CONFLICT``,
    commit (no commit-log token)."""

    def __init__(self, table: str) -> None:
        import psycopg

        self.conn = psycopg.connect(bench_db.server().url)
        self.conn.execute(f"CREATE TEMP TABLE staging ON COMMIT DELETE ROWS AS SELECT id, sensor, value, "
                          f"0::bigint AS n FROM {table} WITH NO DATA")
        self.conn.commit()
        self.copy = "COPY staging (id, sensor, value, n) FROM STDIN"
        self.merge = (f"INSERT INTO {table} (id, sensor, value) SELECT DISTINCT ON (id) id, sensor, value "
                      f"FROM staging ORDER BY id, n DESC ON CONFLICT (id) DO UPDATE "
                      f"SET sensor = excluded.sensor, value = excluded.value")

    def write(self, batch: list[Row]) -> None:
        with self.conn.cursor() as cur:
            with cur.copy(self.copy) as copy:
                for i, r in enumerate(batch):
                    copy.write_row((*r, i))
            cur.execute(self.merge)
        self.conn.commit()


def _variant(db: str, kind: str, conns: int, replies: bool) -> Callable[[int], Awaitable[Any]]:
    """A variant: ``kind`` "plain" or "trioflow" into ``db`` "sqlite" or "postgres"."""
    cache: dict[int, list[bytes]] = {}

    async def run(n: int) -> Any:
        if n not in cache:  # built once, in the warm-up round
            cache[n] = payloads(n, conns)
        data = cache[n]
        if db == "sqlite":
            path = bench_db._fresh_db()
            if kind == "plain":
                w = bench_db.PlainSqlite(path, upsert=True)
                got = await plain_server(n, data, w.write, replies)
                w.conn.close()
            else:
                writer = tfio.write_sqlite(path, "readings", columns=COLUMNS, key="id")
                got = await trioflow_server(n, data, writer, replies)
            result = bench_db._sqlite_result(path)
        else:
            table = bench_db._fresh_table()
            if kind == "plain":
                p = await trio.to_thread.run_sync(PlainPostgres, table)
                got = await plain_server(n, data, p.write, replies)
                p.conn.close()
            else:
                writer = tfio.write_postgres(bench_db.server().url, table, columns=COLUMNS, key="id")
                got = await trioflow_server(n, data, writer, replies)
            result = bench_db._pg_result(table)
        return result if got == n else (*result, f"{got} ok replies of {n}")

    return run


def _workload(name: str, db: str, n: int, reps: int, conns: int, noack: bool, title: str,
              notes: list[str], **extra: Any) -> Workload:
    """Variants ``plain`` and ``trioflow`` (and ``*_noack``) into ``db``, and their ratios."""
    what = "write_sqlite" if db == "sqlite" else "write_postgres"
    plain_db = "executemany upsert" if db == "sqlite" else "COPY to staging + INSERT ... ON CONFLICT"
    label = f"{'SQLite' if db == 'sqlite' else 'PostgreSQL'}, {conns:,} connections"
    variants, targets = [], []
    for replies in (True, False) if noack else (True,):
        sfx = "" if replies else "_noack"
        ack = "ok replies after commit" if replies else "no replies"
        variants += [
            Variant(f"plain{sfx}", _variant(db, "plain", conns, replies),
                    f"hand-written Trio server, writer task, {plain_db}; {ack}, {conns} connections", n),
            Variant(f"trioflow{sfx}", _variant(db, "trioflow", conns, replies),
                    f"tcp_source | batch(1000, 0.05) | {what}(key='id'); {ack}, {conns} connections", n),
        ]
        targets.append(Target(f"trioflow records/s vs hand-written Trio, {label}, {ack}", f"trioflow{sfx}",
                              f"plain{sfx}", limit=0.8 if replies else None, at_most=False, fmt="{:.0%}",
                              invert=True))
    return Workload(name=name, title=title, baseline="plain", expected=bench_db.expected(n), reps=reps,
                    variants=variants, targets=targets, notes=notes, **extra)


def sqlite_workload(n: int, reps: int) -> Workload:
    return _workload("e2e_sqlite", "sqlite", n, reps, 10, True,
                     f"{n:,} NDJSON readings over TCP (10 connections) -> parse -> batch -> "
                     f"SQLite upsert -> ok",
                     ["clients run in the same process and trio.run as the server (every variant)"])


def postgres_workload(n: int, reps: int) -> Workload:
    bench_db.server()  # started before the timings
    return _workload("e2e_postgres", "postgres", n, reps, 10, True,
                     f"{n:,} NDJSON readings over TCP (10 connections) -> parse -> batch -> "
                     f"PostgreSQL {bench_db._pg_version()} upsert -> ok",
                     ["trioflow's writer also inserts a commit-log token per batch; the hand-written "
                      "one does not"])


# -- memory ------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e6


def lazy_payload(c: int, conns: int, n: int) -> Iterator[bytes]:
    """Connection ``c``'s records, built 1000 at a time (so the clients hold no data set)."""
    ids = range(c, n, conns)
    for k in range(0, len(ids), 1000):
        yield b"".join(b'{"id": %d, "sensor": "s%d", "value": %r}\n' % (i, i % 7, i / 2)
                       for i in ids[k:k + 1000])


async def stream_memory(n: int, conns: int) -> dict[str, float]:
    """``n`` records through the trioflow pipeline without replies; RSS at 10/50/100%."""
    path = bench_db._fresh_db()
    servers: list[tfio.TcpServer] = []
    committed = 0
    marks = {n // 10: "rss_10pct_mb", n // 2: "rss_50pct_mb", n: "rss_100pct_mb"}
    pending = sorted(marks)
    figures: dict[str, float] = {}
    all_in = trio.Event()

    def count(batch: list[Row]) -> None:
        nonlocal committed
        committed += len(batch)
        while pending and committed >= pending[0]:
            mark = marks[pending.pop(0)]
            figures[mark] = rss_mb()
            # records handed on by the source and not committed yet: what the edges hold
            figures[mark.replace("rss", "in_flight").replace("_mb", "")] = \
                servers[0].statistics().records - committed
        if committed >= n:
            all_in.set()

    async def client(c: int, port: int) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            for piece in lazy_payload(c, conns, n):
                await stream.send_all(piece)

    flow = (tfio.tcp_source(0, host=HOST, decode=parse, on_listening=servers.append)
            | tf.batch(BATCH, timeout=TIMEOUT)
            | tfio.write_sqlite(path, "readings", columns=COLUMNS, key="id") | tf.sink(count))
    figures["rss_start_mb"] = rss_mb()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        async with trio.open_nursery() as cl:
            for c in range(conns):
                cl.start_soon(client, c, servers[0].port)
        await all_in.wait()
        figures["stream_records_per_s"] = n / (trio.current_time() - start)
        figures["stream_peak_held"] = servers[0].statistics().peak_held
        handle.cancel()
    count_, _ = bench_db._sqlite_result(path)
    figures["stream_rows"] = count_
    figures["rss_growth_10_to_100pct_mb"] = figures["rss_100pct_mb"] - figures["rss_10pct_mb"]
    figures["rss_growth_mb"] = max(figures[m] for m in marks.values()) - figures["rss_start_mb"]
    return figures


async def held_connections(n: int, conns: int) -> dict[str, float]:
    """``conns`` connections open at once (every client connects, and once the server has
    them all open, all send), ``n`` records with replies; the memory per open connection,
    the peak of the memory while they stream, and the open connections."""
    path = bench_db._fresh_db()
    servers: list[tfio.TcpServer] = []
    figures: dict[str, float] = {"rss_held_peak_mb": 0.0}
    go = trio.Event()
    got = 0

    async def client(c: int, port: int) -> None:
        nonlocal got
        payload = b"".join(lazy_payload(c, conns, n))
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await go.wait()
            replied = await exchange(stream, payload)
            got += replied  # not `got += await ...`: that reads got before the await

    async def watch() -> None:
        with trio.fail_after(60):  # the server's count lags the clients' connects
            while True:
                if servers[0].statistics().open >= conns:
                    break
                await trio.sleep(0.001)
        figures["held_open_peak"] = servers[0].statistics().open
        figures["rss_held_mb"] = rss_mb()
        go.set()
        while True:
            figures["rss_held_peak_mb"] = max(figures["rss_held_peak_mb"], rss_mb())
            await trio.sleep(0.01)

    flow = (tfio.tcp_source(0, host=HOST, decode=parse, max_connections=2048,
                            replies=tfio.Replies(ok=ok), on_listening=servers.append)
            | tf.batch(BATCH, timeout=TIMEOUT)
            | tfio.write_sqlite(path, "readings", columns=COLUMNS, key="id"))
    async with trio.open_nursery() as nursery:
        await nursery.start(flow.run)
        figures["rss_before_connections_mb"] = rss_mb()
        nursery.start_soon(watch)
        async with trio.open_nursery() as cl:
            for c in range(conns):
                cl.start_soon(client, c, servers[0].port)
        figures["rss_after_held_mb"] = rss_mb()
        nursery.cancel_scope.cancel()  # the run and the watcher
    figures["held_ok_replies"] = got
    figures["held_rows"], _ = bench_db._sqlite_result(path)
    # in a fresh process about 15-19 KB per connection, both ends (tracemalloc would slow the
    # run); after the timed rounds the process reuses memory it freed, so this can be ~0
    figures["rss_per_connection_kb"] = (figures["rss_held_mb"] - figures["rss_before_connections_mb"]) \
        * 1000 / conns
    return figures


def memory_workload(n: int, reps: int) -> Workload:
    stream_n = 10 * n
    conns = 1000

    def measure() -> dict[str, float]:
        figures = trio.run(held_connections, n, conns)  # first: a process not yet grown by the stream
        figures.update(trio.run(stream_memory, stream_n, 10))
        figures["stream_records"] = stream_n
        return figures

    return _workload(
        "e2e_memory", "sqlite", n, reps, conns, False,
        f"{n:,} readings over 1,000 connections -> SQLite upsert -> ok; then memory while "
        f"{stream_n:,} stream through",
        ["measurement pass: RSS from /proc/self/statm, clients in the same process "
         "(their payloads built 1000 records at a time)"],
        measure=measure,
        limits=[
            # flat: no more than the hand-written server holds (16 chunks and a batch, a few MB)
            Limit(f"RSS growth while {stream_n:,} records stream through (flat)",
                  "rss_growth_mb", 16.0, at_most=True, fmt="{:.1f} MB"),
            Limit("RSS growth from 10% to 100% of the stream", "rss_growth_10_to_100pct_mb", 16.0,
                  at_most=True, fmt="{:.1f} MB"),
            Limit("connections held open at once", "held_open_peak", conns, at_most=False, fmt="{:.0f}"),
        ],
    )

