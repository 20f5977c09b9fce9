"""A generator of random pipelines, fault schedules and endings, each with its oracle.

``tests/test_generated.py`` runs what this module draws. A *scenario* is

* a shape: a chain (``from_iterable | ops | to_list``) or a graph (blocks of broadcast,
  route with a default, balance, zip, ``fork_join`` and ``partition``, nested), where a
  junction may have an unordered pool (``map(async_fn, concurrency=k, ordered=False)``)
  right before it;
* fault stages (``FaultSpec``): user code that fails for chosen *values* on their first
  ``a`` attempts (``a = ALWAYS``: every attempt), under ``Fail``, ``Skip``,
  ``DeadLetter`` (list or channel), ``Collect``, with or without ``Retry``;
* an ending (``Ending``): natural completion, an outside cancellation, ``handle.cancel()``
  or ``handle.drain(timeout)``, at a random virtual time plus a random number of
  scheduling points;
* a Trio scheduler seed.

Every part has a plain-Python reference over lists (``reference``), built from the same
``OpSpec`` functions as ``tests/strategies.py``.

Why faults by value and attempt, not by call number: under a worker pool the n-th call is
whichever item Trio schedules n-th, so a call-number fault has no reference. A value that
fails ``a`` times, counted per fault stage, does: a permanent fault drops every
occurrence, and a transient one is only drawn with more retry attempts than ``a``, so every
occurrence gets through, whichever occurrence took the failures.

``KNOWN_BUGS`` names the configurations that fail today because of bugs being fixed
(issue 9). The strategies leave those configurations out while their name is in the set;
remove a name once its fix lands, and the generator covers that space again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from hypothesis import strategies as st
from strategies import FLAT_FNS, MAP_FNS, PREDICATES, OpSpec, op_specs, virtual_delay

import trioflow as tf
from trioflow.testing import InjectedFault, ResourceTracker

#: Configurations left out of the generated space until their issue-9 fix lands:
#:
#: * ``fanout_after_unordered_pool``: a broadcast (zip diamond) or a ``fork_join`` fed by
#:   an unordered pool gives its branches different orders: zip mis-pairs, fork_join loses
#:   items or hangs; a ``partition`` fed by one hangs (found by this generator);
#: * ``flat_map_generator_retry``: ``flat_map`` of a (sync or async) generator function
#:   ignores ``retry=``;
#: * ``cancel_with_collect``: ``handle.cancel()`` (or a drain that times out) of a run
#:   whose ``Collect()`` stage collected a failure raises instead of returning quietly;
#: * ``drain_at_balance``: a drain while a balance waits for room loses items (issue 9; not
#:   in the set: 3000 generated graphs with drains at balances passed, so the generator
#:   does not reach that case yet and keeps covering drains at balances);
#: * ``lifted_counts_tombstones`` (found by this generator, not in issue 9): a stage in a
#:   ``fork_join``/``partition`` branch that skips or dead-letters an item also counts the
#:   tombstone it passes on in ``items_out``, so the item is counted twice.
KNOWN_BUGS: set[str] = set()  # all four found so far are fixed (issue 9)
#: ``TRIOFLOW_GEN_KNOWN_BUGS=name,name`` (or empty) overrides the set for one run, to hunt
#: with a bug's configurations back in without editing the file.
if (_override := os.environ.get("TRIOFLOW_GEN_KNOWN_BUGS")) is not None:
    KNOWN_BUGS = {name for name in _override.split(",") if name}

#: Failing attempts of a permanent fault.
ALWAYS = 10**6

POLICIES = ["fail", "skip", "dead_list", "dead_channel", "collect"]


# =============================================================================================
# fault stages
# =============================================================================================


@dataclass(frozen=True)
class FaultSpec:
    """A stage running user code that fails for chosen values.

    ``kind``/``mode``: ``map`` in ``sync`` (fused unless retried), ``async``, ``pool``
    (ordered), ``upool`` (unordered) or ``persistent`` (a tracked resource per worker);
    ``flat_map`` in ``list``, ``gen``, ``agen`` or ``async``; ``filter`` in ``sync`` or
    ``async``. ``faults``: ``(value, failing attempts)``; ``retry``: attempts in all
    (1: no ``Retry``).
    """

    name: str
    kind: str
    mode: str
    fn: str
    faults: tuple[tuple[int, int], ...]
    policy: str
    retry: int = 1
    concurrency: int = 1
    salt: int = 0

    def __repr__(self) -> str:
        faults = ",".join(f"{v}x{'inf' if a >= ALWAYS else a}" for v, a in self.faults)
        extra = f" c={self.concurrency}" if self.mode in ("pool", "upool", "persistent") else ""
        retry = f" retry={self.retry}" if self.retry > 1 else ""
        return (f"<fault {self.name}: {self.kind} {self.fn} {self.mode}{extra} [{faults}] "
                f"{self.policy}{retry}>")

    @property
    def ordered(self) -> bool:
        return self.mode != "upool"

    elementwise = True

    @property
    def dropped(self) -> frozenset[int]:
        """Values that fail on every attempt."""
        return frozenset(v for v, a in self.faults if a >= self.retry)

    def reference(self, xs: list[Any]) -> list[Any]:
        kept = [x for x in xs if x not in self.dropped]
        if self.kind == "map":
            return [MAP_FNS[self.fn](x) for x in kept]
        if self.kind == "filter":
            return [x for x in kept if PREDICATES[self.fn](x)]
        return [y for x in kept for y in FLAT_FNS[self.fn](x)]


class Live:
    """What one run of a scenario records: fault counters, injected errors, dead letters,
    resources."""

    def __init__(self) -> None:
        self.calls: dict[str, Counter[int]] = {}
        #: every injected error, with the fault stage that raised it
        self.raised: list[tuple[FaultSpec, InjectedFault]] = []
        #: what reached the sink, in order
        self.out: list[Any] = []
        self.letters: list[tf.DeadLetterEntry] = []
        self.channel_letters: list[tf.DeadLetterEntry] = []
        self.tracker = ResourceTracker()
        self.mismatched: list[tuple[Any, ...]] = []  # zip/fork_join tuples of different items
        #: the acknowledgements the source got (when the scenario asks for them and can)
        self.acked: list[tf.Ack] = []
        self.acks_on = False
        self.channel: trio.MemorySendChannel[tf.DeadLetterEntry] | None = None

    def check(self, spec: FaultSpec, x: int) -> None:
        """Raise for ``x`` while it has failing attempts left at stage ``spec``."""
        calls = self.calls.setdefault(spec.name, Counter())
        calls[x] += 1
        if calls[x] <= dict(spec.faults).get(x, 0):
            exc = InjectedFault(f"{spec.name} fails on {x} (attempt {calls[x]})")
            self.raised.append((spec, exc))
            raise exc

    def first_of_equal(self, t: tuple[Any, ...]) -> Any:
        """After a zip or fork_join whose branches compute the same value from one item:
        every element must be equal. A mismatch is recorded (not raised, so that it cannot
        be confused with a run failure)."""
        if any(v != t[0] for v in t):
            self.mismatched.append(t)
        return t[0]

    def policy(self, spec: FaultSpec) -> tf.OnError:
        if spec.policy == "fail":
            return tf.Fail()
        if spec.policy == "skip":
            return tf.Skip()
        if spec.policy == "dead_list":
            return tf.DeadLetter(self.letters)
        if spec.policy == "dead_channel":
            assert self.channel is not None
            return tf.DeadLetter(self.channel)
        return tf.Collect()

    def stage(self, spec: FaultSpec) -> tf.Stage[Any, Any]:
        kw: dict[str, Any] = {"name": spec.name, "on_error": self.policy(spec)}
        if spec.retry > 1:
            # no jitter: the stage's backoff RNG is not seeded, and a replay must be exact
            kw["retry"] = tf.Retry(attempts=spec.retry,
                                   backoff=tf.Backoff(min=0.001, max=0.004, jitter=0))
        live = self
        salt = spec.salt
        if spec.kind == "map":
            f = MAP_FNS[spec.fn]
            if spec.mode == "sync":
                def sync_map(x: int) -> int:
                    live.check(spec, x)
                    return f(x)

                return tf.map(sync_map, **kw)

            async def async_map(x: int) -> int:
                await trio.sleep(virtual_delay(x, salt))
                live.check(spec, x)
                return f(x)

            if spec.mode == "async":
                return tf.map(async_map, **kw)
            if spec.mode in ("pool", "upool"):
                return tf.map(async_map, concurrency=spec.concurrency, ordered=spec.mode == "pool", **kw)
            assert spec.mode == "persistent"

            @contextlib.asynccontextmanager
            async def connect() -> AsyncIterator[int]:
                await trio.sleep(0.001)
                yield salt

            async def use(res: int, x: int) -> int:
                assert res == salt
                return await async_map(x)

            return tf.persistent(use, resource=live.tracker.factory(connect), workers=spec.concurrency, **kw)
        if spec.kind == "filter":
            p = PREDICATES[spec.fn]
            if spec.mode == "sync":
                def sync_pred(x: int) -> bool:
                    live.check(spec, x)
                    return p(x)

                return tf.filter(sync_pred, **kw)

            async def async_pred(x: int) -> bool:
                await trio.sleep(virtual_delay(x, salt))
                live.check(spec, x)
                return p(x)

            return tf.filter(async_pred, **kw)
        h = FLAT_FNS[spec.fn]
        if spec.mode == "list":
            def as_list(x: int) -> list[int]:
                live.check(spec, x)
                return h(x)

            return tf.flat_map(as_list, **kw)
        if spec.mode == "gen":
            def gen(x: int) -> Iterator[int]:
                live.check(spec, x)
                yield from h(x)

            return tf.flat_map(gen, **kw)
        if spec.mode == "agen":
            async def agen(x: int) -> AsyncIterator[int]:
                await trio.sleep(virtual_delay(x, salt))
                live.check(spec, x)
                for y in h(x):
                    yield y

            return tf.flat_map(agen, **kw)

        async def async_list(x: int) -> list[int]:
            await trio.sleep(virtual_delay(x, salt))
            live.check(spec, x)
            return h(x)

        return tf.flat_map(async_list, **kw)


# =============================================================================================
# chains and graphs: blocks with references
# =============================================================================================

Op = OpSpec | FaultSpec


def op_stages(op: Op, live: Live) -> list[tf.Stage[Any, Any]]:
    return [live.stage(op)] if isinstance(op, FaultSpec) else op.stages()


def ops_reference(ops: tuple[Op, ...], xs: list[Any]) -> list[Any]:
    for op in ops:
        xs = op.reference(xs)
    return xs


def ops_ordered(ops: tuple[Op, ...]) -> bool:
    return all(op.ordered for op in ops)


@dataclass(frozen=True)
class Path:
    """Stages one after the other."""

    ops: tuple[Op, ...]

    def build(self, g: tf.Graph, node: Any, live: Live) -> Any:
        for op in self.ops:
            for stage in op_stages(op, live):
                node = g.add(stage, node)
        return node

    def reference(self, xs: list[Any]) -> list[Any]:
        return ops_reference(self.ops, xs)

    def ordered(self) -> bool:
        return ops_ordered(self.ops)


@dataclass(frozen=True)
class Fan:
    """A junction (``broadcast``, ``route`` by ``x % m`` with a default, ``balance``), its
    branches, and a ``merge`` of them. ``pre``: an unordered pool right before it."""

    kind: str
    branches: tuple[Block, ...]
    pre: OpSpec | None = None
    m: int = 1
    ports: tuple[int, ...] = ()

    def build(self, g: tf.Graph, node: Any, live: Live) -> Any:
        if self.pre is not None:
            (stage,) = self.pre.stages()
            node = g.add(stage, node)
        if self.kind == "broadcast":
            fan = g.broadcast(node)
            inputs = [fan] * len(self.branches)
        elif self.kind == "balance":
            fan = g.balance(node)
            inputs = [fan] * len(self.branches)
        else:
            m = self.m
            r = g.route(node, key=lambda x: x % m)
            inputs = [*(r[p] for p in self.ports), r.default]
        ends = [b.build(g, inp, live) for b, inp in zip(self.branches, inputs, strict=True)]
        return g.merge(*ends) if len(ends) > 1 else ends[0]

    def reference(self, xs: list[Any]) -> list[Any]:
        if self.pre is not None:
            xs = self.pre.reference(xs)
        if self.kind == "broadcast":
            return [y for b in self.branches for y in b.reference(xs)]
        if self.kind == "balance":
            # every branch computes the same elementwise function
            return self.branches[0].reference(xs)
        out: list[Any] = []
        for i, b in enumerate(self.branches):
            if i < len(self.ports):
                out += b.reference([x for x in xs if x % self.m == self.ports[i]])
            else:
                out += b.reference([x for x in xs if x % self.m not in self.ports])
        return out

    def ordered(self) -> bool:
        return len(self.branches) == 1 and self.pre is None and self.kind != "balance" and \
            self.branches[0].ordered()


@dataclass(frozen=True)
class Join:
    """Branches that compute the same value from each item, joined back into one item:
    ``zip`` after a ``broadcast`` (the documented diamond: every branch 1:1 and ordered),
    or ``fork_join`` (branches may filter or drop items: an inner join). A map after the
    join checks that every tuple holds equal values (one input item) and keeps one."""

    kind: str  # "zip" | "fork_join"
    branches: tuple[tuple[Op, ...], ...]
    pre: OpSpec | None = None

    def build(self, g: tf.Graph, node: Any, live: Live) -> Any:
        if self.pre is not None:
            (stage,) = self.pre.stages()
            node = g.add(stage, node)
        if self.kind == "zip":
            fan = g.broadcast(node)
            ends = [Path(ops).build(g, fan, live) for ops in self.branches]
            node = g.zip(*ends)
        else:
            branches = []
            for ops in self.branches:
                stages = [s for op in ops for s in op_stages(op, live)]
                chain = stages[0]
                for s in stages[1:]:
                    chain = chain | s
                branches.append(chain)
            node = g.add(tf.fork_join(*branches), node)
        return g.add(tf.map(live.first_of_equal), node)

    def reference(self, xs: list[Any]) -> list[Any]:
        if self.pre is not None:
            xs = self.pre.reference(xs)
        outs = []
        for ops in self.branches:
            # an item the branch drops or filters leaves the join
            outs.append({x: ops_reference(ops, [x]) for x in set(xs)})
        res = []
        for x in xs:
            ys = [o[x] for o in outs]
            if all(ys):
                (y,) = ys[0]
                res.append(y)
        return res

    def ordered(self) -> bool:
        return self.pre is None


@dataclass(frozen=True)
class Partition:
    """``partition(x % m, {port: branch}, default=branch)``: results in input order."""

    m: int
    ports: tuple[int, ...]
    branches: tuple[tuple[Op, ...], ...]  # one per port, then the default
    pre: OpSpec | None = None

    def build(self, g: tf.Graph, node: Any, live: Live) -> Any:
        if self.pre is not None:
            (stage,) = self.pre.stages()
            node = g.add(stage, node)
        chains = []
        for ops in self.branches:
            stages = [s for op in ops for s in op_stages(op, live)]
            chain = stages[0]
            for s in stages[1:]:
                chain = chain | s
            chains.append(chain)
        m = self.m
        stage = tf.partition(lambda x: x % m, dict(zip(self.ports, chains[:-1], strict=True)),
                             default=chains[-1])
        return g.add(stage, node)

    def reference(self, xs: list[Any]) -> list[Any]:
        if self.pre is not None:
            xs = self.pre.reference(xs)
        out = []
        for x in xs:
            k = x % self.m
            ops = self.branches[self.ports.index(k)] if k in self.ports else self.branches[-1]
            out += ops_reference(ops, [x])
        return out

    def ordered(self) -> bool:
        return self.pre is None


@dataclass(frozen=True)
class Seq:
    """Blocks one after the other."""

    blocks: tuple[Block, ...]

    def build(self, g: tf.Graph, node: Any, live: Live) -> Any:
        for b in self.blocks:
            node = b.build(g, node, live)
        return node

    def reference(self, xs: list[Any]) -> list[Any]:
        for b in self.blocks:
            xs = b.reference(xs)
        return xs

    def ordered(self) -> bool:
        return all(b.ordered() for b in self.blocks)


Block = Path | Fan | Join | Partition | Seq


def walk_ops(block: Block) -> Iterator[Op]:
    """Every op of a block, pools before junctions included."""
    if isinstance(block, Path):
        yield from block.ops
    elif isinstance(block, Seq):
        for b in block.blocks:
            yield from walk_ops(b)
    else:
        if block.pre is not None:
            yield block.pre
        for br in block.branches:
            if isinstance(br, tuple):
                yield from br
            else:
                yield from walk_ops(br)


def walk_blocks(block: Block) -> Iterator[Block]:
    yield block
    if isinstance(block, Seq):
        for b in block.blocks:
            yield from walk_blocks(b)
    elif isinstance(block, Fan):
        for b in block.branches:
            yield from walk_blocks(b)


# =============================================================================================
# the scenario
# =============================================================================================


@dataclass(frozen=True)
class Ending:
    """How the run ends: ``complete``, ``outside_cancel`` (a cancel scope around the run),
    ``handle_cancel``, ``drain`` (``handle.drain(timeout)``), at virtual time ``at`` plus
    ``checkpoints`` scheduling points."""

    how: str
    at: float = 0.0
    checkpoints: int = 0
    drain_timeout: float = 1e6


@dataclass(frozen=True)
class Scenario:
    xs: tuple[int, ...]
    #: a chain's ops (``graph`` is None) or a graph after the source
    chain: tuple[Op, ...] | None
    graph: Block | None
    source: str  # "iterable" | "emit_many"
    slices: tuple[int, ...]
    ending: Ending
    chunk_size: int
    buffer: int
    seed: int
    policies: frozenset[str] = field(default_factory=frozenset)
    #: the source asks for acknowledgements (when every node of the scenario carries them)
    acks: bool = False

    @property
    def block(self) -> Block:
        return Path(self.chain) if self.chain is not None else self.graph  # type: ignore[return-value]

    def faults(self) -> list[FaultSpec]:
        return [op for op in walk_ops(self.block) if isinstance(op, FaultSpec)]

    def reference(self, xs: list[int]) -> list[Any]:
        return self.block.reference(xs)

    @property
    def ordered(self) -> bool:
        return self.block.ordered()

    @property
    def stops_early(self) -> bool:
        """A take or take_while: the run may stop before a failing item is reached."""
        return any(isinstance(op, OpSpec) and op.kind in ("take", "take_while")
                   for op in walk_ops(self.block))

    def lifted(self) -> set[str]:
        """Names of the fault stages inside ``fork_join``/``partition`` branches."""
        return {op.name for b in walk_blocks(self.block)
                if (isinstance(b, Join) and b.kind == "fork_join") or isinstance(b, Partition)
                for br in b.branches for op in br if isinstance(op, FaultSpec)}

    @property
    def has_balance(self) -> bool:
        return any(isinstance(b, Fan) and b.kind == "balance" for b in walk_blocks(self.block))


# =============================================================================================
# strategies
# =============================================================================================


class Names:
    """Unique stage names for one scenario."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


