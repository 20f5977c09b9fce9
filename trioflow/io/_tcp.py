"""A TCP server as a push source: ``tcp_source(port, ...)``.

Theory of operation. Each run of the flow opens its own listeners (``trio.open_tcp_listeners``)
and builds a fresh ``TcpServer``, the live object that holds the connections and counters
of that run (nothing is shared between runs). An accept loop per listener admits
connections into a handler nursery; each connection is one task that

1. waits for a chunk (``receive_some``) under two scopes: the drain scope
   (``emit.cancel_on_drain()``) and the idle timer;
2. feeds the chunk to its framer (``_framing``), which returns the records the chunk
   completed and keeps the partial tail;
3. decodes each record (``decode=``; a failure rejects that record only), delivers the
   rejections to the ``rejects`` policy with the connection and the record's number, and
   hands the chunk's good records on with *one* ``emit.many`` call.

While downstream is full, ``emit.many`` waits, so the task does not call ``receive_some``:
the socket's receive buffer fills and TCP flow control slows the client. What the source
holds is therefore bounded per connection by one chunk (``RECEIVE_SIZE`` bytes and the
records decoded from it) plus one partial record (at most ``max_frame`` bytes).

Replies. With ``replies=Replies(...)`` a connection also has a reply queue and a writer
task. A rejection is answered at once; an accepted record is answered when the pipeline
settles it (``_settle``, the source's ``on_ack``, called with the records' tokens).
Appending to the queue never waits, so acknowledgements never wait for a client; the
bound is applied to the reader: while ``Replies.buffer`` replies or more are unsent, the
connection does not read its client (which then slows down like any client under
backpressure). A client that does not read at all leaves the writer stuck; after
``Replies.timeout`` without progress that connection (only) is closed and counted
(``reply_stalls``). So a connection's queue holds at most ``buffer`` replies plus those of
the records it had already handed on. Before a connection is closed gracefully, its
reader waits until every record it handed on was settled and the writer has written the
queue.

Drain. The accept loops run under ``emit.cancel_on_drain()``; when a drain begins, they
stop, the connections already completed in the listen backlog are accepted without
waiting and refused with a reason line (so their clients see an orderly close, not a
reset), and the listeners are closed. Each connection stops reading (its wait is under the
same drain scope): the records of chunks already received are handed on (``emit`` keeps
working during a drain), a partial record is rejected as incomplete, replies are flushed,
and the connection is closed gracefully (send EOF, read and discard until the client
closes, bounded by ``linger``). The source returns when the last connection is closed.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Callable
from itertools import repeat
from typing import Any, Generic, NamedTuple, TypeVar, cast, final, overload

import attrs
import trio

from .._acks import Settled, per_chunk
from .._errors import DefinitionTypeError, DefinitionValueError
from .._flow import Flow
from .._operators import source
from .._policies import DeadLetter, Guard, Skip
from .._runtime import Emit
from ._framing import RAW_KEPT, Frame, FrameError, Framer, Framing, Lines

T = TypeVar("T")

logger = logging.getLogger("trioflow")

#: Bytes asked of the socket per ``receive_some``.
RECEIVE_SIZE = 64 * 1024
#: Replies are written in pieces of this size, each within ``Replies.timeout``.
REPLY_PIECE = 64 * 1024
#: How long a refused connection (over the limit, or in the backlog at a drain) may take
#: to receive its reason line before it is closed anyway.
REFUSE_TIMEOUT = 1.0
#: ``accept`` errors that mean "out of resources, try again shortly" (as trio.serve_listeners).
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: What a framer returns besides frames: rejections and skipped records.
_SPECIAL = (FrameError, type(None))


@final
@attrs.frozen(kw_only=True)
class ConnectionInfo:
    """Which connection a record came from: a number unique within the run (from 1, in
    order of acceptance) and the peer's address as ``host:port``."""

    id: int
    peer: str

    def __str__(self) -> str:
        return f"#{self.id} {self.peer}"


@final
@attrs.frozen(kw_only=True)
class Rejected:
    """A record the source rejected (the ``item`` of its ``DeadLetterEntry``): the
    connection, the record's number on that connection (from 1), its first KiB and the
    reason (one line). The entry's ``exception`` is the error (a ``FrameError``, or what
    ``decode`` raised)."""

    connection: ConnectionInfo
    line: int
    raw: bytes
    reason: str


