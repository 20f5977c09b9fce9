"""Definition layer: frozen, validated specs for sources, stages and sinks.

Nothing here runs: a spec only records *what* to do and is checked when it is built, so a
bad argument fails before any task starts. The planner (``_plan``) decides how specs are
grouped into tasks, and the runner (``_runner``) gives them life.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterable, Callable, Iterable, Sized
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import trio

from ._backends import Backend
from ._callables import CallKind, check_call, classify, returns_async_iterable
from ._errors import DefinitionTypeError, DefinitionValueError
from ._overflow import Overflow, Unbounded
from ._policies import FAIL, DeadLetter, Fail, OnError, Restart, Retry, check_policies

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
T = TypeVar("T")
V = TypeVar("V")
R = TypeVar("R", covariant=True)


class Lifecycle(enum.Enum):
    """How the tasks of a stage are spawned (DESIGN §2)."""

    #: One task for the whole run; it may keep state and may produce without input.
    #: Fused inline stages live in the continuous task of their segment.
    CONTINUOUS = "continuous"
    #: N worker tasks started with the run; each builds its resource once and reuses it.
    PERSISTENT = "persistent"
    #: A pool of N worker tasks (at most N calls at once), each calling an async function
    #: per item, with no resource: ``map``/``filter``/``tap``/``flat_map``/``sink`` with
    #: ``concurrency=N`` (N > 1 or ``Adaptive``), and ``parallel``.
    POOLED = "pooled"
    #: A fresh task and a fresh stage instance per item, bounded by a limit.
    ON_DEMAND = "on_demand"


# -- validation helpers: every message names the argument and the value -------------------


def check_int(argument: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionTypeError(f"{argument} must be an int, got {value!r}")
    if value < minimum:
        raise DefinitionValueError(f"{argument} must be >= {minimum}, got {value!r}")
    return value


def check_optional_int(argument: str, value: object, *, minimum: int) -> int | None:
    return None if value is None else check_int(argument, value, minimum=minimum)


def check_seconds(argument: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionTypeError(f"{argument} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise DefinitionValueError(f"{argument} must be a positive finite number, got {value!r}")
    return float(value)


def check_bool(argument: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DefinitionTypeError(f"{argument} must be True or False, got {value!r}")
    return value


def check_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DefinitionTypeError(f"name must be a str, got {value!r}")
    if not value or value.strip() != value:
        raise DefinitionValueError(f"name must be non-empty without surrounding spaces, got {value!r}")
    return value


def check_edge(buffer: object, overflow: object) -> None:
    """Validate the ``buffer``/``overflow`` pair of the edge that feeds a node."""
    if not isinstance(buffer, Unbounded):
        check_optional_int("buffer", buffer, minimum=1)
    if not isinstance(overflow, Overflow):
        raise DefinitionTypeError(f"overflow must be an Overflow member, got {overflow!r}")
    if isinstance(buffer, Unbounded) and overflow in (
        Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.FAIL
    ):
        raise DefinitionValueError(
            f"overflow={overflow!r} never applies to buffer=UNBOUNDED: choose a capacity or BLOCK"
        )


def check_window(window: int | None, concurrency: int) -> int | None:
    if window is None:
        return None
    check_int("window", window, minimum=1)
    if window < concurrency:
        raise DefinitionValueError(
            f"window must be >= concurrency ({concurrency}), got {window!r}"
        )
    return window


# -- bases ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Stage(Generic[In, Out]):
    """A step between a source and a sink: consumes items of type ``In``, emits ``Out``.

    Build stages with the operator functions (``trioflow.map``, ``trioflow.batch`` ...) and
    chain them onto a flow with ``|``. A stage is a frozen description; it can be reused in
    any number of flows and runs.
    """

    name: str | None = None
    #: Capacity, in items, of the edge that feeds this stage when the planner puts one there
    #: (``UNBOUNDED`` asks for no limit, by name).
    buffer: int | Unbounded | None = None
    #: What that edge does when it is full (``Overflow.BLOCK``: backpressure).
    overflow: Overflow = Overflow.BLOCK
    #: What to do when user code fails on an item (``Fail()``: fail fast).
    on_error: OnError = FAIL
    #: Retry a failed call first (``None``: no retry).
    retry: Retry | None = None
    #: Per-call time limit in seconds, for async functions (``None``: none).
    timeout: float | None = None
    #: Internal: the stage was lifted into a fork_join/partition branch and sees
    #: ``(seq, value)`` envelopes; an item its error policy drops becomes a tombstone.
    envelope: bool = False

    operator: ClassVar[str] = "stage"
    #: Whether the stage calls user code per item (error policies apply only then).
    runs_user_code: ClassVar[bool] = False

    @property
    def lifecycle(self) -> Lifecycle:
        """How this stage's tasks are spawned."""
        return Lifecycle.CONTINUOUS

    @property
    def inline(self) -> bool:
        """Whether the stage is synchronous and can be fused into its neighbour's task."""
        return False

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        check_edge(self.buffer, self.overflow)
        _check_stage_policies(self)

    @property
    def has_policies(self) -> bool:
        """Whether a retry, a timeout or a non-failing error policy applies."""
        return _has_policies(self)

    @property
    def policies_need_task(self) -> bool:
        """Retries wait, timeouts cancel, channel dead letters send: none can be fused."""
        return _policies_need_task(self)

    def __or__(self, other: Stage[Out, V]) -> Stage[In, V]:
        """Compose two stages into one reusable fragment (``map(f) | filter(p)``)."""
        if isinstance(other, Sink):
            raise DefinitionTypeError(
                f"a stage can be followed by a stage, not by the sink {other!r}: a fragment of "
                "stages has no source to run; write `source | stages | sink` (a fragment "
                "`fragment = map(f) | filter(p)` goes in as `source | fragment | sink`)"
            )
        if not isinstance(other, Stage):
            raise DefinitionTypeError(f"a stage can be followed by a stage, got {other!r}")
        return Chain(stages=(*_flat(self), *_flat(other)))


