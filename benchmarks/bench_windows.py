"""Workload "windows": keyed tumbling windows by event time, out of order (issue 13).

1M events ``(timestamp_ms, key, value)`` over 1,000 keys, about 1,000 events a second of
event time, each up to ``JITTER_MS`` older than the newest before it (out of order within
the bound, so none is late), into 10-second tumbling windows: the sum of the values per key
per window. trioflow (``from_iterable | window | sink``) against a plain-Python dict loop
doing the same computation in one function: a watermark at ``newest - max_delay``, windows
fired in order when it passes their end, each result handed to the same consumer.

The events are built once, before the timed runs. The measurement pass runs each variant
once under ``tracemalloc`` and reports its peak memory above what was allocated before it
started (the events themselves not included).
"""

from __future__ import annotations

import math
import random
import tracemalloc
from operator import itemgetter
from typing import Any

import trio
from harness import Limit, Target, Variant, Workload

import trioflow as tf

KEYS = 1000
SIZE_MS = 10_000
JITTER_MS = 2_000
MAX_DELAY_MS = JITTER_MS

_events: dict[int, list[tuple[int, int, int]]] = {}


def events(n: int) -> list[tuple[int, int, int]]:
    """``n`` events, built once per ``n``: one a millisecond on average, each at most
    ``JITTER_MS`` older than the newest one before it."""
    if n not in _events:
        rng = random.Random(13)
        out = []
        for i in range(n):
            base = i  # ~1,000 events per second of event time
            out.append((base - rng.randrange(JITTER_MS + 1) if i > JITTER_MS else base,
                        rng.randrange(KEYS), rng.randrange(10)))
        _events[n] = out
    return _events[n]


class Consumer:
    """What both variants hand each window's result to: counts results and sums them."""

    def __init__(self) -> None:
        self.results = 0
        self.total = 0
        self.late = 0

    def __call__(self, r: Any) -> None:
        if isinstance(r, tf.Late):
            self.late += 1
            return
        self.results += 1
        self.total += r.result

    def result(self) -> tuple[int, int, int]:
        return self.results, self.total, self.late


def _add(acc: int, e: tuple[int, int, int]) -> int:
    return acc + e[2]


async def trioflow_windows(n: int) -> tuple[int, int, int]:
    consumer = Consumer()
    await (
        tf.from_iterable(events(n))
        | tf.window(tf.Tumbling(SIZE_MS), tf.Fold(0, _add), key=itemgetter(1),
                    time=tf.EventTime(itemgetter(0), max_delay=MAX_DELAY_MS))
        | tf.sink(consumer)
    ).run()
    return consumer.result()


def plain_loop(n: int) -> tuple[int, int, int]:
    """The same computation as a plain dict loop: the watermark follows each new newest
    timestamp; windows whose end it passed fire in order of start, keys in arrival order."""
    consumer = Consumer()
    windows: dict[int, dict[int, int]] = {}
    newest = -math.inf
    watermark = -math.inf
    next_end = math.inf
    late = 0

    def fire(upto: float) -> float:
        for start in sorted(s for s in windows if s + SIZE_MS <= upto):
            end = start + SIZE_MS
            for key, total in windows.pop(start).items():
                consumer(tf.WindowResult(key, start, end, total))
        return min(windows, default=math.inf) + SIZE_MS

    for ts, key, value in events(n):
        start = ts - ts % SIZE_MS
        if start + SIZE_MS <= watermark:
            late += 1
            continue
        d = windows.get(start)
        if d is None:
            d = windows[start] = {}
            next_end = min(next_end, start + SIZE_MS)
        d[key] = d.get(key, 0) + value
        if ts > newest:
            newest = ts
            watermark = newest - MAX_DELAY_MS
            if watermark >= next_end:
                next_end = fire(watermark)
    fire(math.inf)
    consumer.late = late
    return consumer.result()


def _expected(n: int) -> tuple[int, int, int]:
    evs = events(n)
    windows = {(ts - ts % SIZE_MS, key) for ts, key, _ in evs}
    return len(windows), sum(v for _, _, v in evs), 0


def _peak_mb(fn: Any, n: int) -> float:
    events(n)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        if fn is trioflow_windows:
            trio.run(fn, n)
        else:
            fn(n)
        return (tracemalloc.get_traced_memory()[1] - base) / 1e6
    finally:
        tracemalloc.stop()


def workload(n: int, reps: int) -> Workload:
    def measure() -> dict[str, float]:
        return {"trioflow_peak_mb": _peak_mb(trioflow_windows, n),
                "plain_peak_mb": _peak_mb(plain_loop, n)}

    return Workload(
        name="windows",
        title=f"{n:,} events -> keyed tumbling windows (event time, out of order) over "
              f"{KEYS:,} keys -> sum",
        baseline="plain_loop",
        expected=_expected(n),
        reps=reps,
        variants=[
            Variant("plain_loop", plain_loop,
                    "plain-Python dict loop, watermark per item, same firing order", n),
            Variant("trioflow", trioflow_windows,
                    "from_iterable | window(Tumbling, Fold, key=, EventTime(max_delay=)) | sink", n),
        ],
        targets=[
            Target("trioflow time / plain loop time", "trioflow", "plain_loop", limit=3.0,
                   at_most=True),
        ],
        notes=[f"{SIZE_MS // 1000} s windows, items up to {JITTER_MS} ms out of order, "
               f"max_delay={MAX_DELAY_MS} ms (none late); peak memory by tracemalloc in an "
               "untimed pass, above the events list"],
        measure=measure,
        limits=[
            Limit("trioflow peak memory (MB)", "trioflow_peak_mb", 64.0, at_most=True,
                  fmt="{:.1f}"),
            Limit("plain loop peak memory (MB, reported)", "plain_peak_mb", math.inf,
                  at_most=True, fmt="{:.1f}"),
        ],
    )
