"""OpenTelemetry traces of sampled items (the ``trioflow[otel]`` extra: opentelemetry-api).

A sampled item carries its trace with it, explicitly: ``sample()`` wraps it in a ``Traced``
envelope (the value and the OpenTelemetry context of its last span), and each stage built
with this module's operators opens a span for the call on that item, as a child of the
item's previous span; ``map`` and ``flat_map`` hand the result on in a new envelope with the
new span's context. One item's path through the pipeline is then one trace: ``sample`` (the
root), then ``map parse``, ``map enrich``, ``sink write``, each the parent of the next
(``filter``, ``tap`` and ``sink`` spans are leaves: they hand on no new value). User code
sees the plain value, and runs inside its span (the span is current), so spans it opens
itself (a database client's instrumentation, say) nest under it.

    flow = (
        tf.from_iterable(readings)
        | otel.sample(0.01)                      # 1% of the items get a trace
        | otel.map(parse)
        | otel.map(enrich, concurrency=8)
        | otel.sink(write)
    )

Costs: nothing when the module is not used (``import trioflow`` does not import
OpenTelemetry). An unsampled item stays the plain value, so it allocates nothing, opens no
span and reads no context: a traced stage's wrapper checks the item's type and calls the
function (one extra Python call per item and stage; the ``otel`` section of
docs/metrics.md has the measured figure). Only sampled items pay for spans.

Which operators keep the trace: ``map``, ``filter``, ``tap``, ``flat_map`` (every child
continues its parent's trace) and ``sink`` from this module, and the operators that hand
items on untouched without calling user code: ``take``, ``skip``, buffers, and the graph
junctions ``broadcast``, ``balance`` and ``merge`` (a ``route``'s key would be handed the
envelope, a ``zip`` would pair envelopes). Any other operator after
``sample()`` sees the ``Traced`` envelope of a sampled item instead of its value (``batch``
collects envelopes, ``scan``/``reduce`` would be given them): end the traces first with
``end()``, which hands on the plain value. A trace then ends where the item leaves the
traced part (``end``, a sink, a filter that drops it, an error policy that skips it): its
spans are all ended by then, since each lasts one call. Traced stages must run on the Trio
thread (no ``backend=``): the span and the envelope do not cross to a worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Tracer, TracerProvider

from . import _operators as ops
from ._callables import CallKind, classify
from ._errors import DefinitionTypeError, DefinitionValueError
from ._ops import outputs_of
from ._stage import Stage

__all__ = ["Traced", "end", "filter", "flat_map", "map", "sample", "sink", "tap"]

#: the instrumentation scope of the spans
SCOPE = "trioflow"


class Traced:
    """A sampled item in flight: its value, the context of its last span, and the tracer."""

    __slots__ = ("context", "tracer", "value")

    def __init__(self, value: Any, context: Context, tracer: Tracer) -> None:
        self.value = value
        self.context = context
        self.tracer = tracer

    def __repr__(self) -> str:
        return f"Traced({self.value!r})"


def sample(rate: float = 1.0, *, name: str = "item", tracer_provider: TracerProvider | None = None,
           seed: int | None = None) -> Stage[Any, Any]:
    """Start a trace for a fraction ``rate`` of the items (0 to 1, chosen at random; ``seed``
    makes the choice repeatable): the item gets a root span named ``trioflow <name>`` (ended
    at once: it marks where the trace starts) and travels as a ``Traced`` envelope. An item
    that OpenTelemetry's own sampler drops (a non-recording span) stays plain too. Spans go to
    ``tracer_provider``'s tracer (default: the global provider).

    * emits: every item, sampled ones in their envelope; fused (no task of its own);
    * backpressure, completes, cancelled: as ``map`` of a plain function;
    * on error: none of its own (it never calls user code).
    """
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise DefinitionValueError(f"rate must be a number from 0 to 1, got {rate!r}")
    if not isinstance(name, str) or not name:
        raise DefinitionValueError(f"name must be a non-empty string, got {name!r}")
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer(SCOPE)
    draw = random.Random(seed).random
    span_name = f"trioflow {name}"

    def start(x: Any) -> Any:
        if rate < 1.0 and draw() >= rate:
            return x
        span = tracer.start_span(span_name, attributes={"trioflow.stage": name})
        span.end()
        if not span.get_span_context().trace_flags.sampled:
            return x  # OpenTelemetry's sampler said no (or no SDK is installed)
        return Traced(x, trace.set_span_in_context(span), tracer)

    start.__name__ = start.__qualname__ = f"sample_{name}"
    return ops.map(start, name=f"sample {name}" if name != "item" else "sample")


def end(*, name: str = "end") -> Stage[Any, Any]:
    """Hand on every item's plain value: sampled items leave their envelope (their trace
    ends here). Fused; emits one item per item; never fails."""

    def unwrap(x: Any) -> Any:
        return x.value if type(x) is Traced else x

    return ops.map(unwrap, name=name)


def _label(fn: Callable[..., Any], name: str | None, operator: str) -> str:
    if name is not None:
        return name
    label = getattr(fn, "__name__", None)
    return label if isinstance(label, str) and label != "<lambda>" else operator


def _check(fn: Callable[..., Any], kw: dict[str, Any], operator: str) -> CallKind:
    kind = classify(fn, "fn")
    if kw.get("backend") is not None:
        raise DefinitionValueError(
            f"otel.{operator}: backend={kw['backend']!r} is not supported: a traced stage runs "
            "on the Trio thread (the span and the item's envelope do not cross to a worker)")
    if "key" in kw and kw["key"] is not None:
        key = kw["key"]
        kw["key"] = lambda x: key(x.value if type(x) is Traced else x)
    return kind


def _call(kind: CallKind, fn: Callable[..., Any], span_name: str, attributes: dict[str, str],
          result: Callable[[Traced, Any, Context], Any]) -> Callable[..., Any]:
    """``fn`` lifted: a plain item is passed straight to ``fn``; a ``Traced`` one gets a span
    (child of its context, current during the call) and ``result(item, value, context)``
    makes what the stage hands on from ``fn``'s return value."""
    if kind is CallKind.ASYNC:
        async def acall(x: Any) -> Any:
            if type(x) is not Traced:
                return await fn(x)
            with x.tracer.start_as_current_span(span_name, context=x.context,
                                                attributes=attributes) as span:
                value = await fn(x.value)
            return result(x, value, trace.set_span_in_context(span))

        return acall
    if kind is CallKind.SYNC:
        def call(x: Any) -> Any:
            if type(x) is not Traced:
                return fn(x)
            with x.tracer.start_as_current_span(span_name, context=x.context,
                                                attributes=attributes) as span:
                value = fn(x.value)
            return result(x, value, trace.set_span_in_context(span))

        return call
    raise DefinitionTypeError(f"fn must be a plain or an async function here, got {kind.value} {fn!r}")


