"""Regressions of issue 9, each named after the bug it pins (each failed before its fix)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf
from trioflow.testing import assert_no_leftovers

ROOT = Path(__file__).resolve().parent.parent


# -- cancel with Collect ------------------------------------------------------------------------


async def test_cancel_of_a_run_with_collected_failures_returns_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(1)
        if x == 1:
            raise ValueError(x)
        return x

    pipeline = tf.from_iterable(range(100)) | tf.map(slow, on_error=tf.Collect(), name="check") | tf.to_list()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await trio.sleep(5.5)
        assert len(handle.failures()) == 1
        handle.cancel()
        assert await handle.wait() is tf.RunState.CANCELLED
    # the nursery exited without an exception: run returned quietly
    (entry,) = handle.failures()
    assert entry.stage == "check" and entry.item == 1


# -- Ctrl-C ---------------------------------------------------------------------------------------


async def test_keyboard_interrupt_from_a_stage_propagates_bare() -> None:
    def interrupt(x: int) -> int:
        if x == 3:
            raise KeyboardInterrupt
        return x

    async def same(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x

    pipeline = tf.from_iterable(range(10)) | tf.map(interrupt) | tf.map(same, concurrency=2)
    with pytest.raises(KeyboardInterrupt):  # not a BaseExceptionGroup holding one
        await pipeline.run()


def test_ctrl_c_of_a_real_process_arrives_as_keyboard_interrupt() -> None:
    script = textwrap.dedent("""
        import os, signal, trio
        import trioflow as tf

        async def slow(x):
            if x == 5:
                os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep(0.01)
            return x

        async def main():
            await (tf.from_iterable(range(10**6)) | tf.map(slow, concurrency=4) | tf.to_list()).run()

        try:
            trio.run(main)
        except KeyboardInterrupt:
            print("caught KeyboardInterrupt")
        except BaseException as exc:
            print("caught", type(exc).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.stdout.strip() == "caught KeyboardInterrupt", done.stdout + done.stderr


# -- flat_map generators and retry --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_flat_map_of_a_generator_honours_retry(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    attempts: dict[int, int] = {}

    def sync_gen(x: int) -> Iterator[int]:
        attempts[x] = attempts.get(x, 0) + 1
        yield x * 10
        if attempts[x] < 3:
            raise ConnectionError(x)  # after it yielded an item: the retry starts it again
        yield x * 10 + 1

    async def async_gen(x: int) -> AsyncIterator[int]:
        for out in sync_gen(x):
            await trio.lowlevel.checkpoint()
            yield out

    fn = sync_gen if kind == "sync" else async_gen
    stage = tf.flat_map(fn, retry=tf.Retry(attempts=3, backoff=tf.Backoff(min=1, jitter=0)), name="gen")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(4)) | stage | tf.to_list()).run)
    got = handle.result()
    # each item's outputs exactly once: the yields of failed attempts are never emitted
    assert got == [y for x in range(4) for y in (x * 10, x * 10 + 1)]
    assert attempts == {x: 3 for x in range(4)}
    assert handle.statistics().stage("gen").retries == 8


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_flat_map_of_a_generator_retries_then_applies_the_error_policy(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    def sync_gen(x: int) -> Iterator[int]:
        yield x
        if x == 2:
            raise ValueError(x)

    async def async_gen(x: int) -> AsyncIterator[int]:
        for out in sync_gen(x):
            yield out

    letters: list[tf.DeadLetterEntry] = []
    fn = sync_gen if kind == "sync" else async_gen
    stage = tf.flat_map(fn, retry=tf.Retry(attempts=2, backoff=tf.Backoff(min=1, jitter=0)),
                        on_error=tf.DeadLetter(letters), name="gen")
    got = await (tf.from_iterable(range(4)) | stage).to_list()
    assert got == [0, 1, 3]  # item 2 dead-lettered whole, its first output not emitted
    (entry,) = letters
    assert entry.item == 2 and entry.attempt == 2


# -- every error a run reports names its stage ---------------------------------------------------


async def test_dead_lettered_parallel_block_error_names_its_stage() -> None:
    def bad(x: int) -> int:
        raise ValueError(x)

    letters: list[tf.DeadLetterEntry] = []
    stage = tf.parallel(lambda x: x, bad, policy=tf.AtLeast(2), on_error=tf.DeadLetter(letters),
                        name="block")
    assert await (tf.from_iterable([1]) | stage).to_list() == []
    (entry,) = letters
    assert isinstance(entry.exception, tf.ParallelBlockError)
    assert any("stage 'block'" in note for note in entry.exception.__notes__)
    assert "stage 'block'" in entry.traceback


async def test_run_until_signal_raises_a_failed_runs_group_as_it_is() -> None:
    def bad(x: int) -> int:
        raise ValueError(x)

    with pytest.RaisesGroup(ValueError) as info:  # one level, not a group in a group
        await tf.run_until_signal(tf.from_iterable(range(3)) | tf.map(bad, name="b") | tf.to_list())
    (leaf,) = info.value.exceptions
    assert "stage 'b'" in "".join(leaf.__notes__)


# -- drain: push sources finish on their own; junctions lose nothing ------------------------------


async def test_drain_lets_a_tcp_server_source_finish_what_it_read() -> None:
    """A push source written as a TCP server: its handlers read lines and emit them. The
    drain begins after every client has sent everything and closed, and the server has
    accepted every connection; the source stops accepting, its handlers read to the end
    and emit, and every line is in the sink."""
    clients, lines_each = 20, 500
    got: list[str] = []
    accepted = trio.Semaphore(0)

    async def serve(emit: tf.Emit[str], task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def handle(stream: trio.SocketStream) -> None:
            accepted.release()
            tail = b""
            async with stream:
                while True:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    *records, tail = (tail + data).split(b"\n")
                    await emit.many([r.decode() for r in records])
                    await trio.sleep(0.001)  # a slow parser: the drain begins mid-stream

        async with trio.open_nursery() as handlers:
            with emit.cancel_on_drain():  # stop accepting when a drain begins
                task_status.started(port)
                await trio.serve_listeners(handle, listeners, handler_nursery=handlers)
            # handlers go on until their clients are done

    port_box: list[int] = []

    async def serve_and_tell(emit: tf.Emit[str], task_status: trio.TaskStatus[None]) -> None:
        class Status:
            def started(self, port: int) -> None:
                port_box.append(port)
                task_status.started()

        await serve(emit, Status())  # type: ignore[arg-type]

    async def write(x: str) -> None:
        got.append(x)

    pipeline = tf.source(serve_and_tell, name="server") | tf.sink(write, buffer=64)
    sent: list[str] = []
    async with assert_no_leftovers(), trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        async with trio.open_nursery() as senders:
            for c in range(clients):
                lines = [f"{c}:{i}" for i in range(lines_each)]
                sent.extend(lines)

                async def send(lines: list[str] = lines) -> None:
                    stream = await trio.open_tcp_stream("127.0.0.1", port_box[0])
                    async with stream:
                        await stream.send_all(("\n".join(lines) + "\n").encode())

                senders.start_soon(send)
        for _ in range(clients):
            await accepted.acquire()
        state = await handle.drain(timeout=60)
    assert state is tf.RunState.COMPLETED
    assert sorted(got) == sorted(sent)


async def test_drain_past_its_deadline_cancels_a_push_source_and_does_not_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def deaf(emit: tf.Emit[int]) -> None:  # ignores the drain
        for i in itertools.count():
            await emit(i)
            await trio.sleep(1)

    pipeline = tf.source(deaf) | tf.to_list()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await trio.sleep(10)
        assert await handle.drain(timeout=5) is tf.RunState.CANCELLED
    assert handle.state is tf.RunState.CANCELLED


@settings(max_examples=60, deadline=None)
@given(drain_at=st.floats(0, 20), buffer=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_drain_while_a_balance_waits_for_room_loses_nothing(drain_at: float, buffer: int, seed: int) -> None:
    accepted: list[int] = []

    async def push(emit: tf.Emit[int]) -> None:
        for i in itertools.count(step=3):
            if emit.draining:
                return
            chunk = [i, i + 1, i + 2]
            accepted.extend(chunk)
            await emit.many(chunk)

    async def slow(x: int) -> int:
        await trio.sleep(0.5 + (x * seed) % 3)
        return x

    async def main() -> list[int]:
        g = tf.Graph()
        src = g.add(tf.source(push))
        lanes = g.balance(src)
        a = g.add(tf.map(slow, buffer=buffer), lanes)
        b = g.add(tf.map(slow, buffer=buffer), lanes)
        out = g.add(tf.to_list(), g.merge(a, b))
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(g.run)
            await trio.sleep(drain_at)
            assert await handle.drain() is tf.RunState.COMPLETED
        got: list[int] = handle.result()[out]
        return got

    got = run_virtual(main)
    assert sorted(got) == accepted



# -- balance is first free -----------------------------------------------------------------------


def test_balance_sends_each_item_to_a_free_branch_not_to_a_busy_one() -> None:
    """Three branches, two fast (10 ms) and one slow (1 s), 600 items: first-free gives the
    slow branch a few items, and the run takes about 600 * 10 ms / 2 = 3 s of virtual time
    (round-robin would take 200 s; the old most-room balance took minutes)."""
    counts = {"fast1": 0, "fast2": 0, "slow": 0}

    def worker(name: str, delay: float):  # type: ignore[no-untyped-def]
        async def work(x: int) -> int:
            counts[name] += 1
            await trio.sleep(delay)
            return x

        return work

    async def main() -> tuple[list[int], float]:
        g = tf.Graph()
        src = g.add(tf.from_iterable(range(600)))
        lanes = g.balance(src)
        branches = [g.add(tf.map(worker(name, delay), name=name), lanes)
                    for name, delay in (("fast1", 0.01), ("fast2", 0.01), ("slow", 1.0))]
        out = g.add(tf.to_list(), g.merge(*branches))
        start = trio.current_time()
        results = await g.run()
        return results[out], trio.current_time() - start

    got, took = run_virtual(main)
    assert sorted(got) == list(range(600))
    assert counts["slow"] <= 5, counts
    assert took < 4.5, took


def test_balance_feeds_a_pool_no_more_than_it_can_start() -> None:
    """A pool of 4 slow workers and a single fast branch: the pool takes 4 items at a time
    (what its idle workers can start), never a whole chunk that would wait in its queue."""
    counts = {"pool": 0, "fast": 0}

    async def slow(x: int) -> int:
        counts["pool"] += 1
        await trio.sleep(1)
        return x

    async def fast(x: int) -> int:
        counts["fast"] += 1
        await trio.sleep(0.01)
        return x

    async def main() -> list[int]:
        g = tf.Graph()
        lanes = g.balance(g.add(tf.from_iterable(range(1000))))
        a = g.add(tf.map(slow, concurrency=4), lanes)
        b = g.add(tf.map(fast), lanes)
        out = g.add(tf.to_list(), g.merge(a, b))
        results = await g.run()
        got: list[int] = results[out]
        return got

    assert sorted(run_virtual(main)) == list(range(1000))
    # the fast branch does 100 items a second; the run lasts about 10 s: the pool starts
    # 4 items per second at most
    assert counts["pool"] <= 4 * 11, counts


# -- a fan-out after an unordered pool -----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), buffer=st.integers(1, 4), n=st.integers(1, 60))
def test_broadcast_after_an_unordered_pool_feeds_every_branch_the_same_sequence(
    seed: int, buffer: int, n: int
) -> None:
    async def jitter(x: int) -> int:
        await trio.sleep((x * 7919 + seed) % 3)  # many finish at once
        return x

    async def main() -> list[tuple[int, int]]:
        g = tf.Graph()
        pooled = g.add(tf.from_iterable(range(n)) | tf.map(jitter, concurrency=8, ordered=False))
        fan = g.broadcast(pooled)
        a = g.add(tf.map(lambda x: x * 2, buffer=buffer), fan)
        b = g.add(tf.map(lambda x: x * 3, buffer=buffer), fan)
        out = g.add(tf.to_list(), g.zip(a, b))
        got: list[tuple[int, int]] = (await g.run(buffer=buffer))[out]
        return got

    pairs = run_virtual(main)
    assert len(pairs) == n
    assert all(x * 3 == y * 2 for x, y in pairs)  # zip paired the same item
    assert sorted(x // 2 for x, _ in pairs) == list(range(n))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), buffer=st.integers(1, 3), n=st.integers(1, 60))
def test_fork_join_after_an_unordered_pool_joins_every_item(seed: int, buffer: int, n: int) -> None:
    async def jitter(x: int) -> int:
        await trio.sleep((x * 7919 + seed) % 3)  # many finish at once
        return x

    async def main() -> list[tuple[int, int]]:
        flow = (tf.from_iterable(range(n)) | tf.map(jitter, concurrency=8, ordered=False)
                | tf.fork_join(tf.map(lambda x: x + 1), tf.map(lambda x: -x), buffer=buffer))
        return await flow.to_list(buffer=buffer)

    joined = run_virtual(main)
    assert sorted(joined) == sorted((x + 1, -x) for x in range(n))


@pytest.mark.parametrize("acks", [False, True])
async def test_a_failure_raced_by_an_outside_cancel_still_raises_the_failure(
    autojump_clock: trio.testing.MockClock, acks: bool
) -> None:
    # found by the generated pipelines (long profile): a fail-fast error and a cancel of the
    # scope around the run arriving together came out, in a run with acknowledgements, as
    # a bare Cancelled with the state FAILED: the error was lost
    def fails(x: int) -> int:
        raise ValueError(f"no {x}")

    async def double(x: int) -> int:
        return x * 2

    kw: dict[str, Any] = {"on_ack": lambda a: None} if acks else {}
    pipeline = tf.from_iterable([0], **kw) | tf.map(double) | tf.map(fails) | tf.to_list()
    with pytest.raises(ExceptionGroup) as info:
        with trio.CancelScope() as outside:
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(
                    lambda task_status: pipeline.run(chunk_size=1, buffer=1, task_status=task_status))
                await trio.lowlevel.checkpoint()
                if handle.state is tf.RunState.RUNNING:
                    outside.cancel()
    assert handle.state is tf.RunState.FAILED
    [run_failed] = info.value.exceptions
    assert isinstance(run_failed, ExceptionGroup)
    assert [repr(e) for e in run_failed.exceptions] == ["ValueError('no 0')"]
