"""pytest fixtures for the redis test service (loaded by tests/conftest.py)."""

from __future__ import annotations
