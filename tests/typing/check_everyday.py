"""Checked by mypy --strict, not run by pytest: the everyday operators keep the item type
through ``|`` (and ``enumerate`` pairs it with an int)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, assert_type

import trio

import trioflow as tf


def is_small(x: int) -> bool:
    return x < 10


async def is_even(x: int) -> bool:
    await trio.lowlevel.checkpoint()
    return x % 2 == 0


async def digits(x: int) -> AsyncIterator[str]:
    for c in str(x):
        yield c


async def write(s: str) -> None:
    await trio.lowlevel.checkpoint()


async def check() -> None:
    numbers = tf.from_iterable([3, 1, 4, 1, 5])
    fused = (numbers | tf.skip_while(is_small) | tf.distinct() | tf.distinct_until_changed(abs)
             | tf.take_last(2) | tf.start_with(0))
    assert_type(fused, tf.Flow[int])
    assert_type(await (fused | tf.enumerate(1)).to_list(), list[tuple[int, int]])
    chained = tf.concat(numbers, tf.from_iterable(range(3)) | tf.filter(is_small))
    assert_type(chained, tf.Flow[int])
    texts = await (
        chained
        | tf.filter(is_even, concurrency=4, ordered=False)
        | tf.tap(is_even, concurrency=2)
        | tf.flat_map(digits, concurrency=3, inner_buffer=8)
    ).to_list()
    assert_type(texts, list[str])
    await (tf.from_iterable(["a"]) | tf.sink(write, concurrency=2)).run()
    row = (await (numbers | tf.parallel(is_small, policy=tf.BestEffort())).to_list())[0]
    on_threads = tf.parallel(small=is_small, backend=tf.Threads(limit=2))
    assert_type(on_threads, tf.Stage[int, dict[str, Any]])
    first = row[0]
    if isinstance(first, tf.Value):
        print(first.unwrap())
    print(texts)
