"""Checked by mypy --strict (nox -s typecheck), not run by pytest: a database writer takes
and emits the chain's batches with their row type unchanged."""

from __future__ import annotations

from typing import assert_type

import trioflow as tf
import trioflow.io as tfio


async def rows_as_dicts() -> None:
    rows = [{"id": 1, "sensor": "a"}]
    flow = tf.from_iterable(rows) | tf.batch(100) | tfio.write_sqlite("x.db", "t", columns=["id", "sensor"])
    assert_type(await flow.to_list(), list[list[dict[str, object]]])


Reading = tuple[int, str, float]


async def rows_as_tuples() -> None:
    # a writer bound to a name before it meets a flow gets its row type from an annotation
    rows: list[Reading] = [(1, "a", 0.5)]
    writer: tf.Stage[list[Reading], list[Reading]] = tfio.write_postgres(
        "postgresql://localhost/x", "t", columns=["id", "sensor", "value"], key="id")
    flow = tf.from_iterable(rows) | tf.batch(100) | writer
    assert_type(await flow.to_list(), list[list[Reading]])
