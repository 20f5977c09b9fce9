"""Planning: turn a definition (a linear flow or a graph) into segments and edges. Pure
and deterministic.

Rules:

* A *segment* is what one task runs: a head followed by fused inline ops, ending in a
  sink, an edge, or a fan-out router.
* Heads: a source; a non-inline stage (async calls, worker pools, timers, ``continuous``);
  a ``merge`` (reads one edge that several producers write); a ``zip`` (reads one edge per
  input); or a *pass head* that reads an edge and hands chunks to fused ops (used when an
  inline stage cannot be fused into its producer, e.g. right after a fan-out).
* An inline stage (synchronous, e.g. ``map`` of a plain function, ``take``, ``batch``
  without a timeout, a plain-function sink) is fused into its producer's segment when the
  producer is a plain node with no other consumer and is still the segment's last node.
* A fan-out junction (``broadcast``, ``route``, ``balance``) becomes the *output router*
  of its producer's segment (no task of its own); each of its consumers gets an edge.
* A ``merge`` is one edge with several producers; it completes when all of them have.
* Edges get the consumer's ``buffer`` (or the run's default) as capacity, in items.
* Every node gets a unique name: the user's ``name=`` or the operator's name, with
  ``_2``, ``_3`` ... appended to repeats.

Validation (raised as ``DefinitionValueError`` naming the nodes): a node whose input is
not an earlier node (a cycle or a foreign node), a plain node with two consumers (fan-out
must be explicit), a node whose output goes nowhere, and ports that do not fit.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs

from ._errors import DefinitionValueError, FusedStageWarning
from ._overflow import Overflow, Unbounded
from ._stage import Chain, Composite, FanIn, Junction, Lifecycle, MergeSpec, RouteSpec, Sink, Source, Stage
from ._tracking import track, tracks

AnySpec = Source[Any] | Stage[Any, Any] | Sink[Any, Any] | Junction


class _DefaultPort:
    """The port of a route that takes the items whose key matches no other port."""

    _instance: _DefaultPort | None = None

    def __new__(cls) -> _DefaultPort:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"


#: The route port for unmatched keys.
DEFAULT = _DefaultPort()


@attrs.frozen
class RoutePort:
    """The port of a route for one key (a wrapper, so that any hashable key, ``None``
    included, can name a branch)."""

    key: Hashable


@attrs.frozen(kw_only=True)
class GraphNode:
    """Planner input: a spec and its inputs as (producer index, port) pairs."""

    spec: AnySpec
    inputs: tuple[tuple[int, Hashable | None], ...] = ()


@attrs.frozen(kw_only=True)
class PlanNode:
    """One source, stage, junction or sink of a plan."""

    name: str
    operator: str
    lifecycle: Lifecycle
    fused: bool
    spec: AnySpec = attrs.field(repr=False, eq=False)


@attrs.frozen(kw_only=True)
class PlanEdge:
    """A bounded queue between segments. ``producers`` outlets write it (several for a
    ``merge``); it ends when all of them have closed it."""

    index: int
    name: str
    #: items; ``None`` for an unbounded edge (asked for with ``buffer=UNBOUNDED``)
    capacity: int | None
    producers: int
    overflow: Overflow = Overflow.BLOCK


@attrs.frozen(kw_only=True)
class PlanOutput:
    """Where a segment's items go: nowhere (it ends in a sink), one edge, or a fan-out
    router (``junction``) with one edge per consumer (``ports`` holds a route's keys)."""

    junction: PlanNode | None = None
    edges: tuple[int, ...] = ()
    ports: tuple[Hashable, ...] = ()
    to_caller: bool = False


@attrs.frozen(kw_only=True)
class PlanSegment:
    """Nodes that run in one task (or one worker pool)."""

    index: int
    #: Head first (unless ``pass_head``), then the fused ops.
    nodes: tuple[PlanNode, ...]
    #: The segment starts by reading its input edge; every node in ``nodes`` is fused.
    pass_head: bool
    #: Indices of the input edges (several for ``zip``).
    inputs: tuple[int, ...]
    #: Capacity of the first input edge (``None`` for a source segment).
    input_capacity: int | None
    output: PlanOutput

    @property
    def head(self) -> PlanNode:
        return self.nodes[0] if self.nodes else self.output.junction  # type: ignore[return-value]

    @property
    def label(self) -> str:
        return (self.nodes[0].name if self.nodes else
                self.output.junction.name if self.output.junction else f"segment{self.index}")


@attrs.frozen(kw_only=True)
class Plan:
    """The tasks and edges a run will create. ``str(plan)`` prints it; ``to_mermaid()`` and
    ``to_dot()`` export it."""

    segments: tuple[PlanSegment, ...]
    edges: tuple[PlanEdge, ...]
    chunk_size: int
    #: ``True`` when a segment feeds an edge read by the caller (``Flow.open``).
    open_end: bool

    @property
    def nodes(self) -> tuple[PlanNode, ...]:
        out: list[PlanNode] = []
        for s in self.segments:
            out.extend(s.nodes)
            if s.output.junction is not None:
                out.append(s.output.junction)
        return tuple(out)

    @property
    def sinks(self) -> tuple[PlanNode, ...]:
        return tuple(n for n in self.nodes if isinstance(n.spec, Sink))

    def __str__(self) -> str:
        lines = [f"plan: {len(self.segments)} task group(s), {len(self.edges)} edge(s), "
                 f"chunks of up to {self.chunk_size}"]
        for seg in self.segments:
            ins = ", ".join(f"{self.edges[i].name} ({_describe(self.edges[i])})" for i in seg.inputs)
            names = " -> ".join(f"{n.name}[{n.operator}]" for n in seg.nodes)
            if seg.pass_head:
                names = "(read) -> " + names if names else "(read)"
            if seg.output.junction is not None:
                j = seg.output.junction
                names += f" => {j.name}[{j.operator}]"
            lifecycle = seg.head.lifecycle.value if seg.nodes or seg.output.junction else "continuous"
            lines.append(f"  segment {seg.index} ({lifecycle}): {names}")
            if ins:
                lines.append(f"      in: {ins}")
            if seg.output.to_caller:
                lines.append("      out: the caller")
        return "\n".join(lines)

    def _graph_edges(self) -> list[tuple[str, str, str]]:
        """(from node, to node, label) for every connection, fused or not."""
        producer_of: dict[int, list[str]] = {}
        for seg in self.segments:
            last = seg.output.junction or (seg.nodes[-1] if seg.nodes else None)
            if last is not None:
                for e in seg.output.edges:
                    producer_of.setdefault(e, []).append(last.name)
        out: list[tuple[str, str, str]] = []
        for seg in self.segments:
            nodes = list(seg.nodes)
            if seg.output.junction is not None:
                nodes.append(seg.output.junction)
            if nodes:
                for e in seg.inputs:
                    for p in producer_of.get(e, []):
                        out.append((p, nodes[0].name, str(self.edges[e].capacity)))
            for a, b in itertools.pairwise(nodes):
                out.append((a.name, b.name, ""))
        return out

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: one subgraph per segment (task), edges between nodes."""
        out = ["flowchart LR"]
        ids = {n.name: f"n{i}" for i, n in enumerate(self.nodes)}
        for seg in self.segments:
            nodes = [*seg.nodes, *([seg.output.junction] if seg.output.junction else [])]
            out.append(f'  subgraph s{seg.index}["segment {seg.index}"]')
            for n in nodes:
                out.append(f'    {ids[n.name]}["{_esc(n.name)}: {n.operator}"]')
            out.append("  end")
        for a, b, label in self._graph_edges():
            arrow = f"-- {label} -->" if label else "-->"
            out.append(f"  {ids[a]} {arrow} {ids[b]}")
        return "\n".join(out)

    def to_dot(self) -> str:
        """A Graphviz digraph: one cluster per segment (task), drawn as a box around the
        stages fused into it, with the segment's lifecycle; edges labelled with capacity."""
        out = ["digraph trioflow {", "  rankdir=LR;",
               '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];',
               '  edge [fontname="Helvetica", fontsize=10];']
        ids = {n.name: f"n{i}" for i, n in enumerate(self.nodes)}
        for seg in self.segments:
            nodes = [*seg.nodes, *([seg.output.junction] if seg.output.junction else [])]
            lifecycle = seg.head.lifecycle.value if nodes else "continuous"
            fused = f", {len(nodes)} fused" if len(nodes) > 1 else ""
            out.append(f"  subgraph cluster_{seg.index} {{")
            out.append(f'    label="segment {seg.index}: {lifecycle}{fused}";')
            out.append('    style="rounded,filled"; fillcolor="#eef3fb"; color="#7a93bf";'
                       ' fontname="Helvetica"; fontsize=10;')
            for n in nodes:
                out.append(f'    {ids[n.name]} [label="{_esc(n.name)}\\n{n.operator}"];')
            out.append("  }")
        for a, b, label in self._graph_edges():
            attr = f' [label="{label}"]' if label else ""
            out.append(f"  {ids[a]} -> {ids[b]}{attr};")
        out.append("}")
        return "\n".join(out)


    def render(self, format: str = "svg") -> bytes:
        """The plan drawn by Graphviz from ``to_dot()``: ``svg`` or ``png`` bytes, one box
        per segment (the stages fused into one task). Runs Graphviz's ``dot`` program;
        ``GraphvizNotFound`` (a ``TrioflowError``) if it is not installed."""
        from ._render import render_dot

        return render_dot(self.to_dot(), format)


def _describe(edge: PlanEdge) -> str:
    cap = "unbounded" if edge.capacity is None else f"capacity {edge.capacity}"
    return cap if edge.overflow is Overflow.BLOCK else f"{cap}, {edge.overflow.name.lower()}"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def unique_names(specs: Sequence[AnySpec]) -> list[str]:
    """Explicit names stay as given (they are checked for uniqueness at definition time);
    default names get ``_2``, ``_3`` ... on repeats, skipping names already taken."""
    taken = {s.name for s in specs if s.name is not None}
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        if spec.name is not None:
            names.append(spec.name)
            continue
        base = spec.operator
        n = counts.get(base, 0)
        while True:
            n += 1
            candidate = base if n == 1 else f"{base}_{n}"
            if candidate not in taken:
                break
        counts[base] = n
        taken.add(candidate)
        names.append(candidate)
    return names


def _is_fan_out(spec: AnySpec) -> bool:
    return isinstance(spec, Junction) and spec.fan_out


class _Seg:
    def __init__(self, index: int, pass_head: bool) -> None:
        self.index = index
        self.pass_head = pass_head
        self.nodes: list[int] = []
        self.junction: int | None = None
        self.inputs: list[int] = []  # edge indices
        self.out_edges: list[int] = []
        self.out_ports: list[Hashable] = []
        self.to_caller = False
        self.closed = False  # has an output router or a consumer in another segment

    @property
    def last(self) -> int | None:
        return self.nodes[-1] if self.nodes else None


def plan_graph(
    gnodes: Sequence[GraphNode],
    *,
    chunk_size: int,
    buffer: int,
    open_end: int | None = None,
) -> Plan:
    """Plan a graph whose nodes are in topological order (each input is an earlier node).
    ``open_end`` is the index of the node whose output goes to the caller."""
    names = unique_names([g.spec for g in gnodes])
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DefinitionValueError(f"node name(s) {dup} used more than once; names must be unique")
    if tracks([g.spec for g in gnodes]):
        # a source asks for acknowledgements: every node works on tracked items
        gnodes = [GraphNode(spec=track(g.spec, n), inputs=g.inputs)
                  for g, n in zip(gnodes, names, strict=True)]
    consumers: list[list[tuple[int, int, Hashable | None]]] = [[] for _ in gnodes]
    for ci, g in enumerate(gnodes):
        spec = g.spec
        if isinstance(spec, Source):
            if g.inputs:
                raise DefinitionValueError(f"source {names[ci]!r} cannot have inputs")
        elif isinstance(spec, FanIn):
            if len(g.inputs) < spec.min_inputs:
                raise DefinitionValueError(
                    f"{spec.operator} {names[ci]!r} needs at least {spec.min_inputs} inputs"
                )
        elif len(g.inputs) != 1:
            raise DefinitionValueError(f"node {names[ci]!r} must have exactly one input")
        for pos, (pi, port) in enumerate(g.inputs):
            if not 0 <= pi < ci:
                raise DefinitionValueError(
                    f"node {names[ci]!r} reads from a node that is not defined before it "
                    f"(index {pi}): the graph would have a cycle or a dangling input"
                )
            producer = gnodes[pi].spec
            if isinstance(producer, Sink):
                raise DefinitionValueError(
                    f"sink {names[pi]!r} has no output, but {names[ci]!r} reads from it"
                )
            if isinstance(producer, RouteSpec) != (port is not None):
                raise DefinitionValueError(
                    f"{names[ci]!r} must read from a route through one of its ports "
                    f"(route[key] or route.default), and from other nodes directly"
                )
            consumers[pi].append((ci, pos, port))
    for pi, cs in enumerate(consumers):
        spec = gnodes[pi].spec
        if not cs and not isinstance(spec, Sink) and pi != open_end:
            raise DefinitionValueError(
                f"the output of {names[pi]!r} goes nowhere: connect it to a stage or end it with a sink"
            )
        if len(cs) > 1 and not _is_fan_out(spec):
            targets = ", ".join(repr(names[c]) for c, _, _ in cs)
            raise DefinitionValueError(
                f"{names[pi]!r} feeds {targets}: put a broadcast, route or balance between them"
            )
        if isinstance(spec, RouteSpec):
            ports = [p for _, _, p in cs]
            dup_ports = sorted({repr(p) for p in ports if ports.count(p) > 1})
            if dup_ports:
                raise DefinitionValueError(
                    f"route {names[pi]!r} has more than one consumer on port(s) {dup_ports}"
                )

    segs: list[_Seg] = []
    seg_of: dict[int, int] = {}
    # (node, producer) of fused stages whose buffer=/overflow= no edge will use
    inert_edges: list[tuple[int, int]] = []
    # (consumer segment, input slot) waiting for an edge: filled after segmentation
    wanted: list[tuple[int, int, int, Hashable | None]] = []  # (seg, producer node, consumer node, port)

    def new_seg(pass_head: bool) -> _Seg:
        s = _Seg(len(segs), pass_head)
        segs.append(s)
        return s

    for ci, g in enumerate(gnodes):
        spec = g.spec
        if isinstance(spec, Source):
            s = new_seg(False)
            s.nodes.append(ci)
            seg_of[ci] = s.index
            continue
        if isinstance(spec, FanIn):
            s = new_seg(False)
            s.nodes.append(ci)
            seg_of[ci] = s.index
            for pi, port in g.inputs:
                wanted.append((s.index, pi, ci, port))
            continue
        pi, port = g.inputs[0]
        producer = gnodes[pi].spec
        fusable_after = (
            not _is_fan_out(producer)
            and len(consumers[pi]) == 1
            and segs[seg_of[pi]].last == pi
            and not segs[seg_of[pi]].closed
        )
        if _is_fan_out(spec):
            if fusable_after:
                s = segs[seg_of[pi]]
            else:
                s = new_seg(True)
                wanted.append((s.index, pi, ci, port))
            s.junction = ci
            s.closed = True
            seg_of[ci] = s.index
            continue
        assert isinstance(spec, Stage | Sink)
        if spec.inline and fusable_after:
            s = segs[seg_of[pi]]
            s.nodes.append(ci)
            if spec.buffer is not None or spec.overflow is not Overflow.BLOCK:
                inert_edges.append((ci, pi))
        else:
            s = new_seg(spec.inline)
            s.nodes.append(ci)
            wanted.append((s.index, pi, ci, port))
            segs[seg_of[pi]].closed = True
        seg_of[ci] = s.index

    # edges: one per consumer input, except a merge's inputs, which share one edge
    edges: list[PlanEdge] = []
    merge_edge: dict[int, int] = {}

    def capacity_for(node: int) -> int | None:
        spec = gnodes[node].spec
        b = getattr(spec, "buffer", None)
        if isinstance(b, Unbounded):
            return None
        return b if isinstance(b, int) else buffer

    def overflow_for(node: int) -> Overflow:
        spec = gnodes[node].spec
        policy: Overflow = getattr(spec, "overflow", Overflow.BLOCK)
        cap = capacity_for(node)
        if policy in (Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.FAIL) and (
            cap is not None and cap < chunk_size
        ):
            raise DefinitionValueError(
                f"{names[node]!r}: overflow={policy!r} needs buffer >= chunk_size ({chunk_size}), "
                f"got buffer={cap}: items are offered a chunk at a time, so a smaller edge would "
                "drop or fail even with an idle consumer (raise buffer or lower chunk_size)"
            )
        return policy

    def outlet_segment(pi: int) -> _Seg:
        return segs[seg_of[pi]]

    for seg_index, pi, ci, port in wanted:
        cspec = gnodes[ci].spec
        if isinstance(cspec, MergeSpec):
            if ci not in merge_edge:
                merge_edge[ci] = len(edges)
                edges.append(PlanEdge(index=len(edges), name=f"-> {names[ci]}",
                                      capacity=capacity_for(ci), producers=len(gnodes[ci].inputs),
                                      overflow=overflow_for(ci)))
                segs[seg_index].inputs.append(merge_edge[ci])
            e = merge_edge[ci]
        else:
            e = len(edges)
            edges.append(PlanEdge(index=e, name=f"{names[pi]} -> {names[ci]}",
                                  capacity=capacity_for(ci), producers=1, overflow=overflow_for(ci)))
            segs[seg_index].inputs.append(e)
        src = outlet_segment(pi)
        src.out_edges.append(e)
        if src.junction is not None:
            src.out_ports.append(port if port is not None else ci)
    if open_end is not None:
        s = segs[seg_of[open_end]]
        e = len(edges)
        edges.append(PlanEdge(index=e, name=f"{names[open_end]} -> caller",
                              capacity=2 * chunk_size, producers=1))
        s.out_edges.append(e)
        s.to_caller = True

    def pnode(i: int, fused: bool) -> PlanNode:
        spec = gnodes[i].spec
        return PlanNode(name=names[i], operator=spec.operator, lifecycle=spec.lifecycle,
                        fused=fused, spec=spec)

    if inert_edges:
        _warn_fused([(names[ci], gnodes[ci].spec, names[pi]) for ci, pi in inert_edges])

    plan_segments = []
    for s in segs:
        nodes = tuple(pnode(n, s.pass_head or k > 0) for k, n in enumerate(s.nodes))
        junction = pnode(s.junction, True) if s.junction is not None else None
        plan_segments.append(PlanSegment(
            index=s.index, nodes=nodes, pass_head=s.pass_head, inputs=tuple(s.inputs),
            input_capacity=edges[s.inputs[0]].capacity if s.inputs else None,
            output=PlanOutput(junction=junction, edges=tuple(s.out_edges),
                              ports=tuple(s.out_ports), to_caller=s.to_caller),
        ))
    return Plan(segments=tuple(plan_segments), edges=tuple(edges), chunk_size=chunk_size,
                open_end=open_end is not None)


def _warn_fused(stages: list[tuple[str, Any, str]]) -> None:
    """One warning per plan for the fused stages given ``buffer=``/``overflow=``, pointing
    at the caller's line (the first frame outside trioflow)."""
    parts = []
    for name, spec, producer in stages:
        given = [f"buffer={spec.buffer!r}"] if spec.buffer is not None else []
        if spec.overflow is not Overflow.BLOCK:
            given.append(f"overflow={spec.overflow!r}")
        parts.append(f"{name!r} ({', '.join(given)}) runs fused in the task of {producer!r}")
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{'; '.join(parts)}: no edge feeds a fused stage, so buffer= and overflow= do nothing "
        "there. Give them to the next stage that reads an edge (an async or pooled stage, a "
        "stage on a backend, or one after a fan-out), or leave them out",
        FusedStageWarning,
        stacklevel=level,
    )


