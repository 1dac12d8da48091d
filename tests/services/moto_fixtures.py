"""pytest fixtures for the moto test service (loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.moto import MotoServer, start_moto_server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server (AWS Secrets Manager over HTTP) for the whole session."""
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer) -> str:
    """The endpoint URL of the session's moto server."""
    return moto_server.endpoint_url
