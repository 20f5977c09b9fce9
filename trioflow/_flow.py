"""``Flow`` (a source and stages, open at the end) and ``Pipeline`` (a flow with a sink)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, NoReturn, TypeVar, overload

import attrs
import trio

from ._errors import DefinitionTypeError, DefinitionValueError
from ._plan import Plan, plan
from ._report import RunReport
from ._runtime import ItemStream, RunHandle, Runner, run_to_completion
from ._stage import Chain, DiscardSink, ListSink, Sink, Source, Stage, check_int

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")

#: The most items per chunk when a stage takes what is waiting (tunable per run); sources
#: adapt their chunk size below this to keep each chunk's work around a millisecond.
DEFAULT_CHUNK_SIZE = 1024
#: Default capacity, in items, of an edge between two tasks.
DEFAULT_BUFFER = 512


def _check_run_args(chunk_size: int, buffer: int) -> None:
    check_int("chunk_size", chunk_size, minimum=1)
    check_int("buffer", buffer, minimum=1)


def _check_names(specs: list[Any]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name is not None:
            if spec.name in seen:
                raise DefinitionValueError(
                    f"name {spec.name!r} is used by two nodes of one flow; names must be unique"
                )
            seen.add(spec.name)


@attrs.frozen(kw_only=True)
class Flow(Generic[T]):
    """A source followed by zero or more stages, emitting items of type ``T``.

    Build one from a source and ``|``: ``from_iterable(xs) | map(f) | filter(p)``. A flow
    is a frozen description and can be run any number of times (if its source can be
    iterated again). End it with a sink (``| sink(fn)``, ``| to_list()``) to get a
    ``Pipeline``, or run it directly:

    * ``await flow.run()`` runs it to completion and drops the items;
    * ``await flow.to_list()`` collects them;
    * ``async with flow.open() as items:`` streams them to the caller.
    """

    source: Source[Any]
    stages: tuple[Stage[Any, Any], ...] = ()

    @overload
    def __or__(self, other: Stage[T, U]) -> Flow[U]: ...
    @overload
    def __or__(self, other: Sink[T, R]) -> Pipeline[R]: ...
    def __or__(self, other: Stage[T, U] | Sink[T, R]) -> Flow[U] | Pipeline[R]:
        if isinstance(other, Stage):
            added = other.stages if isinstance(other, Chain) else (other,)
            _check_names([self.source, *self.stages, *added])
            return Flow(source=self.source, stages=(*self.stages, *added))
        if isinstance(other, Sink):
            _check_names([self.source, *self.stages, other])
            return Pipeline(flow=self, sink=other)
        raise DefinitionTypeError(
            f"a flow can be followed by a stage or a sink, got {other!r}"
        )

    def plan(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER) -> Plan:
        """How a ``run`` of this flow would be laid out (which stages share a task)."""
        _check_run_args(chunk_size, buffer)
        return plan(self.source, self.stages, DiscardSink(), chunk_size=chunk_size, buffer=buffer)

    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[False] = False,
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[None]] = ...,
    ) -> None: ...
    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[True],
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[None]] = ...,
    ) -> RunReport[None]: ...
    async def run(
        self,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        buffer: int = DEFAULT_BUFFER,
        report: bool = False,
        progress: bool = False,
        task_status: trio.TaskStatus[RunHandle[None]] = trio.TASK_STATUS_IGNORED,
    ) -> RunReport[None] | None:
        """Run the flow to completion, dropping its output.

        ``handle = await nursery.start(flow.run)`` returns a ``RunHandle`` once every stage
        is ready. Raises one ``ExceptionGroup`` of the stage errors if the run failed. On
        cancellation every task of the run is cancelled and resources are closed.
        ``report=True`` returns a ``RunReport`` instead, as ``Pipeline.run`` describes.
        ``progress=True`` shows a progress bar per source while the run goes (when stdout
        is a terminal) and prints a one-line summary at the end; it needs the ``rich``
        extra (``trioflow.display.progress``).
        """
        _check_run_args(chunk_size, buffer)
        p = plan(self.source, self.stages, DiscardSink(), chunk_size=chunk_size, buffer=buffer)
        return await run_to_completion(p, task_status, report=report, progress=progress)  # type: ignore[no-any-return]

    async def to_list(
        self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER
    ) -> list[T]:
        """Run the flow and return every item it emitted, in order."""
        return await (self | ListSink[T]()).run(chunk_size=chunk_size, buffer=buffer)

    @asynccontextmanager
    async def open(
        self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[ItemStream[T]]:
        """Run the flow in the background and stream its items to the caller.

        ``async with flow.open() as items: async for x in items: ...``. The pipeline runs
        in a nursery owned by the ``async with`` block (no async generator yields across a
        cancel scope). Leaving the block early cancels the pipeline. A failure in the
        pipeline cancels the block's body and is raised from the ``async with`` as one
        ``ExceptionGroup``; an exception from the body propagates unchanged.
        """
        _check_run_args(chunk_size, buffer)
        p = plan(self.source, self.stages, None, chunk_size=chunk_size, buffer=buffer,
                 open_end=True)
        runner = Runner(p)
        edge = runner.output
        assert edge is not None
        body_exc: BaseException | None = None
        unwrap = False
        try:
            async with trio.open_nursery() as nursery:
                # a failure in the pipeline cancels the body too: it sees cancellation,
                # never a clean end of stream
                runner.also_cancel(nursery.cancel_scope)
                await nursery.start(_run_tasks, runner)
                try:
                    yield ItemStream(edge, chunk_size, runner.tracked)
                except BaseException as exc:
                    body_exc = exc
                    raise
                finally:
                    edge.close_receive()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if runner.errors:
                # the pipeline failed: raise its errors (one level), plus the body's own
                # error if it had one besides the cancellation the failure caused
                extra = body_exc if isinstance(body_exc, Exception) else None
                runner.raise_errors(extra)
            # the nursery wrapped the body's exception: hand it back unwrapped
            rest = group.subgroup(
                lambda e: not isinstance(e, BaseExceptionGroup | trio.Cancelled) and e is not body_exc
            )
            if body_exc is None or rest is not None:
                raise
            unwrap = True
        if unwrap:
            assert body_exc is not None
            raise body_exc  # outside the except block, so no context is added
        runner.raise_errors()


async def _run_tasks(runner: Runner, *, task_status: trio.TaskStatus[None]) -> None:
    await runner.run_tasks(task_status.started)
    runner.raise_errors()  # reached with errors only when the run failed while starting


@attrs.frozen(kw_only=True)
class Pipeline(Generic[R]):
    """A flow ended by a sink; ``await pipeline.run()`` returns the sink's result ``R``."""

    flow: Flow[Any]
    sink: Sink[Any, R]

    def __or__(self, other: object) -> NoReturn:
        """A pipeline is finished (it ends in its sink): refuse ``pipeline | stage`` with
        what to write instead."""
        what = "another sink" if isinstance(other, Sink) else f"{other!r}"
        raise DefinitionTypeError(
            f"a pipeline ends in its sink {self.sink.name or self.sink.operator!r} and cannot be "
            f"followed by {what}: put stages before the sink (flow | stage | sink), or "
            "continue the flow that the pipeline ends: pipeline.flow | stage | sink"
        )

    def plan(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER) -> Plan:
        """How a ``run`` of this pipeline would be laid out (which stages share a task)."""
        _check_run_args(chunk_size, buffer)
        return plan(self.flow.source, self.flow.stages, self.sink, chunk_size=chunk_size,
                    buffer=buffer)

    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[False] = False,
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[R]] = ...,
    ) -> R: ...
    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[True],
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[R]] = ...,
    ) -> RunReport[R]: ...
    async def run(
        self,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        buffer: int = DEFAULT_BUFFER,
        report: bool = False,
        progress: bool = False,
        task_status: trio.TaskStatus[RunHandle[R]] = trio.TASK_STATUS_IGNORED,
    ) -> R | RunReport[R]:
        """Run to completion and return the sink's result (``None`` for ``sink(fn)``,
        the list for ``to_list()``, the accumulated value for ``reduce``).

        ``handle = await nursery.start(pipeline.run)`` returns a ``RunHandle`` once every
        stage is ready (persistent resources built, continuous sources listening). A
        failure cancels the whole run and is raised as one ``ExceptionGroup`` whose
        leaves are the original exceptions, each noting its stage and item. If the run is
        cancelled through ``handle.cancel()``, ``run`` returns quietly with what the sink
        had so far; an outside cancellation propagates as ``trio.Cancelled``.

        Stages with ``on_error=Collect()`` make a completed run raise one ``ExceptionGroup``
        of the collected failures. ``report=True`` returns a ``RunReport`` instead (sink
        result, per-stage counts, collected failures, duration) and raises nothing for
        collected failures; fail-fast errors still raise as above, ``handle.cancel()``
        returns a report in state ``CANCELLED``, an outside cancellation still propagates.
        ``handle.report()`` reads the same report once the run has ended.
        ``progress=True`` shows a progress bar per source while the run goes (when stdout
        is a terminal) and prints a one-line summary at the end; it needs the ``rich``
        extra (``trioflow.display.progress``).
        """
        p = self.plan(chunk_size=chunk_size, buffer=buffer)
        return await run_to_completion(p, task_status, report=report, progress=progress)  # type: ignore[no-any-return]
