"""`rotator run`: worker and beat in one process on the default filesystem broker, no Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from rotator.credential import Credential
from rotator.history import Run
from rotator.stores import Stage
from tests.integration.conftest import PgPlan, PgPlanFactory, leaked
from tests.services.celery_procs import rotator_env, worker_env

pytestmark = pytest.mark.integration

#: How long a warm shutdown may take: a rotation under way finishes first.
STOP_BOUND_SECONDS = 60


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


def runs(plan: PgPlan, secret: str) -> list[Run]:
    with plan.runtime.database.session() as session:
        return list(session.scalars(select(Run).where(Run.secret == secret)))


def wait_for(
    condition: object, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        time.sleep(0.2)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_rotates_due_secrets_and_stops_cleanly(
    pg_plan: PgPlanFactory, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Beat sends the due slots, the worker rotates them; a stop signal ends it with exit 0."""
    plan = pg_plan(defaults={"window": "1s"})
    plan.schedules.write_text(plan.schedules.read_text().replace('"30d"', '"3s"'))
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    env = rotator_env(plan.runtime.settings, None, ROTATOR_LOG_FORMAT="json")
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "run", "--max-interval", "0.5", "-c", "2"],
            cwd=tmp_path,
            env=worker_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        succeeded = lambda: sum(r.status == "succeeded" for r in runs(plan, "db-0")) >= 2  # noqa: E731
        wait_for(succeeded, process, log, timeout=90)
        current = plan.store.read("db-0", Stage.CURRENT)
        assert current is not None and plan.logs_in("db-0", current.credential.password or "")
        assert not plan.logs_in("db-0", plan.initial[plan.roles["db-0"]])
        assert {r.trigger for r in runs(plan, "db-0") if r.status != "adopted"} == {"schedule"}
        process.send_signal(stop_signal)
        code = process.wait(timeout=STOP_BOUND_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the pool children and beat too
            process.wait()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert "Warm shutdown" in output
    # ROTATOR_LOG_FORMAT=json: every structlog line (beat's included) is a JSON object as is,
    # not wrapped in Celery's "[... WARNING/Beat]" redirection.
    events = [line for line in output.splitlines() if '"event"' in line]
    assert any("beat." in line for line in events), output[-4000:]
    for line in events:
        assert isinstance(json.loads(line), dict), line
    for secret in ("db-0", "pg-admin"):
        assert [r.id for r in runs(plan, secret) if r.status == "running"] == []
    final = plan.store.read("db-0", Stage.CURRENT)
    assert final is not None and plan.logs_in("db-0", final.credential.password or "")
    assert (
        leaked([output], [plan.initial[plan.roles["db-0"]], final.credential.password or ""]) == []
    )


def test_run_exits_1_after_a_cold_shutdown(pg_plan: PgPlanFactory, tmp_path: Path) -> None:
    """Ctrl-C twice: the second makes the warm shutdown cold, and rotations under way are cut."""
    plan = pg_plan()
    env = rotator_env(plan.runtime.settings, None, ROTATOR_LOG_FORMAT="json")
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "run", "-c", "1"],
            cwd=tmp_path,
            env=worker_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: " ready." in log.read_text(errors="replace"), process, log, timeout=60)
        process.send_signal(signal.SIGINT)
        wait_for(lambda: "again will" in log.read_text(errors="replace"), process, log, 30)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=STOP_BOUND_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log.read_text(errors="replace")
    assert "terminate all running tasks" in output, output[-4000:]  # Celery went cold
    assert code == 1, output[-4000:]
