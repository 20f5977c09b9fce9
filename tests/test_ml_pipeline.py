"""examples/ml_pipeline.py for real: a real TCP socket, real worker processes (trio-parallel),
real SQLite and PostgreSQL, checked against a plain-Python reference computation.

The reference parses each line, splits each document, calls the same scorers in this
process (the models are trained from a fixed seed, so every process has the same weights)
and adds up per source; the pipeline's ``totals`` table must hold exactly those totals, and
every document must be either counted there or in ``dead_letters``. Faults are injected
with the scorers of tests/ml_fault_scorers.py: one raises on a word, one spins for ever on
another, which the parallel block's timeout must stop (the worker is killed) while the
other models' scores of that sentence are kept (``BestEffort``).

The block's timeout runs on the real clock (worker processes do not follow a MockClock):
it is generous for the sentences that are scored, and nothing here compares timings.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ml_pipeline.py"
sys.path.insert(0, str(EXAMPLE.parent))  # worker processes inherit sys.path

import ml_fault_scorers as faults  # noqa: E402
import ml_pipeline as ml  # noqa: E402

#: per sentence, seconds: far above what scoring a sentence takes (milliseconds), even on a
#: loaded machine; the spinning scorer is stopped at this deadline
TIMEOUT = 3.0
FAULTY: dict[str, Callable[[str], float]] = {
    "sentiment": ml.score_sentiment, "topic": faults.topic_or_raise, "urgency": faults.urgency_or_hang,
}


def faulty(model: str, text: str) -> bool:
    """Whether the faulty scorers fail on ``text`` (the reference's view of FAULTY)."""
    words = ml.words(text)
    return ((model == "topic" and faults.FAIL_WORD in words)
            or (model == "urgency" and faults.HANG_WORD in words))


def reference(lines: list[bytes], fails: Callable[[str, str], bool] = lambda m, t: False
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per source, the row the pipeline should leave in ``totals``; and the rejection
    reasons of the lines that must be dead-lettered."""
    totals: dict[str, dict[str, Any]] = {}
    rejected: list[str] = []
    for raw in lines:
        try:
            doc = ml.parse(raw)
        except ValueError as exc:
            rejected.append(f"ValueError: {exc}")
            continue
        row = totals.setdefault(doc.source, dict.fromkeys(ml.columns(list(ml.SCORERS)), 0))
        row["source"] = doc.source
        row["documents"] += 1
        for sentence in ml.split(doc):
            row["sentences"] += 1
            for name, score in ml.SCORERS.items():
                if fails(name, sentence.text):
                    row[f"{name}_failed"] += 1
                else:
                    row[f"{name}_sum"] += score(sentence.text)
                    row[f"{name}_n"] += 1
    return totals, rejected


async def run_pipeline(db: str, lines: list[bytes], *, connections: int,
                       scorers: Mapping[str, Callable[[str], float]] = ml.SCORERS) -> tf.RunState:
    """The example's pipeline, fed ``lines``, then drained (inside ``ml.open_workers()``)."""
    restored = await trio.to_thread.run_sync(ml.load_totals, db, list(scorers))
    servers: list[Any] = []
    async with ml.open_dead_letters(db) as letters:
        flow = ml.build(db, letters, scorers=scorers, timeout=TIMEOUT, on_listening=servers.append,
                        restored=restored)
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(flow.run)
            await ml.send_documents("127.0.0.1", servers[0], lines, connections)
            state = await handle.drain(timeout=60)
    return state


def read_sqlite(db: str) -> tuple[list[dict[str, Any]], list[str]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM totals")]
        letters = [r[0] for r in conn.execute("SELECT error FROM dead_letters")]
    return rows, letters


def assert_matches(rows: list[dict[str, Any]], letters: list[str], lines: list[bytes],
                   expected: dict[str, dict[str, Any]], rejected: list[str]) -> None:
    assert sorted(letters) == sorted(rejected)
    # every document accounted for: counted once in totals, or dead-lettered
    assert sum(r["documents"] for r in rows) + len(letters) == len(lines)
    got = {r["source"]: r for r in rows}
    assert sorted(got) == sorted(expected)
    for source, want in expected.items():
        for column, value in want.items():
            if column.endswith("_sum"):  # added up in another order (connections interleave)
                assert got[source][column] == pytest.approx(value, rel=1e-9, abs=1e-9), (source, column)
            else:
                assert got[source][column] == value, (source, column)


async def test_scores_and_totals_match_the_reference_on_sqlite(tmp_path: Path) -> None:
    lines = ml.documents(150, seed=5)
    expected, rejected = reference(lines)
    assert rejected and len(expected) == 4  # the generator made bad lines, and 4 sources
    db = str(tmp_path / "scores.db")
    async with ml.open_workers():
        assert await run_pipeline(db, lines, connections=3) is tf.RunState.COMPLETED
    assert_matches(*read_sqlite(db), lines, expected, rejected)


async def test_scores_and_totals_match_the_reference_on_postgres(postgres: Any) -> None:
    with postgres.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS totals, dead_letters")
    lines = ml.documents(60, seed=8)
    expected, rejected = reference(lines)
    async with ml.open_workers():
        assert await run_pipeline(postgres.url, lines, connections=2) is tf.RunState.COMPLETED
    with postgres.connect() as conn:
        cur = conn.execute("SELECT * FROM totals")
        names = [c.name for c in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        letters = [r[0] for r in conn.execute("SELECT error FROM dead_letters").fetchall()]
    assert_matches(rows, letters, lines, expected, rejected)


async def test_a_restarted_pipeline_goes_on_from_the_committed_totals(tmp_path: Path) -> None:
    # two runs on one database, each drained: the second starts its accumulator from the
    # rows of the first, so the table ends with the totals of all the documents
    lines = ml.documents(80, seed=6)
    expected, rejected = reference(lines)
    db = str(tmp_path / "scores.db")
    async with ml.open_workers():
        for part in (lines[:50], lines[50:]):
            assert await run_pipeline(db, part, connections=2) is tf.RunState.COMPLETED
    assert_matches(*read_sqlite(db), lines, expected, rejected)


async def test_a_drain_commits_every_document_that_was_read(tmp_path: Path) -> None:
    # a drain in the middle of the input: the socket stops being read, and every document
    # read before is scored and committed (none half counted), the rest never entered
    lines = ml.documents(400, seed=7)
    db = str(tmp_path / "scores.db")
    servers: list[Any] = []
    async with ml.open_workers(), ml.open_dead_letters(db) as letters:
        flow = ml.build(db, letters, timeout=TIMEOUT, on_listening=servers.append)
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(flow.run)

            async def client() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", servers[0].port)
                with contextlib.suppress(trio.BrokenResourceError):  # closed by the drain
                    async with stream:
                        for raw in lines:
                            await stream.send_all(raw + b"\n")
                            await trio.sleep(0.002)

            nursery.start_soon(client)
            while servers[0].statistics().records < 60:  # noqa: ASYNC110 (statistics: snapshots)
                await trio.sleep(0.01)
            assert await handle.drain(timeout=60) is tf.RunState.COMPLETED
    stats = servers[0].statistics()
    # one connection: the lines read are the first ones, the last maybe cut by the drain
    # (then rejected as a partial record)
    complete = stats.records + stats.rejected - stats.partial
    assert 60 <= complete < len(lines) and stats.partial <= 1
    expected, rejected = reference(lines[:complete])
    rows, letters = read_sqlite(db)
    partial = [text for text in letters if text.startswith("FrameError")]
    assert len(partial) == stats.partial
    assert_matches(rows, [t for t in letters if t not in partial], lines[:complete], expected, rejected)


def doc(i: int, source: str, text: str) -> bytes:
    return json.dumps({"id": i, "source": source, "text": text}).encode()


async def test_a_failing_and_a_hanging_model_leave_the_other_scores_best_effort(tmp_path: Path) -> None:
    # one connection, so the hanging sentence is the last one scored: after its worker is
    # killed, no other sentence is waiting for a fresh worker
    lines = [*ml.documents(40, seed=9),
             doc(1000, "feed-1", "The python server is good. Boom goes the database!"),
             doc(1001, "feed-2", "Great match today. We hang on and win.")]
    expected, rejected = reference(lines, faulty)
    assert expected["feed-1"]["topic_failed"] == 1 and expected["feed-2"]["urgency_failed"] == 1
    db = str(tmp_path / "scores.db")
    async with ml.open_workers():
        assert await run_pipeline(db, lines, connections=1, scorers=FAULTY) is tf.RunState.COMPLETED
    assert_matches(*read_sqlite(db), lines, expected, rejected)


async def test_the_models_block_gives_one_outcome_per_model() -> None:
    # what the accumulator receives: a Value per model that scored, an Error for the
    # failure (ValueError) and for the timeout (TooSlowError; the spinning worker killed)
    sentences = [ml.Sentence(1, "s", 0, "We love fast clean code."),
                 ml.Sentence(2, "s", 0, "Boom, the database is down!"),
                 ml.Sentence(3, "s", 0, "Hang on, the coach is calm.")]
    models = ml.models(FAULTY, timeout=2.0, concurrency=3)
    async with ml.open_workers():
        results = await (tf.from_iterable(sentences) | models).to_list()
    kinds = [{name: (type(o.error).__name__ if isinstance(o, tf.Error) else "Value")
              for name, o in r.items()} for r in results]
    assert kinds == [
        {"sentiment": "Value", "topic": "Value", "urgency": "Value"},
        {"sentiment": "Value", "topic": "ValueError", "urgency": "Value"},
        {"sentiment": "Value", "topic": "Value", "urgency": "TooSlowError"},
    ]
    first = results[0]
    assert first["sentiment"].value == ml.score_sentiment(sentences[0].text)  # computed elsewhere
    assert first["topic"].value > 0.5 and first["sentiment"].value > 0.5


async def test_the_command_line_serves_until_sigint_and_drains(tmp_path: Path) -> None:
    db = tmp_path / "scores.db"
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLE), "--listen", "127.0.0.1:0", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, "the example ended before listening"
                line += chunk
        host, _, port = line.decode().strip().removeprefix("listening on ").rpartition(":")
        lines = ml.documents(50, seed=4)
        expected, rejected = reference(lines)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"".join(raw + b"\n" for raw in lines))
        # the server has no replies: wait until everything was committed, then SIGINT
        with trio.fail_after(60):
            while True:
                try:
                    rows, letters = read_sqlite(str(db))
                except sqlite3.OperationalError:  # a table not created yet
                    rows, letters = [], []
                if sum(r["documents"] for r in rows) + len(letters) == len(lines):
                    break
                await trio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await proc.wait()
        assert code == 0
        assert_matches(*read_sqlite(str(db)), lines, expected, rejected)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(("argv", "word"), [(["--listen", "nohost"], "--listen"),
                                           (["--demo", "-1"], "--demo"), (["--demo", "0"], "--db")])
def test_command_line_arguments_are_checked(argv: list[str], word: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ml.main(argv)
    assert info.value.code == 2 and word in capsys.readouterr().err
