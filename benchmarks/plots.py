"""Plot benchmarks/results.json (written by run.py) as PNGs for the docs site.

    python benchmarks/plots.py [results.json] [--out docs/img/benchmarks]

``nox -s bench`` runs it after run.py. For every workload in the results it draws
``<workload>.png``: the median time of each variant relative to the workload's baseline
(log scale), with the spread of the repetitions (min to max) as a line; and ``targets.png``:
every goal's measured ratio against its limit. Each figure names the run it comes from
(date, git revision, CPU), so a figure from an older run stays recognisable. Only the
workloads in the file are redrawn: ``--only linear`` refreshes ``linear.png`` alone; the
results of a ``--quick`` run are not drawn (unless ``--quick-ok``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import matplotlib.ticker

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
OUT = HERE.parent / "docs" / "img" / "benchmarks"


def _caption(machine: dict[str, Any]) -> str:
    quick = ", --quick (not representative)" if machine.get("quick") else ""
    return (f"run {machine.get('date', '?')}, trioflow {machine.get('git', '?')}, "
            f"{machine.get('cpus_usable', '?')} CPUs usable{quick}")


def _plain_log_ticks(ax: Any) -> None:
    """Tick labels on a log axis as plain numbers (0.5, 1, 20), not powers of ten."""
    formatter = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_workload(name: str, record: dict[str, Any], machine: dict[str, Any], out: Path) -> Path:
    """One horizontal bar per variant: median time / baseline median, with min..max whiskers."""
    variants = record["variants"]
    base = variants[record["baseline"]]["median_s"]
    names = list(variants)
    medians = [variants[v]["median_s"] / base for v in names]
    lows = [min(variants[v]["times_s"]) / base for v in names]
    highs = [max(variants[v]["times_s"]) / base for v in names]
    colors = ["#3f51b5" if v.startswith("trioflow") else "#9e9e9e" for v in names]

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6), dpi=100)
    y = list(range(len(names)))
    ax.barh(y, medians, color=colors)
    ax.errorbar(medians, y, xerr=[[m - lo for m, lo in zip(medians, lows, strict=True)],
                                  [hi - m for m, hi in zip(medians, highs, strict=True)]],
                fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"time relative to {record['baseline']} (median of {record['reps']}; "
                  "lines: min to max; lower is faster)")
    for yi, m, hi, v in zip(y, medians, highs, names, strict=True):
        ax.annotate(f"  {m:.2f}x, {variants[v]['items_per_s']:,.0f} items/s", (hi, yi),
                    va="center", fontsize=7)
    ax.set_xlim(min(lows) / 1.5, max(highs) * 6)
    _plain_log_ticks(ax)
    ax.set_title(f"{name}: {record['title']}", fontsize=9, loc="left")
    fig.text(0.01, 0.01, _caption(machine), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_targets(workloads: dict[str, Any], machine: dict[str, Any], out: Path) -> Path | None:
    """Every goal with a limit: the measured ratio divided by the limit, so the goal is met
    left of 1 for an at-most goal, right of 1 for an at-least goal."""
    rows = [(f"{name}: {t['label']}", t) for name, record in workloads.items()
            for t in record.get("targets", []) if t.get("limit") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.6), dpi=100)
    y = list(range(len(rows)))
    # a log axis: a figure at or below zero (memory that shrank) is drawn at the left edge
    values = [max(t["value"] / t["limit"], 1e-2) for _, t in rows]
    colors = ["#4caf50" if t["met"] else "#f44336" for _, t in rows]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, [label if len(label) < 70 else label[:67] + "..." for label, _ in rows],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for yi, v, (_, t) in zip(y, values, rows, strict=True):
        ax.annotate(f" {t['text']}", (v, yi), va="center", fontsize=7)
    ax.set_xlim(min(values) / 1.5, max(values) * 8)
    _plain_log_ticks(ax)
    ax.set_xlabel("measured / goal (green: met, red: missed; '<=' goals are met left of 1, "
                  "'>=' goals right of 1)", fontsize=8)
    ax.set_title("Benchmark goals", fontsize=9, loc="left")
    fig.text(0.01, 0.01, _caption(machine), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / "targets.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("results", type=Path, nargs="?", default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default {OUT})")
    parser.add_argument("--quick-ok", action="store_true",
                        help="draw a --quick run's results too (by default they are not drawn)")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    machine, workloads = data["machine"], data["workloads"]
    if machine.get("quick") and not args.quick_ok:
        print(f"{args.results} is from a --quick run (figures not representative): no plot redrawn "
              "(--quick-ok draws it anyway)")
        return 0
    for name, record in workloads.items():
        print(f"wrote {plot_workload(name, record, machine, args.out)}")
    if machine.get("quick") or len(workloads) < 2:
        print("targets.png kept: a quick or partial run does not redraw the summary of all goals")
    elif (path := plot_targets(workloads, machine, args.out)) is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
