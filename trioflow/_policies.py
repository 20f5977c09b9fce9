"""Error policies as data: what a stage does when user code fails on an item.

* ``Fail()`` (the default): fail-fast, the run is cancelled and raises.
* ``Skip()``: the item is dropped, counted in ``statistics()`` (``skipped``) and logged
  once per stage (logger ``"trioflow"``), with the stage and the item.
* ``DeadLetter(target)``: the item goes to a dead-letter target as a ``DeadLetterEntry``
  (item, exception, formatted traceback, stage, attempt number, wall-clock time); the
  target is a ``list`` (appended), a Trio ``SendChannel`` (sent and awaited: backpressure),
  a plain function (called), or a path (one JSON line per entry).
* ``Collect()``: the failure is recorded for the run's report (``handle.failures()``) and
  the stage goes on; when the run has completed, ``run`` raises one ``ExceptionGroup`` of
  every collected failure.
* ``Retry(attempts, backoff=Backoff(...), on=...)``: retry the call first, waiting between
  attempts; only when the attempts are used up does the error policy apply.
* ``timeout=`` (seconds, per call; async functions, or any function on a worker backend,
  where it is per item): a call that takes longer is cancelled (on a worker backend:
  abandoned, killed or cancelled there) and fails with ``trio.TooSlowError``, which the
  retry and error policies then treat like any other error.

The invariant the tests check: every item that entered a stage is emitted, dead-lettered,
skipped-and-counted or filtered, exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import traceback
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from ._acks import Tracked, settle
from ._callables import check_call
from ._errors import DefinitionTypeError, DefinitionValueError, annotate, short_repr

logger = logging.getLogger("trioflow")


@attrs.frozen
class OnError:
    """Base of the error policies (``Fail``, ``Skip``, ``DeadLetter``, ``Collect``)."""


@final
@attrs.frozen
class Fail(OnError):
    """Fail fast: the first error cancels the run and is raised (the default)."""


#: The default policy, shared (policies are immutable data).
FAIL = Fail()


@final
@attrs.frozen
class Skip(OnError):
    """Drop the failed item; count it (``skipped``) and log the first one per stage."""


@final
@attrs.frozen
class Collect(OnError):
    """Record the failure in the run's report and go on with the next item. When the run
    has completed, ``run`` raises one ``ExceptionGroup`` of every collected failure (each
    leaf noting its stage and item), after the sinks finished; ``handle.failures()`` lists
    them as ``DeadLetterEntry`` values. ``run(report=True)`` returns them in a
    ``RunReport`` instead of raising. Collected items count as ``dead_lettered``."""


def _check_target(instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, list | trio.abc.SendChannel | str | os.PathLike):
        return
    if callable(value):
        check_call(value, "DeadLetter", "target(entry)")
        return
    raise DefinitionTypeError(
        f"target of DeadLetter must be a list, a trio SendChannel, a function or a path, "
        f"got {value!r}"
    )


@final
@attrs.frozen(eq=False)
class DeadLetter(OnError):
    """Send the failed item, with its error, to ``target`` and go on with the next item."""

    target: Any = attrs.field(validator=_check_target)

    @property
    def needs_task(self) -> bool:
        """A channel target is sent to with ``await``: the stage cannot be fused."""
        return isinstance(self.target, trio.abc.SendChannel)


@final
@attrs.frozen(kw_only=True)
class DeadLetterEntry:
    """One failed item, as delivered to a dead-letter target."""

    item: Any
    exception: BaseException
    #: ``traceback.format_exception`` of the exception, joined
    traceback: str
    stage: str
    #: which attempt failed last (1 when there was no retry)
    attempt: int
    #: wall-clock time (``time.time()``) of the failure
    time: float

    def to_json(self) -> str:
        """One JSON line (item and exception as reprs)."""
        return json.dumps({
            "stage": self.stage, "attempt": self.attempt, "time": self.time,
            "item": short_repr(self.item), "exception": repr(self.exception),
            "traceback": self.traceback,
        })


@final
@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff: attempt ``n`` (n >= 1) waits ``min * factor**(n-1)``, capped at
    ``max``, then scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""

    min: float = 0.1
    max: float = 10.0
    factor: float = 2.0
    jitter: float = 0.1

    def __attrs_post_init__(self) -> None:
        for name in ("min", "max", "factor", "jitter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v < 0:
                raise DefinitionValueError(f"{name} of Backoff must be a number >= 0, got {v!r}")
        if self.max < self.min:
            raise DefinitionValueError(f"max of Backoff must be >= min ({self.min}), got {self.max!r}")
        if self.factor < 1:
            raise DefinitionValueError(f"factor of Backoff must be >= 1, got {self.factor!r}")
        if self.jitter > 1:
            raise DefinitionValueError(f"jitter of Backoff must be <= 1, got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt number ``attempt``."""
        base = min(self.max, self.min * self.factor ** (attempt - 1))
        if self.jitter:
            base *= 1 + self.jitter * (2 * rng.random() - 1)
        return base


