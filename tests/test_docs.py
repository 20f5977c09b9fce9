"""Run every ```python block of README.md and docs/*.md, so the docs cannot drift from the code.

The conventions (docs/development.md, "Code in the docs"):

* The blocks of one file run in order in one namespace: a later block may use the names
  an earlier one defined. One test case per file.
* A block with a top-level ``await`` is the body of an async function, as typed in Trio's
  REPL (``python -m trio``); it runs under ``trio.run``.
* A block that defines ``test_*`` functions (docs/testing.md) has them called once it ran,
  as pytest would: async ones under ``trio.run``; a parameter ``autojump_clock`` gets a
  ``MockClock(autojump_threshold=0)``, which is also the run's clock.
* ``# -> text``, as a trailing comment on a line or alone on the lines right after it,
  states a line the block prints. The stated lines must appear in the block's output, in
  that order (lines without a ``# ->`` may print anything: timings, varying counts).
* What cannot run as Python (a shell session, a printed plan) goes in another fence
  (``sh``, ``text``).

Real clock: blocks run in real time, so they must be quick, and nothing here compares
timings.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_EXPECT = re.compile(r"#\s*->\s?(?P<text>.*)$")


@attrs.frozen
class Block:
    path: Path
    #: line number (1-based) of the block's first code line in its file
    line: int
    source: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}, the python block at line {self.line}"

    def expected_output(self) -> list[str]:
        """The lines the block says it prints (``# -> text``), in order."""
        return [m["text"].rstrip() for line in self.source.splitlines() if (m := _EXPECT.search(line))]


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, dedented to their fence (a fence may sit
    inside a list item)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        i += 1
        if not opening:
            continue
        indent, body, start = opening["indent"], [], i + 1
        while i < len(lines) and not re.fullmatch(re.escape(indent) + r"```[ \t]*", lines[i]):
            body.append(lines[i].removeprefix(indent))
            i += 1
        i += 1  # the closing fence
        if opening["lang"] == "python":
            blocks.append(Block(path=path, line=start, source="\n".join(body) + "\n"))
    return blocks


def _call_test(fn: Callable[..., Any]) -> None:
    """Call a ``test_*`` function defined in the docs as pytest-trio would."""
    params = list(inspect.signature(fn).parameters)
    if set(params) - {"autojump_clock"}:
        raise TypeError(f"{fn.__name__}: the docs test provides only the fixture autojump_clock, "
                        f"got parameters {params}")
    clock = trio.testing.MockClock(autojump_threshold=0) if params else None
    kwargs = {"autojump_clock": clock} if params else {}
    if inspect.iscoroutinefunction(fn):
        trio.run(lambda: fn(**kwargs), clock=clock)
    else:
        fn(**kwargs)


def run_block(block: Block, namespace: dict[str, Any]) -> str:
    """Run one block in ``namespace`` (and the tests it defines); return what it printed."""
    # blank lines in front, so that tracebacks give the line numbers of the Markdown file
    code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    before = dict(namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if inspect.CO_COROUTINE & code.co_flags:
            def body() -> Coroutine[Any, Any, Any]:
                coro: Coroutine[Any, Any, Any] = eval(code, namespace)  # the block awaits at top level
                return coro
            trio.run(body)
        else:
            exec(code, namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value) and before.get(name) is not value:
                _call_test(value)
    return out.getvalue()


def _doc_traceback(exc: BaseException) -> str:
    """The traceback without the frames of this module and of trio's runner."""
    tb = traceback.TracebackException.from_exception(exc)
    tb.stack = traceback.StackSummary.from_list(
        [f for f in tb.stack if f.filename != __file__ and f"{Path(trio.__file__).parent}" not in f.filename]
    )
    return "".join(tb.format())


def _contains_in_order(output: list[str], expected: list[str]) -> bool:
    rest = iter(output)
    return all(any(line == want for line in rest) for want in expected)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run_and_print_what_they_say(path: Path) -> None:
    # a plain def: the blocks call trio.run themselves, which cannot nest in a running loop
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    for block in python_blocks(path):
        failure: str | None
        try:
            printed = run_block(block, namespace)
        except Exception as exc:
            failure = f"{block.where} failed:\n{_doc_traceback(exc)}"
        else:
            failure = None
        if failure:
            pytest.fail(failure, pytrace=False)
        output = [line.rstrip() for line in printed.splitlines()]
        expected = block.expected_output()
        assert _contains_in_order(output, expected), (
            f"{block.where} does not print what it says (# -> lines, in order)\n"
            f"expected: {expected}\nprinted:  {output}"
        )


def test_every_python_fence_is_collected() -> None:
    # the collector must find every block, or the test above would pass on too little
    for path in DOC_FILES:
        fences = sum(1 for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() == "```python")
        assert len(python_blocks(path)) == fences, path
    counts = {p.relative_to(ROOT).as_posix(): len(python_blocks(p)) for p in DOC_FILES}
    assert counts["README.md"] >= 2 and sum(counts.values()) >= 28


def test_block_parsing(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n"
        "```python\n"
        "print(1)  # -> 1\n"
        "```\n"
        "```text\n"
        "not python\n"
        "```\n"
        "* a list item:\n"
        "\n"
        "  ```python\n"
        "  print(2)\n"
        "  # -> 2\n"
        "  ```\n",
        encoding="utf-8",
    )
    blocks = python_blocks(doc)
    assert [(b.line, b.source) for b in blocks] == [(3, "print(1)  # -> 1\n"), (11, "print(2)\n# -> 2\n")]
    assert [b.expected_output() for b in blocks] == [["1"], ["2"]]
    assert _contains_in_order(["0", "1", "x", "2"], ["1", "2"])
    assert not _contains_in_order(["2", "1"], ["1", "2"])
