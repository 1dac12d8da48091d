"""The rotate task's outcomes for redeliveries, bad run ids, unexpected errors and slot claims.

The task runs in this process (`Task.apply`) on a runtime over a SCRAM PostgreSQL history
database and real roles; the worker-process paths are in test_celery_crash.py.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from rotator import tasks, worker_runtime
from rotator.credential import Credential
from rotator.runtime import Runtime
from rotator.stores import Stage
from tests.conftest import RuntimeFactory, SchedulesWriter
from tests.integration.conftest import PgPlan, PgPlanFactory, stored_rows
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration

SLOT = "2030-01-01T03:00:00Z"


@pytest.fixture
def history_url(pg: PgServer) -> str:
    return pg.url(pg.create_database())


def serve(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `runtime` (and its settings) this process's worker runtime."""
    monkeypatch.setattr(worker_runtime, "_settings", runtime.settings)
    signature = worker_runtime.schedules_signature(runtime.settings)
    cached = worker_runtime._Cached(os.getpid(), signature, runtime)
    monkeypatch.setattr(worker_runtime, "_cached", cached)


def adopted(pg_plan: PgPlanFactory, **options: Any) -> PgPlan:
    plan = pg_plan(**options)
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    return plan


def history_of(plan: PgPlan, run_id: str) -> tuple[Any, ...]:
    run = plan.runtime.history.get_run(run_id)
    assert run is not None
    steps = [(s.step, s.status) for s in plan.runtime.history.steps(run_id)]
    return (run.status, run.version_id, run.error, run.started_at, run.finished_at, steps)


def test_a_redelivered_message_of_a_finished_run_returns_its_recorded_outcome(
    pg_plan: PgPlanFactory,
) -> None:
    """Run A succeeds, then B; A's message comes again (ack lost): nothing runs, nothing changes."""
    plan = adopted(pg_plan)
    run_a, run_b = "a" * 32, "b" * 32
    first = tasks._rotate_once(plan.runtime, run_a, "db-0", "manual", None)
    second = tasks._rotate_once(plan.runtime, run_b, "db-0", "manual", None)
    assert first["outcome"] == second["outcome"] == "succeeded"
    recorded = history_of(plan, run_a)
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == second["version_id"]
    rows = len(stored_rows(plan.runtime.database, "db-0"))

    again = tasks._rotate_once(plan.runtime, run_a, "db-0", "manual", None)

    assert (again["outcome"], again["run_id"]) == ("succeeded", run_a)
    assert again["version_id"] == first["version_id"]
    assert history_of(plan, run_a) == recorded
    after = plan.store.read("db-0", Stage.CURRENT)
    assert after is not None and after.version_id == current.version_id
    assert len(stored_rows(plan.runtime.database, "db-0")) == rows
    assert plan.logs_in("db-0", current.credential.get("password"))


@pytest.mark.parametrize(
    "task_id",
    ["r" * 65, "r" * 70, "short-id", "a" * 31, "run id with spaces " + "x" * 20, "é" * 40],
)
def test_a_task_id_that_cannot_be_a_run_id_is_an_error_outcome(
    pg_plan: PgPlanFactory, monkeypatch: pytest.MonkeyPatch, task_id: str
) -> None:
    """A caller-chosen task id is the run id: one too long for runs.id (String(64)) or AWS's
    ClientRequestToken is refused with a clear text, not a DataError escaping the task."""
    plan = adopted(pg_plan)
    serve(plan.runtime, monkeypatch)
    before = plan.store.read("db-0", Stage.CURRENT)

    result = tasks.rotate.apply(args=["db-0"], task_id=task_id)

    assert result.state == "SUCCESS", result.result
    assert result.result["outcome"] == "error"
    assert "cannot be a run id" in result.result["error"]
    assert "32 to 64" in result.result["error"]
    assert [r.trigger for r in plan.runtime.history.runs("db-0")] == ["adopt"]
    after = plan.store.read("db-0", Stage.CURRENT)
    assert before is not None and after is not None and after.version_id == before.version_id


@pytest.mark.parametrize("task_id", ["a" * 32, "b" * 64, str(uuid.uuid4()), "x.y:z_" + "0" * 26])
def test_run_ids_of_32_to_64_safe_characters_rotate(
    pg_plan: PgPlanFactory, monkeypatch: pytest.MonkeyPatch, task_id: str
) -> None:
    plan = adopted(pg_plan)
    serve(plan.runtime, monkeypatch)
    result = tasks.rotate.apply(args=["db-0"], task_id=task_id)
    assert result.state == "SUCCESS"
    assert (result.result["outcome"], result.result["run_id"]) == ("succeeded", task_id)


