"""Execution backends (inline, threads, processes, dask): one behavioural suite run on
every backend, plus what is specific to each (abandoned thread calls, pickling, dead
workers, cancelled futures, local and remote Dask clusters).

The ``dask`` kind runs on one ``LocalCluster`` shared by the module (started on first use,
closed at the end of the module) through ``Dask(address=...)``; ``Dask()`` starting and
closing a cluster of its own, and a scheduler and worker started as separate processes,
are tested on their own below. Everything listens on loopback only.

Worker processes import the functions they run by name, so process tests use the
module-level functions of ``backend_fns``. These tests use real threads and processes,
hence the real clock (short, bounded waits only; no assertion on speed).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backend_fns import (
    Unpicklable,
    add_or_fail_on_5,
    below_12,
    die_on_5,
    fail_on_7,
    is_odd,
    jitter,
    noop,
    poly,
    repeat_gen,
    sleep_long,
    sleep_medium,
    sleep_short,
    unpicklable_result,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._backends import DaskRunner, ThreadRunner

KINDS = ["inline", "threads", "processes", "dask"]

_dask: dict[str, Any] = {}  # the module's shared LocalCluster, started on first use


def dask_address() -> str:
    if "cluster" not in _dask:
        import distributed

        _dask["cluster"] = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0")
    return str(_dask["cluster"].scheduler_address)


@pytest.fixture(autouse=True, scope="module")
def _close_shared_dask_cluster() -> Iterator[None]:
    yield
    cluster = _dask.pop("cluster", None)
    if cluster is not None:
        cluster.close()


def make(kind: str, chunk: int = 4, limit: int = 2) -> tf.Backend:
    if kind == "inline":
        return tf.Inline()
    if kind == "threads":
        return tf.Threads(limit=limit, chunk=chunk)
    if kind == "dask":
        return tf.Dask(address=dask_address(), limit=limit, chunk=chunk)
    return tf.Processes(limit=limit, chunk=chunk)


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out = list(group.exceptions)
    assert not any(isinstance(e, BaseExceptionGroup) for e in out), "nested groups"
    return out


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def all_tasks() -> set[trio.lowlevel.Task]:
    out: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None:
            continue
        out.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return out


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (real time: threads and processes do not follow a mock clock) until true."""
    with trio.fail_after(within):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.001)


# -- the behavioural suite ------------------------------------------------------------------

EXAMPLES = {"inline": 40, "threads": 25, "processes": 4, "dask": 3}


