"""Redis Streams source and writer (trioflow/io/_redis.py) against a real redis-server.

Real time, generous bounds (``WAIT``), never a wall-time assertion: the BLOCK timeout keeps
cancellation and drain prompt, the bounds only stop a broken test from hanging.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from redis_server import RedisServer

import trioflow as tf
import trioflow.io as tfio

#: bound on any wait of a test (never reached when things work)
WAIT = 30.0
_names = itertools.count()


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
    redis_server.flush()
    yield redis_server


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with server.client() as c:
        yield c


def fresh(prefix: str = "s") -> str:
    return f"{prefix}{next(_names)}"


def add(client: redis.Redis, stream: str, n: int, start: int = 0, atomic: bool = False) -> list[str]:
    pipe = client.pipeline(transaction=atomic)
    for i in range(start, start + n):
        pipe.xadd(stream, {"n": str(i), "text": f"item {i}"})
    return [str(x) for x in pipe.execute()]


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


async def wait_for(cond: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not cond():  # noqa: ASYNC110 (a condition on the server: polled)
            await trio.sleep(0.01)


async def steady(value: Callable[[], int]) -> int:
    """``value()`` once it stopped changing for 0.5 s (several BLOCK periods)."""
    last = -1
    while (now := value()) != last:
        last = now
        await trio.sleep(0.5)
    return now


async def run_until(flow: tf.Flow[Any] | Any, cond: Callable[[], bool],
                    consumers: list[tfio.RedisConsumer] | None = None) -> tf.RunState:
    """Run ``flow`` (a pipeline with a sink) until ``cond()``, then drain it."""
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await wait_for(cond)
        state = await handle.drain(timeout=WAIT)
    return state


# ------------------------------------------------------------------------------- round trip


async def test_round_trip_writer_to_source(server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    rows = [{"n": str(i), "text": f"item {i}"} for i in range(1000)]
    written = await (tf.from_iterable(rows) | tf.batch(100)
                     | tfio.write_redis_stream(server.url, stream) | tf.to_list()).run()
    assert [r for batch in written for r in batch] == rows
    assert client.xlen(stream) == 1000

    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c1", count=64, block_ms=300,
                              on_start=consumers.append)
            | tf.sink(got.append))
    assert await run_until(flow, lambda: len(got) == 1000) is tf.RunState.COMPLETED
    assert [dict(e.fields) for e in got] == rows          # stream order, every field
    assert len({e.id for e in got}) == 1000
    assert all(e.deliveries == 1 for e in got)
    assert pending(client, stream, "g") == 0              # all acknowledged by the drain's end
    stats = consumers[0].statistics()
    assert (stats.read, stats.reread, stats.claimed, stats.acked) == (1000, 0, 0, 1000)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_both_reply_protocols(server: RedisServer, client: redis.Redis, protocol: int) -> None:
    # the source parses raw XREADGROUP/XAUTOCLAIM replies: a map per stream (RESP3, redis-py's
    # default) or a list (RESP2); re-read, claimed and new entries, with acknowledgements
    stream = fresh()
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = add(client, stream, 300)
    client.xreadgroup("g", "c", {stream: ">"}, count=100)     # pending for "c": re-read
    client.xreadgroup("g", "dead", {stream: ">"}, count=100)  # pending for "dead": claimed
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(f"{server.url}?protocol={protocol}", stream, "g", "c", count=50, block_ms=300,
                              claim_min_idle=0.05, on_start=consumers.append)
            | tf.batch(30, timeout=0.01) | tf.sink(got.extend))
    assert await run_until(flow, lambda: len(got) == 300 and pending(client, stream, "g") == 0) is (
        tf.RunState.COMPLETED)
    assert sorted(e.id for e in got) == sorted(ids)
    assert {e.id: e.fields for e in got}[ids[7]] == {"n": "7", "text": "item 7"}
    stats = consumers[0].statistics()
    assert (stats.reread, stats.claimed, stats.read, stats.acked) == (100, 100, 100, 300)


async def test_rejected_entries_are_acknowledged_after_their_letter(
        server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    add(client, stream, 20)
    letters: list[tf.DeadLetterEntry] = []
    pending_at_letter: list[int] = []

    def letter(entry: tf.DeadLetterEntry) -> None:
        # the entry is still pending while its letter is written
        pending_at_letter.append(len(client.xpending_range(stream, "g", entry.item.id, entry.item.id, 1)))
        letters.append(entry)

    def check(e: tfio.StreamEntry) -> tfio.StreamEntry:
        if int(e.fields["n"]) % 5 == 0:
            raise ValueError(f"bad {e.fields['n']}")
        return e

    got: list[tfio.StreamEntry] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=300)
            | tf.map(check, on_error=tf.DeadLetter(letter)) | tf.sink(got.append))
    assert await run_until(flow, lambda: len(got) + len(letters) == 20) is tf.RunState.COMPLETED
    assert sorted(int(e.item.fields["n"]) for e in letters) == [0, 5, 10, 15]
    assert pending_at_letter == [1, 1, 1, 1]
    assert pending(client, stream, "g") == 0


async def test_group_may_exist_and_is_created_with_the_stream(server: RedisServer,
                                                              client: redis.Redis) -> None:
    stream = fresh()
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=300, on_start=consumers.append)
            | tf.sink(got.append))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        # ready: the group (and the stream) exist before start returned
        assert client.xinfo_groups(stream)[0]["name"] == "g"
        add(client, stream, 3)
        await wait_for(lambda: len(got) == 3)
        assert await handle.drain(timeout=WAIT) is tf.RunState.COMPLETED
    got2: list[tfio.StreamEntry] = []
    add(client, stream, 2, start=3)
    flow2 = tfio.redis_source(server.url, stream, "g", "c", block_ms=300) | tf.sink(got2.append)
    assert await run_until(flow2, lambda: len(got2) == 2) is tf.RunState.COMPLETED  # BUSYGROUP is fine
    assert [e.fields["n"] for e in got2] == ["3", "4"]


# ------------------------------------------------------------------ crashes, at least once


def _table(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, text FROM readings ORDER BY id").fetchall()


def _db_flow(source: tf.Flow[tfio.StreamEntry], path: Path, crash_at_batch: int | None,
             seen: list[tfio.StreamEntry]) -> Any:
    batches = itertools.count(1)

    def row(e: tfio.StreamEntry) -> dict[str, object]:
        seen.append(e)
        return {"id": int(e.fields["n"]), "text": e.fields["text"]}

    def after_commit(batch: list[dict[str, object]]) -> list[dict[str, object]]:
        # fault injection: the process dies after the commit, before the acknowledgement
        if next(batches) == crash_at_batch:
            raise RuntimeError("worker crashed")
        return batch

    return (source | tf.map(row) | tf.batch(50, timeout=0.05)
            | tfio.write_sqlite(path, "readings", columns={"id": "INTEGER", "text": "TEXT"},
                                key="id", create=True)
            | tf.map(after_commit) | tf.sink(lambda b: None))


async def test_crash_before_ack_restart_same_name_is_effectively_once(
        server: RedisServer, client: redis.Redis, tmp_path: Path) -> None:
    stream, n = fresh(), 600
    add(client, stream, n)
    path = tmp_path / "db.sqlite"
    seen1: list[tfio.StreamEntry] = []
    src = tfio.redis_source(server.url, stream, "g", "worker", count=100, block_ms=300)
    with pytest.raises(ExceptionGroup) as info:
        await _db_flow(src, path, 3, seen1).run()
    assert info.group_contains(RuntimeError, match="worker crashed")
    committed = {r[0] for r in _table(path)}
    left = pending(client, stream, "g")
    assert len(committed) >= 150          # batches 1 to 3 were committed ...
    assert left >= 50                     # ... batch 3 (at least) was never acknowledged
    assert client.xpending(stream, "g")["consumers"] == [{"name": "worker", "pending": left}]

    seen2: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    src2 = tfio.redis_source(server.url, stream, "g", "worker", count=100, block_ms=300,
                             on_start=consumers.append)
    state = await run_until(_db_flow(src2, path, None, seen2),
                            lambda: len(_table(path)) == n and pending(client, stream, "g") == 0)
    assert state is tf.RunState.COMPLETED
    assert _table(path) == [(i, f"item {i}") for i in range(n)]    # every entry once
    assert pending(client, stream, "g") == 0
    stats = consumers[0].statistics()
    assert stats.reread == left                                     # its own pending, first
    redelivered = [e for e in seen2 if e.deliveries > 1]
    assert len(redelivered) == left and all(e.deliveries == 2 for e in redelivered)
    assert {e.id for e in redelivered} <= {e.id for e in seen1}
    assert seen2[:left] == redelivered                              # re-read before new reads


async def test_crashed_consumers_entries_are_claimed_by_another(
        server: RedisServer, client: redis.Redis, tmp_path: Path) -> None:
    stream, n = fresh(), 400
    add(client, stream, n)
    path = tmp_path / "db.sqlite"
    dead = tfio.redis_source(server.url, stream, "g", "dead", count=100, block_ms=300)
    with pytest.raises(ExceptionGroup):
        await _db_flow(dead, path, 2, []).run()
    left = pending(client, stream, "g")
    assert left >= 50

    seen: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    survivor = tfio.redis_source(server.url, stream, "g", "survivor", count=100, block_ms=300,
                                 claim_min_idle=0.3, on_start=consumers.append)
    state = await run_until(_db_flow(survivor, path, None, seen),
                            lambda: len(_table(path)) == n and pending(client, stream, "g") == 0)
    assert state is tf.RunState.COMPLETED
    assert _table(path) == [(i, f"item {i}") for i in range(n)]
    stats = consumers[0].statistics()
    assert stats.claimed == left and stats.reread == 0
    assert sum(1 for e in seen if e.deliveries == 2) == left
    assert client.xpending(stream, "g")["consumers"] == []


async def test_claim_loop_leaves_own_entries_in_flight_alone(server: RedisServer,
                                                             client: redis.Redis) -> None:
    # a slow sink keeps entries idle on the server longer than claim_min_idle: they are the
    # run's own, still on their way, so they are not handed on a second time
    stream = fresh()
    add(client, stream, 30)
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []

    async def slow(e: tfio.StreamEntry) -> None:
        await trio.sleep(0.05)
        got.append(e)

    flow = (tfio.redis_source(server.url, stream, "g", "c", count=30, block_ms=300, claim_min_idle=0.1,
                              on_start=consumers.append)
            | tf.sink(slow))
    assert await run_until(flow, lambda: len(got) == 30) is tf.RunState.COMPLETED
    assert [e.fields["n"] for e in got] == [str(i) for i in range(30)]
    assert consumers[0].statistics().claimed == 0
    assert pending(client, stream, "g") == 0


async def test_an_entry_acknowledged_while_a_claim_runs_is_not_handed_on_again(
        server: RedisServer, client: redis.Redis) -> None:
    # the interleaving that made the test above flaky, forced (fault injection: the order
    # of a thread's reply and an acknowledgement, which the real server cannot be asked
    # for): XAUTOCLAIM returns the run's own entries, idle on the server, and their XACK
    # completes before the claim's reply is handled. They were acknowledged: never again.
    import threading

    stream = fresh()
    add(client, stream, 5)
    got: list[tfio.StreamEntry] = []
    acked = threading.Event()
    claimed_own = threading.Event()

    def patch(consumer: Any) -> None:
        claim, ack = consumer._claim, consumer.ack

        def claim_after_the_ack(start: str) -> Any:
            start, read = claim(start)
            if read.entries:  # the run's own entries, still on their way
                claimed_own.set()
                assert acked.wait(WAIT)
            return start, read

        async def ack_then_tell(ids: list[str]) -> None:
            await ack(ids)
            acked.set()

        consumer._claim, consumer.ack = claim_after_the_ack, ack_then_tell

    async def held_until_claimed(e: tfio.StreamEntry) -> None:
        await trio.to_thread.run_sync(claimed_own.wait, WAIT)
        got.append(e)

    flow = (tfio.redis_source(server.url, stream, "g", "c", count=5, block_ms=300,
                              claim_min_idle=0.05, on_start=patch)
            | tf.sink(held_until_claimed))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await wait_for(lambda: len(got) >= 5 and acked.is_set())
        await trio.sleep(0.3)  # room for a second hand-on of the claimed entries
        assert await handle.drain(timeout=WAIT) is tf.RunState.COMPLETED
    assert claimed_own.is_set()
    assert [e.fields["n"] for e in got] == [str(i) for i in range(5)]
    assert pending(client, stream, "g") == 0


async def test_poison_entry_goes_to_dead_letters_and_is_acknowledged(
        server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    [poison] = add(client, stream, 1)
    for read in (">", "0", "0"):                         # delivered 3 times to "c", never acked
        client.xreadgroup("g", "c", {stream: read})
    fresh_ids = add(client, stream, 2, start=1)
    letters: list[tf.DeadLetterEntry] = []
    pending_at_letter: list[int] = []

    def letter(entry: tf.DeadLetterEntry) -> None:
        pending_at_letter.append(pending(client, stream, "g"))
        letters.append(entry)

    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=300, max_deliveries=3,
                              dead_letters=tf.DeadLetter(letter), on_start=consumers.append)
            | tf.sink(got.append))
    assert await run_until(flow, lambda: len(got) == 2) is tf.RunState.COMPLETED
    assert [e.id for e in got] == fresh_ids
    [entry] = letters
    assert entry.item == tfio.StreamEntry(id=poison, fields={"n": "0", "text": "item 0"}, deliveries=4)
    assert isinstance(entry.exception, tfio.TooManyDeliveries)
    assert "delivered 4 times (max_deliveries=3)" in str(entry.exception)
    assert pending_at_letter == [1]                      # acknowledged after its letter
    assert pending(client, stream, "g") == 0
    assert consumers[0].statistics().dead_lettered == 1


async def test_entry_deleted_while_pending_is_acknowledged(server: RedisServer,
                                                           client: redis.Redis) -> None:
    stream = fresh()
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = add(client, stream, 3)
    client.xreadgroup("g", "c", {stream: ">"})
    client.xdel(stream, ids[1])
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=300, on_start=consumers.append)
            | tf.sink(got.append))
    assert await run_until(flow, lambda: len(got) == 2) is tf.RunState.COMPLETED
    assert [e.id for e in got] == [ids[0], ids[2]]
    assert consumers[0].statistics().deleted == 1
    assert pending(client, stream, "g") == 0


# ------------------------------------------------------------------- backpressure, drain


class Gate:
    """A sink that stops at entry ``n`` == ``stop_at`` until ``go`` is set (``pause``: a
    short sleep per entry before it, so that the reader gets ahead)."""

    def __init__(self, stop_at: int, pause: float = 0.0) -> None:
        self.stop_at = str(stop_at)
        self.pause = pause
        self.go = trio.Event()
        self.got: list[tfio.StreamEntry] = []
        self.consumers: list[tfio.RedisConsumer] = []

    def flow(self, url: str, stream: str, count: int) -> Any:
        """A source reading ``stream`` into this sink."""
        return (tfio.redis_source(url, stream, "g", "c", count=count, block_ms=300,
                                  on_start=self.consumers.append)
                | tf.sink(self))

    async def __call__(self, e: tfio.StreamEntry) -> None:
        if e.fields["n"] == self.stop_at:
            await self.go.wait()
        elif self.pause and not self.go.is_set():
            await trio.sleep(self.pause)
        self.got.append(e)


async def test_stopped_sink_bounds_what_the_source_reads(server: RedisServer,
                                                         client: redis.Redis) -> None:
    stream, n = fresh(), 5000
    add(client, stream, n)
    sink = Gate(0)
    go, got, consumers = sink.go, sink.got, sink.consumers
    flow = sink.flow(server.url, stream, count=100)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        # the pipeline fills up, then the source stops reading
        await wait_for(lambda: pending(client, stream, "g") > 0)
        now = await steady(lambda: pending(client, stream, "g"))   # no read more
        stats = consumers[0].statistics()
        assert now == stats.read < n                   # the pending list is what it read
        assert now <= 100 * 10                         # edges and one read, far from the stream
        assert got == []
        go.set()
        await wait_for(lambda: len(got) == n)
        assert await handle.drain(timeout=WAIT) is tf.RunState.COMPLETED
    assert [int(e.fields["n"]) for e in got] == list(range(n))
    assert pending(client, stream, "g") == 0


async def test_entries_done_while_the_reader_waits_for_room_are_acknowledged(
        server: RedisServer, client: redis.Redis) -> None:
    # the sink is slow, then stops at entry 50: the reader fills the pipeline and waits in
    # its emit; the acknowledgements of 0-49 do not wait for it
    stream, n = fresh(), 2000
    add(client, stream, n)
    sink = Gate(50, pause=0.01)                        # slower than the reader: it gets ahead
    go, got, consumers = sink.go, sink.got, sink.consumers
    flow = sink.flow(server.url, stream, count=10)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await wait_for(lambda: len(got) == 50)
        stats = consumers[0].statistics
        await steady(lambda: stats().read)             # the reader waits in its emit
        await wait_for(lambda: stats().acked == 50)
        assert stats().read > 50                              # the reader is ahead, waiting
        assert pending(client, stream, "g") == stats().read - 50
        go.set()
        await wait_for(lambda: len(got) == n)
        assert await handle.drain(timeout=WAIT) is tf.RunState.COMPLETED
    assert pending(client, stream, "g") == 0
    assert consumers[0].statistics().acked == n


async def test_drain_hands_on_what_was_read_and_reads_no_more(server: RedisServer,
                                                              client: redis.Redis) -> None:
    stream, n = fresh(), 5000
    add(client, stream, n)
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []

    async def sink(e: tfio.StreamEntry) -> None:
        await trio.sleep(0.002)
        got.append(e)

    flow = (tfio.redis_source(server.url, stream, "g", "c", count=50, block_ms=300,
                              on_start=consumers.append)
            | tf.sink(sink))
    assert await run_until(flow, lambda: len(got) >= 50) is tf.RunState.COMPLETED
    stats = consumers[0].statistics()
    assert len(got) == stats.read == stats.acked < n   # everything read was handed on and acked
    assert pending(client, stream, "g") == 0
    # the rest is still there for the next run, each entry once
    rest: list[tfio.StreamEntry] = []
    flow2 = tfio.redis_source(server.url, stream, "g", "c", block_ms=300) | tf.sink(rest.append)
    assert await run_until(flow2, lambda: len(got) + len(rest) == n) is tf.RunState.COMPLETED
    assert [int(e.fields["n"]) for e in got + rest] == list(range(n))


# ------------------------------------------------------------ the two hazards of issue 11


def _connected(client: redis.Redis) -> int:
    return int(client.info("clients")["connected_clients"])


def _blocked_reader(client: redis.Redis) -> bool:
    return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in client.client_list())


async def test_cancel_a_blocked_read_200_times_then_read(server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    baseline = _connected(client)
    rng = random.Random(11)
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=50, on_start=consumers.append)
            | tf.sink(lambda e: None))
    for _ in range(200):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(flow.run)
            await wait_for(lambda: _blocked_reader(client))     # the server holds its read
            await trio.sleep(rng.uniform(0, 0.02))
            handle.cancel()
        assert handle.state is tf.RunState.CANCELLED
    assert len(consumers) == 200
    await wait_for(lambda: _connected(client) == baseline)     # no connection left behind
    ids = add(client, stream, 10)
    got: list[tfio.StreamEntry] = []
    flow2 = tfio.redis_source(server.url, stream, "g", "c", block_ms=50) | tf.sink(got.append)
    assert await run_until(flow2, lambda: len(got) == 10) is tf.RunState.COMPLETED
    assert [e.id for e in got] == ids
    await wait_for(lambda: _connected(client) == baseline)


async def test_read_overtaken_by_cancellation_is_processed_after_restart(
        server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    got1: list[tfio.StreamEntry] = []
    flow = tfio.redis_source(server.url, stream, "g", "c", block_ms=1000) | tf.sink(got1.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        await wait_for(lambda: _blocked_reader(client))
        handle.cancel()                  # the read in its thread goes on ...
        ids = add(client, stream, 5, atomic=True)  # ... and returns these, to a cancelled task
    assert handle.state is tf.RunState.CANCELLED
    # what the cancelled run did not finish stays pending for this consumer
    left = [r["message_id"] for r in client.xpending_range(stream, "g", "-", "+", 10, consumername="c")]
    assert left                                   # the cancellation overtook the read
    assert set(ids) - set(left) <= {e.id for e in got1}

    got2: list[tfio.StreamEntry] = []
    flow2 = tfio.redis_source(server.url, stream, "g", "c", block_ms=300) | tf.sink(got2.append)
    assert await run_until(flow2, lambda: len(got2) == len(left)) is tf.RunState.COMPLETED
    assert [e.id for e in got2] == left
    assert all(e.deliveries == 2 for e in got2)
    assert pending(client, stream, "g") == 0


# ------------------------------------------------------------------------------- the writer


async def test_writer_trims_with_maxlen(server: RedisServer, client: redis.Redis) -> None:
    exact, approx = fresh(), fresh()
    rows = [{"n": i} for i in range(1000)]
    await (tf.from_iterable(rows) | tf.batch(100)
           | tfio.write_redis_stream(server.url, exact, maxlen=100, approximate=False)
           | tf.sink(lambda b: None)).run()
    assert client.xlen(exact) == 100
    assert [f["n"] for _, f in client.xrange(exact)] == [str(i) for i in range(900, 1000)]
    await (tf.from_iterable(rows) | tf.batch(100)
           | tfio.write_redis_stream(server.url, approx, maxlen=100) | tf.sink(lambda b: None)).run()
    assert 100 <= client.xlen(approx) < 1000


async def test_writer_acknowledges_after_the_write(server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    in_stream_when_acked: list[bool] = []

    def on_ack(acks: list[tf.Ack]) -> None:
        length = client.xlen(stream)
        in_stream_when_acked.extend(ack.ok and ack.token["n"] < length for ack in acks)

    rows = [{"n": i} for i in range(500)]
    await (tf.from_iterable(rows, on_ack=on_ack) | tf.batch(50)
           | tfio.write_redis_stream(server.url, stream) | tf.sink(lambda b: None)).run()
    assert in_stream_when_acked == [True] * 500


async def test_writer_copies_stream_entries(server: RedisServer, client: redis.Redis) -> None:
    src, dst = fresh(), fresh()
    add(client, src, 10)
    flow = (tfio.redis_source(server.url, src, "g", "c", block_ms=300) | tf.batch(5, timeout=0.05)
            | tfio.write_redis_stream(server.url, dst) | tf.sink(lambda b: None))
    assert await run_until(flow, lambda: client.xlen(dst) == 10) is tf.RunState.COMPLETED
    assert [f for _, f in client.xrange(dst)] == [f for _, f in client.xrange(src)]
    assert pending(client, src, "g") == 0


async def test_writer_refuses_an_item_that_is_not_a_mapping(server: RedisServer) -> None:
    with pytest.raises(ExceptionGroup) as info:
        await (tf.from_iterable([[1, 2]]) | tf.batch(1)
               | tfio.write_redis_stream(server.url, fresh()) | tf.sink(lambda b: None)).run()
    assert info.group_contains(TypeError, match="non-empty mappings of fields")


# ----------------------------------------------------------------- binary field values

#: values that are not UTF-8: a lone continuation byte, NUL and 0xff, a truncated sequence,
#: an encoded surrogate (which strict UTF-8 refuses), random bytes
_BINARY = [b"\x80", b"\x00\xff\x00", b"caf\xc3", b"\xed\xa0\x80", random.Random(5).randbytes(64) + b"\xff"]
#: text that is UTF-8 but not ASCII, and empty values
_TEXT = ["caf\u00e9", "\u65e5\u672c", "\U0001f600", ""]


def _raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port)   # replies as bytes


def _lettering(server: RedisServer, stream: str) -> tuple[
        Any, list[tfio.StreamEntry], list[tf.DeadLetterEntry], list[tfio.RedisConsumer]]:
    """A decoding source into a list, with its dead letters into another."""
    letters: list[tf.DeadLetterEntry] = []
    got: list[tfio.StreamEntry] = []
    consumers: list[tfio.RedisConsumer] = []
    flow = (tfio.redis_source(server.url, stream, "g", "c", block_ms=300,
                              dead_letters=tf.DeadLetter(letters), on_start=consumers.append)
            | tf.sink(got.append))
    return flow, got, letters, consumers


async def test_binary_values_reach_the_pipeline_intact_with_decode_false(server: RedisServer) -> None:
    # written by write_redis_stream (bytes names and values), read back raw, copied raw
    src, dst = fresh(), fresh()
    rows: list[dict[bytes, bytes]] = [{b"n": str(i).encode(), b"blob": v, b"\xfe\xff": v[::-1]}
                                      for i, v in enumerate(_BINARY + [t.encode() for t in _TEXT])]
    await (tf.from_iterable(rows) | tf.batch(3)
           | tfio.write_redis_stream(server.url, src) | tf.sink(lambda b: None)).run()
    with _raw_client(server) as raw:
        assert [f for _, f in raw.xrange(src)] == rows                  # written as given

        got: list[tfio.RawStreamEntry] = []
        consumers: list[tfio.RedisConsumer] = []
        flow = (tfio.redis_source(server.url, src, "g", "c", block_ms=300, decode=False,
                                  on_start=consumers.append)
                | tf.tap(got.append) | tf.batch(4, timeout=0.05)
                | tfio.write_redis_stream(server.url, dst) | tf.sink(lambda b: None))
        assert await run_until(flow, lambda: raw.xlen(dst) == len(rows)) is tf.RunState.COMPLETED
        assert all(type(e) is tfio.RawStreamEntry for e in got)
        assert [dict(e.fields) for e in got] == rows                     # every byte, every field
        assert [f for _, f in raw.xrange(dst)] == rows                   # the copy too
        assert [e.id for e in got] == [i.decode() for i, _ in raw.xrange(src)]
        assert raw.xpending(src, "g")["pending"] == 0
        assert consumers[0].statistics().dead_lettered == 0


async def test_an_entry_that_is_not_utf8_is_dead_lettered_with_its_bytes(
        server: RedisServer, client: redis.Redis) -> None:
    # decode=True (the default): text, non-ASCII text included, is emitted; an entry with
    # bytes that are not UTF-8 goes to the dead letters, bytes intact, and is acknowledged
    stream = fresh()
    values: list[str | bytes] = ["plain", *_TEXT, *_BINARY]
    with _raw_client(server) as raw:
        ids = [raw.xadd(stream, {"n": str(i), "v": v}).decode() for i, v in enumerate(values)]
    # and one whose field name is not UTF-8
    ids.append(client.xadd(stream, {"n": "x"}))
    with _raw_client(server) as raw:
        ids.append(raw.xadd(stream, {b"\xff": b"name"}).decode())
    flow, got, letters, consumers = _lettering(server, stream)
    n_text = 1 + len(_TEXT) + 1
    assert await run_until(flow, lambda: len(got) + len(letters) == len(ids)) is tf.RunState.COMPLETED
    assert all(type(e) is tfio.StreamEntry for e in got)
    texts = values[:1 + len(_TEXT)]
    assert [e.fields for e in got] == [{"n": str(i), "v": v} for i, v in enumerate(texts)] + [{"n": "x"}]
    assert [e.item.id for e in letters] == ids[1 + len(_TEXT):-2] + ids[-1:]
    for letter, value in zip(letters, _BINARY, strict=False):
        assert type(letter.item) is tfio.RawStreamEntry
        assert letter.item.fields == {b"n": str(values.index(value)).encode(), b"v": value}
    assert letters[-1].item.fields == {b"\xff": b"name"}
    for letter in letters:
        assert isinstance(letter.exception, tfio.UndecodableEntry)
        assert isinstance(letter.exception.__cause__, UnicodeDecodeError)
        assert "is not UTF-8 text" in str(letter.exception) and "decode=False" in str(letter.exception)
    assert len(got) == n_text
    stats = consumers[0].statistics()
    assert stats.dead_lettered == len(_BINARY) + 1 and stats.acked == len(ids)
    assert pending(client, stream, "g") == 0


async def test_an_undecodable_pending_entry_is_dead_lettered_on_reread(
        server: RedisServer, client: redis.Redis) -> None:
    stream = fresh()
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    with _raw_client(server) as raw:
        bad = raw.xadd(stream, {"v": b"\xc3("}).decode()
        raw.xreadgroup("g", "c", {stream: ">"})                 # delivered, never acknowledged
    good = client.xadd(stream, {"v": "ok"})
    flow, got, letters, consumers = _lettering(server, stream)
    assert await run_until(flow, lambda: len(got) == 1) is tf.RunState.COMPLETED
    [letter] = letters
    assert letter.item == tfio.RawStreamEntry(id=bad, fields={b"v": b"\xc3("}, deliveries=2)
    assert [e.id for e in got] == [good]
    assert consumers[0].statistics().dead_lettered == 1
    assert pending(client, stream, "g") == 0


# ------------------------------------------------------------------ definition, imports


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"count": 0}, "count of redis_source must be an int >= 1"),
    ({"block_ms": 0.5}, "block_ms of redis_source must be an int >= 1"),
    ({"claim_min_idle": 0}, "claim_min_idle of redis_source"),
    ({"max_deliveries": 0}, "max_deliveries of redis_source"),
])
def test_source_arguments_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tfio.redis_source("redis://localhost", "s", "g", "c", **kwargs)


def test_bad_types_are_refused() -> None:
    with pytest.raises(TypeError, match="dead_letters of redis_source"):
        tfio.redis_source("redis://localhost", "s", "g", "c", dead_letters=[])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stream of redis_source"):
        tfio.redis_source("redis://localhost", "", "g", "c")
    with pytest.raises(TypeError, match="decode of redis_source must be a bool"):
        tfio.redis_source("redis://localhost", "s", "g", "c", decode="utf-8")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="maxlen of write_redis_stream"):
        tfio.write_redis_stream("redis://localhost", "s", maxlen=0)


def test_importing_trioflow_does_not_import_redis() -> None:
    code = "import sys, trioflow, trioflow.io; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_redis_names_the_extra() -> None:
    # fault injection: redis-py is installed here, so hide it
    code = ("import sys; sys.modules['redis'] = None\nimport trioflow.io as tfio\n"
            "try:\n    tfio.redis_source('redis://x', 's', 'g', 'c')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'trioflow[redis]'" in out.stdout
