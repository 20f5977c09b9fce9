"""From plan nodes to live heads and ops.
"""

from __future__ import annotations

from .._ops import (
    BatchOp,
    CallSinkOp,
    DiscardOp,
    DistinctOp,
    DistinctUntilChangedOp,
    EnumerateOp,
    FilterOp,
    FlatMapOp,
    KeyedScanOp,
    ListSinkOp,
    MapOp,
    Op,
    ReduceSinkOp,
    ScanOp,
    SkipOp,
    SkipWhileOp,
    StartWithOp,
    TakeLastOp,
    TakeOp,
    TakeWhileOp,
    TapOp,
)
from .._plan import PlanNode
from .._stage import (
    AsyncIterableSource,
    BatchStage,
    ChannelSource,
    ConcatSource,
    ContinuousStage,
    DiscardSink,
    DistinctStage,
    DistinctUntilChangedStage,
    EnumerateStage,
    FilterStage,
    FlatMapStage,
    FnSink,
    FnStage,
    IterableSource,
    ListSink,
    MapStage,
    OnDemandStage,
    PeriodicSource,
    PersistentStage,
    PooledFnStage,
    ReduceSink,
    ScanStage,
    SkipStage,
    SkipWhileStage,
    StartWithStage,
    TakeLastStage,
    TakeStage,
    TakeWhileStage,
    TapStage,
    TaskSource,
)
from ._backend import BackendHead
from ._concat import ConcatHead
from ._pool import PoolHead
from ._segment import Head, _guard_for
from ._sources import AsyncIterableHead, ChannelHead, IterableHead, PeriodicHead, TaskSourceHead
from ._stages import AsyncEachHead, BatchTimerHead, ContinuousHead
from ._time import TIME_HEADS


def _make_op(node: PlanNode) -> Op:
    op = _build_op(node)
    op.guard = _guard_for(node)
    op.envelope = bool(getattr(node.spec, "envelope", False))
    return op


def _build_op(node: PlanNode) -> Op:
    spec = node.spec
    name = node.name
    if isinstance(spec, MapStage):
        return MapOp(name, spec.fn)
    if isinstance(spec, FilterStage):
        return FilterOp(name, spec.fn)
    if isinstance(spec, FlatMapStage):
        return FlatMapOp(name, spec.fn)
    if isinstance(spec, TapStage):
        return TapOp(name, spec.fn)
    if isinstance(spec, TakeWhileStage):
        return TakeWhileOp(name, spec.fn)
    if isinstance(spec, ScanStage) and spec.key is not None:
        return KeyedScanOp(name, spec.fn, spec.initial, spec.key, spec.tracked)
    if isinstance(spec, ScanStage):
        return ScanOp(name, spec.fn, spec.initial, spec.tracked)
    if isinstance(spec, TakeStage):
        return TakeOp(name, spec.count)
    if isinstance(spec, SkipStage):
        return SkipOp(name, spec.count)
    if isinstance(spec, BatchStage):
        return BatchOp(name, spec.size, spec.tracked)
    if isinstance(spec, SkipWhileStage):
        return SkipWhileOp(name, spec.fn)
    if isinstance(spec, DistinctStage):
        return DistinctOp(name, spec.fn, spec.max_keys)
    if isinstance(spec, DistinctUntilChangedStage):
        return DistinctUntilChangedOp(name, spec.fn)
    if isinstance(spec, TakeLastStage):
        return TakeLastOp(name, spec.count)
    if isinstance(spec, StartWithStage):
        return StartWithOp(name, spec.items)
    if isinstance(spec, EnumerateStage):
        return EnumerateOp(name, spec.start)
    if isinstance(spec, FnSink):
        return CallSinkOp(name, spec.fn)
    if isinstance(spec, ListSink):
        return ListSinkOp(name, spec.tracked)
    if isinstance(spec, ReduceSink):
        return ReduceSinkOp(name, spec.fn, spec.initial)
    if isinstance(spec, DiscardSink):
        return DiscardOp(name, spec.tracked)
    raise AssertionError(f"no inline op for {spec!r}")  # pragma: no cover


def _make_head(node: PlanNode) -> Head:
    spec = node.spec
    if isinstance(spec, IterableSource):
        return IterableHead(node, spec)
    if isinstance(spec, AsyncIterableSource):
        return AsyncIterableHead(node, spec)
    if isinstance(spec, ChannelSource):
        return ChannelHead(node, spec)
    if isinstance(spec, PeriodicSource):
        return PeriodicHead(node, spec)
    if isinstance(spec, TaskSource):
        return TaskSourceHead(node, spec)
    if isinstance(spec, ConcatSource):
        return ConcatHead(node, spec)
    if isinstance(spec, ContinuousStage):
        return ContinuousHead(node, spec)
    if isinstance(spec, BatchStage):
        return BatchTimerHead(node, spec)
    time_head = TIME_HEADS.get(type(spec))
    if time_head is not None:
        return time_head(node, spec)
    if isinstance(spec, FnStage | FnSink | ReduceSink) and spec.runs_elsewhere:
        return BackendHead(node, spec)
    if isinstance(spec, MapStage | PooledFnStage | FnSink) and spec.pooled:
        return PoolHead(node, spec)
    if isinstance(spec, PersistentStage | OnDemandStage):
        return PoolHead(node, spec)
    return AsyncEachHead(node, spec)