def _rewrap(x: Traced, value: Any, context: Context) -> Traced:
    # a new envelope: after a broadcast, every branch holds the same one
    return Traced(value, context, x.tracer)


def _leaf(x: Traced, value: Any, context: Context) -> Any:
    # a predicate's verdict, a side effect's result: the item goes on as it came, its trace
    # from its previous span (the envelope may be shared, so it is not changed)
    return value


def _traced(fn: Callable[..., Any], kw: dict[str, Any], operator: str,
            result: Callable[[Traced, Any, Context], Any]) -> Callable[..., Any]:
    kind = _check(fn, kw, operator)
    label = _label(fn, kw.get("name"), operator)
    attributes = {"trioflow.stage": label, "trioflow.operator": operator}
    return _call(kind, fn, f"{operator} {label}", attributes, result)


def map(fn: Callable[[Any], Any], **kw: Any) -> Stage[Any, Any]:
    """``trioflow.map(fn, **kw)`` with a span per call on a sampled item (its value in, the
    result carried on in the same trace). ``fn`` is a plain or an async function; every
    argument of ``trioflow.map`` but ``backend`` is accepted and means the same (the
    contract is ``trioflow.map``'s: emits, backpressure, completion, cancellation and errors
    are unchanged; a call that raises ends its span with the exception recorded and an error
    status, then the stage's error policy applies)."""
    return ops.map(_traced(fn, kw, "map", _rewrap), **kw)


def filter(fn: Callable[[Any], Any], **kw: Any) -> Stage[Any, Any]:
    """``trioflow.filter(fn, **kw)`` with a span per predicate call on a sampled item, a child
    of the item's previous span; a kept item's next span is that span's child too (the
    predicate's span is a leaf), a dropped item's trace ends there. The contract is
    ``trioflow.filter``'s."""
    return ops.filter(_traced(fn, kw, "filter", _leaf), **kw)


def tap(fn: Callable[[Any], Any], **kw: Any) -> Stage[Any, Any]:
    """``trioflow.tap(fn, **kw)`` with a span per call on a sampled item (a leaf, like a
    filter's); the item (in its envelope) is handed on as it came. The contract is
    ``trioflow.tap``'s."""
    return ops.tap(_traced(fn, kw, "tap", _leaf), **kw)


def sink(fn: Callable[[Any], Any], **kw: Any) -> Any:
    """``trioflow.sink(fn, **kw)`` with a span per call on a sampled item: the last span of
    its trace. The contract is ``trioflow.sink``'s."""
    return ops.sink(_traced(fn, kw, "sink", _leaf), **kw)


def flat_map(fn: Callable[[Any], Any], **kw: Any) -> Stage[Any, Any]:
    """``trioflow.flat_map(fn, **kw)`` for a plain or async function returning an iterable:
    a span per call on a sampled item, and every child continues the trace (from that span).
    The contract is ``trioflow.flat_map``'s; generators are not supported here (a span would
    stay open while the generator waits for room downstream)."""

    def children(x: Traced, values: Any, context: Context) -> list[Any]:
        return [Traced(v, context, x.tracer) for v in values]

    def plain(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda v: outputs_of(fn(v))

    kind = classify(fn, "fn")
    if kind is CallKind.ASYNC:
        async def alist(v: Any) -> list[Any]:
            return outputs_of(await fn(v))

        alist.__name__ = getattr(fn, "__name__", "flat_map")
        return ops.flat_map(_traced(alist, kw, "flat_map", children), **kw)
    if kind is not CallKind.SYNC:
        raise DefinitionTypeError(f"otel.flat_map: fn must be a plain or an async function returning "
                                  f"an iterable, got a {kind.value} {fn!r}")
    lifted = plain(fn)
    lifted.__name__ = getattr(fn, "__name__", "flat_map")
    return ops.flat_map(_traced(lifted, kw, "flat_map", children), **kw)
