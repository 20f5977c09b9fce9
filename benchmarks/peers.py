"""Optional peer libraries, measured in the same run when they are installed.

``nox -s bench`` installs them into the benchmark environment; with a plain
``python benchmarks/run.py`` they are skipped (and the table says so). aiostream runs
under asyncio, so its rows compare whole stacks (library and event loop), not just the
pipeline layers.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from typing import Any

from harness import Variant

HAVE_AIOSTREAM = importlib.util.find_spec("aiostream") is not None
MISSING_NOTE = "aiostream not installed: peer rows skipped (nox -s bench installs it)"


async def aiostream_linear(n: int) -> int:
    from aiostream import pipe, stream

    total = 0
    xs = (
        stream.iterate(range(n))
        | pipe.map(lambda x: x + 1)
        | pipe.filter(lambda x: x % 2 == 0)
        | pipe.map(lambda x: x * 2)
    )
    async with xs.stream() as items:
        async for x in items:
            total += x
    return total


async def _fetch_asyncio(delay: float, x: int) -> int:
    await asyncio.sleep(delay)
    return x * 10


async def aiostream_io(n: int, *, delay: float, concurrency: int, ordered: bool) -> list[int]:
    from aiostream import pipe, stream

    fetch = functools.partial(_fetch_asyncio, delay)
    xs = stream.iterate(range(n)) | pipe.map(fetch, ordered=ordered, task_limit=concurrency)
    results: list[int] = await (xs | pipe.list())
    return results if ordered else sorted(results)


def linear_variants(n: int) -> list[Variant]:
    if not HAVE_AIOSTREAM:
        return []
    return [Variant("aiostream", aiostream_linear, "aiostream under asyncio: map | filter | map", n,
                    loop="asyncio")]


def io_variants(n: int, *, delay: float, concurrency: int) -> list[Variant]:
    if not HAVE_AIOSTREAM:
        return []
    out = []
    for ordered in (True, False):
        fn: Any = functools.partial(aiostream_io, delay=delay, concurrency=concurrency, ordered=ordered)
        out.append(Variant(f"aiostream_{'ordered' if ordered else 'unordered'}", fn,
                           f"aiostream under asyncio: map(task_limit={concurrency}, ordered={ordered})",
                           n, loop="asyncio"))
    return out