def _has_policies(spec: Any) -> bool:
    return spec.retry is not None or spec.timeout is not None or not isinstance(spec.on_error, Fail)


def _policies_need_task(spec: Any) -> bool:
    return (spec.retry is not None or spec.timeout is not None
            or (isinstance(spec.on_error, DeadLetter) and spec.on_error.needs_task))


def _check_stage_policies(spec: Any) -> None:
    check_policies(spec.on_error, spec.retry, spec.timeout)
    if not spec.runs_user_code:
        # (``batch`` has a ``timeout`` of its own meaning; it is validated there)
        if spec.retry is not None or not isinstance(spec.on_error, Fail):
            raise DefinitionValueError(
                f"{spec.operator} runs no user code per item: on_error and retry do not apply"
            )
        return
    if spec.timeout is not None:
        object.__setattr__(spec, "timeout", check_seconds("timeout", spec.timeout))
    kind = getattr(spec, "kind", CallKind.ASYNC)
    if spec.timeout is not None and kind is not CallKind.ASYNC and not getattr(spec, "runs_elsewhere", False):
        raise DefinitionValueError(
            f"timeout needs an async fn: a plain function on the Trio thread cannot be "
            f"interrupted (got {getattr(spec, 'fn', None)!r})"
        )


def _flat(stage: Stage[Any, Any]) -> tuple[Stage[Any, Any], ...]:
    return stage.stages if isinstance(stage, Chain) else (stage,)


@attrs.frozen(kw_only=True)
class Chain(Stage[In, Out]):
    """Stages composed with ``|`` before being attached to a flow: a reusable fragment.
    Attached to a flow, it is the same as attaching its stages one by one."""

    stages: tuple[Stage[Any, Any], ...]

    operator: ClassVar[str] = "chain"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not self.stages:
            raise DefinitionValueError("a chain needs at least one stage")


@attrs.frozen(kw_only=True)
class Composite(Stage[In, Out]):
    """A stage that expands into a small graph when planned (``fork_join``, ``partition``).
    ``expand(add, input)`` adds its nodes through ``add(spec, inputs) -> index`` and returns
    the index of the node whose output is the composite's output."""

    operator: ClassVar[str] = "composite"

    def expand(
        self, add: Callable[[Any, tuple[tuple[int, Any], ...]], int], input: tuple[int, Any]
    ) -> int:
        raise NotImplementedError  # pragma: no cover


@attrs.frozen(kw_only=True)
class Sink(Generic[In, R]):
    """The end of a pipeline: consumes items of type ``In``; the run returns an ``R``."""

    name: str | None = None
    buffer: int | Unbounded | None = None
    overflow: Overflow = Overflow.BLOCK
    on_error: OnError = FAIL
    retry: Retry | None = None
    timeout: float | None = None

    operator: ClassVar[str] = "sink"
    runs_user_code: ClassVar[bool] = False

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.CONTINUOUS

    @property
    def inline(self) -> bool:
        return False

    @property
    def has_policies(self) -> bool:
        """Whether a retry, a timeout or a non-failing error policy applies."""
        return _has_policies(self)

    @property
    def policies_need_task(self) -> bool:
        """Retries wait, timeouts cancel, channel dead letters send: none can be fused."""
        return _policies_need_task(self)

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        check_edge(self.buffer, self.overflow)
        _check_stage_policies(self)


