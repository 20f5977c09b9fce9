"""The task of a segment: a head (the first node: a source, a pool, a fan-in) plus the
inline ops fused after it. The lowest module of the runtime: heads build on ``Head``, the
runner builds ``Segment`` objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, Protocol, final

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from .._acks import LotChunk
from .._callables import CallKind
from .._edge import DownstreamClosed, Edge
from .._errors import annotate
from .._ops import (
    Op,
    SinkOp,
)
from .._plan import PlanNode, PlanSegment
from .._policies import Fail, Guard, with_retry_and_timeout
from .._stage import DROPPED
from ._acker import Ledger

#: Bound on how long an async iterator's ``aclose`` may take when a run ends.
_ACLOSE_TIMEOUT = 5.0
#: Bound on how long closing a persistent worker's resource may take (shielded).
CLEANUP_TIMEOUT = 10.0


class Output(Protocol):
    """Where a segment puts its chunks: an ``Edge``, or a fan-out router over several."""

    #: it takes a ``LotChunk`` as it is (else it gets the chunk's ``tracked()`` items)
    takes_lots: bool

    async def put(self, chunk: list[Any]) -> None: ...

    def close_send(self) -> None: ...


class RunControl(Protocol):
    """What a segment and its head need of the run they belong to (the ``Runner``)."""

    errors: list[Exception]

    def fail(self, exc: Exception) -> None: ...

    async def guarded(
        self, fn: Callable[..., Awaitable[None]], *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...


class _Status:
    """Forwards ``started()`` once, and remembers whether it was called."""

    __slots__ = ("_inner", "called")

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: object = None) -> None:
        if not self.called:
            self.called = True
            self._inner.started()


class Head:
    """The first node of a segment: it pulls input (or produces it) and calls ``emit``."""

    operator = "head"

    def __init__(self, node: PlanNode | None, name: str = "") -> None:
        self.name: str = name if node is None else node.name
        self.node = node
        self.n_in = 0
        self.n_out = 0
        self.errors = 0
        self.in_flight = 0
        self.workers = 1
        self.waiting = 0
        self.guard: Guard | None = _guard_for(node) if node is not None else None
        #: policies that a source's own code applies (a connector's rejections), whose
        #: counters are the stage's too (``Emit._counts``)
        self.side_guards: list[Guard] = []
        #: the run tracks acknowledgements: a source hands on ``Tracked`` items
        self.tracked = False
        #: a source that asked for acknowledgements: where its tickets settle
        self.ledger: Ledger | None = None
        self.envelope = bool(node is not None and getattr(node.spec, "envelope", False))

    async def run(self, seg: Segment, status: _Status) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def restarts(self) -> int:
        sup = getattr(self, "supervisor", None)
        return 0 if sup is None else int(sup.restarts)

    async def recover(self, exc: Exception, item: object) -> bool:
        """A call of user code failed on ``item``: apply the stage's error policy. Returns
        True when the item was skipped or dead-lettered (the caller goes on); False when
        the run must fail (the caller re-raises). Errors raised downstream (already noted
        by the stage they came from) are never this stage's to handle."""
        guard = self.guard
        if guard is None or guard.fails or getattr(exc, "_trioflow_annotated", False):
            self.failed(exc, item)
            return False
        self.errors += 1
        await guard.ahandle(exc, item[1] if self.envelope else item)  # type: ignore[index]
        return True

    def tombstone(self, item: tuple[int, Any]) -> tuple[int, Any]:
        """The placeholder a branch stage hands on for an envelope it skipped or
        dead-lettered (the join waits for every number). It is handed on and counted like a
        result, so it is taken off ``n_out`` here: a failed item is counted once, as
        skipped or dead-lettered, never also as an output."""
        self.n_out -= 1
        return (item[0], DROPPED)

    def failed(self, exc: BaseException, item: object, *, has_item: bool = True) -> None:
        if getattr(exc, "_trioflow_annotated", False):
            return  # raised (and counted) by a fused op after this head, reached via emit
        self.errors += 1
        annotate(exc, self.name, item, has_item=has_item)

    def result(self) -> Any:
        return None

    async def release(self) -> None:
        """Close what the head owns when the run ends before the head ever ran (a failure
        while starting, ``take(0)``); a head that ran closes it itself."""


