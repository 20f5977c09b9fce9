"""Timing harness shared by the workloads: variants, repetitions, medians, targets.

Every variant of a workload does the same work and returns a value that the harness
compares with the workload's expected value (a wrong result is reported, never hidden).

* A *sync* variant is timed as a plain call.
* An *async* variant is timed inside ``trio.run`` (``asyncio.run`` for asyncio peers):
  the clock starts after the loop is up and stops before it shuts down, so only the
  pipeline itself is measured (a real program runs its pipelines inside one long-lived
  ``trio.run``).
* Repetitions are interleaved (rep 1 of every variant, then rep 2 ..., in a rotating
  order), so a slow patch of the machine hits every variant alike; one warm-up round is
  discarded; the figure kept is the median of the repetitions, timed with
  ``time.perf_counter``.
* A workload may also have an untimed measurement pass (``Workload.measure``, run once after
  the timed rounds, e.g. peak memory under ``tracemalloc``) with goals on its figures
  (``Limit``), printed and recorded like the ratio targets.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass
class Variant:
    """One way of doing a workload's job."""

    name: str
    #: called as ``fn(items)``; a plain function, or an async one (run under ``trio.run``)
    fn: Callable[[int], Any]
    description: str
    #: items the variant processes per run (items/s = items / median time)
    items: int
    #: event loop for an async ``fn``: "trio" or "asyncio" (peers built on asyncio)
    loop: str = "trio"


@dataclass
class Target:
    """A goal stated as a ratio between two variants' median times.

    ``ratio = numerator_time / denominator_time``; the goal is met when the ratio is
    ``<= limit`` (``at_most=True``) or ``>= limit`` (``at_most=False``). With
    ``limit=None`` the ratio is only reported (a comparison row, no goal).
    """

    label: str
    numerator: str
    denominator: str
    limit: float | None
    at_most: bool
    #: how to print the ratio, e.g. "{:.2f}x" or "{:.1%}"
    fmt: str = "{:.2f}x"
    #: transforms the raw time ratio before comparing and printing (e.g. 1/x for throughput)
    invert: bool = False

    def evaluate(self, medians: dict[str, float]) -> dict[str, Any]:
        ratio = medians[self.numerator] / medians[self.denominator]
        if self.invert:
            ratio = 1.0 / ratio
        if self.limit is None:
            return {"label": self.label, "value": ratio, "limit": None, "comparison": None,
                    "met": None, "text": self.fmt.format(ratio)}
        met = ratio <= self.limit if self.at_most else ratio >= self.limit
        op = "<=" if self.at_most else ">="
        return {
            "label": self.label,
            "value": ratio,
            "limit": self.limit,
            "comparison": op,
            "met": met,
            "text": f"{self.fmt.format(ratio)} (target {op} {self.fmt.format(self.limit)})",
        }


@dataclass
class Limit:
    """A goal on a figure measured apart from the timed runs (by ``Workload.measure``, e.g.
    peak memory): the goal is met when ``measured[key]`` is ``<= limit`` (``at_most=True``)
    or ``>= limit``."""

    label: str
    key: str
    limit: float
    at_most: bool
    #: how to print the value and the limit, e.g. "{:.2f} MB"
    fmt: str = "{:.2f}"

    def evaluate(self, measured: dict[str, float]) -> dict[str, Any]:
        value = measured[self.key]
        met = value <= self.limit if self.at_most else value >= self.limit
        op = "<=" if self.at_most else ">="
        return {
            "label": self.label,
            "value": value,
            "limit": self.limit,
            "comparison": op,
            "met": met,
            "text": f"{self.fmt.format(value)} (target {op} {self.fmt.format(self.limit)})",
        }


@dataclass
class Workload:
    name: str
    title: str
    variants: list[Variant]
    expected: Any
    targets: list[Target] = field(default_factory=list)
    #: the variant the ratio column is relative to
    baseline: str = ""
    reps: int = 5
    notes: list[str] = field(default_factory=list)
    #: an extra, untimed measurement pass run once after the timed rounds (e.g. peak
    #: memory under ``tracemalloc``, which would distort the timings): returns named figures
    measure: Callable[[], dict[str, float]] | None = None
    #: goals on the figures ``measure`` returns
    limits: list[Limit] = field(default_factory=list)


