"""Mistakes caught when a pipeline is defined, not when it runs (issue 9): signatures that
cannot take the operator's call, resource instances, options that do nothing, flat_map of
async iterables, ``pipeline | stage``, one-shot sources run twice, and errors that name
their stage or node."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from test_failures import notes, single_leaf

import trioflow as tf


async def _af(x: Any) -> Any:
    return x


@asynccontextmanager
async def _res() -> AsyncIterator[None]:
    yield None


def _raises(kind: type[Exception], build: Callable[[], object], *words: str) -> str:
    with pytest.raises(kind) as info:
        build()
    assert isinstance(info.value, tf.TrioflowError)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


# ------------------------------------------------------------------------------- signatures


def _two(a: Any, b: Any) -> Any:
    return a


def _one(x: Any) -> Any:
    return x


async def _async_two(a: Any, b: Any) -> Any:
    return a


async def _async_one(x: Any) -> Any:
    return x


async def _async_three(r: Any, a: Any, b: Any) -> Any:
    return a


def _needs_keyword(x: Any, *, scale: int) -> Any:
    return x


async def _source_two(emit: Any, other: Any) -> None:
    pass


async def _continuous_one(items: Any) -> None:
    pass


def _factory_one(x: Any) -> Any:
    return _one


#: (operator, how it is built with a function of the wrong signature, the call, the signature)
BAD_SIGNATURES: list[tuple[str, Callable[[], object], str, str]] = [
    ("map", lambda: tf.map(_two), "fn(item)", "(a, b)"),
    ("map", lambda: tf.map(_async_two, concurrency=2), "fn(item)", "(a, b)"),
    ("map", lambda: tf.map(lambda a, b: a), "fn(item)", "(a, b)"),
    ("map", lambda: tf.map(_needs_keyword), "fn(item)", "(x, *, scale)"),
    ("map", lambda: tf.map(_af, key=_two), "key(item)", "(a, b)"),
    ("filter", lambda: tf.filter(_two), "fn(item)", "(a, b)"),
    ("tap", lambda: tf.tap(_async_two), "fn(item)", "(a, b)"),
    ("flat_map", lambda: tf.flat_map(_two), "fn(item)", "(a, b)"),
    ("take_while", lambda: tf.take_while(_two), "fn(item)", "(a, b)"),
    ("scan", lambda: tf.scan(lambda x: x, 0), "fn(acc, item)", "(x)"),
    ("scan", lambda: tf.scan(_async_one, 0), "fn(acc, item)", "(x)"),
    ("scan", lambda: tf.scan(_fold, 0, key=_two), "key(item)", "(a, b)"),
    ("sink", lambda: tf.sink(_two), "fn(item)", "(a, b)"),
    ("reduce", lambda: tf.reduce(_one, 0), "fn(acc, item)", "(x)"),
    ("persistent", lambda: tf.persistent(_async_one, resource=_res), "fn(resource, item)", "(x)"),
    ("persistent", lambda: tf.persistent(_async_three, resource=_res), "fn(resource, item)", "(r, a, b)"),
    ("persistent", lambda: tf.persistent(_async_two, resource=_factory_one), "resource()", "(x)"),
    ("on_demand", lambda: tf.on_demand(_factory_one), "factory()", "(x)"),
    ("continuous", lambda: tf.continuous(_continuous_one), "fn(items, emit)", "(items)"),
    ("source", lambda: tf.source(_source_two), "fn(emit)", "(emit, other)"),
    ("parallel", lambda: tf.parallel(_one, _two), "fn(item)", "(a, b)"),
    ("parallel", lambda: tf.parallel(a=_one, b=_async_two), "fn(item)", "(a, b)"),
    ("partition", lambda: tf.partition(_two, {1: tf.map(_one)}), "key(item)", "(a, b)"),
    ("route", lambda: tf.Graph().route(tf.Graph().add(tf.from_iterable([1])), _two), "key(item)", "(a, b)"),
    ("Retry", lambda: tf.Retry(on=_two), "on(exception)", "(a, b)"),
    ("DeadLetter", lambda: tf.DeadLetter(_two), "target(entry)", "(a, b)"),
]


@pytest.mark.parametrize(("operator", "build", "call", "signature"),
                         BAD_SIGNATURES, ids=[f"{o}-{c}-{s}" for o, _, c, s in BAD_SIGNATURES])
def test_signature_that_cannot_take_the_call_is_refused_at_definition(
    operator: str, build: Callable[[], object], call: str, signature: str
) -> None:
    message = _raises(tf.DefinitionTypeError, build, operator, call, signature)
    assert f"of {operator} is called as {call}" in message


def _varargs(*args: Any) -> Any:
    return args[-1]


class _Callable:
    def __call__(self, x: Any) -> Any:
        return x

    def method(self, x: Any) -> Any:
        return x

    def fold(self, acc: Any, x: Any) -> Any:
        return acc + x


class _Box:
    def __init__(self, x: Any) -> None:
        self.x = x


class _Default:
    def __call__(self, acc: Any, x: Any = 0, *, scale: int = 1) -> Any:
        return acc


#: functions that must still be accepted: partials, bound methods, callable instances,
#: *args, defaults, builtins with and without a signature Python can tell
GOOD: list[tuple[str, Callable[[], object]]] = [
    ("map partial", lambda: tf.map(functools.partial(_two, 1))),
    ("map bound method", lambda: tf.map(_Callable().method)),
    ("map callable instance", lambda: tf.map(_Callable())),
    ("map *args", lambda: tf.map(_varargs)),
    ("map defaults", lambda: tf.map(_Default())),
    ("map builtin with a signature", lambda: tf.map(abs)),
    ("map builtin without a signature", lambda: tf.map(int)),
    ("map class", lambda: tf.map(_Box)),
    ("map key=str", lambda: tf.map(_af, key=str)),
    ("scan bound method", lambda: tf.scan(_Callable().fold, 0)),
    ("scan *args", lambda: tf.scan(_varargs, 0)),
    ("scan partial", lambda: tf.scan(functools.partial(_async_three, None), 0)),
    ("reduce builtin", lambda: tf.reduce(max, 0)),
    ("sink print", lambda: tf.sink(print)),
    ("sink list.append", lambda: tf.sink([].append)),
    ("persistent", lambda: tf.persistent(_async_two, resource=_res)),
    ("on_demand", lambda: tf.on_demand(lambda: _af)),
    ("on_demand class", lambda: tf.on_demand(_Callable)),
    ("Retry on", lambda: tf.Retry(on=lambda exc: True)),
]


@pytest.mark.parametrize("build", [b for _, b in GOOD], ids=[i for i, _ in GOOD])
def test_signatures_that_can_take_the_call_are_accepted(build: Callable[[], object]) -> None:
    assert build() is not None


async def test_source_with_task_status_is_checked_with_the_keyword() -> None:
    async def ready(emit: Any, *, task_status: Any) -> None:
        task_status.started()
        await emit(1)

    assert await tf.source(ready).to_list() == [1]

    async def no_emit(*, task_status: Any) -> None:
        task_status.started()

    _raises(tf.DefinitionTypeError, lambda: tf.source(no_emit), "fn(emit, task_status=...)")


# --------------------------------------------------------------------------------- resources


class _Conn:
    async def __aenter__(self) -> _Conn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class _SyncConn:
    def __enter__(self) -> _SyncConn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("instance", [_res(), _Conn(), _SyncConn()],
                         ids=["asynccontextmanager()", "async class instance", "sync instance"])
def test_resource_given_a_context_manager_instance_is_refused(instance: Any) -> None:
    _raises(tf.DefinitionTypeError, lambda: tf.persistent(_async_two, resource=instance),
            "resource", "factory", repr(instance), "not resource=open_thing()")


async def test_resource_given_a_factory_or_a_class_is_accepted() -> None:
    async def use(res: Any, x: int) -> int:
        return x + 1

    for factory in (_res, _Conn):
        stage = tf.persistent(use, resource=factory)
        assert await (tf.from_iterable([1, 2]) | stage).to_list() == [2, 3]


# ----------------------------------------------------------------- options that do nothing


def _sync(x: Any) -> Any:
    return x


INERT: list[tuple[str, Callable[[], object], str]] = [
    ("map sync ordered=False", lambda: tf.map(_sync, ordered=False), "ordered=False"),
    ("map sync window", lambda: tf.map(_sync, window=4), "window"),
    ("map sync window=1", lambda: tf.map(_sync, window=1), "window"),
    ("map sync key", lambda: tf.map(_sync, key=_sync), "key"),
    ("map sync key per_key", lambda: tf.map(_sync, key=_sync, per_key=1), "key"),
    ("map sync with retry ordered=False",
     lambda: tf.map(_sync, ordered=False, retry=tf.Retry()), "ordered=False"),
]


@pytest.mark.parametrize(("build", "argument"), [(b, a) for _, b, a in INERT],
                         ids=[i for i, _, _ in INERT])
def test_option_that_does_nothing_on_a_plain_function_is_refused(
    build: Callable[[], object], argument: str
) -> None:
    _raises(tf.DefinitionValueError, build, argument, "does nothing", "_sync")


def test_options_that_apply_are_still_accepted() -> None:
    assert tf.map(_af, concurrency=2, ordered=False, window=4, key=_sync) is not None
    assert tf.map(_sync, backend=tf.Threads(), ordered=False) is not None
    assert tf.map(_sync, backend=tf.Inline(), ordered=False) is not None
    # one async call at a time: a concurrency that comes from configuration may be 1
    assert tf.map(_af, concurrency=1, ordered=False, window=3) is not None


# ------------------------------------------------------------- buffer/overflow of fused stages


FUSED: list[tuple[str, Callable[[], Any], str]] = [
    ("map buffer", lambda: tf.from_iterable([1]) | tf.map(_sync, buffer=4, name="m"), "'m' (buffer=4)"),
    ("filter overflow", lambda: tf.from_iterable([1]) | tf.filter(
        _sync, buffer=4096, overflow=tf.Overflow.DROP_NEWEST, name="f"), "'f' (buffer=4096, overflow="),
    ("tap buffer", lambda: tf.from_iterable([1]) | tf.tap(_sync, buffer=2, name="t"), "'t' (buffer=2)"),
    ("batch buffer", lambda: tf.from_iterable([1]) | tf.batch(3, buffer=2, name="b"), "'b' (buffer=2)"),
    ("sink buffer", lambda: tf.from_iterable([1]) | tf.sink(_sync, buffer=2, name="s"), "'s' (buffer=2)"),
    ("after an async stage", lambda: tf.from_iterable([1]) | tf.map(_af) | tf.map(_sync, buffer=9),
     "'map_2' (buffer=9) runs fused in the task of 'map'"),
]


@pytest.mark.parametrize(("build", "words"), [(b, w) for _, b, w in FUSED], ids=[i for i, _, _ in FUSED])
def test_buffer_or_overflow_on_a_fused_stage_warns_once_per_plan(
    build: Callable[[], Any], words: str
) -> None:
    with pytest.warns(tf.FusedStageWarning) as record:
        build().plan()
    assert len(record) == 1
    message = str(record[0].message)
    assert words in message and "no edge feeds" in message
    assert record[0].filename == __file__  # points at the caller, not into trioflow


async def test_fused_warning_names_every_fused_stage_in_one_warning_when_run() -> None:
    flow = tf.from_iterable([1, 2]) | tf.map(_sync, buffer=3, name="a") | tf.filter(_sync, buffer=5, name="b")
    with pytest.warns(tf.FusedStageWarning) as record:
        assert await flow.to_list() == [1, 2]
    assert len(record) == 1
    assert "'a' (buffer=3)" in str(record[0].message) and "'b' (buffer=5)" in str(record[0].message)
    assert record[0].filename == __file__


@pytest.mark.filterwarnings("error::trioflow.FusedStageWarning")
def test_buffer_on_a_stage_that_reads_an_edge_does_not_warn() -> None:
    (tf.from_iterable([1]) | tf.map(_af, buffer=4) | tf.sink(_af, buffer=2)).plan()
    (tf.from_iterable([1]) | tf.map(_sync, buffer=4, retry=tf.Retry())).plan()  # a task of its own
    (tf.from_iterable([1]) | tf.map(_af) | tf.map(_sync) | tf.to_list()).plan()
    g = tf.Graph()
    fan = g.broadcast(g.add(tf.from_iterable([1])))
    g.add(tf.to_list(), g.add(tf.map(_sync, buffer=2), fan))  # after a fan-out: an edge
    g.add(tf.sink(_sync, buffer=2), fan)
    g.plan()


# ------------------------------------------------------------ flat_map of an async iterable


async def _agen(x: Any) -> AsyncIterator[Any]:
    yield x


def _returns_agen(x: Any) -> AsyncIterator[Any]:
    return _agen(x)


def _returns_agen_evaluated(x: Any) -> AsyncIterator[Any]:
    return _agen(x)


# this module's annotations are strings (postponed); this one is the evaluated type
_returns_agen_evaluated.__annotations__["return"] = AsyncIterator[Any]


async def _async_returns_agen(x: Any) -> AsyncIterator[Any]:
    return _agen(x)


class _Stream:
    def __init__(self, x: Any) -> None:
        self.x = x

    def __aiter__(self) -> AsyncIterator[Any]:
        return _agen(self.x)


def _returns_list(x: Any) -> list[Any]:
    return [x]


@pytest.mark.parametrize("fn", [_returns_agen, _returns_agen_evaluated, _async_returns_agen, _Stream],
                         ids=["annotated", "evaluated annotation", "async def annotated", "class"])
def test_flat_map_of_a_function_returning_an_async_iterable_is_refused(fn: Any) -> None:
    _raises(tf.DefinitionTypeError, lambda: tf.flat_map(fn), "flat_map", "async iterable",
            "async generator function")


async def test_flat_map_of_iterables_and_async_generators_is_accepted() -> None:
    for fn in (_returns_list, lambda x: [x], _agen):
        assert await (tf.from_iterable([1, 2]) | tf.flat_map(fn)).to_list() == [1, 2]


def _unannotated_returns_agen(x):  # type: ignore[no-untyped-def]  # no annotation on purpose
    return _agen(x)


@pytest.mark.parametrize("policy", [{}, {"retry": tf.Retry(attempts=2)}],
                         ids=["fused", "under a policy"])
async def test_flat_map_of_an_unannotated_function_returning_an_async_iterable_says_so(
    policy: dict[str, Any]
) -> None:
    # nothing tells at definition what an unannotated function returns: the run fails on
    # the first item with an error that says what was returned and what to write instead
    with pytest.raises(ExceptionGroup) as info:
        await (tf.from_iterable([1, 2]) | tf.flat_map(_unannotated_returns_agen, **policy)).to_list()
    err = single_leaf(info.value)
    assert isinstance(err, TypeError)
    for words in ("flat_map's function returned a 'async_generator'", "not iterable",
                  "async generator function", "async for x in it: yield x"):
        assert words in str(err)
    assert "raised in stage 'flat_map' while processing item 1" in notes(err)


def _returns_int(x: Any) -> Any:
    return x


async def _areturns_int(x: Any) -> Any:
    return x


@pytest.mark.parametrize("stage", [
    lambda: tf.flat_map(_returns_int),
    lambda: tf.flat_map(_returns_int, retry=tf.Retry(attempts=2)),
    lambda: tf.flat_map(_areturns_int),
    lambda: tf.flat_map(_areturns_int, concurrency=2),
    lambda: tf.flat_map(_returns_int, backend=tf.Threads()),
], ids=["fused", "under a policy", "async", "pool", "threads"])
async def test_flat_map_of_a_function_returning_a_non_iterable_names_its_type(
    stage: Callable[[], Any]
) -> None:
    with pytest.raises(ExceptionGroup) as info:
        await (tf.from_iterable([1]) | stage()).to_list()
    err = single_leaf(info.value)
    assert isinstance(err, TypeError) and "returned a 'int', which is not iterable" in str(err)
    assert "async generator" not in str(err)


async def test_flat_map_keeps_a_type_error_raised_by_its_function() -> None:
    def bad(x: Any) -> list[Any]:
        raise TypeError("my own")

    with pytest.raises(ExceptionGroup) as info:
        await (tf.from_iterable([1]) | tf.flat_map(bad)).to_list()
    assert str(single_leaf(info.value)) == "my own"


# ------------------------------------------------------------------------- pipeline | stage


@pytest.mark.parametrize("other", [tf.map(_sync), tf.map(_af) | tf.filter(_sync), tf.to_list(), 3],
                         ids=["stage", "chain", "sink", "other"])
def test_pipeline_followed_by_anything_says_what_to_do(other: Any) -> None:
    pipeline = tf.from_iterable([1]) | tf.map(_sync) | tf.sink(_sync, name="out")
    _raises(tf.DefinitionTypeError, lambda: pipeline | other,
            "pipeline ends in its sink 'out'", "flow | stage | sink", "pipeline.flow | stage")


async def test_pipeline_flow_can_be_continued_as_the_error_says() -> None:
    pipeline = tf.from_iterable([1, 2]) | tf.map(_sync) | tf.to_list()
    assert await (pipeline.flow | tf.map(lambda x: x * 10) | tf.to_list()).run() == [10, 20]


# ------------------------------------------------------------------ one-shot sources run twice


class _Countdown:
    """An async iterator that is its own aiter (no aclose)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> _Countdown:
        return self

    async def __anext__(self) -> int:
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n + 1


