"""fork_join and partition: split -> branches -> join as one expression."""

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual import run_virtual

import trioflow as tf


def delayed(scale: int):  # type: ignore[no-untyped-def]
    async def fn(x: int) -> int:
        await trio.sleep((x * 7 + scale) % 5)
        return x * scale

    return fn


@settings(max_examples=120, deadline=None)
@given(
    xs=st.lists(st.integers(0, 50), max_size=40),
    concurrency=st.integers(1, 5),
    chunk_size=st.integers(1, 8),
    buffer=st.integers(1, 8),
    modulus=st.integers(2, 5),
)
def test_fork_join_matches_reference(
    xs: list[int], concurrency: int, chunk_size: int, buffer: int, modulus: int
) -> None:
    async def main() -> list[tuple[int, ...]]:
        stage = tf.fork_join(
            tf.map(lambda x: x + 1),
            tf.map(delayed(3), concurrency=concurrency) | tf.filter(lambda v: v % modulus != 0),
            tf.map(delayed(2)),
        )
        return await (tf.from_iterable(xs) | stage).to_list(chunk_size=chunk_size, buffer=buffer)

    want = [(x + 1, x * 3, x * 2) for x in xs if (x * 3) % modulus != 0]
    assert run_virtual(main) == want


@settings(max_examples=120, deadline=None)
@given(
    xs=st.lists(st.integers(0, 50), max_size=40),
    concurrency=st.integers(1, 5),
    chunk_size=st.integers(1, 8),
    buffer=st.integers(1, 8),
    with_default=st.booleans(),
)
def test_partition_restores_input_order(
    xs: list[int], concurrency: int, chunk_size: int, buffer: int, with_default: bool
) -> None:
    if not with_default:
        xs = [x for x in xs if x % 3 != 2]

    async def main() -> list[int]:
        stage = tf.partition(
            lambda x: x % 3,
            {0: tf.map(delayed(10), concurrency=concurrency), 1: tf.map(lambda x: -x)},
            default=tf.map(delayed(100)) | tf.filter(lambda v: v % 4 != 0) if with_default else None,
        )
        return await (tf.from_iterable(xs) | stage).to_list(chunk_size=chunk_size, buffer=buffer)

    def ref(x: int) -> int | None:
        if x % 3 == 0:
            return x * 10
        if x % 3 == 1:
            return -x
        v = x * 100
        return v if v % 4 != 0 else None

    want = [v for v in map(ref, xs) if v is not None]
    assert run_virtual(main) == want


async def test_fork_join_named_and_nested_in_graph() -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable(range(5)))
    joined = g.add(tf.fork_join(sq=tf.map(lambda x: x * x), neg=tf.map(lambda x: -x)), src)
    out = g.add(tf.to_list(), joined)
    assert (await g.run())[out] == [{"sq": x * x, "neg": -x} for x in range(5)]


async def test_partition_unmatched_key_fails() -> None:
    stage = tf.partition(lambda x: x % 2, {0: tf.map(lambda x: x)})
    with pytest.RaisesGroup(tf.UnroutableError):
        await (tf.from_iterable(range(4)) | stage).to_list()


async def test_fork_join_branch_error_fails_fast() -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.RaisesGroup(ValueError):
        await (tf.from_iterable(range(10)) | tf.fork_join(tf.map(boom), tf.map(abs))).to_list()


async def test_fork_join_with_persistent_and_on_demand_branches() -> None:
    from contextlib import asynccontextmanager

    closed: list[int] = []

    @asynccontextmanager
    async def conn():  # type: ignore[no-untyped-def]
        try:
            yield 10
        finally:
            closed.append(1)

    async def use(c: int, x: int) -> int:
        return c + x

    class Doubler:
        def __call__(self, x: int) -> int:
            return 2 * x

    stage = tf.fork_join(tf.persistent(use, resource=conn, workers=2), tf.on_demand(Doubler, limit=2))
    assert await (tf.from_iterable(range(6)) | stage).to_list() == [(10 + x, 2 * x) for x in range(6)]
    assert closed == [1, 1]


def test_branches_that_do_not_keep_one_output_per_item_are_rejected() -> None:
    with pytest.raises(tf.DefinitionValueError, match=r"'flat_map'"):
        tf.fork_join(tf.map(abs), tf.flat_map(lambda x: [x, x]))
    with pytest.raises(tf.DefinitionValueError, match="ordered=False"):
        async def f(x: int) -> int:
            return x

        tf.partition(abs, {1: tf.map(f, concurrency=2, ordered=False)})
    with pytest.raises(tf.DefinitionValueError, match="take"):
        tf.fork_join(tf.map(abs) | tf.take(3))
    with pytest.raises(tf.DefinitionTypeError, match="both"):
        tf.fork_join(tf.map(abs), b=tf.map(abs))  # type: ignore[call-overload]


async def test_stage_chains_compose_and_flatten() -> None:
    frag = tf.map(lambda x: x + 1) | tf.filter(lambda x: x % 2 == 0) | tf.map(lambda x: x * 10)
    flow = tf.from_iterable(range(6)) | frag
    assert await flow.to_list() == [20, 40, 60]
    assert [n.operator for n in flow.plan().nodes] == ["from_iterable", "map", "filter", "map", "discard"]


def test_regression_skip_in_a_branch_does_not_deadlock_the_join() -> None:
    """A skipped item used to vanish from its branch, so the join waited for it while the
    other branches filled up: a deadlock. It now travels on as a tombstone."""

    def bad(x: int) -> int:
        if x < 200:
            raise ValueError(x)
        return -x

    async def abad(x: int) -> int:
        return bad(x)

    async def main() -> tuple[list[tuple[int, int]], list[int]]:
        letters: list[tf.DeadLetterEntry] = []
        with trio.fail_after(1000):
            joined = await (
                tf.from_iterable(range(300))
                | tf.fork_join(tf.map(lambda x: x), tf.map(bad, on_error=tf.Skip()),
                               tf.map(abad, concurrency=3, on_error=tf.DeadLetter(letters)))
            ).to_list(chunk_size=16, buffer=16)
            parted = await (
                tf.from_iterable(range(300))
                | tf.partition(lambda x: x % 2, {0: tf.map(bad, on_error=tf.Skip()), 1: tf.map(abs)})
            ).to_list(chunk_size=16, buffer=16)
        assert sorted(e.item for e in letters) == list(range(200))  # values, not envelopes
        return joined, parted

    joined, parted = run_virtual(main)
    assert joined == [(x, -x, -x) for x in range(200, 300)]
    assert parted == [x if x % 2 else -x for x in range(300) if x % 2 or x >= 200]
