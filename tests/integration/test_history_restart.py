"""A history database that drops every connection mid-run (a restart, a failover)."""

from __future__ import annotations

import pytest

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
    failover): the pooled connections are replaced and the run finishes."""
    gate = Gate("applied")
    plan = pg_plan()
    runtime = plan.new_runtime(step_hook=gate)
    thread, box = in_thread(lambda: runtime.engine.run("db-0"))
    assert gate.entered.wait(20)
    assert _drop_history_connections(history_url, plan.pg) > 0
    gate.release.set()
    thread.join(30)
    assert "error" not in box, repr(box.get("error"))
    assert box["result"].outcome == "succeeded"
