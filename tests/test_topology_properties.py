"""Property tests (Hypothesis) for the Graph API: broadcast, route, balance, merge and zip,
alone and composed into random multi-level DAGs, under random chunk sizes, buffers,
per-item virtual delays and concurrency; plus cleanup and error surfacing after failures
and outside cancellation.

Items are ``(x, trail)`` pairs with unique ``x``: every mapping stage appends its own
(graph-unique) tag to the trail, so an output item says exactly which stages it went
through, and a plain-Python model can check not only *what* arrived but *by which path*.

Every test is a sync function that calls ``trio.run`` with a ``MockClock`` jumping at
once: delays are virtual, nothing depends on the machine's speed, and a deadlock reaches
the ``DEADLOCK`` deadline at once and fails instead of hanging.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from virtual import DEADLOCK, run_virtual

import trioflow as tf

#: ``TRIOFLOW_HYPOTHESIS_SCALE=10`` runs ten times the examples (for a long local hunt).
SCALE = float(os.environ.get("TRIOFLOW_HYPOTHESIS_SCALE", "1"))

# random buffers go on every stage, fused or not: the planner's warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore::trioflow.FusedStageWarning")


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


PROPS = examples(150)
MANY = examples(200)


Item = tuple[int, tuple[str, ...]]




def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task alive in this Trio run (system tasks included)."""
    out: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        out.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return out


# -- stages and their plain-Python model --------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One stage on a path. ``kind``: ``sync`` (plain function: fused, or after a pass head
    right behind a fan-out), ``async`` (own task), ``pool`` (``concurrency`` workers,
    ordered), ``unordered`` (pool, ``ordered=False``) or ``take``."""

    kind: str
    delays: tuple[float, ...] = (0.0,)
    concurrency: int = 1
    buffer: int | None = None
    k: int = 0

    @property
    def maps(self) -> bool:
        return self.kind != "take"


DELAYS = st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.1]), min_size=1, max_size=4).map(tuple)
BUFFERS = st.none() | st.integers(1, 8)


@st.composite
def step_lists(
    draw: st.DrawFn, *, max_steps: int = 3, take: bool = False, unordered: bool = False, min_steps: int = 0
) -> tuple[Step, ...]:
    out: list[Step] = []
    seen_unordered = False
    for _ in range(draw(st.integers(min_steps, max_steps))):
        kinds = ["sync", "async", "pool"]
        if take and not seen_unordered:  # the first k of an unordered stream: no model
            kinds.append("take")
        if unordered:
            kinds.append("unordered")
        kind = draw(st.sampled_from(kinds))
        if kind == "take":
            out.append(Step("take", k=draw(st.integers(0, 12))))
        elif kind == "sync":
            out.append(Step("sync", buffer=draw(BUFFERS)))
        elif kind == "async":
            out.append(Step("async", delays=draw(DELAYS), buffer=draw(BUFFERS)))
        else:
            seen_unordered |= kind == "unordered"
            out.append(Step(kind, delays=draw(DELAYS), concurrency=draw(st.integers(2, 4)),
                            buffer=draw(BUFFERS)))
    return tuple(out)


def tags_of(steps: Sequence[Step], label: str) -> tuple[str, ...]:
    return tuple(f"{label}.{j}" for j, s in enumerate(steps) if s.maps)


def is_ordered(steps: Sequence[Step]) -> bool:
    return all(s.kind != "unordered" for s in steps)


def model(items: list[Item], steps: Sequence[Step], label: str) -> list[Item]:
    """What a path of ``steps`` makes of ``items`` (in order, for an ordered path)."""
    for j, s in enumerate(steps):
        if s.kind == "take":
            items = items[: s.k]
        else:
            tag = f"{label}.{j}"
            items = [(x, (*tr, tag)) for x, tr in items]
    return items


class Boom(Exception):
    pass


class Builder:
    """Builds stages whose mapping functions append their tag; optionally one of them
    raises on the n-th item it sees (``fail_at = (tag, n)``), recording the exception."""

    def __init__(self, fail_at: tuple[str, int] | None = None) -> None:
        self.fail_at = fail_at
        self.calls: Counter[str] = Counter()
        self.raised: list[Boom] = []

    def _check(self, tag: str, x: int) -> None:
        if self.fail_at is not None and self.fail_at[0] == tag:
            self.calls[tag] += 1
            if self.calls[tag] == self.fail_at[1] + 1:
                exc = Boom(f"{tag} fails on {x}")
                self.raised.append(exc)
                raise exc

    def stage(self, step: Step, tag: str) -> tf.Stage[Any, Any]:
        if step.kind == "take":
            return tf.take(step.k, name=tag)
        if step.kind == "sync":
            def fn(item: Item) -> Item:
                self._check(tag, item[0])
                return (item[0], (*item[1], tag))

            return tf.map(fn, name=tag, buffer=step.buffer)
        delays = step.delays

        async def afn(item: Item) -> Item:
            await trio.sleep(delays[item[0] % len(delays)])
            self._check(tag, item[0])
            return (item[0], (*item[1], tag))

        if step.kind == "async":
            return tf.map(afn, name=tag, buffer=step.buffer)
        return tf.map(afn, concurrency=step.concurrency, ordered=step.kind == "pool", name=tag,
                      buffer=step.buffer)

    def source(self, xs: list[int]) -> tf.Flow[Item]:
        """A re-iterable source of ``(x, ())`` items (``fail_at[0] == "source"``: it fails
        before its n-th item)."""
        builder = self

        class Items:
            def __iter__(self) -> Iterator[Item]:
                for x in xs:
                    builder._check("source", x)
                    yield (x, ())

        return tf.from_iterable(Items())

    def route_key(self, m: int, tag: str) -> Callable[[Item], int]:
        def key(item: Item) -> int:
            self._check(tag, item[0])
            return item[0] % m

        return key

    def path(self, g: tf.Graph, node: Any, steps: Sequence[Step], label: str) -> Any:
        for j, s in enumerate(steps):
            node = g.add(self.stage(s, f"{label}.{j}"), node)
        return node


ITEMS = st.lists(st.integers(-40, 200), unique=True, max_size=40)
RUN = st.fixed_dictionaries({"chunk_size": st.integers(1, 16), "buffer": st.integers(1, 16)})


def source_items(xs: list[int]) -> list[Item]:
    return [(x, ()) for x in xs]


def assert_subsequence(out: list[Item], ref: list[Item]) -> None:
    """``out`` holds distinct items of ``ref``, in ``ref``'s order."""
    pos = {item: i for i, item in enumerate(ref)}
    assert all(item in pos for item in out), (out, ref)
    idx = [pos[item] for item in out]
    assert idx == sorted(set(idx)), (out, ref)