VALUES = st.integers(-20, 60)


@st.composite
def fault_specs(draw: st.DrawFn, names: Names, *, kinds: tuple[str, ...] = ("map", "flat_map", "filter"),
                unordered: bool = True, policies: tuple[str, ...] = tuple(POLICIES),
                persistent: bool = True, transient_only: bool = False) -> FaultSpec:
    kind = draw(st.sampled_from(kinds))
    if kind == "map":
        modes = ["sync", "async", "pool", *(["upool"] if unordered else []),
                 *(["persistent"] if persistent else [])]
        fn = draw(st.sampled_from(sorted(MAP_FNS)))
    elif kind == "filter":
        modes = ["sync", "async"]
        fn = draw(st.sampled_from(sorted(PREDICATES)))
    else:
        modes = ["list", "gen", "agen", "async"]
        fn = draw(st.sampled_from(sorted(FLAT_FNS)))
    mode = draw(st.sampled_from(modes))
    retry = draw(st.sampled_from([1, 1, 2, 3]))
    if kind == "flat_map" and mode in ("gen", "agen") and "flat_map_generator_retry" in KNOWN_BUGS:
        retry = 1
    if transient_only:
        retry = max(retry, 2)
    attempts = st.integers(1, retry - 1) if retry > 1 else st.nothing()
    if not transient_only:
        attempts = attempts | st.just(ALWAYS)
    faults = draw(st.lists(st.tuples(VALUES, attempts), max_size=4, unique_by=lambda f: f[0]))
    return FaultSpec(
        name=names("f"), kind=kind, mode=mode, fn=fn, faults=tuple(faults),
        policy=draw(st.sampled_from(policies)), retry=retry,
        concurrency=draw(st.integers(1, 4)), salt=draw(st.integers(0, 1000)),
    )


