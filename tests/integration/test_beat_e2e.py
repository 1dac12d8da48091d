"""`celery -A rotator beat` and `worker` processes rotate real PostgreSQL roles on schedule."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select

from rotator.history import Run, StoredVersion
from rotator.stores import Stage
from tests.integration.conftest import Crash, PgPlan, PgPlanFactory, crash_at
from tests.services.celery_beat import CeleryBeat, running_beat
from tests.services.celery_procs import running_worker
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(pg: PgServer) -> str:
    """Beat, workers and the test share one PostgreSQL history database."""
    return pg.url(pg.create_database())


def process_env(plan: PgPlan, broker: str) -> dict[str, str]:
    settings = plan.runtime.settings
    assert settings.encryption_key is not None
    return {
        "ROTATOR_SCHEDULES": str(plan.schedules),
        "ROTATOR_DATABASE_URL": settings.resolved_database_url,
        "ROTATOR_ENCRYPTION_KEY": settings.encryption_key.get_secret_value(),
        "ROTATOR_VAR_DIR": str(settings.var_dir),
        "ROTATOR_BROKER_URL": broker,
        "ROTATOR_RESULT_BACKEND": broker,
    }


def set_every(plan: PgPlan, secret: str, every: str) -> None:
    """Rewrite one secret's `every:` in the schedules file (pg_plan writes JSON flow maps)."""
    lines = plan.schedules.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"  {json.dumps(secret)}:"):
            entry = json.loads(line.split(": ", 1)[1])
            entry["every"] = every
            lines[index] = f"  {json.dumps(secret)}: {json.dumps(entry)}"
    plan.schedules.write_text("\n".join(lines) + "\n")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return result


def scheduled_successes(plan: PgPlan, secret: str = "db-0") -> list[Run]:
    runs = plan.runtime.history.runs(secret, limit=200)
    done = [r for r in runs if r.trigger == "schedule" and r.status == "succeeded"]
    return sorted(done, key=lambda r: r.started_at)


def events(beat: CeleryBeat, name: str) -> list[dict[str, Any]]:
    found = []
    for line in beat.log().splitlines():
        # Celery prefixes what beat prints with its own log header: the JSON follows it.
        if f'"event": "{name}"' in line:
            event = json.loads(line[line.index("{") :])
            if event.get("event") == name:
                found.append(event)
    return found


def current_logs_in(plan: PgPlan, secret: str = "db-0") -> bool:
    current = plan.store.read(secret, Stage.CURRENT)
    assert current is not None
    return plan.logs_in(secret, current.credential.password)


