"""Graphs: linear, branch, merge, diamond, multi-level, several sources and sinks, with
exact outputs (order where promised, multisets otherwise) and definition-time checks."""

import itertools
from collections import Counter

import pytest
import trio

import trioflow as tf


async def slow(x: int) -> int:
    await trio.sleep(0.001 * (x % 3))
    return x


async def test_linear_graph_equals_flow() -> None:
    g = tf.Graph()
    node = g.add(tf.from_iterable(range(10)) | tf.map(lambda x: x + 1))
    out = g.add(tf.to_list(), g.add(tf.filter(lambda x: x % 2 == 0), node))
    assert (await g.run())[out] == [2, 4, 6, 8, 10]


async def test_broadcast_every_item_to_every_branch(autojump_clock: trio.testing.MockClock) -> None:
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(50))))
    a = g.add(tf.to_list(name="a"), g.add(tf.map(lambda x: x * 10), fan))
    b = g.add(tf.to_list(name="b"), g.add(tf.map(slow), fan))
    c = g.add(tf.to_list(name="c"), fan)
    r = await g.run(buffer=4)
    assert r[a] == [x * 10 for x in range(50)]
    assert r[b] == list(range(50))
    assert r[c] == list(range(50))


async def test_broadcast_branch_that_stops_early_does_not_stop_others() -> None:
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(1000))))
    short = g.add(tf.to_list(name="short"), g.add(tf.take(3), fan))
    full = g.add(tf.to_list(name="full"), fan)
    r = await g.run(chunk_size=8, buffer=8)
    assert r[short] == [0, 1, 2]
    assert r[full] == list(range(1000))


async def test_broadcast_all_branches_stopped_stops_infinite_source() -> None:
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(itertools.count())))
    a = g.add(tf.to_list(name="a"), g.add(tf.take(3), fan))
    b = g.add(tf.to_list(name="b"), g.add(tf.take(5), fan))
    r = await g.run()
    assert (r[a], r[b]) == ([0, 1, 2], [0, 1, 2, 3, 4])


async def test_route_by_key_with_default() -> None:
    g = tf.Graph()
    r = g.route(g.add(tf.from_iterable(range(20))), key=lambda x: x % 4)
    zero = g.add(tf.to_list(name="zero"), r[0])
    one = g.add(tf.to_list(name="one"), r[1])
    rest = g.add(tf.to_list(name="rest"), r.default)
    res = await g.run(chunk_size=3)
    assert res[zero] == [x for x in range(20) if x % 4 == 0]
    assert res[one] == [x for x in range(20) if x % 4 == 1]
    assert res[rest] == [x for x in range(20) if x % 4 > 1]


async def test_route_unmatched_key_without_default_fails() -> None:
    g = tf.Graph()
    r = g.route(g.add(tf.from_iterable(range(5))), key=lambda x: x, name="router")
    g.add(tf.to_list(), r[0])
    with pytest.RaisesGroup(tf.UnroutableError) as info:
        await g.run()
    assert "router" in str(info.value.exceptions[0])


async def test_balance_delivers_each_item_once(autojump_clock: trio.testing.MockClock) -> None:
    g = tf.Graph()
    bal = g.balance(g.add(tf.from_iterable(range(200))))
    a = g.add(tf.map(slow, concurrency=3, name="fast"), bal)
    b = g.add(tf.map(slow, name="slow"), bal)
    out = g.add(tf.to_list(), g.merge(a, b))
    r = await g.run(chunk_size=4, buffer=4)
    assert sorted(r[out]) == list(range(200))
    assert len(r[out]) == 200


async def test_diamond_zip_rejoins_by_position(autojump_clock: trio.testing.MockClock) -> None:
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(30))))
    left = g.add(tf.map(lambda x: -x), fan)
    right = g.add(tf.map(slow, concurrency=4), fan)
    out = g.add(tf.to_list(), g.zip(left, right))
    assert (await g.run(chunk_size=5))[out] == [(-x, x) for x in range(30)]


async def test_zip_completes_with_shortest_input() -> None:
    g = tf.Graph()
    a = g.add(tf.from_iterable(range(3)))
    b = g.add(tf.from_iterable(itertools.count(100)))
    out = g.add(tf.to_list(), g.zip(a, b))
    assert (await g.run())[out] == [(0, 100), (1, 101), (2, 102)]


async def test_multi_level_several_sources_and_sinks(autojump_clock: trio.testing.MockClock) -> None:
    g = tf.Graph()
    s1 = g.add(tf.from_iterable(range(10), name="evens_src") | tf.map(lambda x: 2 * x))
    s2 = g.add(tf.from_iterable(range(10), name="odds_src") | tf.map(lambda x: 2 * x + 1))
    merged = g.merge(s1, s2)
    level1 = g.broadcast(g.add(tf.map(slow, concurrency=2), merged))
    small = g.route(g.add(tf.map(lambda x: x), level1), key=lambda x: x < 10)
    lo = g.add(tf.to_list(name="lo"), small[True])
    hi = g.add(tf.to_list(name="hi"), small[False])
    total = g.add(tf.reduce(lambda a, x: a + x, 0, name="total"), level1)
    r = await g.run(chunk_size=3, buffer=3)
    assert sorted(r[lo]) == list(range(10))
    assert sorted(r[hi]) == list(range(10, 20))
    assert r[total] == sum(range(20))
    assert set(r) == {"lo", "hi", "total"}


