"""Watching a pipeline: its plan as a picture, progress bars while it runs, its statistics.

    python examples/observing.py                 # runs it with run(progress=True)
    trioflow graph examples.observing:pipeline --format svg -o docs/images/observing.svg
    trioflow run examples.observing:pipeline --dashboard

The pipeline reads JSON lines, parses and validates them (fused into the reader's task),
enriches them concurrently, groups them in batches and stores each batch through one
persistent "connection". docs/images/observing.svg is its plan drawn by Graphviz (the
command above; tests/test_render.py checks the picture is still this pipeline's plan).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import trioflow as tf

LINES = [json.dumps({"id": i, "value": i % 97}) if i % 50 else "{broken" for i in range(20_000)]


def parse(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)  # type: ignore[no-any-return]
    except ValueError:
        return None


def valid(rec: dict[str, Any] | None) -> bool:
    return rec is not None


async def enrich(rec: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()  # stands for a call to a remote service
    return {**rec, "double": rec["value"] * 2}


@asynccontextmanager
async def connection() -> AsyncIterator[list[dict[str, Any]]]:
    yield []  # stands for a database connection: a list that keeps the rows


async def store(conn: list[dict[str, Any]], rows: list[dict[str, Any]]) -> int:
    await trio.sleep(0.01)  # a commit takes a while
    conn.extend(rows)
    return len(rows)


pipeline = (
    tf.from_iterable(LINES, name="read")
    | tf.map(parse, name="parse")
    | tf.filter(valid, name="valid")
    | tf.map(enrich, concurrency=8, name="enrich")
    | tf.batch(500, timeout=0.5, name="batch")
    | tf.persistent(store, resource=connection, workers=1, name="store")
    | tf.reduce(lambda total, n: total + n, 0, name="count")
)


async def main() -> None:
    print(pipeline.plan())
    # a bar for "read" (20,000 lines: a list has a len()) while it runs, in a terminal;
    # the summary line in any case
    stored = await pipeline.run(progress=True)
    print(f"stored {stored:,} rows")
    assert stored == len(LINES) - len(LINES) // 50


if __name__ == "__main__":
    trio.run(main)