def test_a_scheduled_rotation_runs_on_time_through_beat_and_a_worker(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """A never-rotated secret rotates at once, then again each time its 5s interval passes."""
    plan = pg_plan(defaults={"window": "1s"})
    set_every(plan, "db-0", "5s")
    env = process_env(plan, fresh_redis_url)
    with running_worker(env, tmp_path), running_beat(env, tmp_path) as beat:
        runs = wait_for(
            lambda: len(scheduled_successes(plan)) >= 2 and scheduled_successes(plan),
            90,
            "two scheduled rotations",
        )
        assert beat.alive()
    first, second = runs[:2]
    assert first.slot == "first" and second.slot is not None and second.slot.startswith("every:")
    assert first.finished_at is not None
    assert second.started_at >= first.finished_at + timedelta(seconds=5)  # not early
    assert current_logs_in(plan)
    assert not any(
        r.secret == "pg-admin" and r.trigger == "schedule" for r in plan.runtime.history.runs()
    )


def stored_versions(plan: PgPlan, path: str = "db-0") -> int:
    """How many versions the embedded store holds for `path`: one per rotation."""
    with plan.runtime.database.session() as session:
        query = select(func.count()).select_from(StoredVersion).where(StoredVersion.path == path)
        return int(session.execute(query).scalar_one())


def test_two_beats_on_one_redis_rotate_each_slot_once(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """One send per slot across both beats, and one new credential per slot."""
    plan = pg_plan(defaults={"window": "1s"})
    set_every(plan, "db-0", "5s")
    env = process_env(plan, fresh_redis_url)
    versions_before = stored_versions(plan)
    queue = Redis.from_url(fresh_redis_url)
    with running_worker(env, tmp_path):
        with running_beat(env, tmp_path) as one, running_beat(env, tmp_path) as two:
            wait_for(lambda: len(scheduled_successes(plan)) >= 3, 120, "three scheduled rotations")
            assert one.alive() and two.alive()

        def idle() -> bool:
            return not queue.llen("celery") and not plan.runtime.history.running_runs("db-0")

        wait_for(idle, 60, "the worker to finish what the beats sent")
    queue.close()
    sends = [(e["secret"], e["slot"]) for b in (one, two) for e in events(b, "beat.sent")]
    repeated = {slot: n for slot, n in Counter(sends).items() if n > 1}
    assert not repeated, f"slots sent more than once across the two beats: {repeated}"
    succeeded = scheduled_successes(plan)
    slots = {r.slot for r in succeeded}
    assert len(slots) == len(succeeded) >= 3 and {("db-0", s) for s in slots} <= set(sends)
    # One credential per slot, and no rotation between two slots: each follows the last by 5s.
    assert len({r.version_id for r in succeeded}) == len(slots)
    assert stored_versions(plan) - versions_before == len(slots)
    for earlier, later in pairwise(succeeded):
        assert earlier.finished_at is not None
        assert later.started_at >= earlier.finished_at + timedelta(seconds=5)
    assert current_logs_in(plan)


def test_editing_schedules_while_beat_runs_takes_effect_and_a_bad_edit_is_refused(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    plan = pg_plan(defaults={"window": "1s"})
    plan.runtime.engine.run("db-0")  # rotated just now: not due for 30 days
    env = process_env(plan, fresh_redis_url)
    with running_beat(env, tmp_path) as beat:
        time.sleep(2)
        assert events(beat, "beat.sent") == []

        good = plan.schedules.read_text()
        plan.schedules.write_text(good.replace("secrets:", "secrets:\n  bad: {every: 30x}"))
        beat.wait_for_log("beat.schedule_invalid")
        problems = events(beat, "beat.schedule_invalid")[0]["problems"]
        assert len(problems) >= 2 and any("30x" in p for p in problems)
        assert beat.alive()

        plan.schedules.write_text(good)
        set_every(plan, "db-0", "1s")  # the last success is older than 1s: due at once
        wait_for(lambda: events(beat, "beat.sent"), 30, "beat to send db-0")
        sent = events(beat, "beat.sent")
        assert [e["secret"] for e in sent] == ["db-0"]  # once, though many 1s periods passed
        assert beat.alive()


def test_an_abandoned_run_is_resumed_by_beat_and_a_worker_without_redelivery(
    pg_plan: PgPlanFactory, fresh_redis_url: str, tmp_path: Path
) -> None:
    """A worker died after applying PENDING (lease expired, run `running`): beat resumes it."""
    plan = pg_plan(defaults={"window": "1s"})
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    with pytest.raises(Crash):
        plan.new_runtime(step_hook=crash_at("applied")).engine.run("db-0", run_id="dead-run")
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None and plan.logs_in("db-0", pending.credential.password)
    assert [r.id for r in plan.runtime.history.running_runs("db-0")] == ["dead-run"]

    env = process_env(plan, fresh_redis_url)
    with running_worker(env, tmp_path), running_beat(env, tmp_path) as beat:
        wait_for(lambda: not plan.runtime.history.running_runs("db-0"), 90, "the resume")
        sent = events(beat, "beat.sent")
    dead = plan.runtime.history.get_run("dead-run")
    assert dead is not None and dead.status == "succeeded"
    assert [e["reason"] for e in sent] == ["resume"]
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == pending.version_id
    assert current_logs_in(plan)
