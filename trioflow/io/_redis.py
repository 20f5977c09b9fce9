"""Redis Streams: a consumer-group source with acknowledgements, and a stream writer.

Theory of operation. redis-py (with hiredis) is synchronous, so every command runs in a
worker thread through ``trio.to_thread.run_sync`` with the run's own ``CapacityLimiter``;
the connection pool has exactly as many connections as the limiter has tokens, so a
command never waits for a connection inside a thread (where Trio could not cancel it).
A thread call is never abandoned: a cancelled task waits for its call to return, which is
why a read blocks at most ``block_ms`` (a finite BLOCK): cancellation is prompt, and a
connection always goes back to the pool with no reply left unread on it (the hazard of a
client that abandons a blocking command: a leaked or poisoned pool slot).

A read that a cancellation overtakes is lost to this run, yet its entries are in the
consumer's pending list on the server: that is why the source first re-reads its own
pending entries (``XREADGROUP ... 0``) when it starts, and why a claim loop
(``XAUTOCLAIM``) takes over the entries of a consumer that stopped for good. Delivery is
therefore at least once; an entry is acknowledged (``XACK``) only once the run is done
with it (``docs/acknowledgements.md``), in batches.

Per-entry cost. The reading thread does all the per-entry work of a reply: redis-py's own
parsing of ``XREADGROUP``/``XAUTOCLAIM`` replies is replaced by ``_build``, which turns the
flat reply into ``StreamEntry`` named tuples (in comprehensions when every entry of the
read is new, present and text) and checks the text (below), so the Trio thread only hands
the lists on. The acknowledgement bookkeeping is per read, not per entry: a read's entries
are handed on as one lot whose token is the read's ids (``_Lot``; ``per_chunk``), and the
settled entries of every lot go in one ``XACK`` command (a pipeline of several past
``_ACK_CHUNK`` ids). Acknowledgements go in their
own thread call as soon as they settle (sending them in the same pipeline as the next
``XREADGROUP`` was tried and measured: no CPU saved per entry, and two workers sharing a
database were slower with it; ``docs/benchmarks.md``).

Text. Replies are decoded by hiredis as UTF-8 with ``surrogateescape``, so bytes that are
not UTF-8 never fail a reply: each such byte becomes a lone surrogate, which no valid
UTF-8 text decodes to, and ``s.encode("utf-8", "surrogateescape")`` gives the bytes back
exactly. With ``decode=True`` an entry whose text holds such a byte is dead-lettered
(``UndecodableEntry``, its letter holding a ``RawStreamEntry`` with the bytes) and
acknowledged; with ``decode=False`` every entry is a ``RawStreamEntry``. A whole read is
checked at once (``str.isascii``, then one ``encode``), entry by entry only when that fails.

Entries this run holds are remembered (``_Consumer.held``, removed when acknowledged), so
the claim loop never hands on an entry of its own that is still on its way through the
pipeline (``XAUTOCLAIM`` would take it, being idle on the server). An entry acknowledged
while an ``XAUTOCLAIM`` is under way may be in its reply (the claim ran first) and no
longer held: the ids acknowledged during a claim are kept until its reply is handled.

The acknowledgements of a run may arrive after its source function returned (a drain
lets the pipeline finish after the source), so the pool outlives the source: once the
source has returned, every acknowledgement call closes the pool's connections after it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Literal, NamedTuple, TypeVar, final, overload

import attrs
import trio

from .._acks import Settled, per_chunk
from .._errors import DefinitionTypeError, DefinitionValueError, TrioflowError
from .._flow import Flow
from .._operators import source
from .._policies import FAIL, DeadLetter, Guard, OnError, Retry, Skip
from .._runtime import Emit
from .._stage import Stage
from ._writer import writer_stage

#: most ids in one XACK command (a pipeline carries several)
_ACK_CHUNK = 1000
#: seconds a socket read may exceed the BLOCK time before the connection counts as lost
_SOCKET_SLACK = 10.0
#: connections of a source's pool (and tokens of its limiter): the reader, the claim loop,
#: the acknowledgements
_SOURCE_CONNECTIONS = 3

M = TypeVar("M", bound="Mapping[str, object] | Mapping[bytes, object] | StreamEntry | RawStreamEntry")

_new = tuple.__new__


def import_redis(op: str) -> ModuleType:
    """redis-py, or an ImportError naming the extra to install."""
    try:
        import redis
    except ImportError as exc:
        raise ImportError(f"{op} needs redis-py: pip install 'trioflow[redis]'") from exc
    return redis


@final
class StreamEntry(NamedTuple):
    """One entry of a Redis stream, as ``redis_source`` emits it (``decode=True``, the
    default). A named tuple: ``entry.id``, ``entry.fields``, ``entry.deliveries``."""

    #: the entry's id (``"1700000000000-0"``): unique in the stream, a natural upsert key
    id: str
    #: the entry's fields and values, decoded as UTF-8
    fields: Mapping[str, str]
    #: how many times the group delivered the entry (1 on a first read; more after a
    #: crash, a restart or a claim)
    deliveries: int = 1


@final
class RawStreamEntry(NamedTuple):
    """One entry of a Redis stream with its field names and values as stored (``bytes``):
    what ``redis_source(..., decode=False)`` emits, and the item of the dead letter of an
    entry that ``decode=True`` could not decode."""

    #: the entry's id (``"1700000000000-0"``)
    id: str
    #: the entry's fields and values, exactly the bytes the stream holds
    fields: Mapping[bytes, bytes]
    #: how many times the group delivered the entry
    deliveries: int = 1


class TooManyDeliveries(TrioflowError):
    """An entry was delivered more than ``max_deliveries`` times (the exception of its dead letter)."""


class UndecodableEntry(TrioflowError):
    """An entry's field name or value is not UTF-8 text, and ``redis_source`` decodes
    (``decode=True``): the exception of its dead letter, whose item is the entry as a
    ``RawStreamEntry`` (its bytes intact). ``__cause__`` is the ``UnicodeDecodeError``."""


@final
@attrs.frozen(kw_only=True)
class RedisStatistics:
    """A snapshot of a ``redis_source`` run's counters."""

    #: entries read with ``>`` (new to the group)
    read: int
    #: own pending entries re-read at start (``0``)
    reread: int
    #: entries taken over from other consumers (``XAUTOCLAIM``)
    claimed: int
    #: entries acknowledged (``XACK``), dead letters included
    acked: int
    #: entries given up (dead-lettered or skipped, then acknowledged): delivered more than
    #: ``max_deliveries`` times, or not UTF-8 with ``decode=True``
    dead_lettered: int
    #: pending entries deleted from the stream meanwhile (acknowledged, nothing to emit)
    deleted: int