def _channel() -> tf.Flow[int]:
    send, receive = trio.open_memory_channel[int](10)
    for x in (1, 2, 3):
        send.send_nowait(x)
    send.close()
    return tf.from_channel(receive, name="src")


async def _agen3() -> AsyncIterator[int]:
    for x in (1, 2, 3):
        yield x


ONE_SHOT: list[tuple[str, Callable[[], tf.Flow[int]]]] = [
    ("generator", lambda: tf.from_iterable((x for x in (1, 2, 3)), name="src")),
    ("list iterator", lambda: tf.from_iterable(iter([1, 2, 3]), name="src")),
    ("map object", lambda: tf.from_iterable(map(int, "123"), name="src")),
    ("async generator", lambda: tf.from_async_iterable(_agen3(), name="src")),
    ("async iterator", lambda: tf.from_async_iterable(_Countdown(3), name="src")),
    ("channel", _channel),
]


@pytest.mark.parametrize("make", [m for _, m in ONE_SHOT], ids=[i for i, _ in ONE_SHOT])
async def test_one_shot_source_run_twice_fails_naming_the_source(make: Callable[[], tf.Flow[int]]) -> None:
    flow = make()
    assert sorted(await flow.to_list()) == [1, 2, 3]
    for second_run in (flow.to_list, flow.run, (flow | tf.map(_sync) | tf.to_list()).run):
        with pytest.raises(ExceptionGroup) as info:
            await second_run()
        leaf = single_leaf(info.value)
        assert isinstance(leaf, tf.SourceConsumedError) and isinstance(leaf, RuntimeError)
        assert "'src'" in str(leaf) and "runs once" in str(leaf)
        assert "stage 'src'" in notes(leaf)


