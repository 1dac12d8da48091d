"""rotator: secret-rotation orchestration (the `rotator` command lives in rotator.cli)."""

from __future__ import annotations

__version__ = "0.1.0"