@attrs.frozen(kw_only=True)
class Source(Generic[T]):
    """Where items come from. Sources start a flow (``trioflow.from_iterable`` ...)."""

    name: str | None = None
    #: How many items the source will emit, when the caller knows (``total=``): shown by
    #: progress displays; never checked against what it emits.
    total: int | None = None

    operator: ClassVar[str] = "source"

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.CONTINUOUS

    def expected_items(self) -> int | None:
        """How many items a run of this source emits, if known before it runs: ``total``
        if given, else what the source can tell (the ``len()`` of a sized iterable, the
        ``count`` of ``periodic``), else ``None``."""
        return self.total

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        check_optional_int("total", self.total, minimum=0)


# -- user callables ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FnStage(Stage[In, Out]):
    """A stage around one user callable, classified once at definition time."""

    fn: Callable[..., Any]
    kind: CallKind = attrs.field(default=CallKind.SYNC)
    #: where the calls run (``None``: inline on the Trio thread, as ``Inline()``)
    backend: Backend | None = None

    allowed_kinds: ClassVar[frozenset[CallKind]] = frozenset({CallKind.SYNC, CallKind.ASYNC})
    runs_user_code: ClassVar[bool] = True
    #: how the stage calls ``fn`` (checked against its signature at definition)
    call: ClassVar[str] = "fn(item)"
    #: the operator's name for ``fn`` in its signature (``key`` for ``distinct``)
    fn_argument: ClassVar[str] = "fn"
    #: whether a worker backend can run the calls (a per-item state between calls, like
    #: ``skip_while``'s or ``distinct``'s, would have to travel with every chunk: not yet)
    backend_ok: ClassVar[bool] = True
    #: whether the backend runs ``fn`` itself (False: ``fn`` runs on the Trio thread and
    #: sends calls of its own to the backend, as a ``parallel`` block does for its branches)
    backend_runs_fn: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        kind = classify(self.fn, self.fn_argument)
        if kind not in self.allowed_kinds:
            raise DefinitionTypeError(
                f"{self.fn_argument} of {self.operator} must be a plain or async function, got "
                f"a {kind.value} function {self.fn!r}"
            )
        check_call(self.fn, self.operator, self.call)
        object.__setattr__(self, "kind", kind)
        if self.backend is not None and self.backend_runs_fn:
            _check_backend(self)
        super().__attrs_post_init__()

    @property
    def runs_elsewhere(self) -> bool:
        """Whether the calls run on a worker backend (threads, processes, a cluster), off
        the Trio thread: never fused, always a head of its own (``_backend_head``)."""
        return _runs_elsewhere(self)

    @property
    def inline(self) -> bool:
        return (self.kind in (CallKind.SYNC, CallKind.SYNC_GEN) and not self.policies_need_task
                and not self.runs_elsewhere)


@attrs.frozen(kw_only=True)
class Adaptive:
    """A worker count that follows demand, between ``min`` and ``max`` workers.

    Pass it as ``concurrency=`` (``map``) or ``workers=`` (``persistent``). The rule: the
    pool starts with ``min`` workers; when an item is queued and no worker is idle, one
    worker is added, up to ``max``; a worker that has been idle for ``idle`` seconds
    (Trio's clock) exits while more than ``min`` remain. The current size is the stage's
    ``workers`` in ``statistics()``. The reorder window defaults to ``2 * max``.
    """

    min: int = 1
    max: int
    idle: float = 1.0

    def __attrs_post_init__(self) -> None:
        check_int("min", self.min, minimum=1)
        check_int("max", self.max, minimum=1)
        if self.max < self.min:
            raise DefinitionValueError(f"max must be >= min ({self.min}), got {self.max!r}")
        object.__setattr__(self, "idle", check_seconds("idle", self.idle))


def _is_context_manager(value: object) -> bool:
    """An instance (not a class) of a context manager: a resource built once, where a
    factory was wanted (``asynccontextmanager`` objects are callable, as decorators)."""
    return not isinstance(value, type) and (hasattr(value, "__aenter__") or hasattr(value, "__enter__"))


def check_workers(argument: str, value: object) -> int:
    """Validate an int or ``Adaptive`` worker count; return the maximum."""
    if isinstance(value, Adaptive):
        return value.max
    return check_int(argument, value, minimum=1)


