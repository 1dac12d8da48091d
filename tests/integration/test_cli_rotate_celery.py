"""`rotator rotate` through Celery: a real CLI process, a real worker, Redis, SCRAM PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.stores import Stage
from tests.conftest import unique_role
from tests.integration.conftest import PgPlan, PgPlanFactory, leaked
from tests.services.celery_procs import rotator_env, running_worker, worker_env
from tests.services.redis import start_redis_server

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    """The CLI, the worker and the test share one SQLite history file, as on one host."""
    return f"sqlite:///{tmp_path / 'history.db'}"


def rotator(
    env: Mapping[str, str], cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**worker_env(env), "COLUMNS": "200"},
        cwd=cwd,
    )


def queued_files(plan: PgPlan) -> list[Path]:
    """Messages waiting in the default filesystem broker's queue folder."""
    folder = plan.runtime.settings.var_dir / "broker" / "queue"
    return sorted(folder.glob("*")) if folder.exists() else []


def no_values(outputs: list[str], plan: PgPlan, *more: str) -> None:
    known = [*plan.initial.values(), *more]
    assert leaked(outputs, known) == []


def test_rotate_wait_through_a_worker_prints_steps_and_the_outcome(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """The run is queued by name, a worker rotates it, --wait shows each step; exit 0."""
    plan = pg_plan()
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    env = rotator_env(plan.runtime.settings, fresh_redis_url)
    with running_worker(env, tmp_path, concurrency=1) as worker:
        done = rotator(env, tmp_path, "rotate", "db-0", "--wait", "--timeout", "90")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    for step in ("queued", "create ok", "apply ok", "test ok", "finish ok", "succeeded"):
        assert step in done.stderr, done.stderr
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None
    password = str(current.credential.get("password"))
    assert plan.logs_in("db-0", password)
    assert not plan.logs_in("db-0", plan.initial[plan.roles["db-0"]])
    run_id = done.stderr.split("queued as run ", 1)[1].split()[0]
    run = plan.runtime.history.get_run(run_id)
    assert run is not None and (run.status, run.trigger) == ("succeeded", "manual")
    no_values([done.stdout, done.stderr, worker.log()], plan, password)


def test_all_and_overdue_choose_their_secrets(pg_plan: PgPlanFactory, tmp_path: Path) -> None:
    """plan shows beat's slots; --all queues every secret; --overdue only the due ones."""
    plan = pg_plan({"db-0": unique_role(), "db-1": unique_role()})
    initial = Credential(password=plan.initial[plan.roles["db-0"]])
    plan.runtime.engine.adopt("db-0", initial, rotate=False)  # counts as a rotation
    env = rotator_env(plan.runtime.settings, None)
    adopted = plan.runtime.history.last_success("db-0")
    assert adopted is not None and adopted.finished_at is not None

    shown = rotator(env, tmp_path, "plan", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["secret"]: row for row in json.loads(shown.stdout)}
    assert (rows["db-1"]["reason"], rows["db-1"]["slot"], rows["db-1"]["overdue"]) == (
        "never-rotated",
        "first",
        True,
    )
    assert (rows["db-0"]["reason"], rows["db-0"]["overdue"]) == ("interval", False)
    due = datetime.fromisoformat(rows["db-0"]["next_due"])
    assert due == adopted.finished_at + timedelta(days=30)
    starts = datetime.fromisoformat(rows["db-0"]["starts_at"])
    assert due <= starts < due + timedelta(hours=1)  # inside the default 1h window

    overdue = rotator(env, tmp_path, "rotate", "--overdue", "--json")
    assert overdue.returncode == 0, overdue.stderr
    queued = json.loads(overdue.stdout)
    assert [(q["secret"], q["slot"]) for q in queued] == [("db-1", "first")]
    assert len(queued_files(plan)) == 1

    every = rotator(env, tmp_path, "rotate", "--all", "--json")
    assert every.returncode == 0, every.stderr
    names = sorted(q["secret"] for q in json.loads(every.stdout))
    assert names == ["db-0", "db-1", "pg-admin"]
    assert all(q["slot"] is None for q in json.loads(every.stdout))
    assert len(queued_files(plan)) == 4
    no_values([overdue.stdout, overdue.stderr, every.stdout, every.stderr], plan)


def test_unknown_name_is_exit_2_and_nothing_is_queued(
    pg_plan: PgPlanFactory, tmp_path: Path
) -> None:
    plan = pg_plan()
    env = rotator_env(plan.runtime.settings, None)
    done = rotator(env, tmp_path, "rotate", "db-0", "no-such-secret", "--wait")
    assert done.returncode == 2
    assert "no-such-secret" in done.stderr and "Traceback" not in done.stderr
    assert queued_files(plan) == []
    assert plan.runtime.history.runs("db-0") == []


def test_unreachable_broker_is_one_line_and_exit_1(pg_plan: PgPlanFactory, tmp_path: Path) -> None:
    plan = pg_plan()
    broker = f"redis://:broker-pass-42@127.0.0.1:{free_port()}/0"
    env = rotator_env(plan.runtime.settings, broker)
    done = rotator(env, tmp_path, "rotate", "db-0", "--wait")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: broker"), done.stderr
    assert "ROTATOR_BROKER_URL" in lines[0]
    assert "broker-pass-42" not in done.stderr + done.stdout


def test_wait_without_a_worker_says_none_picked_the_run_up(
    pg_plan: PgPlanFactory, tmp_path: Path
) -> None:
    """Default filesystem broker, no worker: --wait names the way out and exits 1 at --timeout."""
    plan = pg_plan()
    env = rotator_env(plan.runtime.settings, None)
    done = rotator(env, tmp_path, "rotate", "db-0", "--wait", "--timeout", "8")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no worker has picked the run up yet" in done.stderr
    assert "rotator run" in done.stderr and "Traceback" not in done.stderr
    assert "no outcome within 8 s" in done.stdout
    assert len(queued_files(plan)) == 1


def test_losing_the_result_backend_during_wait_is_one_line_not_a_traceback(
    pg_plan: PgPlanFactory, tmp_path: Path
) -> None:
    """The backend dies after the run was queued: --wait follows the history instead."""
    plan = pg_plan()
    backend = start_redis_server()
    env = rotator_env(plan.runtime.settings, None, ROTATOR_RESULT_BACKEND=backend.url(1))
    process = subprocess.Popen(
        [sys.executable, "-m", "rotator.cli", "rotate", "db-0", "--wait", "--timeout", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**worker_env(env), "COLUMNS": "200"},
        cwd=tmp_path,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # "<secret> <id>: queued as run <id>"
        assert "queued as run" in first, first
    finally:
        backend.stop()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr + stdout
    notes = [line for line in stderr.splitlines() if "result backend" in line]
    assert len(notes) == 1 and "history database" in notes[0], stderr
    assert "no outcome within 8 s" in stdout
    assert len(queued_files(plan)) == 1


def test_overdue_inline_claims_the_slot_so_beat_cannot_rotate_it_again(
    pg_plan: PgPlanFactory, tmp_path: Path
) -> None:
    """Invariant 3: the slot `--overdue --inline` rotated is `duplicate` for a worker later."""
    from rotator import tasks

    plan = pg_plan({"db-0": unique_role(), "db-1": unique_role()})
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    env = rotator_env(plan.runtime.settings, None)
    done = rotator(env, tmp_path, "rotate", "--overdue", "--inline", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert (result["secret"], result["outcome"]) == ("db-1", "succeeded")
    claim = plan.runtime.history.slot_claim("db-1", "first")
    assert claim is not None and claim.run_id == result["run_id"]
    run = plan.runtime.history.get_run(result["run_id"])
    assert run is not None and run.slot == "first"

    later = tasks._rotate_once(plan.runtime, "b" * 36, "db-1", "schedule", "first")
    assert later["outcome"] == "duplicate"
    assert [r.id for r in plan.runtime.history.runs("db-1") if r.status == "succeeded"] == [
        result["run_id"]
    ]
    no_values([done.stdout, done.stderr], plan)
