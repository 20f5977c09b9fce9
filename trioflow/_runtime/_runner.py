"""The live state of one run: builds the segments of a plan and runs them in one nursery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

from .._acks import settle
from .._edge import Edge
from .._overflow import ItemDropped, Overflow
from .._plan import Plan
from .._policies import DeadLetterEntry, Guard
from .._stage import (
    DiscardSink,
    JoinSpec,
    MergeSpec,
    OrderedMergeSpec,
    Sink,
    ZipSpec,
)
from .._stats import EdgeStatistics, RunState, RunStatistics, StageStatistics
from .._tracking import tracks
from ._acker import Ledger
from ._build import _make_head, _make_op
from ._fanin import JoinHead, OrderedMergeHead, ZipHead
from ._routers import Router, _make_router
from ._segment import Head, Output, Segment, _Status
from ._stages import BatchTimerHead, PassHead


def _guard_stats(guard: Guard | None, side: list[Guard] | None = None) -> dict[str, int]:
    guards = ([] if guard is None else [guard]) + (side or [])
    if not guards:
        return {}
    return {"skipped": sum(g.skipped for g in guards),
            "dead_lettered": sum(g.dead_lettered for g in guards),
            "retries": sum(g.retries for g in guards)}


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _sole_cancelled(exc: BaseException) -> trio.Cancelled | None:
    """The first ``Cancelled`` of a group that holds nothing else (at any depth), or None."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    matched, rest = exc.split(trio.Cancelled)
    if rest is not None or matched is None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, trio.Cancelled)
    return leaf


def _settle_dropped(edge: Edge) -> Callable[[list[Any]], None]:
    """What a tracked run's dropping edge does with the items its policy dropped: they are
    done, acknowledged with an ``ItemDropped`` error."""
    error = ItemDropped(edge.name, edge.overflow)

    def settle_all(items: list[Any]) -> None:
        for item in items:
            settle(item, error)

    return settle_all


