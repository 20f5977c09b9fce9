"""Classify user callables once, at definition time, so the hot path never inspects them."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable
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