@final
class Received(NamedTuple, Generic[T]):
    """A record accepted by the source, as the reply functions see it: the decoded value,
    its connection and its number on that connection (from 1). (A named tuple: one is made
    per reply, so it is cheap to build.)"""

    value: T
    connection: ConnectionInfo
    line: int


def _default_ok(record: Received[Any]) -> str:
    return f"ok {record.line}"


def _default_err(line: int, reason: str) -> str:
    return f"err {line} {reason}"


@final
@attrs.frozen(kw_only=True)
class Replies:
    """Answer on the connection that sent each record, one line per record.

    * ``ok(record)``: the reply for a record the pipeline settled without error (committed
      or filtered out); default ``"ok <line>"``.
    * ``err(line, reason)``: the reply for a record rejected by the source (framing or
      ``decode``) or failed downstream (skipped or dead-lettered); default
      ``"err <line> <reason>"``.
    * ``buffer``: while this many replies (or more) wait to be written to a connection,
      the source stops reading that connection (its client is slowed down by TCP, the
      pipeline and the other connections are not);
    * ``timeout``: a connection whose replies make no progress for this long (64 KiB not
      taken by the socket) is closed, as a client that does not read them (counted in
      ``reply_stalls``).

    A function returns the line without its ``\\n`` (a ``str``, encoded as UTF-8), or
    ``None`` for no reply. Replies are written in the order records are settled, which is
    not always the order they were sent: each names its record.
    """

    ok: Callable[[Received[Any]], str | None] = _default_ok
    err: Callable[[int, str], str | None] = _default_err
    buffer: int = 1024
    timeout: float = 30.0

    def __attrs_post_init__(self) -> None:
        for name in ("ok", "err"):
            if not callable(getattr(self, name)):
                raise DefinitionTypeError(
                    f"{name} of Replies must be a function, got {getattr(self, name)!r}")
        _check_int("buffer of Replies", self.buffer, 1)
        if self.timeout is None:
            raise DefinitionValueError("timeout of Replies must be a number of seconds > 0, got None")
        _check_seconds("timeout of Replies", self.timeout)


@final
@attrs.frozen(kw_only=True)
class TcpStatistics:
    """A snapshot of a TCP source's counters (``TcpServer.statistics()``)."""

    #: connections admitted (served), over the whole run
    connections: int
    #: connections open now
    open: int
    #: connections refused: over ``max_connections``, or found in the backlog at a drain
    refused: int
    #: connections closed by ``idle_timeout``
    idle_closed: int
    #: connections reset by the peer (or broken) while being read
    resets: int
    #: connections closed because a frame could not be resynchronised (fatal ``FrameError``)
    frame_errors: int
    #: connections closed because the client did not read its replies (``Replies.timeout``)
    reply_stalls: int
    bytes_received: int
    #: records handed on downstream
    records: int
    #: records rejected (framing, ``decode``, partial records at a close), each delivered
    #: to ``rejects``
    rejected: int
    #: of ``rejected``: partial records dropped when a connection ended mid-record
    partial: int
    #: empty lines skipped (``Lines(skip_empty=True)``)
    skipped: int
    #: records decoded and not yet handed on (waiting for room downstream), now
    held: int
    #: the highest ``held`` seen
    peak_held: int
    replies_sent: int
    #: replies not sent: their connection was closed first
    replies_dropped: int


