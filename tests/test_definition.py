"""Definition-time validation and planning: bad arguments fail before anything runs."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import trioflow as tf


async def _af(x: Any) -> Any:
    return x


async def _pf(res: Any, x: Any) -> Any:
    return x


@asynccontextmanager
async def _res() -> AsyncIterator[None]:
    yield None


async def _cont(items: Any, emit: Any) -> None:
    pass


# ------------------------------------------------------------------------ exception hierarchy


def test_exception_hierarchy() -> None:
    assert issubclass(tf.DefinitionValueError, ValueError)
    assert issubclass(tf.DefinitionValueError, tf.DefinitionError)
    assert issubclass(tf.DefinitionTypeError, TypeError)
    assert issubclass(tf.DefinitionTypeError, tf.DefinitionError)
    assert issubclass(tf.DefinitionError, tf.TrioflowError)
    assert issubclass(tf.TrioflowError, Exception)


def _raises(kind: type[Exception], build: Callable[[], object], *words: str) -> None:
    with pytest.raises(kind) as info:
        build()
    assert isinstance(info.value, tf.TrioflowError)
    assert isinstance(info.value, ValueError if kind is tf.DefinitionValueError else TypeError)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


# ------------------------------------------------------------------------------------ values

VALUE_ERRORS: list[tuple[str, Callable[[], object], tuple[str, ...]]] = [
    ("map concurrency=0", lambda: tf.map(_af, concurrency=0), ("concurrency", "0")),
    ("map concurrency<0", lambda: tf.map(_af, concurrency=-3), ("concurrency", "-3")),
    ("map window<concurrency", lambda: tf.map(_af, concurrency=4, window=2), ("window", "2")),
    ("map window=0", lambda: tf.map(_af, window=0), ("window",)),
    ("map sync fn concurrency>1", lambda: tf.map(lambda x: x, concurrency=2), ("concurrency",)),
    ("map buffer=0", lambda: tf.map(_af, buffer=0), ("buffer", "0")),
    ("batch size<0", lambda: tf.batch(-1), ("size", "-1")),
    ("batch size=0", lambda: tf.batch(0), ("size", "0")),
    ("batch timeout=0", lambda: tf.batch(3, timeout=0), ("timeout", "0")),
    ("batch timeout<0", lambda: tf.batch(3, timeout=-1.5), ("timeout", "-1.5")),
    ("batch timeout=nan", lambda: tf.batch(3, timeout=math.nan), ("timeout", "nan")),
    ("batch timeout=inf", lambda: tf.batch(3, timeout=math.inf), ("timeout", "inf")),
    ("take<0", lambda: tf.take(-1), ("count", "-1")),
    ("skip<0", lambda: tf.skip(-2), ("count", "-2")),
    ("periodic interval=0", lambda: tf.periodic(0), ("interval", "0")),
    ("periodic interval=nan", lambda: tf.periodic(math.nan), ("interval", "nan")),
    ("periodic count<0", lambda: tf.periodic(1, count=-1), ("count", "-1")),
    ("persistent workers=0", lambda: tf.persistent(_pf, resource=_res, workers=0), ("workers", "0")),
    (
        "persistent window<workers",
        lambda: tf.persistent(_pf, resource=_res, workers=3, window=2),
        ("window", "2"),
    ),
    ("on_demand limit=0", lambda: tf.on_demand(lambda: _af, limit=0), ("limit", "0")),
    ("on_demand window<limit", lambda: tf.on_demand(lambda: _af, limit=5, window=1), ("window", "1")),
    ("empty name", lambda: tf.map(_af, name=""), ("name",)),
    ("name with spaces", lambda: tf.filter(_af, name=" x "), ("name", "' x '")),
]


@pytest.mark.parametrize(("build", "words"), [(b, w) for _, b, w in VALUE_ERRORS],
                         ids=[i for i, _, _ in VALUE_ERRORS])
def test_definition_value_errors(build: Callable[[], object], words: tuple[str, ...]) -> None:
    _raises(tf.DefinitionValueError, build, *words)


# ------------------------------------------------------------------------------------- types

TYPE_ERRORS: list[tuple[str, Callable[[], object], tuple[str, ...]]] = [
    ("map non-callable", lambda: tf.map(42), ("fn", "42")),  # type: ignore[call-overload]
    ("filter non-callable", lambda: tf.filter("x"), ("fn", "'x'")),  # type: ignore[arg-type]
    ("flat_map non-callable", lambda: tf.flat_map(None), ("fn", "None")),  # type: ignore[arg-type]
    ("tap non-callable", lambda: tf.tap(1), ("fn",)),  # type: ignore[arg-type]
    ("take_while non-callable", lambda: tf.take_while(1), ("fn",)),  # type: ignore[arg-type]
    ("scan non-callable", lambda: tf.scan(1, 0), ("fn",)),  # type: ignore[arg-type]
    ("sink non-callable", lambda: tf.sink(1), ("fn",)),  # type: ignore[arg-type]
    ("reduce non-callable", lambda: tf.reduce(1, 0), ("fn",)),  # type: ignore[arg-type]
    ("map concurrency=True", lambda: tf.map(_af, concurrency=True), ("concurrency", "True")),
    ("map concurrency=2.0", lambda: tf.map(_af, concurrency=2.0), ("concurrency",)),  # type: ignore[arg-type]
    ("map ordered=1", lambda: tf.map(_af, ordered=1), ("ordered", "1")),  # type: ignore[arg-type]
    ("batch size=True", lambda: tf.batch(True), ("size", "True")),
    ("batch timeout=True", lambda: tf.batch(2, timeout=True), ("timeout", "True")),
    ("batch timeout='1'", lambda: tf.batch(2, timeout="1"), ("timeout",)),  # type: ignore[arg-type]
    ("take count=True", lambda: tf.take(True), ("count", "True")),
    ("take count=False", lambda: tf.take(False), ("count", "False")),
    ("skip count=1.0", lambda: tf.skip(1.0), ("count",)),  # type: ignore[arg-type]
    ("buffer=True", lambda: tf.filter(_af, buffer=True), ("buffer", "True")),
    ("name not str", lambda: tf.map(_af, name=3), ("name", "3")),  # type: ignore[arg-type]
    ("persistent sync fn", lambda: tf.persistent(lambda r, x: x, resource=_res), ("fn",)),
    ("persistent resource", lambda: tf.persistent(_pf, resource=5), ("resource", "5")),  # type: ignore[arg-type]
    ("persistent workers=True", lambda: tf.persistent(_pf, resource=_res, workers=True), ("workers",)),
    ("on_demand factory", lambda: tf.on_demand(3), ("factory", "3")),  # type: ignore[arg-type]
    ("on_demand limit=True", lambda: tf.on_demand(lambda: _af, limit=True), ("limit", "True")),
    ("continuous sync fn", lambda: tf.continuous(lambda items, emit: None), ("fn",)),
    ("source sync fn", lambda: tf.source(lambda emit: None), ("fn",)),  # type: ignore[arg-type,return-value]
    ("from_iterable non-iterable", lambda: tf.from_iterable(5), ("iterable", "5")),  # type: ignore[arg-type]
    ("from_async_iterable sync", lambda: tf.from_async_iterable([1]), ("iterable",)),  # type: ignore[arg-type]
    ("from_channel not channel", lambda: tf.from_channel([1]), ("channel",)),  # type: ignore[arg-type]
    ("periodic interval=True", lambda: tf.periodic(True), ("interval", "True")),
    ("periodic count=True", lambda: tf.periodic(1, count=True), ("count", "True")),
    ("map async gen fn", lambda: tf.map(_agen), ("fn",)),
]


async def _agen(x: Any) -> AsyncIterator[Any]:
    yield x


@pytest.mark.parametrize(("build", "words"), [(b, w) for _, b, w in TYPE_ERRORS],
                         ids=[i for i, _, _ in TYPE_ERRORS])
def test_definition_type_errors(build: Callable[[], object], words: tuple[str, ...]) -> None:
    _raises(tf.DefinitionTypeError, build, *words)


def test_valid_edge_values_are_accepted() -> None:
    tf.take(0)
    tf.skip(0)
    tf.batch(1)
    tf.batch(1, timeout=0.001)
    tf.periodic(0.5, count=0)
    tf.map(_af, concurrency=3, window=3)
    tf.on_demand(lambda: _af, limit=2, window=2)
    tf.persistent(_pf, resource=_res, workers=2, window=10, ordered=False)
    tf.filter(_af, buffer=1, name="ok")


def test_batch_timeout_int_is_stored_as_float() -> None:
    stage = tf.batch(3, timeout=2)
    assert stage.timeout == 2.0 and isinstance(stage.timeout, float)


# ---------------------------------------------------------------------------------- chaining


def test_duplicate_explicit_names_rejected() -> None:
    _raises(
        tf.DefinitionValueError,
        lambda: tf.from_iterable([1], name="a") | tf.map(_af, name="b") | tf.filter(_af, name="a"),
        "'a'",
        "name",
    )


def test_duplicate_explicit_name_on_sink_rejected() -> None:
    _raises(
        tf.DefinitionValueError,
        lambda: tf.from_iterable([1]) | tf.map(_af, name="out") | tf.sink(print, name="out"),
        "'out'",
    )


@pytest.mark.parametrize("other", [3, "map", None, _af, tf.from_iterable([1])])
def test_pipe_with_non_stage_rejected(other: object) -> None:
    _raises(tf.DefinitionTypeError, lambda: tf.from_iterable([1]) | other, "stage")  # type: ignore[operator]


def test_run_arguments_validated() -> None:
    flow = tf.from_iterable([1])
    _raises(tf.DefinitionValueError, lambda: flow.plan(chunk_size=0), "chunk_size")
    _raises(tf.DefinitionTypeError, lambda: flow.plan(buffer=True), "buffer")


async def test_run_arguments_validated_before_running() -> None:
    pulled: list[int] = []

    def gen() -> Any:
        pulled.append(1)
        yield 1

    with pytest.raises(tf.DefinitionValueError, match="chunk_size"):
        await tf.from_iterable(gen()).run(chunk_size=0)
    with pytest.raises(tf.DefinitionValueError, match="buffer"):
        await (tf.from_iterable(gen()) | tf.to_list()).run(buffer=-1)
    assert pulled == []


def test_stages_are_frozen_and_reusable() -> None:
    stage = tf.map(_af, name="m")
    with pytest.raises(AttributeError):
        stage.name = "other"  # type: ignore[misc]
    a = tf.from_iterable([1]) | stage
    b = tf.from_iterable([2]) | stage
    assert a.stages == b.stages == (stage,)


# ------------------------------------------------------------------------------------- plans


def _segments(plan: tf.Plan) -> list[list[str]]:
    return [[n.name for n in seg.nodes] for seg in plan.segments]


def test_plan_fuses_adjacent_inline_stages() -> None:
    pipeline = (
        tf.from_iterable(range(10))
        | tf.map(lambda x: x)
        | tf.filter(lambda x: True)
        | tf.map(_af)
        | tf.take(5)
        | tf.skip(1)
        | tf.batch(2, timeout=1)
        | tf.batch(3)
        | tf.map(_af, concurrency=2)
        | tf.to_list()
    )
    plan = pipeline.plan()
    assert _segments(plan) == [
        ["from_iterable", "map", "filter"],
        ["map_2", "take", "skip"],
        ["batch", "batch_2"],
        ["map_3", "to_list"],
    ]
    fused = {n.name: n.fused for n in plan.nodes}
    assert fused == {
        "from_iterable": False, "map": True, "filter": True,
        "map_2": False, "take": True, "skip": True,
        "batch": False, "batch_2": True,
        "map_3": False, "to_list": True,
    }
    assert [s.index for s in plan.segments] == [0, 1, 2, 3]


def test_plan_every_non_inline_kind_starts_a_segment() -> None:
    pipeline = (
        tf.from_iterable([1])
        | tf.persistent(_pf, resource=_res)
        | tf.on_demand(lambda: _af)
        | tf.continuous(_cont)
        | tf.flat_map(_agen)
        | tf.sink(_af)
    )
    assert _segments(pipeline.plan()) == [
        ["from_iterable"], ["persistent"], ["on_demand"], ["continuous"], ["flat_map"], ["sink"],
    ]


def test_plan_sync_generator_flat_map_and_sync_sink_are_fused() -> None:
    def gen(x: int) -> Any:
        yield x

    plan = (tf.from_iterable([1]) | tf.flat_map(gen) | tf.sink(print)).plan()
    assert _segments(plan) == [["from_iterable", "flat_map", "sink"]]


def test_plan_edge_capacities_from_buffer_and_default() -> None:
    plan = (
        tf.from_iterable([1]) | tf.map(_af, buffer=7) | tf.map(_af) | tf.to_list()
    ).plan(buffer=33, chunk_size=5)
    assert [s.input_capacity for s in plan.segments] == [None, 7, 33]
    assert plan.chunk_size == 5
    assert plan.open_end is False


def test_flow_plan_ends_in_discard() -> None:
    plan = (tf.from_iterable([1]) | tf.map(lambda x: x)).plan()
    assert [n.operator for n in plan.nodes] == ["from_iterable", "map", "discard"]


def test_plan_unique_names_with_suffixes() -> None:
    plan = (
        tf.from_iterable([1])
        | tf.map(lambda x: x)
        | tf.map(lambda x: x)
        | tf.map(lambda x: x, name="map_3")
        | tf.map(lambda x: x)
        | tf.filter(lambda x: x)
        | tf.filter(lambda x: x)
        | tf.to_list()
    ).plan()
    names = [n.name for n in plan.nodes]
    assert names == ["from_iterable", "map", "map_2", "map_3", "map_4", "filter", "filter_2", "to_list"]
    assert len(set(names)) == len(names)


def test_plan_default_name_skips_explicit_name_that_comes_later() -> None:
    flow = tf.from_iterable([1]) | tf.map(lambda x: x) | tf.map(lambda x: x) | tf.map(_af, name="map_2")
    plan = flow.plan()
    names = [n.name for n in plan.nodes]
    assert names == ["from_iterable", "map", "map_3", "map_2", "discard"]


def test_plan_is_deterministic() -> None:
    flow = tf.from_iterable([1]) | tf.map(lambda x: x) | tf.map(_af) | tf.batch(2)
    assert flow.plan() == flow.plan()
    assert str(flow.plan()) == str(flow.plan())


def _demo_plan() -> tf.Plan:
    return (
        tf.from_iterable(range(3), name="numbers")
        | tf.map(lambda x: x, name="parse")
        | tf.map(_af, concurrency=2, name="enrich", buffer=64)
        | tf.batch(10, timeout=1.0, name="group")
        | tf.persistent(_pf, resource=_res, name="write")
        | tf.to_list()
    ).plan(chunk_size=16, buffer=128)


def test_str_plan() -> None:
    text = str(_demo_plan())
    assert text.splitlines() == [
        "plan: 4 task group(s), 3 edge(s), chunks of up to 16",
        "  segment 0 (continuous): numbers[from_iterable] -> parse[map]",
        "  segment 1 (pooled): enrich[map]",
        "      in: parse -> enrich (capacity 64)",
        "  segment 2 (continuous): group[batch]",
        "      in: enrich -> group (capacity 128)",
        "  segment 3 (persistent): write[persistent] -> to_list[to_list]",
        "      in: group -> write (capacity 128)",
    ]


def test_to_mermaid_contains_every_node_and_edge() -> None:
    text = _demo_plan().to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    for i, (name, op) in enumerate(
        [("numbers", "from_iterable"), ("parse", "map"), ("enrich", "map"), ("group", "batch"),
         ("write", "persistent"), ("to_list", "to_list")]
    ):
        assert f'    n{i}["{name}: {op}"]' in lines
    for s in range(4):
        assert any(line.startswith(f"  subgraph s{s}[") for line in lines)
    assert "  n0 --> n1" in lines
    assert "  n1 -- 64 --> n2" in lines
    assert "  n2 -- 128 --> n3" in lines
    assert "  n3 -- 128 --> n4" in lines
    assert "  n4 --> n5" in lines
    assert lines.count("  end") == 4


def test_to_dot_contains_every_node_and_edge() -> None:
    text = _demo_plan().to_dot()
    lines = text.splitlines()
    assert lines[0] == "digraph trioflow {"
    assert lines[-1] == "}"
    for i, (name, op) in enumerate(
        [("numbers", "from_iterable"), ("parse", "map"), ("enrich", "map"), ("group", "batch"),
         ("write", "persistent"), ("to_list", "to_list")]
    ):
        assert f'    n{i} [label="{name}\\n{op}"];' in lines
    for s in range(4):
        assert f"  subgraph cluster_{s} {{" in lines
    assert "  n0 -> n1;" in lines
    assert '  n1 -> n2 [label="64"];' in lines
    assert '  n4 -> n5;' in lines


def test_export_escapes_quotes_in_names() -> None:
    plan = (tf.from_iterable([1], name='say "hi"') | tf.to_list()).plan()
    assert 'n0["say \\"hi\\": from_iterable"]' in plan.to_mermaid()
    assert 'n0 [label="say \\"hi\\"\\nfrom_iterable"];' in plan.to_dot()
