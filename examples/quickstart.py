"""The README's example: fused sync stages, a concurrent async stage, a timed batch.

Run as a program under ``tf.run_until_signal``: Ctrl-C (or SIGTERM) drains the run (the
source stops, what it handed over finishes) and the statistics are printed; exit code 0,
or 130 if a second Ctrl-C aborted the drain.
"""

import sys

import trio

import trioflow as tf


async def fetch(x: int) -> int:
    await trio.sleep(0.001)  # an I/O call
    return x * 10


async def main() -> int:
    pipeline = (
        tf.from_iterable(range(1000), name="numbers")
        | tf.map(lambda x: x + 1)  # fused: no channel hop
        | tf.filter(lambda x: x % 2 == 0)
        | tf.map(fetch, concurrency=32)  # 32 workers, input order kept
        | tf.batch(100, timeout=0.5)
        | tf.reduce(lambda acc, b: acc + sum(b), 0)
    )
    print(pipeline.plan())
    handle = await tf.run_until_signal(pipeline)
    stats = handle.statistics()
    print("state:", stats.state.value)
    for s in stats.stages:
        print(f"  {s.name:<8} in {s.items_in:>5}  out {s.items_out:>5}  errors {s.errors}")
    if stats.state is not tf.RunState.COMPLETED:
        return 130  # aborted by a second Ctrl-C
    total = handle.result()
    print("total", total)
    if stats.stage("numbers").items_out == 1000:  # (not drained early by a Ctrl-C)
        expected = sum((x + 1) * 10 for x in range(1000) if (x + 1) % 2 == 0)
        assert total == expected, (total, expected)
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