@attrs.frozen(kw_only=True)
class MapStage(FnStage[In, Out]):
    concurrency: int | Adaptive = 1
    ordered: bool = True
    window: int | None = None
    #: keyed concurrency: items with equal ``key(item)`` keep their input order
    key: Callable[[Any], Any] | None = None
    #: with ``key``: how many items of one key may run at once
    per_key: int = 1

    operator: ClassVar[str] = "map"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        top = check_workers("concurrency", self.concurrency)
        check_bool("ordered", self.ordered)
        check_window(self.window, top)
        if not self.runs_elsewhere and top > 1 and self.kind is not CallKind.ASYNC:
            raise DefinitionValueError(
                f"concurrency={self.concurrency!r} needs an async fn: a sync fn {self.fn!r} "
                "would block the Trio thread (use concurrency=1, or an async function)"
            )
        if self.key is not None:
            if classify(self.key, "key") is not CallKind.SYNC:
                raise DefinitionTypeError(f"key must be a plain function, got {self.key!r}")
            check_call(self.key, self.operator, "key(item)")
        if self.kind is not CallKind.ASYNC and self.backend is None:
            # a plain function on the Trio thread: one call at a time, in input order. (With
            # a backend, even Inline(), the options stay valid: the backend may come from
            # configuration, as a concurrency of 1 may for an async fn.)
            inert = [("ordered=False", not self.ordered), ("window", self.window is not None),
                     ("key", self.key is not None)]
            for argument, given in inert:
                if given:
                    raise DefinitionValueError(
                        f"{argument} does nothing on the plain function {self.fn!r}: it runs one "
                        "call at a time on the Trio thread, in input order (give an async fn "
                        "with concurrency=N, or backend=Threads(...)/Processes(...))"
                    )
        check_int("per_key", self.per_key, minimum=1)
        if self.per_key > 1 and self.key is None:
            raise DefinitionValueError(f"per_key={self.per_key} needs key=")
        if self.per_key > top:
            raise DefinitionValueError(
                f"per_key must be <= concurrency ({top}), got {self.per_key!r}"
            )

    @property
    def max_concurrency(self) -> int:
        c = self.concurrency
        return c.max if isinstance(c, Adaptive) else c

    @property
    def pooled(self) -> bool:
        """Runs in a worker pool (more than one call at a time, or adaptive)."""
        return isinstance(self.concurrency, Adaptive) or self.concurrency > 1

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.POOLED if self.pooled else Lifecycle.CONTINUOUS

    @property
    def inline(self) -> bool:
        return self.kind is CallKind.SYNC and not self.policies_need_task and not self.runs_elsewhere


def _runs_elsewhere(spec: Any) -> bool:
    return (spec.backend is not None and not spec.backend.runs_inline
            and getattr(spec, "backend_runs_fn", True))


def _check_backend(spec: FnStage[Any, Any] | FnSink[Any] | ReduceSink[Any]) -> None:
    """A stage on a worker backend: a plain function (a generator function for flat_map),
    and what backends do not support yet refused by name."""
    backend = spec.backend
    if not isinstance(backend, Backend):
        raise DefinitionTypeError(
            f"backend must be Inline(), Threads(...) or Processes(...), got {backend!r}"
        )
    if backend.runs_inline:
        return
    if not getattr(spec, "backend_ok", True):
        raise DefinitionValueError(
            f"backend={backend!r} is not supported by {spec.operator}: its state between items "
            "lives on the Trio thread; use an inline or async function"
        )
    plain = (CallKind.SYNC, CallKind.SYNC_GEN) if isinstance(spec, FlatMapStage) else (CallKind.SYNC,)
    if spec.kind not in plain:
        raise DefinitionTypeError(
            f"backend={backend!r} runs a plain function in a worker: fn must be a plain (sync) "
            f"function, got a {spec.kind.value} function {spec.fn!r}"
        )
    folds = isinstance(spec, ScanStage | ReduceSink)  # a chunk folded in one call
    unsupported = [
        ("retry", folds and spec.retry is not None),
        ("timeout", folds and spec.timeout is not None),
        ("key", getattr(spec, "key", None) is not None),
        ("window", getattr(spec, "window", None) is not None),
        ("concurrency=Adaptive(...)", isinstance(getattr(spec, "concurrency", 1), Adaptive)),
    ]
    for argument, given in unsupported:
        if given:
            raise DefinitionValueError(
                f"{argument} is not supported with backend={backend!r} yet (got "
                f"{getattr(spec, argument.split('=')[0])!r}); use an inline or async stage"
            )


def check_concurrency(spec: PooledFnStage[Any, Any] | FnSink[Any]) -> None:
    """``concurrency=`` (and ``ordered=``) of a stage that may run its calls in a pool."""
    check_int("concurrency", spec.concurrency, minimum=1)
    ordered = check_bool("ordered", getattr(spec, "ordered", True))
    if spec.runs_elsewhere:
        return  # the backend runs ``concurrency`` calls of a plain function at once
    if spec.concurrency > 1 and spec.kind not in (CallKind.ASYNC, CallKind.ASYNC_GEN):
        raise DefinitionValueError(
            f"concurrency={spec.concurrency!r} needs an async fn: a {spec.kind.value} fn "
            f"{spec.fn!r} would block the Trio thread (use concurrency=1, or an async function)"
        )
    if not ordered and spec.concurrency == 1:
        raise DefinitionValueError(
            "ordered=False does nothing with concurrency=1 (one call at a time keeps input "
            "order): give concurrency > 1 or leave ordered=True"
        )


