"""Transient errors are retried; a run that runs out of attempts fails and keeps its PENDING."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from rotator.credential import Credential
from rotator.errors import TransientError
from rotator.stores import Stage
from rotators.postgres import PostgresPasswordRotator
from tests.integration.conftest import PgPlan, PgPlanFactory, TcpProxy, stages

pytestmark = pytest.mark.integration


def flaky_apply(failures: int) -> type[PostgresPasswordRotator]:
    """A rotator whose `apply` raises TransientError the first `failures` times (across runs)."""
    calls: list[int] = []

    class FlakyRotator(PostgresPasswordRotator):
        def apply(
            self, pending: Credential, current: Credential | None, previous: Credential | None
        ) -> None:
            calls.append(1)
            if len(calls) <= failures:
                raise TransientError(f"target busy (call {len(calls)})")
            super().apply(pending, current, previous)

    return FlakyRotator


def behind_proxy(pg_plan: PgPlanFactory, proxy: TcpProxy) -> PgPlan:
    """db-0's target is reached through `proxy`; its CURRENT is the role's real password."""
    # The admin logs in to the same (proxied) server: validation refuses an admin elsewhere.
    plan = pg_plan(targets={"db-0": {"port": proxy.port}, "pg-admin": {"port": proxy.port}})
    role = plan.roles["db-0"]
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[role]))
    return plan


def test_unreachable_target_is_retried_then_fails_keeping_pending_then_resumes(
    pg_plan: PgPlanFactory, tcp_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = tcp_proxy()  # not started: its port refuses connections
    plan = behind_proxy(pg_plan, proxy)
    engine = plan.runtime.engine
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None

    failed = engine.run("db-0")

    assert failed.outcome == "failed"
    assert failed.error is not None and failed.error.startswith("TransientError:")
    assert "unreachable" in failed.error
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(failed.run_id)]
    assert steps == [("create", "ok"), ("apply", "retry"), ("failed", "error")]
    after = stages(plan.store, "db-0")
    assert after[Stage.CURRENT] == current
    pending = after[Stage.PENDING]
    assert pending is not None and pending.token == failed.run_id
    assert plan.logs_in("db-0", current.credential.password)  # the target was never touched

    still_down = engine.run("db-0")
    assert still_down.outcome == "failed"
    assert stages(plan.store, "db-0")[Stage.PENDING] == pending  # reused, not replaced

    proxy.start()
    result = plan.new_runtime().engine.run("db-0")

    assert result.outcome == "succeeded" and result.version_id == pending.version_id
    assert plan.logs_in("db-0", pending.credential.password)
    assert not plan.logs_in("db-0", current.credential.password)
    assert [r.status for r in plan.runtime.history.runs("db-0")].count("failed") == 2


def test_target_lost_between_apply_and_test_fails_with_pending_accepted_then_resumes(
    pg_plan: PgPlanFactory, tcp_proxy: Callable[[], TcpProxy]
) -> None:
    proxy = tcp_proxy().start()
    plan = behind_proxy(pg_plan, proxy)
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None

    def outage_after_apply(point: str) -> None:
        if point == "applied":
            proxy.stop()

    failed = plan.new_runtime(step_hook=outage_after_apply).engine.run("db-0")

    assert failed.outcome == "failed"
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(failed.run_id)]
    assert steps == [
        ("create", "ok"),
        ("apply", "ok"),
        ("test", "retry"),
        ("failed", "error"),
    ]
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None
    assert plan.store.read("db-0", Stage.CURRENT) == current
    assert plan.logs_in("db-0", pending.credential.password)  # accepted, and safe in the store

    proxy.start()
    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "succeeded" and result.version_id == pending.version_id
    assert plan.store.read("db-0", Stage.PENDING) is None


def test_transient_apply_error_is_retried_within_the_run(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    engine = plan.runtime.engine
    engine.rotators = {"postgres-password": flaky_apply(failures=1)}

    result = engine.run("db-0")

    assert result.outcome == "succeeded"
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(result.run_id)]
    assert steps == [
        ("create", "ok"),
        ("apply", "retry"),
        ("apply", "ok"),
        ("test", "ok"),
        ("finish", "ok"),
    ]
    retry = plan.runtime.history.steps(result.run_id)[1]
    assert retry.detail is not None and "target busy (call 1)" in retry.detail


def test_run_out_of_attempts_fails_and_the_next_run_resumes_the_same_pending(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    engine = plan.runtime.engine
    assert engine.run("db-0").outcome == "succeeded"
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None
    engine.rotators = {"postgres-password": flaky_apply(failures=3)}  # max_attempts is 2

    failed = engine.run("db-0")

    assert failed.outcome == "failed"
    retries = [e for e in plan.runtime.history.steps(failed.run_id) if e.status == "retry"]
    assert len(retries) == 1
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None
    assert plan.store.read("db-0", Stage.CURRENT) == current
    assert plan.logs_in("db-0", current.credential.password)

    result = engine.run("db-0")

    assert result.outcome == "succeeded" and result.version_id == pending.version_id
    assert result.run_id != failed.run_id and not result.resumed  # a failed run is not resumed
    assert plan.logs_in("db-0", pending.credential.password)
    assert not plan.logs_in("db-0", current.credential.password)
    end = stages(plan.store, "db-0")
    assert end[Stage.PREVIOUS] == replace(current, stage=Stage.PREVIOUS)