def unordered_pools() -> st.SearchStrategy[OpSpec]:
    return st.builds(OpSpec, kind=st.just("map"), fn=st.sampled_from(sorted(MAP_FNS)),
                     mode=st.just("upool"), concurrency=st.integers(2, 6),
                     buffer=st.none() | st.integers(1, 4), salt=st.integers(0, 1000))


def _not_exploding(ops: list[Op]) -> bool:
    return sum(isinstance(op, OpSpec | FaultSpec) and op.kind == "flat_map" and op.fn in ("dup", "pair")
               for op in ops) <= 2


@st.composite
def op_lists(draw: st.DrawFn, names: Names, *, ordered_in: bool, max_size: int = 5,
             elementwise_only: bool = False) -> tuple[Op, ...]:
    """Stages in every mode, fault stages and unordered pools among them; once the stream
    is unordered, only elementwise stages follow (order-dependent ones have no reference)."""
    ops: list[Op] = []
    ordered = ordered_in
    for _ in range(draw(st.integers(0, max_size))):
        choice = draw(st.sampled_from(["op", "op", "fault", "upool"]))
        op: Op
        if choice == "fault":
            op = draw(fault_specs(names))
        elif choice == "upool":
            op = draw(unordered_pools())
        else:
            only = not ordered or elementwise_only
            op = draw(op_specs().filter(lambda o, only=only: o.elementwise or not only))
        ops.append(op)
        ordered = ordered and op.ordered
    if not _not_exploding(ops):
        ops = [op for op in ops if not (op.kind == "flat_map" and op.fn in ("dup", "pair"))]
    return tuple(ops)


