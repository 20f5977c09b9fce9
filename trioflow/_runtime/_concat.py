"""The head of ``concat(flow1, flow2, ...)``: the flows run one after another.

Theory of operation. Each flow runs as a nested run (its own ``Runner``, its segments in a
nursery inside this head's task), open at the end like ``Flow.open``: this head reads its
output edge and hands each chunk on. The next flow is planned and started only once the
previous one completed, so at most one of them runs at a time and its backpressure is
the outer run's (the head does not read while the next edge is full).

* A failure inside a flow fails that nested run; its errors (already noted with their
  stage, inside that flow) get a note naming the flow and this source, and fail the
  outer run, one group level like any other stage error.
* Cancelling the outer run (or a stop downstream) cancels this task, hence the nested
  run under way; later flows never start.
* A drain of the outer run drains the nested run under way (its sources stop, what they
  handed over flows on) and starts no later flow.
"""

from __future__ import annotations

from typing import Any

import trio

from .._plan import PlanNode, plan
from .._stage import ConcatSource
from ._segment import Head, Segment, _Status

#: Edge capacity of a nested run when this source's own output edge has none (unbounded).
INNER_EDGE = 512


class ConcatHead(Head):
    def __init__(self, node: PlanNode, spec: ConcatSource[Any]) -> None:
        super().__init__(node)
        self.flows = spec.flows

    async def run(self, seg: Segment, status: _Status) -> None:
        status.started()
        for index, flow in enumerate(self.flows):
            if seg.draining:
                return
            await self._run_one(seg, index, flow)

    async def _run_one(self, seg: Segment, index: int, flow: Any) -> None:
        # the nested run's edges get the capacity of this source's own output edge
        capacity = next((e.capacity for e in seg.out_edges if e.capacity), None)
        # a nested run of the same kind as the outer one (``type(seg.runner)`` is the
        # ``Runner``: this module is below ``_runner``, which builds heads through it)
        make_runner: Any = type(seg.runner)
        inner = make_runner(plan(flow.source, flow.stages, None, chunk_size=seg.chunk_size,
                            buffer=capacity or INNER_EDGE, open_end=True))
        edge = inner.output
        assert edge is not None
        size = seg.chunk_size
        try:
            async with trio.open_nursery() as nursery:
                inner.also_cancel(nursery.cancel_scope)  # a failure inside stops the reading
                nursery.start_soon(inner.run_tasks, _ignore_ready)
                drained = False
                try:
                    while True:
                        chunk: list[Any] | None = None
                        if seg.draining and not drained:
                            drained = True
                            inner.drain()  # what the flow's sources handed over flows on
                        if drained:
                            chunk = await edge.receive(size)
                        else:
                            with seg.drain_point() as cs:
                                chunk = await edge.receive(size)  # cancelled: nothing taken
                            if cs.cancelled_caught:
                                continue
                        if chunk is None:
                            break
                        self.n_out += len(chunk)
                        await seg.emit(chunk)
                finally:
                    edge.close_receive()
        except BaseExceptionGroup:
            if not inner.errors:
                raise  # the outer run was cancelled: not this flow's error
        if inner.errors:
            for exc in inner.errors:
                exc.add_note(f"trioflow: in flow #{index} of {self.name!r}")
            raise ExceptionGroup(f"flow #{index} of {self.name!r} failed", list(inner.errors))


def _ignore_ready() -> None:
    pass
