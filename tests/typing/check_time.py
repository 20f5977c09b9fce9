"""Checked by mypy --strict, not run by pytest: the operators over time keep the item type
(rate control) or give ``WindowResult | Late`` records (windows)."""

from __future__ import annotations

from typing import Any, assert_type

import trioflow as tf


def add(total: int, reading: tuple[float, str, int]) -> int:
    return total + reading[2]


readings: tf.Flow[tuple[float, str, int]] = tf.from_iterable([(1.0, "a", 3)])

windowed = readings | tf.window(tf.Tumbling(10), tf.Fold(0, add), key=lambda r: r[1],
                                time=tf.EventTime(lambda r: r[0], max_delay=5))
assert_type(windowed, tf.Flow[tf.WindowResult[Any, Any] | tf.Late[tuple[float, str, int]]])

paced = readings | tf.throttle(10, per=1, burst=5) | tf.debounce(0.5) | tf.sample(1) | tf.delay(2)
assert_type(paced, tf.Flow[tuple[float, str, int]])
