"""The three lifecycles side by side.

* continuous: a source task that produces without input (a ticker);
* persistent: 3 workers, each with one "connection" built once and reused for every item;
* on-demand: a fresh parser instance (and task) per item, at most 4 at once.

`nursery.start(pipeline.run)` returns once every connection is open; the handle then
shows live statistics while the pipeline runs.
"""

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


async def main() -> None:
    pipeline = (
        tf.periodic(0.001, count=60, name="ticker")
        | tf.on_demand(Parser, limit=4, name="parse")
        | tf.persistent(store, resource=connection, workers=3, name="store")
        | tf.to_list()
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
        assert len(opened) == 3, "ready means every connection is open"
        await trio.sleep(0.02)
        s = handle.statistics()
        print("while running:", s.state.value, {st.name: st.items_out for st in s.stages})
        await handle.wait()
    results = handle.result()
    print(len(results), "docs;", results[0], "...", results[-1])
    assert len(results) == 60 and sorted(closed) == [0, 1, 2]


if __name__ == "__main__":
    trio.run(main)
