"""A worker killed with -9 mid-rotation: Redis redelivers the message, the same run finishes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rotator.credential import Credential
from rotator.stores import Stage
from tests.integration.conftest import PgPlanFactory, stored_rows
from tests.services.celery_procs import CeleryWorker, client_app, rotator_env, wait_result
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration

#: Short limits so the test waits seconds, not hours; the visibility timeout must exceed
#: the hard limit plus the longest retry wait (Settings refuses anything else).
FAST_REDELIVERY = {
    "ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS": "10",
    "ROTATOR_TASK_TIME_LIMIT_SECONDS": "12",
    "ROTATOR_TASK_RETRY_BACKOFF_MAX_SECONDS": "1",
    "ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": "14",
    "ROTATOR_LEASE_TTL_SECONDS": "3",
}


@pytest.fixture
def history_url(pg: PgServer) -> str:
    return pg.url(pg.create_database())


@pytest.fixture
def role_locked(pg: PgServer) -> Iterator[Any]:
    """Holds a role's pg_authid row in an open transaction, so ALTER ROLE on it waits."""
    conns: list[psycopg.Connection[Any]] = []

    def lock(role: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(**pg.conninfo())
        conn.execute(
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT 50").format(sql.Identifier(role))
        )  # uncommitted: the row stays locked until rollback
        conns.append(conn)
        return conn

    yield lock
    for conn in conns:
        conn.close()


def backends_waiting_on(pg: PgServer, role: str) -> int:
    """Sessions of the rotator blocked on a lock while altering `role`."""
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = 'rotator' AND query ILIKE %s",
            (f'ALTER ROLE "{role}"%',),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_kill_9_mid_rotation_redelivers_and_finishes_the_same_run(
    pg: PgServer,
    pg_plan: PgPlanFactory,
    fresh_redis_url: str,
    role_locked: Any,
    tmp_path: Path,
) -> None:
    plan = pg_plan()
    role = plan.roles["db-0"]
    old_password = plan.initial[role]
    plan.runtime.engine.adopt("db-0", Credential(password=old_password))
    env = rotator_env(plan.runtime.settings, fresh_redis_url, **FAST_REDELIVERY)
    blocker = role_locked(role)
    first = CeleryWorker(env, tmp_path, concurrency=1).start()
    try:
        with client_app(env) as app:
            task_id = app.send_task("rotator.rotate", args=["db-0"]).id
            sent = time.monotonic()
            wait_until(lambda: backends_waiting_on(pg, role) > 0, 60, "ALTER ROLE never blocked")
            first.kill9()  # the main process and its pool child, mid-ALTER ROLE
        # The orphaned session ends at its lock_timeout; only then is the role let go,
        # so the dead worker's statement never takes effect.
        wait_until(lambda: backends_waiting_on(pg, role) == 0, 60, "orphaned ALTER ROLE lived")
        blocker.rollback()
    finally:
        first.kill9()

    run = plan.runtime.history.get_run(task_id)
    assert run is not None and run.status == "running"
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None and pending.token == task_id
    assert plan.logs_in("db-0", old_password)

    # Redis hands the unacknowledged message out again once its visibility timeout is over.
    time.sleep(max(0.0, sent + 15 - time.monotonic()))
    second = CeleryWorker(env, tmp_path, concurrency=1).start()
    try:
        with client_app(env) as app:
            result = wait_result(app, task_id, timeout=120)
    finally:
        second.stop()

    assert result["outcome"] == "succeeded", result
    assert result["run_id"] == task_id
    assert result["version_id"] == pending.version_id
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == pending.version_id
    assert plan.logs_in("db-0", current.credential.get("password"))
    assert not plan.logs_in("db-0", old_password)
    rotations = [r for r in plan.runtime.history.runs("db-0") if r.trigger != "adopt"]
    assert [(r.id, r.status) for r in rotations] == [(task_id, "succeeded")]
    # One new credential: the adopted version and the one PENDING, nothing generated twice.
    assert len(stored_rows(plan.runtime.database, "db-0")) == 2


def test_kill_9_of_the_pool_child_requeues_and_the_same_run_finishes(
    pg: PgServer,
    pg_plan: PgPlanFactory,
    fresh_redis_url: str,
    role_locked: Any,
    tmp_path: Path,
) -> None:
    """Only the pool child dies: its parent requeues the message at once
    (task_reject_on_worker_lost); the redelivered task waits while its own dead attempt holds
    the lease, without spending a retry (max retries 0), then finishes the same run."""
    plan = pg_plan()
    role = plan.roles["db-0"]
    old_password = plan.initial[role]
    plan.runtime.engine.adopt("db-0", Credential(password=old_password))
    # A lease that outlives the time from the kill to the redelivery however slow the machine:
    # the redelivered task must meet its own dead attempt's lease.
    slow_lease = {
        **FAST_REDELIVERY,
        "ROTATOR_LEASE_TTL_SECONDS": "20",
        "ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": "30",
    }
    env = rotator_env(
        plan.runtime.settings, fresh_redis_url, ROTATOR_TASK_MAX_RETRIES="0", **slow_lease
    )
    blocker = role_locked(role)
    worker = CeleryWorker(env, tmp_path, concurrency=1).start()
    try:
        with client_app(env) as app:
            task_id = app.send_task("rotator.rotate", args=["db-0"]).id
            wait_until(lambda: backends_waiting_on(pg, role) > 0, 60, "ALTER ROLE never blocked")
            children = worker.pool_children()
            assert len(children) == 1, children
            os.kill(children[0], signal.SIGKILL)
            blocker.rollback()  # the orphaned ALTER ROLE may now commit PENDING: resume re-applies
            result = wait_result(app, task_id, timeout=120)
    finally:
        worker.stop()

    log = worker.log()
    assert result["outcome"] == "succeeded", (result, log[-3000:])
    assert result["run_id"] == task_id
    assert "this run's earlier attempt still holds the lease" in log
    assert '"lease_waits": 1' in log  # the count travels with the retried message
    assert "rotate.gave_up" not in log
    pending = plan.store.read("db-0", Stage.PENDING)
    current = plan.store.read("db-0", Stage.CURRENT)
    assert pending is None and current is not None
    assert current.version_id == result["version_id"]
    assert plan.logs_in("db-0", current.credential.get("password"))
    assert not plan.logs_in("db-0", old_password)
    rotations = [r for r in plan.runtime.history.runs("db-0") if r.trigger != "adopt"]
    assert [(r.id, r.status) for r in rotations] == [(task_id, "succeeded")]
    assert len(stored_rows(plan.runtime.database, "db-0")) == 2  # one new credential
