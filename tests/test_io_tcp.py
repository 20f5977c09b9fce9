"""tcp_source against real sockets on 127.0.0.1, and its framers as pure state machines.

Timing: these tests use the real clock (socket I/O would let an autojump clock leap), so
they wait for conditions (``until``) with generous bounds and never assert a duration.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
import trioflow.io as tfio
from trioflow.io import FrameError, LengthPrefixed, Lines

HOST = "127.0.0.1"


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait (polling) until ``predicate()`` holds; fail after ``within`` seconds. Polling:
    what is awaited happens in the kernel and in the server's tasks, not in an Event."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


class Server:
    """A tcp_source run into a sink that collects, with its dead letters."""

    def __init__(self) -> None:
        self.out: list[Any] = []
        self.dead: list[tf.DeadLetterEntry] = []
        self.servers: list[tfio.TcpServer] = []
        self.handle: tf.RunHandle[Any]

    @property
    def port(self) -> int:
        return self.servers[0].port

    def stats(self) -> tfio.TcpStatistics:
        return self.servers[0].statistics()

    def rejected(self) -> list[tuple[int, int, str]]:
        """(connection id, line, reason) of each dead letter."""
        return [(d.item.connection.id, d.item.line, d.item.reason) for d in self.dead]

    async def start(self, nursery: trio.Nursery, *, sink: Any = None, buffer: int = 512,
                    stages: tuple[Any, ...] = (), **kw: Any) -> Server:
        flow: Any = tfio.tcp_source(0, host=HOST, on_listening=self.servers.append,
                                    rejects=tf.DeadLetter(self.dead), **kw)
        for stage in stages:
            flow = flow | stage
        pipeline = flow | (sink or tf.sink(self.out.append))
        self.handle = await nursery.start(lambda task_status: pipeline.run(
            buffer=buffer, task_status=task_status))
        return self

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(HOST, self.port)


def shape(record: bytes) -> dict[str, Any]:
    """decode: JSON object ``{"id": int, "sensor": str, "value": number}``, validated."""
    value = json.loads(record)
    if not isinstance(value, dict) or not isinstance(value.get("id"), int) \
            or not isinstance(value.get("sensor"), str) \
            or not isinstance(value.get("value"), int | float):
        raise ValueError(f"not a reading: {value!r}")
    return value


def reading(i: int) -> bytes:
    return json.dumps({"id": i, "sensor": f"s{i % 3}", "value": i / 2}).encode() + b"\n"


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


# ------------------------------------------------------------------------------ framers


def feed_split(framer: tfio.Framer, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        out.extend(framer.feed(data[a:b]))
    return out


def describe(frames: list[Any]) -> list[Any]:
    return [f.reason if isinstance(f, FrameError) else f for f in frames]


lines_st = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30)


@given(lines=lines_st, cuts=st.lists(st.integers(0, 10_000), max_size=12),
       crlf=st.booleans(), max_frame=st.integers(1, 10))
@settings(max_examples=300, deadline=None)
def test_line_framer_is_independent_of_chunk_boundaries(
    lines: list[bytes], cuts: list[int], crlf: bool, max_frame: int
) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = b"".join(line + end for line in lines)
    got = describe(feed_split(Lines(max_frame=max_frame).framer(), data, cuts))
    expected: list[Any] = []
    for line in lines:
        body = line[:-1] if not crlf and line.endswith(b"\r") else line
        if len(body) > max_frame:
            expected.append(f"line longer than max_frame ({max_frame} bytes)")
        elif not body:
            expected.append("empty line")
        else:
            expected.append(body)
    assert got == expected


@given(frames=st.lists(st.binary(max_size=40), max_size=20),
       cuts=st.lists(st.integers(0, 10_000), max_size=12), header=st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=200, deadline=None)
def test_length_prefix_framer_is_independent_of_chunk_boundaries(
    frames: list[bytes], cuts: list[int], header: int
) -> None:
    data = b"".join(len(f).to_bytes(header, "big") + f for f in frames)
    framer = LengthPrefixed(header=header, max_frame=40).framer()
    assert feed_split(framer, data, cuts) == frames
    assert framer.tail() == b""


def test_line_framer_keeps_the_tail_and_bounds_an_oversized_line() -> None:
    framer = Lines(max_frame=8).framer()
    assert framer.feed(b"abc\nde") == [b"abc"]
    assert framer.tail() == b"de"
    # the line grows past max_frame + 1 before its newline: rejected at once, then skipped
    assert describe(framer.feed(b"fghijklm")) == ["line longer than max_frame (8 bytes)"]
    assert framer.tail() == b""
    assert framer.feed(b"more and more") == []
    assert framer.feed(b"end\nok\n") == [b"ok"]
    rejected = Lines(max_frame=4).framer().feed(b"x" * 2000 + b"\n")
    assert isinstance(rejected[0], FrameError) and rejected[0].raw == b"x" * 1024


def test_line_framer_empty_lines_crlf_and_skip_empty() -> None:
    assert describe(Lines().framer().feed(b"a\r\n\r\n\nb\n")) == [b"a", "empty line", "empty line", b"b"]
    assert Lines(skip_empty=True).framer().feed(b"a\n\r\nb\n") == [b"a", None, b"b"]


def test_length_prefix_oversized_is_fatal() -> None:
    framer = LengthPrefixed(header=2, max_frame=5).framer()
    out = framer.feed(b"\x00\x02hi\x00\x09toolong..\x00\x01x")
    assert out[0] == b"hi"
    assert isinstance(out[1], FrameError) and out[1].fatal and len(out) == 2
    assert framer.feed(b"\x00\x01y") == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"port": -1}, "port of tcp_source"),
    ({"port": 0, "max_connections": 0}, "max_connections of tcp_source"),
    ({"port": 0, "idle_timeout": 0}, "idle_timeout of tcp_source"),
    ({"port": 0, "linger": None}, "linger of tcp_source"),
    ({"port": 0, "framing": "lines"}, "framing of tcp_source"),
    ({"port": 0, "rejects": tf.Fail()}, "rejects of tcp_source"),
    ({"port": 0, "decode": 3}, "decode of tcp_source"),
    ({"port": 0, "replies": True}, "replies of tcp_source"),
])
def test_bad_arguments_fail_at_definition(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(tf.DefinitionError, match=match):
        tfio.tcp_source(**kwargs)


def test_bad_framing_arguments_fail_at_definition() -> None:
    with pytest.raises(ValueError, match="max_frame of Lines"):
        Lines(max_frame=0)
    with pytest.raises(ValueError, match="header of LengthPrefixed"):
        LengthPrefixed(header=3)
    with pytest.raises(ValueError, match="buffer of Replies"):
        tfio.Replies(buffer=0)
    with pytest.raises(ValueError, match="timeout of Replies"):
        tfio.Replies(timeout=0)


def test_io_names_are_exported_once_and_documented() -> None:
    assert len(tfio.__all__) == len(set(tfio.__all__))
    for name in tfio.__all__:
        assert (getattr(tfio, name).__doc__ or "").strip(), name
    doc = (tfio.tcp_source.__doc__ or "").lower()
    for word in ("emits", "backpressure", "completes", "cancelled", "on error"):
        assert word in doc


# --------------------------------------------------------------------------- serving


async def test_records_of_each_connection_arrive_in_order_and_port_is_known(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, decode=shape, linger=0.2)
    assert s.port > 0 and s.servers[0].addresses[0][0] == HOST
    a, b = await s.connect(), await s.connect()
    await a.send_all(b"".join(reading(i) for i in range(0, 50)))
    await b.send_all(b"".join(reading(i) for i in range(100, 150)))
    await until(lambda: len(s.out) == 100)
    ids = [r["id"] for r in s.out]
    assert [i for i in ids if i < 100] == list(range(50))
    assert [i for i in ids if i >= 100] == list(range(100, 150))
    st_ = s.stats()
    assert (st_.connections, st_.open, st_.records, st_.rejected) == (2, 2, 100, 0)
    assert await s.handle.drain(10) is tf.RunState.COMPLETED
    assert s.stats().open == 0


async def test_two_runs_on_port_zero_do_not_interfere(nursery: trio.Nursery) -> None:
    s1, s2 = await Server().start(nursery), await Server().start(nursery)
    assert s1.port != s2.port
    c1, c2 = await s1.connect(), await s2.connect()
    await c1.send_all(b"one\n")
    await c2.send_all(b"two\nthree\n")
    await until(lambda: len(s1.out) == 1 and len(s2.out) == 2)
    assert (s1.out, s2.out) == ([b"one"], [b"two", b"three"])
    assert (s1.stats().records, s2.stats().records) == (1, 2)


async def test_bad_input_is_rejected_per_record_with_connection_and_line(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, decode=shape, replies=tfio.Replies(ok=lambda r: None))
    good = await s.connect()
    bad = await s.connect()
    await bad.send_all(
        reading(1)
        + b'{"id": 2, "sensor": \n'  # malformed JSON
        + b'[1, 2, 3]\n'  # valid JSON, wrong shape
        + b'{"id": 3, "sensor": "x", "value": 1.5}\n'
        + b'"\xff\xfe caf\xc3"\n'  # invalid UTF-8
        + bytes(range(256)).replace(b"\n", b"") + b"\n"  # binary garbage
        + b"\n"  # empty line
        + b'{"id": 4, "sensor": "x", "value": "high"}\n'  # wrong type inside
        + reading(5)
    )
    await good.send_all(reading(100))
    await until(lambda: len(s.out) == 4 and len(s.dead) == 6)
    assert sorted(r["id"] for r in s.out) == [1, 3, 5, 100]
    bad_id = s.dead[0].item.connection.id
    assert [(c, line) for c, line, _ in s.rejected()] == [(bad_id, n) for n in (2, 3, 5, 6, 7, 8)]
    reasons = [reason for _, _, reason in s.rejected()]
    assert reasons[0].startswith("JSONDecodeError")
    assert reasons[1].startswith("ValueError: not a reading")
    assert reasons[2].startswith("UnicodeDecodeError")
    assert reasons[4] == "empty line"
    assert all(isinstance(d.exception, Exception) for d in s.dead)
    assert s.dead[0].item.raw == b'{"id": 2, "sensor": '
    assert s.dead[0].item.connection.peer.startswith("127.0.0.1:")
    assert s.stats().rejected == 6
    # and they are the source stage's dead letters in the run's statistics (what the
    # dashboard and the metrics show), not only in the connector's own counters
    [source] = [st for st in s.handle.statistics().stages if st.operator == "source"]
    assert source.dead_lettered == 6 and source.skipped == 0
    # each rejection is answered on the connection that sent it, one line each
    await bad.send_eof()
    replies = (await read_all(bad)).decode().splitlines()
    assert [r.split(" ", 2)[:2] for r in replies] == [["err", str(n)] for n in (2, 3, 5, 6, 7, 8)]
    # the good connection was never affected
    await good.send_all(reading(101))
    await until(lambda: len(s.out) == 5)


async def test_oversized_line_is_rejected_and_the_connection_goes_on(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, framing=Lines(max_frame=100))
    c = await s.connect()
    await c.send_all(b"first\n" + b"y" * 50)
    await c.send_all(b"y" * 200)  # now over the limit, before its newline
    await until(lambda: len(s.dead) == 1)
    await c.send_all(b"y" * 5000 + b"\nafter\n" + b"z" * 101 + b"\nlast\n")
    await until(lambda: len(s.out) == 3 and len(s.dead) == 2)
    assert s.out == [b"first", b"after", b"last"]
    assert [(line, reason) for _, line, reason in s.rejected()] == [
        (2, "line longer than max_frame (100 bytes)"), (4, "line longer than max_frame (100 bytes)")]
    assert s.dead[0].item.raw.startswith(b"y" * 200)


async def test_slow_loris_is_closed_after_idle_timeout(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, idle_timeout=0.2)
    loris = await s.connect()
    active = await s.connect()
    await loris.send_all(b"complete\nhalf a li")
    talking = trio.CancelScope()

    async def keep_talking() -> None:
        with talking:
            while True:
                await active.send_all(b"ping\n")
                await trio.sleep(0.02)

    nursery.start_soon(keep_talking)
    # the server closes the silent client: it reads EOF; the talking one stays open
    assert await read_all(loris) == b""
    await loris.aclose()  # the server lingers until the client closes its side too
    await until(lambda: s.stats().open == 1)
    assert s.stats().idle_closed == 1
    talking.cancel()
    assert s.out[0] == b"complete" and b"ping" in s.out
    assert s.rejected() == [(1, 2, "idle for 0.2 s: incomplete record dropped (9 bytes)")]
    assert s.stats().partial == 1


async def test_idle_close_flushes_the_replies_first(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, idle_timeout=0.2, replies=tfio.Replies())
    c = await s.connect()
    await c.send_all(b"\n")
    assert (await read_all(c)).startswith(b"err 1 empty line\n")
    assert s.stats().idle_closed == 1


async def test_disconnect_mid_line_dead_letters_the_partial_record(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery)
    c = await s.connect()
    await c.send_all(b"one\ntwo\nthr")
    await c.aclose()
    await until(lambda: len(s.dead) == 1)
    assert s.out == [b"one", b"two"]
    assert s.rejected()[0][1:] == (3, "connection closed mid-record (3 bytes)")
    assert s.dead[0].item.raw == b"thr"
    await until(lambda: s.stats().open == 0)


async def test_abrupt_reset_is_counted_and_harms_nobody(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery)
    other = await s.connect()
    raw = socket.create_connection((HOST, s.port))
    raw.sendall(b"ok line\nhalf")
    await until(lambda: s.out == [b"ok line"])
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST
    await until(lambda: s.stats().open == 1)
    st_ = s.stats()
    # Linux reports the RST on the server's next read as ECONNRESET
    assert st_.resets == 1
    assert s.rejected() == [(2, 2, "connection reset mid-record (4 bytes)")]  # connection #2, line 2
    assert (st_.partial, st_.rejected) == (1, 1)
    await other.send_all(b"still here\n")
    await until(lambda: s.out == [b"ok line", b"still here"])


async def test_binary_garbage_on_a_raw_socket(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, decode=json.loads)
    raw = socket.create_connection((HOST, s.port))
    raw.sendall(bytes(range(256)) * 20 + b"\n")
    raw.close()
    await until(lambda: s.stats().open == 0 and s.stats().connections == 1)
    assert s.out == [] and s.stats().rejected == len(s.dead) == 21  # 20 lines between the \n + 1
    assert all(line == n for (_, line, _), n in zip(s.rejected(), range(1, 22), strict=True))


async def test_connections_over_the_limit_are_refused_with_a_reason(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, max_connections=2)
    a, b = await s.connect(), await s.connect()
    await until(lambda: s.stats().open == 2)
    extra = await s.connect()
    assert await read_all(extra) == b"error: too many connections (limit 2)\n"
    assert s.stats().refused == 1
    await a.send_all(b"a\n")
    await b.send_all(b"b\n")
    await until(lambda: sorted(s.out) == [b"a", b"b"])
    await a.aclose()
    await until(lambda: s.stats().open == 1)
    c = await s.connect()
    await c.send_all(b"c\n")
    await until(lambda: b"c" in s.out)
    assert s.stats().connections == 3


async def test_length_prefixed_frames_and_a_fatal_prefix(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, framing=LengthPrefixed(header=2, max_frame=10),
                             replies=tfio.Replies())
    good, bad = await s.connect(), await s.connect()
    await bad.send_all(b"\x00\x03abc\x00\x00" + b"\x01\x00" + b"x" * 256)
    replies = (await read_all(bad)).splitlines()
    assert sorted(replies) == [b"err 3 length prefix 256 exceeds max_frame (10 bytes); the stream cannot be "
                               b"resynchronised", b"ok 1", b"ok 2"]
    await good.send_all(b"\x00\x02hi")
    await until(lambda: len(s.out) == 3)
    assert sorted(s.out) == [b"", b"abc", b"hi"]
    assert (s.stats().frame_errors, s.rejected()[0][1]) == (1, 3)


async def test_backpressure_reaches_the_socket(nursery: trio.Nursery) -> None:
    """A fast client, a sink that stops: the source holds at most one chunk, the edge holds
    its buffer, and the rest stays in the client (TCP flow control), not in the server."""
    release = trio.Event()
    consumed: list[bytes] = []

    async def stuck(x: bytes) -> None:
        if len(consumed) >= 100:
            await release.wait()
        consumed.append(x)

    s = await Server().start(nursery, sink=tf.sink(stuck), buffer=256)
    line = b"x" * 99 + b"\n"
    block = line * 655  # 65.5 kB
    total = 4000  # blocks: 262 MB, far more than the kernel buffers
    sent = 0
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client.connect((HOST, s.port))
    client.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))

    pushing = trio.CancelScope()

    async def push() -> None:
        nonlocal sent
        with pushing:
            for _ in range(total):
                await stream.send_all(block)
                sent += len(block)

    nursery.start_soon(push)
    # wait until the client can send no more: nothing moved for a while
    last = -1
    with trio.fail_after(60):
        while sent != last:
            last = sent
            await trio.sleep(0.3)
    stats = s.stats()
    print(f"client sent {sent:,} B, server received {stats.bytes_received:,} B, {stats}")
    assert sent < total * len(block), "the client was never slowed down"
    held_by_server = stats.bytes_received // len(line) - len(consumed)
    # one chunk decoded (held) + the edge's buffer + one chunk the edge took whole
    per_chunk = 65536 // len(line) + 1
    assert stats.held <= per_chunk and stats.peak_held <= per_chunk
    assert held_by_server <= 256 + 3 * per_chunk
    pushing.cancel()
    release.set()
    await until(lambda: len(consumed) >= stats.bytes_received // len(line))
    await stream.aclose()


async def test_drain_finishes_connections_and_refuses_the_backlog(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, replies=tfio.Replies(ok=lambda r: None), linger=0.2)
    c = await s.connect()
    await c.send_all(b"one\ntwo\n\nthr")
    await until(lambda: len(s.out) == 2 and len(s.dead) == 1)
    # a client whose connect completed just before the drain, not accepted yet
    queued = socket.create_connection((HOST, s.port))
    port = s.port
    state = await s.handle.drain(10)  # no checkpoint in between: the accept loop never ran
    assert state is tf.RunState.COMPLETED
    assert s.out == [b"one", b"two"]
    assert s.rejected()[1][1:] == (4, "server draining: incomplete record dropped (3 bytes)")
    assert await read_all(c) == (
        b"err 3 empty line\nerr 4 server draining: incomplete record dropped (3 bytes)\n")
    queued.settimeout(10)
    got = b""
    while chunk := queued.recv(100):
        got += chunk
    assert got == b"error: server is shutting down\n"
    assert s.stats().refused == 1
    with pytest.raises(OSError):
        await trio.open_tcp_stream(HOST, port)


async def test_a_client_that_never_reads_its_replies_is_closed_alone(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, replies=tfio.Replies(buffer=8, timeout=0.3))
    deaf = socket.socket()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.connect((HOST, s.port))
    deaf.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(deaf))
    other = await s.connect()

    async def flood() -> None:
        # every line is rejected (empty), so every line queues a reply at once
        with pytest.raises(trio.BrokenResourceError):
            while True:
                await stream.send_all(b"\n" * 65536)

    async with trio.open_nursery() as inner:
        inner.start_soon(flood)
        await until(lambda: s.stats().reply_stalls == 1, within=30)
    assert s.stats().replies_dropped >= 1
    await other.send_all(b"\n")
    assert await other.receive_some(100) == b"err 1 empty line\n"
    assert s.stats().open == 1


@st.composite
def traffic(draw: st.DrawFn) -> tuple[list[list[bytes]], list[list[int]]]:
    n = draw(st.integers(1, 4))
    records = [[f"{c}:{i}:{'p' * draw(st.integers(0, 30))}".encode() for i in range(draw(st.integers(0, 40)))]
               for c in range(n)]
    cuts = [draw(st.lists(st.integers(0, 5000), max_size=6)) for _ in range(n)]
    return records, cuts


@given(t=traffic(), replies=st.booleans())
@settings(max_examples=30, deadline=None)
def test_records_split_anywhere_arrive_exactly_once_in_connection_order(
    t: tuple[list[list[bytes]], list[list[int]]], replies: bool
) -> None:
    """And with replies: each connection gets exactly one ``ok <line>`` per line."""
    records, cuts = t

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            s = await Server().start(nursery, buffer=4,
                                     replies=tfio.Replies() if replies else None)

            async def client(c: int) -> None:
                stream = await s.connect()
                data = b"".join(r + b"\n" for r in records[c])
                bounds = [0, *sorted(x % (len(data) + 1) for x in cuts[c]), len(data)]
                for a, b in itertools.pairwise(bounds):
                    if b > a:
                        await stream.send_all(data[a:b])
                        await trio.lowlevel.checkpoint()
                if replies:
                    await stream.send_eof()
                    answers = (await read_all(stream)).decode().splitlines()
                    assert sorted(answers) == sorted(f"ok {n}" for n in range(1, len(records[c]) + 1))
                await stream.aclose()

            async with trio.open_nursery() as clients:
                for c in range(len(records)):
                    clients.start_soon(client, c)
            total = sum(map(len, records))
            await until(lambda: len(s.out) == total and s.stats().open == 0)
            for c, expected in enumerate(records):
                assert [r for r in s.out if r.startswith(f"{c}:".encode())] == expected
            assert s.dead == []
            await s.handle.drain(10)

    trio.run(main)


# ----------------------------------------------------------------------------- replies


async def test_replies_ok_after_commit_err_after_rejection_one_per_line(nursery: trio.Nursery) -> None:
    committed: set[int] = set()
    early: list[int] = []
    letters: list[tf.DeadLetterEntry] = []

    def ok(record: tfio.Received[dict[str, Any]]) -> str:
        if record.value["id"] not in committed:
            early.append(record.value["id"])
        return f"ok {record.value['id']}"

    def check(r: dict[str, Any]) -> dict[str, Any]:
        if r["value"] < 0:
            raise ValueError("negative value")
        return r

    async def store(batch: list[dict[str, Any]]) -> None:
        await trio.sleep(0.001)  # the "transaction"
        committed.update(r["id"] for r in batch)

    s = await Server().start(
        nursery, decode=shape, replies=tfio.Replies(ok=ok),
        stages=(tf.map(check, on_error=tf.DeadLetter(letters)), tf.batch(7, timeout=0.01)),
        sink=tf.sink(store))
    lines = []
    for i in range(60):
        if i % 10 == 3:
            lines.append(b'{"id": oops}\n')
        elif i % 7 == 5:
            lines.append(json.dumps({"id": i, "sensor": "s", "value": -1}).encode() + b"\n")
        else:
            lines.append(reading(i))
    c = await s.connect()
    for k in range(0, 60, 13):
        await c.send_all(b"".join(lines[k : k + 13]))
    await c.send_eof()
    replies = (await read_all(c)).decode().splitlines()  # the server closes after the last
    assert len(replies) == 60 and early == []
    oks = {int(r.split()[1]) for r in replies if r.startswith("ok ")}
    errs = {int(r.split()[1]): r for r in replies if r.startswith("err ")}
    assert oks == {i for i in range(60) if i % 10 != 3 and i % 7 != 5} == committed
    assert set(errs) == {i + 1 for i in range(60) if i % 10 == 3 or i % 7 == 5}
    assert errs[13] == "err 13 ValueError: negative value"  # failed downstream (id 12)
    assert errs[4].startswith("err 4 JSONDecodeError")  # rejected by the source
    assert len(letters) == len([i for i in range(60) if i % 7 == 5 and i % 10 != 3])
    assert s.stats().replies_sent == 60


async def test_a_batch_right_after_the_source_answers_per_chunk_exactly_once(nursery: trio.Nursery) -> None:
    """The per-chunk path: the source hands each chunk to the batch whole (no wrapper per
    record); one batch fails (skipped) and its records, only those, are answered ``err``;
    records the source rejected keep their own line numbers; every other record is answered
    ``ok`` once it is committed."""
    committed: set[int] = set()
    failed: list[list[int]] = []
    early: list[int] = []

    def ok(record: tfio.Received[dict[str, Any]]) -> str:
        if record.value["id"] not in committed:
            early.append(record.value["id"])
        return f"ok {record.value['id']} line {record.line}"

    async def store(batch: list[dict[str, Any]]) -> None:
        await trio.sleep(0.001)  # the "transaction"
        ids = [r["id"] for r in batch]
        if 40 in ids and not failed:
            failed.append(ids)
            raise ValueError("constraint violated")
        committed.update(ids)

    s = await Server().start(
        nursery, decode=shape, replies=tfio.Replies(ok=ok),
        stages=(tf.batch(8, timeout=0.01),), sink=tf.sink(store, on_error=tf.Skip()))
    n = 120
    lines = [b"not json\n" if i % 25 == 11 else reading(i) for i in range(n)]  # line i + 1
    c = await s.connect()
    for k in range(0, n, 50):  # chunks of many records, each cut by batches of 8
        await c.send_all(b"".join(lines[k : k + 50]))
    await c.send_eof()
    replies = (await read_all(c)).decode().splitlines()
    assert len(replies) == n and early == []
    bad_input = {i for i in range(n) if i % 25 == 11}
    (lost,) = failed
    oks = {int(r.split()[1]): r for r in replies if r.startswith("ok ")}
    errs = {int(r.split()[1]): r for r in replies if r.startswith("err ")}
    assert set(oks) == committed == set(range(n)) - bad_input - set(lost)
    assert all(r == f"ok {i} line {i + 1}" for i, r in oks.items())
    assert set(errs) == {i + 1 for i in bad_input | set(lost)}
    assert all(errs[i + 1] == f"err {i + 1} ValueError: constraint violated" for i in lost)
    assert s.stats().replies_sent == n


async def test_drain_commits_and_answers_what_was_read_before_closing(nursery: trio.Nursery) -> None:
    release = trio.Event()
    stored: list[bytes] = []

    async def slow(x: bytes) -> None:
        await release.wait()
        stored.append(x)

    s = await Server().start(nursery, sink=tf.sink(slow), replies=tfio.Replies(), linger=0.5)
    c = await s.connect()
    await c.send_all(b"".join(b"r%d\n" % i for i in range(20)) + b"partial")
    await until(lambda: s.stats().records == 20)
    states: list[tf.RunState] = []

    async def drain() -> None:
        states.append(await s.handle.drain(30))

    nursery.start_soon(drain)
    await until(lambda: s.stats().partial == 1)  # reading stopped
    assert s.stats().replies_sent == 1  # only the partial record's rejection: nothing committed
    release.set()
    replies = (await read_all(c)).decode().splitlines()
    assert sorted(replies) == sorted([f"ok {n}" for n in range(1, 21)]
                                     + ["err 21 server draining: incomplete record dropped (7 bytes)"])
    await until(lambda: bool(states))
    assert states == [tf.RunState.COMPLETED] and len(stored) == 20


async def test_a_client_waiting_for_its_replies_is_not_idle(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(x: bytes) -> None:
        await release.wait()

    s = await Server().start(nursery, sink=tf.sink(slow), replies=tfio.Replies(), idle_timeout=0.05)
    c = await s.connect()
    await c.send_all(b"a\nb\n")
    await until(lambda: s.stats().records == 2)
    await trio.sleep(0.5)  # ten idle timeouts, while its records wait downstream
    assert (s.stats().idle_closed, s.stats().open) == (0, 1)
    release.set()
    assert sorted((await read_all(c)).decode().splitlines()) == ["ok 1", "ok 2"]
    assert s.stats().idle_closed == 1  # once answered, it is idle


async def test_a_thousand_connections_held_at_once(nursery: trio.Nursery) -> None:
    s = await Server().start(nursery, max_connections=1000, replies=tfio.Replies())
    streams = [await s.connect() for _ in range(1000)]
    await until(lambda: s.stats().open == 1000)
    answers: dict[int, list[str]] = {}

    async def client(c: int) -> None:
        await streams[c].send_all(b"".join(b"%d:%d\n" % (c, i) for i in range(20)))
        await streams[c].send_eof()
        answers[c] = (await read_all(streams[c])).decode().splitlines()

    async with trio.open_nursery() as clients:
        for c in range(1000):
            clients.start_soon(client, c)
    assert all(sorted(a) == sorted(f"ok {n}" for n in range(1, 21)) for a in answers.values())
    assert len(answers) == 1000 and len(s.out) == 20_000
    for c in (0, 499, 999):
        assert [r for r in s.out if r.startswith(b"%d:" % c)] == [b"%d:%d" % (c, i) for i in range(20)]
    st_ = s.stats()
    assert (st_.connections, st_.refused, st_.records, st_.replies_sent) == (1000, 0, 20_000, 20_000)


async def test_a_burst_of_replies_beyond_the_buffer_pauses_reading_not_the_client(
    nursery: trio.Nursery,
) -> None:
    # regression: acknowledgements arrive in batches far larger than the buffer; a client
    # that reads its replies must get them all (reading pauses), never be closed for it
    s = await Server().start(nursery, replies=tfio.Replies(buffer=16, timeout=5))
    c = await s.connect()
    n = 20_000
    answers: list[bytes] = []

    async def read() -> None:
        answers.extend((await read_all(c)).splitlines())

    async with trio.open_nursery() as inner:
        inner.start_soon(read)
        await c.send_all(b"".join(b"%d\n" % i for i in range(n)))
        await c.send_eof()
    assert sorted(answers) == sorted(b"ok %d" % i for i in range(1, n + 1))
    assert (s.stats().reply_stalls, s.stats().replies_dropped) == (0, 0)
