"""pytest fixtures for the moto test service (loaded by tests/conftest.py)."""

from __future__ import annotations
