"""Backends: where the calls of a stage run.

Theory of operation.

* A backend spec (``Inline()``, ``Threads(...)``, ``Processes(...)``, ``Dask(...)``) is frozen data, like
  every other spec: it says *where* a stage's function runs, never *what* it does. It holds
  no live resources, so one spec can serve any number of stages and runs.
* At run time, a stage that runs elsewhere opens its backend once per run:
  ``async with backend.open(stage_name) as runner`` gives a ``BackendRunner``, whose one
  method ``await runner.call_chunk(fn, items)`` applies ``fn`` to every item of a chunk in
  **one** backend call and returns one ``outcome.Outcome`` per item. Per-call costs are
  large (a thread hop 60-130 µs, a process round trip about 150 µs, a cluster round trip
  milliseconds; DESIGN §4), so work travels in chunks, while an error stays attached to
  its item and the stage's error policy still applies per item.
* ``call_chunk`` raises only for a failure of the call as a whole (a job that cannot be
  pickled, a worker that died): ``BackendError``, naming the stage. A user function's
  exception is never raised from it, it comes back as that item's ``outcome.Error``.
* Cancellation: ``call_chunk`` is a checkpoint. Inline calls never block; a thread call
  cannot be interrupted, so it is abandoned (its result is discarded when it finishes);
  a process call kills the worker's job (the worker process is killed and replaced).
* The cluster backend (``Dask``) fits the same shape: ``open`` starts a ``LocalCluster``
  or connects to a scheduler, and closes the client (and the local cluster) on every exit
  path; ``call_chunk`` submits one future per chunk from a thread and cancels it when the
  caller is cancelled.

No backend imports an optional dependency until it is opened: importing trioflow never
imports trio-parallel or dask.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import pickle
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Protocol, final

import attrs
import outcome
import trio

from ._errors import DefinitionTypeError, DefinitionValueError, TrioflowError

__all__ = [
    "Backend",
    "BackendError",
    "BackendRunner",
    "Dask",
    "Inline",
    "Processes",
    "Threads",
]

#: The extra that installs the process backend's dependency.
PROCESS_EXTRA = "trioflow[process]"


class BackendError(TrioflowError, RuntimeError):
    """A backend could not run a call at all (not an error of the user function): the job
    could not be pickled for a worker process, or the worker died while running it. The
    message names the stage; the original exception is the ``__cause__``. Error policies
    (``Skip``, ``DeadLetter`` ...) do not apply to it: the run fails."""


class BackendRunner(Protocol):
    """The live side of a backend, for one stage in one run (``Backend.open``)."""

    async def call_chunk(
        self, fn: Callable[[Any], Any], items: list[Any]
    ) -> list[outcome.Outcome[Any]]:
        """Apply ``fn`` to each item in one backend call; one outcome per item, in order."""
        ...


def _check_limit(argument: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionTypeError(f"{argument} must be an int, got {value!r}")
    if value < 1:
        raise DefinitionValueError(f"{argument} must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Backend:
    """Where a stage's function runs: ``Inline()``, ``Threads(...)`` or ``Processes(...)``.

    Pass one as ``backend=`` to ``trioflow.map``. A backend is plain data; the stage opens
    it once per run (``open``) and sends it chunks of items.
    """

    #: Items per backend call: a call's fixed cost is paid once per chunk.
    chunk: int = 1

    #: Whether calls run on the Trio thread (the stage is then planned as without a backend).
    runs_inline: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        _check_limit("chunk", self.chunk)

    @property
    def default_concurrency(self) -> int:
        """How many calls a stage keeps in flight when ``concurrency`` is not given."""
        return 1

    def open(self, stage: str) -> AbstractAsyncContextManager[BackendRunner]:
        """Open the backend for one stage (named ``stage`` in error messages) in one run.

        On cancellation: the context manager's exit releases what it holds; calls under way
        are cancelled as each backend documents."""
        raise NotImplementedError  # pragma: no cover


def _apply_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[outcome.Outcome[Any]]:
    """Run ``fn`` on every item, keeping each item's outcome (user errors included)."""
    out: list[outcome.Outcome[Any]] = []
    for item in items:
        try:
            out.append(outcome.Value(fn(item)))
        except Exception as exc:
            out.append(outcome.Error(exc))
    return out