async def test_one_shot_source_in_a_graph_run_twice_fails() -> None:
    g = tf.Graph()
    out = g.add(tf.to_list(), g.add(tf.from_iterable(iter(range(3)), name="numbers")))
    assert (await g.run())[out] == [0, 1, 2]
    with pytest.raises(ExceptionGroup) as info:
        await g.run()
    assert isinstance(single_leaf(info.value), tf.SourceConsumedError)
    assert "'numbers'" in str(single_leaf(info.value))


async def test_a_generator_that_already_finished_fails_in_a_new_flow_too() -> None:
    gen = (x for x in range(3))
    assert await tf.from_iterable(gen).to_list() == [0, 1, 2]
    with pytest.raises(ExceptionGroup) as info:
        await tf.from_iterable(gen, name="again").to_list()
    leaf = single_leaf(info.value)
    assert isinstance(leaf, tf.SourceConsumedError) and "already finished" in str(leaf)


@pytest.mark.parametrize("data", [[1, 2, 3], range(1, 4), (1, 2, 3), {1: "a", 2: "b", 3: "c"}],
                         ids=["list", "range", "tuple", "dict"])
async def test_re_iterable_sources_run_any_number_of_times(data: Any) -> None:
    flow = tf.from_iterable(data)
    for _ in range(3):
        assert await flow.to_list() == [1, 2, 3]