def assert_branch(out: list[Item], steps: Sequence[Step], expected: list[Item]) -> None:
    if is_ordered(steps):
        assert out == expected
    else:
        assert Counter(out) == Counter(expected)


def one_level(exc: BaseException) -> list[BaseException]:
    """The leaves of a run failure, which must be one ``ExceptionGroup`` level."""
    assert isinstance(exc, ExceptionGroup), repr(exc)
    assert not any(isinstance(e, BaseExceptionGroup) for e in exc.exceptions), repr(exc)
    return list(exc.exceptions)


# =============================================================================================
# 1. broadcast
# =============================================================================================


@PROPS
@given(
    xs=ITEMS,
    pre=step_lists(max_steps=2),
    branches=st.lists(step_lists(take=True, unordered=True), min_size=1, max_size=5),
    run=RUN,
)
def test_broadcast_delivers_everything_to_every_branch_in_order(
    xs: list[int], pre: tuple[Step, ...], branches: list[tuple[Step, ...]], run: dict[str, int]
) -> None:
    b = Builder()

    async def main() -> list[list[Item]]:
        g = tf.Graph()
        fan = g.broadcast(b.path(g, g.add(tf.from_iterable(source_items(xs))), pre, "pre"))
        sinks = [g.add(tf.to_list(name=f"sink{i}"), b.path(g, fan, steps, f"b{i}"))
                 for i, steps in enumerate(branches)]
        r = await g.run(**run)
        return [r[s] for s in sinks]

    results = run_virtual(main)
    base = model(source_items(xs), pre, "pre")
    for i, steps in enumerate(branches):
        assert_branch(results[i], steps, model(base, steps, f"b{i}"))


# =============================================================================================
# 2. route
# =============================================================================================