@st.composite
def one_to_one_ops(draw: st.DrawFn, names: Names, fns: list[str], *, filters: bool) -> tuple[Op, ...]:
    """A branch of a join: the maps ``fns`` in drawn modes (ordered ones: a join branch
    must keep order), faults that retry their way through (or, in a fork_join, drop the
    item), and, in a fork_join, a filter."""
    ops: list[Op] = []
    for fn in fns:
        if draw(st.booleans()):
            spec = draw(fault_specs(names, kinds=("map",), unordered=False,
                                    transient_only=not filters,
                                    policies=tuple(POLICIES) if filters else ("fail",)))
            ops.append(dataclasses.replace(spec, fn=fn))
        else:
            mode = draw(st.sampled_from(["sync", "async", "pool"]))
            c = draw(st.integers(2, 4))
            ops.append(OpSpec(kind="map", fn=fn, mode=mode, concurrency=c if mode == "pool" else 1,
                              salt=draw(st.integers(0, 1000)), buffer=draw(st.none() | st.integers(1, 4))))
    if filters and draw(st.booleans()):
        ops.insert(draw(st.integers(0, len(ops))),
                   OpSpec(kind="filter", fn=draw(st.sampled_from(sorted(PREDICATES))),
                          mode=draw(st.sampled_from(["sync", "async"]))))
    return tuple(ops)