async def _bounded_shielded(fn: Callable[[], Awaitable[object]]) -> None:
    with trio.move_on_after(_ACLOSE_TIMEOUT) as cs:
        cs.shield = True
        await fn()


def _policy_call(spec: Any, fn: Callable[..., Any], guard: Guard | None) -> Callable[..., Any]:
    """``fn`` as an async callable, under the stage's retry and timeout.

    A generator function (``flat_map``) is returned as it is when no policy applies (no
    ``guard``: no retry, no timeout, the default error policy): the head iterates it and
    hands each output on as it comes (``streams_outputs``). Under a policy, one attempt is
    one whole iteration: the outputs are collected into a list and handed on only when the
    generator finished, so a failed item is skipped or dead-lettered whole, a retried
    attempt starts the generator again, and the outputs of a failed attempt are never
    emitted (nor emitted twice)."""
    kind = getattr(spec, "kind", CallKind.ASYNC)
    retry, timeout = getattr(spec, "retry", None), getattr(spec, "timeout", None)
    if retry is None and timeout is None and (
        kind is CallKind.ASYNC or (kind is CallKind.ASYNC_GEN and guard is None)
    ):
        return fn
    is_async = kind in (CallKind.ASYNC, CallKind.ASYNC_GEN)
    if kind is CallKind.ASYNC_GEN:
        agen_fn = fn

        async def collect_async(*args: Any) -> list[Any]:
            async with aclosing(agen_fn(*args)) as agen:
                return [out async for out in agen]

        fn = collect_async
    elif kind is CallKind.SYNC_GEN:
        gen_fn = fn

        def collect(*args: Any) -> list[Any]:
            return list(gen_fn(*args))

        fn = collect
    return with_retry_and_timeout(fn, is_async, retry, timeout,
                                  guard or Guard(spec.name or spec.operator, Fail()))


def streams_outputs(spec: Any, guard: Guard | None) -> bool:
    """Whether ``_policy_call`` left an async generator function to be iterated output by
    output, rather than an async function returning each item's outputs as a list."""
    return (getattr(spec, "kind", None) is CallKind.ASYNC_GEN and guard is None
            and getattr(spec, "retry", None) is None and getattr(spec, "timeout", None) is None)


class _Skipped:
    __slots__ = ()


#: The "result" of an item a pool skipped or dead-lettered: it keeps the item's place in
#: the order (so later results are not held back) and is never emitted.
_SKIPPED = _Skipped()


def _guard_for(node: PlanNode) -> Guard | None:
    spec = node.spec
    if getattr(spec, "runs_user_code", False) and spec.has_policies:  # type: ignore[union-attr]
        return Guard(node.name, spec.on_error)  # type: ignore[union-attr]
    return None