@PROPS
@given(
    xs=ITEMS,
    m=st.integers(1, 4),
    ports=st.lists(st.integers(0, 4), unique=True, max_size=4),
    default=st.booleans(),
    data=st.data(),
    run=RUN,
)
def test_route_delivers_each_item_to_exactly_one_branch(
    xs: list[int], m: int, ports: list[int], default: bool, data: st.DataObject, run: dict[str, int]
) -> None:
    if not ports and not default:
        default = True  # a route with no consumer is a definition error, tested elsewhere
    # (route keys are ints here: a key of None cannot be used, see the regression test below)
    branch_steps = {p: data.draw(step_lists(take=True, unordered=True), label=f"port {p}") for p in ports}
    default_steps = data.draw(step_lists(take=True, unordered=True), label="default") if default else ()
    b = Builder()

    def key(item: Item) -> int:
        return item[0] % m

    async def main() -> dict[Any, list[Item]]:
        g = tf.Graph()
        r = g.route(g.add(tf.from_iterable(source_items(xs))), key=key, name="router")
        sinks: dict[Any, Any] = {
            p: g.add(tf.to_list(name=f"sink{p}"), b.path(g, r[p], steps, f"p{p}"))
            for p, steps in branch_steps.items()
        }
        if default:
            sinks["default"] = g.add(tf.to_list(name="sink_default"),
                                     b.path(g, r.default, default_steps, "pd"))
        res = await g.run(**run)
        return {p: res[s] for p, s in sinks.items()}

    items = source_items(xs)
    unroutable = [it for it in items if key(it) not in branch_steps]
    if not default and unroutable:
        # every branch without a take stays open to the end, so the router must reach
        # the unroutable item; with only take branches it may have stopped before
        must_fail = any(all(s.kind != "take" for s in steps) for steps in branch_steps.values())
        event(f"unroutable (must fail: {must_fail})")
        try:
            run_virtual(main)
        except ExceptionGroup as exc:
            (leaf,) = one_level(exc)
            assert isinstance(leaf, tf.UnroutableError)
            assert "router" in str(leaf)
        else:
            assert not must_fail, "an unroutable item did not fail the run"
        return
    results = run_virtual(main)
    for p, steps in branch_steps.items():
        assert_branch(results[p], steps, model([it for it in items if key(it) == p], steps, f"p{p}"))
    if default:
        assert_branch(results["default"], default_steps,
                      model([it for it in items if key(it) not in branch_steps], default_steps, "pd"))


# =============================================================================================
# 3. balance
# =============================================================================================


@PROPS
@given(
    xs=ITEMS,
    branches=st.lists(step_lists(unordered=True), min_size=1, max_size=4),
    run=RUN,
)
def test_balance_delivers_each_item_to_exactly_one_branch(
    xs: list[int], branches: list[tuple[Step, ...]], run: dict[str, int]
) -> None:
    b = Builder()

    async def main() -> list[list[Item]]:
        g = tf.Graph()
        bal = g.balance(g.add(tf.from_iterable(source_items(xs))))
        sinks = [g.add(tf.to_list(name=f"sink{i}"), b.path(g, bal, steps, f"b{i}"))
                 for i, steps in enumerate(branches)]
        r = await g.run(**run)
        return [r[s] for s in sinks]

    results = run_virtual(main)
    note(f"split: {[len(r) for r in results]}")
    got: Counter[int] = Counter()
    for i, (out, steps) in enumerate(zip(results, branches, strict=True)):
        tags = tags_of(steps, f"b{i}")
        assert all(tr == tags for _, tr in out), (i, out)  # went through its own stages only
        got.update(x for x, _ in out)
        if is_ordered(steps):
            assert_subsequence(out, model(source_items(xs), steps, f"b{i}"))
    assert got == Counter(xs)


# =============================================================================================
# 4. merge
# =============================================================================================