@st.composite
def blocks(draw: st.DrawFn, names: Names, *, ordered_in: bool, depth: int = 0,
           elementwise_only: bool = False) -> Block:
    kinds = ["path", "broadcast", "route", "balance", "zip", "fork_join", "partition"]
    if depth >= 2:
        kinds = ["path"]
    kind = draw(st.sampled_from(kinds))
    if kind == "path":
        return Path(draw(op_lists(names, ordered_in=ordered_in, max_size=3,
                                  elementwise_only=elementwise_only)))
    pre = draw(st.none() | unordered_pools())
    fed_unordered = pre is not None or not ordered_in
    if kind in ("zip", "fork_join", "partition") and fed_unordered and \
            "fanout_after_unordered_pool" in KNOWN_BUGS:
        pre = None
        fed_unordered = not ordered_in
        if fed_unordered:
            kind = "broadcast"
    if kind in ("broadcast", "route", "balance"):
        n = draw(st.integers(1, 3))
        # after an unordered stream, or behind a balance (any item to any branch), a branch's
        # output has a reference only as a multiset of elementwise stages
        ew = elementwise_only or fed_unordered or kind == "balance"
        if kind == "balance":
            branch = Path(draw(op_lists(names, ordered_in=False, max_size=3, elementwise_only=True)))
            # the same stages in every branch (fresh names: a graph's names are unique)
            branches = tuple(_rename(branch, names) for _ in range(n))
            return Fan(kind, branches, pre)
        m = draw(st.integers(1, 4))
        ports = tuple(draw(st.lists(st.integers(0, m - 1), unique=True, max_size=m)))
        count = n if kind == "broadcast" else len(ports) + 1
        branches = tuple(draw(blocks(names, ordered_in=not fed_unordered, depth=depth + 1,
                                     elementwise_only=ew)) for _ in range(count))
        return Fan(kind, branches, pre, m=m, ports=ports)
    if kind in ("zip", "fork_join"):
        fns = draw(st.lists(st.sampled_from(sorted(MAP_FNS)), min_size=1, max_size=2))
        n = draw(st.integers(2, 3))
        branches = tuple(draw(one_to_one_ops(names, fns, filters=kind == "fork_join")) for _ in range(n))
        return Join(kind, branches, pre)
    m = draw(st.integers(1, 4))
    ports = tuple(draw(st.lists(st.integers(0, m - 1), unique=True, min_size=1, max_size=m)))
    branches = tuple(
        draw(one_to_one_ops(names, [draw(st.sampled_from(sorted(MAP_FNS)))], filters=True))
        for _ in range(len(ports) + 1))
    return Partition(m, ports, branches, pre)


