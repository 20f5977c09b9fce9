"""Split → branches → join as one expression: ``fork_join`` and ``partition``.

Both number the items (an envelope ``(seq, value)``), run the branches on the envelopes
with each branch stage *lifted* so that user code sees only the value, and bring the
results back together by ``seq``:

* ``fork_join(b1, b2, ...)``: every item goes to every branch (broadcast); a ``join``
  reunites the branch results of the same item into a tuple (or dict).
* ``partition(key, {k: branch, ...})``: each item goes to one branch (route by key); an
  ordered merge puts the results back into input order.

Only stages that keep one output per item and keep order can be lifted: ``map`` (plain,
async, concurrent when ordered, keyed), ``filter`` (a filtered item is dropped from the
join), ``tap``, ``persistent`` and ``on_demand`` (ordered) and ``parallel``. Others
(``flat_map``, ``batch``, ``take`` ...) fail at definition time, naming the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, TypeVar, overload

import attrs

from ._callables import CallKind, LiftedInstance, check_call
from ._errors import DefinitionTypeError, DefinitionValueError
from ._plan import DEFAULT, RoutePort
from ._stage import (
    DROPPED,
    BroadcastSpec,
    Chain,
    Composite,
    FilterStage,
    JoinSpec,
    MapStage,
    OnDemandStage,
    OrderedMergeSpec,
    PersistentStage,
    RouteSpec,
    ScanStage,
    Stage,
    TapStage,
)

T = TypeVar("T")
U = TypeVar("U")
Env = tuple[int, Any]


def _number(acc: Env, item: Any) -> Env:
    return (acc[0] + 1, item)




@attrs.frozen(kw_only=True)
class _Number(ScanStage[Any, Env]):
    operator: ClassVar[str] = "number"


@attrs.frozen(kw_only=True)
class _LiftedFilter(MapStage[Env, Env]):
    """A branch's filter: marks filtered envelopes instead of dropping them."""

    operator: ClassVar[str] = "filter"


def _branch_stages(branch: object, argument: str) -> tuple[Stage[Any, Any], ...]:
    if isinstance(branch, Chain):
        return branch.stages
    if isinstance(branch, Stage):
        return (branch,)
    raise DefinitionTypeError(f"{argument} must be a stage or stages joined with |, got {branch!r}")


def lift(stage: Stage[Any, Any], argument: str) -> Stage[Any, Any]:
    """The same stage working on ``(seq, value)`` envelopes: user code sees the value."""
    bad = f"{argument}: {stage.operator!r} cannot run inside a fork_join/partition branch"
    if isinstance(stage, MapStage):
        if stage.pooled and not stage.ordered:
            raise DefinitionValueError(f"{bad} with ordered=False: a branch must keep item order")
        fn = stage.fn
        if stage.kind is CallKind.ASYNC:
            async def lifted(env: Env) -> Env:
                return env if env[1] is DROPPED else (env[0], await fn(env[1]))
        else:
            def lifted(env: Env) -> Env:  # type: ignore[misc]
                return env if env[1] is DROPPED else (env[0], fn(env[1]))
        key = stage.key
        lifted_key = None if key is None else (lambda env: None if env[1] is DROPPED else key(env[1]))
        return attrs.evolve(stage, fn=lifted, key=lifted_key, envelope=True)
    if isinstance(stage, FilterStage | TapStage) and stage.pooled and not stage.ordered:
        raise DefinitionValueError(f"{bad} with ordered=False: a branch must keep item order")
    if isinstance(stage, FilterStage):
        pred = stage.fn
        if stage.kind is CallKind.ASYNC:
            async def keep(env: Env) -> Env:
                if env[1] is DROPPED or await pred(env[1]):
                    return env
                return (env[0], DROPPED)
        else:
            def keep(env: Env) -> Env:  # type: ignore[misc]
                return env if env[1] is DROPPED or pred(env[1]) else (env[0], DROPPED)
        return _LiftedFilter(fn=keep, concurrency=stage.concurrency if stage.pooled else 1,
                             name=stage.name, buffer=stage.buffer, overflow=stage.overflow,
                             on_error=stage.on_error, retry=stage.retry, timeout=stage.timeout,
                             envelope=True)
    if isinstance(stage, TapStage):
        side = stage.fn
        if stage.kind is CallKind.ASYNC:
            async def tap(env: Env) -> None:
                if env[1] is not DROPPED:
                    await side(env[1])
        else:
            def tap(env: Env) -> None:  # type: ignore[misc]
                if env[1] is not DROPPED:
                    side(env[1])
        return attrs.evolve(stage, fn=tap, envelope=True)
    if isinstance(stage, PersistentStage):
        if not stage.ordered:
            raise DefinitionValueError(f"{bad} with ordered=False: a branch must keep item order")
        pfn = stage.fn

        async def with_resource(res: Any, env: Env) -> Env:
            return env if env[1] is DROPPED else (env[0], await pfn(res, env[1]))

        return attrs.evolve(stage, fn=with_resource, envelope=True)
    if isinstance(stage, OnDemandStage):
        if not stage.ordered:
            raise DefinitionValueError(f"{bad} with ordered=False: a branch must keep item order")
        factory = stage.factory
        return attrs.evolve(stage, factory=lambda: LiftedInstance(factory(), _lift_envelope), envelope=True)
    raise DefinitionValueError(
        f"{bad}: branches must keep one output per item in order (map, filter, tap, "
        "persistent, on_demand, parallel)"
    )


async def _lift_envelope(env: Env, call: Callable[[Any], Any]) -> Env:
    return env if env[1] is DROPPED else (env[0], await call(env[1]))


