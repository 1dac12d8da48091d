"""Twenty simultaneous triggers of one secret through real workers: one rotation at a time."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from celery import group

from rotator.credential import Credential
from rotator.stores import Stage
from tests.integration.conftest import PgPlanFactory, stored_rows
from tests.services.celery_procs import client_app, rotator_env, running_worker
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(pg: PgServer) -> str:
    return pg.url(pg.create_database())


def test_twenty_simultaneous_triggers_never_overlap(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    plan = pg_plan()
    role = plan.roles["db-0"]
    plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[role]))
    env = rotator_env(plan.runtime.settings, fresh_redis_url)
    with (
        running_worker(env, tmp_path, concurrency=4),
        running_worker(env, tmp_path, concurrency=2),
        client_app(env) as app,
    ):
        signatures = [app.signature("rotator.rotate", args=["db-0"]) for _ in range(20)]
        results = group(signatures).apply_async().get(timeout=300)

    outcomes = [r["outcome"] for r in results]
    assert set(outcomes) <= {"succeeded", "skipped"}, results
    succeeded = [r for r in results if r["outcome"] == "succeeded"]
    skipped = [r for r in results if r["outcome"] == "skipped"]
    assert succeeded

    runs = {r.id: r for r in plan.runtime.history.runs("db-0", limit=100) if r.trigger != "adopt"}
    assert {r["run_id"] for r in results} == set(runs)
    assert {r.id for r in runs.values() if r.status == "skipped"} == {r["run_id"] for r in skipped}
    assert all(runs[r["run_id"]].error == "in progress" for r in skipped)
    # Never two rotations at once: the succeeded runs' intervals do not overlap.
    spans = sorted(
        (run.started_at, run.finished_at) for run in runs.values() if run.status == "succeeded"
    )
    assert len(spans) == len(succeeded)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and end <= start

    # Each success made exactly one new version; the last is CURRENT, the one before PREVIOUS.
    assert len(stored_rows(plan.runtime.database, "db-0")) == 1 + len(succeeded)
    current = plan.store.read("db-0", Stage.CURRENT)
    previous = plan.store.read("db-0", Stage.PREVIOUS)
    assert current is not None and previous is not None
    assert plan.store.read("db-0", Stage.PENDING) is None
    assert plan.logs_in("db-0", current.credential.get("password"))
    last = max(succeeded, key=lambda r: runs[r["run_id"]].finished_at)
    assert current.version_id == last["version_id"]