def _rename(block: Block, names: Names) -> Block:
    """A copy of an elementwise block whose fault stages have fresh names (same faults)."""
    assert isinstance(block, Path)
    return Path(tuple(dataclasses.replace(op, name=names("f")) if isinstance(op, FaultSpec) else op
                      for op in block.ops))


@st.composite
def endings(draw: st.DrawFn, *, has_collect: bool, has_balance: bool) -> Ending:
    hows = ["complete", "outside_cancel", "handle_cancel", "drain"]
    if has_collect and "cancel_with_collect" in KNOWN_BUGS:
        hows.remove("handle_cancel")
    if has_balance and "drain_at_balance" in KNOWN_BUGS:
        hows.remove("drain")
    how = draw(st.sampled_from(hows))
    timeout = 1e6
    if how == "drain" and not (has_collect and "cancel_with_collect" in KNOWN_BUGS):
        timeout = draw(st.sampled_from([1e6, 1e6, 0.0, 0.002, 0.02]))
    return Ending(how=how, at=draw(st.sampled_from([0.0, 0.0, 0.001, 0.002, 0.005, 0.02, 0.1])),
                  checkpoints=draw(st.integers(0, 30)), drain_timeout=timeout)


ITEMS = st.one_of(st.lists(VALUES, max_size=8), st.lists(VALUES, min_size=8, max_size=40))