@final
class Segment:
    """A head plus the inline ops fused after it, run as one task."""

    def __init__(
        self,
        runner: RunControl,
        plan: PlanSegment,
        head: Head,
        ops: list[Op],
        inputs: list[Edge],
        out: Output | None,
        out_edges: list[Edge],
        chunk_size: int,
    ) -> None:
        self.runner = runner
        self.plan = plan
        self.head = head
        self.ops = tuple(ops)
        self.inputs = inputs
        self.inp = inputs[0] if inputs else None
        self.out = out
        #: the edges ``out`` writes to (one, several behind a fan-out router, or none)
        self.out_edges = out_edges
        self.chunk_size = chunk_size
        self.scope = trio.CancelScope()
        #: whether ``head.run`` was entered (if not, ``head.release`` must close its resources)
        self.head_ran = False
        #: a source segment asked to stop producing (``drain``)
        self.draining = False
        self._drain_scopes: set[trio.CancelScope] = set()
        #: index of the op that asked to stop (-1: the head itself); None while running
        self.stopped_at: int | None = None
        self.downstream_gone = False
        for i, op in enumerate(self.ops):
            if op.done:
                self.stopped_at = i
        for edge in out_edges:
            edge.on_receive_closed.append(self._on_downstream_closed)

    def _on_downstream_closed(self) -> None:
        """A consumer of this segment stopped. When all have, stop now, even if the head
        is waiting for input rather than in ``put`` (where it would otherwise notice)."""
        if all(e.receive_closed for e in self.out_edges):
            self.downstream_gone = True
            self.scope.cancel()

    @contextlib.contextmanager
    def drain_point(self) -> Iterator[trio.CancelScope]:
        """Where a source waits for input: ``drain`` cancels this wait (and nothing else:
        items already handed over are never lost). ``cancelled_caught`` tells the source
        to stop."""
        cs = trio.CancelScope()
        if self.draining:
            cs.cancel()
        self._drain_scopes.add(cs)
        try:
            with cs:
                yield cs
        finally:
            self._drain_scopes.discard(cs)

    def request_drain(self) -> None:
        """Stop this source at its next clean point: its waits for input under
        ``drain_point`` are cancelled (pull sources then return, and their fused ops are
        flushed), and a push source sees ``Emit.draining``. Puts are never cancelled by a
        drain, so nothing a source handed over, or a junction accepted, is lost."""
        if self.draining:
            return
        self.draining = True
        for cs in list(self._drain_scopes):
            cs.cancel()

    async def emit(self, items: list[Any]) -> None:
        """Pass items through the fused ops and queue the result on the output edge. A
        ``LotChunk`` goes on as it is up to the first op (or output) that does not take one,
        which gets its ``tracked()`` items."""
        stop = -2
        for i, op in enumerate(self.ops):
            if type(items) is LotChunk and not op.takes_lots:
                items = items.tracked()
            items = op.process(items)
            if op.done:
                stop = i
            if not items:
                break
        if items and self.out is not None:
            if type(items) is LotChunk and not self.out.takes_lots:
                items = items.tracked()
            try:
                await self.out.put(items)
            except DownstreamClosed:
                self.downstream_gone = True
                self.scope.cancel()
                await checkpoint()
        if stop != -2:
            await self.stop_here(stop)

    async def stop_here(self, index: int) -> None:
        """Node ``index`` (an op, or -1 for the head) wants no more input: unwind the head
        as a cancellation, then finish the nodes after ``index``."""
        if self.stopped_at is None or index > self.stopped_at:
            self.stopped_at = index
        self.scope.cancel()
        await checkpoint()

    async def run(self, task_status: _Status) -> None:
        try:
            with self.scope:
                if self.stopped_at is None:
                    self.head_ran = True
                    await self.head.run(self, task_status)
            task_status.started()
            if self.downstream_gone:
                return
            if self.stopped_at is not None:
                for edge in self.inputs:
                    edge.close_receive()  # early stop travels upstream
            await checkpoint_if_cancelled()  # a failed run is cancelled, not completed
            start = 0 if self.stopped_at is None else self.stopped_at + 1
            await self._flush(start)
        except Exception as exc:
            # cancel the run *before* the finally below closes the output edge: a consumer
            # parked on that edge would otherwise wake to a clean end of stream (DESIGN §3)
            self.runner.fail(exc)
            raise
        finally:
            for edge in self.inputs:
                edge.close_receive()
            if self.out is not None:
                self.out.close_send()
            if not self.head_ran:
                await self.head.release()

    async def _flush(self, start: int) -> None:
        ops = self.ops
        for i in range(start, len(ops)):
            items = ops[i].flush()
            for op in ops[i + 1 :]:
                if not items:
                    break
                items = op.process(items)
            if items and self.out is not None:
                try:
                    await self.out.put(items)
                except DownstreamClosed:
                    return

    def sink_result(self) -> Any:
        if self.ops and isinstance(self.ops[-1], SinkOp):
            return self.ops[-1].result()
        return self.head.result()


