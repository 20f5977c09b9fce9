"""The exception hierarchy: one root, definition errors that are also ValueError/TypeError."""

from __future__ import annotations

import reprlib

__all__ = [
    "DefinitionError",
    "DefinitionTypeError",
    "DefinitionValueError",
    "FusedStageWarning",
    "RunAborted",
    "SourceConsumedError",
    "TrioflowError",
    "UnroutableError",
]


class TrioflowError(Exception):
    """Root of every exception that trioflow itself raises.

    Exceptions raised by user code inside a stage are never wrapped: they reach the caller
    unchanged, inside one ``ExceptionGroup``, with a note naming the stage and the item.
    """


class DefinitionError(TrioflowError):
    """A flow or stage was defined with an invalid argument (raised before anything runs)."""


class DefinitionValueError(DefinitionError, ValueError):
    """An argument has the right type but an invalid value; the message names the argument."""


class DefinitionTypeError(DefinitionError, TypeError):
    """An argument has the wrong type; the message names the argument."""


class FusedStageWarning(UserWarning):
    """``buffer=`` or ``overflow=`` was given to a stage that the planner fused into its
    producer's task: no edge feeds the stage, so the options do nothing. Warned once per
    plan, naming the stages."""


class RunAborted(TrioflowError):
    """Passed to a persistent resource's ``__aexit__`` when its worker ends after the run
    has already failed elsewhere: the resource closes as on an error (rolls back rather
    than commits). Never raised to the caller."""


class SourceConsumedError(TrioflowError, RuntimeError):
    """A run started a one-shot source (an iterator or generator, an async iterator, a
    channel) that an earlier run already consumed. Raised in the run, noted with the source
    stage, instead of the run silently finding nothing. Build the flow anew per run, over a
    fresh iterator, or give ``from_iterable`` a re-iterable collection (a list, a range)."""


class UnroutableError(TrioflowError, LookupError):
    """A ``route`` got an item whose key matches no branch, and it has no default branch."""


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 6
_short.maxtuple = 6
_short.maxdict = 4


def short_repr(obj: object) -> str:
    """A repr bounded to about 80 characters, safe on objects whose repr raises."""
    try:
        text = _short.repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} object (repr failed)>"
    return text if len(text) <= 80 else text[:77] + "..."


def annotate(exc: BaseException, stage: str, item: object = None, *, has_item: bool = True) -> None:
    """Attach the stage name (and the item being processed) to an exception, once."""
    if getattr(exc, "_trioflow_annotated", False):
        return
    if has_item:
        exc.add_note(f"trioflow: raised in stage {stage!r} while processing item {short_repr(item)}")
    else:
        exc.add_note(f"trioflow: raised in stage {stage!r}")
    try:
        exc._trioflow_annotated = True  # type: ignore[attr-defined]
        exc.trioflow_stage = stage  # type: ignore[attr-defined]
    except AttributeError:  # exceptions with __slots__; the note is still there
        pass
