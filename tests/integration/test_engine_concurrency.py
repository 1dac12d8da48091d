"""One rotation of a secret at a time, across engines (processes) sharing a history database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from rotator.engine import RunResult
from rotator.errors import RotationInProgress
from rotator.history import utcnow
from rotator.stores import Stage
from tests.integration.conftest import PgPlan, PgPlanFactory, set_lease, stages, stored_rows

pytestmark = pytest.mark.integration


class Gate:
    """A step hook that holds a run at `point` until released."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, reached: str) -> None:
        if reached == self.point:
            self.entered.set()
            assert self.release.wait(20), "the test never released the gate"


def in_thread(action: Callable[[], RunResult]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def assert_settled(plan: PgPlan, version_id: str | None) -> None:
    """One CURRENT (the given version), no PENDING, and it logs in."""
    now = stages(plan.store, "db-0")
    current = now[Stage.CURRENT]
    assert current is not None and current.version_id == version_id
    assert now[Stage.PENDING] is None
    assert plan.logs_in("db-0", current.credential.password)


def test_second_engine_is_refused_while_the_first_is_inside_a_run(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    gate = Gate("applied")
    first = plan.new_runtime(step_hook=gate)
    second = plan.new_runtime()
    thread, box = in_thread(lambda: first.engine.run("db-0"))
    assert gate.entered.wait(20)
    rows_before = len(stored_rows(plan.runtime.database, "db-0"))

    other, refused = in_thread(lambda: second.engine.run("db-0"))  # a second process, at once
    other.join(20)
    skipped = second.engine.try_run("db-0")

    assert isinstance(refused.get("error"), RotationInProgress)
    assert skipped.outcome == "skipped" and skipped.ok
    assert len(stored_rows(plan.runtime.database, "db-0")) == rows_before
    gate.release.set()
    thread.join(20)
    result = box["result"]
    assert result.outcome == "succeeded"
    assert_settled(plan, result.version_id)
    assert len(plan.runtime.history.runs("db-0")) == 2  # the refused trigger left no run behind


def test_racing_triggers_never_overlap(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    active: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def watcher(who: str) -> Callable[[str], None]:
        def hook(point: str) -> None:
            with lock:
                if point == "created":
                    if active:
                        overlaps.append((*active, who))
                    active.append(who)
                elif point == "promoted":
                    active.remove(who)
            if point == "created":
                time.sleep(0.05)  # widen the window a second run would have to slip into

        return hook

    engines = {who: plan.new_runtime(step_hook=watcher(who)).engine for who in ("a", "b")}
    outcomes: list[str] = []
    for _ in range(3):
        barrier = threading.Barrier(2)

        def trigger(who: str, barrier: threading.Barrier = barrier) -> RunResult:
            barrier.wait(10)
            return engines[who].try_run("db-0")

        threads = [in_thread(lambda who=who: trigger(who)) for who in engines]
        for thread, _ in threads:
            thread.join(30)
        for _, box in threads:
            assert "error" not in box, box.get("error")
            outcomes.append(box["result"].outcome)

    assert overlaps == []
    assert set(outcomes) <= {"succeeded", "skipped"} and "succeeded" in outcomes
    last = plan.runtime.history.last_success("db-0")
    assert last is not None
    assert_settled(plan, last.version_id)
    succeeded = [r for r in plan.runtime.history.runs("db-0") if r.status == "succeeded"]
    assert len(succeeded) == outcomes.count("succeeded")


def test_run_that_lost_its_lease_leaves_the_run_to_its_new_holder(
    pg_plan: PgPlanFactory,
) -> None:
    """A stalled run whose lease expired and was taken over stops, and writes no history."""
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    gate = Gate("applied")
    stalled = plan.new_runtime(step_hook=gate)
    thread, box = in_thread(lambda: stalled.engine.run("db-0", run_id="slow-run"))
    assert gate.entered.wait(20)
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None
    set_lease(plan.runtime.database, "db-0", expires_at=utcnow() - timedelta(seconds=1))

    taken_over = plan.new_runtime().engine.run("db-0")
    gate.release.set()
    thread.join(20)

    assert taken_over.outcome == "succeeded" and taken_over.run_id == "slow-run"
    assert taken_over.version_id == pending.version_id
    assert "result" in box, box
    lost = box["result"]
    assert lost.outcome == "failed" and lost.error is not None and "LockLost" in lost.error
    run = plan.runtime.history.get_run("slow-run")
    assert run is not None and run.status == "succeeded" and run.error is None
    steps = [(e.step, e.status) for e in plan.runtime.history.steps("slow-run")]
    assert ("failed", "error") not in steps
    assert_settled(plan, pending.version_id)
