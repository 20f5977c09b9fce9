"""Shared Hypothesis strategies for trioflow's property tests.

The central object is ``OpSpec``: one operator of a chain, in a given *mode* (fused sync
function, unfused async function, worker pool, generator ...), paired with a plain-Python
reference over a list. A chain of ``OpSpec`` built twice, once as a trioflow flow and once
as list functions, must give the same output whatever the modes, chunk size and buffers:
the modes only move edges around, they never change the meaning.

Every callable has a short name, so a failing example prints readably.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio
from hypothesis import strategies as st

import trioflow as tf

# -- pure functions, by name ------------------------------------------------------------------

MAP_FNS: dict[str, Callable[[int], int]] = {
    "inc": lambda x: x + 1,
    "double": lambda x: x * 2,
    "neg": lambda x: -x,
    "mod7": lambda x: x % 7,
    "half": lambda x: x // 2,
}

PREDICATES: dict[str, Callable[[int], bool]] = {
    "even": lambda x: x % 2 == 0,
    "pos": lambda x: x > 0,
    "not3": lambda x: x % 3 != 0,
    "small": lambda x: abs(x) < 50,
    "always": lambda x: True,
    "never": lambda x: False,
    "not17": lambda x: x % 17 != 0,
    "lt90": lambda x: abs(x) < 90,
}
#: take_while stops at the first false item: favour predicates that let a run through
WHILE_PREDICATES = ["not17", "lt90", "always", "small", "not3"]

FLAT_FNS: dict[str, Callable[[int], list[int]]] = {
    "dup": lambda x: [x, x],
    "none": lambda x: [],
    "range3": lambda x: list(range(x % 3)),
    "pair": lambda x: [x, -x],
    "one": lambda x: [x],
}

SCAN_FNS: dict[str, Callable[[int, int], int]] = {
    "sum": lambda acc, x: acc + x,
    "max": lambda acc, x: max(acc, x),
    "hash": lambda acc, x: (acc * 31 + x) % 1009,
}

#: What follows a batch, to bring lists of ints back to ints ("flatten" undoes the batch).
BATCH_POST: dict[str, Callable[[list[int]], int]] = {
    "sum": sum,
    "len": len,
    "first": lambda b: b[0],
    "last": lambda b: b[-1],
}

#: A batch with a timer never fires while the pipeline is busy (virtual time only moves
#: when every task is blocked), so the output of a list source does not depend on it.
BATCH_TIMEOUT = 3600.0


def virtual_delay(x: object, salt: int) -> float:
    """A deterministic per-item virtual delay, so pools finish out of order."""
    return (hash((x if not isinstance(x, list) else tuple(x), salt)) % 5) * 0.001


def _async1(fn: Callable[[Any], Any], yields: bool, salt: int | None) -> Callable[[Any], Any]:
    async def afn(x: Any) -> Any:
        if salt is not None:
            await trio.sleep(virtual_delay(x, salt))
        elif yields:
            await trio.lowlevel.checkpoint()
        return fn(x)

    return afn


def _async2(fn: Callable[[Any, Any], Any], yields: bool) -> Callable[[Any, Any], Any]:
    async def afn(acc: Any, x: Any) -> Any:
        if yields:
            await trio.lowlevel.checkpoint()
        return fn(acc, x)

    return afn


def _sync_gen(fn: Callable[[Any], list[Any]]) -> Callable[[Any], Iterator[Any]]:
    def gen(x: Any) -> Iterator[Any]:
        yield from fn(x)

    return gen


def _async_gen(fn: Callable[[Any], list[Any]], yields: bool) -> Callable[[Any], AsyncIterator[Any]]:
    async def agen(x: Any) -> AsyncIterator[Any]:
        for y in fn(x):
            if yields:
                await trio.lowlevel.checkpoint()
            yield y

    return agen


def _identity(x: Any) -> Any:
    return x


def _mod3(x: int) -> int:
    return x % 3


def _second(kv: tuple[Any, Any]) -> Any:
    return kv[1]


# -- operator specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """One operator of a chain.

    ``mode`` is one of: ``sync`` (fused), ``async`` (own task, concurrency 1), ``pool``
    (async, ``concurrency`` workers, ordered, virtual per-item delays), ``upool`` (the same
    pool with ``ordered=False``: its output is the reference as a multiset only; never
    drawn by ``op_specs``), ``gen``/``agen`` (flat_map with a generator / async
    generator), ``timer`` (batch with a timeout).
    """

    kind: str
    fn: str = ""
    n: int = 0
    mode: str = "sync"
    yields: bool = False
    buffer: int | None = None
    concurrency: int = 1
    window: int | None = None
    post: str = ""
    post_mode: str = "sync"
    salt: int = 0

    def __repr__(self) -> str:
        parts = [self.kind]
        if self.fn:
            parts.append(self.fn)
        if self.kind in ("take", "skip", "batch"):
            parts.append(str(self.n))
        parts.append(self.mode)
        if self.mode in ("pool", "upool"):
            parts.append(f"c={self.concurrency},w={self.window}")
        if self.post:
            parts.append(f"post={self.post}/{self.post_mode}")
        if self.buffer is not None:
            parts.append(f"buf={self.buffer}")
        if self.yields:
            parts.append("yields")
        return "<" + " ".join(parts) + ">"

    # ---- trioflow side

    def stages(self) -> list[tf.Stage[Any, Any]]:
        kw: dict[str, Any] = {"buffer": self.buffer} if self.buffer is not None else {}
        asyncish = self.mode in ("async", "pool", "upool")
        salt = self.salt if self.mode in ("pool", "upool") else None
        if self.kind in ("map", "hop"):
            f: Callable[[Any], Any] = MAP_FNS[self.fn] if self.kind == "map" else _identity
            if not asyncish:
                return [tf.map(f)]
            extra: dict[str, Any] = {}
            if self.mode in ("pool", "upool"):
                extra = {"concurrency": self.concurrency, "window": self.window,
                         "ordered": self.mode == "pool"}
            return [tf.map(_async1(f, self.yields, salt), **extra, **kw)]
        if self.kind == "filter":
            p = PREDICATES[self.fn]
            return [tf.filter(_async1(p, self.yields, None), **kw) if asyncish else tf.filter(p)]
        if self.kind == "take_while":
            p = PREDICATES[self.fn]
            if asyncish:
                return [tf.take_while(_async1(p, self.yields, None), **kw)]
            return [tf.take_while(p)]
        if self.kind == "scan":
            g = SCAN_FNS[self.fn]
            return [tf.scan(_async2(g, self.yields), 0, **kw) if asyncish else tf.scan(g, 0)]
        if self.kind == "kscan":  # keyed by x % 3; the map after it keeps the accumulator
            g = SCAN_FNS[self.fn]
            keyed = (tf.scan(_async2(g, self.yields), 0, key=_mod3, **kw) if asyncish
                     else tf.scan(g, 0, key=_mod3))
            return [keyed, tf.map(_second)]
        if self.kind == "flat_map":
            h = FLAT_FNS[self.fn]
            if self.mode == "sync":
                return [tf.flat_map(h)]
            if self.mode == "gen":
                return [tf.flat_map(_sync_gen(h))]
            if self.mode == "agen":
                return [tf.flat_map(_async_gen(h, self.yields), **kw)]
            return [tf.flat_map(_async1(h, self.yields, None), **kw)]
        if self.kind == "take":
            return [tf.take(self.n)]
        if self.kind == "skip":
            return [tf.skip(self.n)]
        if self.kind == "batch":
            b: tf.Stage[Any, Any] = (
                tf.batch(self.n, timeout=BATCH_TIMEOUT, **kw) if self.mode == "timer" else tf.batch(self.n)
            )
            if self.post == "flatten":
                post: tf.Stage[Any, Any] = (
                    tf.flat_map(_identity) if self.post_mode == "sync"
                    else tf.flat_map(_async1(_identity, self.yields, None))
                )
            else:
                pf = BATCH_POST[self.post]
                post = tf.map(pf) if self.post_mode == "sync" else tf.map(_async1(pf, self.yields, None))
            return [b, post]
        raise AssertionError(self.kind)

    @property
    def ordered(self) -> bool:
        """Whether the stage keeps the order of its input."""
        return self.mode != "upool"

    @property
    def elementwise(self) -> bool:
        """Whether the stage treats each item on its own (its output, as a multiset, does
        not depend on the order of its input)."""
        return self.kind in ("map", "hop", "filter", "flat_map") or (
            self.kind == "batch" and self.post == "flatten")

    # ---- reference side

    def reference(self, xs: list[Any]) -> list[Any]:
        if self.kind == "hop":
            return list(xs)
        if self.kind == "map":
            return [MAP_FNS[self.fn](x) for x in xs]
        if self.kind == "filter":
            return [x for x in xs if PREDICATES[self.fn](x)]
        if self.kind == "take_while":
            return list(itertools.takewhile(PREDICATES[self.fn], xs))
        if self.kind == "scan":
            return list(itertools.accumulate(xs, SCAN_FNS[self.fn], initial=0))[1:]
        if self.kind == "kscan":
            accs: dict[int, int] = {}
            out: list[Any] = []
            for x in xs:
                accs[x % 3] = SCAN_FNS[self.fn](accs.get(x % 3, 0), x)
                out.append(accs[x % 3])
            return out
        if self.kind == "flat_map":
            return [y for x in xs for y in FLAT_FNS[self.fn](x)]
        if self.kind == "take":
            return xs[: self.n]
        if self.kind == "skip":
            return xs[self.n :]
        if self.kind == "batch":
            batches = [xs[i : i + self.n] for i in range(0, len(xs), self.n)]
            if self.post == "flatten":
                return [x for b in batches for x in b]
            return [BATCH_POST[self.post](b) for b in batches]
        raise AssertionError(self.kind)


def reference(ops: list[OpSpec], xs: list[Any]) -> list[Any]:
    """The plain-Python meaning of a chain."""
    for op in ops:
        xs = op.reference(xs)
    return xs


def build_stages(ops: list[OpSpec]) -> list[tf.Stage[Any, Any]]:
    return [s for op in ops for s in op.stages()]


# -- strategies -------------------------------------------------------------------------------

buffers = st.integers(1, 64)
chunk_sizes = st.integers(1, 64)
stage_buffers = st.none() | st.integers(1, 16)


@st.composite
def op_specs(draw: st.DrawFn) -> OpSpec:
    """One operator, in one of the modes it supports."""
    kind = draw(st.sampled_from(
        ["map", "filter", "flat_map", "take", "skip", "batch", "scan", "kscan", "take_while", "hop"]
    ))
    yields = draw(st.booleans())
    buffer = draw(stage_buffers)
    salt = draw(st.integers(0, 1000))
    if kind in ("map", "hop"):
        mode = draw(st.sampled_from(["sync", "async", "pool"]))
        fn = draw(st.sampled_from(sorted(MAP_FNS))) if kind == "map" else ""
        if mode == "pool":
            c = draw(st.integers(1, 6))
            window = draw(st.none() | st.integers(c, 3 * c))
            return OpSpec(kind=kind, fn=fn, mode=mode, yields=yields, buffer=buffer,
                          concurrency=c, window=window, salt=salt)
        return OpSpec(kind=kind, fn=fn, mode=mode, yields=yields, buffer=buffer)
    if kind in ("filter", "take_while"):
        names = WHILE_PREDICATES if kind == "take_while" else sorted(PREDICATES)
        return OpSpec(kind=kind, fn=draw(st.sampled_from(names)),
                      mode=draw(st.sampled_from(["sync", "async"])), yields=yields, buffer=buffer)
    if kind in ("scan", "kscan"):
        return OpSpec(kind=kind, fn=draw(st.sampled_from(sorted(SCAN_FNS))),
                      mode=draw(st.sampled_from(["sync", "async"])), yields=yields, buffer=buffer)
    if kind == "flat_map":
        return OpSpec(kind=kind, fn=draw(st.sampled_from(sorted(FLAT_FNS))),
                      mode=draw(st.sampled_from(["sync", "gen", "async", "agen"])),
                      yields=yields, buffer=buffer)
    if kind == "take":
        return OpSpec(kind=kind, n=draw(st.integers(0, 40)))
    if kind == "skip":
        return OpSpec(kind=kind, n=draw(st.integers(0, 12)))
    assert kind == "batch"
    return OpSpec(kind=kind, n=draw(st.integers(1, 10)), mode=draw(st.sampled_from(["sync", "timer"])),
                  post=draw(st.sampled_from([*sorted(BATCH_POST), "flatten"])),
                  post_mode=draw(st.sampled_from(["sync", "async"])), yields=yields, buffer=buffer)


def _not_exploding(ops: list[OpSpec]) -> bool:
    return sum(op.kind == "flat_map" and op.fn in ("dup", "pair") for op in ops) <= 3


chains = st.lists(op_specs(), min_size=1, max_size=7).filter(_not_exploding)
# Hypothesis favours short lists; mix in long ones so that chunking, batching and buffers
# are actually exercised
item_lists = st.one_of(
    st.lists(st.integers(-100, 100), max_size=10),
    st.lists(st.integers(-100, 100), min_size=10, max_size=80),
)

SOURCE_KINDS = ["iterable", "generator", "async_iterable", "source_emit", "source_many", "channel"]
TERMINALS = ["to_list", "pipeline", "reduce", "reduce_async", "sink_async", "open"]


@dataclass(frozen=True)
class RunSpec:
    """How to feed, end and run a chain."""

    source: str
    terminal: str
    chunk_size: int
    buffer: int
    #: for ``source_many``: sizes of the slices handed to ``emit.many``; for ``channel``:
    #: the channel's own buffer (first element)
    slices: tuple[int, ...]


@st.composite
def run_specs(draw: st.DrawFn) -> RunSpec:
    return RunSpec(
        source=draw(st.sampled_from(SOURCE_KINDS)),
        terminal=draw(st.sampled_from(TERMINALS)),
        chunk_size=draw(chunk_sizes),
        buffer=draw(buffers),
        slices=tuple(draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))),
    )


# -- concurrency parameters -------------------------------------------------------------------

delays = st.sampled_from([0.0, 0.001, 0.002, 0.005, 0.01, 0.05])


@dataclass(frozen=True)
class PoolSpec:
    """Parameters of a concurrent stage: N workers, ordered or not, a reorder window."""

    concurrency: int
    ordered: bool
    window: int | None
    #: per-item virtual delay of the call, indexed by item position (cycled)
    delays: tuple[float, ...]
    #: virtual delay of the consumer per item (backpressure on the emitter)
    consumer_delay: float
    buffer: int
    chunk_size: int


@st.composite
def pool_specs(draw: st.DrawFn, max_concurrency: int = 8) -> PoolSpec:
    n = draw(st.integers(1, max_concurrency))
    return PoolSpec(
        concurrency=n,
        ordered=draw(st.booleans()),
        window=draw(st.none() | st.integers(n, 3 * n + 2)),
        delays=tuple(draw(st.lists(delays, min_size=1, max_size=20))),
        # a slow consumer and a small buffer make the pool's emitter wait (backpressure)
        consumer_delay=draw(st.sampled_from([0.0, 0.001, 0.003, 0.02])),
        buffer=draw(st.integers(1, 4) | st.integers(1, 16)),
        chunk_size=draw(st.integers(1, 16)),
    )
