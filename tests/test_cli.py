"""The ``trioflow`` command as a real subprocess: ``run``, ``graph``, ``demo``, their
``--help``, the errors for a bad ``MODULE:ATTR``, and Ctrl-C (SIGINT) draining a run.

The pipelines run come from a module written into a temporary directory, which is the
command's working directory (``MODULE`` is imported from there, as ``python -m`` would).
Timeouts only guard against a hang; nothing here measures time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_ctrl_c import PATIENCE, Child

CLI = [sys.executable, "-m", "trioflow"]

PIPES = textwrap.dedent("""
    import trio
    import trioflow as tf

    flow = tf.from_iterable(range(1000), name="numbers") | tf.map(lambda x: x * 2, name="double")
    pipeline = flow | tf.reduce(lambda a, x: a + x, 0, name="total")

    async def make():
        return pipeline

    def make_sync():
        return flow

    graph = tf.Graph()
    _src = graph.add(tf.from_iterable(range(10), name="src"))
    _b = graph.broadcast(_src, name="fan")
    graph.add(tf.to_list(name="left"), _b)
    graph.add(tf.to_list(name="right"), _b)

    async def _tick(emit):
        i = 0
        while not emit.draining:
            await emit(i)
            i += 1
            if i == 3:
                print("ticking", flush=True)
            await trio.sleep(0.001)

    forever = tf.source(_tick, name="ticks") | tf.map(lambda x: x, name="same") | tf.to_list(name="got")

    def _boom(x):
        raise ValueError(f"no {x}")

    failing = tf.from_iterable([1], name="one") | tf.map(_boom, name="boom") | tf.to_list()
    not_a_flow = 42
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "pipes.py").write_text(PIPES)
    (tmp_path / "broken.py").write_text("import no_such_dependency_here\n")
    return tmp_path


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=PATIENCE)


def test_help_of_the_command_and_of_each_subcommand(tmp_path: Path) -> None:
    top = cli(tmp_path, "--help")
    assert top.returncode == 0 and top.stderr == ""
    for name in ("run", "graph", "demo"):
        assert f"  {name} " in top.stdout, top.stdout
    run = cli(tmp_path, "run", "--help")
    assert run.returncode == 0
    assert "Usage: trioflow run [OPTIONS] MODULE:ATTR" in run.stdout
    for option in ("--progress", "--dashboard", "--metrics-port PORT", "--drain-timeout"):
        assert option in run.stdout
    graph = cli(tmp_path, "graph", "-h")
    assert "--format [mermaid|dot|svg|png]" in graph.stdout
    demo = cli(tmp_path, "demo", "--help")
    assert "--records" in demo.stdout and "--forever" in demo.stdout and "--write-delay" in demo.stdout


def test_entry_point_script_is_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "trioflow"
    if not script.exists():  # pragma: no cover - the package is installed with its scripts in CI
        pytest.skip("the trioflow script is not installed next to this Python")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0 and "Commands:" in done.stdout


@pytest.mark.parametrize(("target", "result"), [
    ("pipes:pipeline", "result: 999000"),
    ("pipes:make", "result: 999000"),     # an async function returning a pipeline
    ("pipes:make_sync", None),            # a plain function returning a flow: no result
    ("pipes:graph", "result: GraphResult"),
])
def test_run_runs_the_target_and_prints_its_statistics(
    workdir: Path, target: str, result: str | None,
) -> None:
    done = cli(workdir, "run", target)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "state: completed"
    assert any(line.split()[:2] in (["numbers", "from_iterable"], ["src", "from_iterable"]) for line in lines)
    if result is None:
        assert not any(line.startswith("result:") for line in lines)
    else:
        assert any(line.startswith(result) for line in lines), done.stdout
    assert done.stderr == ""


def test_run_with_progress_off_a_terminal_prints_the_summary_line(workdir: Path) -> None:
    done = cli(workdir, "run", "pipes:pipeline", "--progress")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"completed in \d+\.\d\d s: numbers 1,000 items \([\d,]+/s\)", lines[0]), lines
    assert lines[1:] == ["result: 999000"]


def test_run_with_dashboard_off_a_terminal_draws_nothing_and_completes(workdir: Path) -> None:
    done = cli(workdir, "run", "pipes:pipeline", "--dashboard")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "state: completed" and "┃" not in done.stdout


def test_run_of_a_failing_pipeline_exits_1_with_its_error(workdir: Path) -> None:
    done = cli(workdir, "run", "pipes:failing")
    assert done.returncode == 1
    assert done.stderr.startswith("state: failed\n")
    assert "ValueError: no 1" in done.stderr


