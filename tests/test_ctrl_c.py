"""Ctrl-C with real processes and real signals: the demo drains on the first SIGINT and
aborts on the second, printing its final statistics either way; dev.py waits for the
command it runs to finish its own shutdown, then exits quietly.

No mocks: each test starts a process, reads its output until it is running, sends the
signal a terminal would send, and checks the exit code and what was printed. Timeouts are
generous and only guard against a hang; nothing here measures time.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
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

    def __init__(self, cmd: list[str], *, new_session: bool = False, cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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


# -- dev.py ---------------------------------------------------------------------------------

#: A command that shuts down on its own after SIGINT, as the demo does: it says so, takes a
#: moment, says it is done, and exits with the code it was given.
DRAINING_CHILD = textwrap.dedent("""
    import signal, sys, time
    got = []
    signal.signal(signal.SIGINT, lambda *_: got.append(1))
    print("child: running", flush=True)
    while not got:
        time.sleep(0.01)
    print("child: draining", flush=True)
    time.sleep(0.5)
    print("child: done", flush=True)
    sys.exit(int(sys.argv[1]))
""")
#: A command that keeps Python's default handling: SIGINT kills it with a traceback.
PLAIN_CHILD = textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    print("child: running", flush=True)
    time.sleep(600)
""")


def dev_running(child: list[str]) -> list[str]:
    """A command line that runs ``child`` through dev.py's ``run``, then says how it ends."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import dev
        code = dev.run({child!r})
        print("dev: exit code", code, flush=True)
        sys.exit(code)
    """)
    return [sys.executable, "-c", code]


@pytest.mark.parametrize(("child_code", "dev_code"), [(0, 130), (3, 3)])
def test_dev_py_ctrl_c_waits_for_the_child_then_exits_quietly(child_code: int, dev_code: int) -> None:
    # a terminal sends Ctrl-C's SIGINT to its whole foreground process group
    proc = Child(dev_running([sys.executable, "-c", DRAINING_CHILD, str(child_code)]), new_session=True)
    proc.wait_for_line("child: running")
    os.killpg(proc.proc.pid, signal.SIGINT)
    code, lines, err = proc.finish()
    assert code == dev_code, "\n".join(lines) + err
    # dev.py was still there after the child finished its shutdown
    assert lines[-3:] == ["child: draining", "child: done", f"dev: exit code {dev_code}"]
    assert err == ""  # no traceback from dev.py


def test_dev_py_ctrl_c_of_a_child_killed_by_sigint_exits_130() -> None:
    proc = Child(dev_running([sys.executable, "-c", PLAIN_CHILD]), new_session=True)
    proc.wait_for_line("child: running")
    os.killpg(proc.proc.pid, signal.SIGINT)
    code, lines, err = proc.finish()
    assert code == 130, "\n".join(lines) + err
    assert lines[-1] == "dev: exit code 130"
    assert err == ""


#: A command that runs a command of its own and stops it on Ctrl-C, as nox does (nox turns
#: SIGINT into stopping its session's command, and has no handler for SIGTERM).
NOX_LIKE_CHILD = textwrap.dedent("""
    import subprocess, sys
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         stdout=subprocess.DEVNULL)
    try:
        print("child: running", g.pid, flush=True)
        g.wait()
    except KeyboardInterrupt:
        g.terminate()
        g.wait()
        print("child: stopped its command", flush=True)
        sys.exit(130)
""")


@pytest.mark.parametrize("child", [DRAINING_CHILD, PLAIN_CHILD], ids=["draining", "plain"])
def test_dev_py_sigterm_stops_the_child_and_exits_143(child: str) -> None:
    # SIGTERM to dev.py alone (a CI runner, `kill`): the child gets SIGINT and is waited for
    proc = Child(dev_running([sys.executable, "-c", child, "0"]), new_session=True)
    proc.wait_for_line("child: running")
    proc.proc.send_signal(signal.SIGTERM)
    code, lines, err = proc.finish()
    assert code == 143, "\n".join(lines) + err
    assert lines[-1] == "dev: exit code 143"
    if child is DRAINING_CHILD:
        assert lines[-3:-1] == ["child: draining", "child: done"]  # its own shutdown ran
    assert err == ""


