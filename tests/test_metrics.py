"""``trioflow.metrics``: the Prometheus collector and its HTTP endpoint, scraped over real HTTP
from real runs and parsed with prometheus-client's own parser."""

from __future__ import annotations

import functools
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trioflow as tf
from trioflow import metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


async def scrape(port: int, path: str = "/metrics", **kw: Any) -> tuple[int, str, str]:
    """A real HTTP request from another thread (urllib), while the run's thread serves it."""
    return await trio.to_thread.run_sync(functools.partial(_get, f"http://127.0.0.1:{port}{path}", **kw))


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(smp: Samples, name: str, **labels: str) -> float:
    return smp[name, frozenset({"pipeline": "demo", **labels}.items())]


def _inc_or_fail(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(x)
    return x + 1


async def test_scrape_a_blocked_run_over_http_then_the_endpoint_stops_with_the_run() -> None:
    release = trio.Event()
    served_until_end = False

    async def slow_sink(x: int) -> None:
        await release.wait()

    flow = (
        tf.from_iterable(range(100), name="src")
        | tf.map(_inc_or_fail, name="inc", on_error=tf.Skip())
        | tf.sink(slow_sink, name="out", buffer=10)
    )

    async def serve_and_note(handle: tf.RunHandle[Any], *, task_status: trio.TaskStatus[int]) -> None:
        nonlocal served_until_end
        await metrics.serve(handle, 0, pipeline="demo", task_status=task_status)
        served_until_end = True

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(functools.partial(flow.run, chunk_size=5))
        port = await nursery.start(serve_and_note, handle)
        await trio.testing.wait_all_tasks_blocked()
        stats = handle.statistics()
        status, content_type, text = await scrape(port)
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        smp = samples(text)

        # The run is blocked, so the scrape saw exactly the snapshot taken before it. How
        # far the source got depends on its chunk sizes (they adapt to the time a chunk
        # takes), so the counts are checked against the snapshot and against each other.
        src, inc, out = stats.stage("src"), stats.stage("inc"), stats.stage("out")
        n = src.items_out
        failed = len([x for x in range(n) if x % 7 == 3])  # 3, 10, 17 ... raised and were skipped
        assert n >= 7 and failed >= 1
        assert value(smp, "trioflow_stage_items_total", stage="src", direction="out") == n
        assert value(smp, "trioflow_stage_items_total", stage="src", direction="in") == src.items_in
        assert value(smp, "trioflow_stage_items_total", stage="inc", direction="in") == inc.items_in == n
        assert value(smp, "trioflow_stage_items_total", stage="inc", direction="out") == inc.items_out
        assert inc.items_out == n - failed
        assert value(smp, "trioflow_stage_errors_total", stage="inc") == failed
        assert value(smp, "trioflow_stage_skipped_total", stage="inc") == failed
        assert value(smp, "trioflow_stage_errors_total", stage="out") == 0
        assert value(smp, "trioflow_stage_items_total", stage="out", direction="in") == out.items_in
        assert out.items_in >= 1
        assert value(smp, "trioflow_stage_items_total", stage="out", direction="out") == 0
        assert value(smp, "trioflow_stage_in_flight", stage="out") == 1  # waiting for release
        assert value(smp, "trioflow_stage_dead_letters_total", stage="inc") == 0
        assert value(smp, "trioflow_stage_info", stage="inc", operator="map", lifecycle="continuous",
                     segment="0") == 1
        (edge,) = stats.edges
        assert value(smp, "trioflow_edge_depth", edge=edge.name) == edge.depth
        assert value(smp, "trioflow_edge_peak", edge=edge.name) == edge.peak >= edge.depth
        assert value(smp, "trioflow_edge_capacity", edge=edge.name) == 10
        assert value(smp, "trioflow_edge_items_total", edge=edge.name) == edge.total
        # what the edge accepted is either queued on it or taken by the sink
        assert edge.total == edge.depth + out.items_in
        # the source is blocked because the edge is (nearly) full: the next chunk does not fit
        assert edge.depth > 10 - 5
        assert value(smp, "trioflow_run_state", trioflow_run_state="running") == 1
        assert value(smp, "trioflow_run_state", trioflow_run_state="completed") == 0

        release.set()
        assert await handle.wait() is tf.RunState.COMPLETED
    # the nursery could only exit because serve returned by itself when the run ended
    assert served_until_end
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


def gated_flow() -> tuple[tf.Pipeline[list[int]], trio.Event]:
    """range(3) -> map (waits for the event) -> to_list: a run that stays up until told."""
    gate = trio.Event()

    async def wait(x: int) -> int:
        await gate.wait()
        return x

    return tf.from_iterable(range(3)) | tf.map(wait) | tf.to_list(), gate


async def test_other_paths_methods_and_openmetrics() -> None:
    flow, gate = gated_flow()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        port = await nursery.start(metrics.serve, handle, 0)
        status, _, text = await scrape(port, "/")
        assert status == 200
        assert 'trioflow_stage_items_total{direction="in",pipeline="default",stage="map"}' in text
        assert (await scrape(port, "/nothing"))[0] == 404
        assert (await scrape(port, method="POST"))[0] == 405
        status, _, text = await scrape(port, method="HEAD")
        assert (status, text) == (200, "")
        status, content_type, text = await scrape(
            port, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert content_type.startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")
        # a client that sends garbage, then one that hangs up early, do not stop the endpoint
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            await s.send_all(b"nonsense\r\n\r\n")
            assert (await s.receive_some(100)).startswith(b"HTTP/1.1 400 ")
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            await s.send_all(b"GET /met")
        assert (await scrape(port))[0] == 200
        gate.set()
    assert handle.result() == [0, 1, 2]


async def test_cancelling_the_endpoint_leaves_the_run_alone_and_a_cancelled_run_stops_it() -> None:
    flow, _ = gated_flow()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(flow.run)
        async with trio.open_nursery() as inner:
            port = await inner.start(metrics.serve, handle, 0)
            assert (await scrape(port))[0] == 200
            inner.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await trio.testing.wait_all_tasks_blocked()
        assert handle.state is tf.RunState.RUNNING
        port = await nursery.start(metrics.serve, handle, 0)
        assert (await scrape(port))[0] == 200
        handle.cancel()
    assert handle.state is tf.RunState.CANCELLED


async def test_a_taken_port_raises_from_start() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    taken = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(3)) | tf.to_list()).run)
        with pytest.raises(OSError):
            await nursery.start(metrics.serve, handle, taken)
    await listeners[0].aclose()


