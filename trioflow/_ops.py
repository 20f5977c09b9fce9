"""Fused inline operators: synchronous transforms of whole chunks.

Adjacent synchronous stages run inside one task, one chunk at a time (DESIGN §4). Each op
turns a list of items into a list of items with the tightest loop Python offers
(``list.extend(map(...))`` keeps the loop in C), and keeps its own counters for
``statistics()``. When user code raises, the op finds the failing item (``extend`` keeps
what it produced before the failure, so the index of the culprit is the length of the
output) and notes the stage and item on the exception before it propagates.

The ops are pure state machines, no Trio: they are tested directly and by Hypothesis.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from ._acks import LotChunk, Tracked, TrackedBatcher, plain_of, settle, unwrap
from ._errors import annotate
from ._policies import Guard
from ._stage import DROPPED

Chunk = list[Any]


class Op:
    """A fused, synchronous operator. ``done`` turns True when it wants no more input.

    With a ``guard`` (a stage with ``on_error=Skip()`` or ``DeadLetter(...)``), ``process``
    takes the per-item path: each item is processed on its own, and a failed item is handed
    to the guard (counted, dead-lettered) and produces nothing, so no item is ever emitted
    in part and skipped too."""

    __slots__ = ("done", "envelope", "errors", "guard", "n_in", "n_out", "name", "operator", "plain")

    def __init__(self, name: str, operator: str) -> None:
        self.name = name
        self.operator = operator
        self.n_in = 0
        self.n_out = 0
        self.errors = 0
        self.done = False
        self.guard: Guard | None = None
        #: items are ``(seq, value)`` envelopes of a fork_join/partition branch
        self.envelope = False
        #: the user's function, when the op's is its lift to tracked items (a map's, a
        #: filter's): what it applies to the values of a ``LotChunk``
        self.plain: Callable[[Any], Any] | None = None

    @property
    def takes_lots(self) -> bool:
        """Whether ``process`` takes a ``LotChunk`` (see ``_acks``); an op that does not
        gets the chunk's ``tracked()`` items (``Segment.emit``). A lifted map or filter
        without an error policy does (under a policy, a failed item is settled on its
        own: it needs its ``Tracked``)."""
        return self.plain is not None and self.guard is None

    def process(self, chunk: Chunk) -> Chunk:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_one(self, item: Any) -> Chunk:
        """The outputs for one item (the per-item path used under an error policy)."""
        raise NotImplementedError  # pragma: no cover

    def process_guarded(self, chunk: Chunk) -> Chunk:
        guard = self.guard
        assert guard is not None
        out: Chunk = []
        n = 0
        tombstones = 0
        for x in chunk:
            if self.done:
                break
            n += 1
            try:
                produced = self.apply_one(x)
            except Exception as exc:
                self.errors += 1
                if self.envelope:
                    # a branch never drops an envelope: the join would wait for it (a
                    # placeholder, not an output: the item counts as skipped or dead-lettered)
                    guard.handle(exc, x[1])
                    out.append((x[0], DROPPED))
                    tombstones += 1
                else:
                    guard.handle(exc, x)
                continue
            out.extend(produced)
        self.n_in += n
        self.n_out += len(out) - tombstones
        return out

    def flush(self) -> Chunk:
        """Called once when the input ended cleanly; returns what the op still holds."""
        return []

    def _failed(self, exc: BaseException, item: object) -> None:
        self.errors += 1
        annotate(exc, self.name, item)


class MapOp(Op):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "map")
        self.fn = fn
        self.plain = plain_of(fn)

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        out: Chunk = []
        lots = type(chunk) is LotChunk
        try:
            out.extend(map(self.plain if lots else self.fn, chunk))  # type: ignore[arg-type]
        except Exception as exc:
            self._failed(exc, chunk[len(out)])
            raise
        self.n_in += len(chunk)
        self.n_out += len(out)
        return chunk.like(out) if lots else out  # type: ignore[attr-defined]

    def apply_one(self, item: Any) -> Chunk:
        return [self.fn(item)]


class FilterOp(Op):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "filter")
        self.fn = fn
        self.plain = plain_of(fn)  # (the items it drops from a ``LotChunk``: settled by index)

    def apply_one(self, item: Any) -> Chunk:
        return [item] if self.fn(item) else []

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        keep: list[Any] = []
        lots = type(chunk) is LotChunk
        try:
            keep.extend(map(self.plain if lots else self.fn, chunk))  # type: ignore[arg-type]
        except Exception as exc:
            if lots:  # what was dropped before the failure is done (as item by item)
                _lot_kept(chunk, keep)  # type: ignore[arg-type]
            self._failed(exc, chunk[len(keep)])
            raise
        out = _lot_kept(chunk, keep) if lots else list(itertools.compress(chunk, keep))  # type: ignore[arg-type]
        self.n_in += len(chunk)
        self.n_out += len(out)
        return out


def _lot_kept(chunk: LotChunk, keep: list[Any]) -> LotChunk:
    """The items of ``chunk`` a predicate kept (``keep``: its answers for the first items),
    beside their lot; the ones it dropped are settled (done)."""
    n = len(chunk)
    if len(keep) == n and all(keep):
        return chunk
    indices = range(n) if chunk.indices is None else chunk.indices
    dropped = [i for i, k in zip(indices, keep, strict=False) if not k]  # (keep: shorter on a failure)
    if dropped:
        chunk.lot.settle_many(dropped)
    return LotChunk(list(itertools.compress(chunk, keep)), chunk.lot, list(itertools.compress(indices, keep)))


class EachOp(Op):
    """An op that produces an iterable of outputs per item, in order (``flat_map``; and
    ops whose output for an item depends on state the items before it left): a Python
    loop over the chunk, but no task and no channel hop."""

    __slots__ = ()

    def each(self) -> Callable[[Any], Any]:
        """The per-item call of the fast path (``apply_one`` unless an op has a cheaper one)."""
        return self.apply_one

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        out: Chunk = []
        extend = out.extend
        fn = self.each()
        x = None
        # the last result; if ``fn`` raises, ``r`` is the one before, which was iterable
        # (or this empty tuple): so a result that is not iterable is told apart from an
        # error of ``fn`` without any per-item work beyond naming the result
        r: Any = ()
        try:
            for x in chunk:
                r = fn(x)
                extend(r)
        except Exception as exc:
            if isinstance(exc, TypeError) and not hasattr(r, "__iter__"):
                err = not_iterable(r)  # the function returned, `extend` failed
                self._failed(err, x)
                raise err from exc
            self._failed(exc, x)
            raise
        self.n_in += len(chunk)
        self.n_out += len(out)
        return out



def not_iterable(result: object) -> TypeError:
    """A clear error for a ``flat_map`` function whose result is not iterable, most often
    an unannotated plain function returning an async iterable (an annotated one is refused
    when the stage is defined). The stage's note names the stage."""
    hint = (" (an async iterable: write the function as an async generator function, async "
            "def with yield; `async for x in it: yield x` hands on another async iterable)"
            if hasattr(result, "__aiter__") else "")
    return TypeError(
        f"flat_map's function returned a {type(result).__name__!r}, which is not iterable"
        f"{hint}; flat_map iterates the function's result with `for`")