def test_an_unexpected_exception_is_a_scrubbed_failed_outcome_and_keeps_a_recorded_claim(
    pg_plan: PgPlanFactory,
    make_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A non-rotator exception (here from a step hook, after the run was recorded) carrying
    the new password and an SQL tail is returned as a `failed` outcome: type name and first
    line, scrubbed; Celery never sees it. The run is recorded, so its slot stays claimed."""
    plan = adopted(pg_plan)
    leaked: list[str] = []

    def explode(point: str) -> None:
        if point == "created":
            pending = plan.store.read("db-0", Stage.PENDING)
            assert pending is not None
            password = str(pending.credential.get("password"))
            leaked.append(password)
            raise RuntimeError(f"broke near {password}\n[SQL: UPDATE x SET y = '{password}']")

    runtime = make_runtime(plan.schedules, step_hook=explode)
    serve(runtime, monkeypatch)
    task_id = uuid.uuid4().hex

    result = tasks.rotate.apply(args=["db-0", "schedule", SLOT], task_id=task_id)

    assert result.state == "SUCCESS", result.result
    outcome = result.result
    assert outcome["outcome"] == "failed"
    assert outcome["error"] == "RuntimeError: broke near [REDACTED]"
    logged = capsys.readouterr()
    assert leaked and leaked[0] not in repr(outcome) + logged.out + logged.err
    assert "rotate.unexpected_error" in logged.out + logged.err
    run = runtime.history.get_run(task_id)
    assert run is not None and run.status == "running"  # resumable, so the claim is kept
    claim = runtime.history.slot_claim("db-0", SLOT)
    assert claim is not None and claim.run_id == task_id


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vault_down_runtime(
    pg: PgServer, write_schedules: SchedulesWriter, make_runtime: RuntimeFactory, tmp_path: Path
) -> Runtime:
    """A secret in a Vault store nobody listens for, with max retries 0."""
    token = tmp_path / "vault-token"
    token.write_text("not-a-real-token\n")
    schedules = write_schedules(
        "version: 1\n"
        "stores:\n"
        "  vault:\n"
        "    type: vault-kv\n"
        f"    url: http://127.0.0.1:{closed_port()}\n"
        "    timeout_seconds: 2\n"
        f"    auth: {{method: token, token_file: {token}}}\n"
        "secrets:\n"
        "  db-v:\n"
        "    rotator: postgres-password\n"
        "    store: vault\n"
        "    every: 30d\n"
        f"    target: {{host: {pg.host}, port: {pg.port}, dbname: {pg.dbname}, username: nobody}}\n"
    )
    return make_runtime(schedules, task_max_retries=0)


def test_a_task_giving_up_before_its_run_was_recorded_gives_its_slot_back(
    pg: PgServer,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """An interrupted run must be settled through the store, which is unreachable: the task
    gives up after claiming the slot but before its own run starts, and releases the claim."""
    runtime = vault_down_runtime(pg, write_schedules, make_runtime, tmp_path)
    runtime.history.start_run("s" * 32, "db-v", "manual", None)  # a crash left it running
    serve(runtime, monkeypatch)
    task_id = uuid.uuid4().hex

    result = tasks.rotate.apply(args=["db-v", "schedule", SLOT], task_id=task_id)

    assert result.state == "SUCCESS", result.result
    assert result.result["outcome"] == "failed"
    assert result.result["error"].startswith("gave up after retries")
    assert runtime.history.get_run(task_id) is None
    assert runtime.history.slot_claim("db-v", SLOT) is None
    assert runtime.history.claim_slot("db-v", SLOT, uuid.uuid4().hex)  # beat may send it again


def test_a_claim_is_released_only_for_its_own_unrecorded_run(
    pg: PgServer, write_schedules: SchedulesWriter, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    runtime = vault_down_runtime(pg, write_schedules, make_runtime, tmp_path)
    history = runtime.history
    assert history.claim_slot("db-v", "slot-1", "a" * 32)
    assert not history.release_slot("db-v", "slot-1", "b" * 32)  # another run's claim
    history.start_run("a" * 32, "db-v", "schedule", "slot-1")
    assert not history.release_slot("db-v", "slot-1", "a" * 32)  # recorded: resumable
    assert history.claim_slot("db-v", "slot-2", "c" * 32)
    assert history.release_slot("db-v", "slot-2", "c" * 32)
    claim = history.slot_claim("db-v", "slot-1")
    assert claim is not None and claim.run_id == "a" * 32
    assert history.slot_claim("db-v", "slot-2") is None
