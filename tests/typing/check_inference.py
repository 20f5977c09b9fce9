"""Checked by mypy --strict (nox -s typecheck), not run by pytest: a chain's item type is
inferred through ``|`` from typed callables, for sync and async functions alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeGuard, assert_type

import trio

import trioflow as tf


def parse(line: str) -> int:
    return int(line)


async def double(x: int) -> float:
    await trio.lowlevel.checkpoint()
    return x * 2.0


def is_big(x: float) -> bool:
    return x > 10


def explode(x: float) -> list[str]:
    return [str(x)] * 2


async def chars(s: str) -> AsyncIterator[str]:
    for c in s:
        yield c


class Conn:
    async def write(self, s: list[str]) -> int:
        return len(s)


@asynccontextmanager
async def connect() -> AsyncIterator[Conn]:
    yield Conn()


async def write(conn: Conn, rows: list[str]) -> int:
    return await conn.write(rows)


def add(acc: int, n: int) -> int:
    return acc + n


async def check() -> None:
    lines = tf.from_iterable(["1", "2", "3"])
    assert_type(lines, tf.Flow[str])
    ints = lines | tf.map(parse)
    assert_type(ints, tf.Flow[int])
    floats = ints | tf.map(double, concurrency=4)
    assert_type(floats, tf.Flow[float])
    big = floats | tf.filter(is_big) | tf.take(10) | tf.skip(1)
    assert_type(big, tf.Flow[float])
    words = big | tf.flat_map(explode)
    assert_type(words, tf.Flow[str])
    letters = words | tf.flat_map(chars)
    assert_type(letters, tf.Flow[str])
    batches = letters | tf.batch(100, timeout=1.0)
    assert_type(batches, tf.Flow[list[str]])
    written = batches | tf.persistent(write, resource=connect, workers=2)
    assert_type(written, tf.Flow[int])
    total = written | tf.scan(add, 0)
    assert_type(total, tf.Flow[int])
    per_parity = written | tf.scan(add, 0, key=lambda n: n % 2 == 0)
    assert_type(per_parity, tf.Flow[tuple[bool, int]])

    pipeline = total | tf.reduce(add, 0)
    assert_type(pipeline, tf.Pipeline[int])
    assert_type(await pipeline.run(), int)
    assert_type(await (total | tf.to_list()).run(), list[int])
    assert_type(await total.to_list(), list[int])
    assert_type(await (total | tf.sink(print)).run(), None)

    async with total.open() as stream:
        async for item in stream:
            assert_type(item, int)

    async with trio.open_nursery() as nursery:
        # trio types nursery.start as returning Any; annotate the handle once
        handle: tf.RunHandle[int] = await nursery.start(pipeline.run)
        assert_type(handle.result(), int)
        assert_type(handle.statistics(), tf.RunStatistics)


def is_str(x: object) -> TypeGuard[str]:
    return isinstance(x, str)


async def check_narrowing() -> None:
    mixed = tf.from_iterable([1, "a", None])
    assert_type(mixed | tf.filter(is_str), tf.Flow[str])
    assert_type(mixed | tf.filter(lambda x: x is not None), tf.Flow[int | str | None])