def outputs_of(result: Any) -> list[Any]:
    """``flat_map``: the outputs of one call, as a list (materialised: a failure mid-way
    emits nothing); a clear error when the result is not iterable."""
    if not hasattr(result, "__iter__"):
        raise not_iterable(result)
    return list(result)


class FlatMapOp(EachOp):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "flat_map")
        self.fn = fn

    def apply_one(self, item: Any) -> Chunk:
        return outputs_of(self.fn(item))

    def each(self) -> Callable[[Any], Any]:
        return self.fn  # ``extend`` consumes the iterable directly


class TapOp(Op):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "tap")
        self.fn = fn

    def apply_one(self, item: Any) -> Chunk:
        self.fn(item)
        return [item]

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        done: list[Any] = []
        try:
            done.extend(map(self.fn, chunk))
        except Exception as exc:
            self._failed(exc, chunk[len(done)])
            raise
        self.n_in += len(chunk)
        self.n_out += len(chunk)
        return chunk


class TakeOp(Op):
    __slots__ = ("left",)

    def __init__(self, name: str, count: int) -> None:
        super().__init__(name, "take")
        self.left = count
        self.done = count == 0

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        left = self.left
        if len(chunk) >= left:
            out = chunk[:left]
            self.left = 0
            self.done = True
        else:
            out = chunk
            self.left = left - len(chunk)
        self.n_out += len(out)
        return out


