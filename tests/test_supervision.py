"""Supervision: restart failed persistent workers (rebuilding their resource) and failed
continuous sources, with backoff and a restart budget."""

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._policies import Supervisor
from trioflow.testing import ResourceTracker, assert_no_leftovers


class ConnectionLost(Exception):
    pass


async def test_persistent_worker_restarts_with_a_new_resource(autojump_clock: trio.testing.MockClock) -> None:
    opened: list[int] = []
    closed: list[int] = []
    broken = {3, 7}  # these items break the connection, once each

    @asynccontextmanager
    async def connect() -> AsyncIterator[int]:
        conn = len(opened)
        opened.append(conn)
        try:
            yield conn
        finally:
            closed.append(conn)

    async def write(conn: int, x: int) -> tuple[int, int]:
        await trio.sleep(1)
        if x in broken:
            broken.discard(x)
            raise ConnectionLost(x)
        return conn, x

    tracker = ResourceTracker()
    restart = tf.Restart(max_restarts=5, within=100, backoff=tf.Backoff(min=2, jitter=0))
    pipeline = tf.from_iterable(range(10)) | tf.persistent(
        write, resource=tracker.factory(connect), restart=restart, name="db"
    ) | tf.to_list()
    async with assert_no_leftovers(), trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await handle.wait()
    tracker.assert_all_closed()
    assert (tracker.opened, tracker.closed_on_error) == (3, 2)  # two lost connections
    out = handle.result()
    assert [x for _, x in out] == list(range(10))  # the failed items were retried: none lost
    assert opened == [0, 1, 2] and sorted(closed) == [0, 1, 2]  # rebuilt twice, all closed
    assert handle.statistics().stage("db").restarts == 2


async def test_restart_budget_exhausted_fails_the_run(autojump_clock: trio.testing.MockClock) -> None:
    @asynccontextmanager
    async def connect() -> AsyncIterator[None]:
        yield None

    async def always(conn: None, x: int) -> int:
        raise ConnectionLost(x)

    restart = tf.Restart(max_restarts=2, within=100, backoff=tf.Backoff(min=1, jitter=0))
    with pytest.RaisesGroup(ConnectionLost):
        await (tf.from_iterable(range(3)) | tf.persistent(always, resource=connect, restart=restart)).run()


async def test_source_restarts_and_keeps_emitting(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def flaky_reader(emit: tf.Emit[int]) -> None:
        nonlocal calls
        calls += 1
        for i in range(3):
            await emit(calls * 10 + i)
        if calls < 3:
            raise ConnectionLost(calls)

    restart = tf.Restart(max_restarts=3, within=60, backoff=tf.Backoff(min=1, jitter=0))
    out = await (tf.source(flaky_reader, restart=restart) | tf.to_list()).run()
    assert out == [10, 11, 12, 20, 21, 22, 30, 31, 32]


async def test_errors_from_downstream_are_not_restarted() -> None:
    @asynccontextmanager
    async def connect() -> AsyncIterator[None]:
        yield None

    async def ok(conn: None, x: int) -> int:
        return x

    def boom(x: int) -> int:
        raise ValueError(x)

    restart = tf.Restart(max_restarts=100)
    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable(range(3)) | tf.persistent(ok, resource=connect, restart=restart)
               | tf.map(boom)).run()


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(0, 10), min_size=1, max_size=30).map(lambda ts: sorted(ts)),
    max_restarts=st.integers(0, 5),
    within=st.floats(0.5, 20),
)
def test_supervisor_matches_a_sliding_window_model(
    times: list[float], max_restarts: int, within: float
) -> None:
    policy = tf.Restart(max_restarts=max_restarts, within=within, backoff=tf.Backoff(min=1, jitter=0),
                        reset_after=1e9)
    sup = Supervisor(policy, random.Random(0))
    restarted: list[float] = []
    for t in times:
        delay = sup.on_failure(t)
        in_window = [r for r in restarted if t - r < within]
        if len(in_window) >= max_restarts:
            assert delay is None
            return  # the run has failed: no more failures are seen
        assert delay is not None
        assert delay == min(policy.backoff.max, policy.backoff.min * 2 ** len(in_window))
        restarted.append(t)
    assert sup.restarts == len(restarted)


def test_quiet_period_resets_the_count() -> None:
    policy = tf.Restart(max_restarts=1, within=100, reset_after=5, backoff=tf.Backoff(jitter=0))
    sup = Supervisor(policy)
    assert sup.on_failure(0) is not None
    assert sup.on_failure(1) is None  # second failure within the window: give up
    sup2 = Supervisor(policy)
    assert sup2.on_failure(0) is not None
    assert sup2.on_failure(6) is not None  # 6 s of quiet: the count started again


def test_restart_validation() -> None:
    with pytest.raises(tf.DefinitionValueError, match="max_restarts"):
        tf.Restart(max_restarts=-1)
    with pytest.raises(tf.DefinitionValueError, match="within"):
        tf.Restart(within=0)
    with pytest.raises(tf.DefinitionTypeError, match="restart"):
        async def src(emit: tf.Emit[int]) -> None: ...

        tf.source(src, restart=3)  # type: ignore[arg-type]