@final
@attrs.frozen(kw_only=True)
class Retry:
    """Retry a failed call: at most ``attempts`` calls in all, waiting ``backoff`` between
    them (Trio's clock), for errors matched by ``on`` (exception types, or a predicate)."""

    attempts: int = 3
    backoff: Backoff = Backoff()
    on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (Exception,)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise DefinitionValueError(f"attempts of Retry must be an int >= 1, got {self.attempts!r}")
        if not isinstance(self.backoff, Backoff):
            raise DefinitionTypeError(f"backoff of Retry must be a Backoff, got {self.backoff!r}")
        on = self.on
        if isinstance(on, type) and issubclass(on, BaseException):
            object.__setattr__(self, "on", (on,))
        elif isinstance(on, tuple):
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
                raise DefinitionTypeError(f"on of Retry must be exception types or a predicate, got {on!r}")
        elif not callable(on):
            raise DefinitionTypeError(f"on of Retry must be exception types or a predicate, got {on!r}")
        else:
            check_call(on, "Retry", "on(exception)")

    def retries(self, exc: BaseException) -> bool:
        on = self.on
        if isinstance(on, tuple):
            return isinstance(exc, on)
        return bool(on(exc))


def check_policies(on_error: object, retry: object, timeout: object) -> None:
    if not isinstance(on_error, OnError):
        raise DefinitionTypeError(
            f"on_error must be Fail(), Skip(), DeadLetter(...) or Collect(), got {on_error!r}"
        )
    if retry is not None and not isinstance(retry, Retry):
        raise DefinitionTypeError(f"retry must be a Retry(...) or None, got {retry!r}")


class Guard:
    """The runtime side of a stage's policies: counters, and what to do with a failure."""

    __slots__ = ("dead_lettered", "on_error", "report", "retries", "rng", "skipped", "stage")

    def __init__(self, stage: str, on_error: OnError) -> None:
        self.stage = stage
        self.on_error = on_error
        #: the run's report, for ``Collect`` (set by the runner)
        self.report: list[DeadLetterEntry] = []
        self.skipped = 0
        self.dead_lettered = 0
        self.retries = 0
        self.rng = random.Random()

    @property
    def fails(self) -> bool:
        return isinstance(self.on_error, Fail)

    def _entry(self, exc: BaseException, item: Any) -> DeadLetterEntry:
        return DeadLetterEntry(
            item=item, exception=exc,
            traceback="".join(traceback.format_exception(exc)),
            stage=self.stage, attempt=getattr(exc, "trioflow_attempts", 1), time=time.time(),
        )

    def handle(self, exc: Exception, item: Any) -> None:
        """Synchronously apply the policy to a failed item: re-raise (Fail), or count and
        record it and return (the item is then dropped). A tracked item (a run with
        acknowledgements) is done once its error is recorded: its part settles with it."""
        tracked = item if type(item) is Tracked else None
        if tracked is not None:
            item = tracked.value
        policy = self.on_error
        if isinstance(policy, Skip):
            self.skipped += 1
            if self.skipped == 1:
                logger.warning("trioflow: stage %r skipped item %s after %r (further skips are "
                               "only counted)", self.stage, short_repr(item), exc)
        elif isinstance(policy, Collect):
            annotate(exc, self.stage, item)
            self.report.append(self._entry(exc, item))
            self.dead_lettered += 1
        elif isinstance(policy, DeadLetter) and not policy.needs_task:
            annotate(exc, self.stage, item)  # every error a run reports names its stage
            entry = self._entry(exc, item)
            target = policy.target
            if isinstance(target, list):
                target.append(entry)
            elif isinstance(target, str | os.PathLike):
                with open(target, "a", encoding="utf-8") as f:
                    f.write(entry.to_json() + "\n")
            else:
                target(entry)
            self.dead_lettered += 1
        else:
            annotate(exc, self.stage, item)
            raise exc
        if tracked is not None:
            settle(tracked, exc)

    async def ahandle(self, exc: Exception, item: Any) -> None:
        """``handle``, able to wait for a dead-letter channel (backpressure)."""
        policy = self.on_error
        if isinstance(policy, DeadLetter) and policy.needs_task:
            value = item.value if type(item) is Tracked else item
            annotate(exc, self.stage, value)
            await policy.target.send(self._entry(exc, value))
            self.dead_lettered += 1
            settle(item, exc)  # the letter is written (queued): the item is done
            return
        self.handle(exc, item)