async def test_two_pipelines_share_a_registry() -> None:
    registry = CollectorRegistry()
    first = await (tf.from_iterable(range(5)) | tf.map(lambda x: x) | tf.to_list()).run(report=True)
    assert first.result == [0, 1, 2, 3, 4]
    registry.register(metrics.Collector(lambda: first.statistics, pipeline="a"))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(7)) | tf.map(lambda x: x) | tf.to_list()).run)
        registry.register(metrics.Collector(handle, pipeline="b"))
    smp = samples(generate_latest(registry).decode())
    for pipeline, n in (("a", 5), ("b", 7)):
        labels = frozenset({"pipeline": pipeline, "stage": "map", "direction": "out"}.items())
        assert smp["trioflow_stage_items_total", labels] == n
        assert smp["trioflow_run_state", frozenset(
            {"pipeline": pipeline, "trioflow_run_state": "completed"}.items())] == 1


async def test_bad_arguments_name_the_argument() -> None:
    handle = None
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(range(1)) | tf.to_list()).run)
    for port in (-1, 70000, "80", True):
        with pytest.raises(ValueError, match="port"):
            await metrics.serve(handle, port)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pipeline"):
        metrics.Collector(handle, pipeline="")
    with pytest.raises(TypeError, match="source"):
        metrics.Collector(42)  # type: ignore[arg-type]


def test_importing_trioflow_does_not_import_prometheus_client() -> None:
    code = "import sys, trioflow; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
