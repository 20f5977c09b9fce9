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
with it (``docs/acknowledgements.md``), in batches, from the run's acknowledgement task.

Entries this run holds are remembered (``_Consumer.held``, removed when acknowledged), so
the claim loop never hands on an entry of its own that is still on its way through the
pipeline (``XAUTOCLAIM`` would take it, being idle on the server).

The acknowledgements of a run may arrive after its source function returned (a drain
lets the pipeline finish after the source), so the pool outlives the source: once the
source has returned, every acknowledgement call closes the pool's connections after it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar, final

import attrs
import trio

from .._acks import Ack
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

M = TypeVar("M", bound="Mapping[str, object] | StreamEntry")
#: an entry as redis-py returns it: (id, fields); (None, None) for one deleted meanwhile
_Raw = tuple[str | None, dict[str, str] | None]


def import_redis(op: str) -> ModuleType:
    """redis-py, or an ImportError naming the extra to install."""
    try:
        import redis
    except ImportError as exc:
        raise ImportError(f"{op} needs redis-py: pip install 'trioflow[redis]'") from exc
    return redis


@final
@attrs.frozen(kw_only=True)
class StreamEntry:
    """One entry of a Redis stream, as ``redis_source`` emits it."""

    #: the entry's id (``"1700000000000-0"``): unique in the stream, a natural upsert key
    id: str
    #: the entry's fields and values, decoded as UTF-8
    fields: Mapping[str, str]
    #: how many times the group delivered the entry (1 on a first read; more after a
    #: crash, a restart or a claim)
    deliveries: int = 1


class TooManyDeliveries(TrioflowError):
    """An entry was delivered more than ``max_deliveries`` times (the exception of its dead letter)."""


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
    #: entries given up after ``max_deliveries`` (dead-lettered or skipped, then acknowledged)
    dead_lettered: int
    #: pending entries deleted from the stream meanwhile (acknowledged, nothing to emit)
    deleted: int


@final
class RedisConsumer:
    """The live side of one ``redis_source`` run (given to ``on_start``). Not built by users."""

    def __init__(self, spec: _SourceSpec, redis: ModuleType) -> None:
        self.spec = spec
        self.limiter = trio.CapacityLimiter(_SOURCE_CONNECTIONS)
        self._pool = redis.ConnectionPool.from_url(
            spec.url, max_connections=_SOURCE_CONNECTIONS, decode_responses=True,
            socket_timeout=spec.block_ms / 1000 + _SOCKET_SLACK, socket_connect_timeout=_SOCKET_SLACK,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._redis = redis
        #: ids handed on and not yet acknowledged
        self.held: set[str] = set()
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

    def _read_new(self) -> list[_Raw]:
        spec = self.spec
        reply = self._client.xreadgroup(spec.group, spec.consumer, {spec.stream: ">"},
                                        count=spec.count, block=spec.block_ms)
        return reply[0][1] if reply else []

    def _read_own(self, after: str) -> tuple[list[_Raw], dict[str, int]]:
        """Own pending entries after ``after``, with their delivery counts."""
        spec = self.spec
        reply = self._client.xreadgroup(spec.group, spec.consumer, {spec.stream: after}, count=spec.count)
        entries = reply[0][1] if reply else []
        return entries, self._counts(entries, spec.consumer)

    def _claim(self, start: str) -> tuple[str, list[_Raw], dict[str, int]]:
        spec = self.spec
        assert spec.claim_min_idle is not None
        reply = self._client.xautoclaim(spec.stream, spec.group, spec.consumer,
                                        int(spec.claim_min_idle * 1000), start, count=spec.count)
        entries = reply[1]
        return reply[0], entries, self._counts(entries, spec.consumer)

    def _counts(self, entries: Sequence[_Raw], consumer: str) -> dict[str, int]:
        """Delivery counts of re-read or claimed entries: one XPENDING per id, pipelined (a
        range of ids could also hold other entries of this consumer)."""
        ids = [e[0] for e in entries if e[0] is not None]
        if not ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.spec.stream, self.spec.group, entry_id, entry_id, 1,
                                consumername=consumer)
        return {r["message_id"]: int(r["times_delivered"]) for rows in pipe.execute() for r in rows}

    def _xack(self, ids: Sequence[str]) -> None:
        spec = self.spec
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

    async def _prepare(self, raw: Sequence[_Raw], counts: dict[str, int], guard: Guard) -> list[StreamEntry]:
        """The entries of ``raw`` to hand on: not those this run holds already; deleted ones
        and poison ones (after their letter is written) are acknowledged instead."""
        spec = self.spec
        entries: list[StreamEntry] = []
        done: list[str] = []
        for entry_id, fields in raw:
            if entry_id is None or not fields:  # deleted from the stream meanwhile
                if entry_id is not None:
                    done.append(entry_id)
                    self._deleted += 1
                continue
            if entry_id in self.held:
                continue
            n = counts.get(entry_id, 1)
            entry = StreamEntry(id=entry_id, fields=fields, deliveries=n)
            if spec.max_deliveries is not None and n > spec.max_deliveries:
                exc = TooManyDeliveries(f"entry {entry_id} of stream {spec.stream!r} was delivered {n} "
                                        f"times (max_deliveries={spec.max_deliveries})")
                await guard.ahandle(exc, entry)  # the letter is written before the XACK
                self._dead += 1
                done.append(entry_id)
                continue
            entries.append(entry)
        if done:
            await self.ack(done)
        self.held.update(e.id for e in entries)
        return entries

    async def _emit(self, emit: Emit[StreamEntry], entries: list[StreamEntry]) -> None:
        if entries:
            await emit.many(entries, acks=[(self, e.id) for e in entries])

    async def run(self, emit: Emit[StreamEntry], task_status: trio.TaskStatus[None]) -> None:
        spec = self.spec
        guard = Guard(spec.name or "redis_source", spec.dead_letters)
        try:
            await self._call(self._create_group)
            if spec.on_start is not None:
                spec.on_start(self)
            task_status.started()
            # first the entries this consumer was given before and never acknowledged
            after = "0"
            while not emit.draining:
                raw, counts = await self._call(self._read_own, after)
                if not raw:
                    break
                after = raw[-1][0]
                entries = await self._prepare(raw, counts, guard)
                self._reread += len(entries)  # counted before the emit: what the source holds
                await self._emit(emit, entries)
            async with trio.open_nursery() as nursery:
                if spec.claim_min_idle is not None:
                    nursery.start_soon(self._claim_loop, emit, guard)
                # a drain lets the read in hand finish (at most one BLOCK), hands it on, stops
                while not emit.draining:
                    entries = await self._prepare(await self._call(self._read_new), {}, guard)
                    self._read += len(entries)
                    await self._emit(emit, entries)
                # the claim loop returns on its own: it sees the drain between sweeps
        finally:
            self.closed = True
            self._pool.disconnect(inuse_connections=False)

    async def _claim_loop(self, emit: Emit[StreamEntry], guard: Guard) -> None:
        spec = self.spec
        assert spec.claim_min_idle is not None
        start = "0-0"
        while True:
            with emit.cancel_on_drain():
                await trio.sleep(spec.claim_min_idle / 2)
            if emit.draining:
                return
            while True:  # one sweep of the pending list
                start, raw, counts = await self._call(self._claim, start)
                entries = await self._prepare(raw, counts, guard)
                self._claimed += len(entries)
                await self._emit(emit, entries)
                if start == "0-0" or emit.draining:
                    break


