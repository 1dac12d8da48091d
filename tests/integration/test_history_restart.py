"""A history database that drops every connection mid-run (a restart, a failover)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from rotator.history import IDLE_PING_SECONDS, Database
from tests.integration.conftest import PgPlanFactory
from tests.integration.test_engine_concurrency import Gate, in_thread
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(pg: PgServer) -> str:
    """Only a PostgreSQL history database can be restarted under a run here."""
    return pg.url(pg.create_database())


def _drop_history_connections(plan_db_url: str, pg: PgServer) -> int:
    dbname = plan_db_url.rsplit("/", 1)[-1]
    with pg.admin() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def test_a_history_database_restart_between_steps_does_not_fail_the_run(
    pg_plan: PgPlanFactory, history_url: str
) -> None:
    """The history database drops every connection between two steps (a restart, a
    failover, which take longer than the idle time after which a connection is pinged):
    the pooled connections are replaced and the run finishes."""
    gate = Gate("applied")
    plan = pg_plan()
    runtime = plan.new_runtime(step_hook=gate)
    thread, box = in_thread(lambda: runtime.engine.run("db-0"))
    assert gate.entered.wait(20)
    assert _drop_history_connections(history_url, plan.pg) > 0
    time.sleep(IDLE_PING_SECONDS + 0.5)
    gate.release.set()
    thread.join(30)
    assert "error" not in box, repr(box.get("error"))
    assert box["result"].outcome == "succeeded"


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    history_url: str, pg: PgServer
) -> None:
    database = Database(history_url)
    with database.statement() as session:
        first = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert _drop_history_connections(history_url, pg) >= 1
    time.sleep(IDLE_PING_SECONDS + 0.2)
    with database.statement() as session:
        second = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert second != first
    database.dispose()
