"""`celery -A rotator call rotator.rotate` rotates through a real worker, Redis and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from rotator.celery import celery_config
from rotator.config import Settings
from rotator.credential import Credential
from rotator.history import Run
from rotator.stores import Stage
from tests.integration.conftest import PgPlan, PgPlanFactory, dump_tables, leaked, value_forms
from tests.services.celery_procs import celery_cli, running_worker
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(pg: PgServer) -> str:
    """Workers and the test share one PostgreSQL history database, as hosts do in production."""
    return pg.url(pg.create_database())


def worker_settings(plan: PgPlan, broker: str, **extra: str) -> dict[str, str]:
    """The ROTATOR_* environment of a worker running `plan` against `broker`."""
    settings = plan.runtime.settings
    assert settings.encryption_key is not None
    env = {
        "ROTATOR_SCHEDULES": str(plan.schedules),
        "ROTATOR_DATABASE_URL": settings.resolved_database_url,
        "ROTATOR_ENCRYPTION_KEY": settings.encryption_key.get_secret_value(),
        "ROTATOR_VAR_DIR": str(settings.var_dir),
        "ROTATOR_BROKER_URL": broker,
        "ROTATOR_RESULT_BACKEND": broker,
    }
    env.update(extra)
    return env


@pytest.fixture
def results_app() -> Iterator[Any]:
    """Reads task results the way a client would: an app configured from the same settings."""
    made: list[Celery] = []

    def make(env: dict[str, str]) -> Celery:
        settings = Settings(
            broker_url=env["ROTATOR_BROKER_URL"],
            result_backend=env["ROTATOR_RESULT_BACKEND"],
            var_dir=Path(env["ROTATOR_VAR_DIR"]),
        )
        app = Celery("rotator-test", set_as_current=False)
        app.conf.update(celery_config(settings))
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


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


def test_celery_call_rotates_through_a_worker_and_redis(
    pg_plan: PgPlanFactory, fresh_redis_url: str, results_app: Any, tmp_path: Path
) -> None:
    plan = adopted_plan(pg_plan)
    env = worker_settings(plan, fresh_redis_url)
    before = plan.store.read("db-0", Stage.CURRENT)
    with running_worker(env, tmp_path) as worker:
        task_id = call_rotate(env, tmp_path, "db-0")
        result = results_app(env).AsyncResult(task_id).get(timeout=120)
    assert result["outcome"] == "succeeded", result
    assert result["run_id"] == task_id and result["secret"] == "db-0"
    current = plan.store.read("db-0", Stage.CURRENT)
    previous = plan.store.read("db-0", Stage.PREVIOUS)
    assert current is not None and previous is not None and before is not None
    assert current.version_id == result["version_id"] != before.version_id
    assert previous.version_id == before.version_id
    new_password = current.credential.get("password")
    assert plan.logs_in("db-0", new_password)
    assert not plan.logs_in("db-0", plan.initial[plan.roles["db-0"]])
    run = plan.runtime.history.get_run(task_id)
    assert isinstance(run, Run) and run.status == "succeeded"
    secrets_known = [new_password, plan.initial[plan.roles["db-0"]]]
    history_blobs = [
        form
        for table, _, value in dump_tables(plan.runtime.database)
        if table != "stored_versions"
        for form in value_forms(value)
    ]
    assert leaked([json.dumps(result), worker.log(), *history_blobs], secrets_known) == []
