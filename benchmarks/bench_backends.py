"""Workloads "backends" and "backend_overhead": where a ``map`` runs its calls.

``backends``: the speed-ups the backends exist for.

* CPU-bound: a pure-Python function of about 10 ms (calibrated on this machine when the
  module is imported) on ``n`` items, inline (one core, fused) against
  ``Processes(chunk=4)`` (one worker process per core). The ideal speed-up on ``N`` cores
  is ``N``; chunks cut the per-call cost (about 150 µs) down to a few percent, and the last
  round of calls can leave cores idle, so expect ``N * T / (T + c/k + tail)`` where ``T``
  is the item's time, ``c`` the call cost and ``k`` the chunk (see ``docs/backends.md``).
* The same CPU-bound run on ``Dask(chunk=20)`` (its own ``LocalCluster`` of 2 workers,
  started and closed inside each timed run): reported, no target.
* Blocking: ``time.sleep(0.01)`` on ``n`` items, inline (one after another, blocking the
  Trio thread) against ``Threads(limit=16)`` (16 calls at once): ideally 16x.

``backend_overhead``: per-item cost of each backend for a trivial function (``x + 1``),
with chunking on (``chunk=256``) and off (``chunk=1``), against the fused inline map. With
a trivial function, the time per item *is* the overhead: ``1 / items/s``.

Process workers are trio-parallel's, cached across runs: the warm-up round starts them, so
the timed rounds measure calls, not process start-up. Functions are module-level so the
workers can import them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from harness import Target, Variant, Workload

import trioflow as tf

CPU_SECONDS = 0.01
SLEEP = 0.01
THREADS = 16
PROCESS_CHUNK = 4
#: a Dask round trip is about 11 ms: 20 items of 10 ms per task
DASK_CHUNK = 20
#: speed-up inline / backend required
CPU_TARGET = 1.7
SLEEP_TARGET = 12.0


def _spin(k: int) -> int:
    acc = 0
    for i in range(k):
        acc = (acc + i * i) % 1_000_003
    return acc


def _calibrate() -> int:
    k = 20_000
    while True:
        start = time.perf_counter()
        _spin(k)
        took = time.perf_counter() - start
        if took > 0.005:
            return max(1, int(k * CPU_SECONDS / took))
        k *= 2


#: loop length for about 10 ms of CPU (items carry it, so workers need not calibrate)
SPIN = _calibrate()
SPIN_RESULT = _spin(SPIN)


def burn(item: tuple[int, int]) -> tuple[int, int]:
    """About 10 ms of pure-Python CPU work; returns ``(x, checksum)``."""
    x, k = item
    return x, _spin(k)


def nap(x: int) -> int:
    """A blocking call: ``time.sleep(0.01)``."""
    time.sleep(SLEEP)
    return x


def inc(x: int) -> int:
    return x + 1


# -- variants (each returns whether its results are right) ---------------------------------


def cpu(backend: tf.Backend | None) -> Callable[[int], Awaitable[bool]]:
    async def run(n: int) -> bool:
        stage = tf.map(burn) if backend is None else tf.map(burn, backend=backend)
        out = await (tf.from_iterable([(x, SPIN) for x in range(n)]) | stage | tf.to_list()).run()
        return out == [(x, SPIN_RESULT) for x in range(n)]

    return run


def blocking(backend: tf.Backend | None) -> Callable[[int], Awaitable[bool]]:
    async def run(n: int) -> bool:
        stage = tf.map(nap) if backend is None else tf.map(nap, backend=backend)
        return await (tf.from_iterable(range(n)) | stage | tf.to_list()).run() == list(range(n))

    return run


def trivial(backend: tf.Backend | None) -> Callable[[int], Awaitable[bool]]:
    async def run(n: int) -> bool:
        stage = tf.map(inc) if backend is None else tf.map(inc, backend=backend)
        out = await (tf.from_iterable(range(n)) | stage | tf.to_list()).run()
        return out == list(range(1, n + 1))

    return run


def workload(n: int, reps: int) -> Workload:
    return Workload(
        name="backends",
        title=f"{n} items: a ~{CPU_SECONDS * 1e3:.0f} ms CPU-bound function, and a blocking "
              f"time.sleep({SLEEP})",
        baseline="cpu_inline",
        expected=True,
        reps=reps,
        variants=[
            Variant("cpu_inline", cpu(None), "map(burn): fused, on the Trio thread", n),
            Variant("cpu_processes", cpu(tf.Processes(chunk=PROCESS_CHUNK)),
                    f"map(burn, backend=Processes(chunk={PROCESS_CHUNK})): a worker per core", n),
            # report only (no target): each run starts and closes its own LocalCluster
            Variant("cpu_dask", cpu(tf.Dask(chunk=DASK_CHUNK, n_workers=2)),
                    f"map(burn, backend=Dask(chunk={DASK_CHUNK})): own LocalCluster of 2 "
                    "workers, started in the run", n),
            Variant("sleep_inline", blocking(None),
                    "map(nap): fused, each sleep blocks the run in turn", n),
            Variant("sleep_threads", blocking(tf.Threads(limit=THREADS)),
                    f"map(nap, backend=Threads(limit={THREADS})): {THREADS} calls at once", n),
        ],
        targets=[
            Target("CPU-bound: inline time / Processes time (speed-up)", "cpu_inline",
                   "cpu_processes", limit=CPU_TARGET, at_most=False),
            Target(f"blocking: inline time / Threads({THREADS}) time (speed-up)", "sleep_inline",
                   "sleep_threads", limit=SLEEP_TARGET, at_most=False),
        ],
        notes=[f"CPU function calibrated to {SPIN:,} loop steps (about {CPU_SECONDS * 1e3:.0f} ms "
               "here); the process speed-up is bounded by the number of cores",
               f"blocking: ideal {THREADS}x; threads are started by trio on first use",
               "cpu_dask: reported, no target; its time includes starting and closing a "
               "LocalCluster (about 1-2 s), so it is below the process speed-up here"],
    )


def overhead_workload(n: int, reps: int) -> Workload:
    variants = [Variant("inline", trivial(None), "map(inc), fused: the floor", n)]
    for chunk in (256, 1):
        variants.append(Variant(f"threads_chunk{chunk}", trivial(tf.Threads(chunk=chunk)),
                                f"map(inc, backend=Threads(chunk={chunk}))", n))
    for chunk in (256, 1):
        # chunk=1 pays a process round trip per item: fewer items keep the run short
        items = n if chunk > 1 else max(1, n // 10)
        variants.append(Variant(f"processes_chunk{chunk}", trivial(tf.Processes(chunk=chunk)),
                                f"map(inc, backend=Processes(chunk={chunk}))", items))
    return Workload(
        name="backend_overhead",
        title=f"{n:,} items (processes_chunk1: {max(1, n // 10):,}) through map(x + 1) on each backend",
        baseline="inline",
        expected=True,
        reps=reps,
        variants=variants,
        notes=["the function is trivial, so 1 / items/s is the backend's cost per item",
               "time vs inline compares medians of runs of different sizes for processes_chunk1"],
    )