@pytest.mark.parametrize("kind", KINDS)
def test_results_equal_the_plain_python_reference(kind: str) -> None:
    @settings(max_examples=EXAMPLES[kind], deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(
        xs=st.lists(st.integers(-1000, 1000), max_size=60 if kind in ("inline", "threads") else 30),
        chunk=st.integers(1, 9),
        concurrency=st.integers(1, 4),
        ordered=st.booleans(),
    )
    def check(xs: list[int], chunk: int, concurrency: int, ordered: bool) -> None:
        backend = make(kind, chunk=chunk)
        conc = None if kind == "inline" else concurrency
        flow = tf.from_iterable(xs) | tf.map(poly, backend=backend, concurrency=conc,
                                            ordered=ordered)
        out = trio.run(flow.to_list)
        expected = [poly(x) for x in xs]
        assert (out if ordered else sorted(out)) == (expected if ordered else sorted(expected))

    check()


@pytest.mark.parametrize("kind", KINDS)
async def test_order_is_kept_when_ordered(kind: str) -> None:
    xs = list(range(40))
    flow = tf.from_iterable(xs) | tf.map(jitter, backend=make(kind, chunk=1, limit=4),
                                        concurrency=None if kind == "inline" else 4)
    assert await flow.to_list() == xs


@pytest.mark.parametrize("kind", KINDS)
async def test_fail_fast_one_group_level_annotated_with_the_stage(kind: str) -> None:
    flow = tf.from_iterable(range(20)) | tf.map(fail_on_7, backend=make(kind), name="doubler")
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    errs = leaves(info.value)
    assert errs and all(isinstance(e, ValueError) for e in errs)
    # calls run concurrently: whichever failing item came back first is the one reported
    assert re.search(r"stage 'doubler' while processing item \d*7$", notes(errs[0]))
    try:
        await flow.to_list()
    except* ValueError as group:  # except* works on the run's group
        assert group.exceptions


@pytest.mark.parametrize("kind", KINDS)
async def test_skip_drops_exactly_the_failed_items(kind: str) -> None:
    flow = tf.from_iterable(range(30)) | tf.map(fail_on_7, backend=make(kind),
                                                on_error=tf.Skip(), name="doubler")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((flow | tf.to_list()).run)
        await handle.wait()
    assert handle.result() == [x * 2 for x in range(30) if x % 10 != 7]
    (stage,) = [s for s in handle.statistics().stages if s.name == "doubler"]
    assert (stage.items_in, stage.items_out, stage.skipped, stage.in_flight) == (30, 27, 3, 0)


@pytest.mark.parametrize("kind", KINDS)
async def test_dead_letter_gets_each_failed_item_with_its_error(kind: str) -> None:
    dead: list[tf.DeadLetterEntry] = []
    flow = tf.from_iterable(range(30)) | tf.map(fail_on_7, backend=make(kind),
                                                on_error=tf.DeadLetter(dead), name="doubler")
    assert await flow.to_list() == [x * 2 for x in range(30) if x % 10 != 7]
    assert sorted(e.item for e in dead) == [7, 17, 27]
    assert all(isinstance(e.exception, ValueError) and e.stage == "doubler" for e in dead)
    assert "fail_on_7" in dead[0].traceback  # the worker's traceback came back


SLOW = {"inline": sleep_short, "threads": sleep_long, "processes": sleep_long,
        "dask": sleep_long}


@pytest.mark.parametrize("kind", KINDS)
async def test_cancellation_leaves_no_task_running(kind: str) -> None:
    before = all_tasks()
    # dask: a cluster of its own, closed with the run (a shared worker would stay busy 30 s)
    backend = tf.Dask(chunk=2) if kind == "dask" else make(kind, chunk=2)
    flow = tf.from_iterable(range(10**9)) | tf.map(SLOW[kind], backend=backend)
    with trio.move_on_after(0.5) as cs:
        await flow.run()
    # we got here, so the hour-long call was not waited for (the test timeout would have
    # failed the test): threads abandoned, process jobs killed, futures cancelled
    assert cs.cancelled_caught
    assert all_tasks() == before


# -- threads: an abandoned call's result is discarded -------------------------------------


async def test_threads_abandoned_call_result_is_discarded() -> None:
    runner = ThreadRunner(limit=1)
    running, release = threading.Event(), threading.Event()

    def block(x: int) -> int:
        running.set()
        release.wait(10)
        return x

    with trio.move_on_after(5) as cs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.call_chunk, block, [1, 2, 3])
            await trio.to_thread.run_sync(running.wait, 5)
            nursery.cancel_scope.cancel()  # the thread is still blocked in the call
    assert not cs.cancelled_caught
    assert (runner.abandoned, runner.discarded) == (1, 0)
    release.set()
    await eventually(lambda: runner.discarded > 0)
    assert runner.discarded == 3  # the call finished; its 3 results went nowhere


async def test_threads_cancelled_flow_never_emits_the_abandoned_result() -> None:
    running, release, finished = threading.Event(), threading.Event(), threading.Event()
    got: list[int] = []

    def block(x: int) -> int:
        running.set()
        release.wait(10)
        finished.set()
        return x

    pipe = tf.from_iterable([1]) | tf.map(block, backend=tf.Threads(limit=1)) | tf.sink(got.append)
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            await trio.to_thread.run_sync(running.wait, 5)
            nursery.cancel_scope.cancel()
    assert not finished.is_set()  # the run ended while the call still ran
    release.set()
    await trio.to_thread.run_sync(finished.wait, 5)
    await trio.sleep(0.05)
    assert got == []


# -- processes: pickling and dead workers ---------------------------------------------------


async def test_processes_unpicklable_function_names_the_stage() -> None:
    flow = tf.from_iterable(range(5)) | tf.map(Unpicklable(), backend=tf.Processes(), name="crunch")
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    (err, *_) = leaves(info.value)
    assert isinstance(err, tf.BackendError)
    assert "'crunch'" in str(err) and "picklable" in str(err)
    assert "'crunch'" in notes(err)


async def test_processes_unpicklable_result_names_the_stage() -> None:
    flow = tf.from_iterable(range(3)) | tf.map(unpicklable_result, backend=tf.Processes(),
                                               name="crunch")
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    (err, *_) = leaves(info.value)
    assert isinstance(err, tf.BackendError) and "'crunch'" in str(err)


