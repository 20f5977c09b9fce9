"""Failure handling as data: skip bad lines, retry a flaky service then dead-letter, restart
a writer whose connection drops, and drain gracefully.

Runs in virtual time (trio.testing.MockClock), so the backoffs cost nothing here.
"""

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

import trioflow as tf

LINES = [b'{"id": %d, "v": %d}' % (i, i * 7 % 11) for i in range(200)]
LINES[13] = b"not json"
LINES[77] = b'{"id": 77'

calls: dict[int, int] = {}
written: list[int] = []
connections = itertools.count()


def parse(line: bytes) -> dict[str, int]:
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a record")
    return rec


async def score(rec: dict[str, int]) -> dict[str, int]:
    calls[rec["id"]] = calls.get(rec["id"], 0) + 1
    await trio.sleep(0.01)
    if rec["id"] % 50 == 3 and calls[rec["id"]] < 2:
        raise ConnectionError("flaky service")  # fails once, then works: retried
    if rec["id"] == 150:
        raise ValueError("cannot score this one")  # always fails: dead-lettered
    return {**rec, "score": rec["v"] * 2}


@asynccontextmanager
async def database() -> AsyncIterator[int]:
    yield next(connections)


async def write(conn: int, rec: dict[str, int]) -> int:
    if rec["id"] == 120 and conn == 0:
        raise ConnectionResetError("connection dropped")  # the worker restarts on a new one
    written.append(rec["id"])
    return rec["id"]


async def main() -> None:
    letters: list[tf.DeadLetterEntry] = []
    pipeline = (
        tf.from_iterable(LINES)
        | tf.map(parse, on_error=tf.Skip(), name="parse")
        | tf.map(score, concurrency=8, name="score",
                 retry=tf.Retry(attempts=3, on=ConnectionError, backoff=tf.Backoff(min=0.1)),
                 on_error=tf.DeadLetter(letters))
        | tf.persistent(write, resource=database, name="write",
                        restart=tf.Restart(max_restarts=2, within=60))
        | tf.to_list()
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        await handle.wait()
    stats = handle.statistics()
    print("written:", len(handle.result()), "records")
    print("skipped by parse:", stats.stage("parse").skipped)
    print("retried by score:", stats.stage("score").retries,
          "dead letters:", [(e.item["id"], e.attempt) for e in letters])
    print("writer restarts:", stats.stage("write").restarts)
    assert len(handle.result()) == 200 - 2 - 1
    assert stats.stage("parse").skipped == 2 and len(letters) == 1
    assert stats.stage("write").restarts == 1

    # a graceful drain: the endless source stops, what it handed over finishes
    seen: list[int] = []

    async def slow(i: int) -> int:
        await trio.sleep(0.01)
        return i

    endless = tf.from_iterable(itertools.count()) | tf.map(slow, concurrency=4) | tf.sink(seen.append)
    async with trio.open_nursery() as nursery:
        handle2 = await nursery.start(endless.run)
        await trio.sleep(0.5)
        state = await handle2.drain(timeout=10)
    print("drained:", state.value, "after", len(seen), "items, none lost:",
          seen == list(range(len(seen))))
    assert state is tf.RunState.COMPLETED and seen == list(range(len(seen)))


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
