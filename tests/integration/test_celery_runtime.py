"""A worker process builds its runtime once and rebuilds it when schedules.yaml changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from rotator import worker_runtime

pytestmark = pytest.mark.integration

PLAN = """\
version: 1
stores: {local: {type: embedded}}
secrets:
"""
SECRET = """\
  {name}:
    rotator: postgres-password
    store: local
    every: 30d
    target: {{host: db.internal, port: 5432, dbname: app, username: {name}}}
"""


def write_plan(path: Path, *names: str) -> None:
    path.write_text(PLAN + "".join(SECRET.format(name=name) for name in names))


@pytest.fixture
def fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process as a new worker child: settings from the environment, no runtime yet."""
    schedules = tmp_path / "schedules.yaml"
    monkeypatch.setenv("ROTATOR_SCHEDULES", str(schedules))
    monkeypatch.setenv("ROTATOR_DATABASE_URL", f"sqlite:///{tmp_path / 'history.db'}")
    monkeypatch.setenv("ROTATOR_ENCRYPTION_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("ROTATOR_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setattr(worker_runtime, "_settings", None)
    monkeypatch.setattr(worker_runtime, "_cached", None)
    yield schedules
    worker_runtime._close()


def test_runtime_is_reused_until_the_schedules_change(fresh_process: Path) -> None:
    write_plan(fresh_process, "alpha")
    first = worker_runtime.get_runtime()
    assert worker_runtime.get_runtime() is first
    assert list(first.plan.secrets) == ["alpha"]

    write_plan(fresh_process, "alpha", "beta")
    stat = fresh_process.stat()
    os.utime(fresh_process, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = worker_runtime.get_runtime()
    assert second is not first
    assert list(second.plan.secrets) == ["alpha", "beta"]  # the edited file is what runs now

    fresh_process.write_text("version: 1\nsecrets: [not, a, mapping]\n")
    stat = fresh_process.stat()
    os.utime(fresh_process, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert worker_runtime.get_runtime() is second  # a broken edit keeps the last good plan
