"""Observation: ``RunReport``, what a run that ended hands back with ``run(report=True)`` or
``handle.report()``: results, counts, collected failures and duration, without an exception
for the failures that ``on_error=Collect()`` collected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar, final

import attrs

from ._errors import short_repr
from ._policies import DeadLetterEntry
from ._stats import RunState, RunStatistics, StageStatistics, columns, tables

R = TypeVar("R")


@final
@attrs.frozen(kw_only=True)
class RunReport(Generic[R]):
    """How a run ended, as ``await pipeline.run(report=True)`` (or ``flow.run``,
    ``graph.run``) returns it, and ``handle.report()`` reads it once the run has ended.

    * ``state``: ``COMPLETED``, or ``CANCELLED`` after ``handle.cancel()`` (or a drain that
      had to abort); ``FAILED`` only in a report read from the handle of a failed run;
    * ``result``: what ``run()`` would return (the sink's result of a pipeline, ``None``
      for a flow, the ``GraphResult`` of a graph), and ``results``: every sink's result
      by sink name;
    * ``failures``: the items that stages with ``on_error=Collect()`` collected, as
      ``DeadLetterEntry`` values, in the order they failed; with a report they are not
      raised;
    * ``errors``: the fail-fast errors of a failed run (empty otherwise);
    * ``duration``: seconds from the start of the run to its end on Trio's clock (virtual
      time under ``MockClock``);
    * ``statistics``: the final ``RunStatistics``; ``stage(name)`` gives one stage's
      counts: ``items_in``, ``items_out``, ``skipped``, ``dead_lettered`` (collected items
      included), ``retries``, ``errors``.

    ``str(report)`` (or ``report.table()``) is a plain-text summary.
    """

    state: RunState
    result: R
    results: Mapping[str, object]
    failures: tuple[DeadLetterEntry, ...]
    errors: tuple[Exception, ...] = ()
    duration: float
    statistics: RunStatistics

    @property
    def stages(self) -> tuple[StageStatistics, ...]:
        """The final statistics of every stage, in plan order."""
        return self.statistics.stages

    def stage(self, name: str) -> StageStatistics:
        """The final counts of the stage called ``name`` (``KeyError`` if there is none)."""
        return self.statistics.stage(name)

    def table(self) -> str:
        """A plain-text summary: state, duration and counts of collected failures and
        errors, the statistics tables (see ``RunStatistics.table``), then one row per
        collected failure (stage, attempt, item, exception). ``str(report)`` is the same."""
        lines = [
            f"run {self.state.value} in {self.duration:.3f} s: {len(self.failures)} "
            f"failure(s) collected, {len(self.errors)} error(s)",
            *tables(self.statistics),
        ]
        if self.failures:
            rows = [(f.stage, f.attempt, short_repr(f.item), short_repr(f.exception))
                    for f in self.failures]
            lines += ["", *columns(("failed in", "attempt", "item", "exception"), rows)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