class SkipOp(Op):
    __slots__ = ("left",)

    def __init__(self, name: str, count: int) -> None:
        super().__init__(name, "skip")
        self.left = count

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        left = self.left
        if left:
            if len(chunk) <= left:
                self.left = left - len(chunk)
                return []
            chunk = chunk[left:]
            self.left = 0
        self.n_out += len(chunk)
        return chunk


class TakeWhileOp(Op):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "take_while")
        self.fn = fn

    def apply_one(self, item: Any) -> Chunk:
        if self.fn(item):
            return [item]
        self.done = True
        return []

    def process(self, chunk: Chunk) -> Chunk:
        if self.done:
            return []
        if self.guard is not None:
            return self.process_guarded(chunk)
        fn = self.fn
        n = 0
        x = None
        try:
            for x in chunk:
                if not fn(x):
                    self.done = True
                    break
                n += 1
        except Exception as exc:
            self._failed(exc, x)
            raise
        self.n_in += n + (1 if self.done else 0)
        self.n_out += n
        return chunk if n == len(chunk) else chunk[:n]


class ScanOp(Op):
    __slots__ = ("acc", "fn", "tracked")

    def __init__(self, name: str, fn: Callable[[Any, Any], Any], initial: Any,
                 tracked: bool = False) -> None:
        super().__init__(name, "scan")
        self.fn = fn
        self.acc = initial
        self.tracked = tracked

    def apply_one(self, item: Any) -> Chunk:
        self.acc = self.fn(self.acc, item)  # a failed item leaves the accumulator unchanged
        return [scan_output(self.acc, self.tracked)]

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        out: Chunk = []
        append = out.append
        fn = self.fn
        acc = self.acc
        x = None
        try:
            for x in chunk:
                acc = fn(acc, x)
                append(acc)
        except Exception as exc:
            self._failed(exc, x)
            raise
        finally:
            self.acc = acc
        self.n_in += len(chunk)
        self.n_out += len(out)
        if self.tracked:
            return [Tracked(t.value, t.ticket, t.index) for t in out]
        return out


def scan_output(acc: Any, tracked: bool) -> Any:
    """What a scan emits: its accumulator; in a run with acknowledgements a new ``Tracked``
    with the item's ticket, so that a 1:1 stage downstream, which changes its item in
    place, cannot change the accumulator the next step starts from."""
    if tracked:
        return Tracked(acc.value, acc.ticket, acc.index)
    return acc


def keyed_output(key: Any, acc: Any, tracked: bool) -> Any:
    """What a keyed scan emits: ``(key, acc)``; in a run with acknowledgements the pair
    travels in a new ``Tracked`` with the item's ticket (the stored accumulator is never
    handed downstream, where a 1:1 stage would change it in place)."""
    if tracked:
        return Tracked((key, acc.value), acc.ticket, acc.index)
    return (key, acc)


class KeyedScanOp(EachOp):
    """``scan(fn, initial, key=k)``: one accumulator per key, each from ``initial``."""

    __slots__ = ("accs", "fn", "initial", "key", "tracked")

    def __init__(self, name: str, fn: Callable[[Any, Any], Any], initial: Any,
                 key: Callable[[Any], Any], tracked: bool) -> None:
        super().__init__(name, "scan")
        self.fn = fn
        self.key = key
        self.initial = initial
        self.tracked = tracked
        #: the accumulator of every key seen in this run
        self.accs: dict[Any, Any] = {}

    def apply_one(self, item: Any) -> Chunk:
        # a failed item (key, unhashable key, fn) leaves every accumulator unchanged
        k = self.key(item)
        acc = self.fn(self.accs.get(k, self.initial), item)
        self.accs[k] = acc
        return [keyed_output(k, acc, self.tracked)]