def _interrupt(exc: BaseException) -> KeyboardInterrupt | SystemExit | None:
    """The first ``KeyboardInterrupt``/``SystemExit`` in ``exc`` (at any depth), or None."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _interrupt(inner)
            if found is not None:
                return found
    return None


@final
class Runner:
    """The live state of one run. Built by ``Flow.run``/``Pipeline.run``/``Flow.open``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.errors: list[Exception] = []
        #: exceptions passed to ``fail`` (before flattening), so recording is idempotent
        self._failures: list[Exception] = []
        self.state = RunState.STARTING
        self._scope: trio.CancelScope | None = None
        self._cancel_requested = False
        self.draining = False
        self._linked: list[trio.CancelScope] = []
        self._finished = trio.Event()
        #: Trio clock at the start and the end of ``run_tasks`` (the report's duration)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        #: failures recorded by stages with ``on_error=Collect()``
        self.collected: list[DeadLetterEntry] = []
        self.edges: list[Edge] = [
            Edge(e.name, e.capacity, e.producers, e.overflow) for e in plan.edges
        ]
        self.segments: list[Segment] = []
        self.routers: list[Router] = []
        self._output: Edge | None = None
        for seg_plan in plan.segments:
            out_edges = [self.edges[i] for i in seg_plan.output.edges]
            out: Output | None = None
            if seg_plan.output.junction is not None:
                out = _make_router(seg_plan.output.junction, out_edges, seg_plan.output.ports)
                self.routers.append(out)
            elif out_edges:
                (out,) = out_edges
            if seg_plan.output.to_caller:
                self._output = out_edges[-1]
            if seg_plan.pass_head:
                head: Head = PassHead(None, seg_plan.label)
                op_nodes = seg_plan.nodes
            elif isinstance(seg_plan.nodes[0].spec, ZipSpec):
                head = ZipHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, JoinSpec):
                head = JoinHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, OrderedMergeSpec):
                head = OrderedMergeHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            elif isinstance(seg_plan.nodes[0].spec, MergeSpec):
                head = PassHead(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            else:
                head = _make_head(seg_plan.nodes[0])
                op_nodes = seg_plan.nodes[1:]
            ops = [_make_op(n) for n in op_nodes]
            for guard in [head.guard, *(op.guard for op in ops)]:
                if guard is not None:
                    guard.report = self.collected
            inputs = [self.edges[i] for i in seg_plan.inputs]
            self.segments.append(
                Segment(self, seg_plan, head, ops, inputs, out, out_edges, plan.chunk_size))
        #: a source asked for acknowledgements: items travel as ``Tracked`` (see ``_acks``)
        self.tracked = tracks([n.spec for seg in plan.segments for n in seg.nodes])
        #: one ledger per source that asked for acknowledgements
        self.ledgers: list[Ledger] = []
        if self.tracked:
            for edge in self.edges:
                if edge.overflow is not Overflow.BLOCK:
                    edge.on_drop = _settle_dropped(edge)
            for seg in self.segments:
                on_ack = getattr(seg.head.node.spec, "on_ack", None) if seg.head.node else None
                seg.head.tracked = True
                if on_ack is not None:
                    seg.head.ledger = Ledger(on_ack, seg.head.name)
                    self.ledgers.append(seg.head.ledger)
            self._plan_lots()

    def _plan_lots(self) -> None:
        """Which edges carry a ``LotChunk`` as it is (``Edge.takes_lots``): those read by a
        tracked timed ``batch``, and those read by a plain head whose first op takes one
        (or, without ops, whose output does: found again until nothing changes). Only
        blocking edges: a dropping edge settles what it drops item by item."""
        def takes(seg: Segment) -> bool:
            head = seg.head
            if isinstance(head, BatchTimerHead):
                return head.tracked_items
            if not isinstance(head, PassHead):
                return False
            if seg.ops:
                return seg.ops[0].takes_lots
            return seg.out is not None and seg.out.takes_lots

        changed = True
        while changed:
            changed = False
            for seg in self.segments:
                if takes(seg):
                    for edge in seg.inputs:
                        if not edge.takes_lots and edge.overflow is Overflow.BLOCK:
                            edge.takes_lots = changed = True

    @property
    def output(self) -> Edge | None:
        """The edge read by the caller (``Flow.open``), if any."""
        return self._output

    def also_cancel(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` as well when the run fails (used by ``Flow.open``)."""
        self._linked.append(scope)

    def fail(self, exc: Exception) -> None:
        """Record a failure and cancel the whole run (fail-fast).

        A group raised by user code (say, from a nursery inside a source) is flattened into
        its leaves, each keeping the group's notes, so a run raises one level only.
        Idempotent: a segment records its error before closing its edges, then ``guarded``
        sees the same exception again."""
        if any(e is exc for e in self._failures):
            return
        self._failures.append(exc)
        if isinstance(exc, ExceptionGroup):
            notes = getattr(exc, "__notes__", [])
            for leaf in _leaves(exc):
                for note in notes:
                    leaf.add_note(note)
                self.errors.append(leaf)
        else:
            self.errors.append(exc)
        if self._scope is not None:
            self._scope.cancel()
        for scope in self._linked:
            scope.cancel()

    def cancel(self) -> None:
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def drain(self) -> None:
        """Stop every source; what they handed over flows on to the sinks."""
        self.draining = True
        for seg in self.segments:
            if not seg.inputs:
                seg.request_drain()

    async def guarded(
        self, fn: Callable[..., Awaitable[None]], *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a task of this run: user errors are recorded and cancel the run."""
        status = task_status if isinstance(task_status, _Status) else _Status(task_status)
        try:
            await fn(*args, task_status=status)
        except Exception as exc:
            self.fail(exc)
        finally:
            status.started()

    async def run_tasks(self, on_ready: Callable[[], None]) -> None:
        """Run every segment in one nursery; call ``on_ready`` when all are ready (not if
        the run failed while starting). Does not raise recorded errors: ``raise_errors``
        does, after the nursery is gone."""
        self.started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._cancel_requested:
                    nursery.cancel_scope.cancel()
                if not self.ledgers:
                    await self._start_segments(nursery, on_ready)
                else:
                    # the ledgers outlive the segments: they hand over the last acks once
                    # every segment has ended
                    for ledger in self.ledgers:
                        await nursery.start(self.guarded, ledger.run)
                    async with trio.open_nursery() as segments:
                        await self._start_segments(segments, on_ready)
                    for ledger in self.ledgers:
                        ledger.close()
        except BaseException as exc:  # cancelled from outside (or interrupted)
            self.state = RunState.FAILED if self.errors else RunState.CANCELLED
            cancelled = _sole_cancelled(exc)
            if cancelled is not None:
                if self.errors:
                    # the run had failed before the outside cancellation reached it: its
                    # errors win over the cancellation, as a task's error does in a Trio
                    # nursery (they were lost: a fail-fast error raced with a cancel
                    # came out as a bare Cancelled, found by the generated pipelines)
                    try:
                        self.raise_errors(collected=False)
                    except ExceptionGroup as group:
                        raise group from None
                # trio wraps the tasks' Cancelled in (nested) nursery groups; an outside
                # cancellation is documented to propagate as one plain trio.Cancelled
                raise cancelled from None
            interrupt = _interrupt(exc)
            if interrupt is not None:
                # Ctrl-C (or sys.exit) leaves a run bare, like Cancelled: `except
                # KeyboardInterrupt` must catch it. Errors the run recorded go with it as notes.
                for err in self.errors:
                    interrupt.add_note(f"trioflow: the interrupted run had failed too: {err!r}")
                raise interrupt from None
            raise
        else:
            if self.errors:
                self.state = RunState.FAILED
            elif self._cancel_requested:
                self.state = RunState.CANCELLED
            else:
                self.state = RunState.COMPLETED
        finally:
            # segments never started (the run failed or was cancelled while starting)
            # still close what their heads own
            for seg in self.segments:
                if not seg.head_ran:
                    seg.head_ran = True
                    await seg.head.release()
            self.finished_at = trio.current_time()
            self._finished.set()

    @property
    def finished(self) -> bool:
        """The run has ended (completed, failed or cancelled) and cleaned up."""
        return self._finished.is_set()

    async def _start_segments(self, nursery: trio.Nursery, on_ready: Callable[[], None]) -> None:
        for seg in reversed(self.segments):
            await nursery.start(self.guarded, seg.run)
        if not self.errors:
            self.state = RunState.RUNNING
            on_ready()

    def raise_errors(self, extra: Exception | None = None, *, collected: bool = True) -> None:
        """Raise the recorded errors as one ExceptionGroup level (nothing if none).
        ``collected=False`` (a run asked for a report): the failures that ``Collect()``
        recorded are not raised for themselves, only alongside errors of a failed run."""
        if self.errors:
            errors = [*self.errors, extra] if extra is not None else list(self.errors)
            errors += [e.exception for e in self.collected if isinstance(e.exception, Exception)]
            raise ExceptionGroup(f"trioflow run failed with {len(errors)} error(s)", errors)
        if collected and self.collected and not self._cancel_requested:
            # (a run cancelled through its handle returns quietly: the failures it had
            # collected stay readable through ``handle.failures()``)
            leaves = [e.exception for e in self.collected if isinstance(e.exception, Exception)]
            if extra is not None:
                leaves.append(extra)
            raise ExceptionGroup(
                f"trioflow run completed; {len(self.collected)} item(s) failed (on_error=Collect())",
                leaves,
            )

    def result(self) -> Any:
        """The result of the last segment's sink (linear flows have one sink)."""
        return self.segments[-1].sink_result()

    def results(self) -> dict[str, Any]:
        """Every sink's result, by sink name (graphs may have several sinks)."""
        out: dict[str, Any] = {}
        for seg in self.segments:
            nodes = seg.plan.nodes
            # (``Flow.run``'s DiscardSink drops the items: it has no result to report)
            if nodes and isinstance(nodes[-1].spec, Sink) and not isinstance(nodes[-1].spec, DiscardSink):
                out[nodes[-1].name] = seg.sink_result()
        return out

    async def wait_finished(self) -> RunState:
        await self._finished.wait()
        return self.state

    def statistics(self) -> RunStatistics:
        stages: list[StageStatistics] = []
        for seg in self.segments:
            h = seg.head
            if h.node is not None:
                stages.append(StageStatistics(
                    name=h.name, operator=h.node.operator, lifecycle=h.node.lifecycle,
                    segment=seg.plan.index, items_in=h.n_in, items_out=h.n_out, errors=h.errors,
                    in_flight=h.in_flight, workers=h.workers, waiting=h.waiting,
                    restarts=h.restarts, **_guard_stats(h.guard, h.side_guards), **_time_stats(h),
                ))
            op_nodes = seg.plan.nodes if seg.plan.pass_head else seg.plan.nodes[1:]
            for node, op in zip(op_nodes, seg.ops, strict=True):
                stages.append(StageStatistics(
                    name=op.name, operator=node.operator, lifecycle=node.lifecycle,
                    segment=seg.plan.index, items_in=op.n_in, items_out=op.n_out,
                    errors=op.errors, in_flight=0, workers=1, waiting=0,
                    **_guard_stats(op.guard),
                ))
            if isinstance(seg.out, Router):
                r = seg.out
                stages.append(StageStatistics(
                    name=r.node.name, operator=r.node.operator, lifecycle=r.node.lifecycle,
                    segment=seg.plan.index, items_in=r.n_in, items_out=r.n_out, errors=r.errors,
                    in_flight=0, workers=1, waiting=0,
                ))
        edges = tuple(
            EdgeStatistics(name=e.name, capacity=e.capacity, depth=e.items, peak=e.peak,
                           total=e.total, overflow=e.overflow, dropped=e.dropped,
                           discarded=e.discarded)
            for e in self.edges
        )
        return RunStatistics(state=self.state, stages=tuple(stages), edges=edges)


def _time_stats(head: Head) -> dict[str, int]:
    """The counters of the operators over time (``window``, ``debounce``, ``sample``)."""
    return {name: getattr(head, name) for name in ("open_windows", "late", "superseded")
            if hasattr(head, name)}
