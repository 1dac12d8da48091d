"""pytest fixtures for the API-key provider test service (tests/services/keyservice.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.keyservice import KeyService, start_keyservice


@pytest.fixture
def keyservice() -> Iterator[KeyService]:
    """A fresh provider per test (it starts in milliseconds), stopped afterwards."""
    service = start_keyservice()
    yield service
    service.stop()