@PROPS
@given(
    sources=st.lists(st.tuples(ITEMS, step_lists(max_steps=2, take=True)), min_size=1, max_size=4),
    nested=st.booleans(),
    merge_buffer=BUFFERS,
    post=step_lists(max_steps=2),
    run=RUN,
)
def test_merge_loses_and_duplicates_nothing_and_keeps_order_per_input(
    sources: list[tuple[list[int], tuple[Step, ...]]],
    nested: bool,
    merge_buffer: int | None,
    post: tuple[Step, ...],
    run: dict[str, int],
) -> None:
    b = Builder()

    async def main() -> list[Item]:
        g = tf.Graph()
        nodes = [b.path(g, g.add(tf.from_iterable([(x, (f"S{i}",)) for x in xs], name=f"src{i}")),
                        steps, f"s{i}")
                 for i, (xs, steps) in enumerate(sources)]
        if nested and len(nodes) >= 3:
            merged = g.merge(g.merge(nodes[0], nodes[1], buffer=merge_buffer), *nodes[2:])
        else:
            merged = g.merge(*nodes, buffer=merge_buffer)
        out = g.add(tf.to_list(), b.path(g, merged, post, "post"))
        return (await g.run(**run))[out]  # type: ignore[no-any-return]

    out = run_virtual(main)
    expected = [model(model([(x, (f"S{i}",)) for x in xs], steps, f"s{i}"), post, "post")
                for i, (xs, steps) in enumerate(sources)]
    assert Counter(out) == Counter(it for exp in expected for it in exp)
    for i, exp in enumerate(expected):
        assert [it for it in out if it[1][0] == f"S{i}"] == exp


@PROPS
@given(
    xs=ITEMS,
    pre=step_lists(max_steps=2),
    branches=st.lists(step_lists(take=True), min_size=1, max_size=4),
    merge_buffer=BUFFERS,
    run=RUN,
)
def test_merge_of_broadcast_branches_has_every_item_once_per_branch(
    xs: list[int],
    pre: tuple[Step, ...],
    branches: list[tuple[Step, ...]],
    merge_buffer: int | None,
    run: dict[str, int],
) -> None:
    # Branches are told apart by their tags, so at most one branch may map nothing.
    # (At most one branch may also be the fan itself, read directly by the merge: the
    # same fan read twice by one merge is a known bug, see the regression test below.)
    branches = [br if i == 0 or any(s.maps for s in br) else (Step("sync"), *br)
                for i, br in enumerate(branches)]
    b = Builder()

    async def main() -> list[Item]:
        g = tf.Graph()
        fan = g.broadcast(b.path(g, g.add(tf.from_iterable(source_items(xs))), pre, "pre"))
        ends = [b.path(g, fan, steps, f"b{i}") for i, steps in enumerate(branches)]
        out = g.add(tf.to_list(), g.merge(*ends, buffer=merge_buffer))
        return (await g.run(**run))[out]  # type: ignore[no-any-return]

    out = run_virtual(main)
    base = model(source_items(xs), pre, "pre")
    expected = [model(base, steps, f"b{i}") for i, steps in enumerate(branches)]
    assert Counter(out) == Counter(it for exp in expected for it in exp)
    for i, (steps, exp) in enumerate(zip(branches, expected, strict=True)):
        tags = tags_of(steps, f"b{i}")
        assert [it for it in out if it[1][len(tags_of(pre, "pre")):] == tags] == exp


# =============================================================================================
# 5. diamond: broadcast -> 1:1 ordered branches -> zip
# =============================================================================================


@PROPS
@given(
    xs=ITEMS,
    pre=step_lists(max_steps=2),
    branches=st.lists(step_lists(take=True), min_size=2, max_size=3),
    zip_buffer=BUFFERS,
    run=RUN,
)
def test_diamond_zip_pairs_branch_results_by_position(
    xs: list[int],
    pre: tuple[Step, ...],
    branches: list[tuple[Step, ...]],
    zip_buffer: int | None,
    run: dict[str, int],
) -> None:
    b = Builder()

    async def main() -> list[tuple[Item, ...]]:
        g = tf.Graph()
        fan = g.broadcast(b.path(g, g.add(tf.from_iterable(source_items(xs))), pre, "pre"))
        ends = [b.path(g, fan, steps, f"b{i}") for i, steps in enumerate(branches)]
        out = g.add(tf.to_list(), g.zip(*ends, buffer=zip_buffer))
        return (await g.run(**run))[out]  # type: ignore[no-any-return]

    out = run_virtual(main)
    base = model(source_items(xs), pre, "pre")
    per_branch = [model(base, steps, f"b{i}") for i, steps in enumerate(branches)]
    # with no take: exactly [(f(x), g(x), ...) for x in xs]; a take ends the zip early
    assert out == list(zip(*per_branch, strict=False))


# =============================================================================================
# 6. random multi-level graphs
# =============================================================================================


