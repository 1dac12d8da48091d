"""YamlScheduler in-process: a real Celery app on a real Redis, ticked by the test.

What beat sends is read back from the Redis queue itself, so each test sees the
messages a worker would receive.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from redis import Redis
from redis.exceptions import TimeoutError as RedisTimeout
from sqlalchemy import select
from structlog.testing import capture_logs

import rotator.beat as beat_module
from rotator.beat import YamlScheduler, retire_slot
from rotator.devservers import free_port
from rotator.errors import ConfigError
from rotator.history import Database, History, Retirement, Run, SlotClaim, utcnow
from rotator.leader import (
    LEASE_NAME,
    REDIS_KEY,
    LeaseLeadership,
    RedisLeadership,
    leadership_for,
    redis_client_url,
)
from rotator.schedule import load_plan
from rotator.slots import task_id
from tests.conftest import SchedulesWriter
from tests.integration.conftest import set_lease

pytestmark = pytest.mark.integration


def secret_block(name: str, schedule: str = "every: 1d", user: str | None = None) -> str:
    return (
        f"  {name}:\n    rotator: postgres-password\n    store: local\n    {schedule}\n"
        f"    window: 1s\n    target: {{host: 127.0.0.1, username: {user or name}}}\n"
    )


def schedules_text(*blocks: str) -> str:
    return "version: 1\nstores: {local: {type: embedded}}\nsecrets:\n" + "".join(blocks)


@pytest.fixture
def beat_env(
    tmp_path: Path, fresh_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """ROTATOR_* settings for in-process schedulers, and their history database."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    for key in [k for k in os.environ if k.startswith("ROTATOR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ROTATOR_SCHEDULES", str(tmp_path / "schedules.yaml"))
    monkeypatch.setenv("ROTATOR_DATABASE_URL", url)
    monkeypatch.setenv("ROTATOR_VAR_DIR", str(tmp_path / "var"))
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


SchedulerFactory = Callable[[], YamlScheduler]


@pytest.fixture
def make_scheduler(fresh_redis_url: str, beat_env: Database) -> Iterator[SchedulerFactory]:
    """Schedulers (each with its own Celery app) on the test's Redis; closed after."""
    made: list[tuple[Celery, YamlScheduler]] = []

    def make() -> YamlScheduler:
        app = Celery(f"beat-test-{len(made)}", set_as_current=False)
        app.conf.update(
            broker_url=fresh_redis_url, task_serializer="json", beat_max_loop_interval=1
        )
        scheduler = YamlScheduler(app=app)
        made.append((app, scheduler))
        return scheduler

    yield make
    for app, scheduler in made:
        scheduler.close()
        app.close()


def sent(redis_url: str) -> list[dict[str, Any]]:
    """The task messages waiting in the default queue: id, task, args, kwargs."""
    client = Redis.from_url(redis_url)
    try:
        raw = client.lrange("celery", 0, -1)
    finally:
        client.close()
    messages = []
    for item in reversed(raw):  # LPUSH: newest first
        message = json.loads(item)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        headers = message["headers"]
        messages.append({"id": headers["id"], "task": headers["task"], "args": args, **kwargs})
    return messages


def add_run(database: Database, secret: str, status: str, age: timedelta, **extra: Any) -> str:
    run_id = uuid.uuid4().hex
    started = utcnow() - age
    with database.session() as session:
        session.add(
            Run(
                id=run_id,
                secret=secret,
                trigger="schedule",
                status=status,
                started_at=started,
                finished_at=None if status == "running" else started + timedelta(seconds=1),
                **extra,
            )
        )
    return run_id


def test_due_secrets_are_sent_once_with_names_and_a_slot_task_id(
    write_schedules: SchedulesWriter, make_scheduler: SchedulerFactory, fresh_redis_url: str
) -> None:
    write_schedules(schedules_text(secret_block("db-a"), secret_block("db-b")))
    scheduler = make_scheduler()
    for _ in range(3):
        scheduler.tick()
    messages = sent(fresh_redis_url)
    assert sorted(m["args"][0] for m in messages) == ["db-a", "db-b"]
    for message in messages:
        assert message["task"] == "rotator.rotate"
        assert message["args"] == [message["args"][0]]  # a name, nothing else
        assert (message["trigger"], message["slot"]) == ("schedule", "first")
        assert message["id"] == task_id(message["args"][0], "first")
    assert set(scheduler.schedule) == {"db-a", "db-b"}


