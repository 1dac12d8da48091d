"""A run that dies at any step boundary is finished by the next run, under its own run id."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rotator.errors import RotationInProgress
from rotator.history import utcnow
from rotator.stores import Stage
from tests.integration.conftest import (
    Crash,
    PgPlan,
    PgPlanFactory,
    crash_at,
    get_lease,
    set_lease,
    stages,
    stored_rows,
)

pytestmark = pytest.mark.integration

POINTS = ["created", "applied", "tested", "promoted"]


def alter_role_count(plan: PgPlan, secret: str) -> int | None:
    """How many ALTER ROLE statements the server logged for the secret's role, if it logs."""
    text = plan.pg.server_log()
    if text is None:
        return None
    quoted = '"' + plan.roles[secret].replace('"', '""') + '"'
    return sum(1 for line in text.splitlines() if f"ALTER ROLE {quoted} WITH PASSWORD" in line)


def assert_nothing_lost(plan: PgPlan, secret: str, candidates: list[str]) -> None:
    """Invariant 1: every candidate the target accepts is in the store as CURRENT or PENDING."""
    now = stages(plan.store, secret)
    stored = {
        version.credential.password
        for stage in (Stage.CURRENT, Stage.PENDING)
        if (version := now[stage]) is not None
    }
    accepted = [password for password in candidates if plan.logs_in(secret, password)]
    assert accepted, "the target accepts none of the credentials we know"
    assert set(accepted) <= stored


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_step_boundary_is_resumed_to_one_new_credential(
    point: str, pg_plan: PgPlanFactory
) -> None:
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    old = plan.store.read("db-0", Stage.CURRENT)
    assert old is not None
    crashing = plan.new_runtime(step_hook=crash_at(point))
    role = plan.roles["db-0"]
    old_verifier = plan.pg.verifier(role)

    with pytest.raises(Crash):
        crashing.engine.run("db-0", run_id="crashed-run")
    crash_verifier = plan.pg.verifier(role)

    after_crash = stages(plan.store, "db-0")
    new = after_crash[Stage.CURRENT] if point == "promoted" else after_crash[Stage.PENDING]
    assert new is not None and new.token == "crashed-run"
    candidates = [old.credential.password or "", new.credential.password or ""]
    assert_nothing_lost(plan, "db-0", candidates)
    assert plan.logs_in("db-0", old.credential.password) is (point == "created")
    assert plan.logs_in("db-0", new.credential.password) is (point != "created")
    assert crashing.leases.holder("db-0") is None  # the in-process crash released its lease
    crashed = crashing.history.get_run("crashed-run")
    assert crashed is not None and crashed.status == "running"
    assert (crash_verifier == old_verifier) is (point == "created")  # applied iff past "created"

    result = plan.new_runtime().engine.run("db-0")
    end_verifier = plan.pg.verifier(role)

    assert result.outcome == "succeeded"
    assert result.resumed and result.run_id == "crashed-run"
    assert result.version_id == new.version_id
    end = stages(plan.store, "db-0")
    assert end[Stage.CURRENT] is not None and end[Stage.CURRENT].version_id == new.version_id
    assert end[Stage.PENDING] is None
    assert end[Stage.PREVIOUS] is not None and end[Stage.PREVIOUS].version_id == old.version_id
    assert plan.logs_in("db-0", new.credential.password)
    assert not plan.logs_in("db-0", old.credential.password)
    assert len(stored_rows(plan.runtime.database, "db-0")) == 2  # first rotation + this one
    runs = plan.runtime.history.runs("db-0")
    # The trigger that resumed the crashed run is recorded too, naming the run it resumed.
    assert sorted(r.status for r in runs) == ["resumed", "succeeded", "succeeded"]
    assert [r.resumed_run_id for r in runs if r.status == "resumed"] == ["crashed-run"]
    assert [r.version_id for r in runs if r.id == "crashed-run"] == [new.version_id]
    finishes = [e for e in plan.runtime.history.steps("crashed-run") if e.step == "finish"]
    assert len(finishes) == 1
    # Each ALTER ROLE stores a freshly salted verifier: an unchanged one means no second ALTER.
    if point == "created":
        assert end_verifier != crash_verifier  # the resume applied PENDING
    else:
        assert end_verifier == crash_verifier  # applied before the crash, not again on resume
    altered = alter_role_count(plan, "db-0")
    if altered is not None:  # where the statement log is readable, count the statements too
        assert altered == 2  # the first rotation and this one: applied once, even when replayed


def test_resuming_a_promoted_run_records_it_once_then_the_next_run_rotates_anew(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    with pytest.raises(Crash):
        plan.new_runtime(step_hook=crash_at("promoted")).engine.run("db-0", run_id="r1")
    first = plan.new_runtime().engine.run("db-0")
    second = plan.new_runtime().engine.run("db-0")

    assert first.run_id == "r1" and first.resumed
    assert second.run_id != "r1" and not second.resumed and second.outcome == "succeeded"
    assert plan.runtime.history.running_runs("db-0") == []


def test_lease_left_by_a_dead_owner_blocks_until_it_expires_then_is_taken_over(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    with pytest.raises(Crash):
        plan.new_runtime(step_hook=crash_at("applied")).engine.run("db-0", run_id="dead-run")
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None
    database = plan.runtime.database
    before = get_lease(database, "db-0")
    assert before is not None
    dead_fence = before.fence + 1
    set_lease(
        database,
        "db-0",
        owner="dead-run:0123456789ab",
        run_id="dead-run",
        fence=dead_fence,
        expires_at=utcnow() + timedelta(minutes=10),
    )
    survivor = plan.new_runtime()

    with pytest.raises(RotationInProgress):
        survivor.engine.run("db-0")
    skipped = survivor.engine.try_run("db-0")

    assert skipped.outcome == "skipped"
    assert stages(plan.store, "db-0")[Stage.PENDING] == pending
    dead = survivor.history.get_run("dead-run")
    assert dead is not None and dead.status == "running"

    set_lease(database, "db-0", expires_at=utcnow() - timedelta(seconds=1))
    result = survivor.engine.run("db-0")

    assert result.outcome == "succeeded" and result.run_id == "dead-run" and result.resumed
    assert result.version_id == pending.version_id
    after = get_lease(database, "db-0")
    assert after is not None and after.fence > dead_fence
    assert after.owner != "dead-run:0123456789ab"
    assert plan.logs_in("db-0", pending.credential.password)
    assert stages(plan.store, "db-0")[Stage.PENDING] is None