@dataclass(frozen=True)
class Leaf:
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Fan:
    kind: str  # broadcast, route, balance
    children: tuple[tuple[tuple[Step, ...], Leaf | Fan], ...]  # (steps on the edge, subtree)
    m: int = 1  # route: key is x % m
    ports: tuple[int, ...] = ()  # route: one child per port, then the default child if any
    default: bool = False


Tree = Leaf | Fan


@st.composite
def trees(draw: st.DrawFn, depth: int, root: bool = False) -> Tree:
    if depth == 0 or (not root and draw(st.integers(0, 2)) == 0):
        return Leaf(draw(step_lists(max_steps=2)))
    kind = draw(st.sampled_from(["broadcast", "route", "balance"]))
    m, ports, default = 1, (), False
    if kind == "route":
        m = draw(st.integers(1, 3))
        default = draw(st.booleans())
        chosen = draw(st.lists(st.integers(0, m), unique=True, max_size=3))
        if not default:
            chosen = sorted(set(chosen) | set(range(m)))  # every key has a branch
        ports = tuple(chosen)
        n = len(ports) + default
    else:
        n = draw(st.integers(1, 3))
    children = tuple((draw(step_lists(max_steps=1)), draw(trees(depth - 1))) for _ in range(n))
    return Fan(kind, children, m, ports, default)


@dataclass
class Layout:
    """Where each leaf ends: leaves are grouped; a group is merged (or a lone leaf may go
    straight to its sink), then follows the group's ``post`` steps into a ``to_list``."""

    groups: list[list[int]]
    merged: list[bool]
    post: list[tuple[Step, ...]]


def count_leaves(t: Tree) -> int:
    return 1 if isinstance(t, Leaf) else sum(count_leaves(c) for _, c in t.children)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[tuple[Step, ...], Tree, Layout]:
    pre = draw(step_lists(max_steps=2))
    tree = draw(trees(3, root=True))
    n = count_leaves(tree)
    assign = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    groups = [[leaf for leaf in range(n) if assign[leaf] == gid] for gid in sorted(set(assign))]
    merged = [len(grp) > 1 or draw(st.booleans()) for grp in groups]
    post = [draw(step_lists(max_steps=1)) for _ in groups]
    return pre, tree, Layout(groups, merged, post)


def leaf_tag(index: int) -> str:
    return f"leaf{index}"


def build_tree(b: Builder, g: tf.Graph, node: Any, tree: Tree, label: str, leaves: list[Any]) -> None:
    """Add ``tree`` reading from ``node``; append each leaf's end node to ``leaves``."""
    if isinstance(tree, Leaf):
        end = b.path(g, node, tree.steps, label)
        leaves.append(g.add(b.stage(Step("sync"), leaf_tag(len(leaves))), end))
        return
    if tree.kind == "broadcast":
        fan = g.broadcast(node, name=f"{label}.fan")
        inputs: list[Any] = [fan] * len(tree.children)
    elif tree.kind == "balance":
        fan = g.balance(node, name=f"{label}.fan")
        inputs = [fan] * len(tree.children)
    else:
        r = g.route(node, key=b.route_key(tree.m, f"{label}.key"), name=f"{label}.fan")
        inputs = [r[p] for p in tree.ports] + ([r.default] if tree.default else [])
    for c, ((steps, child), inp) in enumerate(zip(tree.children, inputs, strict=True)):
        build_tree(b, g, b.path(g, inp, steps, f"{label}.{c}e"), child, f"{label}.{c}", leaves)


def build_graph(b: Builder, xs: list[int], pre: tuple[Step, ...], tree: Tree, layout: Layout
                ) -> tuple[tf.Graph, list[Any]]:
    g = tf.Graph()
    node = b.path(g, g.add(b.source(xs)), pre, "pre")
    leaves: list[Any] = []
    build_tree(b, g, node, tree, "t", leaves)
    sinks = []
    for gid, (grp, merged, post) in enumerate(zip(layout.groups, layout.merged, layout.post, strict=True)):
        end = g.merge(*(leaves[i] for i in grp)) if merged else leaves[grp[0]]
        sinks.append(g.add(tf.to_list(name=f"sink{gid}"), b.path(g, end, post, f"g{gid}")))
    return g, sinks


