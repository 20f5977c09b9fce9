"""Ctrl-C with real processes and real signals: the demo drains on the first SIGINT and
aborts on the second, printing its final statistics either way.

No mocks: each test starts a process, reads its output until it is running, sends the
signal a terminal would send, and checks the exit code and what was printed. Timeouts are
generous and only guard against a hang; nothing here measures time.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "trioflow", "demo"]
STAGES = ["reader", "parse", "valid", "enrich", "batch", "sqlite", "count"]
#: Seconds to wait for a line or an exit: a hang guard, never an assertion about speed.
PATIENCE = 60.0

_STAGE_LINE = re.compile(
    r"^  (?P<name>\w+)\s+\w+\s+in\s+(?P<in>\d+)\s+out\s+(?P<out>\d+)\s+errors (?P<err>\d+)$")
_TOTALS = re.compile(
    r"^(?P<lines>[\d,]+) lines in, (?P<written>[\d,]+|\?) rows written, (?P<stored>[\d,]+) rows in")


class Child:
    """A process whose stdout is read line by line in a thread, so a test can wait for a
    line with a deadline; stderr is collected whole."""

    def __init__(self, cmd: list[str], *, new_session: bool = False) -> None:
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=new_session)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str) -> str:
        """Read up to the first line starting with ``prefix`` and return it."""
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no line {prefix!r} within {PATIENCE} s; output so far:\n"
                            + "\n".join(self.lines))
            if line is None:
                pytest.fail(f"the process ended before printing {prefix!r}:\n" + "\n".join(self.lines)
                            + "\n" + self.stderr())
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def finish(self) -> tuple[int, list[str], str]:
        """Wait for the exit; return the exit code, every stdout line and stderr."""
        try:
            code = self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the process did not exit; output so far:\n" + "\n".join(self.lines))
        self._reader.join(timeout=PATIENCE)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return code, self.lines, self.stderr()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def stage_counts(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """The demo's stage statistics: name -> (in, out, errors)."""
    start = lines.index("stage statistics:")
    found = {}
    for line in lines[start + 1:]:
        if m := _STAGE_LINE.match(line):
            found[m["name"]] = (int(m["in"]), int(m["out"]), int(m["err"]))
    return found


def totals(lines: list[str]) -> tuple[int, int | None, int]:
    """The demo's totals line: lines in, rows written (None if unknown), rows stored."""
    (m,) = [m for line in lines if (m := _TOTALS.match(line))]
    written = None if m["written"] == "?" else int(m["written"].replace(",", ""))
    return int(m["lines"].replace(",", "")), written, int(m["stored"].replace(",", ""))


def assert_nothing_lost(lines: list[str]) -> None:
    """What the reader handed over went through to the database: a clean end."""
    counts = stage_counts(lines)
    assert list(counts) == STAGES, lines
    lines_in, written, stored = totals(lines)
    assert counts["reader"][1] == counts["parse"][0] == lines_in > 0
    assert counts["valid"][1] == counts["enrich"][0] == counts["enrich"][1] == counts["batch"][0]
    assert counts["batch"][1] == counts["sqlite"][0] == counts["sqlite"][1] == counts["count"][0]
    assert written == stored == counts["enrich"][1]
    assert all(err == 0 for _, _, err in counts.values())


def test_demo_that_ends_by_itself_prints_completed_and_exits_0() -> None:
    child = Child([*DEMO, "--records", "3000"])
    code, lines, err = child.finish()
    assert code == 0, "\n".join(lines) + err
    assert "state: completed" in lines
    assert not any(line.startswith("draining:") for line in lines)
    assert_nothing_lost(lines)
    assert totals(lines)[0] == 3000
    assert err == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_first_signal_drains_prints_statistics_and_exits_0(sig: signal.Signals) -> None:
    child = Child([*DEMO, "--forever"])
    child.wait_for_line("running:")
    child.proc.send_signal(sig)
    code, lines, err = child.finish()
    assert code == 0, "\n".join(lines) + err
    assert any(line.startswith("draining: the reader stopped after") for line in lines)
    assert "state: completed (drained: the reader stopped early)" in lines
    assert_nothing_lost(lines)
    assert err == ""  # no traceback, no warning


def test_demo_second_sigint_aborts_the_drain_prints_statistics_and_exits_130() -> None:
    # a slow database keeps the drain busy (each batch write waits 60 s first) so the second
    # signal lands while it runs; the abort cancels those waits
    child = Child([*DEMO, "--forever", "--write-delay", "60"])
    child.wait_for_line("running:")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for_line("draining:")
    child.proc.send_signal(signal.SIGINT)
    code, lines, err = child.finish()
    assert code == 130, "\n".join(lines) + err
    assert "state: cancelled (aborted: what was not yet committed is not stored)" in lines
    counts = stage_counts(lines)
    assert list(counts) == STAGES
    lines_in, written, stored = totals(lines)
    assert written is None and counts["reader"][1] == lines_in > 0
    assert stored == 0 == counts["sqlite"][1]  # the first write was still waiting
    assert err == ""
