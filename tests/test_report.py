"""Run reports (``run(report=True)``, ``handle.report()``), printable statistics, and the
lifecycle label of resource-less pools."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf


async def _af(x: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return x


async def _atrue(x: Any) -> bool:
    await trio.lowlevel.checkpoint()
    return True


async def _aone(x: Any) -> list[Any]:
    await trio.lowlevel.checkpoint()
    return [x]


async def _anone(x: Any) -> None:
    await trio.lowlevel.checkpoint()


# ------------------------------------------------------------------------ lifecycle label


async def test_pooled_async_stages_are_labelled_pooled_not_persistent() -> None:
    # regression: map(async_fn, concurrency=N) reported lifecycle "persistent" although it
    # has no resource
    pipeline = (
        tf.from_iterable(range(5))
        | tf.map(_af, concurrency=2, name="m")
        | tf.map(_af, concurrency=tf.Adaptive(min=1, max=3), name="adaptive")
        | tf.filter(_atrue, concurrency=2, name="f")
        | tf.tap(_anone, concurrency=2, name="t")
        | tf.flat_map(_aone, concurrency=2, name="fm")
        | tf.sink(_anone, concurrency=2, name="s")
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.run)
    stats = handle.statistics()
    pools = ["m", "adaptive", "f", "t", "fm", "s"]
    assert {name: stats.stage(name).lifecycle for name in pools} == dict.fromkeys(pools, tf.Lifecycle.POOLED)
    assert tf.Lifecycle.POOLED.value == "pooled"
    # one call at a time is no pool; a resource per worker is still persistent
    assert tf.map(_af, name="one").lifecycle is tf.Lifecycle.CONTINUOUS
    assert tf.sink(_anone).lifecycle is tf.Lifecycle.CONTINUOUS
    assert "segment 1 (pooled): m[map]" in str(pipeline.plan())