class TreeModel:
    """Checks the outputs of a tree graph against the plain-Python semantics: for each
    item, the trails it arrived with must be one allowed outcome (broadcast: every child;
    route: the child of its key; balance: exactly one child, any)."""

    def __init__(self, pre: tuple[Step, ...], tree: Tree, layout: Layout) -> None:
        self.pre_tags = tags_of(pre, "pre")
        self.tree = tree
        self.layout = layout
        self.subtree_tags: dict[int, set[str]] = {}
        self._leaf_counter = 0
        self.partial = False
        self.leaf_of: dict[int, tuple[str, ...]] = {}  # id(Leaf) -> its full tag suffix
        self._index(tree, "t")

    def _index(self, t: Tree, label: str) -> set[str]:
        if isinstance(t, Leaf):
            tags = {*tags_of(t.steps, label), leaf_tag(self._leaf_counter)}
            self.leaf_of[id(t)] = (*tags_of(t.steps, label), leaf_tag(self._leaf_counter))
            self._leaf_counter += 1
        else:
            tags = set()
            for c, (steps, child) in enumerate(t.children):
                sub = set(tags_of(steps, f"{label}.{c}e")) | self._index(child, f"{label}.{c}")
                self.subtree_tags[id(child)] = sub
                tags |= sub
        return tags

    def check(self, xs: list[int], results: list[list[Item]], *, partial: bool = False) -> None:
        """``partial``: the run was stopped, so items may be missing, but whatever
        arrived must be part of an allowed outcome."""
        self.partial = partial
        pos = {x: i for i, x in enumerate(xs)}
        by_x: dict[int, list[tuple[str, ...]]] = {}
        for gid, out in enumerate(results):
            post = tags_of(self.layout.post[gid], f"g{gid}")
            allowed = {leaf_tag(i) for i in self.layout.groups[gid]}
            last: dict[str, int] = {}
            for x, trail in out:
                assert len(trail) > len(post) and trail[len(trail) - len(post):] == post, (gid, x, trail)
                core = trail[: len(trail) - len(post)]
                assert core[-1] in allowed, (gid, x, trail)
                assert x in pos, (gid, x)
                # order: items of one leaf arrive in input order (every path here is ordered)
                assert last.get(core[-1], -1) < pos[x], (gid, core[-1], x)
                last[core[-1]] = pos[x]
                by_x.setdefault(x, []).append(core)
        for x in xs:
            trails = by_x.pop(x, [])
            problem = self._check(self.tree, x, self.pre_tags, trails)
            assert problem is None, f"item {x}: {problem}; got {trails}"
        assert not by_x, f"items that were never sent: {by_x}"

    def _check(self, t: Tree, x: int, prefix: tuple[str, ...], trails: list[tuple[str, ...]]) -> str | None:
        if isinstance(t, Leaf):
            want = (*prefix, *self.leaf_of[id(t)])
            return None if trails == [want] or (self.partial and not trails) else f"leaf wants [{want}]"
        parts: list[list[tuple[str, ...]]] = [[] for _ in t.children]
        for tr in trails:
            if len(tr) <= len(prefix) or tr[: len(prefix)] != prefix:
                return f"trail {tr} does not start with {prefix}"
            owners = [c for c, (_, child) in enumerate(t.children)
                      if tr[len(prefix)] in self.subtree_tags[id(child)]]
            if len(owners) != 1:
                return f"trail {tr} fits no child after {prefix}"
            parts[owners[0]].append(tr)

        def child_ok(c: int) -> str | None:
            steps, child = t.children[c]
            edge = (*prefix, *tags_of(steps, f"{self._label_of(t)}.{c}e"))
            for tr in parts[c]:
                if tr[: len(edge)] != edge:
                    return f"trail {tr} skipped edge stages {edge}"
            return self._check(child, x, edge, parts[c])

        if t.kind == "broadcast":
            for c in range(len(t.children)):
                if (p := child_ok(c)) is not None:
                    return p
            return None
        if t.kind == "route":
            k = x % t.m
            c = t.ports.index(k) if k in t.ports else len(t.ports)
            if any(parts[o] for o in range(len(t.children)) if o != c):
                return f"route sent key {k} to a branch other than {c}"
            return child_ok(c)
        used = [c for c in range(len(t.children)) if parts[c]]
        if self.partial and not used:
            return None
        if len(used) != 1:
            return f"balance sent the item to branches {used}, wants exactly one"
        return child_ok(used[0])

    def _label_of(self, t: Fan) -> str:
        # labels are paths from the root: find t's
        def walk(node: Tree, label: str) -> str | None:
            if node is t:
                return label
            if isinstance(node, Fan):
                for c, (_, child) in enumerate(node.children):
                    if (found := walk(child, f"{label}.{c}")) is not None:
                        return found
            return None

        found = walk(self.tree, "t")
        assert found is not None
        return found


