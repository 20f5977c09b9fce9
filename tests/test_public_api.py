"""The public surface: every name exported once, documented, and every operator states
its contract (emits, backpressure, completes, cancelled, on error)."""

import inspect
import re
from pathlib import Path

import pytest

import trioflow as tf
from trioflow import _operators, _time

OPERATORS = [
    name
    for module in (_operators, _time)
    for name, obj in vars(module).items()
    if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
]


def test_all_is_unique_and_exported() -> None:
    assert len(tf.__all__) == len(set(tf.__all__))
    for name in tf.__all__:
        assert hasattr(tf, name), name


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name in tf.__all__ if not (getattr(tf, name).__doc__ or "").strip()]
    assert missing == []


def test_every_operator_is_exported() -> None:
    assert OPERATORS, "no operators found"
    assert sorted(set(OPERATORS) - set(tf.__all__)) == []


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_docstring_states_contract(name: str) -> None:
    doc = (getattr(tf, name).__doc__ or "").lower()
    for word in ("emits", "backpressure", "completes", "cancelled", "on error"):
        assert word in doc, f"{name}: docstring does not say when it {word}"


def test_public_async_apis_say_what_cancellation_does() -> None:
    for obj in (tf.Flow.run, tf.Flow.open, tf.Pipeline.run, tf.RunHandle.wait):
        assert "cancel" in (obj.__doc__ or "").lower(), obj


def test_every_public_function_is_in_the_generated_reference() -> None:
    # the docs site's reference pages are generated from docstrings by `::: trioflow.NAME`
    # lines: an operator added without one would be missing from the site
    pages = Path(__file__).resolve().parent.parent / "docs" / "reference"
    listed = set(re.findall(r"::: trioflow\.(\w+)", "".join(
        p.read_text() for p in pages.glob("*.md"))))
    functions = [name for name in tf.__all__ if inspect.isfunction(getattr(tf, name))]
    assert functions, "no public functions found"
    assert [name for name in functions if name not in listed] == []