async def _timed(fn: Callable[[int], Awaitable[Any]], items: int) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await fn(items)
    return time.perf_counter() - start, result


def time_once(v: Variant) -> tuple[float, Any]:
    """Run a variant once and return ``(seconds, result)``."""
    gc.collect()
    if inspect.iscoroutinefunction(v.fn):
        if v.loop == "asyncio":
            return asyncio.run(_timed(v.fn, v.items))
        return trio.run(_timed, v.fn, v.items)
    start = time.perf_counter()
    result = v.fn(v.items)
    return time.perf_counter() - start, result


def run_workload(w: Workload, *, progress: Callable[[str], None]) -> dict[str, Any]:
    """Measure every variant of ``w``; return a JSON-ready record."""
    times: dict[str, list[float]] = {v.name: [] for v in w.variants}
    correct: dict[str, bool] = {v.name: True for v in w.variants}
    for rep in range(w.reps + 1):  # round 0 is the warm-up
        # rotate the order each round so no variant always runs first (or right after
        # the slowest one)
        shift = rep % len(w.variants)
        for v in w.variants[shift:] + w.variants[:shift]:
            seconds, result = time_once(v)
            if result != w.expected:
                correct[v.name] = False
            if rep:
                times[v.name].append(seconds)
        progress(f"{w.name}: round {rep}/{w.reps}")
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    measured: dict[str, float] = {}
    if w.measure is not None:
        gc.collect()
        measured = w.measure()
        progress(f"{w.name}: measurement pass")
    base = medians[w.baseline]
    variants = {}
    for v in w.variants:
        med = medians[v.name]
        variants[v.name] = {
            "description": v.description,
            "items": v.items,
            "median_s": med,
            "items_per_s": v.items / med,
            "time_vs_baseline": med / base,
            "times_s": times[v.name],
            "correct": correct[v.name],
        }
    return {
        "title": w.title,
        "baseline": w.baseline,
        "reps": w.reps,
        "variants": variants,
        "measured": measured,
        "targets": [t.evaluate(medians) for t in w.targets] + [lim.evaluate(measured) for lim in w.limits],
        "notes": w.notes,
    }


def format_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k/s"
    return f"{per_s:.0f}/s"


def format_summary(results: dict[str, dict[str, Any]]) -> str:
    """Every workload's targets and ratios in one list, so a run ends with the verdicts."""
    lines = ["== summary: targets and ratios"]
    for name, record in results.items():
        for t in record["targets"]:
            mark = "" if t["met"] is None else ("  -> MET" if t["met"] else "  -> MISSED")
            lines.append(f"  {name}: {t['label']}: {t['text']}{mark}")
    missed = sum(1 for r in results.values() for t in r["targets"] if t["met"] is False)
    goals = sum(1 for r in results.values() for t in r["targets"] if t["met"] is not None)
    lines.append(f"  {goals - missed} of {goals} targets met" + (f", {missed} MISSED" if missed else ""))
    return "\n".join(lines)


def format_table(name: str, record: dict[str, Any]) -> str:
    """A plain-text table of one workload's results and targets."""
    lines = [f"== {name}: {record['title']}  (median of {record['reps']})"]
    width = max(len(v) for v in record["variants"])
    lines.append(f"  {'variant':<{width}}  {'median':>10}  {'items/s':>10}  "
                 f"{'time vs ' + record['baseline']:>22}  check")
    for vname, v in record["variants"].items():
        lines.append(
            f"  {vname:<{width}}  {v['median_s'] * 1e3:>8.1f}ms  {format_rate(v['items_per_s']):>10}  "
            f"{v['time_vs_baseline']:>21.2f}x  {'ok' if v['correct'] else 'WRONG RESULT'}"
        )
    for t in record["targets"]:
        if t["met"] is None:
            lines.append(f"  ratio: {t['label']}: {t['text']}")
            continue
        mark = "MET" if t["met"] else "MISSED"
        lines.append(f"  target: {t['label']}: {t['text']}  -> {mark}")
    lines.extend(f"  note: {n}" for n in record["notes"])
    return "\n".join(lines)