def plan(
    source: Source[Any],
    stages: Sequence[Stage[Any, Any]],
    sink: Sink[Any, Any] | None,
    *,
    chunk_size: int,
    buffer: int,
    open_end: bool = False,
) -> Plan:
    """Plan a linear flow: the graph source -> stages -> sink."""
    gnodes = [GraphNode(spec=source)]

    def add(spec: AnySpec, inputs: tuple[tuple[int, Hashable | None], ...]) -> int:
        gnodes.append(GraphNode(spec=spec, inputs=inputs))
        return len(gnodes) - 1

    last = 0
    for stage in stages:
        last = add_stage(add, stage, (last, None))
    if sink is not None:
        last = add(sink, ((last, None),))
    return plan_graph(gnodes, chunk_size=chunk_size, buffer=buffer,
                      open_end=last if open_end else None)


def add_stage(
    add: Callable[[AnySpec, tuple[tuple[int, Hashable | None], ...]], int],
    stage: Stage[Any, Any],
    input: tuple[int, Hashable | None],
) -> int:
    """Add a stage reading ``input`` (node index, port): chains are flattened, composites
    expanded. Returns the index of the node that carries the stage's output."""
    if isinstance(stage, Chain):
        for inner in stage.stages:
            input = (add_stage(add, inner, input), None)
        return input[0]
    if isinstance(stage, Composite):
        return stage.expand(add, input)
    return add(stage, (input,))
