"""Classify user callables once, at definition time, so the hot path never inspects them."""

from __future__ import annotations

import enum
import functools
import inspect
import re
import typing
from collections.abc import AsyncIterable, Callable
from typing import Any

from ._errors import DefinitionTypeError


class CallKind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    SYNC_GEN = "sync generator"
    ASYNC_GEN = "async generator"


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def classify(fn: object, argument: str) -> CallKind:
    """Tell how ``fn`` must be called; raise a DefinitionTypeError naming ``argument`` if it
    is not callable."""
    if not callable(fn):
        raise DefinitionTypeError(f"{argument} must be callable, got {fn!r}")
    target = _unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return CallKind.ASYNC_GEN
    if inspect.iscoroutinefunction(target):
        return CallKind.ASYNC
    if inspect.isgeneratorfunction(target):
        return CallKind.SYNC_GEN
    if not inspect.isfunction(target) and not inspect.ismethod(target):
        call = getattr(type(target), "__call__", None)  # noqa: B004 - we want the method
        if call is not None:
            if inspect.isasyncgenfunction(call):
                return CallKind.ASYNC_GEN
            if inspect.iscoroutinefunction(call):
                return CallKind.ASYNC
            if inspect.isgeneratorfunction(call):
                return CallKind.SYNC_GEN
    return CallKind.SYNC


def accepts_keyword(fn: Callable[..., object], name: str) -> bool:
    """Whether ``fn`` can be called with keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return params[name].kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _label(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def check_call(
    fn: Callable[..., object],
    operator: str,
    call: str,
    *,
    keywords: tuple[str, ...] = (),
    argument: str | None = None,
) -> None:
    """Refuse, at definition, a callable whose signature cannot take the call ``operator``
    will make. ``call`` spells that call, ``"fn(acc, item)"``: the argument's name, then the
    positional arguments it is given (``keywords`` are passed by name besides). Callables
    whose signature Python cannot tell (many builtins and C functions) are let through:
    they fail, if at all, when called."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    inside = call.partition("(")[2].rstrip(")")
    nargs = sum(1 for a in inside.split(",") if a.strip() and "=" not in a)
    try:
        signature.bind(*(None,) * nargs, **dict.fromkeys(keywords))
    except TypeError as exc:
        argument = argument or call.partition("(")[0]
        bare = signature.replace(  # annotations only clutter the message
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise DefinitionTypeError(
            f"{argument} of {operator} is called as {call}, but {_label(fn)} has the signature "
            f"{bare} and cannot take that ({exc})"
        ) from None


_ASYNC_ITERABLE_NAME = re.compile(r"^(?:[\w.]+\.)?Async(?:Iterator|Iterable|Generator)\b")


def returns_async_iterable(fn: Callable[..., object]) -> bool:
    """Whether a plain callable says that it returns an async iterable: a class whose
    instances are async iterables but not iterables, or a return annotation naming one.
    (Unannotated functions cannot tell; they are not refused.)"""
    if isinstance(fn, type):
        return hasattr(fn, "__aiter__") and not hasattr(fn, "__iter__")
    try:
        returns = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    if isinstance(returns, str):  # postponed annotations are compared by name, never evaluated
        return _ASYNC_ITERABLE_NAME.match(returns) is not None
    origin = typing.get_origin(returns) or returns
    return isinstance(origin, type) and issubclass(origin, AsyncIterable)


class LiftedInstance:
    """An ``on_demand`` instance working on wrapped items (a branch's envelopes, a tracked
    run's items): enters the real instance if it is an async context manager, and
    ``lift(item, call)`` unwraps the item, awaits ``call(value)`` (the instance called on
    the value, awaited if it returns an awaitable) and wraps the result."""

    def __init__(self, inner: Any, lift: Callable[[Any, Callable[[Any], Any]], Any]) -> None:
        self.inner = inner
        self.entered = inner
        self.lift = lift

    async def __aenter__(self) -> LiftedInstance:
        if hasattr(self.inner, "__aenter__"):
            self.entered = await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        if hasattr(self.inner, "__aexit__"):
            return bool(await self.inner.__aexit__(*exc))
        return None

    async def _call(self, value: Any) -> Any:
        result = self.entered(value)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def __call__(self, item: Any) -> Any:
        return await self.lift(item, self._call)
