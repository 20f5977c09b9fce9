"""``trioflow.otel``: a span per stage call on sampled items, one trace per item, read back
from the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trioflow as tf
from trioflow import otel


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def traces(exporter: InMemorySpanExporter) -> list[dict[str, str | None]]:
    """Finished spans grouped by trace: per trace, each span's name -> its parent's name
    (``None`` for the root), checked to have one root and every parent in the same trace
    (``ids[...]`` raises ``KeyError`` for a parent outside it)."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in exporter.get_finished_spans():
        assert span.context is not None
        by_trace[span.context.trace_id].append(span)
    out = []
    for spans in by_trace.values():
        ids = {s.context.span_id: s for s in spans}  # type: ignore[union-attr]
        tree: dict[str, str | None] = {}
        for s in spans:
            parent = None if s.parent is None else ids[s.parent.span_id].name
            # a stage's spans in one trace (flat_map's children) all have the same parent
            assert tree.setdefault(s.name, parent) == parent, s.name
            if s.parent is not None:
                # a child starts after its parent
                assert ids[s.parent.span_id].start_time <= s.start_time  # type: ignore[operator]
        assert [s.parent for s in spans].count(None) == 1, f"one root per trace: {tree}"
        out.append(tree)
    return out


def _double(x: int) -> int:
    return x * 2


def _small(x: int) -> bool:
    return x < 6


async def _inc(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return x + 1


async def test_each_sampled_item_is_one_trace_through_every_stage(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    seen: list[Any] = []

    def write(x: int) -> None:
        seen.append(x)

    await (
        tf.from_iterable(range(5))
        | otel.sample(tracer_provider=provider)
        | otel.map(_double)
        | otel.filter(_small)
        | otel.map(_inc, concurrency=2)
        | otel.sink(write)
    ).run()
    assert sorted(seen) == [1, 3, 5]  # user code got plain values

    trees = traces(exporter)
    assert len(trees) == 5  # one trace per item
    root, double, small = "trioflow item", "map _double", "filter _small"
    kept = {root: None, double: root, small: double, "map _inc": double, "sink write": "map _inc"}
    dropped = {root: None, double: root, small: double}
    # 0, 2, 4 are kept; 6 and 8 were dropped by the filter, their traces end there
    assert sorted(trees, key=len) == [dropped] * 2 + [kept] * 3
    for span in exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.UNSET
        if span.name == double:
            assert span.attributes == {"trioflow.stage": "_double", "trioflow.operator": "map"}


async def test_a_failing_call_records_the_error_on_its_span(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    def picky(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    result = await (
        tf.from_iterable(range(4)) | otel.sample(tracer_provider=provider)
        | otel.map(picky, on_error=tf.Skip()) | otel.end() | tf.to_list()
    ).run()
    assert result == [0, 1, 3]  # end() handed on plain values
    failed = [s for s in exporter.get_finished_spans() if s.name == "map picky"
              and s.status.status_code is StatusCode.ERROR]
    (span,) = failed
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "two"


async def test_rate_samples_a_repeatable_fraction_and_unsampled_items_stay_plain(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    kinds: list[str] = []

    def look(x: Any) -> None:
        kinds.append(type(x).__name__)

    await (tf.from_iterable(range(200)) | otel.sample(0.1, tracer_provider=provider, seed=7)
           | tf.tap(look) | tf.sink(lambda x: None)).run()
    draw = random.Random(7).random
    expected = sum(draw() < 0.1 for _ in range(200))
    assert 5 < expected < 40
    assert kinds.count("Traced") == expected
    assert kinds.count("int") == 200 - expected
    assert len(traces(exporter)) == expected
    assert all(tree == {"trioflow item": None} for tree in traces(exporter))

    exporter.clear()
    kinds.clear()
    await (tf.from_iterable(range(50)) | otel.sample(0.0, tracer_provider=provider)
           | otel.map(_double) | tf.tap(look) | tf.sink(lambda x: None)).run()
    assert kinds == ["int"] * 50
    assert exporter.get_finished_spans() == ()


async def test_without_an_sdk_no_item_is_wrapped() -> None:
    # the global provider is the API's no-op one here: its spans are never sampled
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    out = await (tf.from_iterable(range(3)) | otel.sample() | otel.map(_double) | tf.to_list()).run()
    assert out == [0, 2, 4]


async def test_spans_user_code_opens_nest_under_the_stage_span(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    tracer = provider.get_tracer("user")

    async def store(x: int) -> None:
        with tracer.start_as_current_span("db insert"):
            await trio.lowlevel.checkpoint()

    await (tf.from_iterable(range(1)) | otel.sample(tracer_provider=provider)
           | otel.sink(store, concurrency=2)).run()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"trioflow item", "sink store", "db insert"}
    assert spans["db insert"].parent is not None
    assert spans["db insert"].parent.span_id == spans["sink store"].context.span_id  # type: ignore[union-attr]


async def test_flat_map_children_continue_the_trace_and_tap_keeps_it(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    async def split(x: int) -> list[int]:
        return [x, x + 10]

    out = await (
        tf.from_iterable([1]) | otel.sample(tracer_provider=provider)
        | otel.flat_map(split) | otel.tap(lambda x: None, name="look") | otel.end() | tf.to_list()
    ).run()
    assert out == [1, 11]
    (tree,) = traces(exporter)  # the children's spans are in their parent's trace
    assert tree == {"trioflow item": None, "flat_map split": "trioflow item", "tap look": "flat_map split"}
    taps = [s for s in exporter.get_finished_spans() if s.name == "tap look"]
    assert len(taps) == 2  # one per child


def test_bad_arguments_name_the_argument() -> None:
    for rate in (-0.1, 1.5, "1", True):
        with pytest.raises(tf.DefinitionValueError, match="rate"):
            otel.sample(rate)  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionValueError, match="backend"):
        otel.map(_double, backend=tf.Threads())
    with pytest.raises(tf.DefinitionTypeError, match="fn"):
        otel.map(42)  # type: ignore[arg-type]

    def gen(x: int) -> Any:
        yield x

    with pytest.raises(tf.DefinitionTypeError, match="fn"):
        otel.flat_map(gen)


def test_importing_trioflow_does_not_import_opentelemetry() -> None:
    code = "import sys, trioflow; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_broadcast_gives_both_branches_the_value_and_one_trace(
        exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
    g = tf.Graph()
    src = g.add(tf.from_iterable(range(3)))
    fan = g.broadcast(g.add(otel.sample(tracer_provider=provider), src))
    doubled = g.add(otel.map(_double), fan)
    kept = g.add(otel.filter(_small), fan)
    squared = g.add(otel.map(lambda x: x * x, name="square"), kept)
    out = g.add(otel.end(), g.merge(doubled, squared))
    lst = g.add(tf.to_list(), out)
    results = await g.run()
    assert sorted(results[lst]) == [0, 0, 1, 2, 4, 4]
    trees = traces(exporter)
    assert len(trees) == 3  # one per item, both branches in it
    root = "trioflow item"
    both = {root: None, "map _double": root, "filter _small": root, "map square": root}
    assert trees == [both] * 3
