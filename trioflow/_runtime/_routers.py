"""Fan-out routers: the output of a segment that ends in ``broadcast``, ``balance`` or
``route``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import trio

from .._acks import LotChunk, Tracked, plain_of
from .._edge import DownstreamClosed, Edge
from .._errors import UnroutableError, annotate
from .._plan import DEFAULT, PlanNode, RoutePort
from .._stage import (
    BalanceSpec,
    BroadcastSpec,
    RouteSpec,
)


class Router:
    """The output of a segment that ends in a fan-out junction: decides, per chunk, which
    edges get which items. Shares ``put``/``close_send`` with ``Edge``."""

    #: takes a ``LotChunk`` as it is (see ``Output``)
    takes_lots = False

    def __init__(self, node: PlanNode, edges: list[Edge]) -> None:
        self.node = node
        self.edges = edges
        self.live = list(edges)
        self.n_in = 0
        self.n_out = 0
        self.errors = 0
        self._busy = False
        self._turn = trio.lowlevel.ParkingLot()

    async def put(self, chunk: list[Any]) -> None:
        """Route ``chunk``. Several tasks of one segment (the workers of an unordered pool)
        may put at once; their chunks pass through one at a time, in the order the puts
        began, so that every branch of a ``broadcast`` sees one and the same sequence (and
        the numbering of a ``fork_join``/``partition`` stays increasing on every branch),
        whichever put has to wait for room. The turn is handed from one put to the next."""
        if self._busy:
            await self._turn.park()  # woken holding the turn
        else:
            self._busy = True
        try:
            await self._route(chunk)
        finally:
            if self._turn:
                self._turn.unpark()
            else:
                self._busy = False

    async def _route(self, chunk: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close_send(self) -> None:
        for edge in self.edges:
            edge.close_send()

    def _dead(self, edge: Edge) -> None:
        if edge in self.live:
            self.live.remove(edge)
        if not self.live:
            raise DownstreamClosed


class BroadcastRouter(Router):
    """Every item to every live branch, each through its own bounded edge: the slowest
    branch sets the pace; a branch that stopped (``take``) is skipped from then on. A
    tracked item is done once every branch is done with it: its ticket gets a part per
    extra branch."""

    def __init__(self, node: PlanNode, edges: list[Edge]) -> None:
        super().__init__(node, edges)
        spec = node.spec
        assert isinstance(spec, BroadcastSpec)
        self.tracked = spec.tracked

    async def _route(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        live = list(self.live)
        if self.tracked and len(live) > 1:
            for item in chunk:
                if item.ticket is not None:
                    item.ticket.add(item.index, len(live) - 1)
        last = len(live) - 1
        for i, edge in enumerate(live):
            try:
                # every put gets a list of its own (the last the original): consumers may
                # extend chunks in place, and one edge may be fed twice (merge(fan, fan));
                # tracked items are copied too, since a 1:1 stage updates its item in place
                if i == last:
                    part = chunk
                elif self.tracked:
                    part = [Tracked(t.value, t.ticket, t.index) for t in chunk]
                else:
                    part = list(chunk)
                await edge.put(part)
                self.n_out += len(chunk)
            except DownstreamClosed:
                self._dead(edge)


class BalanceRouter(Router):
    """Each item to one branch, the first that is free: a branch is free while its stage
    waits for input, for as many items as it asked for (a stage on such an edge asks for
    no more than it can start at once: one for a single task, the free workers of a pool).
    The chunk goes to the branches that asked most first, split to fit; while no branch
    asks, the balancer waits (backpressure). Items therefore never queue behind a busy
    branch while another could start them."""

    def __init__(self, node: PlanNode, edges: list[Edge]) -> None:
        super().__init__(node, edges)
        self._space = trio.lowlevel.ParkingLot()
        for edge in edges:
            edge.watchers.append(self._space)
            edge.demand = True

    async def _route(self, chunk: list[Any]) -> None:
        self.n_in += len(chunk)
        while chunk:
            for edge in list(self.live):
                if edge.receive_closed:
                    self._dead(edge)
            best = max(self.live, key=_asked)
            asked = _asked(best)
            if asked <= 0:
                await self._space.park()
                continue
            part, chunk = (chunk, []) if asked >= len(chunk) else (chunk[:asked], chunk[asked:])
            try:
                await best.put(part)
                self.n_out += len(part)
            except DownstreamClosed:
                chunk = part + chunk
                self._dead(best)


def _asked(edge: Edge) -> int:
    """How many more items the consumer of ``edge`` asked for and can take without waiting."""
    return min(edge.wanted - edge.items, _room(edge)) if edge.wanted else 0


class RouteRouter(Router):
    """Each item to the branch named by ``key(item)``; unmatched keys go to the default
    branch, or fail the run with ``UnroutableError`` when there is none. Items for a branch
    that stopped are dropped."""

    def __init__(self, node: PlanNode, edges: list[Edge], ports: tuple[Any, ...]) -> None:
        super().__init__(node, edges)
        spec = node.spec
        assert isinstance(spec, RouteSpec)
        self.key = spec.key
        #: the user's key, when ``key`` is its lift to tracked items (``LotChunk`` input)
        self.plain_key = plain_of(spec.key)
        self.takes_lots = self.plain_key is not None
        self.by_key: dict[Any, Edge] = {}
        self.default: Edge | None = None
        for port, edge in zip(ports, edges, strict=True):
            if port is DEFAULT:
                self.default = edge
            else:
                assert isinstance(port, RoutePort)
                self.by_key[port.key] = edge

    def _unroutable(self, key: object) -> UnroutableError:
        return UnroutableError(
            f"route {self.node.name!r}: no branch for key {key!r} and no default branch"
        )

    async def _route(self, chunk: list[Any]) -> None:
        n = len(chunk)
        if not n:
            return
        self.n_in += n
        lots = type(chunk) is LotChunk
        keys: list[Any] = []
        try:
            # keys in C's loop (``extend`` keeps what came before a failure: the culprit's index)
            keys.extend(map(self.plain_key if lots else self.key, chunk))  # type: ignore[arg-type]
        except Exception as exc:
            self._failed(exc, chunk[len(keys)])
        first = keys[0]
        try:
            # one branch for the whole chunk (the common case)
            edge = self.by_key.get(first, self.default) if keys.count(first) == n else _SPLIT
        except Exception as exc:  # an unhashable key, or one that cannot be compared
            self._failed(exc, chunk[0])
        if edge is not _SPLIT:
            if edge is None:
                self._failed(self._unroutable(first), chunk[0])
            await self._put(edge, chunk)
            return
        parts = self._split(chunk, keys)
        if lots:
            lot, indices = chunk.lot, chunk.indices  # type: ignore[attr-defined]
            for edge, positions in parts:
                values = [chunk[i] for i in positions]
                if indices is not None:
                    positions = [indices[i] for i in positions]
                await self._put(edge, LotChunk(values, lot, positions))
        else:
            for edge, positions in parts:
                await self._put(edge, [chunk[i] for i in positions])

    def _split(self, chunk: list[Any], keys: list[Any]) -> list[tuple[Edge, list[int]]]:
        """The positions in ``chunk`` of each branch's items, in order (fails for an item
        that no branch takes)."""
        by_edge: dict[int, tuple[Edge, list[int]]] = {}
        by_key, default = self.by_key, self.default
        for i, key in enumerate(keys):
            try:
                edge = by_key.get(key, default)
            except Exception as exc:  # an unhashable key
                self._failed(exc, chunk[i])
            if edge is None:
                self._failed(self._unroutable(key), chunk[i])
            slot = by_edge.get(id(edge))
            if slot is None:
                by_edge[id(edge)] = (edge, [i])
            else:
                slot[1].append(i)
        return list(by_edge.values())

    def _failed(self, exc: Exception, item: object) -> NoReturn:
        self.errors += 1
        annotate(exc, self.node.name, item)
        raise exc

    async def _put(self, edge: Edge, items: list[Any]) -> None:
        if edge.receive_closed:
            self._dead(edge)
            return
        if type(items) is LotChunk and not edge.takes_lots:
            items = items.tracked()
        try:
            await edge.put(items)
            self.n_out += len(items)
        except DownstreamClosed:
            self._dead(edge)


#: ``RouteRouter._route``: the items of a chunk go to more than one branch
_SPLIT: Any = object()


def _room(edge: Edge) -> int:
    return (edge.capacity if edge.capacity is not None else 1 << 62) - edge.items


def _make_router(node: PlanNode, edges: list[Edge], ports: tuple[Any, ...]) -> Router:
    spec = node.spec
    if isinstance(spec, BroadcastSpec):
        return BroadcastRouter(node, edges)
    if isinstance(spec, BalanceSpec):
        return BalanceRouter(node, edges)
    assert isinstance(spec, RouteSpec)
    return RouteRouter(node, edges, ports)



