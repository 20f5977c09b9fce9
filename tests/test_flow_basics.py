import itertools

import pytest
import trio

import trioflow as tf


async def test_map_filter_to_list() -> None:
    flow = tf.from_iterable(range(10)) | tf.map(lambda x: x + 1) | tf.filter(lambda x: x % 2 == 0)
    out = await flow.to_list()
    assert out == [2, 4, 6, 8, 10]


async def test_take_stops_infinite_source() -> None:
    flow = tf.from_iterable(itertools.count()) | tf.map(lambda x: x * 3) | tf.take(4)
    assert await flow.to_list() == [0, 3, 6, 9]


async def test_fail_fast_single_group_level_with_annotation() -> None:
    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("bad item")
        return x

    with pytest.RaisesGroup(ValueError, flatten_subgroups=False) as info:
        await (tf.from_iterable(range(100)) | tf.map(boom, name="checker") | tf.to_list()).run()
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, ValueError)
    assert any("'checker'" in n and "7" in n for n in leaf.__notes__)


async def test_nursery_start_returns_handle_when_ready() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(5)) | tf.to_list()).run)
        assert await handle.wait() is tf.RunState.COMPLETED
    assert handle.result() == [0, 1, 2, 3, 4]