def with_retry_and_timeout(
    fn: Callable[..., Any], is_async: bool, retry: Retry | None, timeout: float | None, guard: Guard
) -> Callable[..., Any]:
    """An async function that calls ``fn`` under the per-call timeout and the retry policy.
    The exception that finally escapes carries ``trioflow_attempts``."""
    attempts = retry.attempts if retry is not None else 1

    async def call(*args: Any) -> Any:
        attempt = 1
        while True:
            try:
                if timeout is not None:
                    with trio.fail_after(timeout):
                        return await fn(*args)
                if is_async:
                    return await fn(*args)
                return fn(*args)
            except Exception as exc:
                if retry is None or attempt >= attempts or not retry.retries(exc):
                    with contextlib.suppress(AttributeError):  # exceptions with __slots__
                        exc.trioflow_attempts = attempt  # type: ignore[attr-defined]
                    raise
                guard.retries += 1
                await trio.sleep(retry.backoff.delay(attempt, guard.rng))
                attempt += 1

    return call


@final
@attrs.frozen(kw_only=True)
class Restart:
    """Supervision: restart a failed persistent worker (its resource is rebuilt) or a
    failed continuous source, with backoff, instead of failing the run.

    At most ``max_restarts`` restarts within any ``within`` seconds (Trio's clock); one
    more failure in that window fails the run with the error. After ``reset_after``
    quiet seconds (default: ``within``) the count starts again. Restart ``n`` of a run of
    failures waits ``backoff.delay(n)``. A persistent worker's failed item is retried on
    the fresh resource (at-least-once); the restart count is ``restarts`` in
    ``statistics()``.
    """

    max_restarts: int = 3
    within: float = 60.0
    backoff: Backoff = Backoff()
    reset_after: float | None = None

    def __attrs_post_init__(self) -> None:
        m = self.max_restarts
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise DefinitionValueError(f"max_restarts of Restart must be an int >= 0, got {m!r}")
        for name in ("within", "reset_after"):
            v = getattr(self, name)
            if v is None and name == "reset_after":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v <= 0:
                raise DefinitionValueError(f"{name} of Restart must be a number > 0, got {v!r}")
        if not isinstance(self.backoff, Backoff):
            raise DefinitionTypeError(f"backoff of Restart must be a Backoff, got {self.backoff!r}")


class Supervisor:
    """The pure bookkeeping of a ``Restart`` policy: given failure times, decide whether to
    restart (and after how long) or give up."""

    __slots__ = ("_last_failure", "_recent", "policy", "restarts", "rng")

    def __init__(self, policy: Restart, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.restarts = 0
        self._recent: list[float] = []  # times of the restarts still inside the window
        self._last_failure: float | None = None
        self.rng = rng or random.Random()

    def on_failure(self, now: float) -> float | None:
        """A failure at ``now``: the delay before restarting, or None to give up."""
        p = self.policy
        quiet = p.reset_after if p.reset_after is not None else p.within
        if self._last_failure is not None and now - self._last_failure >= quiet:
            self._recent.clear()  # a quiet period: the count starts again
        self._last_failure = now
        self._recent = [t for t in self._recent if now - t < p.within]
        if len(self._recent) >= p.max_restarts:
            return None
        self._recent.append(now)
        self.restarts += 1
        return p.backoff.delay(len(self._recent), self.rng)