async def test_processes_dead_worker_names_the_stage() -> None:
    flow = tf.from_iterable(range(10)) | tf.map(
        die_on_5, backend=tf.Processes(limit=1, chunk=1), name="fragile",
        on_error=tf.Skip(),  # a dead worker is not an item's error: it fails the run anyway
    )
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    (err,) = leaves(info.value)
    assert isinstance(err, tf.BackendError)
    assert "'fragile'" in str(err) and "died" in str(err) and "exit code 3" in str(err)


# -- backpressure and definition ------------------------------------------------------------


async def test_threads_backpressure_bounds_the_calls_in_flight() -> None:
    release = threading.Event()
    started = 0
    lock = threading.Lock()

    def block(x: int) -> int:
        nonlocal started
        with lock:
            started += 1
        release.wait(10)
        return x

    flow = tf.from_iterable(range(1000)) | tf.map(
        block, backend=tf.Threads(limit=2, chunk=3), name="blocked")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await eventually(lambda: started >= 2)
        await trio.sleep(0.05)
        (stage,) = [s for s in handle.statistics().stages if s.name == "blocked"]
        assert started == 2 and stage.in_flight == 6  # 2 calls of 3 items
        assert stage.items_in < 1000  # the rest waits upstream (bounded edges)
        release.set()
        await handle.wait()
    assert handle.result() is None
    assert handle.statistics().state is tf.RunState.COMPLETED


def test_a_backend_stage_is_never_fused() -> None:
    for backend in (tf.Threads(), tf.Processes(), tf.Dask()):
        plan = (tf.from_iterable([1]) | tf.map(poly, backend=backend) | tf.to_list()).plan()
        # the map heads a segment of its own (the sink after it joins that segment)
        assert [[n.operator for n in seg.nodes] for seg in plan.segments] == [
            ["from_iterable"], ["map", "to_list"]]
    inline = (tf.from_iterable([1]) | tf.map(poly, backend=tf.Inline()) | tf.to_list()).plan()
    assert len(inline.segments) == 1


def test_definition_errors_name_the_argument() -> None:
    async def afn(x: int) -> int:
        return x

    with pytest.raises(tf.DefinitionTypeError, match="backend"):
        tf.map(afn, backend=tf.Threads())
    with pytest.raises(tf.DefinitionTypeError, match="backend"):
        tf.map(poly, backend="threads")  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionValueError, match="key"):
        tf.map(poly, backend=tf.Threads(), key=abs)
    with pytest.raises(tf.DefinitionValueError, match="limit"):
        tf.Threads(limit=0)
    with pytest.raises(tf.DefinitionValueError, match="chunk"):
        tf.Processes(chunk=0)
    assert tf.map(poly, backend=tf.Threads(limit=8)).concurrency == 8  # type: ignore[attr-defined]


def test_missing_trio_parallel_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trio_parallel", None)
    with pytest.raises(ImportError, match=r"trioflow\[process\]"):
        tf.Processes()


def test_importing_trioflow_never_imports_trio_parallel() -> None:
    code = "import sys, trioflow; assert 'trio_parallel' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- dask: cancelled futures, errors, own and remote clusters, the extra --------------------