def _check_int(what: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DefinitionValueError(f"{what} must be an int >= {minimum}, got {value!r}")


def _check_seconds(what: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise DefinitionValueError(f"{what} must be a number of seconds > 0 or None, got {value!r}")


def _one_line(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


class _Chunk:
    """What the pipeline carries back for the records of one received chunk (their
    acknowledgement token, one per chunk): the connection, the records' values and their
    line numbers (``lines``; ``None``: consecutive from ``line0 + 1``)."""

    __slots__ = ("conn", "line0", "lines", "values")

    def __init__(self, conn: _Connection, line0: int, lines: list[int] | None, values: list[Any]) -> None:
        self.conn = conn
        self.line0 = line0
        self.lines = lines
        self.values = values


_new_tuple = tuple.__new__


class _Connection:
    """The live state of one connection, and its replies.

    Replies are queued without waiting (``reply``), so the pipeline's acknowledgements never
    wait for a client. The bound is on the reader instead: while ``unsent`` (queued or being
    written) is at ``Replies.buffer`` or more, the connection does not read its client, so a
    client that does not read its replies stops being read too. The writer sends in pieces
    of ``REPLY_PIECE`` bytes; a piece that the socket does not take within
    ``Replies.timeout`` means the client has stopped reading: the connection is closed.
    """

    __slots__ = (
        "_all_settled", "_more", "_room", "closed", "finished", "info", "line", "pending", "queue",
        "queued", "scope", "server", "stream", "unsent",
    )

    def __init__(self, server: TcpServer, stream: trio.SocketStream, info: ConnectionInfo) -> None:
        self.server = server
        self.stream = stream
        self.info = info
        self.line = 0
        #: records handed on with a token and not yet settled
        self.pending = 0
        self._all_settled: trio.Event | None = None
        self.scope = trio.CancelScope()
        #: replies not yet handed to the writer (each entry one line or several)
        self.queue: list[bytes] = []
        #: how many replies ``queue`` holds
        self.queued = 0
        #: replies queued or being written
        self.unsent = 0
        #: no more replies will come: the writer ends once the queue is written
        self.finished = False
        #: the connection is closed: later replies are dropped
        self.closed = False
        self._more: trio.Event | None = None
        self._room: trio.Event | None = None

    def reply(self, text: str | None) -> None:
        """Queue one reply line; never waits."""
        if text is None:
            return
        if self.closed:
            self.server._replies_dropped += 1
            return
        self._queue((text + "\n").encode(), 1)

    def _queue(self, data: bytes, count: int) -> None:
        """Queue ``count`` reply lines, encoded together as ``data``; one wake-up."""
        self.queue.append(data)
        self.queued += count
        self.unsent += count
        if self._more is not None:
            self._more.set()

    def finish(self) -> None:
        self.finished = True
        if self._more is not None:
            self._more.set()

    async def wait_for_room(self, buffer: int) -> None:
        """Wait while ``buffer`` replies or more are unsent (the client reads them slowly)."""
        while self.unsent >= buffer:
            self._room = trio.Event()
            await self._room.wait()

    def settle(self, chunk: _Chunk, indices: list[int], errors: dict[int, BaseException] | None) -> None:
        """The pipeline is done with records of one of this connection's chunks (their
        ``indices`` in it; ``errors``: of those that failed, by index): their replies are
        queued as one piece."""
        replies = self.server.spec.replies
        count = len(indices)
        if replies is not None:
            texts = self._texts(replies, chunk, indices, errors)
            if self.closed:
                self.server._replies_dropped += len(texts)
            elif texts:
                self._queue(("\n".join(texts) + "\n").encode(), len(texts))
        self.pending -= count
        if self.pending == 0 and self._all_settled is not None:
            self._all_settled.set()

    def _texts(self, replies: Replies, chunk: _Chunk, indices: list[int],
               errors: dict[int, BaseException] | None) -> list[str]:
        """The reply lines of a chunk's settled records, in ``indices`` order."""
        ok, line0, lines, values = replies.ok, chunk.line0, chunk.lines, chunk.values
        if errors is None or not any(i in errors for i in indices):
            if ok is _default_ok:  # the common case, without a Received per record
                if lines is None:
                    return [f"ok {line0 + i + 1}" for i in indices]
                return [f"ok {lines[i]}" for i in indices]
            info = self.info
            if lines is None:
                texts = [ok(_new_tuple(Received, (values[i], info, line0 + i + 1))) for i in indices]
            else:
                texts = [ok(_new_tuple(Received, (values[i], info, lines[i]))) for i in indices]
            return cast(list[str], texts) if None not in texts else [t for t in texts if t is not None]
        out: list[str] = []
        for i in indices:
            line = line0 + i + 1 if lines is None else lines[i]
            error = errors.get(i)
            if error is not None:
                text = replies.err(line, _one_line(error))
            else:
                text = ok(_new_tuple(Received, (values[i], self.info, line)))
            if text is not None:
                out.append(text)
        return out

    async def wait_settled(self) -> None:
        if self.pending:
            self._all_settled = trio.Event()
            await self._all_settled.wait()

    async def write_replies(self, stall_after: float) -> None:
        server = self.server
        try:
            while True:
                while not self.queue:
                    if self.finished:
                        return
                    self._more = trio.Event()
                    await self._more.wait()
                batch, self.queue = self.queue, []
                count, self.queued = self.queued, 0
                data = b"".join(batch)
                for start in range(0, len(data), REPLY_PIECE):
                    with trio.move_on_after(stall_after) as stalled:
                        await self.stream.send_all(data[start : start + REPLY_PIECE])
                    if stalled.cancelled_caught:
                        server._reply_stalls += 1
                        logger.warning("trioflow: tcp connection %s has not read its replies for "
                                       "%g s: closed", self.info, stall_after)
                        self.scope.cancel()
                        return
                server._replies_sent += count
                self.unsent -= count
                if self._room is not None:
                    self._room.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()  # the client is gone: nothing more to read or answer


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@final
class TcpServer:
    """The live server of one run of a ``tcp_source``: given to ``on_listening`` once the
    listeners are bound (before ``nursery.start(flow.run)`` returns). Not built by users.

    ``addresses`` lists the bound ``(host, port)`` pairs, ``port`` the first one's port (the
    ephemeral port when the source asked for port 0); ``statistics()`` reads a snapshot of
    the counters.
    """

    def __init__(self, spec: _TcpSpec, emit: Emit[Any], listeners: list[trio.SocketListener]) -> None:
        self.spec = spec
        self._emit = emit
        self._guard = Guard(spec.name or "tcp_source", spec.rejects)
        emit._counts(self._guard)  # its rejections are the stage's skips or dead letters
        self._next_id = 0
        self._open = 0
        self._refused = 0
        self._idle_closed = 0
        self._resets = 0
        self._frame_errors = 0
        self._reply_stalls = 0
        self._bytes = 0
        self._records = 0
        self._rejected = 0
        self._partial = 0
        self._skipped = 0
        self._held = 0
        self._peak_held = 0
        self._replies_sent = 0
        self._replies_dropped = 0
        self.addresses: list[tuple[str, int]] = [
            (sockname[0], sockname[1]) for sockname in (lst.socket.getsockname() for lst in listeners)
        ]

    @property
    def port(self) -> int:
        """The port of the first listener (all listeners share it)."""
        return self.addresses[0][1]

    def statistics(self) -> TcpStatistics:
        """A frozen snapshot of the counters."""
        return TcpStatistics(
            connections=self._next_id, open=self._open, refused=self._refused,
            idle_closed=self._idle_closed, resets=self._resets, frame_errors=self._frame_errors,
            reply_stalls=self._reply_stalls, bytes_received=self._bytes, records=self._records,
            rejected=self._rejected, partial=self._partial, skipped=self._skipped, held=self._held,
            peak_held=self._peak_held, replies_sent=self._replies_sent,
            replies_dropped=self._replies_dropped,
        )

    # ------------------------------------------------------------------------ accepting

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.warning("trioflow: tcp accept failed (%s); waiting 100 ms", exc)
                await trio.sleep(0.1)
                continue
            self._admit(stream, handlers)

    def _admit(self, stream: trio.SocketStream, handlers: trio.Nursery) -> None:
        if self._open >= self.spec.max_connections:
            self._refused += 1
            reason = f"too many connections (limit {self.spec.max_connections})"
            handlers.start_soon(self._refuse, stream, reason)
            return
        self._next_id += 1
        self._open += 1
        info = ConnectionInfo(id=self._next_id, peer=_peer(stream))
        handlers.start_soon(self._serve_connection, _Connection(self, stream, info))

    def _accept_backlog(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """Accept, without waiting, the connections the kernel completed before the drain:
        their clients believe they are connected, so they get a reason and an orderly close
        instead of a reset when the listener closes."""
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as sock:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # BlockingIOError: the backlog is empty
                    return
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                self._refused += 1
                handlers.start_soon(self._refuse, stream, "server is shutting down")

    async def _refuse(self, stream: trio.SocketStream, reason: str) -> None:
        with trio.move_on_after(REFUSE_TIMEOUT):
            try:
                await stream.send_all(f"error: {reason}\n".encode())
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):  # read to EOF: close with a FIN
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)

    # ------------------------------------------------------------------------- reading

    async def _serve_connection(self, conn: _Connection) -> None:
        graceful = False
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    replies = self.spec.replies
                    if replies is not None:
                        nursery.start_soon(conn.write_replies, replies.timeout)
                    graceful = await self._read(conn)
                    if graceful:
                        await conn.wait_settled()  # every record handed on has its reply queued
                    conn.finish()  # the writer writes what is queued, then ends
                if graceful:
                    await self._close_gracefully(conn.stream)
        finally:
            self._open -= 1
            conn.closed = True
            self._replies_dropped += conn.unsent
            await trio.aclose_forcefully(conn.stream)

    async def _read(self, conn: _Connection) -> bool:
        """Read, frame and hand on records until the connection ends; return whether it
        may be closed gracefully (send EOF and linger)."""
        emit = self._emit
        framer = self.spec.framing.framer()
        receive = conn.stream.receive_some
        idle = self.spec.idle_timeout
        room = self.spec.replies.buffer if self.spec.replies is not None else None
        while True:
            try:
                with emit.cancel_on_drain() as drain:
                    if room is not None and conn.unsent >= room:
                        await conn.wait_for_room(room)
                    if idle is None:
                        data = await receive(RECEIVE_SIZE)
                    else:
                        while True:
                            with trio.move_on_after(idle) as timer:
                                data = await receive(RECEIVE_SIZE)
                            # a client waiting for the replies to what it sent is not idle
                            if not timer.cancelled_caught or not conn.pending:
                                break
            except trio.BrokenResourceError:
                self._resets += 1
                await self._reject_tail(conn, framer, "connection reset mid-record")
                return False
            if drain.cancelled_caught:
                await self._reject_tail(conn, framer, "server draining: incomplete record dropped")
                return True
            if idle is not None and timer.cancelled_caught:
                self._idle_closed += 1
                await self._reject_tail(conn, framer, f"idle for {idle:g} s: incomplete record dropped")
                return True
            if not data:
                await self._reject_tail(conn, framer, "connection closed mid-record")
                return True
            self._bytes += len(data)
            frames = framer.feed(data)
            if frames and not await self._hand_on(conn, frames):
                return True

    async def _hand_on(self, conn: _Connection, frames: list[Frame]) -> bool:
        """Decode a chunk's records and emit the good ones together; return False after a
        fatal framing error (the connection must close)."""
        line0 = conn.line
        if any(map(isinstance, frames, repeat(_SPECIAL, len(frames)))):
            values, numbered, go_on = await self._sort_out(conn, frames)
            lines: list[int] | None = numbered
        else:  # the hot path: every entry is a frame
            values, lines = await self._decode(conn, frames)
            go_on = True
        if values:
            n = len(values)
            self._held += n
            if self._held > self._peak_held:
                self._peak_held = self._held
            self._records += n  # before: the put may run the consumer before it returns
            try:
                if self.spec.replies is not None:
                    conn.pending += n
                    await self._emit._many_lot(values, _Chunk(conn, line0, lines, values))
                else:
                    await self._emit.many(values)
            finally:
                self._held -= n
        return go_on

    async def _decode(self, conn: _Connection, frames: list[Any]) -> tuple[list[Any], list[int] | None]:
        """Decode frames; reject those ``decode`` fails on. Returns the values and, when some
        failed, the line number of each value (else they are consecutive)."""
        decode = self.spec.decode
        line0 = conn.line
        conn.line = line0 + len(frames)
        if decode is None:
            return frames, None
        values: list[Any] = []
        failed: list[tuple[int, Exception]] = []
        rest = iter(frames)
        while True:
            try:
                # C-level loop; when decode raises, extend keeps the values before the
                # failure (as the fused operators rely on) and ``rest`` resumes after it
                values.extend(map(decode, rest))
                break
            except Exception as exc:  # a bad record: the loop goes on after it
                failed.append((len(values) + len(failed), exc))
        if not failed:
            return values, None
        for index, error in failed:
            await self._reject(conn, line0 + index + 1, frames[index], error)
        bad = {index for index, _ in failed}
        return values, [line0 + i + 1 for i in range(len(frames)) if i not in bad]

    async def _sort_out(self, conn: _Connection, frames: list[Frame]) -> tuple[list[Any], list[int], bool]:
        """The slow path, for a chunk with framing rejections or skipped records."""
        values: list[Any] = []
        lines: list[int] = []
        for frame in frames:
            if frame is None:
                conn.line += 1
                self._skipped += 1
            elif isinstance(frame, FrameError):
                conn.line += 1
                await self._reject(conn, conn.line, frame.raw, frame)
                if frame.fatal:
                    self._frame_errors += 1
                    return values, lines, False
            else:
                line0 = conn.line
                more, numbers = await self._decode(conn, [frame])
                values += more
                lines += [line0 + 1] if numbers is None else numbers
        return values, lines, True

    async def _reject(self, conn: _Connection, line: int, raw: bytes, exc: Exception) -> None:
        self._rejected += 1
        reason = _one_line(exc)
        rejected = Rejected(connection=conn.info, line=line, raw=raw[:RAW_KEPT], reason=reason)
        await self._guard.ahandle(exc, rejected)
        replies = self.spec.replies
        if replies is not None:
            conn.reply(replies.err(line, reason))

    async def _reject_tail(self, conn: _Connection, framer: Framer, reason: str) -> None:
        tail = framer.tail()
        if tail:
            self._partial += 1
            conn.line += 1
            await self._reject(conn, conn.line, tail, FrameError(f"{reason} ({len(tail)} bytes)", raw=tail))

    async def _close_gracefully(self, stream: trio.SocketStream) -> None:
        """Send EOF, then read and discard until the client closes (bounded by ``linger``):
        closing a socket with unread input would send a reset, which can destroy replies
        the client has not read yet."""
        with trio.move_on_after(self.spec.linger):
            try:
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


#: The defaults of ``tcp_source`` (specs are immutable, so one instance serves every call).
_LINES = Lines()
_SKIP = Skip()

@per_chunk
def _settle(lots: list[Settled]) -> None:
    """The source's acknowledgement callback (with ``replies`` only), per chunk: route the
    settled records of each chunk to its connection. Synchronous: queueing a reply never
    waits."""
    for token, indices, errors in lots:
        chunk: _Chunk = token
        chunk.conn.settle(chunk, indices, errors)


@final
@attrs.frozen(kw_only=True)
class _TcpSpec:
    host: str | None
    port: int
    framing: Framing
    decode: Callable[[bytes], Any] | None
    max_connections: int
    idle_timeout: float | None
    linger: float
    rejects: DeadLetter | Skip
    replies: Replies | None
    on_listening: Callable[[TcpServer], object] | None
    backlog: int | None
    name: str | None

    async def serve(self, emit: Emit[Any], *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=self.backlog)
        try:
            server = TcpServer(self, emit, listeners)
            if self.on_listening is not None:
                self.on_listening(server)
            async with trio.open_nursery() as handlers:
                task_status.started()
                with emit.cancel_on_drain():
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(server._accept_loop, listener, handlers)
                for listener in listeners:
                    server._accept_backlog(listener, handlers)
                    listener.socket.close()
        finally:
            for listener in listeners:
                listener.socket.close()


@overload
def tcp_source(
    port: int, *, host: str | None = None, framing: Framing = ..., decode: None = None,
    max_connections: int = 1024, idle_timeout: float | None = 300.0, linger: float = 2.0,
    rejects: DeadLetter | Skip = ..., replies: Replies | None = None,
    on_listening: Callable[[TcpServer], object] | None = None, backlog: int | None = None,
    name: str | None = None,
) -> Flow[bytes]: ...
@overload
def tcp_source(
    port: int, *, host: str | None = None, framing: Framing = ..., decode: Callable[[bytes], T],
    max_connections: int = 1024, idle_timeout: float | None = 300.0, linger: float = 2.0,
    rejects: DeadLetter | Skip = ..., replies: Replies | None = None,
    on_listening: Callable[[TcpServer], object] | None = None, backlog: int | None = None,
    name: str | None = None,
) -> Flow[T]: ...
def tcp_source(
    port: int,
    *,
    host: str | None = None,
    framing: Framing = _LINES,
    decode: Callable[[bytes], Any] | None = None,
    max_connections: int = 1024,
    idle_timeout: float | None = 300.0,
    linger: float = 2.0,
    rejects: DeadLetter | Skip = _SKIP,
    replies: Replies | None = None,
    on_listening: Callable[[TcpServer], object] | None = None,
    backlog: int | None = None,
    name: str | None = None,
) -> Flow[Any]:
    """A source that serves TCP on ``port`` (0: an ephemeral port) and emits the records
    its clients send: the frames of ``framing`` (default ``Lines()``: newline-delimited,
    ``max_frame`` 64 KiB), each passed through ``decode`` if given (e.g. ``json.loads``).

    ``host`` as in ``trio.open_tcp_listeners`` (``None``: every interface). Readiness: once
    the listeners are bound, ``on_listening(server)`` is called with the run's
    ``TcpServer`` (``server.port``, ``server.statistics()``), before
    ``nursery.start(flow.run)`` returns. See ``docs/tcp.md``.

    * emits: the records of each received chunk together, in order per connection
      (connections interleave);
    * backpressure: while the next edge is full a connection does not read its socket, so
      TCP flow control slows its client; the source holds at most one chunk per connection;
    * completes: after a drain (it never ends on its own): it stops accepting, refuses the
      connections waiting in the backlog, stops reading, hands on the complete records it
      received, flushes the replies and closes every connection gracefully;
    * cancelled: by the run (the drain's deadline, ``handle.cancel()``): connections are
      closed at once;
    * on error: a bad record (framing, ``decode``) is rejected to ``rejects`` (a
      ``DeadLetterEntry`` whose item is a ``Rejected`` with the connection and the record's
      number; default ``Skip()``: counted) and answered if ``replies`` is set; a broken,
      idle, reset or over-the-limit connection is closed and counted; no client ever ends
      the server. An error from a dead-letter target or from downstream fails the run.

    ``max_connections``: connections over it are accepted and closed at once with a line
    ``error: too many connections (limit N)``. ``idle_timeout``: a connection that sends
    nothing for that long while it has no record awaiting a reply is closed. ``linger``:
    how long a graceful close waits for the client to close its side.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise DefinitionValueError(f"port of tcp_source must be an int in 0..65535, got {port!r}")
    if host is not None and not isinstance(host, str):
        raise DefinitionTypeError(f"host of tcp_source must be a str or None, got {host!r}")
    if not isinstance(framing, Framing):
        raise DefinitionTypeError(
            f"framing of tcp_source must be Lines(), LengthPrefixed() or an object with a framer() "
            f"method, got {framing!r}"
        )
    if decode is not None and not callable(decode):
        raise DefinitionTypeError(f"decode of tcp_source must be a function or None, got {decode!r}")
    _check_int("max_connections of tcp_source", max_connections, 1)
    _check_seconds("idle_timeout of tcp_source", idle_timeout)
    if linger is None:
        raise DefinitionValueError("linger of tcp_source must be a number of seconds > 0, got None")
    _check_seconds("linger of tcp_source", linger)
    if not isinstance(rejects, DeadLetter | Skip):
        raise DefinitionTypeError(f"rejects of tcp_source must be DeadLetter(...) or Skip(), got {rejects!r}")
    if replies is not None and not isinstance(replies, Replies):
        raise DefinitionTypeError(f"replies of tcp_source must be a Replies(...) or None, got {replies!r}")
    if on_listening is not None and not callable(on_listening):
        raise DefinitionTypeError(
            f"on_listening of tcp_source must be a function or None, got {on_listening!r}")
    if backlog is not None:
        _check_int("backlog of tcp_source", backlog, 1)
    spec = _TcpSpec(
        host=host, port=port, framing=framing, decode=decode, max_connections=max_connections,
        idle_timeout=idle_timeout, linger=linger, rejects=rejects, replies=replies,
        on_listening=on_listening, backlog=backlog, name=name,
    )
    # acknowledgements (and their tracking cost) only when there is someone to answer
    # (``_settle`` takes them per chunk: a list of ``Settled``, see ``per_chunk``)
    settle: Any = _settle if replies is not None else None
    return source(spec.serve, name=name, on_ack=settle)
