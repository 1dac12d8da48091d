"""pytest fixtures for the API-key provider test service (tests/services/keyservice.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.keyservice import KeyService, self_signed_cert, start_keyservice


@pytest.fixture
def keyservice() -> Iterator[KeyService]:
    """A fresh provider per test (it starts in milliseconds), stopped afterwards."""
    service = start_keyservice()
    yield service
    service.stop()


@pytest.fixture
def tls_keyservice(tmp_path: Path) -> Iterator[KeyService]:
    """A provider speaking https with a self-signed certificate (its file: `service.tls[0]`)."""
    service = start_keyservice(tls=self_signed_cert(tmp_path))
    yield service
    service.stop()
