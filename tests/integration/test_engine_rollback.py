"""A PENDING the target rejects is rolled back: CURRENT is put back and proven, PENDING dropped."""

from __future__ import annotations

import pytest

from rotator.credential import Credential
from rotator.errors import CredentialRejected
from rotator.stores import Stage
from rotators.postgres import PostgresPasswordRotator
from tests.integration.conftest import PgPlanFactory, stages

pytestmark = pytest.mark.integration


def rejecting_new_credentials() -> tuple[type[PostgresPasswordRotator], list[str]]:
    """A rotator whose `test` rejects every credential it generated (and only those)."""
    generated: list[str] = []

    class RejectingRotator(PostgresPasswordRotator):
        def generate(self, current: Credential | None) -> Credential:
            credential = super().generate(current)
            generated.append(credential.password or "")
            return credential

        def test(self, credential: Credential) -> None:
            if credential.password in generated:
                raise CredentialRejected("the target refused the new password")
            super().test(credential)

    return RejectingRotator, generated


class AlwaysRejectingRotator(PostgresPasswordRotator):
    """A rotator whose `test` rejects everything, even the credential a rollback restores."""

    def test(self, credential: Credential) -> None:
        raise CredentialRejected("the target refuses every login")


def test_rejected_pending_is_rolled_back_and_current_keeps_working(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    engine = plan.runtime.engine
    assert engine.run("db-0").outcome == "succeeded"
    before = stages(plan.store, "db-0")
    current = before[Stage.CURRENT]
    assert current is not None
    rotator, generated = rejecting_new_credentials()
    engine.rotators = {"postgres-password": rotator}

    result = engine.run("db-0")

    assert result.outcome == "rolled_back" and not result.ok
    assert result.error is not None and "refused the new password" in result.error
    assert len(generated) == 1
    after = stages(plan.store, "db-0")
    assert after[Stage.CURRENT] == current
    assert after[Stage.PREVIOUS] == before[Stage.PREVIOUS]
    assert after[Stage.PENDING] is None
    assert plan.logs_in("db-0", current.credential.password)
    assert not plan.logs_in("db-0", generated[0])  # applied, then undone
    run = plan.runtime.history.get_run(result.run_id)
    assert run is not None and run.status == "rolled_back"
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(result.run_id)]
    assert steps == [
        ("create", "ok"),
        ("apply", "ok"),
        ("rollback", "ok"),  # CURRENT applied again
        ("rollback", "ok"),  # and proven
        ("rollback", "ok"),  # PENDING retired (what it was granted, if anything, revoked)
        ("rollback", "ok"),  # then PENDING dropped
    ]


def test_after_a_rollback_the_next_run_rotates_from_scratch(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    engine = plan.runtime.engine
    assert engine.run("db-0").outcome == "succeeded"
    rotator, generated = rejecting_new_credentials()
    engine.rotators = {"postgres-password": rotator}
    rolled_back = engine.run("db-0")
    engine.rotators = {"postgres-password": PostgresPasswordRotator}

    result = engine.run("db-0")

    assert rolled_back.outcome == "rolled_back" and result.outcome == "succeeded"
    assert result.version_id != rolled_back.version_id
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and current.credential.password != generated[0]
    assert plan.logs_in("db-0", current.credential.password)


def test_rollback_that_cannot_prove_current_fails_and_keeps_pending(
    pg_plan: PgPlanFactory,
) -> None:
    """If even CURRENT cannot be proven after a rollback, PENDING stays: nothing is lost."""
    plan = pg_plan()
    engine = plan.runtime.engine
    assert engine.run("db-0").outcome == "succeeded"
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None
    engine.rotators = {"postgres-password": AlwaysRejectingRotator}

    result = engine.run("db-0")

    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("CredentialRejected:")
    after = stages(plan.store, "db-0")
    assert after[Stage.CURRENT] == current
    pending = after[Stage.PENDING]
    assert pending is not None and pending.token == result.run_id
    assert plan.logs_in("db-0", current.credential.password)  # the rollback's apply did happen
    run = plan.runtime.history.get_run(result.run_id)
    assert run is not None and run.status == "failed"


def test_rejected_first_rotation_keeps_pending_when_there_is_no_current_to_restore(
    pg_plan: PgPlanFactory,
) -> None:
    """With no CURRENT to put back, the target may now accept PENDING, so PENDING must stay."""
    plan = pg_plan()
    engine = plan.runtime.engine
    rotator, generated = rejecting_new_credentials()
    engine.rotators = {"postgres-password": rotator}

    result = engine.run("db-0")

    assert result.outcome == "failed"
    assert plan.logs_in("db-0", generated[0])  # apply changed the password before test refused
    after = stages(plan.store, "db-0")
    assert after[Stage.CURRENT] is None
    pending = after[Stage.PENDING]
    assert pending is not None and pending.credential.password == generated[0]
    run = plan.runtime.history.get_run(result.run_id)
    assert run is not None and run.status == "failed"