def test_dev_py_sigterm_leaves_no_process_behind() -> None:
    proc = Child(dev_running([sys.executable, "-c", NOX_LIKE_CHILD]), new_session=True)
    grandchild = int(proc.wait_for_line("child: running").split()[-1])
    proc.proc.send_signal(signal.SIGTERM)
    code, lines, err = proc.finish()
    assert code == 143, "\n".join(lines) + err
    assert lines[-2:] == ["child: stopped its command", "dev: exit code 143"]
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)  # stopped and reaped by the child: gone


def test_dev_py_without_ctrl_c_passes_the_childs_code_through() -> None:
    proc = Child(dev_running([sys.executable, "-c", "import sys; sys.exit(7)"]))
    code, lines, err = proc.finish()
    assert (code, lines, err) == (7, ["dev: exit code 7"], "")


# -- a real terminal ------------------------------------------------------------------------


class Tmux:
    """A tmux server of its own (its socket in ``tmp_path``) running one command in a
    terminal of 160 x 50; ``screen()`` is what the terminal shows (and its scrollback)."""

    def __init__(self, tmp_path: Path, command: str, *, cwd: Path = ROOT) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 10000\n")
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "demo", "-x", "160", "-y", "50", "-c",
                  str(cwd), command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=PATIENCE).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "demo")

    def pane(self) -> list[str]:  # ["0"] while the command runs, ["1", exit code] after
        return self.tmux("display-message", "-p", "-t", "demo", "#{pane_dead} #{pane_dead_status}").split()

    def wait_until(self, seen: str) -> str:
        """The screen once it shows ``seen`` (or once the command has ended)."""
        deadline = time.monotonic() + PATIENCE
        while seen not in (text := self.screen()) and self.pane() == ["0"]:
            if time.monotonic() > deadline:
                pytest.fail(f"{seen!r} not seen within {PATIENCE} s:\n{text}")
            time.sleep(0.1)
        return text

    def wait_for_exit(self) -> str:
        deadline = time.monotonic() + PATIENCE
        while self.pane()[0] == "0":
            assert time.monotonic() < deadline, f"still running: {self.screen()}"
            time.sleep(0.1)
        return self.screen()

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=PATIENCE)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_ctrl_c_in_a_terminal_drains_the_demo_under_dev_py(tmp_path: Path) -> None:
    """Ctrl-C typed into a terminal (tmux) running the demo through dev.py's ``run``: the
    demo drains and prints its statistics, dev.py waits for it and exits 130, no traceback."""
    term = Tmux(tmp_path, shlex.join(dev_running([*DEMO, "--forever"])))
    try:
        text = term.wait_until("running:")
        assert term.pane() == ["0"], text  # running, not ended
        term.tmux("send-keys", "-t", "demo", "C-c")
        term.wait_until("dev: exit code")
        text = term.wait_for_exit()
        # (the exit status is read from the wrapper's "dev: exit code" line: tmux 3.3 does not
        # always fill in #{pane_dead_status} when the terminal closes before the process is reaped)
        # the terminal echoes Ctrl-C as "^C" where the cursor was
        lines = [line.rstrip().removeprefix("^C") for line in text.splitlines()]
        assert any(line.startswith("draining: the reader stopped after") for line in lines), text
        assert "state: completed (drained: the reader stopped early)" in lines, text
        assert_nothing_lost(lines)
        # dev.py outlived the demo's drain and its statistics
        assert lines.index("dev: exit code 130") > lines.index("stage statistics:"), text
        assert "Traceback" not in text
    finally:
        term.close()
