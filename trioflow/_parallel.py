"""Parallel blocks: several functions on one item, at once, under one policy.

Theory of operation. A block is two layers:

* a *pure* state machine, :func:`decide`: given the policy, the number of functions and
  the outcomes that have arrived so far (in any order), it says ``CONTINUE``, ``SUCCEED``
  or ``FAIL``. It knows nothing about Trio, so Hypothesis checks it against a brute-force
  model. Its decisions are *stable*: once it says SUCCEED or FAIL, no further arrival can
  change the answer, which is what makes it safe to ignore whatever arrives after it;
* the runtime, :class:`_Block`: for each item it opens one cancel scope (carrying the
  block's deadline, if any) around one nursery, starts one task per function, and feeds
  each outcome to ``decide`` *synchronously*, in the task that produced it, so arrivals are
  totally ordered and no checkpoint separates a decision from the ``cancel()`` it causes.
  Once the scope is cancelled (decided, or the deadline struck) every later arrival is
  discarded, including a function that swallowed ``Cancelled`` and returned anyway: the
  outcomes of a block are frozen at the moment it was decided. The nursery guarantees that
  no branch task outlives the block. If the deadline struck first, the functions that had
  not finished count as failed with ``trio.TooSlowError`` and ``decide`` is asked once more
  (with everything finished it never says CONTINUE).

``parallel`` wraps the block in a :class:`ParallelStage`, a ``MapStage`` whose only
difference is its operator name, so the planner names it ``parallel`` (``parallel_2`` ...)
and the runner drives it like any async ``map``, with ``concurrency``/``ordered``.

With a worker ``backend`` (``Threads``/``Processes``), the block still runs on the Trio
thread, and only each branch's call goes to the backend: the block opens the backend for
the item and each branch task awaits ``runner.call_chunk(fn, [item])``, a checkpoint
like any other, so a decision or the deadline cancels it the way the backend documents
(a thread is abandoned, a process job is killed). The stage records the backend as its
``backend`` (``backend_runs_fn`` False: it is not run *by* the backend, so it is neither
planned nor checked as a stage on a worker backend).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar, overload

import attrs
import outcome
import trio

from ._backends import Backend, BackendRunner, Dask
from ._callables import CallKind, check_call, classify
from ._errors import DefinitionTypeError, DefinitionValueError, TrioflowError
from ._policies import FAIL, OnError, Retry
from ._stage import MapStage, Stage, check_int, check_seconds

__all__ = [
    "AllOrNothing",
    "AtLeast",
    "BestEffort",
    "Decision",
    "Error",
    "FirstK",
    "Outcome",
    "ParallelBlockError",
    "ParallelPolicy",
    "ParallelStage",
    "decide",
    "Value",
    "parallel",
]

#: What ``BestEffort``/``AtLeast``/``FirstK`` results hold, re-exported as ``trioflow.Outcome``,
#: ``trioflow.Value`` and ``trioflow.Error`` so a user unwraps them without importing
#: ``outcome``: ``isinstance(o, tf.Value)`` then ``o.value``; ``isinstance(o, tf.Error)`` then
#: ``o.error``; or ``o.unwrap()``, which returns the value or raises the error.
Outcome = outcome.Outcome
Value = outcome.Value
Error = outcome.Error

T = TypeVar("T")

#: What a block reports per function under the outcome-returning policies.
MaybeOutcome = outcome.Outcome[Any] | None


# -- policies: plain, frozen data ----------------------------------------------------------------


@attrs.frozen
class ParallelPolicy:
    """Base of the policies of :func:`trioflow.parallel` (``AllOrNothing``, ``BestEffort``,
    ``AtLeast``, ``FirstK``); a policy is plain frozen data, validated when it is built."""


@attrs.frozen
class AllOrNothing(ParallelPolicy):
    """Every function must succeed (the default policy).

    The first failure cancels the other functions and fails the item with the original
    exception (noted with the branch). Result: the tuple of values (a dict for the named
    form).
    """


@attrs.frozen
class BestEffort(ParallelPolicy):
    """Every function runs to completion (or until the block's timeout); the item never
    fails. Result: one ``outcome.Value``/``outcome.Error`` per function, never ``None``
    (a function stopped by the timeout is an ``Error(trio.TooSlowError)``)."""


@attrs.frozen
class AtLeast(ParallelPolicy):
    """At least ``k`` functions must succeed; every function otherwise runs to completion.

    As soon as ``k`` successes can no longer be reached, the others are cancelled and the
    item fails with :class:`ParallelBlockError`. Result on success: one outcome per
    function, never ``None`` (all of them finished, or timed out as
    ``Error(trio.TooSlowError)``).
    """

    k: int

    def __attrs_post_init__(self) -> None:
        check_int("k of AtLeast", self.k, minimum=1)


@attrs.frozen
class FirstK(ParallelPolicy):
    """Succeed as soon as ``k`` functions succeeded, cancelling the rest.

    Result: one entry per function in declaration order: ``outcome.Value`` for the ``k``
    successes, ``outcome.Error`` for failures that arrived before, ``None`` for functions
    cancelled (or whose result arrived after the decision). Exactly ``k`` entries are
    ``Value``. Fails with :class:`ParallelBlockError` as soon as ``k`` successes can no
    longer be reached (or at the timeout).
    """

    k: int

    def __attrs_post_init__(self) -> None:
        check_int("k of FirstK", self.k, minimum=1)


_POLICIES = (AllOrNothing, BestEffort, AtLeast, FirstK)


class ParallelBlockError(TrioflowError):
    """A parallel block under ``AtLeast``/``FirstK`` could not reach ``k`` successes.

    ``outcomes`` holds what each function gave, in declaration order (a dict for the named
    form): ``outcome.Value``/``outcome.Error``, or ``None`` for a function that was
    cancelled once the block had failed. ``__cause__`` is the first failure that arrived.
    """

    def __init__(
        self, message: str, outcomes: tuple[MaybeOutcome, ...] | dict[str, MaybeOutcome]
    ) -> None:
        super().__init__(message)
        self.outcomes = outcomes


# -- the pure state machine --------------------------------------------------------------------


class Decision(enum.Enum):
    """What a block does after an arrival."""

    CONTINUE = "continue"
    SUCCEED = "succeed"
    FAIL = "fail"


def decide_counts(policy: ParallelPolicy, n: int, succeeded: int, failed: int) -> Decision:
    """:func:`decide` on counts: ``succeeded + failed`` of ``n`` functions have finished."""
    finished = succeeded + failed
    if isinstance(policy, AllOrNothing):
        if failed:
            return Decision.FAIL
        return Decision.SUCCEED if finished == n else Decision.CONTINUE
    if isinstance(policy, BestEffort):
        return Decision.SUCCEED if finished == n else Decision.CONTINUE
    if isinstance(policy, AtLeast | FirstK):
        if succeeded + (n - finished) < policy.k:  # even if every other one succeeds
            return Decision.FAIL
        if isinstance(policy, FirstK) and succeeded >= policy.k:
            return Decision.SUCCEED
        return Decision.SUCCEED if finished == n else Decision.CONTINUE
    raise TypeError(f"not a parallel policy: {policy!r}")


def decide(policy: ParallelPolicy, n: int, outcomes: Iterable[outcome.Outcome[Any]]) -> Decision:
    """Whether a block of ``n`` functions under ``policy`` is decided, given the outcomes
    of the functions that have finished so far (any order). Pure: no Trio involved.

    The answer is stable: once SUCCEED or FAIL, more outcomes never change it. With all
    ``n`` finished it is never CONTINUE.
    """
    succeeded = failed = 0
    for o in outcomes:
        if isinstance(o, outcome.Value):
            succeeded += 1
        else:
            failed += 1
    if succeeded + failed > n:
        raise ValueError(f"{succeeded + failed} outcomes for a block of {n} functions")
    return decide_counts(policy, n, succeeded, failed)


# -- the runtime -------------------------------------------------------------------------------


@attrs.frozen
class _Branch:
    label: str
    fn: Callable[[Any], Any]
    is_async: bool


def _label(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


@attrs.frozen
class _Block:
    """The per-item function of a parallel stage (what its ``MapStage`` calls)."""

    branches: tuple[_Branch, ...]
    keys: tuple[str, ...] | None  # the names, for the named form
    policy: ParallelPolicy
    timeout: float | None
    #: the worker backend the branches' calls run on (None: on the Trio thread)
    backend: Backend | None = None
    #: the stage's name, as the backend's errors give it
    stage: str = "parallel"

    def _shape(self, entries: Sequence[Any]) -> Any:
        if self.keys is None:
            return tuple(entries)
        return dict(zip(self.keys, entries, strict=True))

    async def __call__(self, item: Any) -> Any:
        if self.backend is None:
            return await self._run(item, None)
        async with self.backend.open(self.stage) as runner:
            return await self._run(item, runner)

    async def _run(self, item: Any, runner: BackendRunner | None) -> Any:
        policy = self.policy
        branches = self.branches
        n = len(branches)
        slots: list[MaybeOutcome] = [None] * n
        errors: list[BaseException] = []  # in arrival order
        counts = [0, 0]  # succeeded, failed
        decision = Decision.CONTINUE

        def arrive(index: int, result: outcome.Outcome[Any]) -> None:
            nonlocal decision
            slots[index] = result
            if isinstance(result, outcome.Error):
                result.error.add_note(f"trioflow: raised in parallel branch {branches[index].label}")
                errors.append(result.error)
                counts[1] += 1
            else:
                counts[0] += 1
            decision = decide_counts(policy, n, counts[0], counts[1])
            if decision is not Decision.CONTINUE:
                scope.cancel()

        async def run(index: int, branch: _Branch) -> None:
            if scope.cancel_called:  # decided before this task started: a sync fn must not run
                return
            try:
                if runner is not None:  # one call of one item, on the backend
                    (out,) = await runner.call_chunk(branch.fn, [item])
                    value = out.unwrap()
                elif branch.is_async:
                    value = await branch.fn(item)
                else:
                    value = branch.fn(item)
            except Exception as exc:
                result: outcome.Outcome[Any] = outcome.Error(exc)
            else:
                result = outcome.Value(value)
            # Finished after the decision or the deadline (a fn that swallowed Cancelled, or
            # one that completed in the same tick): the block's outcomes are already frozen.
            if not scope.cancel_called:
                arrive(index, result)

        deadline = trio.current_time() + self.timeout if self.timeout is not None else float("inf")
        with trio.CancelScope(deadline=deadline) as scope:
            async with trio.open_nursery() as nursery:
                for index, branch in enumerate(branches):
                    nursery.start_soon(run, index, branch)

        if decision is Decision.CONTINUE:
            # Only the deadline ends a block undecided (an outer cancellation propagates).
            for index, slot in enumerate(slots):
                if slot is None:
                    exc = trio.TooSlowError(
                        f"parallel branch {branches[index].label} did not finish within "
                        f"{self.timeout} s"
                    )
                    arrive(index, outcome.Error(exc))
            assert decision is not Decision.CONTINUE

        if decision is Decision.SUCCEED:
            if isinstance(policy, AllOrNothing):
                return self._shape([o.unwrap() for o in slots if o is not None])
            return self._shape(slots)
        if isinstance(policy, AllOrNothing):
            raise errors[0]
        assert isinstance(policy, AtLeast | FirstK)
        succeeded, failed = counts
        cancelled = n - succeeded - failed
        raise ParallelBlockError(
            f"parallel block needed {policy.k} of {n} functions to succeed: {succeeded} "
            f"succeeded, {failed} failed, {cancelled} cancelled",
            self._shape(slots),
        ) from errors[0]


@attrs.frozen(kw_only=True)
class ParallelStage(MapStage[T, Any]):
    """A ``MapStage`` running a parallel block per item; named ``parallel`` in plans. Its
    ``backend`` is where the block sends its branches' calls; the block itself runs on
    the Trio thread."""

    operator: ClassVar[str] = "parallel"
    backend_runs_fn: ClassVar[bool] = False


# -- the operator ------------------------------------------------------------------------------

_DEFAULT_POLICY = AllOrNothing()


@overload
def parallel(
    fn: Callable[[T], object],
    /,
    *fns: Callable[[T], object],
    policy: ParallelPolicy = ...,
    timeout: float | None = None,
    backend: Backend | None = None,
    concurrency: int = 1,
    ordered: bool = True,
    name: str | None = None,
    buffer: int | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
) -> Stage[T, tuple[Any, ...]]: ...
@overload
def parallel(
    *,
    policy: ParallelPolicy = ...,
    timeout: float | None = None,
    backend: Backend | None = None,
    concurrency: int = 1,
    ordered: bool = True,
    name: str | None = None,
    buffer: int | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    **fns: Callable[[T], object],
) -> Stage[T, dict[str, Any]]: ...
def parallel(
    *fns: Callable[[Any], object],
    policy: ParallelPolicy = _DEFAULT_POLICY,
    timeout: float | None = None,
    backend: Backend | None = None,
    concurrency: int = 1,
    ordered: bool = True,
    name: str | None = None,
    buffer: int | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
    **named: Callable[[Any], object],
) -> Stage[Any, Any]:
    """Run several functions on each item at once; combine their results under ``policy``.

    ``parallel(f1, f2, f3)`` emits ``(f1(x), f2(x), f3(x))``; the named form
    ``parallel(enrich=f1, score=f2)`` emits ``{"enrich": ..., "score": ...}`` in declaration
    order (the keywords ``policy``, ``timeout``, ``backend``, ``concurrency``, ``ordered``,
    ``name``, ``buffer``, ``on_error`` and ``retry`` cannot name a function). Each function
    may be plain or async; all of an item's functions run as tasks of one child nursery
    under one cancel scope, so a cancelled function is really stopped (no task outlives its
    item). A plain function is called on the Trio thread and cannot be interrupted once
    started.

    ``backend=Threads(...)`` or ``Processes(...)`` runs each function's call (plain
    functions only) on that backend: one call of one item per function, the block's
    tasks awaiting them, so the policy and the timeout behave as above and a cancelled
    call is given up the way the backend documents (a thread is abandoned, its result
    discarded; a process job is killed with its worker). The backend is opened per item:
    its ``limit`` bounds one item's calls; ``Processes()`` (``limit=None``) shares
    trio-parallel's limiter, one process per CPU, across every item. A call that fails as
    a whole (``BackendError``: the function or item cannot be pickled, the worker died)
    is that function's failure, and the policy decides. ``Dask`` is refused (a cluster is
    opened per run, not per item).

    Policies (``trioflow.AllOrNothing()`` is the default):

    * ``AllOrNothing()``: the tuple of values; the first failure cancels the others;
    * ``BestEffort()``: one ``Value``/``Error`` per function (``trioflow.Value`` and
      ``trioflow.Error`` are ``outcome``'s classes: ``o.unwrap()``, ``o.value``, ``o.error``);
    * ``AtLeast(k)``: one outcome per function (none is ``None``), if at least ``k`` succeed;
    * ``FirstK(k)``: returns once ``k`` succeeded: ``Value`` for them, ``Error`` for
      failures seen before, ``None`` for the functions cancelled.

    ``timeout`` (seconds, per item) cancels the functions still running, which then count
    as failed with ``trio.TooSlowError``, and the policy decides. ``concurrency`` items are
    processed at once (each with all its functions), as in ``map``.

    * emits: one tuple (or dict) per item, in input order unless ``ordered=False``;
    * backpressure: as ``map(concurrency=...)``: no new item is started while
      ``concurrency`` blocks run, nor while the next edge is full;
    * completes: when the input completed and every block finished and was emitted;
    * cancelled: by the run or when downstream stops; every running function is cancelled
      (on a backend: as the backend documents);
    * on error: ``AllOrNothing`` fails the run with the first failure's original exception,
      noted with its branch (so ``except* ValueError`` works); ``AtLeast``/``FirstK`` fail
      it with ``ParallelBlockError`` (``.outcomes``, ``__cause__`` the first failure) once
      ``k`` successes are out of reach; ``BestEffort`` never fails an item. A failed
      block then follows the stage's ``on_error``/``retry`` (a retry runs the whole block
      again), like any ``map``.
    """
    if fns and named:
        raise DefinitionTypeError(
            "parallel takes its functions either all positional or all by keyword, not both "
            f"(got {len(fns)} positional and {sorted(named)})"
        )
    if not fns and not named:
        raise DefinitionTypeError("parallel needs at least one function")
    if isinstance(policy, type) and issubclass(policy, ParallelPolicy):
        raise DefinitionTypeError(
            f"policy must be a policy instance such as {policy.__name__}(...), got the class"
        )
    if not isinstance(policy, _POLICIES):
        raise DefinitionTypeError(
            f"policy must be AllOrNothing(), BestEffort(), AtLeast(k) or FirstK(k), got {policy!r}"
        )
    if backend is not None:
        backend = _check_backend(backend)
    branches = []
    keys: tuple[str, ...] | None
    if named:
        keys = tuple(named)
        for key, fn in named.items():
            branches.append(_branch(fn, repr(key), f"function {key!r} of parallel", backend))
    else:
        keys = None
        for index, fn in enumerate(fns):
            branches.append(_branch(fn, f"#{index} {_label(fn)}", f"function #{index} of parallel",
                                    backend))
    if isinstance(policy, AtLeast | FirstK) and policy.k > len(branches):
        raise DefinitionValueError(
            f"policy {policy!r} needs k <= the number of functions ({len(branches)})"
        )
    if timeout is not None:
        timeout = check_seconds("timeout", timeout)
    block = _Block(branches=tuple(branches), keys=keys, policy=policy, timeout=timeout,
                   backend=backend, stage=name or "parallel")
    return ParallelStage(fn=block, concurrency=concurrency, ordered=ordered, window=None,
                         name=name, buffer=buffer, on_error=on_error, retry=retry,
                         backend=backend)


def _check_backend(backend: object) -> Backend | None:
    """``backend=`` of ``parallel``: a worker backend the branches' calls can be sent to,
    or None for one that runs them on the Trio thread (``Inline()``)."""
    if not isinstance(backend, Backend):
        raise DefinitionTypeError(
            f"backend must be Inline(), Threads(...) or Processes(...), got {backend!r}"
        )
    if backend.runs_inline:
        return None
    if isinstance(backend, Dask):
        raise DefinitionValueError(
            f"backend={backend!r} is not supported by parallel: a Dask cluster is opened "
            "once per run, a parallel block opens its backend per item; use Threads(...) or "
            "Processes(...), or map(..., backend=Dask(...)) per function"
        )
    return backend


def _branch(fn: object, label: str, argument: str, backend: Backend | None) -> _Branch:
    kind = classify(fn, argument)
    if kind not in (CallKind.SYNC, CallKind.ASYNC):
        raise DefinitionTypeError(
            f"{argument} must be a plain or async function, got a {kind.value} function {fn!r}"
        )
    if backend is not None and kind is not CallKind.SYNC:
        raise DefinitionTypeError(
            f"{argument} must be a plain (sync) function with backend={backend!r}, which runs "
            f"it in a worker; got an async function {fn!r}"
        )
    assert callable(fn)
    check_call(fn, "parallel", "fn(item)", argument=argument.removesuffix(" of parallel"))
    return _Branch(label=label, fn=fn, is_async=kind is CallKind.ASYNC)