async def test_merge_keeps_order_per_input() -> None:
    g = tf.Graph()
    a = g.add(tf.from_iterable([("a", i) for i in range(100)]))
    b = g.add(tf.from_iterable([("b", i) for i in range(100)]))
    out = g.add(tf.to_list(), g.merge(a, b))
    items = (await g.run(chunk_size=7, buffer=5))[out]
    assert Counter(items) == Counter([("a", i) for i in range(100)] + [("b", i) for i in range(100)])
    for tag in "ab":
        assert [i for t, i in items if t == tag] == list(range(100))


async def test_graph_failure_one_group_level() -> None:
    def boom(x: int) -> int:
        if x == 5:
            raise ValueError("five")
        return x

    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(10))))
    g.add(tf.to_list(name="a"), g.add(tf.map(boom, name="boom"), fan))
    g.add(tf.to_list(name="b"), fan)
    with pytest.RaisesGroup(ValueError) as info:
        await g.run()
    assert any("'boom'" in n for n in info.value.exceptions[0].__notes__)


async def test_graph_nursery_start_and_statistics() -> None:
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable(range(10))), name="fan")
    a = g.add(tf.to_list(name="a"), fan)
    g.add(tf.to_list(name="b"), fan)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(g.run)
        assert await handle.wait() is tf.RunState.COMPLETED
    assert handle.result()[a] == list(range(10))
    fan_stats = handle.statistics().stage("fan")
    assert (fan_stats.items_in, fan_stats.items_out) == (10, 20)


# -- definition-time checks -------------------------------------------------------------------


def test_plain_node_with_two_consumers_is_rejected_naming_nodes() -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable([1], name="src"))
    g.add(tf.to_list(name="x"), src)
    g.add(tf.to_list(name="y"), src)
    with pytest.raises(tf.DefinitionValueError, match=r"'src' feeds 'x', 'y'.*broadcast"):
        g.plan()


def test_dangling_output_is_rejected() -> None:
    g = tf.Graph()
    g.add(tf.map(abs, name="lost"), g.add(tf.from_iterable([1])))
    with pytest.raises(tf.DefinitionValueError, match="'lost' goes nowhere"):
        g.plan()


def test_node_of_another_graph_is_rejected() -> None:
    g1, g2 = tf.Graph(), tf.Graph()
    src = g1.add(tf.from_iterable([1]))
    with pytest.raises(tf.DefinitionValueError, match="another graph"):
        g2.add(tf.to_list(), src)


def test_duplicate_names_rejected() -> None:
    g = tf.Graph()
    g.add(tf.from_iterable([1], name="a"))
    with pytest.raises(tf.DefinitionValueError, match="'a'"):
        g.add(tf.from_iterable([1], name="a"))


def test_route_must_be_read_through_a_port() -> None:
    g = tf.Graph()
    r = g.route(g.add(tf.from_iterable([1])), key=lambda x: x)
    with pytest.raises(tf.DefinitionValueError, match="port"):
        g.add(tf.to_list(), r)  # type: ignore[call-overload]


def test_sink_has_no_output_and_zip_needs_two() -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable([1]))
    sink = g.add(tf.to_list(), src)
    with pytest.raises(tf.DefinitionValueError, match="sink"):
        g.add(tf.to_list(), sink)  # type: ignore[call-overload]
    with pytest.raises(tf.DefinitionValueError, match="two inputs"):
        g.zip(src)


def test_cycle_or_forward_reference_rejected_by_planner() -> None:
    from trioflow._plan import GraphNode, plan_graph

    nodes = [
        GraphNode(spec=tf.from_iterable([1]).source),
        GraphNode(spec=tf.map(abs, name="a"), inputs=((2, None),)),
        GraphNode(spec=tf.map(abs, name="b"), inputs=((1, None),)),
    ]
    with pytest.raises(tf.DefinitionValueError, match=r"'a'.*cycle"):
        plan_graph(nodes, chunk_size=8, buffer=8)


def test_plan_fuses_inside_branches() -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable([1]) | tf.map(abs, name="m1"))
    fan = g.broadcast(src, name="fan")
    g.add(tf.to_list(name="s1"), g.add(tf.map(abs, name="m2"), fan))
    g.add(tf.to_list(name="s2"), fan)
    plan = g.plan()
    by_segment = [[n.name for n in s.nodes] for s in plan.segments]
    assert by_segment == [["from_iterable", "m1"], ["m2", "s1"], ["s2"]]
    assert plan.segments[0].output.junction is not None
    assert "fan[broadcast]" in str(plan)
    mermaid = plan.to_mermaid().splitlines()
    # the junction is fused into segment 0; each branch gets an edge of capacity 512
    for line in ["  n0 --> n1", "  n1 --> n2", "  n2 -- 512 --> n3", "  n3 --> n4", "  n2 -- 512 --> n5"]:
        assert line in mermaid
    assert 'n2["fan: broadcast"]' in plan.to_mermaid()
    assert "n2 -> n3 [label=\"512\"];" in plan.to_dot()