class SkipWhileOp(EachOp):
    __slots__ = ("fn", "skipping")

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "skip_while")
        self.fn = fn
        self.skipping = True

    def apply_one(self, item: Any) -> Chunk:
        if self.skipping:
            if self.fn(item):
                return []
            self.skipping = False
        return [item]

    def process(self, chunk: Chunk) -> Chunk:
        if self.skipping:
            return super().process(chunk)
        self.n_in += len(chunk)  # past the skipped prefix: the chunk passes as it is
        self.n_out += len(chunk)
        return chunk


class KeyMemory:
    """The keys ``distinct`` has seen: every one, or (with ``limit``) the ``limit`` most
    recently seen, in a dict used as an LRU (insertion order; a key seen again moves to
    the end). Pure state, shared by the fused op and the async head."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.seen: dict[Any, None] = {}

    def first(self, key: Any) -> bool:
        """Whether ``key`` is new (then it is remembered). An unhashable key raises
        ``TypeError``, an error of the key function."""
        seen = self.seen
        if key in seen:
            if self.limit is not None:
                del seen[key]
                seen[key] = None
            return False
        seen[key] = None
        if self.limit is not None and len(seen) > self.limit:
            del seen[next(iter(seen))]
        return True


class _Nothing:
    __slots__ = ()


_NOTHING = _Nothing()


class LastKey:
    """The key of the last item ``distinct_until_changed`` passed on. Pure state."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: Any = _NOTHING

    def changed(self, key: Any) -> bool:
        """Whether ``key`` differs from the last one (then it becomes the last one)."""
        if self.last is not _NOTHING and self.last == key:
            return False
        self.last = key
        return True


class DistinctOp(EachOp):
    __slots__ = ("fn", "memory")

    def __init__(self, name: str, fn: Callable[[Any], Any], max_keys: int | None) -> None:
        super().__init__(name, "distinct")
        self.fn = fn
        self.memory = KeyMemory(max_keys)

    def apply_one(self, item: Any) -> Chunk:
        return [item] if self.memory.first(self.fn(item)) else []


class DistinctUntilChangedOp(EachOp):
    __slots__ = ("fn", "last")

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "distinct_until_changed")
        self.fn = fn
        self.last = LastKey()

    def apply_one(self, item: Any) -> Chunk:
        return [item] if self.last.changed(self.fn(item)) else []


class TakeLastOp(Op):
    """Holds the last ``count`` items; hands them on only from ``flush``, which the
    segment calls once the input ended cleanly (never after a failure or cancellation)."""

    __slots__ = ("kept",)

    def __init__(self, name: str, count: int) -> None:
        super().__init__(name, "take_last")
        self.kept: deque[Any] = deque(maxlen=count)

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        self.kept.extend(chunk)
        return []

    def flush(self) -> Chunk:
        out = list(self.kept)
        self.kept.clear()
        self.n_out += len(out)
        return out


class StartWithOp(Op):
    """Puts ``items`` before the first chunk, or hands them on from ``flush`` when the
    input ended without one."""

    __slots__ = ("items", "pending")

    def __init__(self, name: str, items: tuple[Any, ...]) -> None:
        super().__init__(name, "start_with")
        self.items = items
        self.pending = True

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        if self.pending:
            self.pending = False
            chunk = [*self.items, *chunk]
        self.n_out += len(chunk)
        return chunk

    def flush(self) -> Chunk:
        if not self.pending:
            return []
        self.pending = False
        self.n_out += len(self.items)
        return list(self.items)


