"""Confused-deputy guard: a stored value for another login is never applied to the target."""

from __future__ import annotations

import secrets

import pytest

from rotator.credential import Credential
from tests.conftest import unique_role
from tests.integration.conftest import PgPlan, PgPlanFactory, stages

pytestmark = pytest.mark.integration

#: (whose login the stored CURRENT is for, whose login the stored PENDING is for)
CASES = [
    (None, "victim"),
    ("app", "victim"),
    ("victim", None),
    ("victim", "victim"),
]


def for_role(plan: PgPlan, role: str, password: str) -> Credential:
    return Credential(
        engine="postgres",
        host=plan.pg.host,
        port=plan.pg.port,
        dbname=plan.pg.dbname,
        username=role,
        password=password,
    )


@pytest.mark.parametrize(("current_for", "pending_for"), CASES)
def test_value_for_another_login_is_refused_and_nothing_is_applied(
    current_for: str | None, pending_for: str | None, pg_plan: PgPlanFactory
) -> None:
    plan = pg_plan()
    app = plan.roles["db-0"]
    victim, victim_password = unique_role("victim"), secrets.token_urlsafe(16)
    plan.pg.create_role(victim, victim_password)
    planted = secrets.token_urlsafe(24)
    store = plan.store
    if current_for == "app":
        plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[app]))
    elif current_for == "victim":
        store.put_current("db-0", for_role(plan, victim, victim_password), "planted-current")
    if pending_for == "victim":
        store.put_pending("db-0", for_role(plan, victim, planted), "planted-pending")
    before = stages(store, "db-0")

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("StoreError:")
    assert "username" in result.error and victim in result.error
    assert stages(store, "db-0") == before  # no PENDING written, nothing promoted
    assert plan.pg.logs_in(victim, victim_password)
    assert not plan.pg.logs_in(victim, planted)
    assert plan.pg.logs_in(app, plan.initial[app])
    steps = [e.step for e in plan.runtime.history.steps(result.run_id)]
    assert "apply" not in steps and "finish" not in steps