@pytest.mark.parametrize(("command", "target", "message"), [
    ("run", "nope_module:flow", "module 'nope_module' not found"),
    ("run", "pipes:nope", "module 'pipes' has no attribute 'nope'"),
    ("graph", "pipes:flow.nope", "module 'pipes' has no attribute 'flow.nope' ('pipes:flow' has no 'nope')"),
    ("run", "pipes", "expected MODULE:ATTR (e.g. pipelines:flow), got 'pipes'"),
    ("run", "pipes:not_a_flow", "'pipes:not_a_flow' is a int, not a Flow, Pipeline or Graph"),
    ("graph", "broken:flow",
     "importing module 'broken' failed: No module named 'no_such_dependency_here'"),
])
def test_a_bad_target_names_what_was_not_found(
    workdir: Path, command: str, target: str, message: str,
) -> None:
    done = cli(workdir, command, target)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Error: Invalid value for MODULE:ATTR: {message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_port_without_the_metrics_module_says_what_to_install(workdir: Path) -> None:
    code = ("import sys; sys.modules['trioflow.metrics'] = None\n"
            "from trioflow.__main__ import main\n"
            "sys.exit(main(['run', 'pipes:pipeline', '--metrics-port', '9999']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True,
                          timeout=PATIENCE)
    assert done.returncode == 2
    assert "Error: --metrics-port needs trioflow.metrics: install trioflow[metrics]" in done.stderr


def test_progress_and_dashboard_exclude_each_other(workdir: Path) -> None:
    done = cli(workdir, "run", "pipes:pipeline", "--progress", "--dashboard")
    assert done.returncode == 2
    assert "--progress and --dashboard draw on the same screen: choose one" in done.stderr


def test_graph_prints_mermaid_and_dot(workdir: Path) -> None:
    mermaid = cli(workdir, "graph", "pipes:pipeline")
    assert mermaid.returncode == 0, mermaid.stderr
    lines = mermaid.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    n0["numbers: from_iterable"]' in lines and "  n1 --> n2" in lines
    dot = cli(workdir, "graph", "pipes:graph", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph trioflow {") and '[label="fan\\nbroadcast"]' in dot.stdout


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graph_renders_svg_to_stdout_and_png_to_a_file(workdir: Path) -> None:
    svg = cli(workdir, "graph", "pipes:pipeline", "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    assert "<svg" in svg.stdout and ">numbers</text>" in svg.stdout and "segment 0" in svg.stdout
    out = workdir / "plan.png"
    png = cli(workdir, "graph", "pipes:pipeline", "--format", "png", "-o", str(out))
    assert png.returncode == 0 and png.stdout == "", png.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_graph_svg_without_graphviz_is_a_clear_error(workdir: Path) -> None:
    # PATH without dot: only the directory of this Python
    env = {"PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([*CLI, "graph", "pipes:pipeline", "--format", "svg"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 1
    assert "Error: rendering a plan needs Graphviz's dot program, which is not on PATH" in done.stderr


@pytest.mark.parametrize("extra", [[], ["--progress"]], ids=["plain", "progress"])
def test_first_sigint_drains_the_run_and_exits_0(workdir: Path, extra: list[str]) -> None:
    child = Child([*CLI, "run", "pipes:forever", *extra], cwd=workdir)
    child.wait_for_line("ticking")
    child.proc.send_signal(signal.SIGINT)
    code, lines, err = child.finish()
    assert code == 0, "\n".join(lines) + err
    assert err == ""
    if extra:
        assert lines[:1] == ["ticking"], lines
        assert lines[1].startswith("completed in ") and ": ticks " in lines[1], lines
    else:
        assert "state: completed" in lines
        rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["ticks"], ["same"])}
        # drained: every tick emitted went through the map into the list
        assert int(rows["ticks"][4]) == int(rows["same"][3]) == int(rows["same"][4]) >= 3, lines
    assert any(line.startswith("result: [0, 1, 2") for line in lines)


def test_second_sigint_aborts_the_drain_and_exits_130(workdir: Path) -> None:
    slow = textwrap.dedent("""
        import trio
        import trioflow as tf

        async def _tick(emit):
            print("ticking", flush=True)
            i = 0
            while True:  # ignores the drain: only the abort stops it
                await emit(i)
                i += 1
                await trio.sleep(0.01)

        stubborn = tf.source(_tick, name="ticks") | tf.to_list()
    """)
    (workdir / "slow.py").write_text(slow)
    child = Child([*CLI, "run", "slow:stubborn"], cwd=workdir)
    child.wait_for_line("ticking")
    child.proc.send_signal(signal.SIGINT)
    child.proc.send_signal(signal.SIGINT)
    code, lines, err = child.finish()
    assert code == 130, "\n".join(lines) + err
    assert "state: cancelled" in lines and err == ""


def test_demo_subcommand_runs_the_demo(tmp_path: Path) -> None:
    done = cli(tmp_path, "demo", "--records", "2000", "--db", str(tmp_path / "d.sqlite3"))
    assert done.returncode == 0, done.stderr
    assert "state: completed" in done.stdout.splitlines()
    assert (tmp_path / "d.sqlite3").exists()
    both = cli(tmp_path, "demo", "--records", "5", "--forever")
    assert both.returncode == 2 and "--records and --forever exclude each other" in both.stderr


def test_metrics_port_serves_prometheus_metrics_of_the_running_pipeline(workdir: Path) -> None:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    child = Child([*CLI, "run", "pipes:forever", "--metrics-port", "0"], cwd=workdir)
    child.wait_for_line("ticking")
    assert child.proc.stderr is not None
    announced = child.proc.stderr.readline()  # the endpoint is announced before the run goes on
    url = re.fullmatch(r"metrics: (http://127\.0\.0\.1:\d+/metrics)\n", announced)
    assert url, announced
    with urlopen(url.group(1), timeout=PATIENCE) as response:
        text = response.read().decode()
    items = {(s.labels["stage"], s.labels["direction"]): s.value
             for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == "trioflow_stage_items_total"}
    assert items[("ticks", "out")] >= 3 and ("same", "in") in items, text
    child.proc.send_signal(signal.SIGINT)
    code, lines, err = child.finish()
    assert code == 0, "\n".join(lines) + err
    assert "state: completed" in lines