@st.composite
def scenarios(draw: st.DrawFn, *, shape: str) -> Scenario:
    names = Names()
    if shape == "chain":
        chain: tuple[Op, ...] | None = draw(op_lists(names, ordered_in=True, max_size=7))
        graph = None
        block: Block = Path(chain)
    else:
        chain = None
        # the second block's input is ordered only if the first block's output is
        parts: list[Block] = []
        ordered = True
        for _ in range(draw(st.integers(1, 2))):
            b = draw(blocks(names, ordered_in=ordered))
            parts.append(b)
            ordered = ordered and b.ordered()
        graph = Seq(tuple(parts))
        block = graph
    faults = [op for op in walk_ops(block) if isinstance(op, FaultSpec)]
    has_collect = any(f.policy == "collect" for f in faults)
    has_balance = any(isinstance(b, Fan) and b.kind == "balance" for b in walk_blocks(block))
    return Scenario(
        xs=tuple(draw(ITEMS)), chain=chain, graph=graph,
        source=draw(st.sampled_from(["iterable", "iterable", "emit_many"])),
        slices=tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))),
        ending=draw(endings(has_collect=has_collect, has_balance=has_balance)),
        chunk_size=draw(st.integers(1, 16)), buffer=draw(st.integers(1, 16)),
        seed=draw(st.integers(0, 2**32 - 1)),
        policies=frozenset(f.policy for f in faults),
        acks=draw(st.booleans()),
    )
