"""The three lifecycles side by side.

* continuous: a source task that produces without input (a ticker);
* persistent: 3 workers, each with one "connection" built once and reused for every item;
* on-demand: a fresh parser instance (and task) per item, at most 4 at once.

Run as a program under ``tf.run_until_signal``: Ctrl-C (or SIGTERM) drains the run (the
ticker stops, what it handed over is stored) and the statistics are printed; exit code 0,
or 130 if a second Ctrl-C aborted the drain. (Inside an application,
``handle = await nursery.start(pipeline.run)`` returns once every connection is open, and
``handle.statistics()`` shows the same counters live.)
"""

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import trioflow as tf

opened: list[int] = []
closed: list[int] = []
ids = iter(range(1000))


@asynccontextmanager
async def connection() -> AsyncIterator[int]:
    conn_id = next(ids)  # workers connect concurrently: take an id before awaiting
    await trio.sleep(0.01)  # connecting
    opened.append(conn_id)
    try:
        yield conn_id
    finally:
        closed.append(conn_id)


async def store(conn: int, doc: dict[str, int]) -> str:
    await trio.sleep(0.002)
    return f"doc {doc['n']} stored via connection {conn}"


class Parser:
    """Stateful per item: a fresh instance per document, discarded afterwards."""

    def __init__(self) -> None:
        self.seen = 0

    async def __call__(self, tick: int) -> dict[str, int]:
        self.seen += 1
        assert self.seen == 1, "an on-demand instance never sees a second item"
        await trio.sleep(0.001)
        return {"n": tick}


async def main() -> int:
    pipeline = (
        tf.periodic(0.001, count=60, name="ticker")
        | tf.on_demand(Parser, limit=4, name="parse")
        | tf.persistent(store, resource=connection, workers=3, name="store")
        | tf.to_list()
    )
    handle = await tf.run_until_signal(pipeline)
    stats = handle.statistics()
    print("state:", stats.state.value)
    for st in stats.stages:
        print(f"  {st.name:<8} {st.lifecycle.value:<10} in {st.items_in:>3}  out {st.items_out:>3}"
              f"  errors {st.errors}")
    assert sorted(opened) == sorted(closed) == [0, 1, 2], "each connection opened once, closed once"
    if stats.state is not tf.RunState.COMPLETED:
        return 130  # aborted by a second Ctrl-C
    results = handle.result()
    if results:
        print(len(results), "docs;", results[0], "...", results[-1])
    assert len(results) == stats.stage("ticker").items_out  # 60 unless a Ctrl-C drained it early
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
