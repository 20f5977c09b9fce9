"""Workload "batch": ints -> batch(100) -> sink.

``batch`` without a timeout is synchronous, so it is fused with the sink into the source's
task: each chunk from the source is cut into lists of 100 with slicing, and the sink is
called once per list. The reference does the same in one hand-written task.
"""

from __future__ import annotations

import itertools

from bench_linear import CHECKPOINT_EVERY
from harness import Target, Variant, Workload
from trio.lowlevel import checkpoint

import trioflow as tf

SIZE = 100


class Consumer:
    """The sink both variants call once per batch (counts batches and items)."""

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0

    def __call__(self, batch: list[int]) -> None:
        self.batches += 1
        self.items += len(batch)

    def result(self) -> tuple[int, int]:
        return self.batches, self.items


async def trioflow_batch(n: int) -> tuple[int, int]:
    consumer = Consumer()
    await (tf.from_iterable(range(n)) | tf.batch(SIZE) | tf.sink(consumer)).run()
    return consumer.result()


async def trio_fused(n: int) -> tuple[int, int]:
    """One task: build lists of 100 with ``islice``, call the sink, checkpoint every 1024
    items or so."""
    consumer = Consumer()
    it = iter(range(n))
    since_checkpoint = 0
    while batch := list(itertools.islice(it, SIZE)):
        consumer(batch)
        since_checkpoint += len(batch)
        if since_checkpoint >= CHECKPOINT_EVERY:
            since_checkpoint = 0
            await checkpoint()
    await checkpoint()
    return consumer.result()


def workload(n: int, reps: int) -> Workload:
    return Workload(
        name="batch",
        title=f"{n:,} ints -> batch({SIZE}) -> sink",
        baseline="trio_fused",
        expected=(-(-n // SIZE), n),
        reps=reps,
        variants=[
            Variant("trio_fused", trio_fused,
                    "hand-written Trio, one task, islice into lists of 100", n),
            Variant("trioflow", trioflow_batch,
                    "from_iterable | batch(100) | sink", n),
        ],
        targets=[
            Target("trioflow time / fused time", "trioflow", "trio_fused", limit=3.0, at_most=True),
        ],
    )
