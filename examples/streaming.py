"""Consuming a pipeline as a stream with `flow.open()`, and stopping early.

An infinite source is stopped by `take`, or by the consumer leaving the `async with`
block; either way every task of the pipeline is gone afterwards.
"""

import itertools

import trio

import trioflow as tf


def squares() -> tf.Flow[int]:
    # itertools.count() is an iterator: a flow over it can run once, so build one per run
    return tf.from_iterable(itertools.count()) | tf.map(lambda x: x * x)


async def main() -> None:
    print("first five:", await (squares() | tf.take(5)).to_list())

    async with squares().open() as items:
        async for sq in items:
            if sq > 1000:
                break
    print("first square over 1000:", sq)

    # fail-fast: one ExceptionGroup level; the note names the stage and the item
    def check(x: int) -> int:
        if x == 49:
            raise ValueError("unlucky")
        return x

    try:
        await (squares() | tf.map(check, name="check") | tf.take(100)).run()
    except* ValueError as group:
        (err,) = group.exceptions
        print("caught:", repr(err), err.__notes__)
    else:
        raise AssertionError("the failing run did not raise")


if __name__ == "__main__":
    trio.run(main)
