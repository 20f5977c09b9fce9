"""Planning a run that tracks acknowledgements: every stage lifted to ``Tracked`` items.

``track(spec)`` gives the same stage working on ``Tracked(value, ticket, index)`` items, so that
user code sees the value while the ticket travels beside it (see ``_acks`` for the theory:
what settles when). Only runs whose source asked for acknowledgements are lifted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs

from . import _stage as s
from . import _time
from ._acks import Tracked, settle
from ._callables import CallKind, LiftedInstance
from ._errors import DefinitionValueError
from ._ops import outputs_of

# -- lifting stages ------------------------------------------------------------------------------


def _lift_value(fn: Callable[..., Any], kind: CallKind) -> Callable[..., Any]:
    """``fn(value)``, the result in the same ``Tracked`` (a 1:1 stage owns the item it was
    handed: no other branch sees it, since a broadcast gives each branch its own; a call
    that raises leaves it as it was, for a retry or a dead letter)."""
    if kind is CallKind.ASYNC:
        async def lifted(t: Tracked) -> Tracked:
            t.value = await fn(t.value)
            return t

        return lifted

    def lifted_sync(t: Tracked) -> Tracked:
        t.value = fn(t.value)
        return t

    lifted_sync.trioflow_plain = fn  # type: ignore[attr-defined]  # for a ``LotChunk``: ``_acks.plain_of``
    return lifted_sync


def _lift_key(key: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if key is None:
        return None

    def lifted(t: Tracked) -> Any:
        return key(t.value)

    lifted.trioflow_plain = key  # type: ignore[attr-defined]
    return lifted


def _lift_filter(pred: Callable[..., Any], kind: CallKind) -> Callable[..., Any]:
    """A dropped item is terminal: its part settles when the predicate says no."""
    if kind is CallKind.ASYNC:
        async def keep(t: Tracked) -> bool:
            if await pred(t.value):
                return True
            settle(t)
            return False

        return keep

    def keep_sync(t: Tracked) -> bool:
        if pred(t.value):
            return True
        settle(t)
        return False

    keep_sync.trioflow_plain = pred  # type: ignore[attr-defined]  # for a ``LotChunk``
    return keep_sync


def _lift_side(fn: Callable[..., Any], kind: CallKind, *, settles: bool) -> Callable[..., Any]:
    """``fn(value)`` for its effect (``tap``; a sink when ``settles``: the call returning
    is the sink's commit)."""
    if kind is CallKind.ASYNC:
        async def side(t: Tracked) -> Any:
            result = await fn(t.value)
            if settles:
                settle(t)
            return result

        return side

    def side_sync(t: Tracked) -> Any:
        result = fn(t.value)
        if settles:
            settle(t)
        return result

    return side_sync


def _children(t: Tracked, outs: list[Any]) -> list[Tracked]:
    ticket = t.ticket
    if not outs:
        settle(t)  # no child: the item is done
        return []
    index = t.index
    if ticket is not None and len(outs) > 1:
        ticket.add(index, len(outs) - 1)  # one part per child, the item's own part among them
    return [Tracked(out, ticket, index) for out in outs]


def _lift_flat(fn: Callable[..., Any], kind: CallKind) -> Callable[..., Any]:
    """Every child carries the item's ticket (one part each); the item settles when the
    last child does. A generator's children are counted as they come, and its own part
    settles when it finished; the parts of the children of an attempt that failed (or was
    closed early) are taken back, since those children are never handed on whole."""
    if kind is CallKind.SYNC:
        def flat(t: Tracked) -> list[Tracked]:
            return _children(t, outputs_of(fn(t.value)))

        return flat
    if kind is CallKind.ASYNC:
        async def aflat(t: Tracked) -> list[Tracked]:
            return _children(t, outputs_of(await fn(t.value)))

        return aflat
    if kind is CallKind.SYNC_GEN:
        def gen(t: Tracked) -> Iterator[Tracked]:
            ticket, index, n = t.ticket, t.index, 0
            try:
                for out in fn(t.value):
                    if ticket is not None:
                        ticket.add(index, 1)
                        n += 1
                    yield Tracked(out, ticket, index)
            except BaseException:
                if ticket is not None and n:
                    ticket.add(index, -n)
                raise
            settle(t)

        return gen

    async def agen(t: Tracked) -> AsyncIterator[Tracked]:
        ticket, index, n = t.ticket, t.index, 0
        try:
            async for out in fn(t.value):
                if ticket is not None:
                    ticket.add(index, 1)
                    n += 1
                yield Tracked(out, ticket, index)
        except BaseException:
            if ticket is not None and n:
                ticket.add(index, -n)
            raise
        settle(t)

    return agen


def _lift_scan(fn: Callable[..., Any], kind: CallKind) -> Callable[..., Any]:
    """The accumulator travels tracked too: each output carries its input's ticket."""
    if kind is CallKind.ASYNC:
        async def step(acc: Tracked, t: Tracked) -> Tracked:
            return Tracked(await fn(acc.value, t.value), t.ticket, t.index)

        return step

    def step_sync(acc: Tracked, t: Tracked) -> Tracked:
        return Tracked(fn(acc.value, t.value), t.ticket, t.index)

    return step_sync


def _lift_fold(fn: Callable[..., Any], kind: CallKind) -> Callable[..., Any]:
    """``reduce``: the accumulator stays plain (it is the run's result); an item folded in
    is done."""
    if kind is CallKind.ASYNC:
        async def fold(acc: Any, t: Tracked) -> Any:
            acc = await fn(acc, t.value)
            settle(t)
            return acc

        return fold

    def fold_sync(acc: Any, t: Tracked) -> Any:
        acc = fn(acc, t.value)
        settle(t)
        return acc

    return fold_sync


async def _lift_tracked(t: Tracked, call: Callable[[Any], Any]) -> Tracked:
    t.value = await call(t.value)  # (as in ``_lift_value``: the stage owns the item)
    return t


def track(spec: Any, name: str) -> Any:
    """``spec`` lifted to tracked items (see the module docstring), or a
    ``DefinitionValueError`` naming the node when it cannot carry acknowledgements yet."""
    evolve = attrs.evolve
    backend = getattr(spec, "backend", None)
    if backend is not None and not getattr(backend, "runs_inline", False):
        raise DefinitionValueError(
            f"{spec.operator} {name!r} runs on a worker backend ({backend!r}), which a run that "
            "tracks acknowledgements cannot use yet (tickets live on the Trio thread)"
        )
    if isinstance(spec, s.IterableSource | s.TaskSource):
        return spec
    if isinstance(spec, s.FlatMapStage):
        return evolve(spec, fn=_lift_flat(spec.fn, spec.kind))
    if isinstance(spec, s.FilterStage):
        return evolve(spec, fn=_lift_filter(spec.fn, spec.kind))
    if isinstance(spec, s.TapStage):
        return evolve(spec, fn=_lift_side(spec.fn, spec.kind, settles=False))
    if isinstance(spec, s.MapStage):
        return evolve(spec, fn=_lift_value(spec.fn, spec.kind), key=_lift_key(spec.key))
    if isinstance(spec, s.TakeWhileStage):
        return evolve(spec, fn=_lift_key(spec.fn) if spec.kind is CallKind.SYNC
                      else _lift_async_pred(spec.fn))
    if isinstance(spec, s.ScanStage):
        return evolve(spec, fn=_lift_scan(spec.fn, spec.kind), initial=Tracked(spec.initial, None, 0),
                      key=_lift_key(spec.key), tracked=True)
    if isinstance(spec, s.PersistentStage):
        pfn = spec.fn

        async def with_resource(res: Any, t: Tracked) -> Tracked:
            t.value = await pfn(res, t.value)  # (as in ``_lift_value``: the stage owns the item)
            return t

        return evolve(spec, fn=with_resource)
    if isinstance(spec, s.OnDemandStage):
        factory = spec.factory
        return evolve(spec, factory=lambda: LiftedInstance(factory(), _lift_tracked))
    if isinstance(spec, s.TakeStage):
        return spec  # what it lets through keeps its ticket; the rest is never done
    if isinstance(spec, s.BatchStage | s.ListSink | s.DiscardSink | s.BroadcastSpec | s.ZipSpec):
        return evolve(spec, tracked=True)
    if isinstance(spec, s.FnSink):
        return evolve(spec, fn=_lift_side(spec.fn, spec.kind, settles=True))
    if isinstance(spec, s.ReduceSink):
        return evolve(spec, fn=_lift_fold(spec.fn, spec.kind))
    if isinstance(spec, s.RouteSpec):
        return evolve(spec, key=_lift_key(spec.key))
    if isinstance(spec, s.BalanceSpec | s.MergeSpec | _time.ThrottleStage | _time.DelayStage):
        return spec  # they pass items on unchanged, tickets and all
    raise DefinitionValueError(
        f"{spec.operator} {name!r} does not carry acknowledgements yet: a run whose source "
        "asks for them (on_ack=) can use sources from_iterable and source, and map, filter, "
        "tap, flat_map, take, take_while, scan, batch, persistent, on_demand, parallel, "
        "throttle, delay, the sinks, broadcast, route, balance, merge and zip"
    )


def _lift_async_pred(pred: Callable[..., Any]) -> Callable[..., Any]:
    async def lifted(t: Tracked) -> Any:
        return await pred(t.value)

    return lifted


def tracks(specs: list[Any]) -> bool:
    """Whether a run of these specs tracks acknowledgements (a source asked for them)."""
    return any(getattr(spec, "on_ack", None) is not None for spec in specs)
