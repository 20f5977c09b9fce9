"""``run_on_list``: run a flow (or a stage on a list) to the end and report what happened.

A test usually wants three things from a run: what came out, the final statistics, and
the errors, without ``pytest.raises`` around an ``ExceptionGroup``. The run goes through
the public API only (``Pipeline.run`` with a task status that catches the ``RunHandle``), so
what is tested is exactly what users run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar, overload

import attrs

from .._errors import DefinitionTypeError
from .._flow import DEFAULT_BUFFER, DEFAULT_CHUNK_SIZE, Flow
from .._operators import from_iterable, sink
from .._runtime import RunHandle
from .._stage import Stage
from .._stats import RunState, RunStatistics

T = TypeVar("T")
In = TypeVar("In")


@attrs.frozen(kw_only=True)
class RunResult(Generic[T]):
    """What a finished run produced, as returned by ``run_on_list``.

    ``outputs`` holds every item that reached the end of the flow, in arrival order (on a
    failed run, the items that arrived before the failure). ``errors`` is empty when the
    run completed; otherwise it holds the leaves of the run's ``ExceptionGroup`` (the
    original exceptions, each with a note naming its stage and item).
    """

    outputs: list[T]
    #: The final snapshot; ``None`` only if the run failed before it was ready (a
    #: persistent resource that could not be opened), when no handle existed yet.
    statistics: RunStatistics | None
    errors: tuple[Exception, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the run completed without errors."""
        return not self.errors

    @property
    def state(self) -> RunState:
        """How the run ended (``FAILED`` also when it failed before it was ready)."""
        if self.statistics is None:
            return RunState.FAILED
        return self.statistics.state

    def error(self, kind: type[Exception] = Exception) -> Exception:
        """The only error of type ``kind``; ``AssertionError`` if there is none or several."""
        found = [e for e in self.errors if isinstance(e, kind)]
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one {kind.__name__} in the run's errors, got {list(self.errors)!r}"
            )
        return found[0]


class _HandleCatcher:
    """A task status for ``Pipeline.run`` that keeps the ``RunHandle`` instead of starting
    a task: the run reports ready to it, and its statistics stay readable afterwards."""

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle: RunHandle[Any] | None = None

    def started(self, value: RunHandle[Any] | None = None) -> None:
        self.handle = value


def _leaves(group: BaseExceptionGroup[Any]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        elif isinstance(exc, Exception):
            out.append(exc)
    return out


@overload
async def run_on_list(
    flow_or_stage: Flow[T],
    items: None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffer: int = DEFAULT_BUFFER,
    raise_on_error: bool = False,
) -> RunResult[T]: ...
@overload
async def run_on_list(
    flow_or_stage: Stage[In, T],
    items: Iterable[In],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffer: int = DEFAULT_BUFFER,
    raise_on_error: bool = False,
) -> RunResult[T]: ...
async def run_on_list(
    flow_or_stage: Flow[Any] | Stage[Any, Any],
    items: Iterable[Any] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffer: int = DEFAULT_BUFFER,
    raise_on_error: bool = False,
) -> RunResult[Any]:
    """Run a flow, or a stage (or chain) fed from ``from_iterable(items)``, to its end.

    ``await run_on_list(tf.map(f) | tf.filter(p), [1, 2, 3])`` or
    ``await run_on_list(flow)``. Returns a ``RunResult`` with the outputs, the final
    statistics and the errors. A failed run is reported, not raised: ``errors`` holds the
    leaves of its ``ExceptionGroup``; with ``raise_on_error=True`` the group is raised
    instead (unchanged, one level). ``chunk_size`` and ``buffer`` are passed to the run.

    On cancellation from outside, the run is cancelled (its resources closed) and
    ``trio.Cancelled`` propagates; nothing is returned.
    """
    if isinstance(flow_or_stage, Flow):
        if items is not None:
            raise DefinitionTypeError(
                "items must be omitted when running a Flow (it has its own source); "
                "pass a Stage to feed it a list"
            )
        flow: Flow[Any] = flow_or_stage
    elif isinstance(flow_or_stage, Stage):
        if items is None:
            raise DefinitionTypeError("items is required when running a Stage: the list to feed it")
        flow = from_iterable(items) | flow_or_stage
    else:
        raise DefinitionTypeError(
            f"flow_or_stage must be a Flow or a Stage, got {flow_or_stage!r}"
        )
    outputs: list[Any] = []

    def collect(item: Any) -> None:
        outputs.append(item)

    status = _HandleCatcher()
    errors: tuple[Exception, ...] = ()
    try:
        await (flow | sink(collect)).run(chunk_size=chunk_size, buffer=buffer, task_status=status)
    except ExceptionGroup as group:
        if raise_on_error:
            raise
        errors = tuple(_leaves(group))
    stats = status.handle.statistics() if status.handle is not None else None
    return RunResult(outputs=outputs, statistics=stats, errors=errors)