@final
class _InlineRunner:
    async def call_chunk(
        self, fn: Callable[[Any], Any], items: list[Any]
    ) -> list[outcome.Outcome[Any]]:
        await trio.lowlevel.checkpoint_if_cancelled()
        out = _apply_chunk(fn, items)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return out


@final
@attrs.frozen(kw_only=True)
class Inline(Backend):
    """Run the function on the Trio thread: the reference semantics, and what a stage
    without ``backend=`` does. A plain function is fused into its neighbour's task; an async
    function runs in a task (pooled with ``concurrency=N``). A blocking call blocks the run.
    """

    runs_inline: ClassVar[bool] = True

    @asynccontextmanager
    async def open(self, stage: str) -> AsyncIterator[BackendRunner]:
        """Nothing to open: calls run on the Trio thread and never block on cancellation."""
        yield _InlineRunner()


@final
class _ThreadCall:
    """One chunk run in a worker thread. If the Trio side gave up on it (cancelled), the
    results are discarded when the thread finishes, and counted."""

    __slots__ = ("abandoned", "finished", "fn", "items", "lock", "runner")

    def __init__(self, runner: ThreadRunner, fn: Callable[[Any], Any], items: list[Any]) -> None:
        self.runner = runner
        self.fn = fn
        self.items = items
        self.lock = threading.Lock()
        self.abandoned = False
        self.finished = False

    def run(self) -> list[outcome.Outcome[Any]]:
        out = _apply_chunk(self.fn, self.items)
        with self.lock:
            self.finished = True
            if self.abandoned:
                self.runner.note_discarded(len(out))
                out = []
        return out

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            if self.finished:  # finished, but Trio dropped the result anyway
                self.runner.note_discarded(len(self.items))


