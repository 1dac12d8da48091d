"""A PostgreSQL rotation end to end through the real engine."""

from __future__ import annotations

import pytest

from rotator.stores import Stage
from tests.integration.conftest import PgPlanFactory
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


def test_rotation_makes_new_password_work_and_old_fail(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = pg_plan()
    runtime, roles = plan.runtime, plan.roles
    store = runtime.stores.get("local")
    role = roles["db-0"]
    old = runtime.engine.run("db-0")  # first rotation from an unknown password (admin path)
    assert old.outcome == "succeeded"
    before = store.read("db-0", Stage.CURRENT)
    assert before is not None

    result = runtime.engine.run("db-0")

    assert result.outcome == "succeeded"
    current = store.read("db-0", Stage.CURRENT)
    previous = store.read("db-0", Stage.PREVIOUS)
    assert current is not None and previous is not None
    assert previous.version_id == before.version_id
    assert current.version_id == result.version_id
    assert store.read("db-0", Stage.PENDING) is None
    assert pg.logs_in(role, current.credential.password)
    assert not pg.logs_in(role, previous.credential.password)
    steps = [(e.step, e.status) for e in runtime.history.steps(result.run_id)]
    assert steps == [("create", "ok"), ("apply", "ok"), ("test", "ok"), ("finish", "ok")]
    run = runtime.history.get_run(result.run_id)
    assert run is not None and run.status == "succeeded"