def _raw(reply: Any, **options: Any) -> Any:
    """The reply as hiredis gave it (``_build`` parses it in the reading thread)."""
    return reply


def _entries(reply: Any) -> list[Any]:
    """The entries of a raw ``XREADGROUP`` reply on one stream: a map of stream to entries
    (RESP3, redis-py's default), or a list of ``[stream, entries]`` (RESP2); None when a
    BLOCK timed out."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]  # type: ignore[no-any-return]


def _undecodable(text: str) -> bool:
    """Does ``text`` (decoded with ``surrogateescape``) hold bytes that were not UTF-8?"""
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Read(NamedTuple):
    """One reply, built in the reading thread: what to emit and what to settle at once."""

    #: entries to hand on, and their ids (entry ``i`` has id ``ids[i]``)
    entries: list[Any]
    ids: list[str]
    #: ids of pending entries deleted from the stream meanwhile
    gone: list[str]
    #: entries that ``decode=True`` could not decode, as ``RawStreamEntry``, with the error
    undecodable: list[tuple[RawStreamEntry, UnicodeDecodeError]]


_NO_READ = _Read([], [], [], [])


@final
class _Lot(NamedTuple):
    """The acknowledgement token of the entries handed on together (one per read, not one
    per entry): entry ``i`` of the lot has id ``ids[i]``."""

    consumer: RedisConsumer
    ids: list[str]


@final
class RedisConsumer:
    """The live side of one ``redis_source`` run (given to ``on_start``). Not built by users."""

    def __init__(self, spec: _SourceSpec, redis: ModuleType) -> None:
        self.spec = spec
        self.limiter = trio.CapacityLimiter(_SOURCE_CONNECTIONS)
        self._pool = redis.ConnectionPool.from_url(
            spec.url, max_connections=_SOURCE_CONNECTIONS, decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=spec.block_ms / 1000 + _SOCKET_SLACK, socket_connect_timeout=_SOCKET_SLACK,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        for command in ("XREADGROUP", "XAUTOCLAIM"):
            self._client.set_response_callback(command, _raw)
        self._redis = redis
        #: ids handed on and not yet acknowledged
        self.held: set[str] = set()
        #: while a claim sweep's XAUTOCLAIM is under way (None: none is): the ids acknowledged
        #: meanwhile, which its reply may still list (it ran before the XACK) and are done
        self._acked_in_claim: set[str] | None = None
        self.closed = False
        self._read = self._reread = self._claimed = self._acked = self._dead = self._deleted = 0

    def statistics(self) -> RedisStatistics:
        """The counters so far (a frozen snapshot)."""
        return RedisStatistics(read=self._read, reread=self._reread, claimed=self._claimed,
                               acked=self._acked, dead_lettered=self._dead, deleted=self._deleted)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ------------------------------------------------------------ sync, in a thread
    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.spec.stream, self.spec.group, id="0", mkstream=True)
        except self._redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> _Read:
        spec = self.spec
        reply = self._client.xreadgroup(spec.group, spec.consumer, {spec.stream: ">"},
                                        count=spec.count, block=spec.block_ms)
        return self._build(_entries(reply), None)

    def _read_own(self, after: str) -> tuple[_Read, str | None]:
        """Own pending entries after ``after``, with their delivery counts, and the id to
        read after next (None: there are no more)."""
        spec = self.spec
        reply = self._client.xreadgroup(spec.group, spec.consumer, {spec.stream: after}, count=spec.count)
        raw = _entries(reply)
        return self._build(raw, self._counts(raw, spec.consumer)), (raw[-1][0] if raw else None)

    def _claim(self, start: str) -> tuple[str, _Read]:
        spec = self.spec
        assert spec.claim_min_idle is not None
        reply = self._client.xautoclaim(spec.stream, spec.group, spec.consumer,
                                        int(spec.claim_min_idle * 1000), start, count=spec.count)
        raw = reply[1]
        return reply[0], self._build(raw, self._counts(raw, spec.consumer))

    def _counts(self, raw: Sequence[Any], consumer: str) -> dict[str, int]:
        """Delivery counts of re-read or claimed entries: one XPENDING per id, pipelined (a
        range of ids could also hold other entries of this consumer)."""
        ids = [e[0] for e in raw if e is not None and e[0] is not None]
        if not ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.spec.stream, self.spec.group, entry_id, entry_id, 1,
                                consumername=consumer)
        return {r["message_id"]: int(r["times_delivered"]) for rows in pipe.execute() for r in rows}

    def _build(self, raw: Sequence[Any], counts: dict[str, int] | None) -> _Read:
        """The entries of a raw reply (``[id, [name, value, ...]]`` each; ``[id, None]`` or
        None for one deleted meanwhile), ready to hand on; ``counts``: delivery counts
        (None: first deliveries)."""
        if not raw:
            return _NO_READ
        decode = self.spec.decode
        present = [e for e in raw if e is not None and e[0] is not None and e[1]]
        # the whole read at once: text that is not all ASCII must encode (no escaped byte)
        suspect = decode and _undecodable("".join(["".join(e[1]) for e in present]))
        if counts is None and decode and not suspect and len(present) == len(raw):
            # the common case (new entries, every one there and text): in comprehensions (an
            # entry's fields are name-value pairs by the protocol: zip need not check them)
            return _Read([_new(StreamEntry, (entry_id, dict(zip(it := iter(flat), it, strict=False)), 1))
                          for entry_id, flat in raw], [e[0] for e in raw], [], [])
        entries: list[Any] = []
        ids: list[str] = []
        gone: list[str] = []
        bad: list[tuple[RawStreamEntry, UnicodeDecodeError]] = []
        for e in raw:
            if e is None or e[0] is None:  # (Redis 6.2's XAUTOCLAIM: deleted, without its id)
                continue
            entry_id, flat = e
            if not flat:
                gone.append(entry_id)
                continue
            n = 1 if counts is None else counts.get(entry_id, 1)
            if decode:
                if suspect and any(_undecodable(x) for x in flat):
                    bad.append(self._undecodable(entry_id, flat, n))
                    continue
                it = iter(flat)
                entries.append(_new(StreamEntry, (entry_id, dict(zip(it, it, strict=True)), n)))
            else:
                it = iter([_to_bytes(x) for x in flat])
                entries.append(_new(RawStreamEntry, (entry_id, dict(zip(it, it, strict=True)), n)))
            ids.append(entry_id)
        return _Read(entries, ids, gone, bad)

    def _undecodable(self, entry_id: str, flat: list[str], n: int
                     ) -> tuple[RawStreamEntry, UnicodeDecodeError]:
        data = [_to_bytes(x) for x in flat]
        error = None
        for x in data:
            try:
                x.decode()
            except UnicodeDecodeError as exc:
                error = exc
                break
        assert error is not None
        it = iter(data)
        return _new(RawStreamEntry, (entry_id, dict(zip(it, it, strict=True)), n)), error

    def _xack(self, ids: Sequence[str]) -> None:
        spec = self.spec
        if len(ids) <= _ACK_CHUNK:  # one command (a pipeline costs more on the client)
            self._client.execute_command("XACK", spec.stream, spec.group, *ids)
            return
        pipe = self._client.pipeline(transaction=False)
        for i in range(0, len(ids), _ACK_CHUNK):
            pipe.xack(spec.stream, spec.group, *ids[i:i + _ACK_CHUNK])
        pipe.execute()

    # ------------------------------------------------------------ on the Trio thread
    async def ack(self, ids: list[str]) -> None:
        try:
            await self._call(self._xack, ids)
        finally:
            if self.closed:
                self._pool.disconnect()
        self._acked += len(ids)
        self.held.difference_update(ids)
        if self._acked_in_claim is not None:
            self._acked_in_claim.update(ids)

    async def _hand_on(self, emit: Emit[Any], guard: Guard, read: _Read, kind: str) -> None:
        """Hand on the entries of ``read``: of a read of new entries (``kind`` "read"), or
        re-read or claimed ones ("reread", "claimed"), which may be held already or
        delivered too often. Deleted, undecodable and poison entries are acknowledged
        instead (the last two after their letter is written)."""
        entries, ids = read.entries, read.ids
        done = list(read.gone)
        self._deleted += len(done)
        spec = self.spec
        check = kind != "read"
        # this run's own: held (on their way), or acknowledged while the claim ran
        own = self.held if not self._acked_in_claim else self.held | self._acked_in_claim
        for entry, error in read.undecodable:
            if check and entry.id in own:
                continue
            exc = UndecodableEntry(f"entry {entry.id} of stream {spec.stream!r} is not UTF-8 text "
                                   f"({error}); read it with decode=False for its bytes")
            exc.__cause__ = error
            await guard.ahandle(exc, entry)  # the letter is written before the XACK
            self._dead += 1
            done.append(entry.id)
        if check:
            keep = []
            for k, entry in enumerate(entries):
                if entry.id in own:
                    continue
                if spec.max_deliveries is not None and entry.deliveries > spec.max_deliveries:
                    await guard.ahandle(TooManyDeliveries(
                        f"entry {entry.id} of stream {spec.stream!r} was delivered {entry.deliveries} "
                        f"times (max_deliveries={spec.max_deliveries})"), entry)
                    self._dead += 1
                    done.append(entry.id)
                    continue
                keep.append(k)
            if len(keep) < len(entries):
                entries = [entries[k] for k in keep]
                ids = [ids[k] for k in keep]
        if done:
            await self.ack(done)
        if entries:
            self.held.update(ids)
            # counted before the emit: what the source holds
            if kind == "read":
                self._read += len(entries)
            elif kind == "reread":
                self._reread += len(entries)
            else:
                self._claimed += len(entries)
            await emit._many_lot(entries, _Lot(self, ids))

    async def run(self, emit: Emit[Any], task_status: trio.TaskStatus[None]) -> None:
        spec = self.spec
        guard = Guard(spec.name or "redis_source", spec.dead_letters)
        emit._counts(guard)  # its poison and undecodable entries are the stage's dead letters
        try:
            await self._call(self._create_group)
            if spec.on_start is not None:
                spec.on_start(self)
            task_status.started()
            # first the entries this consumer was given before and never acknowledged
            after: str | None = "0"
            while after is not None and not emit.draining:
                read, after = await self._call(self._read_own, after)
                await self._hand_on(emit, guard, read, "reread")
            async with trio.open_nursery() as nursery:
                if spec.claim_min_idle is not None:
                    nursery.start_soon(self._claim_loop, emit, guard)
                # a drain lets the read in hand finish (at most one BLOCK), hands it on, stops
                while not emit.draining:
                    await self._hand_on(emit, guard, await self._call(self._read_new), "read")
                # the claim loop returns on its own: it sees the drain between sweeps
        finally:
            self.closed = True
            self._pool.disconnect(inuse_connections=False)

    async def _claim_loop(self, emit: Emit[Any], guard: Guard) -> None:
        spec = self.spec
        assert spec.claim_min_idle is not None
        start = "0-0"
        while True:
            with emit.cancel_on_drain():
                await trio.sleep(spec.claim_min_idle / 2)
            if emit.draining:
                return
            while True:  # one sweep of the pending list
                self._acked_in_claim = set()
                try:
                    start, read = await self._call(self._claim, start)
                    await self._hand_on(emit, guard, read, "claimed")
                finally:
                    self._acked_in_claim = None
                if start == "0-0" or emit.draining:
                    break


@per_chunk
def _settle(lots: list[Settled]) -> object:
    """The source's acknowledgement callback, per read: XACK every settled entry (handled
    or rejected downstream: either way the run is done with it). The lots of one call come
    from one run's ledger, so they share its ``RedisConsumer``."""
    ids: list[str] = []
    for token, indices, _errors in lots:
        lot: _Lot = token
        if len(indices) == len(lot.ids):  # the whole read at once (in any order): its ids
            ids += lot.ids
        else:
            lot_ids = lot.ids
            ids += [lot_ids[i] for i in indices]
    return lots[0].token.consumer.ack(ids)