def test_a_recent_success_is_not_due_and_long_downtime_sends_one_slot(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    beat_env: Database,
) -> None:
    write_schedules(schedules_text(secret_block("fresh"), secret_block("stale")))
    add_run(beat_env, "fresh", "succeeded", timedelta(hours=2))
    add_run(beat_env, "stale", "succeeded", timedelta(days=10))
    scheduler = make_scheduler()
    for _ in range(3):
        scheduler.tick()
    # A restarted beat (a new process) sends nothing more for the same history.
    make_scheduler().tick()
    messages = sent(fresh_redis_url)
    assert [m["args"][0] for m in messages] == ["stale"]
    assert messages[0]["slot"].startswith("every:")


def test_an_abandoned_run_is_resumed_and_a_live_one_is_left_alone(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    beat_env: Database,
) -> None:
    write_schedules(schedules_text(secret_block("dead"), secret_block("live")))
    for name in ("dead", "live"):
        add_run(beat_env, name, "succeeded", timedelta(hours=1))
    dead = add_run(beat_env, "dead", "running", timedelta(minutes=5))
    add_run(beat_env, "live", "running", timedelta(minutes=1))
    set_lease(beat_env, "dead", owner="gone", fence=3, expires_at=utcnow() - timedelta(seconds=2))
    set_lease(beat_env, "live", owner="busy", fence=1, expires_at=utcnow() + timedelta(minutes=5))
    make_scheduler().tick()
    messages = sent(fresh_redis_url)
    assert [(m["args"][0], m["slot"]) for m in messages] == [("dead", f"resume:{dead}:3")]


def restart(make_scheduler: SchedulerFactory) -> None:
    """One beat process's life: start, lead (no other beat is left), tick, stop."""
    scheduler = make_scheduler()
    with capture_logs() as logs:
        scheduler.tick()
    scheduler.close()
    assert any(e["event"] == "beat.leader" for e in logs)


def age_claim(database: Database, secret: str, slot: str, age: timedelta) -> None:
    with database.session() as session:
        claim = session.scalars(
            select(SlotClaim).where(SlotClaim.secret == secret, SlotClaim.slot == slot)
        ).one()
        claim.claimed_at = utcnow() - age


def test_a_slot_claimed_by_a_recorded_run_is_not_sent_again(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    beat_env: Database,
) -> None:
    """However old the claim: its run is in history, so the slot was handled."""
    write_schedules(schedules_text(secret_block("db-a")))
    run_id = add_run(beat_env, "db-a", "skipped", timedelta(days=1))
    assert History(beat_env).claim_slot("db-a", "first", run_id)
    age_claim(beat_env, "db-a", "first", timedelta(days=1))
    make_scheduler().tick()
    assert sent(fresh_redis_url) == []


def test_an_orphaned_slot_claim_is_sent_again_under_the_same_task_id(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    beat_env: Database,
) -> None:
    """A worker claimed the slot, then died or gave up before its run was recorded."""
    write_schedules(schedules_text(secret_block("db-a")))
    add_run(beat_env, "db-a", "succeeded", timedelta(days=3))
    restart(make_scheduler)
    (message,) = sent(fresh_redis_url)
    Redis.from_url(fresh_redis_url).delete("celery")  # consumed by a worker ...
    assert History(beat_env).claim_slot("db-a", message["slot"], message["id"])  # ... claimed
    restart(make_scheduler)  # a fresh claim: the worker may be starting the run right now
    assert sent(fresh_redis_url) == []
    age_claim(beat_env, "db-a", message["slot"], timedelta(hours=1))  # no run came of it
    restart(make_scheduler)
    assert [(m["id"], m["slot"]) for m in sent(fresh_redis_url)] == [
        (message["id"], message["slot"])
    ]
    # The worker that receives it takes the slot again under that run id.
    assert History(beat_env).claim_slot("db-a", message["slot"], message["id"])


