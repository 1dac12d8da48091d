"""`rotator.rotate` through real `celery -A rotator` processes, Redis and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rotator.credential import Credential
from rotator.history import Run
from rotator.stores import Stage
from tests.integration.conftest import PgPlan, PgPlanFactory, dump_tables, leaked, value_forms
from tests.services.celery_procs import (
    celery_cli,
    client_app,
    rotator_env,
    running_worker,
    wait_result,
)
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(pg: PgServer) -> str:
    """Workers and the test share one PostgreSQL history database, as hosts do in production."""
    return pg.url(pg.create_database())


def adopted_plan(pg_plan: PgPlanFactory, **options: Any) -> PgPlan:
    """A PgPlan whose db-0 has its starting password adopted as CURRENT."""
    plan = pg_plan(**options)
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    return plan


def call_rotate(env: dict[str, str], cwd: Path, *args: object) -> str:
    """`celery -A rotator call rotator.rotate --args JSON`; returns the task id it prints."""
    done = celery_cli(env, cwd, "call", "rotator.rotate", "--args", json.dumps(list(args)))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def assert_rotated_once(plan: PgPlan, result: dict[str, Any], before_version: str) -> str:
    """CURRENT is the run's new version and logs in; the old password no longer does."""
    current = plan.store.read("db-0", Stage.CURRENT)
    previous = plan.store.read("db-0", Stage.PREVIOUS)
    assert current is not None and previous is not None
    assert current.version_id == result["version_id"] != before_version
    assert previous.version_id == before_version
    password = current.credential.get("password")
    assert plan.logs_in("db-0", password)
    assert not plan.logs_in("db-0", plan.initial[plan.roles["db-0"]])
    return str(password)


def history_values(plan: PgPlan) -> list[bytes]:
    """Every value in the history database outside the (encrypted) embedded store."""
    return [
        form
        for table, _, value in dump_tables(plan.runtime.database)
        if table != "stored_versions"
        for form in value_forms(value)
    ]


def test_celery_call_rotates_through_a_worker_and_redis(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """The real CLI triggers a real worker: the new password logs in, nothing leaks."""
    plan = adopted_plan(pg_plan)
    env = rotator_env(plan.runtime.settings, fresh_redis_url)
    before = plan.store.read("db-0", Stage.CURRENT)
    assert before is not None
    with running_worker(env, tmp_path) as worker, client_app(env) as app:
        task_id = call_rotate(env, tmp_path, "db-0")
        result = wait_result(app, task_id)
    assert result["outcome"] == "succeeded", result
    assert result["run_id"] == task_id and result["secret"] == "db-0"
    password = assert_rotated_once(plan, result, before.version_id)
    run = plan.runtime.history.get_run(task_id)
    assert isinstance(run, Run) and (run.status, run.trigger) == ("succeeded", "manual")
    known = [password, plan.initial[plan.roles["db-0"]]]
    assert leaked([json.dumps(result), worker.log(), *history_values(plan)], known) == []
    assert '"event": "rotate.received"' in worker.log()
    assert '"event": "rotate.finished"' in worker.log()


def test_duplicate_slot_is_a_no_op_and_unknown_secret_an_error(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """A second trigger for one (secret, slot) rotates nothing; an unknown name is not retried."""
    plan = adopted_plan(pg_plan)
    env = rotator_env(plan.runtime.settings, fresh_redis_url)
    slot = "2030-01-01T03:00:00Z"
    with running_worker(env, tmp_path) as worker, client_app(env) as app:
        first = app.send_task("rotator.rotate", args=["db-0", "schedule", slot])
        first_result = wait_result(app, first.id)
        second = app.send_task("rotator.rotate", args=["db-0", "schedule", slot])
        second_result = wait_result(app, second.id)
        unknown = app.send_task("rotator.rotate", args=["no-such-secret"])
        unknown_result = wait_result(app, unknown.id)
        unknown_state = app.AsyncResult(unknown.id).state
    assert first_result["outcome"] == "succeeded", first_result
    assert second_result["outcome"] == "duplicate", second_result
    assert second_result["version_id"] is None
    runs = plan.runtime.history.runs("db-0")
    assert [(r.id, r.trigger, r.slot) for r in runs if r.trigger == "schedule"] == [
        (first.id, "schedule", slot)
    ]
    claim = plan.runtime.history.slot_claim("db-0", slot)
    assert claim is not None and claim.run_id == first.id
    assert unknown_result["outcome"] == "error" and unknown_state == "SUCCESS"
    assert "no-such-secret" in (unknown_result["error"] or "")
    assert "rotate.retrying" not in worker.log()
    assert plan.runtime.history.runs("no-such-secret") == []


def test_default_filesystem_broker_needs_no_redis(pg_plan: PgPlanFactory, tmp_path: Path) -> None:
    """With no broker settings, `worker` + `call` + `inspect ping` work on files under var_dir."""
    plan = adopted_plan(pg_plan)
    env = rotator_env(plan.runtime.settings, None)
    before = plan.store.read("db-0", Stage.CURRENT)
    assert before is not None
    with running_worker(env, tmp_path), client_app(env) as app:
        assert app.conf.broker_url == "filesystem://"
        ping = celery_cli(env, tmp_path, "inspect", "ping", "--timeout", "5")
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        task_id = call_rotate(env, tmp_path, "db-0")
        result = wait_result(app, task_id)
    assert result["outcome"] == "succeeded", result
    assert_rotated_once(plan, result, before.version_id)
    assert (plan.runtime.settings.var_dir / "broker" / "queue").is_dir()


def test_transient_failure_retries_and_finishes_the_same_run(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tcp_proxy: Any, tmp_path: Path
) -> None:
    """The target is unreachable, then back: the task retries with backoff under its run id."""
    proxy = tcp_proxy().start()
    through_proxy = {"port": proxy.port}
    plan = adopted_plan(pg_plan, targets={"db-0": through_proxy, "pg-admin": through_proxy})
    env = rotator_env(
        plan.runtime.settings,
        fresh_redis_url,
        ROTATOR_TASK_MAX_RETRIES="100",
        ROTATOR_TASK_RETRY_BACKOFF_MAX_SECONDS="1",
    )
    before = plan.store.read("db-0", Stage.CURRENT)
    assert before is not None
    proxy.stop()
    with running_worker(env, tmp_path) as worker, client_app(env) as app:
        task_id = app.send_task("rotator.rotate", args=["db-0"]).id
        worker.wait_for_log('"event": "rotate.retrying"')
        proxy.start()
        result = wait_result(app, task_id)
    assert result["outcome"] == "succeeded", result
    assert result["run_id"] == task_id
    assert_rotated_once(plan, result, before.version_id)
    rotations = [r for r in plan.runtime.history.runs("db-0") if r.trigger != "adopt"]
    assert [(r.id, r.status) for r in rotations] == [(task_id, "succeeded")]
