"""The README's example: fused sync stages, a concurrent async stage, a timed batch."""

import trio

import trioflow as tf


async def fetch(x: int) -> int:
    await trio.sleep(0.001)  # an I/O call
    return x * 10


async def main() -> None:
    pipeline = (
        tf.from_iterable(range(1000))
        | tf.map(lambda x: x + 1)  # fused: no channel hop
        | tf.filter(lambda x: x % 2 == 0)
        | tf.map(fetch, concurrency=32)  # 32 workers, input order kept
        | tf.batch(100, timeout=0.5)
        | tf.reduce(lambda acc, b: acc + sum(b), 0)
    )
    print(pipeline.plan())
    total = await pipeline.run()
    expected = sum((x + 1) * 10 for x in range(1000) if (x + 1) % 2 == 0)
    assert total == expected, (total, expected)
    print("total", total)


if __name__ == "__main__":
    trio.run(main)