class _Pooling:
    """``pooled`` and ``lifecycle`` of a stage or sink that takes ``concurrency=``."""

    __slots__ = ()
    concurrency: int

    @property
    def pooled(self) -> bool:
        """Runs in a worker pool (more than one call at a time, on the Trio thread)."""
        return self.concurrency > 1 and not _runs_elsewhere(self)

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.POOLED if self.pooled else Lifecycle.CONTINUOUS


@attrs.frozen(kw_only=True)
class PooledFnStage(_Pooling, FnStage[In, Out]):
    """An ``FnStage`` that may run ``concurrency`` async calls at once, in the worker pool
    of ``map(concurrency=N)`` (``filter``, ``tap``, ``flat_map``)."""

    concurrency: int = 1
    ordered: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_concurrency(self)


@attrs.frozen(kw_only=True)
class FilterStage(PooledFnStage[T, T]):
    operator: ClassVar[str] = "filter"


#: How many outputs of one item an ordered, concurrent ``flat_map`` of an async generator
#: holds while an earlier item is still being handed on (``inner_buffer=``'s default).
INNER_BUFFER = 64


@attrs.frozen(kw_only=True)
class FlatMapStage(PooledFnStage[In, Out]):
    #: ordered, concurrent async generators: outputs held per item before its turn
    inner_buffer: int | None = None

    operator: ClassVar[str] = "flat_map"
    allowed_kinds: ClassVar[frozenset[CallKind]] = frozenset(CallKind)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.kind in (CallKind.SYNC, CallKind.ASYNC) and returns_async_iterable(self.fn):
            raise DefinitionTypeError(
                f"fn of flat_map is a {self.kind.value} function that returns an async iterable "
                f"({self.fn!r}), but its result is iterated with `for`, not `async for`: write fn "
                "as an async generator function (async def with yield; `async for x in it: "
                "yield x` hands on another async iterable)"
            )
        if self.inner_buffer is not None:
            check_int("inner_buffer", self.inner_buffer, minimum=1)
            if not (self.kind is CallKind.ASYNC_GEN and self.pooled and self.ordered):
                raise DefinitionValueError(
                    f"inner_buffer={self.inner_buffer!r} applies only to an async generator fn "
                    "with concurrency > 1 and ordered=True (it bounds the outputs an item "
                    "holds before its turn)"
                )

    @property
    def inner_limit(self) -> int:
        return INNER_BUFFER if self.inner_buffer is None else self.inner_buffer


@attrs.frozen(kw_only=True)
class TapStage(PooledFnStage[T, T]):
    operator: ClassVar[str] = "tap"


@attrs.frozen(kw_only=True)
class TakeWhileStage(FnStage[T, T]):
    operator: ClassVar[str] = "take_while"


@attrs.frozen(kw_only=True)
class SkipWhileStage(FnStage[T, T]):
    operator: ClassVar[str] = "skip_while"
    backend_ok: ClassVar[bool] = False


def identity(item: T) -> T:
    """The default key of ``distinct``: the item itself."""
    return item


@attrs.frozen(kw_only=True)
class DistinctStage(FnStage[T, T]):
    """``fn`` is the key function (``identity`` by default)."""

    #: remember at most this many keys, the most recently seen (``None``: every key)
    max_keys: int | None = None

    operator: ClassVar[str] = "distinct"
    fn_argument: ClassVar[str] = "key"
    backend_ok: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_optional_int("max_keys", self.max_keys, minimum=1)


@attrs.frozen(kw_only=True)
class DistinctUntilChangedStage(FnStage[T, T]):
    """``fn`` is the key function (``identity`` by default)."""

    operator: ClassVar[str] = "distinct_until_changed"
    fn_argument: ClassVar[str] = "key"
    backend_ok: ClassVar[bool] = False


@attrs.frozen(kw_only=True)
class ScanStage(FnStage[In, Out]):
    initial: Any = None
    #: keyed scan: one accumulator per ``key(item)``, each starting from ``initial``; the
    #: stage then emits ``(key, acc)``
    key: Callable[[Any], Any] | None = None
    #: the items are ``Tracked`` (a run with acknowledgements): a keyed output is re-wrapped
    tracked: bool = False

    operator: ClassVar[str] = "scan"
    call: ClassVar[str] = "fn(acc, item)"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.key is not None:
            if classify(self.key, "key") is not CallKind.SYNC:
                raise DefinitionTypeError(f"key of scan must be a plain function, got {self.key!r}")
            check_call(self.key, self.operator, "key(item)")


