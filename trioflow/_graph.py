"""Graphs: DAGs that ``|`` cannot express (branches, merges, diamonds, several sources and
sinks), built by adding nodes that refer to earlier nodes.

Because a node can only read from nodes that already exist, a graph is acyclic by
construction; the planner still checks it (and everything else: fan-out without a
junction, outputs that go nowhere, ports that do not fit) and names the nodes involved.
Names are labels for statistics, plans and error notes, unique per graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, Literal, TypeVar, final, overload

import attrs
import trio

from ._errors import DefinitionTypeError, DefinitionValueError
from ._flow import DEFAULT_BUFFER, DEFAULT_CHUNK_SIZE, Flow, _check_run_args
from ._plan import DEFAULT, GraphNode, Plan, RoutePort, add_stage, plan_graph, unique_names
from ._report import RunReport
from ._runtime import RunHandle, Runner, run_to_completion
from ._stage import (
    BalanceSpec,
    BroadcastSpec,
    Chain,
    Junction,
    MergeSpec,
    RouteSpec,
    Sink,
    Source,
    Stage,
    ZipSpec,
)

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")


@final
@attrs.frozen(eq=False)
class Node(Generic[T]):
    """A reference to a node of a ``Graph``, emitting items of type ``T``."""

    graph: Graph = attrs.field(repr=False)
    index: int
    operator: str


@final
@attrs.frozen(eq=False)
class SinkNode(Generic[R]):
    """A sink of a ``Graph``; ``results[sink_node]`` is its result after ``run``."""

    graph: Graph = attrs.field(repr=False)
    index: int
    operator: str


@final
@attrs.frozen(eq=False)
class Port(Generic[T]):
    """One branch of a ``route``: ``route_node[key]`` or ``route_node.default``."""

    node: RouteNode[T]
    key: Hashable


@final
@attrs.frozen(eq=False)
class RouteNode(Generic[T]):
    """A ``route`` junction. Read a branch through ``route_node[key]``, or
    ``route_node.default`` for items whose key matches no branch."""

    graph: Graph = attrs.field(repr=False)
    index: int
    operator: str = "route"

    def __getitem__(self, key: Hashable) -> Port[T]:
        if key is DEFAULT:
            raise DefinitionValueError("use route_node.default for the default branch")
        return Port(self, key)

    @property
    def default(self) -> Port[T]:
        """The branch for items whose key matches no other branch."""
        return Port(self, DEFAULT)


Input = Node[T] | Port[T]


@final
class GraphResult(Mapping[str, Any]):
    """The results of a graph's sinks: ``result[sink_node]`` (typed) or ``result["name"]``."""

    def __init__(self, by_name: dict[str, Any], names: dict[int, str]) -> None:
        self._by_name = by_name
        self._names = names

    @overload
    def __getitem__(self, key: SinkNode[R]) -> R: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: SinkNode[Any] | str) -> Any:
        if isinstance(key, SinkNode):
            key = self._names[key.index]
        return self._by_name[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"GraphResult({self._by_name!r})"


class Graph:
    """A DAG of sources, stages, junctions and sinks.

    ::

        g = tf.Graph()
        src = g.add(tf.from_iterable(range(10)))
        fan = g.broadcast(src)
        a = g.add(tf.map(f), fan)
        b = g.add(tf.map(h), fan)
        out = g.add(tf.to_list(), g.merge(a, b))
        results = await g.run()
        results[out]

    A plain node feeds exactly one consumer; fan out with ``broadcast`` (every item to
    every branch), ``route`` (by key) or ``balance`` (to the first free branch), and fan
    in with ``merge`` (interleaved) or ``zip`` (by position). The builder is not
    thread-safe; a graph can be run many times (if its sources can).
    """

    def __init__(self) -> None:
        self._nodes: list[GraphNode] = []
        self._names: set[str] = set()

    # -- building -----------------------------------------------------------------------------

    def _name_of(self, index: int) -> str:
        """The name the planner gives node ``index`` (its ``name=``, or its operator's)."""
        return unique_names([g.spec for g in self._nodes])[index]

    def _check_input(self, inp: object, argument: str, spec: Any) -> tuple[int, Hashable | None]:
        """``spec`` is the node being added, for the messages."""
        node = inp.node if isinstance(inp, Port) else inp
        if isinstance(node, Node | RouteNode) and node.graph is not self:
            first = spec.stages[0] if isinstance(spec, Chain) else spec
            adding = unique_names([*(g.spec for g in self._nodes), first])[-1]
            foreign = node.graph._name_of(node.index)
            port = f"a port of {foreign!r}" if isinstance(inp, Port) else repr(foreign)
            raise DefinitionValueError(
                f"{argument} of {adding!r} is {port}, a node of another graph: a graph's edges "
                f"refer to its own nodes only (add {foreign!r} and what it reads from to this "
                "graph, or build the whole DAG in one Graph)"
            )
        if isinstance(inp, Port):
            return inp.node.index, inp.key if inp.key is DEFAULT else RoutePort(inp.key)
        if isinstance(inp, Node | RouteNode):
            if isinstance(inp, RouteNode):
                raise DefinitionValueError(
                    f"{argument}: read from a route through a port, route_node[key] or route_node.default"
                )
            return inp.index, None
        if isinstance(inp, SinkNode):
            raise DefinitionValueError(f"{argument} is a sink, which has no output")
        raise DefinitionTypeError(f"{argument} must be a node of this graph, got {inp!r}")

    def _append(self, spec: Any, inputs: tuple[tuple[int, Hashable | None], ...]) -> int:
        name = getattr(spec, "name", None)
        if name is not None:
            if name in self._names:
                raise DefinitionValueError(
                    f"name {name!r} is used by two nodes of one graph; names must be unique"
                )
            self._names.add(name)
        self._nodes.append(GraphNode(spec=spec, inputs=inputs))
        return len(self._nodes) - 1

    @overload
    def add(self, spec: Flow[T], input: None = None) -> Node[T]: ...
    @overload
    def add(self, spec: Source[T], input: None = None) -> Node[T]: ...
    @overload
    def add(self, spec: Stage[T, U], input: Node[T] | Port[T]) -> Node[U]: ...
    @overload
    def add(self, spec: Sink[T, R], input: Node[T] | Port[T]) -> SinkNode[R]: ...
    def add(self, spec: Any, input: Any = None) -> Any:
        """Add a source (or a whole ``Flow``: its source and stages), or a stage or sink
        reading from ``input``. Returns a reference to the new node."""
        if isinstance(spec, Flow):
            if input is not None:
                raise DefinitionValueError("a Flow starts with its own source: add it without input")
            node: Node[Any] = self.add(spec.source)
            for stage in spec.stages:
                node = self.add(stage, node)
            return node
        if isinstance(spec, Source):
            if input is not None:
                raise DefinitionValueError(f"source {spec.operator!r} cannot have an input")
            return Node(self, self._append(spec, ()), spec.operator)
        if isinstance(spec, Stage | Sink):
            if input is None:
                raise DefinitionValueError(f"{spec.operator!r} needs an input node")
            inp = self._check_input(input, "input", spec)
            if isinstance(spec, Sink):
                return SinkNode(self, self._append(spec, (inp,)), spec.operator)
            index = add_stage(self._append, spec, inp)  # chains and composites expand here
            return Node(self, index, spec.operator)
        raise DefinitionTypeError(f"spec must be a source, flow, stage or sink, got {spec!r}")

    def broadcast(self, input: Input[T], *, name: str | None = None) -> Node[T]:
        """Every item to every consumer of the returned node.

        * emits: each item to each branch, in order, through one bounded edge per branch;
        * backpressure: the slowest branch sets the pace (an item is handed to all branches
          before the next is taken);
        * completes: when the input completes (every branch then sees the end);
        * cancelled: by the run; a branch that stopped early (``take``) is skipped from
          then on and does not stop the others; when all have stopped, upstream stops;
        * on error: none of its own.
        """
        spec = BroadcastSpec(name=name)
        return Node(self, self._append(spec, (self._check_input(input, "input", spec),)), spec.operator)

    def balance(self, input: Input[T], *, name: str | None = None) -> Node[T]:
        """Each item to exactly one consumer: the first free branch.

        * emits: each item once, to a branch whose stage waits for input, as many items as
          that stage can start at once (one for a single task, the idle workers of a pool);
          a chunk may be split across branches; order across branches is not kept;
        * backpressure: waits while no branch is free (items never queue behind a busy
          branch);
        * completes: when the input completes;
        * cancelled: by the run; a branch that stopped gets no more items;
        * on error: none of its own.
        """
        spec = BalanceSpec(name=name)
        return Node(self, self._append(spec, (self._check_input(input, "input", spec),)), spec.operator)

    def route(
        self, input: Input[T], key: Callable[[T], Hashable], *, name: str | None = None
    ) -> RouteNode[T]:
        """Each item to the branch named by ``key(item)``: connect branches to
        ``route_node[k]``, and optionally ``route_node.default`` for unmatched keys.

        * emits: each item once, to its branch, keeping order within a branch;
        * backpressure: waits while the chosen branch's edge is full;
        * completes: when the input completes;
        * cancelled: by the run; items for a branch that stopped are dropped;
        * on error: a key with no branch and no default fails the run with
          ``UnroutableError``; an exception from ``key`` fails it too (noted with the item).
        """
        spec = RouteSpec(key=key, name=name)
        return RouteNode(self, self._append(spec, (self._check_input(input, "input", spec),)))

    def merge(self, *inputs: Input[T], name: str | None = None, buffer: int | None = None) -> Node[T]:
        """Interleave several inputs into one stream.

        * emits: items as they arrive from any input (order kept per input);
        * backpressure: one shared bounded edge; every producer waits while it is full,
          and waiting producers go on in the order they began to wait (none overtakes);
        * completes: when all inputs have completed;
        * cancelled: by the run; when the merge's consumer stops, every input stops;
        * on error: none of its own.
        """
        if not inputs:
            raise DefinitionValueError("merge needs at least one input")
        spec = MergeSpec(name=name, buffer=buffer)
        ins = tuple(self._check_input(x, f"inputs[{i}]", spec) for i, x in enumerate(inputs))
        return Node(self, self._append(spec, ins), spec.operator)

    def zip(
        self, *inputs: Input[Any], name: str | None = None, buffer: int | None = None
    ) -> Node[tuple[Any, ...]]:
        """Pair items by position: emits ``(a_i, b_i, ...)``.

        * emits: a tuple as soon as every input has delivered its i-th item;
        * backpressure: each input has its own bounded edge; a fast input waits for room;
        * completes: when any input completes (the others are then stopped);
        * cancelled: by the run;
        * on error: none of its own.
        """
        if len(inputs) < 2:
            raise DefinitionValueError(f"zip needs at least two inputs, got {len(inputs)}")
        spec = ZipSpec(name=name, buffer=buffer)
        ins = tuple(self._check_input(x, f"inputs[{i}]", spec) for i, x in enumerate(inputs))
        return Node(self, self._append(spec, ins), spec.operator)

    # -- running --------------------------------------------------------------------------------

    def plan(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, buffer: int = DEFAULT_BUFFER) -> Plan:
        """How a run would be laid out; raises ``DefinitionValueError`` for an invalid graph."""
        _check_run_args(chunk_size, buffer)
        if not self._nodes:
            raise DefinitionValueError("the graph is empty")
        return plan_graph(self._nodes, chunk_size=chunk_size, buffer=buffer)

    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[False] = False,
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[GraphResult]] = ...,
    ) -> GraphResult: ...
    @overload
    async def run(
        self, *, chunk_size: int = ..., buffer: int = ..., report: Literal[True],
        progress: bool = ...,
        task_status: trio.TaskStatus[RunHandle[GraphResult]] = ...,
    ) -> RunReport[GraphResult]: ...
    async def run(
        self,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        buffer: int = DEFAULT_BUFFER,
        report: bool = False,
        progress: bool = False,
        task_status: trio.TaskStatus[RunHandle[GraphResult]] = trio.TASK_STATUS_IGNORED,
    ) -> GraphResult | RunReport[GraphResult]:
        """Run the graph to completion; returns every sink's result.

        ``handle = await nursery.start(graph.run)`` returns once every stage is ready.
        A failure cancels the whole graph and is raised as one ``ExceptionGroup``; an outside
        cancellation propagates as ``trio.Cancelled``; ``handle.cancel()`` makes ``run``
        return quietly with what the sinks hold. ``report=True`` returns a ``RunReport``
        whose ``result`` is the ``GraphResult``, and does not raise for failures collected
        by ``on_error=Collect()`` (see ``Pipeline.run``).
        ``progress=True`` shows a progress bar per source while the run goes (when stdout
        is a terminal) and prints a one-line summary at the end; it needs the ``rich``
        extra (``trioflow.display.progress``).
        """
        p = self.plan(chunk_size=chunk_size, buffer=buffer)
        names = _sink_names(p, self._nodes)

        def result(runner: Runner) -> GraphResult:
            return GraphResult(runner.results(), names)

        return await run_to_completion(  # type: ignore[no-any-return]
            p, task_status, report=report, result=result, progress=progress)


def _sink_names(p: Plan, nodes: list[GraphNode]) -> dict[int, str]:
    names = unique_names([g.spec for g in nodes])  # the planner's names, index for index
    return {i: names[i] for i, g in enumerate(nodes) if isinstance(g.spec, Sink)}


__all__ = ["Graph", "GraphResult", "Junction", "Node", "Port", "RouteNode", "SinkNode"]
