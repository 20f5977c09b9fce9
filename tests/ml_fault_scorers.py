"""Scorers with injected faults for tests/test_ml_pipeline.py. Worker processes import them
by name (a function sent to a worker is pickled by reference), so this module stays light:
it imports only the example (examples/ is put on sys.path by the test, and worker processes
inherit the parent's sys.path)."""

from __future__ import annotations

import ml_pipeline as ml

#: a sentence with this word makes ``topic_or_raise`` fail
FAIL_WORD = "boom"
#: a sentence with this word makes ``urgency_or_hang`` spin until the block's timeout kills it
HANG_WORD = "hang"


def topic_or_raise(text: str) -> float:
    if FAIL_WORD in ml.words(text):
        raise ValueError(f"the topic model cannot score {text!r}")
    return ml.score_topic(text)


def urgency_or_hang(text: str) -> float:
    if HANG_WORD in ml.words(text):
        while True:  # CPU-bound and never returns: only killing the worker stops it
            pass
    return ml.score_urgency(text)
