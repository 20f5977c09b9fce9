"""Checked by mypy --strict, not run by pytest: ``redis_source`` emits ``StreamEntry`` (or
``RawStreamEntry`` with ``decode=False``), and ``write_redis_stream`` keeps its batches' type
(mappings of fields, or stream entries)."""

from __future__ import annotations

from typing import assert_type

import trioflow as tf
import trioflow.io as tfio


def flows() -> None:
    entries = tfio.redis_source("redis://localhost", "s", "g", "c")
    assert_type(entries, tf.Flow[tfio.StreamEntry])
    values = entries | tf.map(lambda e: float(e.fields["value"]))
    assert_type(values, tf.Flow[float])
    copied = entries | tf.batch(100) | tfio.write_redis_stream("redis://localhost", "copy")
    assert_type(copied, tf.Flow[list[tfio.StreamEntry]])
    rows = tf.from_iterable([{"id": 1}]) | tf.batch(10) | tfio.write_redis_stream("redis://localhost", "s")
    assert_type(rows, tf.Flow[list[dict[str, int]]])
    raw = tfio.redis_source("redis://localhost", "s", "g", "c", decode=False)
    assert_type(raw, tf.Flow[tfio.RawStreamEntry])
    blobs = raw | tf.map(lambda e: e.fields[b"blob"])
    assert_type(blobs, tf.Flow[bytes])
    raw_copy = raw | tf.batch(100) | tfio.write_redis_stream("redis://localhost", "copy")
    assert_type(raw_copy, tf.Flow[list[tfio.RawStreamEntry]])
    binary = tf.from_iterable([{b"k": b"\xff"}]) | tf.batch(10) | tfio.write_redis_stream("redis://x", "s")
    assert_type(binary, tf.Flow[list[dict[bytes, bytes]]])
    decoded = tfio.redis_source("redis://localhost", "s", "g", "c", decode=True)
    assert_type(decoded, tf.Flow[tfio.StreamEntry])
