"""Module-level functions for tests/test_backends.py: worker processes import them by name
(a function sent to a worker process is pickled by reference), so this module stays light."""

from __future__ import annotations

import os
import threading
import time


def poly(x: int) -> int:
    return 3 * x * x - 7 * x + 1


def fail_on_7(x: int) -> int:
    if x % 10 == 7:
        raise ValueError(f"bad item {x}")
    return x * 2


def jitter(x: int) -> int:
    """Later items tend to finish first: exposes a lost order."""
    time.sleep(0.002 * ((7 - x) % 4))
    return x


def sleep_long(x: int) -> int:
    """Far longer than the test timeout: a run that waited for it would fail the test."""
    time.sleep(3600)
    return x


def sleep_short(x: int) -> int:
    time.sleep(0.002)
    return x


def die_on_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


class Unpicklable:
    """A callable that cannot travel to a worker process (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        return x


class Unpicklable2Result:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def unpicklable_result(x: int) -> object:
    return Unpicklable2Result()


def sleep_medium(x: int) -> int:
    """Long enough to be cancelled, short enough not to hold a shared Dask worker long."""
    time.sleep(1.5)
    return x


def is_odd(x: int) -> bool:
    return x % 2 == 1


def repeat_gen(x: int):  # type: ignore[no-untyped-def]
    """A generator function: materialised in the worker before it travels back."""
    for _ in range(x % 3):
        yield x


def noop(x: int) -> None:
    return None


def below_12(x: int) -> bool:
    return x < 12


def add_or_fail_on_5(acc: int, x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return acc + x


def write_pid_then_hang(path: str) -> int:
    """Write this worker's pid to ``path``, then never return (until killed)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)
    return 0


def length(text: str) -> int:
    return len(text)
