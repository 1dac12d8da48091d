"""`make demo`'s command: real rotations on a throwaway PostgreSQL, each one proven."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_rotates_and_proves_every_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rotator.cli", "demo", "--rounds", "2", "--secrets", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4/4 rotations verified" in result.stdout
    assert result.stdout.count("succeeded") == 4
