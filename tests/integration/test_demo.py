"""`make demo`'s command: beat and a worker (`rotator run`) rotate demo roles, each proven."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_rotates_through_beat_and_a_worker_and_proves_every_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "rotator.cli", "demo", "--rounds", "2", "--secrets", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "COLUMNS": "80"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4/4 rotations verified" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "demo-app-" in line]
    assert len(rows) == 4 and all("succeeded" in row for row in rows), result.stdout
    assert all(row.count("yes") == 2 for row in rows), result.stdout
    assert "`rotator run` stopped with exit code 0" in result.stdout
    assert "runs left running" not in result.stdout
    assert "no password in them" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "Traceback" not in output