def test_a_sent_message_that_is_lost_is_sent_again_by_the_running_beat(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    beat_env: Database,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    add_run(beat_env, "db-a", "succeeded", timedelta(days=3))
    scheduler = make_scheduler()
    scheduler.refresh_interval, scheduler.resend_after = 0.2, 1.0
    scheduler.tick()
    (message,) = sent(fresh_redis_url)
    Redis.from_url(fresh_redis_url).delete("celery")  # lost: no worker ever claims it
    time.sleep(0.3)
    scheduler.tick()  # refreshed, but sent a moment ago: not sent again yet
    assert sent(fresh_redis_url) == []
    time.sleep(1.0)
    scheduler.tick()
    assert [(m["id"], m["slot"]) for m in sent(fresh_redis_url)] == [
        (message["id"], message["slot"])
    ]


def test_resending_waits_a_rotation_lease_and_two_refreshes_by_default(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    monkeypatch.setenv("ROTATOR_LEASE_TTL_SECONDS", "30")
    scheduler = make_scheduler()
    assert scheduler.refresh_interval == 5.0  # 5 x beat_max_loop_interval (1 s)
    assert scheduler.resend_after == 30.0 + 2 * 5.0


def test_edits_take_effect_and_an_invalid_edit_keeps_the_last_good_schedule(
    write_schedules: SchedulesWriter, make_scheduler: SchedulerFactory, fresh_redis_url: str
) -> None:
    path = write_schedules(schedules_text(secret_block("one", "cron: '0 3 * * *'")))
    scheduler = make_scheduler()
    scheduler.tick()
    assert set(scheduler.schedule) == {"one"} and sent(fresh_redis_url) == []

    write_schedules(schedules_text(secret_block("one"), secret_block("two")))
    scheduler.tick()
    assert set(scheduler.schedule) == {"one", "two"}
    assert sorted(m["args"][0] for m in sent(fresh_redis_url)) == ["one", "two"]

    bad = schedules_text(secret_block("one", "every: 30x"), secret_block("three", "cron: nope"))
    path.write_text(bad)
    with capture_logs() as logs:
        scheduler.tick()
    invalid = [e for e in logs if e["event"] == "beat.schedule_invalid"]
    assert len(invalid) == 1 and len(invalid[0]["problems"]) == 2
    assert "30x" in invalid[0]["problems"][0] and "nope" in invalid[0]["problems"][1]
    assert set(scheduler.schedule) == {"one", "two"}

    write_schedules(schedules_text(secret_block("two")))
    scheduler.tick()
    assert set(scheduler.schedule) == {"two"}
    assert len(sent(fresh_redis_url)) == 2


def test_two_schedulers_on_one_redis_send_each_slot_once(
    write_schedules: SchedulesWriter, make_scheduler: SchedulerFactory, fresh_redis_url: str
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    leader, follower = make_scheduler(), make_scheduler()
    leader.tick()
    follower.tick()
    assert len(sent(fresh_redis_url)) == 1
    # The leader stops; the follower takes over and sends what becomes due.
    leader.close()
    write_schedules(schedules_text(secret_block("db-a"), secret_block("db-b")))
    follower.tick()
    # db-a is sent again (no worker claimed it) under the same task id: still one task.
    ids = {m["id"] for m in sent(fresh_redis_url)}
    assert ids == {task_id("db-a", "first"), task_id("db-b", "first")}


def test_a_history_outage_is_logged_and_beat_keeps_ticking(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    nowhere = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/history"
    monkeypatch.setenv("ROTATOR_DATABASE_URL", nowhere)
    with capture_logs() as logs:
        scheduler = make_scheduler()
        waits = [scheduler.tick() for _ in range(20)]
        first = [e for e in logs if e["event"] == "beat.history_unavailable"]
        scheduler._next_refresh = 0.0  # the retry time has come
        scheduler.tick()
    assert all(wait > 0.05 for wait in waits)  # waits for the retry time, never spins
    outages = [e for e in logs if e["event"] == "beat.history_unavailable"]
    assert len(first) == 1 and "history database" in first[0]["error"]  # one try, not twenty
    assert len(outages) == 2 and outages[1]["retry_in"] == 2 * outages[0]["retry_in"]
    assert sent(fresh_redis_url) == []


def test_a_lazy_scheduler_does_no_io(
    fresh_redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`celery beat --detach` and `inspect` build lazy instances: nothing may be opened."""
    monkeypatch.setenv("ROTATOR_SCHEDULES", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("ROTATOR_DATABASE_URL", f"sqlite:///{tmp_path / 'never' / 'h.db'}")
    app = Celery("lazy", set_as_current=False)
    app.conf.update(broker_url=fresh_redis_url)
    scheduler = YamlScheduler(app=app, lazy=True)
    assert scheduler.schedule == {}
    assert not (tmp_path / "never").exists()
    app.close()


def test_the_history_lease_elects_one_leader_when_the_broker_is_not_redis(
    beat_env: Database,
) -> None:
    first = leadership_for("filesystem://", beat_env, ttl=30)
    second = leadership_for("filesystem://", beat_env, ttl=30)
    assert isinstance(first, LeaseLeadership)
    assert first.ensure() and not second.ensure()
    assert first.ensure()  # extended, still the leader
    first.release()
    assert second.ensure() and not first.ensure()


def test_a_lost_redis_lock_is_taken_again(fresh_redis_url: str, beat_env: Database) -> None:
    leader = leadership_for(fresh_redis_url, beat_env, ttl=30)
    other = leadership_for(fresh_redis_url, beat_env, ttl=30)
    assert isinstance(leader, RedisLeadership)
    assert leader.ensure() and not other.ensure()
    client = Redis.from_url(fresh_redis_url)
    client.delete(REDIS_KEY)  # the lock expired (a long pause, a Redis restart)
    client.close()
    assert other.ensure()  # whoever ticks first leads; the old leader notices
    assert not leader.ensure()
    other.release()
    assert leader.ensure()
    leader.release()


def test_a_redis_error_keeps_the_lock_and_the_next_tick_leads_again(
    fresh_redis_url: str, beat_env: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout on extend is not a lost lock: our key still stands, so keep its token."""
    leader = leadership_for(fresh_redis_url, beat_env, ttl=30)
    other = leadership_for(fresh_redis_url, beat_env, ttl=30)
    assert isinstance(leader, RedisLeadership) and leader.ensure()

    def blip(*_: object, **__: object) -> bool:
        raise RedisTimeout("Timeout reading from socket")

    with monkeypatch.context() as patch:
        patch.setattr(leader._lock, "extend", blip)
        assert not leader.ensure()  # not leading this tick: unknown
    assert not other.ensure()  # the key is still ours
    assert leader.ensure() and leader.ensure()
    leader.release()
    assert other.ensure()
    other.release()


def test_a_redis_socket_broker_leads_and_sends_over_the_socket(
    beat_env: Database, tmp_path: Path, write_schedules: SchedulesWriter
) -> None:
    """kombu's redis+socket:// URL is redis-py's unix://: beat starts, leads and sends."""
    assert (
        redis_client_url("redis+socket:///run/r.sock?virtual_host=3") == "unix:///run/r.sock?db=3"
    )
    assert redis_client_url("redis://h:1/0") == "redis://h:1/0"
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["/usr/bin/redis-server", "--port", "0", "--unixsocket", str(sock), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app = Celery("sock", set_as_current=False)
    app.conf.update(broker_url=f"redis+socket://{sock}", task_serializer="json")
    try:
        client = Redis(unix_socket_path=str(sock))
        deadline = time.monotonic() + 20
        while not sock.exists() or not client.ping():
            assert time.monotonic() < deadline, "redis-server did not start on its socket"
            time.sleep(0.05)
        write_schedules(schedules_text(secret_block("db-a")))
        scheduler = YamlScheduler(app=app)
        scheduler.tick()
        assert isinstance(scheduler._leader, RedisLeadership)
        assert client.exists(REDIS_KEY)
        assert [m["args"] for m in sent(f"unix://{sock}")] == [["db-a"]]
        scheduler.close()
        client.close()
    finally:
        app.close()
        server.terminate()
        server.wait(10)


def test_a_secret_may_not_take_beats_lease_name(write_schedules: SchedulesWriter) -> None:
    path = write_schedules(schedules_text(secret_block(f'"{LEASE_NAME}"')))
    with pytest.raises(ConfigError) as raised:
        load_plan(path)
    assert any("reserved for beat" in p for p in raised.value.problems or [str(raised.value)])


def count_history_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts beat's bulk history reads (the real function still runs)."""
    calls = [0]
    real = beat_module.load_states

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(beat_module, "load_states", counted)
    return calls


def test_a_follower_with_a_due_slot_waits_instead_of_rereading_history(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    fresh_redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    leader, follower = make_scheduler(), make_scheduler()
    leader.tick()
    assert len(sent(fresh_redis_url)) == 1  # db-a's first slot: due, and the leader's to send
    reads = count_history_reads(monkeypatch)
    waits = [follower.tick() for _ in range(20)]
    assert min(waits) > 0.5, waits  # max_interval (1 s), not a 50 ms spin
    assert reads[0] <= 1
    assert len(sent(fresh_redis_url)) == 1


def test_a_leader_during_a_redis_outage_waits_too(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))  # due at once
    scheduler = make_scheduler()
    assert scheduler._leader is not None
    scheduler._leader.release()
    scheduler._leader = RedisLeadership(f"redis://127.0.0.1:{free_port()}/0", ttl=5)  # down
    reads = count_history_reads(monkeypatch)
    with capture_logs() as logs:
        waits = [scheduler.tick() for _ in range(10)]
    assert min(waits) > 0.5, waits
    assert reads[0] <= 1
    assert any(e["event"] == "beat.leadership_unknown" for e in logs)


def test_a_leader_backs_off_a_down_history_database_with_a_slot_due(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    beat_env: Database,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    add_run(beat_env, "db-a", "succeeded", timedelta(days=1) - timedelta(seconds=0.5))
    scheduler = make_scheduler()
    scheduler.tick()  # the slot starts within 1.5 s (window 1s)
    time.sleep(1.6)
    nowhere = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/history")
    scheduler._database, history = nowhere, scheduler._database  # the history DB goes down
    try:
        with capture_logs() as logs:
            waits = [scheduler.tick() for _ in range(10)]
    finally:
        scheduler._database = history
        nowhere.dispose()
    outages = [e for e in logs if e["event"] == "beat.history_unavailable"]
    assert min(waits) > 0.5, waits
    assert len(outages) == 1, outages  # one attempt, then wait for the retry time


def schedule_retirement(database: Database, secret: str, due_in: timedelta) -> Retirement:
    row = Retirement(
        secret=secret,
        version_id=f"v-{secret}",
        run_id="r" * 32,
        rotator="api-key",
        target_digest="0" * 64,
        due_at=utcnow() + due_in,
        status="scheduled",
        attempts=0,
    )
    with database.session() as session:
        session.add(row)
    return row


def test_a_due_retirement_is_sent_once_under_a_task_id_of_its_due_time(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    beat_env: Database,
    fresh_redis_url: str,
) -> None:
    write_schedules(schedules_text(secret_block("db-a"), secret_block("db-b")))
    for name in ("db-a", "db-b"):
        add_run(beat_env, name, "succeeded", timedelta(hours=1))  # no rotation is due
    due = schedule_retirement(beat_env, "db-a", -timedelta(minutes=1))
    schedule_retirement(beat_env, "db-b", timedelta(hours=1))  # not yet
    schedule_retirement(beat_env, "gone", -timedelta(minutes=1))  # no longer declared
    scheduler = make_scheduler()
    for _ in range(3):
        scheduler.tick()
    (message,) = sent(fresh_redis_url)
    assert (message["task"], message["args"]) == ("rotator.retire", ["db-a"])
    assert message["id"] == task_id("db-a", retire_slot(due.due_at))


def test_a_retirement_postponed_after_a_failure_is_sent_again_at_its_new_time(
    write_schedules: SchedulesWriter,
    make_scheduler: SchedulerFactory,
    beat_env: Database,
    fresh_redis_url: str,
) -> None:
    write_schedules(schedules_text(secret_block("db-a")))
    add_run(beat_env, "db-a", "succeeded", timedelta(hours=1))
    row = schedule_retirement(beat_env, "db-a", -timedelta(minutes=5))
    scheduler = make_scheduler()
    scheduler.tick()
    with beat_env.session() as session:  # what a failed attempt does: a later due time
        stored = session.get(Retirement, row.id)
        assert stored is not None
        stored.due_at = utcnow() - timedelta(seconds=1)
        stored.attempts = 1
    scheduler._next_refresh = 0.0  # the periodic refresh, without waiting for it
    scheduler.tick()
    messages = sent(fresh_redis_url)
    assert [m["task"] for m in messages] == ["rotator.retire", "rotator.retire"]
    assert messages[0]["id"] != messages[1]["id"]
