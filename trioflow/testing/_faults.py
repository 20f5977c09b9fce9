"""Fault injection: wrap a user function so chosen calls fail, hang or slow down.

Every wrapper counts its calls (``calls``) and notes which ones it sabotaged
(``faulted``, 1-based call numbers). Call numbers are given in the order calls *start*, so
with ``concurrency=1`` "the 3rd call" is the call for the 3rd item; with a worker pool it
is the 3rd call to start, which Trio's scheduling may give to another item.

A sync function stays sync (``map`` keeps it fused) and an async one stays async, except
for ``hang_on_call`` and ``slow_down``, which must wait and so are always async.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Generic, ParamSpec, TypeVar, final, overload

import trio

from .._callables import CallKind, classify
from .._errors import DefinitionTypeError, DefinitionValueError

P = ParamSpec("P")
R = TypeVar("R")

#: What to raise: an exception class (a fresh instance per failure, the message naming the
#: call) or an instance (raised as is; fine for one failure, but a run adds notes to it).
ExceptionSpec = BaseException | type[BaseException]


class InjectedFault(Exception):
    """The exception the fault wrappers raise unless told otherwise."""


def _exception(spec: ExceptionSpec, call: int) -> BaseException:
    if isinstance(spec, type):
        return spec(f"injected failure on call {call}")
    return spec


def _check_exc(exc: object) -> None:
    if not (isinstance(exc, BaseException) or (isinstance(exc, type) and issubclass(exc, BaseException))):
        raise DefinitionTypeError(f"exc must be an exception class or instance, got {exc!r}")


def _kind(fn: object) -> CallKind:
    kind = classify(fn, "fn")
    if kind in (CallKind.ASYNC_GEN, CallKind.SYNC_GEN):
        raise DefinitionTypeError(f"fn must be a plain or async function, not a {kind.value}: {fn!r}")
    return kind


class _Fault:
    """The plan of one wrapper: what happens on call ``n`` (1-based)."""

    def before(self, call: int) -> BaseException | None:
        """The exception to raise instead of calling, or None."""
        return None

    async def wait(self, call: int) -> None:
        """Time to spend before calling (async wrappers only)."""


class _FailOn(_Fault):
    def __init__(self, calls: frozenset[int], exc: ExceptionSpec) -> None:
        self.calls = calls
        self.exc = exc

    def before(self, call: int) -> BaseException | None:
        return _exception(self.exc, call) if call in self.calls else None


class _FailRandomly(_Fault):
    def __init__(self, p: float, seed: int, exc: ExceptionSpec) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.exc = exc

    def before(self, call: int) -> BaseException | None:
        # one draw per call, in call order: the same seed fails the same call numbers
        return _exception(self.exc, call) if self.rng.random() < self.p else None


class _Hang(_Fault):
    def __init__(self, calls: frozenset[int]) -> None:
        self.calls = calls

    async def wait(self, call: int) -> None:
        if call in self.calls:
            await trio.sleep_forever()


class _Slow(_Fault):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def wait(self, call: int) -> None:
        await trio.sleep(self.seconds)


@final
class FaultyFunction(Generic[P, R]):
    """A sync function wrapped by a fault injector (built by ``fail_on_call`` or
    ``fail_with_probability``): ``calls`` counts calls, ``faulted`` lists the sabotaged ones."""

    def __init__(self, fn: Callable[P, R], fault: _Fault, label: str) -> None:
        self.fn = fn
        self.calls = 0
        self.faulted: list[int] = []
        self._fault = fault
        self._label = label

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        self.calls += 1
        exc = self._fault.before(self.calls)
        if exc is not None:
            self.faulted.append(self.calls)
            raise exc
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{self._label}({getattr(self.fn, '__name__', self.fn)!s})"


@final
class FaultyAsyncFunction(Generic[P, R]):
    """An async function wrapped by a fault injector: ``calls`` counts calls (as they start),
    ``faulted`` lists the call numbers that failed or hung (slowed calls are not faults)."""

    def __init__(self, fn: Callable[P, Awaitable[R]] | Callable[P, R], fault: _Fault, label: str) -> None:
        self.fn = fn
        self.calls = 0
        self.faulted: list[int] = []
        self._fault = fault
        self._label = label
        self._is_async = classify(fn, "fn") is CallKind.ASYNC

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the wrapped function, after the fault's delay; on cancellation (a hang is
        only ever ended by one) the wrapped function is not called."""
        self.calls += 1
        call = self.calls
        exc = self._fault.before(call)
        if exc is not None:
            self.faulted.append(call)
            raise exc
        if isinstance(self._fault, _Hang) and call in self._fault.calls:
            self.faulted.append(call)
        await self._fault.wait(call)
        result: Any = self.fn(*args, **kwargs)
        if self._is_async:
            result = await result
        return result  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"{self._label}({getattr(self.fn, '__name__', self.fn)!s})"