async def test_from_channel_error_on_a_channel_closed_elsewhere_names_the_stage() -> None:
    _send, receive = trio.open_memory_channel[int](1)
    receive.close()
    with pytest.raises(ExceptionGroup) as info:
        await tf.from_channel(receive, name="inbox").to_list()
    leaf = single_leaf(info.value)
    assert isinstance(leaf, trio.ClosedResourceError)
    assert "stage 'inbox'" in notes(leaf)


# ------------------------------------------------------------------ nodes of another graph


def test_input_from_another_graph_names_both_nodes() -> None:
    other = tf.Graph()
    other.add(tf.from_iterable([0]))
    foreign = other.add(tf.from_iterable([1]))  # named 'from_iterable_2' by the planner
    named = other.add(tf.map(_sync, name="double"), foreign)
    g = tf.Graph()
    g.add(tf.map(_sync), g.add(tf.from_iterable([2])))
    _raises(tf.DefinitionValueError, lambda: g.add(tf.map(_sync), foreign),
            "input of 'map_2' is 'from_iterable_2', a node of another graph")
    _raises(tf.DefinitionValueError, lambda: g.add(tf.sink(_sync, name="out"), named),
            "input of 'out' is 'double'")
    _raises(tf.DefinitionValueError, lambda: g.add(tf.map(_sync, name="a") | tf.filter(_sync), named),
            "input of 'a' is 'double'")
    _raises(tf.DefinitionValueError, lambda: g.broadcast(named, name="fan"), "input of 'fan' is 'double'")
    local = g.add(tf.from_iterable([3]))
    _raises(tf.DefinitionValueError, lambda: g.merge(local, named),
            "inputs[1] of 'merge' is 'double'")


