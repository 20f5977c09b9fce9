"""Checked by mypy --strict, not run by pytest: ``tcp_source`` emits ``bytes`` without
``decode`` and the decoder's type with one, so the chain after it is typed."""

from __future__ import annotations

from typing import assert_type

import trioflow as tf
import trioflow.io as tfio


def parse(raw: bytes) -> dict[str, int]:
    return {"id": int(raw)}


def ok(record: tfio.Received[dict[str, int]]) -> str:
    return f"ok {record.value['id']}"


def flows() -> None:
    assert_type(tfio.tcp_source(0), tf.Flow[bytes])
    parsed = tfio.tcp_source(0, host="127.0.0.1", decode=parse, replies=tfio.Replies(ok=ok),
                             framing=tfio.LengthPrefixed(header=2))
    assert_type(parsed, tf.Flow[dict[str, int]])
    assert_type(parsed | tf.map(lambda r: r["id"]), tf.Flow[int])
