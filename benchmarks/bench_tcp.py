"""Workload "tcp": NDJSON records over loopback TCP, parsed by the server.

``n`` records (about 60 bytes each: ``{"id": i, "sensor": "s3", "value": 1.5}``) are sent
by ``C`` clients at once (C = 10, then 1,000), each on its own connection, in 64 KiB
writes; the server parses each line with ``json.loads`` and adds up the ids. A variant's
result is ``(records, sum of ids)``, the same for all.

* plain: what one writes with Trio alone: ``trio.serve_listeners`` and a handler that
  splits each received chunk into lines, keeping the tail, and parses them.
* trioflow: ``tcp_source(0, decode=json.loads) | sink(add)``: the same per-chunk framing
  plus the source's bookkeeping (line numbers, rejection handling, statistics, drain) and
  the hand-off of each chunk's records through ``emit.many``.

The clients are part of both variants (same cost in each), in the same process and
``trio.run`` as the server: loopback only, two cores shared. The target (issue 10): the
source reaches at least 80% of the plain server's throughput at 10 and at 1,000
connections.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio
from harness import Target, Variant, Workload

import trioflow as tf
import trioflow.io as tfio

HOST = "127.0.0.1"
WRITE = 64 * 1024


def payloads(n: int, conns: int) -> list[bytes]:
    """Connection ``c`` sends records ``c, c + conns, c + 2*conns, ...``."""
    return [
        b"".join(
            json.dumps({"id": i, "sensor": f"s{i % 7}", "value": i / 2}).encode() + b"\n"
            for i in range(c, n, conns)
        )
        for c in range(conns)
    ]


async def clients(port: int, data: list[bytes]) -> None:
    async def client(payload: bytes) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            for i in range(0, len(payload), WRITE):
                await stream.send_all(payload[i : i + WRITE])

    async with trio.open_nursery() as nursery:
        for payload in data:
            nursery.start_soon(client, payload)


def run_with(conns: int, server: Callable[[int, list[bytes]], Awaitable[tuple[int, int]]],
             ) -> Callable[[int], Awaitable[tuple[int, int]]]:
    cache: dict[int, list[bytes]] = {}

    async def variant(n: int) -> tuple[int, int]:
        if n not in cache:  # built once, outside the timed runs that follow the warm-up
            cache[n] = payloads(n, conns)
        return await server(n, cache[n])

    return variant


# -- the trioflow way ----------------------------------------------------------------------


async def trioflow_server(n: int, data: list[bytes]) -> tuple[int, int]:
    count = total = 0
    done = trio.Event()

    def add(record: dict[str, int]) -> None:
        nonlocal count, total
        count += 1
        total += record["id"]
        if count == n:
            done.set()

    servers: list[tfio.TcpServer] = []
    flow = tfio.tcp_source(0, host=HOST, decode=json.loads, max_connections=2048,
                           on_listening=servers.append)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((flow | tf.sink(add)).run)
        nursery.start_soon(clients, servers[0].port, data)
        await done.wait()
        handle.cancel()
    return count, total


# -- reference -------------------------------------------------------------------------------


async def plain_server(n: int, data: list[bytes]) -> tuple[int, int]:
    count = total = 0
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal count, total
        tail = b""
        async for chunk in stream:
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                record = json.loads(line)
                count += 1
                total += record["id"]
        if count == n:
            done.set()

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        nursery.start_soon(clients, port, data)
        await done.wait()
        nursery.cancel_scope.cancel()
    return count, total


def workload(n: int, reps: int) -> Workload:
    variants = []
    targets = []
    for conns in (10, 1000):
        variants += [
            Variant(f"plain_{conns}", run_with(conns, plain_server),
                    f"trio.serve_listeners + split/json.loads per chunk, {conns} connections", n),
            Variant(f"trioflow_{conns}", run_with(conns, trioflow_server),
                    f"tcp_source(decode=json.loads) | sink, {conns} connections", n),
        ]
        targets.append(Target(f"tcp_source throughput vs plain Trio, {conns} connections",
                              f"plain_{conns}", f"trioflow_{conns}", 0.8, at_most=False,
                              fmt="{:.1%}"))
    return Workload(
        name="tcp",
        title=f"{n:,} NDJSON records over loopback TCP, parsed by the server",
        baseline="plain_10",
        expected=(n, n * (n - 1) // 2),
        reps=reps,
        variants=variants,
        targets=targets,
        notes=["clients run in the same process and trio.run as the server (both variants)"],
    )