@PROPS
@given(xs=ITEMS, shape=graphs(), run=RUN)
def test_random_multi_level_graph_matches_model(
    xs: list[int], shape: tuple[tuple[Step, ...], Tree, Layout], run: dict[str, int]
) -> None:
    pre, tree, layout = shape
    b = Builder()

    async def main() -> list[list[list[Item]]]:
        g, sinks = build_graph(b, xs, pre, tree, layout)
        outs = []
        for _ in range(2):  # a graph whose source can be iterated again can run again
            r = await g.run(**run)
            outs.append([r[s] for s in sinks])
        return outs

    event(f"leaves: {min(count_leaves(tree), 6)}")
    for results in run_virtual(main):
        TreeModel(pre, tree, layout).check(xs, results)


# =============================================================================================
# 7. cleanup and error surfacing: success, failure, outside cancellation
# =============================================================================================


def failure_places(pre: tuple[Step, ...], tree: Tree, layout: Layout) -> list[list[str]]:
    m = TreeModel(pre, tree, layout)
    tags = set(m.pre_tags)
    for sub in m.subtree_tags.values():
        tags |= sub
    tags |= {leaf_tag(i) for i in range(count_leaves(tree))}
    for gid, post in enumerate(layout.post):
        tags |= set(tags_of(post, f"g{gid}"))

    keys: set[str] = set()

    def route_keys(t: Tree, label: str) -> None:
        if isinstance(t, Fan):
            if t.kind == "route":
                keys.add(f"{label}.key")
            for c, (_, child) in enumerate(t.children):
                route_keys(child, f"{label}.{c}")

    route_keys(tree, "t")
    # where a failure may be: the source, a route's key function, or a stage (weighted:
    # the item must reach a key or a stage for it to fail)
    return [["source"], *([sorted(keys)] * 3 if keys else []), *[sorted(tags)] * 3]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    xs = draw(ITEMS.filter(bool))
    pre, tree, layout = draw(graphs())
    what = draw(st.sampled_from(["complete", "fail", "fail", "cancel", "cancel", "fail+cancel"]))
    fail_at = None
    if "fail" in what:
        where = draw(st.sampled_from(failure_places(pre, tree, layout)))
        fail_at = (draw(st.sampled_from(where)), draw(st.integers(0, min(len(xs) - 1, 3))))
    # times on a coarse grid, so that cancellations coincide with item delays
    times = st.sampled_from([0.0, 0.001, 0.001, 0.002, 0.01, 0.01, 0.02, 0.05, 0.1, 0.3])
    cancel_at = draw(times) if "cancel" in what else None
    return {"xs": xs, "pre": pre, "tree": tree, "layout": layout, "fail_at": fail_at,
            "cancel_at": cancel_at, "mode": draw(st.sampled_from(["direct", "start_soon"])),
            "cancel_via": draw(st.sampled_from(["move_on_after", "handle"]))}


class Status:
    """A task status that remembers whether (and with what) ``started`` was called."""

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self.inner = inner
        self.handle: Any = None
        self.called = False

    def started(self, value: Any = None) -> None:
        self.handle, self.called = value, True
        self.inner.started(value)


