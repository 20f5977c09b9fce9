"""Shared fixtures. Tests run in trio mode (pyproject: trio_mode = true)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pg import PgServer
    from redis_server import RedisServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (tests/pg.py), stopped at the end."""
    from pg import PgServer

    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server for the session (tests/redis_server.py), stopped at the end."""
    from redis_server import RedisServer

    server = RedisServer()
    try:
        yield server
    finally:
        server.close()
