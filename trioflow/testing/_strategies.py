"""Hypothesis strategies for testing pipelines (imported by ``trioflow.testing.strategies``).

The central strategy is ``chains()``: a random chain of trioflow operators over ints, drawn
together with a plain-Python reference function over lists. Whatever the chunk size, the
buffers, and whether a step is fused (sync) or runs in its own task (async, possibly a
worker pool), the flow must give exactly what the reference gives: those choices move
edges around, they never change the meaning.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio
from hypothesis import strategies as st

from .._flow import DEFAULT_BUFFER, DEFAULT_CHUNK_SIZE
from .._operators import batch, filter, flat_map, map, scan, skip, take, take_while, tap
from .._stage import Stage

ListFn = Callable[[list[Any]], list[Any]]

_MAPS: dict[str, Callable[[int], int]] = {
    "inc": lambda x: x + 1,
    "double": lambda x: x * 2,
    "neg": lambda x: -x,
    "mod7": lambda x: x % 7,
}
_PREDICATES: dict[str, Callable[[int], bool]] = {
    "even": lambda x: x % 2 == 0,
    "pos": lambda x: x > 0,
    "not3": lambda x: x % 3 != 0,
    "small": lambda x: abs(x) < 50,
}
_FLATS: dict[str, Callable[[int], list[int]]] = {
    "dup": lambda x: [x, x],
    "none": lambda x: [],
    "range3": lambda x: list(range(x % 3)),
}
_SCANS: dict[str, Callable[[int, int], int]] = {
    "sum": lambda acc, x: acc + x,
    "max": lambda acc, x: max(acc, x),
}


def _async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An async twin of ``fn`` that yields a few times (item-dependent), so calls in a pool
    finish out of order without any clock."""

    async def afn(*args: Any) -> Any:
        for _ in range(hash(args) % 3):
            await trio.lowlevel.checkpoint()
        return fn(*args)

    return afn


@attrs.frozen(kw_only=True)
class Reference:
    """The plain-Python meaning of a drawn chain: ``reference(items)`` is the list a run of
    the chain over ``items`` must produce. Its repr spells the chain, for readable examples."""

    steps: tuple[tuple[str, ListFn], ...]

    def __call__(self, items: Sequence[Any]) -> list[Any]:
        """Apply every step to ``items`` in order."""
        out = list(items)
        for _, fn in self.steps:
            out = fn(out)
        return out

    def __repr__(self) -> str:
        return " | ".join(label for label, _ in self.steps)


@attrs.frozen(kw_only=True)
class RunSettings:
    """Run parameters drawn by ``run_settings()``; pass them as
    ``run_on_list(..., chunk_size=s.chunk_size, buffer=s.buffer)``."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    buffer: int = DEFAULT_BUFFER


def items(
    elements: st.SearchStrategy[int] | None = None, *, max_size: int = 30
) -> st.SearchStrategy[list[int]]:
    """Lists of items to feed a chain: small ints by default (what ``chains()`` expects)."""
    return st.lists(st.integers(-100, 100) if elements is None else elements, max_size=max_size)


@st.composite
def _step(draw: st.DrawFn) -> tuple[str, Stage[Any, Any], ListFn]:
    kind = draw(st.sampled_from(
        ["map", "filter", "flat_map", "scan", "take", "skip", "take_while", "batch", "tap"]
    ))
    is_async = draw(st.booleans()) if kind in ("map", "filter", "scan", "tap") else False
    mode = "async " if is_async else ""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _async(fn) if is_async else fn

    if kind == "map":
        name = draw(st.sampled_from(sorted(_MAPS)))
        f = _MAPS[name]
        workers = draw(st.integers(1, 3)) if is_async else 1
        label = f"{mode}map({name}, concurrency={workers})" if workers > 1 else f"{mode}map({name})"
        return label, map(wrap(f), concurrency=workers), lambda xs: [f(x) for x in xs]
    if kind == "filter":
        name = draw(st.sampled_from(sorted(_PREDICATES)))
        p = _PREDICATES[name]
        return f"{mode}filter({name})", filter(wrap(p)), lambda xs: [x for x in xs if p(x)]
    if kind == "take_while":
        name = draw(st.sampled_from(sorted(_PREDICATES)))
        p = _PREDICATES[name]
        return f"take_while({name})", take_while(p), lambda xs: list(itertools.takewhile(p, xs))
    if kind == "flat_map":
        name = draw(st.sampled_from(sorted(_FLATS)))
        g = _FLATS[name]
        return f"flat_map({name})", flat_map(g), lambda xs: [y for x in xs for y in g(x)]
    if kind == "scan":
        name = draw(st.sampled_from(sorted(_SCANS)))
        h = _SCANS[name]
        initial = draw(st.integers(-5, 5))
        return (f"{mode}scan({name}, {initial})", scan(wrap(h), initial),
                lambda xs: list(itertools.accumulate(xs, h, initial=initial))[1:])
    if kind == "take":
        n = draw(st.integers(0, 6))
        return f"take({n})", take(n), lambda xs: xs[:n]
    if kind == "skip":
        n = draw(st.integers(0, 6))
        return f"skip({n})", skip(n), lambda xs: xs[n:]
    if kind == "batch":
        size = draw(st.integers(1, 4))
        # a batch turns ints into lists; summing brings them back to ints
        return (f"batch({size}) | map(sum)", batch(size) | map(sum),
                lambda xs: [sum(xs[i:i + size]) for i in range(0, len(xs), size)])
    return f"{mode}tap(noop)", tap(wrap(lambda x: None)), lambda xs: xs


@st.composite
def _chains(draw: st.DrawFn, max_length: int) -> tuple[Stage[int, int], Reference]:
    steps = draw(st.lists(_step(), min_size=1, max_size=max_length))
    stage: Stage[Any, Any] = steps[0][1]
    for _, s, _ in steps[1:]:
        stage = stage | s
    return stage, Reference(steps=tuple((label, fn) for label, _, fn in steps))


def chains(max_length: int = 4) -> st.SearchStrategy[tuple[Stage[int, int], Reference]]:
    """Pairs ``(stage, reference)``: a chain of 1 to ``max_length`` trioflow operators over
    ints (map, filter, flat_map, scan, take, skip, take_while, batch, tap; sync ones fused,
    async ones in tasks, some maps in worker pools) and its plain-Python reference, so that
    ``(await run_on_list(stage, xs)).outputs == reference(xs)``.
    """
    return _chains(max_length)


def fault_schedules(n: int, *, max_failures: int | None = None) -> st.SearchStrategy[frozenset[int]]:
    """Which of ``n`` calls fail: sets of call numbers in ``1..n`` (possibly empty), for
    ``fail_on_call(fn, schedule)``."""
    return st.frozensets(st.integers(1, n), max_size=n if max_failures is None else max_failures)


def run_settings() -> st.SearchStrategy[RunSettings]:
    """Chunk sizes and edge buffers for a run: mostly tiny (every edge fills, chunks split
    items apart), sometimes the defaults."""
    return st.one_of(
        st.builds(RunSettings, chunk_size=st.integers(1, 8), buffer=st.integers(1, 8)),
        st.builds(RunSettings, chunk_size=st.integers(1, 2048), buffer=st.integers(1, 1024)),
        st.just(RunSettings()),
    )