async def scheduler_forgets_every_task(client: Any, within: float) -> None:
    """Wait until the scheduler of ``client`` (the runner's own) holds no task. Asking
    through the runner's client, not a new one: opening a client (one per poll, and once
    even a single one while the runner's client was still sending its cancellations)
    failed distributed's own handshake, ``assert len(msg) == 1`` in
    ``Client._ensure_connected``."""
    def tasks() -> int:
        return int(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

    await eventually(lambda: tasks() == 0, within=within)


async def test_dask_cancellation_cancels_the_outstanding_futures() -> None:
    address = dask_address()
    async with tf.Dask(address=address, limit=2).open("slow") as runner:
        assert isinstance(runner, DaskRunner)
        with trio.move_on_after(0.5) as cs:
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # two running, one waiting for the limiter
                    nursery.start_soon(runner.call_chunk, sleep_medium, [1])
        assert cs.cancelled_caught
        assert runner.cancelled == 3
        # the scheduler forgot them (the running ones end on the workers by themselves)
        await scheduler_forgets_every_task(runner.client, within=10)


async def test_dask_unpicklable_job_names_the_stage() -> None:
    flow = tf.from_iterable(range(3)) | tf.map(
        Unpicklable(), backend=make("dask"), name="crunch")
    with pytest.raises(ExceptionGroup) as info:
        await flow.to_list()
    (err, *_) = leaves(info.value)
    assert isinstance(err, tf.BackendError)
    assert "'crunch'" in str(err) and "picklable" in str(err)


async def test_dask_error_keeps_the_remote_traceback_and_unpicklable_results_fail() -> None:
    dead: list[tf.DeadLetterEntry] = []
    flow = tf.from_iterable(range(12)) | tf.map(fail_on_7, backend=make("dask"),
                                                on_error=tf.DeadLetter(dead))
    await flow.to_list()
    assert "remote traceback (Dask worker)" in notes(dead[0].exception)
    assert "fail_on_7" in notes(dead[0].exception)
    flow2 = tf.from_iterable(range(3)) | tf.map(unpicklable_result, backend=make("dask"),
                                                name="crunch")
    with pytest.raises(ExceptionGroup) as info:
        await flow2.to_list()
    (err, *_) = leaves(info.value)
    assert isinstance(err, tf.BackendError) and "'crunch'" in str(err)


def own_processes() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def listening_ips() -> list[str]:
    import psutil

    me = psutil.Process()
    out = []
    for proc in [me, *me.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.append(conn.laddr.ip)
    return out


def dask_threads() -> set[str]:
    # Dask's offload executor is module-level (one thread, reused); Trio's thread cache too
    return {t.name for t in threading.enumerate()
            if not t.name.startswith(("Trio thread", "Dask-Offload"))}


async def test_dask_without_address_starts_and_closes_its_own_local_cluster() -> None:
    procs, threads = own_processes(), dask_threads()
    seen: list[set[int]] = []
    listening: list[str] = []

    def poly_seen(x: int) -> int:  # cloudpickled: a closure is fine for Dask
        return poly(x)

    async def spy() -> None:
        await eventually(lambda: len(own_processes() - procs) >= 2, within=20)
        seen.append(own_processes() - procs)
        listening.extend(listening_ips())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spy)
        out = await (tf.from_iterable(range(50))
                     | tf.map(poly_seen, backend=tf.Dask(n_workers=2, chunk=8))).to_list()
    assert out == [poly(x) for x in range(50)]
    assert seen and len(seen[0]) >= 2  # the worker processes (their nannies too)
    assert listening and set(listening) == {"127.0.0.1"}  # loopback only, dashboard included
    await eventually(lambda: own_processes() == procs, within=10)
    await eventually(lambda: dask_threads() <= threads, within=10)


async def test_dask_against_a_scheduler_and_a_worker_in_separate_processes(
    tmp_path: Path,
) -> None:
    sched_file = tmp_path / "s.json"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    scheduler = await trio.lowlevel.open_process(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", "127.0.0.1:0",
         "--scheduler-file", str(sched_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker: trio.Process | None = None
    try:
        await eventually(sched_file.exists, within=30)
        worker = await trio.lowlevel.open_process(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
             str(sched_file), "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        dead: list[tf.DeadLetterEntry] = []
        flow = tf.from_iterable(range(40)) | tf.map(
            fail_on_7, backend=tf.Dask(address=address, chunk=8), on_error=tf.DeadLetter(dead))
        with trio.fail_after(60):
            assert await flow.to_list() == [x * 2 for x in range(40) if x % 10 != 7]
        assert sorted(e.item for e in dead) == [7, 17, 27, 37]
        assert scheduler.poll() is None  # a remote cluster is left running
    finally:
        with trio.CancelScope(shield=True):
            for proc in (worker, scheduler):
                if proc is not None:
                    proc.terminate()
            for proc in (worker, scheduler):
                if proc is not None:
                    with trio.move_on_after(15):
                        await proc.wait()
                    if proc.poll() is None:
                        proc.kill()
                        await proc.wait()


def test_dask_definition_errors() -> None:
    with pytest.raises(tf.DefinitionValueError, match="limit"):
        tf.Dask(limit=0)
    with pytest.raises(tf.DefinitionValueError, match="n_workers"):
        tf.Dask(n_workers=0)
    with pytest.raises(tf.DefinitionTypeError, match="address"):
        tf.Dask(address=8786)  # type: ignore[arg-type]
    assert tf.map(poly, backend=tf.Dask(limit=6)).concurrency == 6  # type: ignore[attr-defined]


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"trioflow\[dask\]"):
        tf.Dask()


def test_importing_trioflow_never_imports_dask() -> None:
    code = ("import sys, trioflow; trioflow.Dask(); "
            "assert not {'dask', 'distributed'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", KINDS)
async def test_filter_tap_flat_map_on_every_backend(kind: str) -> None:
    """Every stage that runs user code takes a backend: the same chunked calls, with each
    operator's meaning applied to the results on the Trio side."""
    xs = list(range(25))
    flow = (
        tf.from_iterable(xs)
        | tf.filter(is_odd, backend=make(kind))
        | tf.tap(noop, backend=make(kind))
        | tf.flat_map(repeat_gen, backend=make(kind))
    )
    assert await flow.to_list() == [x for x in xs if x % 2 for _ in range(x % 3)]
    if kind != "inline":
        assert all(not n.fused for n in flow.plan().nodes[1:4])


# -- retries, timeouts and sinks on worker backends -------------------------------------------


@pytest.mark.parametrize("kind", ["threads", "processes"])
async def test_retry_on_a_worker_backend_reaches_the_dead_letter(kind: str) -> None:
    letters: list[tf.DeadLetterEntry] = []
    stage = tf.map(fail_on_7, backend=make(kind), name="r", on_error=tf.DeadLetter(letters),
                   retry=tf.Retry(attempts=3, backoff=tf.Backoff(min=0.001, jitter=0)))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(10)) | stage | tf.to_list()).run)
        await handle.wait()
    assert handle.result() == [x * 2 for x in range(10) if x != 7]
    assert [(e.item, e.attempt) for e in letters] == [(7, 3)]
    assert handle.statistics().stage("r").retries == 2


