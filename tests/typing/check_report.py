"""Checked by mypy --strict, not run by pytest: ``run(report=True)`` is typed as a
``RunReport`` of what ``run()`` returns, and ``run()`` keeps its own type."""

from __future__ import annotations

from functools import partial
from typing import assert_type

import trio

import trioflow as tf


async def check() -> None:
    numbers = tf.from_iterable([3, 1, 4])
    pipeline = numbers | tf.map(str) | tf.to_list()
    assert_type(await pipeline.run(), list[str])
    report = await pipeline.run(report=True)
    assert_type(report, tf.RunReport[list[str]])
    assert_type(report.result, list[str])
    assert_type(report.failures, tuple[tf.DeadLetterEntry, ...])
    assert_type(report.stage("map"), tf.StageStatistics)
    assert_type(await pipeline.run(report=False), list[str])

    assert_type(await numbers.run(), None)
    assert_type(await numbers.run(report=True), tf.RunReport[None])

    g = tf.Graph()
    letters: tf.Sink[str, list[str]] = tf.to_list()
    out = g.add(letters, g.add(tf.from_iterable("ab")))
    graph_report = await g.run(report=True)
    assert_type(graph_report, tf.RunReport[tf.GraphResult])
    assert_type(graph_report.result[out], list[str])
    assert_type(await g.run(), tf.GraphResult)

    async with trio.open_nursery() as nursery:
        handle: tf.RunHandle[list[str]] = await nursery.start(partial(pipeline.run, report=True))
    assert_type(handle.report(), tf.RunReport[list[str]])
    assert_type(str(handle.statistics()), str)
