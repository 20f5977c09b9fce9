"""Prometheus metrics for a running pipeline (the ``trioflow[metrics]`` extra: prometheus-client).

Two pieces, both reading the frozen ``handle.statistics()`` snapshot at scrape time and
nothing else: no per-item callback, no counter of its own, nothing in the hot path. A run
that nobody scrapes pays nothing.

* ``Collector(handle, pipeline=...)``: a prometheus-client custom collector. Register it in a
  registry you already export (``prometheus_client.REGISTRY.register(Collector(handle))``).
* ``serve(handle, port)``: a small HTTP endpoint, served by Trio in the run's own thread,
  bound to ``127.0.0.1`` by default, that stops by itself when the run ends::

      async with trio.open_nursery() as nursery:
          handle = await nursery.start(flow.run)
          port = await nursery.start(trioflow.metrics.serve, handle, 9464)

The metric names and labels (every series also has ``pipeline``):

- ``trioflow_stage_items_total{stage, direction}``: items in (``direction="in"``) and out
- ``trioflow_stage_errors_total{stage}``: exceptions raised by the stage's user code
- ``trioflow_stage_skipped_total``, ``trioflow_stage_dead_letters_total``: items dropped by
  ``Skip()``, sent to a ``DeadLetter``
- ``trioflow_stage_retries_total``, ``trioflow_stage_restarts_total``: extra attempts by
  ``Retry``, restarts by ``Restart``
- ``trioflow_stage_in_flight``, ``trioflow_stage_workers``, ``trioflow_stage_waiting``
  (gauges): calls under way, workers, results held by a reorder buffer
- ``trioflow_stage_info{stage, operator, lifecycle, segment}``: always 1
- ``trioflow_edge_depth{edge}``, ``trioflow_edge_peak``, ``trioflow_edge_capacity`` (gauges;
  capacity for bounded edges only): items queued now, the most ever queued, the bound
- ``trioflow_edge_items_total{edge}``, ``trioflow_edge_dropped_total``,
  ``trioflow_edge_discarded_total``: items accepted, dropped by an overflow policy, thrown
  away after an early stop
- ``trioflow_run_state{trioflow_run_state}``: 1 for the run's state, 0 for the others

Why a Trio server and not prometheus-client's ``start_http_server`` thread: the collector
then runs in the run's own thread, between two of its steps, so a scrape reads one
consistent snapshot without any lock; the server is a task in the caller's nursery, so it
ends with the run (or with the nursery) and leaves no thread behind. A ``Collector``
registered in a registry served by a thread also works: it then reads counters that the run
may be changing (each value is valid, the set of values may be a few items apart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector as _BaseCollector
from prometheus_client.registry import CollectorRegistry

from ._runtime import RunHandle
from ._stats import RunState, RunStatistics, StageStatistics

__all__ = ["Collector", "serve"]

#: A request head larger than this is refused (400); Prometheus sends a few hundred bytes.
MAX_REQUEST_HEAD = 16 * 1024
#: A client that has not sent its request and read the answer in this many seconds is cut off.
CONNECTION_TIMEOUT = 10.0

#: (name without ``_total``, help text, the ``StageStatistics`` field it reads)
_STAGE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("trioflow_stage_errors", "Exceptions raised by the stage's user code.", "errors"),
    ("trioflow_stage_skipped", "Items dropped by on_error=Skip().", "skipped"),
    ("trioflow_stage_dead_letters", "Items sent to the dead-letter target.", "dead_lettered"),
    ("trioflow_stage_retries", "Calls retried by retry=Retry(...) (one per extra attempt).", "retries"),
    ("trioflow_stage_restarts", "Restarts by supervision (restart=Restart(...)).", "restarts"),
)
_STAGE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("trioflow_stage_in_flight", "Calls of user code under way.", "in_flight"),
    ("trioflow_stage_workers", "Worker tasks, or the limit of concurrent on-demand tasks.", "workers"),
    ("trioflow_stage_waiting", "Finished results held by an ordered pool's reorder buffer.", "waiting"),
)


class Collector(_BaseCollector):
    """A prometheus-client collector over a run's statistics, read when scraped.

    ``source`` is a ``RunHandle`` or any function returning a ``RunStatistics`` snapshot;
    ``pipeline`` is the value of the ``pipeline`` label on every series, so several runs can
    share one registry (one collector each, with different names). The collector keeps no
    state: after the run ends it reports the final counts.
    """

    def __init__(self, source: RunHandle[Any] | Callable[[], RunStatistics], *,
                 pipeline: str = "default") -> None:
        if not isinstance(pipeline, str) or not pipeline:
            raise ValueError(f"pipeline must be a non-empty string, got {pipeline!r}")
        if isinstance(source, RunHandle):
            self._read: Callable[[], RunStatistics] = source.statistics
        elif callable(source):
            self._read = source
        else:
            raise TypeError(f"source must be a RunHandle or a function returning RunStatistics, "
                            f"got {source!r}")
        self.pipeline = pipeline

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the registry then neither calls collect() at
        # registration nor refuses a second trioflow collector (another pipeline).
        return []

    def collect(self) -> Iterator[Metric]:
        return iter(metrics(self._read(), self.pipeline))


def metrics(stats: RunStatistics, pipeline: str) -> list[Metric]:
    """The metric families of one snapshot (what ``Collector.collect`` yields)."""
    p = pipeline
    sl = ["pipeline", "stage"]
    items = CounterMetricFamily("trioflow_stage_items", "Items that entered or left the stage.",
                                labels=[*sl, "direction"])
    counters = [CounterMetricFamily(n, h, labels=sl) for n, h, _ in _STAGE_COUNTERS]
    gauges = [GaugeMetricFamily(n, h, labels=sl) for n, h, _ in _STAGE_GAUGES]
    info = InfoMetricFamily("trioflow_stage", "What a stage is: operator, lifecycle, segment.",
                            labels=sl)
    s: StageStatistics
    for s in stats.stages:
        items.add_metric([p, s.name, "in"], s.items_in)
        items.add_metric([p, s.name, "out"], s.items_out)
        for fam, (_, _, field) in zip(counters, _STAGE_COUNTERS, strict=True):
            fam.add_metric([p, s.name], getattr(s, field))
        for gfam, (_, _, field) in zip(gauges, _STAGE_GAUGES, strict=True):
            gfam.add_metric([p, s.name], getattr(s, field))
        info.add_metric([p, s.name], {"operator": s.operator, "lifecycle": s.lifecycle.value,
                                      "segment": str(s.segment)})

    el = ["pipeline", "edge"]
    depth = GaugeMetricFamily("trioflow_edge_depth", "Items queued on the edge now.", labels=el)
    peak = GaugeMetricFamily("trioflow_edge_peak", "The most items queued at once during the run.",
                             labels=el)
    capacity = GaugeMetricFamily("trioflow_edge_capacity", "Capacity of a bounded edge, in items.",
                                 labels=el)
    total = CounterMetricFamily("trioflow_edge_items", "Items accepted by the edge.", labels=el)
    dropped = CounterMetricFamily("trioflow_edge_dropped", "Items dropped by the edge's overflow policy.",
                                  labels=el)
    discarded = CounterMetricFamily("trioflow_edge_discarded",
                                    "Items still queued when the consumer stopped early, thrown away.",
                                    labels=el)
    for e in stats.edges:
        depth.add_metric([p, e.name], e.depth)
        peak.add_metric([p, e.name], e.peak)
        if e.capacity is not None:
            capacity.add_metric([p, e.name], e.capacity)
        total.add_metric([p, e.name], e.total)
        dropped.add_metric([p, e.name], e.dropped)
        discarded.add_metric([p, e.name], e.discarded)

    state = StateSetMetricFamily("trioflow_run_state", "Where the run is in its life.",
                                 labels=["pipeline"])
    state.add_metric([p], {s.value: s is stats.state for s in RunState})
    return [items, *counters, *gauges, info, depth, peak, capacity, total, dropped, discarded, state]


async def serve(
    handle: RunHandle[Any], port: int, *, host: str = "127.0.0.1", pipeline: str = "default",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the run's metrics over HTTP (``GET /metrics``) until the run ends.

    Start it next to the run: ``await nursery.start(trioflow.metrics.serve, handle, port)``
    returns the bound port once the endpoint accepts connections (``port=0`` picks a free
    one); ``nursery.start_soon`` works too. It binds ``host`` (``127.0.0.1``, only this
    machine, unless you say otherwise: ``"0.0.0.0"`` for every interface). Each scrape
    reads ``handle.statistics()`` once, in the run's thread, and renders the Prometheus
    text format (or OpenMetrics when the client asks for it). ``/`` answers like
    ``/metrics``; other paths get 404, methods other than GET and HEAD 405.

    Returns when the run has ended (completed, failed or cancelled): the listener is closed
    and connections still open are cut. Cancelling it stops the endpoint and leaves the run
    alone. A port already taken raises ``OSError`` from ``nursery.start``. ``pipeline`` is
    the ``pipeline`` label of every series.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(handle, pipeline=pipeline))
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(CONNECTION_TIMEOUT):
                await _answer(stream, registry)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])
        await handle.wait()
        nursery.cancel_scope.cancel()


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    head = bytearray()
    try:
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_REQUEST_HEAD:
                await _respond(stream, 400, b"request head too large\n")
                return
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        lines = bytes(head).split(b"\r\n")
        parts = lines[0].decode("latin-1").split()
        if len(parts) != 3:
            await _respond(stream, 400, b"bad request line\n")
            return
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            await _respond(stream, 405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
            return
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            await _respond(stream, 404, b"not found: try /metrics\n")
            return
        accept = ""
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        body = encoder(registry)
        await _respond(stream, 200, body, content_type=content_type, head_only=method == "HEAD")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away: nothing to answer


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def _respond(stream: trio.SocketStream, status: int, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8",
                   extra: list[tuple[str, str]] | None = None, head_only: bool = False) -> None:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Connection", "close"), *(extra or [])]
    text = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    await stream.send_all(text.encode("latin-1") + b"\r\n" + (b"" if head_only else body))