def _call_set(k: int | Collection[int]) -> frozenset[int]:
    calls = frozenset([k] if isinstance(k, int) else k)
    bad = [c for c in calls if not isinstance(c, int) or isinstance(c, bool) or c < 1]
    if bad:
        raise DefinitionValueError(f"k must be call numbers counted from 1, got {bad!r}")
    return calls


# an async function also matches the sync overload (returning an awaitable): the first
# overload wins, as intended
@overload
def fail_on_call(  # type: ignore[overload-overlap]
    fn: Callable[P, Awaitable[R]], k: int | Collection[int], exc: ExceptionSpec = InjectedFault
) -> FaultyAsyncFunction[P, R]: ...
@overload
def fail_on_call(
    fn: Callable[P, R], k: int | Collection[int], exc: ExceptionSpec = InjectedFault
) -> FaultyFunction[P, R]: ...
def fail_on_call(
    fn: Callable[P, Any], k: int | Collection[int], exc: ExceptionSpec = InjectedFault
) -> FaultyFunction[P, Any] | FaultyAsyncFunction[P, Any]:
    """Wrap ``fn`` so that its ``k``-th call (counted from 1; or every call number in a
    collection, such as a ``strategies.fault_schedules`` draw) raises ``exc`` instead of
    calling ``fn``. Sync stays sync, async stays async."""
    _check_exc(exc)
    fault = _FailOn(_call_set(k), exc)
    label = f"fail_on_call[{k}]"
    if _kind(fn) is CallKind.ASYNC:
        return FaultyAsyncFunction(fn, fault, label)
    return FaultyFunction(fn, fault, label)


# an async function also matches the sync overload (returning an awaitable): the first
# overload wins, as intended
@overload
def fail_with_probability(  # type: ignore[overload-overlap]
    fn: Callable[P, Awaitable[R]], p: float, seed: int, exc: ExceptionSpec = InjectedFault
) -> FaultyAsyncFunction[P, R]: ...
@overload
def fail_with_probability(
    fn: Callable[P, R], p: float, seed: int, exc: ExceptionSpec = InjectedFault
) -> FaultyFunction[P, R]: ...
def fail_with_probability(
    fn: Callable[P, Any], p: float, seed: int, exc: ExceptionSpec = InjectedFault
) -> FaultyFunction[P, Any] | FaultyAsyncFunction[P, Any]:
    """Wrap ``fn`` so that each call fails with probability ``p`` (raising ``exc``).

    Deterministic: the same ``seed`` fails the same call numbers, run after run (one draw
    from ``random.Random(seed)`` per call, in call order). Sync stays sync, async stays async.
    """
    _check_exc(exc)
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise DefinitionValueError(f"p must be a probability between 0 and 1, got {p!r}")
    fault = _FailRandomly(float(p), seed, exc)
    label = f"fail_with_probability[{p}, seed={seed}]"
    if _kind(fn) is CallKind.ASYNC:
        return FaultyAsyncFunction(fn, fault, label)
    return FaultyFunction(fn, fault, label)


def hang_on_call(
    fn: Callable[P, Awaitable[R]] | Callable[P, R], k: int | Collection[int]
) -> FaultyAsyncFunction[P, R]:
    """Wrap ``fn`` in an async function whose ``k``-th call (from 1) never returns: it waits
    in ``trio.sleep_forever()`` until cancelled (a timeout, the run's cancellation).

    Use it to check that timeouts and cancellation reach user code. ``fn`` may be sync or
    async; the wrapper is always async (so ``map`` runs it in a task of its own).
    """
    _kind(fn)
    return FaultyAsyncFunction(fn, _Hang(_call_set(k)), f"hang_on_call[{k}]")


def slow_down(fn: Callable[P, Awaitable[R]] | Callable[P, R], seconds: float) -> FaultyAsyncFunction[P, R]:
    """Wrap ``fn`` in an async function that sleeps ``seconds`` (Trio's clock) before every
    call. ``fn`` may be sync or async; the wrapper is always async. With ``MockClock`` the
    delay is virtual, so slow stages cost no real time."""
    _kind(fn)
    if not (isinstance(seconds, int | float) and seconds >= 0):
        raise DefinitionValueError(f"seconds must be a number >= 0, got {seconds!r}")
    return FaultyAsyncFunction(fn, _Slow(float(seconds)), f"slow_down[{seconds}]")
