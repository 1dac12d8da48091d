"""pytest fixtures for the vault test service (loaded by tests/conftest.py)."""

from __future__ import annotations