def _settle(acks: list[Ack]) -> object:
    """The source's acknowledgement callback: XACK every settled entry (handled or
    rejected downstream: either way the run is done with it), per run."""
    by_run: dict[RedisConsumer, list[str]] = {}
    for ack in acks:
        consumer, entry_id = ack.token
        by_run.setdefault(consumer, []).append(entry_id)
    if len(by_run) == 1:
        ((consumer, ids),) = by_run.items()
        return consumer.ack(ids)
    return _ack_all(by_run)


async def _ack_all(by_run: dict[RedisConsumer, list[str]]) -> None:
    for consumer, ids in by_run.items():
        await consumer.ack(ids)


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
    on_start: Callable[[RedisConsumer], object] | None
    name: str | None

    async def serve(self, emit: Emit[StreamEntry], *, task_status: trio.TaskStatus[None]) -> None:
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
    on_start: Callable[[RedisConsumer], object] | None = None,
    name: str | None = None,
) -> Flow[StreamEntry]:
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
    ``on_start(consumer)`` is called once the group exists, before ``nursery.start(run)``
    returns, with the run's ``RedisConsumer`` (``statistics()``).

    * emits: each read's entries together, in stream order per read (re-read and claimed
      entries carry their delivery count);
    * backpressure: no read while the next edge is full; the source holds one read;
    * completes: after a drain (it never ends on its own): the read in hand (at most one
      BLOCK) is handed on, then it returns; what it handed on is acknowledged as it is done;
    * cancelled: by the run: a command in progress finishes first (at most one BLOCK); the
      entries of a read the cancellation overtook stay pending and are re-read by the next
      run under the same consumer name (or claimed by another consumer);
    * on error: a lost connection or a Redis error fails the run, as does an error from a
      dead-letter target or from downstream; a failed run acknowledges nothing it did not
      finish, and its entries are re-read when the consumer starts again.
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
    if on_start is not None and not callable(on_start):
        raise DefinitionTypeError(f"on_start of {op} must be a function or None, got {on_start!r}")
    spec = _SourceSpec(
        url=url, stream=stream, group=group, consumer=consumer, count=count, block_ms=block_ms,
        claim_min_idle=claim_min_idle, max_deliveries=max_deliveries, dead_letters=dead_letters,
        on_start=on_start, name=name,
    )
    return source(spec.serve, name=name or op, on_ack=_settle)


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

    def _write(self, batch: Sequence[Mapping[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=self.approximate)
        pipe.execute()

    async def write(self, batch: Sequence[Any]) -> None:
        rows = [row.fields if isinstance(row, StreamEntry) else row for row in batch]
        for row in rows:
            if not isinstance(row, Mapping) or not row:
                raise TypeError(f"write_redis_stream writes non-empty mappings of fields (or StreamEntry "
                                f"values), got {row!r}")
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

    Put it after ``tf.batch(n)``. An item is a mapping of field to value (``str``,
    ``bytes``, ``int`` or ``float``), or a ``StreamEntry`` (its fields: copy a stream).
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