def _lift_branch(branch: object, argument: str) -> tuple[Stage[Any, Any], ...]:
    return tuple(lift(s, argument) for s in _branch_stages(branch, argument))


def _add_branch(add: Callable[..., int], stages: tuple[Stage[Any, Any], ...],
                start: tuple[int, Hashable | None]) -> int:
    from ._plan import add_stage

    node = start
    for stage in stages:
        node = (add_stage(add, stage, node), None)
    return node[0]


@attrs.frozen(kw_only=True)
class ForkJoinStage(Composite[T, Any]):
    branches: tuple[tuple[Stage[Any, Any], ...], ...]
    keys: tuple[str, ...] | None = None

    operator: ClassVar[str] = "fork_join"

    def expand(self, add: Callable[..., int], input: tuple[int, Any]) -> int:
        numbered = add(_Number(fn=_number, initial=(-1, None)), (input,))
        fan = add(BroadcastSpec(), ((numbered, None),))
        ends = [_add_branch(add, stages, (fan, None)) for stages in self.branches]
        return add(JoinSpec(name=self.name, buffer=self.buffer, keys=self.keys),
                   tuple((e, None) for e in ends))


@attrs.frozen(kw_only=True)
class PartitionStage(Composite[T, Any]):
    key: Callable[[Any], Hashable]
    branches: tuple[tuple[Hashable, tuple[Stage[Any, Any], ...]], ...]
    default: tuple[Stage[Any, Any], ...] | None = None

    operator: ClassVar[str] = "partition"

    def expand(self, add: Callable[..., int], input: tuple[int, Any]) -> int:
        numbered = add(_Number(fn=_number, initial=(-1, None)), (input,))
        key = self.key
        route = add(RouteSpec(key=lambda env: key(env[1])), ((numbered, None),))
        ends = [_add_branch(add, stages, (route, RoutePort(k))) for k, stages in self.branches]
        if self.default is not None:
            ends.append(_add_branch(add, self.default, (route, DEFAULT)))
        return add(OrderedMergeSpec(name=self.name, buffer=self.buffer),
                   tuple((e, None) for e in ends))


@overload
def fork_join(*branches: Stage[T, Any], name: str | None = None,
              buffer: int | None = None) -> Stage[T, tuple[Any, ...]]: ...
@overload
def fork_join(*, name: str | None = None, buffer: int | None = None,
              **named: Stage[T, Any]) -> Stage[T, dict[str, Any]]: ...
def fork_join(*branches: Stage[T, Any], name: str | None = None, buffer: int | None = None,
              **named: Stage[T, Any]) -> Stage[T, Any]:
    """Split each item to every branch and join the branch results of the same item.

    ``fork_join(map(f), map(g) | filter(p))`` emits ``(f(x), g(x))`` per item, in input
    order; the named form ``fork_join(a=..., b=...)`` emits dicts. Items are numbered;
    the join reunites results by that number (an envelope id), not by position, so a
    branch that filters an item drops the item from the join (an inner join) rather than
    misaligning the rest. Branch stages see plain values; they must keep one output per
    item and item order (map, filter, tap, persistent, on_demand, parallel).

    * emits: one tuple (dict) per item that passed every branch, in input order;
    * backpressure: the broadcast waits for the slowest branch; each branch's edge and the
      join's inputs are bounded;
    * completes: when the input completes and every branch has drained;
    * cancelled: by the run or when downstream stops (every branch stops);
    * on error: an error in any branch fails the run (fail-fast), noted with the stage.
    """
    if branches and named:
        raise DefinitionTypeError("fork_join takes branches either positionally or by name, not both")
    if not branches and not named:
        raise DefinitionTypeError("fork_join needs at least one branch")
    if named:
        keys: tuple[str, ...] | None = tuple(named)
        lifted = tuple(_lift_branch(b, f"branch {k!r}") for k, b in named.items())
    else:
        keys = None
        lifted = tuple(_lift_branch(b, f"branches[{i}]") for i, b in enumerate(branches))
    return ForkJoinStage(branches=lifted, keys=keys, name=name, buffer=buffer)


def partition(
    key: Callable[[T], Hashable],
    branches: Mapping[Hashable, Stage[T, U]],
    *,
    default: Stage[T, U] | None = None,
    name: str | None = None,
    buffer: int | None = None,
) -> Stage[T, U]:
    """Send each item to the branch for ``key(item)`` and merge the results back into
    input order.

    ``partition(kind, {"json": map(parse_json), "csv": map(parse_csv)}, default=map(raw))``.
    Items are numbered; an ordered merge restores input order across branches (an item a
    branch filtered out is simply missing). Branch stages see plain values and must keep
    one output per item and item order (map, filter, tap, persistent, on_demand, parallel).

    * emits: the branch results in input order;
    * backpressure: a branch's bounded edge blocks the router; the ordered merge holds at
      most a bounded number of results per branch while an earlier item is in flight;
    * completes: when the input completes and every branch has drained;
    * cancelled: by the run or when downstream stops;
    * on error: a key with no branch and no ``default`` fails the run with
      ``UnroutableError``; an error in a branch fails the run.
    """
    if not callable(key):
        raise DefinitionTypeError(f"key must be callable, got {key!r}")
    check_call(key, "partition", "key(item)")
    if not isinstance(branches, Mapping) or not branches:
        raise DefinitionValueError(f"branches must be a non-empty mapping of key -> stage, got {branches!r}")
    lifted = tuple((k, _lift_branch(b, f"branches[{k!r}]")) for k, b in branches.items())
    lifted_default = None if default is None else _lift_branch(default, "default")
    return PartitionStage(key=key, branches=lifted, default=lifted_default, name=name, buffer=buffer)
