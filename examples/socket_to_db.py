"""The socket-to-database pipeline: clients send JSON readings over TCP, each line is
answered once its record is committed (or once it was rejected and dead-lettered).

    python examples/socket_to_db.py --listen 127.0.0.1:0 --db readings.db [--max-line BYTES]
    python examples/socket_to_db.py --listen 127.0.0.1:9000 --db postgresql://user@host/db

Once the database is ready and the socket is bound, the first line on stdout is
``listening on HOST:PORT``. Each line a client sends is a JSON object
``{"id": <int>, "sensor": <str>, "value": <number>}``; the server answers on the same
connection exactly one line per line received: ``ok <id>`` once the record is committed
in ``readings`` (an upsert on ``id``, so a client that sends a record again after a lost
reply never duplicates a row), or ``err <n> <reason>`` (``n``: the line's number on that
connection, from 1) once it was rejected and handed to the ``dead_letters`` table. A line
longer than ``--max-line`` bytes is rejected; the connection goes on after its newline.

SIGINT or SIGTERM drains: stop accepting, commit and answer what was read, flush every
reply, close the connections gracefully, exit 0. A second signal aborts (exit 130).

``--demo RECORDS`` (what ``python3 dev.py demo`` runs) also starts a load generator in the
same process: tens of connections send RECORDS readings, a few percent of them malformed,
and read their replies; the progress is shown as it goes (in a terminal, with the ``rich``
extra, as trioflow's live dashboard: every stage and edge, the slowest marked; else as
plain lines), then the run is drained and a summary (records/s, committed, rejected) and
a query of the table are printed.

The guarantee: a record answered ``ok`` is in the database, even after SIGKILL (a reply is
written only after the batch that holds the record committed; see
docs/socket-to-database.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from typing import Any

import trio

import trioflow as tf
import trioflow.io as tfio

READINGS = {"id": "INTEGER", "sensor": "TEXT NOT NULL", "value": "REAL NOT NULL"}
LETTERS = {"connection": "TEXT", "line": "INTEGER", "error": "TEXT", "raw": "TEXT"}
Reading = tuple[int, str, float]


def json_object(raw: bytes) -> dict[str, Any]:
    """A line's JSON object; a ``ValueError`` with a one-line reason if it is not one."""
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def parse(raw: bytes) -> Reading:
    """A line to a row; a ``ValueError`` with a one-line reason rejects it."""
    obj = json_object(raw)
    rid, sensor, value = obj.get("id"), obj.get("sensor"), obj.get("value")
    if type(rid) is not int:
        raise ValueError("id must be an integer")
    if not isinstance(sensor, str):
        raise ValueError("sensor must be a string")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("value must be a finite number")
    return (rid, sensor, float(value))


def letter(entry: tf.DeadLetterEntry) -> tuple[str, int, str, str]:
    """A dead letter's row: the connection, the line's number, why, and its first KiB."""
    rejected: tfio.Rejected = entry.item
    return (str(rejected.connection), rejected.line, rejected.reason,
            rejected.raw[:1024].decode("utf-8", "replace"))


def ok(record: tfio.Received[Reading]) -> str:
    return f"ok {record.value[0]}"


def open_dead_letters(db: str) -> Any:
    if db.startswith(("postgresql://", "postgres://")):
        return tfio.open_postgres_dead_letters(db, columns=LETTERS, row=letter)
    return tfio.open_sqlite_dead_letters(db, columns=LETTERS, row=letter)


def writer(db: str) -> tf.Stage[list[Reading], list[Reading]]:
    if db.startswith(("postgresql://", "postgres://")):
        return tfio.write_postgres(db, "readings", columns=READINGS, key="id", create=True)
    return tfio.write_sqlite(db, "readings", columns=READINGS, key="id", create=True)


async def serve(host: str, port: int, db: str, max_line: int, demo: int = 0) -> tf.RunState:
    servers: list[tfio.TcpServer] = []

    def listening(server: tfio.TcpServer) -> None:
        # the writer's connections are built before the source starts: the database is
        # ready once the socket is bound
        servers.append(server)
        print(f"listening on {host}:{server.port}", flush=True)

    async with open_dead_letters(db) as letters:
        flow = (
            tfio.tcp_source(port, host=host, framing=tfio.Lines(max_frame=max_line), decode=parse,
                            rejects=tf.DeadLetter(letters), replies=tfio.Replies(ok=ok),
                            on_listening=listening, name="socket")
            | tf.batch(1000, timeout=0.05)
            | writer(db)
        )
        if not demo:
            handle = await tf.run_until_signal(flow)
            return handle.state
        tally = Tally()
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(tf.run_until_signal, flow)
            live = sys.stdout.isatty() and dashboard_available()
            if live:  # a terminal: the live table of every stage; else plain progress lines
                from trioflow.display import dashboard

                nursery.start_soon(functools.partial(dashboard, handle, caption=tally.line))
            await load(host, servers[0].port, demo, handle, tally, lines=not live)
    report(db, tally)
    return handle.state