@final
class ThreadRunner:
    """The live thread backend of one stage in one run (built by ``Threads.open``).

    ``abandoned`` counts calls given up on cancellation while their thread still ran;
    ``discarded`` counts the items whose results such calls produced and nobody received.
    """

    def __init__(self, limit: int) -> None:
        self.limiter = trio.CapacityLimiter(limit)
        self.abandoned = 0
        self.discarded = 0
        self._lock = threading.Lock()

    def note_discarded(self, n: int) -> None:
        with self._lock:
            self.discarded += n

    async def call_chunk(
        self, fn: Callable[[Any], Any], items: list[Any]
    ) -> list[outcome.Outcome[Any]]:
        """Run the chunk in a worker thread. On cancellation the thread cannot be
        interrupted: the call is abandoned at once and its results are discarded."""
        call = _ThreadCall(self, fn, items)
        try:
            return await trio.to_thread.run_sync(
                call.run, limiter=self.limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            self.abandoned += 1
            call.abandon()
            raise


@final
@attrs.frozen(kw_only=True)
class Threads(Backend):
    """Run the function in worker threads (``trio.to_thread.run_sync``), at most ``limit``
    at once per stage (a ``CapacityLimiter`` per stage and run), ``chunk`` items per call.

    For blocking calls (a sync database driver, file I/O, a C library releasing the GIL).
    The default ``chunk=1`` gives the most parallelism to blocking calls; raise it for
    short calls, where the thread hop (60-130 µs) dominates.

    Cancellation cannot interrupt a call already running in a thread: the stage stops
    waiting for it at once (``abandon_on_cancel``), the thread runs the chunk to its end in
    the background, and its results are discarded, never emitted.
    """

    limit: int = 16
    chunk: int = 1

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_limit("limit", self.limit)

    @property
    def default_concurrency(self) -> int:
        """One call in flight per thread: ``limit``."""
        return self.limit

    @asynccontextmanager
    async def open(self, stage: str) -> AsyncIterator[BackendRunner]:
        """A fresh ``CapacityLimiter(limit)`` for the stage; on exit nothing waits for
        abandoned threads (they finish in the background and their results are dropped)."""
        yield ThreadRunner(self.limit)


def _import_trio_parallel() -> Any:
    try:
        trio_parallel = importlib.import_module("trio_parallel")
    except ImportError as exc:
        raise ImportError(
            f"the Processes backend needs trio-parallel: pip install '{PROCESS_EXTRA}'"
        ) from exc
    return trio_parallel


def _run_chunk_in_worker(
    fn: Callable[[Any], Any], items: list[Any]
) -> list[outcome.Outcome[Any]]:
    """The job a worker process runs: like ``_apply_chunk``, with exceptions made fit to
    travel back (the worker's traceback kept when tblib is there; an exception that cannot
    be pickled replaced by a ``RuntimeError`` describing it)."""
    out = _apply_chunk(fn, items)
    for i, o in enumerate(out):
        if isinstance(o, outcome.Error):
            exc = o.error
            with contextlib.suppress(ImportError):  # tblib: a dependency of trio-parallel
                # keeps the worker's traceback on the way back
                importlib.import_module("tblib.pickling_support").install(exc)
            try:
                pickle.dumps(exc)
            except Exception as why:
                out[i] = outcome.Error(RuntimeError(
                    f"{exc!r} raised in a worker process could not be sent back ({why!r})"
                ))
    return out


@final
class ProcessRunner:
    """The live process backend of one stage in one run (built by ``Processes.open``)."""

    def __init__(self, stage: str, limiter: Any, tp: Any) -> None:
        self.stage = stage
        self.limiter = limiter
        self._tp = tp

    async def call_chunk(
        self, fn: Callable[[Any], Any], items: list[Any]
    ) -> list[outcome.Outcome[Any]]:
        """Run the chunk in a worker process. On cancellation the worker is killed (its
        job with it) and replaced by a fresh one for later calls."""
        tp = self._tp
        try:
            result: list[outcome.Outcome[Any]] = await tp.run_sync(
                _run_chunk_in_worker, fn, items, kill_on_cancel=True, limiter=self.limiter
            )
        except tp.BrokenWorkerError as exc:
            proc = exc.args[-1] if exc.args else None
            code = getattr(proc, "exitcode", None)
            raise BackendError(
                f"stage {self.stage!r}: a worker process died while running a call of "
                f"{len(items)} item(s) (exit code {code})"
            ) from exc
        except (trio.Cancelled, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            # every error of the user function comes back as an item's outcome, so an
            # exception here is one of the call itself: pickling the job or its results
            first = (str(exc).strip().splitlines() or [""])[0]
            raise BackendError(
                f"stage {self.stage!r}: a call of {len(items)} item(s) could not be run in a "
                f"worker process ({type(exc).__name__}: {first}); the function, the items and "
                "the results must be picklable (a module-level function, not a lambda or a "
                "closure)"
            ) from exc
        return result


@final
@attrs.frozen(kw_only=True)
class Processes(Backend):
    """Run the function in worker processes (trio-parallel), ``chunk`` items per call, at
    most ``limit`` calls at once for the stage (default: trio-parallel's shared limiter,
    one process per CPU).

    For CPU-bound pure functions. The function, the items and the results are pickled:
    use a module-level function. Worker processes are trio-parallel's (cached and reused
    across calls and runs); configure them with ``trio_parallel.cache_scope(...)`` around
    the run. A call costs about 150 µs, hence chunks: pick ``chunk`` so one call takes a
    few milliseconds at least.

    Cancellation kills the worker running the job (``kill_on_cancel``); a worker that dies
    (a crash, ``os._exit``) fails the run with a ``BackendError`` naming the stage.
    Requires the ``trioflow[process]`` extra (checked when the spec is built).
    """

    limit: int | None = None
    chunk: int = 16

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_limit("limit", self.limit, optional=True)
        if importlib.util.find_spec("trio_parallel") is None:
            raise ImportError(
                f"the Processes backend needs trio-parallel: pip install '{PROCESS_EXTRA}'"
            )

    @property
    def default_concurrency(self) -> int:
        """One call in flight per process: ``limit``, or the number of CPUs."""
        return self.limit if self.limit is not None else (os.cpu_count() or 1)

    @asynccontextmanager
    async def open(self, stage: str) -> AsyncIterator[BackendRunner]:
        """Import trio-parallel and build the stage's limiter; workers are started on the
        first call. On exit nothing waits: workers killed by cancellation are already gone."""
        tp = _import_trio_parallel()
        limiter = (
            tp.current_default_worker_limiter() if self.limit is None
            else trio.CapacityLimiter(self.limit)
        )
        yield ProcessRunner(stage, limiter, tp)


#: The extra that installs the Dask backend's dependency.
DASK_EXTRA = "trioflow[dask]"


def _import_distributed() -> Any:
    try:
        distributed = importlib.import_module("distributed")
    except ImportError as exc:
        raise ImportError(
            f"the Dask backend needs dask.distributed: pip install '{DASK_EXTRA}'"
        ) from exc
    return distributed


def _run_chunk_on_dask(fn: Callable[[Any], Any], items: list[Any]) -> list[tuple[Any, ...]]:
    """The task a Dask worker runs for one chunk: ``fn`` on every item, each outcome as a
    plain tuple (``("ok", value)`` or ``("error", exception, traceback text)``), rebuilt
    into ``outcome`` objects on the Trio side. An exception that cannot be pickled is
    replaced by a ``RuntimeError`` describing it, so the chunk's other results survive."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        try:
            out.append(("ok", fn(item)))
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            try:
                pickle.dumps(exc)
            except Exception as why:
                exc = RuntimeError(
                    f"{exc!r} raised on a Dask worker could not be sent back ({why!r})"
                )
            out.append(("error", exc, text))
    return out


def _rebuild(results: list[tuple[Any, ...]]) -> list[outcome.Outcome[Any]]:
    out: list[outcome.Outcome[Any]] = []
    for res in results:
        if res[0] == "ok":
            out.append(outcome.Value(res[1]))
        else:
            exc, text = res[1], res[2]
            exc.add_note(f"remote traceback (Dask worker):\n{text.rstrip()}")
            out.append(outcome.Error(exc))
    return out


@final
class _DaskCall:
    """One chunk as one Dask future. ``run`` (in a worker thread) submits it and blocks on
    its result; ``cancel`` (when the Trio side is cancelled) cancels the future, or stops
    it from being submitted at all."""

    __slots__ = ("cancelled", "client", "fn", "future", "items", "lock")

    def __init__(self, client: Any, fn: Callable[[Any], Any], items: list[Any]) -> None:
        self.client = client
        self.fn = fn
        self.items = items
        self.lock = threading.Lock()
        self.future: Any = None
        self.cancelled = False

    def run(self) -> tuple[str, Any]:
        """``("ok", results)``, ``("submit", exc)`` if the job could not be sent, or
        ``("failed", exc)`` if the task failed (never raises, so a Dask cancellation
        error is not mistaken for anything else)."""
        with self.lock:
            if self.cancelled:
                return ("cancelled", None)
            try:
                self.future = self.client.submit(
                    _run_chunk_on_dask, self.fn, self.items, pure=False
                )
            except Exception as exc:
                return ("submit", exc)
        try:
            return ("ok", self.future.result())
        except Exception as exc:
            return ("failed", exc)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            future = self.future
        if future is not None:
            with contextlib.suppress(Exception):
                future.cancel()


@final
class DaskRunner:
    """The live Dask backend of one stage in one run (built by ``Dask.open``).

    ``cancelled`` counts the futures cancelled because the Trio side was cancelled."""

    def __init__(self, stage: str, client: Any, limit: int) -> None:
        self.stage = stage
        self.client = client
        # one waiting thread per future: this bounds the futures in flight for the stage
        self.limiter = trio.CapacityLimiter(limit)
        self.cancelled = 0

    async def call_chunk(
        self, fn: Callable[[Any], Any], items: list[Any]
    ) -> list[outcome.Outcome[Any]]:
        """Submit the chunk as one future and wait for it in a thread. On cancellation the
        wait is abandoned at once and the future is cancelled (shielded, bounded)."""
        call = _DaskCall(self.client, fn, items)
        try:
            kind, value = await trio.to_thread.run_sync(
                call.run, limiter=self.limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            self.cancelled += 1
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(call.cancel)
            raise
        if kind == "ok":
            return _rebuild(value)
        n = len(items)
        if kind == "submit":
            first = (str(value).strip().splitlines() or [""])[0]
            raise BackendError(
                f"stage {self.stage!r}: a call of {n} item(s) could not be sent to Dask "
                f"({type(value).__name__}: {first}); the function and the items must be "
                "picklable (cloudpickle)"
            ) from value
        err = BackendError(
            f"stage {self.stage!r}: a Dask task of {n} item(s) failed as a whole "
            f"({type(value).__name__}: {value})"
        )
        if value.__traceback__ is not None:
            err.add_note("remote traceback (Dask):\n" + "".join(
                traceback.format_exception(value)).rstrip())
        raise err from value


async def _close_quietly(*closers: Callable[[], Any]) -> None:
    """Run each closer in a thread, shielded from cancellation and bounded in time."""
    with trio.CancelScope(shield=True), trio.move_on_after(30):
        for close in closers:
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(close)


@final
@attrs.frozen(kw_only=True)
class Dask(Backend):
    """Run the function on a Dask cluster (dask.distributed), ``chunk`` items per task, at
    most ``limit`` futures in flight for the stage.

    With ``address=None`` each run of the stage starts its own ``LocalCluster`` on this
    machine (``n_workers`` worker processes with one thread each, listening on 127.0.0.1
    only, no dashboard) and closes it when the stage ends. With a scheduler address
    (``"tcp://host:8786"``) it connects a client to that cluster and leaves the cluster
    running. Dask's synchronous ``Client`` is driven from worker threads (its asynchronous
    client runs only under asyncio/tornado).

    A round trip costs about 11 ms: chunk generously (a call should take well over that).
    The function and the items are cloudpickled; the workers must be able to import the
    modules they refer to. Cancellation cancels the outstanding futures. A user error comes
    back as that item's error, with the worker's traceback as a note; a task that fails as
    a whole (the job could not be sent, a worker was killed) fails the run with a
    ``BackendError`` naming the stage. Requires the ``trioflow[dask]`` extra.
    """

    address: str | None = None
    limit: int = 4
    chunk: int = 64
    n_workers: int = 2

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_limit("limit", self.limit)
        _check_limit("n_workers", self.n_workers)
        if self.address is not None and not isinstance(self.address, str):
            raise DefinitionTypeError(f"address must be a str or None, got {self.address!r}")
        if importlib.util.find_spec("distributed") is None:
            raise ImportError(
                f"the Dask backend needs dask.distributed: pip install '{DASK_EXTRA}'"
            )

    @property
    def default_concurrency(self) -> int:
        """One call in flight per future: ``limit``."""
        return self.limit

    @asynccontextmanager
    async def open(self, stage: str) -> AsyncIterator[BackendRunner]:
        """Start a ``LocalCluster`` (no address) or connect to the scheduler, in a thread;
        on every exit path close the client and any local cluster (shielded, bounded)."""
        distributed = _import_distributed()
        cluster: Any = None
        client: Any = None
        try:
            address = self.address
            if address is None:
                cluster = await trio.to_thread.run_sync(functools.partial(
                    distributed.LocalCluster,
                    n_workers=self.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                ))
                address = cluster.scheduler_address
            client = await trio.to_thread.run_sync(functools.partial(
                distributed.Client, address, set_as_default=False
            ))
            yield DaskRunner(stage, client, self.limit)
        finally:
            closers = []
            if client is not None:
                closers.append(client.close)
            if cluster is not None:
                closers.append(cluster.close)
            await _close_quietly(*closers)
