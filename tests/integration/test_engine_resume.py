"""Resuming interrupted runs only when something of them is left to finish."""

from __future__ import annotations

import pytest

from rotator.credential import Credential
from rotator.errors import StoreError
from rotator.stores import Stage
from tests.integration.conftest import Crash, PgPlanFactory, crash_at

pytestmark = pytest.mark.integration


def test_a_run_whose_pending_was_dropped_is_closed_not_resumed(pg_plan: PgPlanFactory) -> None:
    """A rollback that died after dropping PENDING must not re-apply the dropped value."""
    plan = pg_plan()
    store, history = plan.store, plan.runtime.history
    role_password = plan.initial[plan.roles["db-0"]]
    plan.runtime.engine.adopt("db-0", Credential(password=role_password))
    # The state such a crash leaves: the run still 'running', its version written and dropped.
    history.start_run("dead-run", "db-0", "manual", None)
    dropped = store.put_pending("db-0", Credential(password="dropped-" + "x" * 24), "dead-run")
    store.discard_pending("db-0", dropped.version_id)

    result = plan.new_runtime().engine.run("db-0")

    assert result.outcome == "succeeded" and not result.resumed
    assert result.run_id != "dead-run"
    dead = history.get_run("dead-run")
    assert dead is not None and dead.status == "failed"
    current = store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == result.version_id
    assert plan.logs_in("db-0", current.credential.password)
    assert not plan.logs_in("db-0", "dropped-" + "x" * 24)


def test_a_spent_token_is_refused_by_the_store(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    version = plan.store.put_pending("db-0", Credential(password="p" * 20), "run-1")
    plan.store.discard_pending("db-0", version.version_id)
    with pytest.raises(StoreError, match="no longer PENDING"):
        plan.store.put_pending("db-0", Credential(password="q" * 20), "run-1")


def test_adoption_after_a_crash_inside_finish_records_that_run_as_succeeded(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    crashing = plan.new_runtime(step_hook=crash_at("promoted"))
    with pytest.raises(Crash):
        crashing.engine.run("db-0", run_id="crashed-run")
    promoted = plan.store.read("db-0", Stage.CURRENT)
    assert promoted is not None and promoted.token == "crashed-run"

    plan.new_runtime().engine.adopt("db-0", Credential(password=promoted.credential.password))
    crashed = plan.runtime.history.get_run("crashed-run")
    assert crashed is not None and crashed.status == "succeeded"
    assert crashed.version_id == promoted.version_id

    after = plan.new_runtime().engine.run("db-0")
    assert after.outcome == "succeeded" and not after.resumed
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and plan.logs_in("db-0", current.credential.password)