@MANY
@given(sc=scenarios(), run=RUN)
def test_every_run_ends_cleanly_and_failures_always_surface(sc: dict[str, Any], run: dict[str, int]) -> None:
    xs, pre, tree, layout = sc["xs"], sc["pre"], sc["tree"], sc["layout"]
    b = Builder(fail_at=sc["fail_at"])
    outcome: dict[str, Any] = {}

    async def attempt(nursery: trio.Nursery) -> None:
        g, sinks = build_graph(b, xs, pre, tree, layout)
        me = trio.lowlevel.current_task()
        before = all_tasks()
        nurseries = list(me.child_nurseries)  # the outer nursery, when run directly
        cancel_at = sc["cancel_at"]

        async def run_it(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            status = Status(task_status)
            try:
                r = await g.run(**run, task_status=status)  # type: ignore[arg-type]
            except BaseException as exc:
                outcome["exc"] = exc
                if isinstance(exc, trio.Cancelled):
                    raise
            else:
                outcome["results"] = [r[s] for s in sinks]
            finally:
                if not status.called:  # the run ended while starting
                    task_status.started(None)

        if sc["cancel_via"] == "move_on_after":
            with trio.move_on_after(DEADLOCK / 2 if cancel_at is None else cancel_at) as cs:
                await run_it()
            outcome["cancelled"] = cs.cancelled_caught
        else:
            async with trio.open_nursery() as inner:
                handle = await inner.start(run_it)
                if cancel_at is not None and handle is not None:
                    await trio.sleep(cancel_at)
                    handle.cancel()
            outcome["cancelled"] = handle is not None and handle.state is tf.RunState.CANCELLED
        # nothing of the run is left: no task anywhere in this Trio run, no nursery
        # of this task, and the outer nursery holds only this task (or nothing)
        assert all_tasks() == before, all_tasks() - before
        assert me.child_nurseries == nurseries
        assert nursery.child_tasks <= {me}

    async def main() -> None:
        async with trio.open_nursery() as n:
            if sc["mode"] == "direct":
                await attempt(n)
            else:
                n.start_soon(attempt, n)
        assert not trio.lowlevel.current_task().child_nurseries

    run_virtual(main)
    note(f"outcome: {outcome!r}, raised: {b.raised!r}")
    exc = outcome.get("exc")
    ended = "failed" if b.raised else "cancelled" if outcome["cancelled"] else "completed"
    event(f"{sc['cancel_via']}: {ended}")
    if b.raised:
        where = sc["fail_at"][0]
        event(f"raised in: {'source' if where == 'source' else 'key' if where.endswith('.key') else 'stage'}")
    if b.raised and sc["cancel_at"] is not None:
        event(f"failed, with a cancellation at {sc['cancel_at']}")
    if b.raised:
        # a failure always surfaces, as one group level whose leaf is the very exception
        assert exc is not None, "a stage raised, but the run ended without an error"
        assert one_level(exc) == b.raised
        assert any("trioflow: raised in stage" in n for n in getattr(b.raised[0], "__notes__", []))
    elif exc is not None:
        assert sc["cancel_via"] == "move_on_after", f"handle.cancel() made the run raise {exc!r}"
        assert type(exc) is trio.Cancelled, f"an outside cancellation surfaced as {exc!r}"
        assert outcome["cancelled"]
    else:
        # completed, or (handle.cancel) stopped quietly with what the sinks hold
        if sc["cancel_via"] == "move_on_after":
            assert not outcome["cancelled"]
        TreeModel(pre, tree, layout).check(xs, outcome["results"], partial=outcome["cancelled"])
        if sc["fail_at"] is not None:  # the failing stage saw too few items to fail
            tag, n = sc["fail_at"]
            assert sum(tag in tr for out in outcome["results"] for _, tr in out) <= n


# =============================================================================================
# regressions for bugs found by the properties above
# =============================================================================================


def test_regression_broadcast_read_three_times_by_one_merge() -> None:
    # BroadcastRouter.put hands the original chunk to every edge that `is self.live[-1]`;
    # when one merge reads the fan three times, its three outlets are one Edge, so the same
    # list is queued three times, and Edge.receive extends the first chunk with itself:
    # 0 arrives four times. Read twice, the items are right but the edge's depth goes
    # negative (``discarded == -1`` here), so the edge stops bounding what it holds.
    async def ident(x: int) -> int:
        return x

    async def main() -> tuple[list[int], int]:
        g = tf.Graph()
        fan = g.broadcast(g.add(tf.from_iterable(range(3)) | tf.map(ident)))
        out = g.add(tf.to_list(), g.merge(fan, fan, fan))
        async with trio.open_nursery() as n:
            handle = await n.start(g.run)
            await handle.wait()
        (edge,) = [e for e in handle.statistics().edges if "merge" in e.name]
        return handle.result()[out], edge.discarded

    out, discarded = run_virtual(main)
    assert sorted(out) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert discarded == 0


def test_regression_route_key_none() -> None:
    async def main() -> dict[str, Any]:
        g = tf.Graph()
        r = g.route(g.add(tf.from_iterable([None, 1, None])), key=lambda x: x)
        g.add(tf.to_list(name="none"), r[None])
        g.add(tf.to_list(name="rest"), r.default)
        return dict(await g.run())

    assert run_virtual(main) == {"none": [None, None], "rest": [1]}
