"""``parallel(..., backend=)``: each branch's call on a real worker backend (threads,
processes), under the block's policy and timeout; what is refused at definition time.

Worker processes import the functions they run by name, so process tests use the
module-level functions of ``backend_fns``. Real threads and processes, hence the real
clock: short bounded waits only, no assertion on speed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from backend_fns import fail_on_7, length, poly, sleep_medium, write_pid_then_hang

import trioflow as tf

KINDS = ["threads", "processes"]


def make(kind: str) -> tf.Backend:
    return tf.Threads(limit=4) if kind == "threads" else tf.Processes(limit=2)


def run(flow: tf.Flow[Any]) -> Any:
    async def main() -> Any:
        with trio.fail_after(120):  # a hung run fails the test instead of hanging it
            return await flow.run()

    return trio.run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_branches_run_on_the_backend_in_input_order(kind: str) -> None:
    items = list(range(12))
    flow = (tf.from_iterable(items)
            | tf.parallel(poly, fail_on_7, policy=tf.BestEffort(), backend=make(kind),
                          concurrency=3)
            | tf.to_list())
    out = run(flow)
    assert [a.unwrap() for a, _ in out] == [poly(x) for x in items]
    for x, (_, b) in zip(items, out, strict=True):
        if x == 7:
            assert isinstance(b, tf.Error) and isinstance(b.error, ValueError)
            assert "bad item 7" in str(b.error)
        else:
            assert b == tf.Value(x * 2)


@pytest.mark.parametrize("kind", KINDS)
def test_all_or_nothing_fails_with_the_branch_error(kind: str) -> None:
    flow = (tf.from_iterable(range(10))
            | tf.parallel(p=poly, f=fail_on_7, backend=make(kind), name="models")
            | tf.to_list())
    with pytest.raises(ExceptionGroup) as info:
        run(flow)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, ValueError) and "bad item 7" in str(leaf)
    assert "trioflow: raised in parallel branch 'f'" in getattr(leaf, "__notes__", [])


def test_named_branches_on_threads_run_in_worker_threads() -> None:
    seen: list[str] = []

    def where(x: int) -> str:
        name = threading.current_thread().name
        seen.append(name)
        return name

    flow = (tf.from_iterable(range(4))
            | tf.parallel(a=where, b=str, backend=tf.Threads(limit=2)) | tf.to_list())
    out = run(flow)
    assert [d["b"] for d in out] == ["0", "1", "2", "3"]
    assert len(seen) == 4 and all(name != "MainThread" for name in seen)


def test_timeout_kills_the_process_of_a_runaway_branch(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    flow = (tf.from_iterable([str(pidfile)])
            | tf.parallel(n=length, hang=write_pid_then_hang, policy=tf.BestEffort(),
                          timeout=3.0, backend=tf.Processes(limit=2))
            | tf.to_list())
    (out,) = run(flow)
    assert out["n"] == tf.Value(len(str(pidfile)))
    assert isinstance(out["hang"], tf.Error)
    assert isinstance(out["hang"].error, trio.TooSlowError)
    pid = int(pidfile.read_text())

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    for _ in range(600):  # the kill is asynchronous: give it up to ~30 s
        if not alive():
            break
        time.sleep(0.05)
    assert not alive(), "the worker running the timed-out branch was killed"


def test_timeout_abandons_a_thread_branch() -> None:
    flow = (tf.from_iterable([1, 2])
            | tf.parallel(fast=poly, slow=sleep_medium, policy=tf.AtLeast(1), timeout=0.2,
                          backend=tf.Threads(limit=4))
            | tf.to_list())
    out = run(flow)
    assert [d["fast"] for d in out] == [tf.Value(poly(1)), tf.Value(poly(2))]
    assert all(isinstance(d["slow"].error, trio.TooSlowError) for d in out)


def test_a_branch_of_fork_join_on_processes() -> None:
    stage = tf.fork_join(
        tf.map(str),
        tf.parallel(poly, poly, backend=tf.Processes(limit=2)),
    )
    out = run(tf.from_iterable(range(5)) | stage | tf.to_list())
    assert out == [(str(x), (poly(x), poly(x))) for x in range(5)]


def test_inline_backend_is_the_default() -> None:
    stage = tf.parallel(poly, backend=tf.Inline())
    assert getattr(stage, "backend", "missing") is None
    assert run(tf.from_iterable([3]) | stage | tf.to_list()) == [(poly(3),)]


async def _async_fn(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("make_stage", "error", "message"),
    [
        (lambda: tf.parallel(poly, _async_fn, backend=tf.Threads()), tf.DefinitionTypeError,
         "function #1 of parallel must be a plain (sync) function with backend=Threads"),
        (lambda: tf.parallel(a=_async_fn, backend=tf.Processes()), tf.DefinitionTypeError,
         "function 'a' of parallel must be a plain (sync) function with backend=Processes"),
        (lambda: tf.parallel(poly, backend="processes"), tf.DefinitionTypeError,
         "backend must be Inline(), Threads(...) or Processes(...), got 'processes'"),
        (lambda: tf.parallel(poly, backend=tf.Dask()), tf.DefinitionValueError,
         "backend=Dask("),
    ],
)
def test_definition_checks_name_the_argument(make_stage: Any, error: type[Exception],
                                             message: str) -> None:
    with pytest.raises(error) as info:
        make_stage()
    assert message in str(info.value)


def test_a_run_with_acknowledgements_refuses_a_block_on_a_worker_backend() -> None:
    flow = (tf.from_iterable(range(3), on_ack=print)
            | tf.parallel(poly, backend=tf.Threads(), name="models") | tf.to_list())
    with pytest.raises(tf.DefinitionValueError, match="'models' runs on a worker backend"):
        flow.plan()
    inline = (tf.from_iterable(range(3), on_ack=print)
              | tf.parallel(poly, backend=tf.Inline()) | tf.to_list())
    inline.plan()  # the block on the Trio thread carries acknowledgements as before
