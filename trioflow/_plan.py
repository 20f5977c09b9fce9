"""Planning: turn a definition into segments (tasks) and edges. Pure and deterministic.

Rules:

* The source opens segment 0.
* An *inline* stage (synchronous, one call per item, e.g. ``map`` of a plain function,
  ``take``, ``batch`` without a timeout) is fused into the segment before it: it costs a
  function call per chunk instead of a channel hop per item.
* Any other stage (async calls, worker pools, timers, user continuous stages) starts a new
  segment, fed by an edge whose capacity is the stage's ``buffer`` or the run's default.
* The sink is fused like a stage when it is inline; otherwise it heads its own segment.
* Every node gets a unique name: the user's ``name=`` or the operator's name, with
  ``_2``, ``_3`` ... appended to repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ._stage import Lifecycle, Sink, Source, Stage


@attrs.frozen(kw_only=True)
class PlanNode:
    """One source, stage or sink of a plan."""

    name: str
    operator: str
    lifecycle: Lifecycle
    fused: bool
    spec: Source[Any] | Stage[Any, Any] | Sink[Any, Any] = attrs.field(repr=False, eq=False)


@attrs.frozen(kw_only=True)
class PlanSegment:
    """Nodes that run in one task (or one worker pool): a head and the inline ops fused
    after it. ``input_capacity`` is the capacity of the edge feeding it (``None`` for the
    source segment)."""

    index: int
    nodes: tuple[PlanNode, ...]
    input_capacity: int | None

    @property
    def head(self) -> PlanNode:
        return self.nodes[0]


@attrs.frozen(kw_only=True)
class Plan:
    """The tasks and edges a run will create. ``str(plan)`` prints it; ``to_mermaid()`` and
    ``to_dot()`` export it."""

    segments: tuple[PlanSegment, ...]
    chunk_size: int
    #: ``True`` when the last segment feeds an edge read by the caller (``Flow.open``).
    open_end: bool

    @property
    def nodes(self) -> tuple[PlanNode, ...]:
        return tuple(n for s in self.segments for n in s.nodes)

    def __str__(self) -> str:
        lines = [f"plan: {len(self.segments)} task group(s), chunks of up to {self.chunk_size}"]
        for seg in self.segments:
            if seg.input_capacity is not None:
                lines.append(f"  ~~ edge (capacity {seg.input_capacity} items) ~~>")
            names = " -> ".join(f"{n.name}[{n.operator}]" for n in seg.nodes)
            lines.append(f"  segment {seg.index} ({seg.head.lifecycle.value}): {names}")
        if self.open_end:
            lines.append("  ~~> caller")
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: one subgraph per segment (task), edges between nodes."""
        out = ["flowchart LR"]
        ids = {n.name: f"n{i}" for i, n in enumerate(self.nodes)}
        for seg in self.segments:
            out.append(f'  subgraph s{seg.index}["segment {seg.index} ({seg.head.lifecycle.value})"]')
            for n in seg.nodes:
                out.append(f'    {ids[n.name]}["{_esc(n.name)}: {n.operator}"]')
            out.append("  end")
        prev: PlanNode | None = None
        for seg in self.segments:
            for i, n in enumerate(seg.nodes):
                if prev is not None:
                    arrow = "-->" if i else f"-- {seg.input_capacity} -->"
                    out.append(f"  {ids[prev.name]} {arrow} {ids[n.name]}")
                prev = n
        return "\n".join(out)

    def to_dot(self) -> str:
        """A Graphviz digraph: one cluster per segment (task), edges labelled with capacity."""
        out = ["digraph trioflow {", "  rankdir=LR;"]
        ids = {n.name: f"n{i}" for i, n in enumerate(self.nodes)}
        for seg in self.segments:
            out.append(f"  subgraph cluster_{seg.index} {{")
            out.append(f'    label="segment {seg.index} ({seg.head.lifecycle.value})";')
            for n in seg.nodes:
                out.append(f'    {ids[n.name]} [label="{_esc(n.name)}\\n{n.operator}"];')
            out.append("  }")
        prev: PlanNode | None = None
        for seg in self.segments:
            for i, n in enumerate(seg.nodes):
                if prev is not None:
                    label = "" if i else f' [label="{seg.input_capacity}"]'
                    out.append(f"  {ids[prev.name]} -> {ids[n.name]}{label};")
                prev = n
        out.append("}")
        return "\n".join(out)


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def unique_names(specs: Sequence[Source[Any] | Stage[Any, Any] | Sink[Any, Any]]) -> list[str]:
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


def plan(
    source: Source[Any],
    stages: Sequence[Stage[Any, Any]],
    sink: Sink[Any, Any] | None,
    *,
    chunk_size: int,
    buffer: int,
    open_end: bool = False,
) -> Plan:
    specs: list[Source[Any] | Stage[Any, Any] | Sink[Any, Any]] = [source, *stages]
    if sink is not None:
        specs.append(sink)
    names = unique_names(specs)
    segments: list[PlanSegment] = []
    current: list[PlanNode] = [
        PlanNode(name=names[0], operator=source.operator, lifecycle=source.lifecycle,
                 fused=False, spec=source)
    ]
    capacity: int | None = None
    for name, spec in zip(names[1:], specs[1:], strict=True):
        assert isinstance(spec, Stage | Sink)
        if spec.inline:
            current.append(PlanNode(name=name, operator=spec.operator, lifecycle=spec.lifecycle,
                                    fused=True, spec=spec))
            continue
        segments.append(PlanSegment(index=len(segments), nodes=tuple(current),
                                    input_capacity=capacity))
        capacity = spec.buffer if spec.buffer is not None else buffer
        current = [PlanNode(name=name, operator=spec.operator, lifecycle=spec.lifecycle,
                            fused=False, spec=spec)]
    segments.append(PlanSegment(index=len(segments), nodes=tuple(current), input_capacity=capacity))
    return Plan(segments=tuple(segments), chunk_size=chunk_size, open_end=open_end)