async def test_retry_on_threads_recovers_a_flaky_call() -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(x: int) -> int:
        with lock:
            calls[x] = calls.get(x, 0) + 1
            first = calls[x] == 1
        if first and x % 3 == 0:
            raise ConnectionError(x)
        return x * 2

    stage = tf.map(flaky, backend=tf.Threads(limit=3, chunk=4),
                   retry=tf.Retry(attempts=2, on=ConnectionError, backoff=tf.Backoff(min=0.001)))
    assert await (tf.from_iterable(range(12)) | stage).to_list() == [x * 2 for x in range(12)]
    assert all(calls[x] == (2 if x % 3 == 0 else 1) for x in range(12))


@pytest.mark.parametrize("kind", ["threads", "processes"])
async def test_timeout_on_a_worker_backend_is_per_item(kind: str) -> None:
    def pick(x: int) -> int:
        return x

    # sleep_long takes an hour: the 0.3 s limit gives the call up (thread abandoned, process
    # job killed) and the item is skipped; the others go through
    stage = tf.map(sleep_long, backend=make(kind), timeout=0.3, on_error=tf.Skip(), name="t")
    flow = tf.from_iterable([1]) | stage
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((flow | tf.to_list()).run)
        await handle.wait()
    assert handle.result() == []
    assert handle.statistics().stage("t").skipped == 1
    ok = tf.map(pick, backend=make(kind), timeout=5)
    assert await (tf.from_iterable(range(5)) | ok).to_list() == list(range(5))


async def test_sink_on_a_worker_backend() -> None:
    got: list[int] = []
    await (tf.from_iterable(range(20)) | tf.sink(got.append, backend=tf.Threads(limit=2, chunk=3))).run()
    assert sorted(got) == list(range(20))
    letters: list[tf.DeadLetterEntry] = []
    sink = tf.sink(fail_on_7, backend=make("processes"), on_error=tf.DeadLetter(letters))
    await (tf.from_iterable(range(10)) | sink).run()
    assert [e.item for e in letters] == [7]


@pytest.mark.parametrize("kind", KINDS)
async def test_take_while_scan_reduce_on_every_backend(kind: str) -> None:
    """The stateful operators run on backends too: scan and reduce fold each chunk in one
    call from the current accumulator (a failed item leaves it unchanged), take_while stops
    at the first false item."""
    xs = list(range(20))
    flow = tf.from_iterable(xs) | tf.take_while(below_12, backend=make(kind))
    assert await flow.to_list() == list(range(12))

    scan = tf.scan(add_or_fail_on_5, 0, backend=make(kind), on_error=tf.Skip())
    want, acc = [], 0
    for x in xs:
        if x != 5:
            acc += x
            want.append(acc)
    assert await (tf.from_iterable(xs) | scan).to_list() == want

    total = await (tf.from_iterable(xs) | tf.reduce(add_or_fail_on_5, 0, backend=make(kind),
                                                    on_error=tf.Skip())).run()
    assert total == sum(xs) - 5
    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable(xs) | tf.reduce(add_or_fail_on_5, 0, backend=make(kind))).run()


def test_fold_backends_refuse_retry() -> None:
    with pytest.raises(tf.DefinitionValueError, match="retry"):
        tf.scan(add_or_fail_on_5, 0, backend=tf.Threads(), retry=tf.Retry())