class EnumerateOp(Op):
    __slots__ = ("next",)

    def __init__(self, name: str, start: int) -> None:
        super().__init__(name, "enumerate")
        self.next = start

    def process(self, chunk: Chunk) -> Chunk:
        n = self.next
        out = list(zip(range(n, n + len(chunk)), chunk, strict=True))
        self.next = n + len(chunk)
        self.n_in += len(chunk)
        self.n_out += len(out)
        return out


class Batcher:
    """Pure batching state: groups items into lists of at most ``size``, never empty."""

    __slots__ = ("current", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.current: list[Any] = []

    def add(self, chunk: Chunk) -> list[list[Any]]:
        """Add items; return the batches that became full (in order)."""
        size = self.size
        cur = self.current
        need = size - len(cur)
        if len(chunk) < need:
            cur.extend(chunk)
            return []
        cur.extend(chunk[:need])
        full = [cur]
        pos = need
        n = len(chunk)
        while n - pos >= size:
            full.append(chunk[pos : pos + size])
            pos += size
        self.current = chunk[pos:]
        return full

    def take_partial(self) -> list[list[Any]]:
        """Return the partial batch (if any) and start a new one."""
        if not self.current:
            return []
        cur = self.current
        self.current = []
        return [cur]


class BatchOp(Op):
    __slots__ = ("batcher", "tracked")

    @property
    def takes_lots(self) -> bool:
        return self.tracked

    def __init__(self, name: str, size: int, tracked: bool = False) -> None:
        super().__init__(name, "batch")
        # tracked: batches carry one ticket over their members
        self.batcher: Batcher | TrackedBatcher = TrackedBatcher(size) if tracked else Batcher(size)
        self.tracked = tracked

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        out = self.batcher.add(chunk)
        self.n_out += len(out)
        return out

    def flush(self) -> Chunk:
        out = self.batcher.take_partial()
        self.n_out += len(out)
        return out


# -- sink ops: the last op of a segment; they return nothing and hold the run's result ------


class SinkOp(Op):
    __slots__ = ()

    def result(self) -> Any:
        return None


class CallSinkOp(SinkOp):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, "sink")
        self.fn = fn

    def apply_one(self, item: Any) -> Chunk:
        self.fn(item)
        return []

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        done: list[Any] = []
        try:
            done.extend(map(self.fn, chunk))
        except Exception as exc:
            self._failed(exc, chunk[len(done)])
            raise
        self.n_in += len(chunk)
        return []


class DiscardOp(SinkOp):
    __slots__ = ("tracked",)

    def __init__(self, name: str, tracked: bool = False) -> None:
        super().__init__(name, "discard")
        self.tracked = tracked

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        if self.tracked:
            for item in chunk:  # dropping is this sink's commit: the items are done
                settle(item)
        return []


class ListSinkOp(SinkOp):
    __slots__ = ("items", "tracked")

    def __init__(self, name: str, tracked: bool = False) -> None:
        super().__init__(name, "to_list")
        self.items: list[Any] = []
        self.tracked = tracked

    def process(self, chunk: Chunk) -> Chunk:
        self.n_in += len(chunk)
        if self.tracked:
            self.items.extend(unwrap(t) for t in chunk)
            for item in chunk:  # in the list: done
                settle(item)
        else:
            self.items.extend(chunk)
        return []

    def result(self) -> Any:
        return self.items


class ReduceSinkOp(SinkOp):
    __slots__ = ("acc", "fn")

    def __init__(self, name: str, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        super().__init__(name, "reduce")
        self.fn = fn
        self.acc = initial

    def apply_one(self, item: Any) -> Chunk:
        self.acc = self.fn(self.acc, item)
        return []

    def process(self, chunk: Chunk) -> Chunk:
        if self.guard is not None:
            return self.process_guarded(chunk)
        fn = self.fn
        acc = self.acc
        x = None
        try:
            for x in chunk:
                acc = fn(acc, x)
        except Exception as exc:
            self._failed(exc, x)
            raise
        finally:
            self.acc = acc
        self.n_in += len(chunk)
        return []

    def result(self) -> Any:
        return self.acc
