"""Failure handling as data: skip bad lines, retry a flaky service then dead-letter, restart
a writer whose connection drops, and drain gracefully.

Runs in virtual time (trio.testing.MockClock), so the backoffs cost nothing here. Run as a
program under ``tf.run_until_signal``: Ctrl-C (or SIGTERM) drains (the source stops, what it
handed over finishes) and the statistics are printed; exit code 0, or 130 if a second
Ctrl-C aborted the drain. The last part sends itself the SIGINT that Ctrl-C would.
"""

import itertools
import json
import signal
import sys
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


async def main() -> int:
    letters: list[tf.DeadLetterEntry] = []
    pipeline = (
        tf.from_iterable(LINES, name="lines")
        | tf.map(parse, on_error=tf.Skip(), name="parse")
        | tf.map(score, concurrency=8, name="score",
                 retry=tf.Retry(attempts=3, on=ConnectionError, backoff=tf.Backoff(min=0.1)),
                 on_error=tf.DeadLetter(letters))
        | tf.persistent(write, resource=database, name="write",
                        restart=tf.Restart(max_restarts=2, within=60))
        | tf.to_list()
    )
    handle = await tf.run_until_signal(pipeline)
    stats = handle.statistics()
    print("state:", stats.state.value)
    for s in stats.stages:
        print(f"  {s.name:<13} in {s.items_in:>3}  out {s.items_out:>3}  errors {s.errors}"
              f"  skipped {s.skipped}  retries {s.retries}  restarts {s.restarts}")
    print("dead letters:", [(e.item["id"], e.attempt) for e in letters])
    if stats.state is not tf.RunState.COMPLETED:
        return 130  # aborted by a second Ctrl-C
    if stats.stage("lines").items_out == len(LINES):  # (not drained early by a Ctrl-C)
        assert len(handle.result()) == 200 - 2 - 1
        assert stats.stage("parse").skipped == 2 and len(letters) == 1
        assert stats.stage("write").restarts == 1

    # a graceful drain on Ctrl-C: the endless source stops, what it handed over finishes
    seen: list[int] = []

    async def slow(i: int) -> int:
        await trio.sleep(0.01)
        return i

    async def ctrl_c_after(seconds: float) -> None:
        await trio.sleep(seconds)
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C in a terminal does

    endless = tf.from_iterable(itertools.count()) | tf.map(slow, concurrency=4) | tf.sink(seen.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctrl_c_after, 0.5)
        handle2 = await tf.run_until_signal(endless, drain_timeout=10)
    print("drained:", handle2.state.value, "after", len(seen), "items, none lost:",
          seen == list(range(len(seen))))
    assert handle2.state is tf.RunState.COMPLETED and seen == list(range(len(seen)))
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)))
