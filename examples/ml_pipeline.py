"""The ML pipeline of the original design, runnable: documents arrive on a socket, are split
into sentences, scored by three models at once in worker processes, accumulated per source,
and the running totals are upserted into a database.

    python examples/ml_pipeline.py                      # a demo of 200 documents (nox -s examples)
    python examples/ml_pipeline.py --demo 5000 --db scores.db
    python examples/ml_pipeline.py --listen 127.0.0.1:9000 --db scores.db   # a server, until Ctrl-C
    python examples/ml_pipeline.py --listen 127.0.0.1:0 --db postgresql://user@host/db

The stages (docs/ml-pipeline.md explains each one, its lifecycle and its failure policy):

    tcp_source (NDJSON documents; a bad one goes to the dead_letters table)
    -> flat_map(split)                 the splitter: one Sentence per sentence
    -> fork_join(sentence, models)     models: parallel(sentiment, topic, urgency) on worker
                                       processes, BestEffort, a timeout per sentence
    -> scan(fold, key=source)          the accumulator: running Totals per source, starting
                                       from the totals already in the table (a restart goes on)
    -> batch -> latest per source -> write_sqlite / write_postgres (upsert on source)

A document is one JSON line ``{"id": <int>, "source": <str>, "text": <str>}``. The models
are small bag-of-words logistic regressions in pure Python, trained in each worker process
when it starts, on a corpus generated from a fixed seed (so every worker process, and a
test's reference computation, has the same weights). Once the workers are warm and the socket is
bound, the first line on stdout is ``listening on HOST:PORT``. SIGINT/SIGTERM drain (stop
accepting, score and commit what was read, exit 0); a second signal aborts (exit 130).

``--demo N`` starts a load generator in the same process: N documents (about 3% of them
malformed) over a few connections; once they are all read, the run is drained and a summary
and a query of the table are printed. Without arguments the example runs ``--demo 200`` on a
temporary SQLite file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import trio
import trio_parallel

# the socket example's decoding and dead-letter table (connection, line, error, raw)
from socket_to_db import json_object, open_dead_letters

import trioflow as tf
import trioflow.io as tfio

# -- documents and the splitter ----------------------------------------------------------------


class Document(NamedTuple):
    id: int
    source: str
    text: str


class Sentence(NamedTuple):
    doc: int
    source: str
    position: int  # in its document, from 0
    text: str


_SENTENCE = re.compile(r"[^.!?]*[.!?]|[^.!?]+$")


def sentences_of(text: str) -> list[str]:
    """The sentences of ``text``: up to and including each ``.``, ``!`` or ``?`` (and a
    trailing one without), stripped, empty ones left out."""
    return [s for s in (m.group().strip() for m in _SENTENCE.finditer(text)) if s.strip(".!? ")]


def parse(raw: bytes) -> Document:
    """A line to a ``Document``; a ``ValueError`` with a one-line reason rejects it (to the
    dead letters), so every document is either scored or dead-lettered."""
    obj = json_object(raw)
    doc, source, text = obj.get("id"), obj.get("source"), obj.get("text")
    if type(doc) is not int:
        raise ValueError("id must be an integer")
    if not isinstance(source, str) or not source:
        raise ValueError("source must be a non-empty string")
    if not isinstance(text, str) or not sentences_of(text):
        raise ValueError("text must be a string with at least one sentence")
    return Document(doc, source, text)


def split(doc: Document) -> Iterator[Sentence]:
    """The splitter (``flat_map``): one ``Sentence`` per sentence, in order."""
    for position, text in enumerate(sentences_of(doc.text)):
        yield Sentence(doc.id, doc.source, position, text)


# -- the models: bag-of-words logistic regressions, trained at start -----------------------------

FILLER = ("the", "a", "this", "that", "we", "they", "it", "is", "was", "our", "team", "report",
          "today", "about", "new", "with", "and", "of", "system", "people", "week", "update")
#: per model: the words of the positive class and of the negative class
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sentiment": (("great", "good", "love", "excellent", "happy", "win", "fast", "clean"),
                  ("bad", "awful", "hate", "broken", "sad", "lose", "slow", "dirty")),
    "topic": (("server", "code", "cpu", "network", "database", "deploy", "python", "bug"),
              ("match", "goal", "coach", "season", "league", "score", "player", "ball")),
    "urgency": (("now", "urgent", "asap", "immediately", "outage", "critical", "alert", "down"),
                ("later", "someday", "maybe", "eventually", "relaxed", "whenever", "fine", "calm")),
}
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class LogisticModel:
    """P(positive | sentence) = sigmoid(bias + sum of the weights of its words)."""

    weights: Mapping[str, float]
    bias: float

    def predict(self, text: str) -> float:
        z = self.bias + sum(self.weights.get(w, 0.0) for w in words(text))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def generated_corpus(task: str, n: int, seed: int) -> list[tuple[list[str], int]]:
    """``n`` labelled bags of words: filler and two to four words of the label's class, with
    a word of the other class now and then (noise)."""
    rng = random.Random(f"{task}/{seed}")
    pos, neg = TASKS[task]
    corpus = []
    for _ in range(n):
        label = rng.randrange(2)
        mine, other = (pos, neg) if label else (neg, pos)
        bag = rng.choices(FILLER, k=rng.randint(3, 8)) + rng.choices(mine, k=rng.randint(2, 4))
        if rng.random() < 0.2:
            bag.append(rng.choice(other))
        corpus.append((bag, label))
    return corpus


def train(task: str, *, n: int = 300, epochs: int = 12, rate: float = 0.3, seed: int = 11) -> LogisticModel:
    """Stochastic gradient descent on the log loss, over a generated corpus (deterministic)."""
    weights: dict[str, float] = {}
    bias = 0.0
    corpus = generated_corpus(task, n, seed)
    for _ in range(epochs):
        for bag, label in corpus:
            z = bias + sum(weights.get(w, 0.0) for w in bag)
            step = rate * (label - 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))
            bias += step
            for w in bag:
                weights[w] = weights.get(w, 0.0) + step
    return LogisticModel(weights, bias)


@functools.cache
def model(task: str) -> LogisticModel:
    """The trained model of ``task``, trained once per process (the first call)."""
    return train(task)


# The scorers: plain module-level functions of the sentence's text, so that they can be sent
# to a worker process (pickled by reference) and called there.


def score_sentiment(text: str) -> float:
    return model("sentiment").predict(text)


def score_topic(text: str) -> float:
    """P(technology rather than sport)."""
    return model("topic").predict(text)


def score_urgency(text: str) -> float:
    return model("urgency").predict(text)


SCORERS: dict[str, Callable[[str], float]] = {
    "sentiment": score_sentiment, "topic": score_topic, "urgency": score_urgency,
}


def warm_up() -> None:
    """Run in every worker process when it starts (trio-parallel's ``init``): train every
    model there, before the worker takes its first sentence."""
    for task in TASKS:
        model(task)


@contextlib.asynccontextmanager
async def open_workers() -> AsyncIterator[None]:
    """The worker processes of this server, for as long as the block runs: a trio-parallel
    cache scope whose workers train the models when they start, and as many of them started
    at once as trio-parallel's limiter allows (one per CPU; calls run together land on
    distinct workers), so that the first documents do not wait for them. Fresh workers
    also see the current ``sys.path``. On exit the workers are shut down."""
    async with trio_parallel.cache_scope(init=warm_up):
        workers = int(trio_parallel.current_default_worker_limiter().total_tokens)
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(trio_parallel.run_sync, os.getpid)
        yield


def on_text(scorer: Callable[[str], float], sentence: Sentence) -> float:
    """``scorer`` on the sentence's text: a branch of the parallel block, as
    ``functools.partial(on_text, scorer)``, sent to a worker process by reference."""
    return scorer(sentence.text)


# -- the accumulator: running totals per source ------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """What the accumulator keeps per source (immutable: ``accumulate`` returns a new one).
    Per model, in the order of ``SCORERS``: the sum of its scores, how many sentences it
    scored, how many it failed on (an error or the timeout)."""

    documents: int = 0
    sentences: int = 0
    sums: tuple[float, ...] = ()
    scored: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()


def accumulate(acc: Totals, item: dict[str, Any]) -> Totals:
    """The keyed scan's fold: one scored sentence into its source's totals."""
    sentence: Sentence = item["sentence"]
    outcomes: dict[str, tf.Outcome[float]] = item["scores"]
    n = len(outcomes)
    sums = list(acc.sums or [0.0] * n)
    scored = list(acc.scored or [0] * n)
    failed = list(acc.failed or [0] * n)
    for i, result in enumerate(outcomes.values()):
        if isinstance(result, tf.Value):
            sums[i] += result.value
            scored[i] += 1
        else:  # an Error: the model raised, or the block's timeout stopped it
            failed[i] += 1
    first = sentence.position == 0  # a document is counted with its first sentence
    return Totals(acc.documents + first, acc.sentences + 1, tuple(sums), tuple(scored), tuple(failed))


def resuming(restored: Mapping[str, Totals]) -> Callable[[Totals | None, dict[str, Any]], Totals]:
    """The fold of the keyed scan, which starts every source from ``None``: a source's first
    sentence in this run starts from its totals restored from the table (``load_totals``),
    so that a restarted server goes on counting instead of overwriting the rows with
    totals started again from zero."""
    def fold(acc: Totals | None, item: dict[str, Any]) -> Totals:
        if acc is None:
            acc = restored.get(by_source(item), Totals())
        return accumulate(acc, item)

    return fold


def by_source(item: dict[str, Any]) -> str:
    source: str = item["sentence"].source
    return source


def columns(names: list[str]) -> dict[str, str]:
    """The ``totals`` table: one row per source (DOUBLE PRECISION: PostgreSQL's REAL is 32-bit)."""
    cols = {"source": "TEXT NOT NULL", "documents": "INTEGER NOT NULL", "sentences": "INTEGER NOT NULL"}
    for name in names:
        cols |= {f"{name}_sum": "DOUBLE PRECISION NOT NULL", f"{name}_n": "INTEGER NOT NULL",
                 f"{name}_failed": "INTEGER NOT NULL"}
    return cols


def load_totals(db: str, names: list[str]) -> dict[str, Totals]:
    """The totals committed by earlier runs (none if the table does not exist yet): the
    accumulator's state, restored at start. Blocking: call it in a thread."""
    cols = ["source", "documents", "sentences",
            *(f"{name}_{what}" for name in names for what in ("sum", "n", "failed"))]
    query = f"SELECT {', '.join(cols)} FROM totals"
    if is_postgres(db):
        import psycopg

        with psycopg.connect(db) as pg:
            found = pg.execute("SELECT to_regclass('totals')").fetchone()
            rows = pg.execute(query).fetchall() if found and found[0] else []
    else:
        import sqlite3

        with contextlib.closing(sqlite3.connect(db)) as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals'")
            rows = conn.execute(query).fetchall() if exists.fetchone() else []
    return {row[0]: Totals(row[1], row[2], tuple(row[3::3]), tuple(row[4::3]), tuple(row[5::3]))
            for row in rows}


def latest_rows(batch: list[tuple[str, Totals]]) -> list[tuple[Any, ...]]:
    """A batch of ``(source, totals)`` to rows: only the latest totals of each source (the
    earlier ones are already outdated; an upsert of one key twice in a statement is refused
    by PostgreSQL)."""
    latest = dict(batch)
    return [(source, t.documents, t.sentences, *(v for triple in zip(t.sums, t.scored, t.failed, strict=True)
                                                 for v in triple))
            for source, t in latest.items()]


# -- the pipeline ------------------------------------------------------------------------------

def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def same(sentence: Sentence) -> Sentence:
    return sentence


def models(scorers: Mapping[str, Callable[[str], float]], timeout: float, concurrency: int
           ) -> tf.Stage[Sentence, dict[str, Any]]:
    """The parallel block: every scorer on the sentence at once, each in a worker process
    (``backend=Processes()``: trio-parallel's workers, one per CPU); ``BestEffort``: one
    ``Value`` or ``Error`` per model, whatever the others do; a model still running after
    ``timeout`` seconds is cancelled, which kills its worker process (a runaway model really
    stops; trio-parallel starts a fresh worker for the next call), and counts as failed
    (TooSlowError)."""
    return tf.parallel(
        **{name: functools.partial(on_text, fn) for name, fn in scorers.items()},
        policy=tf.BestEffort(), timeout=timeout, backend=tf.Processes(),
        concurrency=concurrency, name="models",
    )


def build(
    db: str,
    letters: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    scorers: Mapping[str, Callable[[str], float]] = SCORERS,
    timeout: float = 5.0,
    concurrency: int = 8,
    max_line: int = 65536,
    on_listening: Callable[[tfio.TcpServer], object] | None = None,
    restored: Mapping[str, Totals] | None = None,
) -> tf.Flow[list[tuple[Any, ...]]]:
    """The pipeline: socket -> splitter -> parallel models -> keyed accumulator -> database.
    ``restored``: the totals the accumulator starts from (``load_totals``)."""
    table = columns(list(scorers))
    writer: tf.Stage[list[tuple[Any, ...]], list[tuple[Any, ...]]]
    if is_postgres(db):
        writer = tfio.write_postgres(db, "totals", columns=table, key="source", create=True)
    else:
        writer = tfio.write_sqlite(db, "totals", columns=table, key="source", create=True)
    return (
        tfio.tcp_source(port, host=host, framing=tfio.Lines(max_frame=max_line), decode=parse,
                        rejects=tf.DeadLetter(letters), on_listening=on_listening, name="documents")
        | tf.flat_map(split, name="splitter")
        | tf.fork_join(sentence=tf.map(same), scores=models(scorers, timeout, concurrency), name="score")
        | tf.scan(resuming(restored or {}), None, key=by_source, name="accumulator")
        | tf.batch(512, timeout=0.05, name="batch")
        | tf.map(latest_rows, name="latest")
        | writer
    )


async def serve(db: str, host: str, port: int, *, demo: int = 0, connections: int = 4,
                scorers: Mapping[str, Callable[[str], float]] = SCORERS, model_timeout: float = 5.0,
                concurrency: int = 8, seed: int = 3) -> tf.RunState:
    """Restore the totals, start the workers, run the pipeline until a signal (or, with
    ``demo``, until a load generator's ``demo`` documents went through, then drain)."""
    restored = await trio.to_thread.run_sync(load_totals, db, list(scorers))
    servers: list[tfio.TcpServer] = []

    def listening(server: tfio.TcpServer) -> None:
        servers.append(server)
        print(f"listening on {host}:{server.port}", flush=True)

    async with open_workers(), open_dead_letters(db) as letters:
        flow = build(db, letters, host=host, port=port, scorers=scorers, timeout=model_timeout,
                     concurrency=concurrency, on_listening=listening, restored=restored)
        if not demo:
            handle = await tf.run_until_signal(flow)
            return handle.state
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(tf.run_until_signal, flow)
            started = trio.current_time()
            await send_documents(host, servers[0], documents(demo, seed), connections)
            await handle.drain(timeout=60)
            elapsed = trio.current_time() - started
    if handle.state is tf.RunState.COMPLETED:
        report(db, demo, elapsed)
    return handle.state


# -- the demo's load generator -----------------------------------------------------------------

BAD_LINES = [b'{"id": 1, "source": ', b"[1, 2]", b'{"id": "x", "source": "s", "text": "Hi."}',
             b'{"id": 5, "source": "feed-0", "text": "  "}', b"\xff\xfe"]


def documents(n: int, seed: int = 3, *, sources: int = 4) -> list[bytes]:
    """``n`` NDJSON lines, about 3% malformed: documents of one to five sentences over the
    three tasks' words, from ``sources`` sources."""
    rng = random.Random(seed)
    vocab = [w for pos, neg in TASKS.values() for w in pos + neg]
    lines = []
    for i in range(n):
        if rng.random() < 0.03:
            lines.append(rng.choice(BAD_LINES))
            continue
        sentences = (rng.choices(FILLER, k=rng.randint(2, 6)) + rng.choices(vocab, k=rng.randint(1, 3))
                     for _ in range(rng.randint(1, 5)))
        text = " ".join(" ".join(ws).capitalize() + rng.choice(".!?") for ws in sentences)
        lines.append(json.dumps({"id": i, "source": f"feed-{i % sources}", "text": text}).encode())
    return lines


async def send_documents(host: str, server: tfio.TcpServer, lines: list[bytes], connections: int) -> None:
    """Send ``lines`` over ``connections`` connections (line ``i`` on connection
    ``i % connections``) and return once the server has read them all (every connection
    closed), so that a drain then loses none."""
    before = server.statistics().connections

    async def client(c: int) -> None:
        stream = await trio.open_tcp_stream(host, server.port)
        async with stream:
            mine = lines[c::connections]
            for k in range(0, len(mine), 200):
                await stream.send_all(b"".join(line + b"\n" for line in mine[k:k + 200]))

    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(client, c)
    # the statistics are snapshots, with no event to wait on: poll them
    while (stats := server.statistics()).connections < before + connections or stats.open:  # noqa: ASYNC110
        await trio.sleep(0.01)


def report(db: str, n: int, elapsed: float) -> None:
    print(f"done: {n:,} documents in {elapsed:.2f} s ({n / max(elapsed, 1e-9):,.0f} documents/s)")
    if is_postgres(db):
        return
    import sqlite3

    with sqlite3.connect(db) as conn:
        means = ", ".join(f"round({m}_sum / max({m}_n, 1), 3) AS {m}" for m in SCORERS)
        query = f"SELECT source, documents, sentences, {means} FROM totals ORDER BY source"
        print(query)
        for row in conn.execute(query):
            print("  ", row)
        (scored,) = conn.execute("SELECT coalesce(sum(documents), 0) FROM totals").fetchone()
        (letters,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        sums = ", ".join(f"coalesce(sum({m}_failed), 0)" for m in SCORERS)
        failed = conn.execute(f"SELECT {sums} FROM totals").fetchone()
    print(f"documents scored: {scored:,}, dead-lettered: {letters:,}; model failures "
          + ", ".join(f"{m} {f}" for m, f in zip(SCORERS, failed, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--db", help="a SQLite file path or a postgresql:// URL "
                        "(default with --demo: a temporary SQLite file)")
    parser.add_argument("--demo", type=int, metavar="N",
                        help="send N documents from a built-in load generator, drain, summarise "
                        "(the default when neither --demo nor --db is given: --demo 200)")
    parser.add_argument("--connections", type=int, default=4, help="the demo's client connections")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds the three models get per sentence (then: a failure)")
    parser.add_argument("--concurrency", type=int, default=8, help="sentences scored at once")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    demo = args.demo if args.demo is not None else (0 if args.db else 200)
    if demo < 0 or args.connections < 1 or args.concurrency < 1 or not args.timeout > 0:
        parser.error("--demo must be >= 0, --connections and --concurrency >= 1, --timeout > 0")
    if not demo and not args.db:
        parser.error("--db is needed when serving (without --demo)")
    with tempfile.TemporaryDirectory(prefix="trioflow-ml-") as tmp:
        db = args.db or str(Path(tmp) / "scores.db")
        state = trio.run(functools.partial(
            serve, db, host, int(port), demo=demo, connections=args.connections,
            model_timeout=args.timeout, concurrency=args.concurrency))
    return 0 if state is tf.RunState.COMPLETED else 130


if __name__ == "__main__":
    sys.exit(main())