@final
@attrs.frozen(kw_only=True)
class _SourceSpec:
    url: str
    stream: str
    group: str
    consumer: str
    count: int
    block_ms: int
    claim_min_idle: float | None
    max_deliveries: int | None
    dead_letters: DeadLetter | Skip
    decode: bool
    on_start: Callable[[RedisConsumer], object] | None
    name: str | None

    async def serve(self, emit: Emit[Any], *, task_status: trio.TaskStatus[None]) -> None:
        redis = import_redis("redis_source")
        await RedisConsumer(self, redis).run(emit, task_status)


_SKIP = Skip()


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise DefinitionTypeError(f"{what} must be a non-empty str, got {value!r}")
    return value


def _check_int(what: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DefinitionValueError(f"{what} must be an int >= {minimum}, got {value!r}")


@overload
def redis_source(
    url: str, stream: str, group: str, consumer: str, *, count: int = ..., block_ms: int = ...,
    claim_min_idle: float | None = ..., max_deliveries: int | None = ...,
    dead_letters: DeadLetter | Skip = ..., decode: Literal[True] = ...,
    on_start: Callable[[RedisConsumer], object] | None = ..., name: str | None = ...,
) -> Flow[StreamEntry]: ...


@overload
def redis_source(
    url: str, stream: str, group: str, consumer: str, *, count: int = ..., block_ms: int = ...,
    claim_min_idle: float | None = ..., max_deliveries: int | None = ...,
    dead_letters: DeadLetter | Skip = ..., decode: Literal[False],
    on_start: Callable[[RedisConsumer], object] | None = ..., name: str | None = ...,
) -> Flow[RawStreamEntry]: ...


def redis_source(
    url: str,
    stream: str,
    group: str,
    consumer: str,
    *,
    count: int = 500,
    block_ms: int = 500,
    claim_min_idle: float | None = 60.0,
    max_deliveries: int | None = None,
    dead_letters: DeadLetter | Skip = _SKIP,
    decode: bool = True,
    on_start: Callable[[RedisConsumer], object] | None = None,
    name: str | None = None,
) -> Flow[StreamEntry] | Flow[RawStreamEntry]:
    """A source that reads the Redis stream ``stream`` as ``consumer`` of the consumer group
    ``group`` (created at the stream's start, with the stream, when missing) and emits
    ``StreamEntry`` values; each entry is acknowledged (``XACK``) once the run is done with
    it (``docs/redis.md``). Needs ``pip install 'trioflow[redis]'``.

    It first re-reads the entries the group gave this consumer before and that were never
    acknowledged (a crash, a cancelled run), then reads new entries, ``count`` at most per
    ``XREADGROUP``, each read waiting at most ``block_ms`` milliseconds (300 to 1000 is a
    good range: it bounds how long a cancellation or a drain waits). Every
    ``claim_min_idle / 2`` seconds, ``XAUTOCLAIM`` takes over the entries that another
    consumer left unacknowledged for ``claim_min_idle`` seconds (None: never), which must
    exceed how long an entry may take through the pipeline. An entry delivered more than
    ``max_deliveries`` times (None: no limit) goes to ``dead_letters`` (a
    ``DeadLetterEntry`` whose item is the entry and whose exception is a
    ``TooManyDeliveries``; default ``Skip()``: counted and logged) and is acknowledged.
    ``decode=True`` (the default) emits ``StreamEntry`` values, field names and values
    decoded as UTF-8; an entry holding bytes that are not UTF-8 is not emitted: it goes to
    ``dead_letters`` (its item a ``RawStreamEntry`` with the bytes, its exception an
    ``UndecodableEntry``) and is acknowledged. ``decode=False`` emits ``RawStreamEntry``
    values whose field names and values are the ``bytes`` the stream holds.
    ``on_start(consumer)`` is called once the group exists, before ``nursery.start(run)``
    returns, with the run's ``RedisConsumer`` (``statistics()``).

    * emits: each read's entries together, in stream order per read (re-read and claimed
      entries carry their delivery count); the entries are built in the reading thread;
    * backpressure: no read while the next edge is full; the source holds one read;
    * completes: after a drain (it never ends on its own): the read in hand (at most one
      BLOCK) is handed on, then it returns; what it handed on is acknowledged as it is done;
    * cancelled: by the run: a command in progress finishes first (at most one BLOCK); the
      entries of a read the cancellation overtook stay pending and are re-read by the next
      run under the same consumer name (or claimed by another consumer);
    * on error: a lost connection or a Redis error fails the run, as does an error from a
      dead-letter target or from downstream; a failed run acknowledges nothing it did not
      finish, and its entries are re-read when the consumer starts again. Bytes that are
      not UTF-8 never fail the run (see ``decode``).
    """
    op = "redis_source"
    import_redis(op)  # a missing extra fails here, not when the run starts
    _check_str(f"url of {op}", url)
    _check_str(f"stream of {op}", stream)
    _check_str(f"group of {op}", group)
    _check_str(f"consumer of {op}", consumer)
    _check_int(f"count of {op}", count, 1)
    _check_int(f"block_ms of {op}", block_ms, 1)
    if claim_min_idle is not None and (
            isinstance(claim_min_idle, bool) or not isinstance(claim_min_idle, int | float)
            or math.isnan(claim_min_idle) or claim_min_idle <= 0):
        raise DefinitionValueError(
            f"claim_min_idle of {op} must be a number of seconds > 0 or None, got {claim_min_idle!r}")
    if max_deliveries is not None:
        _check_int(f"max_deliveries of {op}", max_deliveries, 1)
    if not isinstance(dead_letters, DeadLetter | Skip):
        raise DefinitionTypeError(
            f"dead_letters of {op} must be DeadLetter(...) or Skip(), got {dead_letters!r}")
    if not isinstance(decode, bool):
        raise DefinitionTypeError(f"decode of {op} must be a bool, got {decode!r}")
    if on_start is not None and not callable(on_start):
        raise DefinitionTypeError(f"on_start of {op} must be a function or None, got {on_start!r}")
    spec = _SourceSpec(
        url=url, stream=stream, group=group, consumer=consumer, count=count, block_ms=block_ms,
        claim_min_idle=claim_min_idle, max_deliveries=max_deliveries, dead_letters=dead_letters,
        decode=decode, on_start=on_start, name=name,
    )
    # (``_settle`` takes them per read: a list of ``Settled``, see ``per_chunk``)
    settle: Any = _settle
    return source(spec.serve, name=name or op, on_ack=settle)


# ------------------------------------------------------------------------------- the writer


@final
class _StreamWriter:
    """One worker's client (a pool of one connection), used through the stage's limiter."""

    def __init__(self, redis: ModuleType, url: str, stream: str, maxlen: int | None,
                 approximate: bool, limiter: trio.CapacityLimiter) -> None:
        self.pool = redis.ConnectionPool.from_url(url, max_connections=1,
                                                  socket_timeout=_SOCKET_SLACK,
                                                  socket_connect_timeout=_SOCKET_SLACK)
        self.client = redis.Redis(connection_pool=self.pool)
        self.stream = stream
        self.maxlen = maxlen
        self.approximate = approximate
        self.limiter = limiter

    def _write(self, batch: Sequence[Mapping[Any, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=self.approximate)
        pipe.execute()

    async def write(self, batch: Sequence[Any]) -> None:
        rows = [row.fields if isinstance(row, StreamEntry | RawStreamEntry) else row for row in batch]
        for row in rows:
            if not isinstance(row, Mapping) or not row:
                raise TypeError(f"write_redis_stream writes non-empty mappings of fields (or StreamEntry "
                                f"or RawStreamEntry values), got {row!r}")
        await trio.to_thread.run_sync(self._write, rows, limiter=self.limiter)


@contextlib.asynccontextmanager
async def _open_stream_writer(url: str, stream: str, maxlen: int | None, approximate: bool,
                              limiter: trio.CapacityLimiter) -> AsyncIterator[_StreamWriter]:
    writer = _StreamWriter(import_redis("write_redis_stream"), url, stream, maxlen, approximate, limiter)
    try:
        yield writer
    finally:
        writer.pool.disconnect()


def write_redis_stream(
    url: str,
    stream: str,
    *,
    maxlen: int | None = None,
    approximate: bool = True,
    workers: int = 1,
    name: str | None = None,
    on_error: OnError = FAIL,
    retry: Retry | None = None,
) -> Stage[list[M], list[M]]:
    """A stage that appends each batch to the Redis stream ``stream`` in one pipeline of
    ``XADD`` commands (ids chosen by the server), then emits the batch. Needs ``pip install
    'trioflow[redis]'``.

    Put it after ``tf.batch(n)``. An item is a mapping of field to value (names and
    values ``str``, ``bytes``, ``int`` or ``float``; ``bytes`` are written as they are,
    ``str`` as UTF-8), or a ``StreamEntry`` or ``RawStreamEntry`` (its fields: copy a
    stream, bytes and all).
    ``maxlen``: trim the stream to about (``approximate=True``, ``MAXLEN ~``, cheap) or
    exactly that many entries on every append. ``workers``: connections, one per worker.

    * emits: each batch, unchanged, once the pipeline returned (every entry appended), so
      the acknowledgements of the batch's items settle after the write;
    * backpressure: takes the next batch when a worker is free;
    * completes: when its input completed and every batch is written; connections closed;
    * cancelled: by the run; a pipeline in progress finishes first (it is never abandoned);
    * on error: a bad item (not a mapping) or a Redis error goes to ``retry`` and
      ``on_error`` (fail-fast by default). A pipeline is not a transaction: after an error
      part of a batch may be appended, and a retry appends it again (at least once).
    """
    op = "write_redis_stream"
    import_redis(op)
    _check_str(f"url of {op}", url)
    _check_str(f"stream of {op}", stream)
    if maxlen is not None:
        _check_int(f"maxlen of {op}", maxlen, 1)
    if not isinstance(approximate, bool):
        raise DefinitionTypeError(f"approximate of {op} must be a bool, got {approximate!r}")
    _check_int(f"workers of {op}", workers, 1)
    # (a StreamEntry is no table Row, so the stage's item type is stated here)
    stage: Stage[list[Any], list[Any]] = writer_stage(
        op, workers, name, on_error, retry,
        lambda limiter: _open_stream_writer(url, stream, maxlen, approximate, limiter))
    return stage
