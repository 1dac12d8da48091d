"""pytest fixtures for the redis test service (loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.redis import RedisServer, start_redis_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole session (a throwaway redis-server unless one is given)."""
    server = start_redis_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis's database 0; tests that need isolation use `fresh_redis_url`."""
    return redis_server.url(0)


@pytest.fixture
def fresh_redis_url(redis_server: RedisServer) -> str:
    """An emptied Redis database of its own for one test."""
    return redis_server.fresh_db()