# -- the demo's load generator ----------------------------------------------------------------

CONNECTIONS = 24
BAD_LINES = [b'{"id": 1, "sensor": ', b"[1, 2]", b'{"id": "x", "sensor": "s", "value": 1}', b"\xff\xfe"]


class Tally:
    def __init__(self) -> None:
        self.sent = self.ok = self.err = 0
        self.started = trio.current_time()
        self.elapsed = 0.0

    def line(self) -> str:
        rate = self.ok / max(trio.current_time() - self.started, 1e-9)
        return (f"sent {self.sent:>8,}  committed {self.ok:>8,}  rejected {self.err:>6,}"
                f"  ({rate:,.0f} records/s)")


def dashboard_available() -> bool:
    """Whether trioflow's live dashboard can be drawn (the ``rich`` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("rich") is not None


async def load(host: str, port: int, records: int, handle: tf.RunHandle[Any], tally: Tally,
               *, lines: bool = True) -> Tally:
    """``records`` lines over ``CONNECTIONS`` connections (about 3% malformed), each client
    reading its replies while it sends; with ``lines``, progress twice a second (else the
    dashboard shows it); then a drain."""
    import random

    rng = random.Random(7)

    async def client(c: int) -> None:
        ids = range(c, records, CONNECTIONS)
        lines = [rng.choice(BAD_LINES) if rng.random() < 0.03 else
                 json.dumps({"id": i, "sensor": f"s{i % 16}", "value": round(rng.gauss(20, 5), 3)}).encode()
                 for i in ids]
        stream = await trio.open_tcp_stream(host, port)
        async with stream, trio.open_nursery() as nursery:
            async def send() -> None:
                for k in range(0, len(lines), 200):
                    part = lines[k:k + 200]
                    await stream.send_all(b"".join(line + b"\n" for line in part))
                    tally.sent += len(part)

            nursery.start_soon(send)
            buf, got = b"", 0
            while got < len(lines):
                data = await stream.receive_some(65536)
                if not data:
                    break
                *done, buf = (buf + data).split(b"\n")
                for reply in done:
                    got += 1
                    if reply.startswith(b"ok "):
                        tally.ok += 1
                    else:
                        tally.err += 1

    async def progress(done: trio.Event) -> None:
        tty = sys.stdout.isatty()
        while not done.is_set():
            with trio.move_on_after(0.5):
                await done.wait()
            line = tally.line()
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        if tty:
            print(flush=True)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        if lines:
            nursery.start_soon(progress, done)
        async with trio.open_nursery() as clients:
            for c in range(CONNECTIONS):
                clients.start_soon(client, c)
        done.set()
    tally.elapsed = trio.current_time() - tally.started
    await handle.drain(timeout=30)
    return tally


def report(db: str, tally: Tally) -> None:
    elapsed = tally.elapsed or 1e-9
    print(f"done: {tally.ok:,} records committed, {tally.err:,} rejected, "
          f"{(tally.ok + tally.err) / elapsed:,.0f} records/s over {CONNECTIONS} connections")
    if db.startswith(("postgresql://", "postgres://")):
        return
    import sqlite3

    with sqlite3.connect(db) as conn:
        query = ("SELECT sensor, count(*), round(avg(value), 2) FROM readings "
                 "GROUP BY sensor ORDER BY sensor LIMIT 4")
        print(query)
        for row in conn.execute(query):
            print("  ", row)
        (letters,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        print(f"dead_letters: {letters:,} rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--db", required=True, help="a SQLite file path or a postgresql:// URL")
    parser.add_argument("--max-line", type=int, default=65536, help="longest line accepted, in bytes")
    parser.add_argument("--demo", type=int, default=0, metavar="RECORDS",
                        help="also run a load generator of RECORDS readings, then drain and summarise")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    if args.max_line < 1:
        parser.error(f"--max-line must be at least 1, got {args.max_line}")
    state = trio.run(serve, host, int(port), args.db, args.max_line, args.demo)
    return 0 if state is tf.RunState.COMPLETED else 130


if __name__ == "__main__":
    sys.exit(main())