@attrs.frozen(kw_only=True)
class CountStage(Stage[T, T]):
    """A fused stage that counts items (``take``, ``skip``, ``take_last``)."""

    count: int

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_int("count", self.count, minimum=0)

    @property
    def inline(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class TakeStage(CountStage[T]):
    operator: ClassVar[str] = "take"


@attrs.frozen(kw_only=True)
class SkipStage(CountStage[T]):
    operator: ClassVar[str] = "skip"


@attrs.frozen(kw_only=True)
class TakeLastStage(CountStage[T]):
    operator: ClassVar[str] = "take_last"


@attrs.frozen(kw_only=True)
class StartWithStage(Stage[T, T]):
    items: tuple[Any, ...]

    operator: ClassVar[str] = "start_with"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.items, tuple):
            raise DefinitionTypeError(f"items must be a tuple, got {self.items!r}")

    @property
    def inline(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class EnumerateStage(Stage[T, tuple[int, T]]):
    start: int = 0

    operator: ClassVar[str] = "enumerate"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if isinstance(self.start, bool) or not isinstance(self.start, int):
            raise DefinitionTypeError(f"start must be an int, got {self.start!r}")

    @property
    def inline(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class BatchStage(Stage[T, list[T]]):
    size: int
    timeout: float | None = None
    #: items are ``Tracked`` (a run whose source asks for acknowledgements; set by planning)
    tracked: bool = False

    operator: ClassVar[str] = "batch"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        check_int("size", self.size, minimum=1)
        if self.timeout is not None:
            object.__setattr__(self, "timeout", check_seconds("timeout", self.timeout))

    @property
    def inline(self) -> bool:
        return self.timeout is None


@attrs.frozen(kw_only=True)
class PersistentStage(Stage[In, Out]):
    fn: Callable[..., Any]
    resource: Callable[[], AbstractAsyncContextManager[Any]]
    workers: int | Adaptive = 1
    #: supervision: restart a failed worker (rebuilding its resource) instead of failing
    restart: Restart | None = None
    ordered: bool = True
    window: int | None = None
    kind: CallKind = attrs.field(default=CallKind.ASYNC)

    operator: ClassVar[str] = "persistent"
    runs_user_code: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        kind = classify(self.fn, "fn")
        if kind is not CallKind.ASYNC:
            raise DefinitionTypeError(
                f"fn of persistent must be an async function (resource, item) -> result, "
                f"got {self.fn!r}"
            )
        object.__setattr__(self, "kind", kind)
        check_call(self.fn, self.operator, "fn(resource, item)")
        if _is_context_manager(self.resource):
            raise DefinitionTypeError(
                f"resource must be a factory that builds an async context manager (each worker "
                f"calls it once), got the context manager {self.resource!r} itself: pass the "
                f"function, resource=open_thing, not resource=open_thing()"
            )
        if not callable(self.resource):
            raise DefinitionTypeError(
                f"resource must be a callable returning an async context manager, "
                f"got {self.resource!r}"
            )
        check_call(self.resource, self.operator, "resource()")
        top = check_workers("workers", self.workers)
        check_bool("ordered", self.ordered)
        check_window(self.window, top)
        if self.restart is not None and not isinstance(self.restart, Restart):
            raise DefinitionTypeError(f"restart must be a Restart(...) or None, got {self.restart!r}")

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.PERSISTENT


@attrs.frozen(kw_only=True)
class OnDemandStage(Stage[In, Out]):
    factory: Callable[[], Any]
    limit: int = 1
    ordered: bool = True
    window: int | None = None

    operator: ClassVar[str] = "on_demand"
    runs_user_code: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not callable(self.factory):
            raise DefinitionTypeError(f"factory must be callable, got {self.factory!r}")
        check_call(self.factory, self.operator, "factory()")
        check_int("limit", self.limit, minimum=1)
        check_bool("ordered", self.ordered)
        check_window(self.window, self.limit)

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.ON_DEMAND


@attrs.frozen(kw_only=True)
class ContinuousStage(Stage[In, Out]):
    fn: Callable[..., Any]

    operator: ClassVar[str] = "continuous"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if classify(self.fn, "fn") is not CallKind.ASYNC:
            raise DefinitionTypeError(
                f"fn of continuous must be an async function (items, emit) -> None, got {self.fn!r}"
            )
        check_call(self.fn, self.operator, "fn(items, emit)")


# -- sinks --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FnSink(_Pooling, Sink[In, None]):
    fn: Callable[..., Any]
    kind: CallKind = attrs.field(default=CallKind.SYNC)
    #: where the calls run (``None``: inline on the Trio thread)
    backend: Backend | None = None
    #: how many calls may run at once (async fn: a worker pool; a backend: calls in flight)
    concurrency: int = 1

    operator: ClassVar[str] = "sink"
    runs_user_code: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        kind = classify(self.fn, "fn")
        if kind not in (CallKind.SYNC, CallKind.ASYNC):
            raise DefinitionTypeError(
                f"fn of sink must be a plain or async function, got a {kind.value} function"
            )
        check_call(self.fn, self.operator, "fn(item)")
        object.__setattr__(self, "kind", kind)
        if self.backend is not None:
            _check_backend(self)
        super().__attrs_post_init__()
        check_concurrency(self)

    @property
    def runs_elsewhere(self) -> bool:
        """Whether the calls run on a worker backend, off the Trio thread."""
        return _runs_elsewhere(self)

    @property
    def inline(self) -> bool:
        return self.kind is CallKind.SYNC and not self.policies_need_task and not self.runs_elsewhere


@attrs.frozen(kw_only=True)
class ListSink(Sink[T, list[T]]):
    #: items are ``Tracked`` (a run whose source asks for acknowledgements; set by planning)
    tracked: bool = False

    operator: ClassVar[str] = "to_list"

    @property
    def inline(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class DiscardSink(Sink[Any, None]):
    """What ``Flow.run`` ends with: counts the items and drops them."""

    #: items are ``Tracked`` (a run whose source asks for acknowledgements; set by planning)
    tracked: bool = False

    operator: ClassVar[str] = "discard"

    @property
    def inline(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class ReduceSink(Sink[In, Any]):
    fn: Callable[..., Any]
    initial: Any
    kind: CallKind = attrs.field(default=CallKind.SYNC)
    #: where the calls run (``None``: inline on the Trio thread)
    backend: Backend | None = None

    operator: ClassVar[str] = "reduce"
    runs_user_code: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        kind = classify(self.fn, "fn")
        if kind not in (CallKind.SYNC, CallKind.ASYNC):
            raise DefinitionTypeError(f"fn of reduce must be a plain or async function, got {kind.value}")
        check_call(self.fn, self.operator, "fn(acc, item)")
        object.__setattr__(self, "kind", kind)
        if self.backend is not None:
            _check_backend(self)
        super().__attrs_post_init__()

    @property
    def runs_elsewhere(self) -> bool:
        """Whether the calls run on a worker backend, off the Trio thread."""
        return _runs_elsewhere(self)

    @property
    def inline(self) -> bool:
        return self.kind is CallKind.SYNC and not self.policies_need_task and not self.runs_elsewhere


# -- sources ------------------------------------------------------------------------------------


def _check_on_ack(spec: Any) -> None:
    if spec.on_ack is None:
        return
    if classify(spec.on_ack, "on_ack") not in (CallKind.SYNC, CallKind.ASYNC):
        raise DefinitionTypeError(
            f"on_ack of {spec.operator} must be a function taking a list of Ack, got {spec.on_ack!r}"
        )
    check_call(spec.on_ack, spec.operator, "on_ack(acks)", argument="on_ack")


class OneShot:
    """Whether a run has taken a one-shot source (an iterator, a channel) of a spec: the
    one mutable part of a frozen source spec, so that a second run of the same flow fails
    instead of finding the source empty."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = False

    def take(self) -> bool:
        """Mark the source taken; False if a run had taken it before."""
        first = not self.taken
        self.taken = True
        return first


@attrs.frozen(kw_only=True)
class IterableSource(Source[T]):
    iterable: Iterable[T]
    #: called with batches of ``Ack`` once items are done (``None``: no acknowledgements)
    on_ack: Callable[[list[Any]], Any] | None = None
    once: OneShot = attrs.field(factory=OneShot, init=False, repr=False, eq=False)

    operator: ClassVar[str] = "from_iterable"

    def expected_items(self) -> int | None:
        if self.total is None and isinstance(self.iterable, Sized):
            return len(self.iterable)
        return self.total

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.iterable, Iterable):
            raise DefinitionTypeError(f"iterable must be iterable, got {self.iterable!r}")
        _check_on_ack(self)


@attrs.frozen(kw_only=True)
class AsyncIterableSource(Source[T]):
    iterable: AsyncIterable[T]
    once: OneShot = attrs.field(factory=OneShot, init=False, repr=False, eq=False)

    operator: ClassVar[str] = "from_async_iterable"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.iterable, AsyncIterable):
            raise DefinitionTypeError(f"iterable must be an async iterable, got {self.iterable!r}")


@attrs.frozen(kw_only=True)
class ChannelSource(Source[T]):
    channel: trio.abc.ReceiveChannel[T]
    once: OneShot = attrs.field(factory=OneShot, init=False, repr=False, eq=False)

    operator: ClassVar[str] = "from_channel"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.channel, trio.abc.ReceiveChannel):
            raise DefinitionTypeError(f"channel must be a trio ReceiveChannel, got {self.channel!r}")


@attrs.frozen(kw_only=True)
class PeriodicSource(Source[int]):
    interval: float
    count: int | None = None

    operator: ClassVar[str] = "periodic"

    def expected_items(self) -> int | None:
        return self.count if self.total is None else self.total

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        object.__setattr__(self, "interval", check_seconds("interval", self.interval))
        check_optional_int("count", self.count, minimum=0)


@attrs.frozen(kw_only=True)
class ConcatSource(Source[T]):
    """``concat``: the flows (``Flow`` objects, checked by the operator), run one after
    another as nested runs."""

    flows: tuple[Any, ...]

    operator: ClassVar[str] = "concat"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.flows, tuple) or not self.flows:
            raise DefinitionValueError(f"flows: concat needs at least one flow, got {self.flows!r}")


@attrs.frozen(kw_only=True)
class TaskSource(Source[T]):
    fn: Callable[..., Any]
    wants_status: bool = False
    #: supervision: call ``fn`` again after it failed, instead of failing the run
    restart: Restart | None = None
    #: called with batches of ``Ack`` once items are done (``None``: no acknowledgements)
    on_ack: Callable[[list[Any]], Any] | None = None

    operator: ClassVar[str] = "source"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if classify(self.fn, "fn") is not CallKind.ASYNC:
            raise DefinitionTypeError(
                f"fn of source must be an async function (emit) -> None, got {self.fn!r}"
            )
        from ._callables import accepts_keyword

        object.__setattr__(self, "wants_status", accepts_keyword(self.fn, "task_status"))
        if self.wants_status:
            check_call(self.fn, self.operator, "fn(emit, task_status=...)", keywords=("task_status",))
        else:
            check_call(self.fn, self.operator, "fn(emit)")
        if self.restart is not None and not isinstance(self.restart, Restart):
            raise DefinitionTypeError(f"restart must be a Restart(...) or None, got {self.restart!r}")
        _check_on_ack(self)


class _Dropped:
    """The value of an envelope whose item a branch filtered out (a tombstone)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<dropped>"


#: Branches never drop envelopes: a filtered item travels on as ``(seq, DROPPED)``, so
#: every branch hands on exactly one envelope per item, in order. The join can then read
#: its inputs in lockstep with bounded buffers (waiting for an item a branch filtered
#: would deadlock a diamond whose other branches are full), and the ordered merge never
#: waits for a missing number.
DROPPED = _Dropped()


# -- junctions: fan-out and fan-in nodes of a graph ------------------------------------------


@attrs.frozen(kw_only=True)
class Junction:
    """A node of a ``Graph`` that splits or joins streams (no user code per item, except a
    route's key function). Built by ``Graph.broadcast``/``route``/``balance``/``merge``/``zip``."""

    name: str | None = None
    #: Capacity, in items, of the edge(s) feeding a fan-in junction (merge, zip).
    buffer: int | Unbounded | None = None
    overflow: Overflow = Overflow.BLOCK

    operator: ClassVar[str] = "junction"
    #: True for fan-out junctions (one input, several consumers).
    fan_out: ClassVar[bool] = False

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle.CONTINUOUS

    @property
    def inline(self) -> bool:
        return False

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        check_edge(self.buffer, self.overflow)


@attrs.frozen(kw_only=True)
class BroadcastSpec(Junction):
    #: items are ``Tracked`` (a run whose source asks for acknowledgements; set by planning)
    tracked: bool = False

    operator: ClassVar[str] = "broadcast"
    fan_out: ClassVar[bool] = True


@attrs.frozen(kw_only=True)
class BalanceSpec(Junction):
    operator: ClassVar[str] = "balance"
    fan_out: ClassVar[bool] = True


@attrs.frozen(kw_only=True)
class RouteSpec(Junction):
    key: Callable[[Any], Any]

    operator: ClassVar[str] = "route"
    fan_out: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if classify(self.key, "key") is not CallKind.SYNC:
            raise DefinitionTypeError(f"key of route must be a plain function, got {self.key!r}")
        check_call(self.key, self.operator, "key(item)")


@attrs.frozen(kw_only=True)
class FanIn(Junction):
    """A junction with several inputs: it heads a segment of its own."""

    #: the least number of inputs
    min_inputs: ClassVar[int] = 2


@attrs.frozen(kw_only=True)
class MergeSpec(FanIn):
    operator: ClassVar[str] = "merge"
    min_inputs: ClassVar[int] = 1


@attrs.frozen(kw_only=True)
class ZipSpec(FanIn):
    #: items are ``Tracked`` (a run whose source asks for acknowledgements; set by planning)
    tracked: bool = False

    operator: ClassVar[str] = "zip"


@attrs.frozen(kw_only=True)
class JoinSpec(FanIn):
    """Reunites ``(seq, value)`` envelopes from order-keeping branches: emits the tuple of
    values (or a dict, with ``keys``) of every ``seq``; an item that a branch filtered or
    skipped arrives as a tombstone and is left out of the join (an inner join)."""

    keys: tuple[str, ...] | None = None

    operator: ClassVar[str] = "join"
    min_inputs: ClassVar[int] = 1


@attrs.frozen(kw_only=True)
class OrderedMergeSpec(FanIn):
    """Merges ``(seq, value)`` envelopes from order-keeping inputs back into ``seq`` order
    and emits the values."""

    operator: ClassVar[str] = "ordered_merge"
    min_inputs: ClassVar[int] = 1