def test_port_of_another_graph_names_both_nodes() -> None:
    other = tf.Graph()
    router = other.route(other.add(tf.from_iterable([1])), _sync, name="by_kind")
    g = tf.Graph()
    _raises(tf.DefinitionValueError, lambda: g.add(tf.to_list(name="evens"), router[0]),
            "input of 'evens' is a port of 'by_kind', a node of another graph")


def test_stage_followed_by_a_sink_says_what_to_write_instead() -> None:
    with pytest.raises(tf.DefinitionTypeError, match=r"not by the sink .*source \| stages \| sink"):
        tf.map(lambda x: x) | tf.to_list()  # type: ignore[operator]


def _fold(acc: Any, x: Any) -> Any:
    return acc


async def _async_key(x: Any) -> Any:
    return x


def test_keyed_scan_arguments_are_checked_at_definition() -> None:
    _raises(tf.DefinitionTypeError, lambda: tf.scan(_fold, 0, key=_async_key),  # type: ignore[arg-type]
            "key of scan must be a plain function")
    _raises(tf.DefinitionTypeError, lambda: tf.scan(_fold, 0, key=3),  # type: ignore[call-overload]
            "key", "3")
    _raises(tf.DefinitionValueError,
            lambda: tf.scan(_fold, 0, key=_sync, backend=tf.Threads()), "key is not supported",
            "backend=Threads")
