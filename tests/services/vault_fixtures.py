"""pytest fixtures for the vault test service (loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.vault import VaultService, start_vault


@pytest.fixture(scope="session")
def vault() -> Iterator[VaultService]:
    """One Vault for the session: real when configured or Docker answers, else the emulator."""
    service = start_vault()
    yield service
    service.stop()


@pytest.fixture
def kv_mount(vault: VaultService) -> Iterator[str]:
    """A fresh KV v2 mount for one test, disabled afterwards."""
    mount = vault.enable_kv2()
    yield mount
    vault.client().sys.disable_secrets_engine(mount)
