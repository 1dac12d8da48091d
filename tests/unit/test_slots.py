"""Slot computation: what beat sends next, from history alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from rotator.passwords import PasswordPolicy
from rotator.schedule import SecretSpec
from rotator.slots import (
    Abandoned,
    SecretState,
    next_fire,
    next_slot,
    task_id,
    window_offset,
)

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


class NoTarget(BaseModel):
    pass


def spec(
    name: str = "db",
    every: timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    window: timedelta = timedelta(0),
) -> SecretSpec:
    return SecretSpec(
        name=name,
        rotator="postgres-password",
        store="local",
        path=name,
        every=every,
        cron=cron,
        timezone=timezone,
        window=window,
        grace=timedelta(hours=1),
        max_attempts=3,
        password=PasswordPolicy(),
        rotate_on_adopt=True,
        target=NoTarget(),
    )


DAILY = spec(every=timedelta(days=1))


def test_never_rotated_every_secret_is_due_now() -> None:
    slot = next_slot(DAILY, SecretState(), NOW)
    assert (slot.reason, slot.start_at, slot.slot) == ("never-rotated", NOW, "first")


def test_every_is_due_one_interval_after_the_last_success() -> None:
    last = NOW - timedelta(hours=3)
    slot = next_slot(DAILY, SecretState(last_success=last), NOW)
    assert slot.reason == "interval"
    assert slot.due_at == slot.start_at == last + timedelta(days=1)
    assert slot.start_at > NOW


def test_the_slot_id_does_not_depend_on_the_clock() -> None:
    """Two beats (or one before and after a restart) name the same slot and task."""
    state = SecretState(last_success=NOW - timedelta(days=2))
    first = next_slot(DAILY, state, NOW)
    later = next_slot(DAILY, state, NOW + timedelta(hours=5))
    assert (first.slot, first.task_id, first.due_at) == (later.slot, later.task_id, later.due_at)


def test_missed_every_slots_collapse_into_one() -> None:
    """Ten days down with a daily schedule: one slot, due since the first miss."""
    last = NOW - timedelta(days=10)
    slot = next_slot(DAILY, SecretState(last_success=last), NOW)
    assert slot.reason == "missed"
    assert slot.due_at == last + timedelta(days=1)
    # Once that slot has run, the next one is a full interval later, not another missed one.
    after = next_slot(DAILY, SecretState(last_success=NOW), NOW + timedelta(minutes=1))
    assert after.reason == "interval" and after.due_at == NOW + timedelta(days=1)


def test_missed_cron_slots_collapse_into_the_latest() -> None:
    hourly = spec(cron="0 * * * *")
    last = NOW - timedelta(hours=7, minutes=30)
    slot = next_slot(hourly, SecretState(last_success=last), NOW + timedelta(minutes=10))
    assert slot.reason == "missed"
    assert slot.due_at == NOW  # 12:00, the latest fire, not 05:00
    assert slot.start_at <= NOW + timedelta(minutes=10)


def test_cron_is_due_at_the_next_time_after_the_last_success() -> None:
    monday_3am = spec(cron="0 3 * * 1")
    last = datetime(2026, 6, 8, 3, 0, 5, tzinfo=UTC)  # a Monday
    slot = next_slot(monday_3am, SecretState(last_success=last), NOW)
    assert slot.reason == "cron"
    assert slot.due_at == datetime(2026, 6, 15, 3, 0, tzinfo=UTC)


def test_a_never_rotated_cron_secret_waits_for_its_first_time() -> None:
    hourly = spec(cron="0 * * * *")
    seen = NOW + timedelta(minutes=1)
    slot = next_slot(hourly, SecretState(first_seen=seen), seen)
    assert slot.due_at == NOW + timedelta(hours=1)
    # Still the same slot once its time has come: it is then due, not pushed on.
    again = next_slot(hourly, SecretState(first_seen=seen), NOW + timedelta(hours=1, seconds=1))
    assert again.slot == slot.slot and again.start_at <= NOW + timedelta(hours=1, seconds=1)


def test_cron_runs_in_the_secrets_timezone() -> None:
    berlin = spec(cron="0 3 * * *", timezone="Europe/Berlin")
    slot = next_slot(berlin, SecretState(last_success=NOW), NOW)
    assert slot.due_at == datetime(2026, 6, 11, 1, 0, tzinfo=UTC)  # 03:00 CEST


def test_a_repeated_hour_fires_once_when_clocks_go_back() -> None:
    zone = ZoneInfo("Europe/Berlin")
    before = datetime(2026, 10, 24, 12, 0, tzinfo=zone)
    first = next_fire("30 2 * * *", zone, before)
    second = next_fire("30 2 * * *", zone, first)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert second == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # next day, 02:30 CET


def test_a_skipped_hour_still_fires_that_day_when_clocks_go_forward() -> None:
    zone = ZoneInfo("Europe/Berlin")
    fire = next_fire("30 2 * * *", zone, datetime(2026, 3, 28, 12, 0, tzinfo=zone))
    assert fire.astimezone(zone).date().isoformat() == "2026-03-29"
    assert next_fire("30 2 * * *", zone, fire).astimezone(zone).date().isoformat() == "2026-03-30"


def test_window_offset_is_stable_and_inside_the_window() -> None:
    window = timedelta(hours=2)
    offsets = {window_offset(f"s{i}", "every:x", window) for i in range(500)}
    assert all(timedelta(0) <= o < window for o in offsets)
    assert len(offsets) > 400  # spread out, not bunched
    assert window_offset("s1", "every:x", window) == window_offset("s1", "every:x", window)
    assert window_offset("s1", "every:x", timedelta(0)) == timedelta(0)


def test_window_delays_the_start_and_never_exceeds_an_every_period() -> None:
    short = spec(every=timedelta(minutes=10), window=timedelta(hours=4))
    last = NOW - timedelta(minutes=30)
    for name in ("a", "b", "c", "d"):
        slot = next_slot(spec(name, every=short.every, window=short.window), SecretState(last), NOW)
        assert slot.due_at <= slot.start_at < slot.due_at + timedelta(minutes=10)
    windowed = spec(cron="0 3 * * *", window=timedelta(hours=1))
    slot = next_slot(windowed, SecretState(last_success=NOW), NOW)
    assert slot.start_at - slot.due_at == window_offset("db", slot.slot, timedelta(hours=1))


def test_an_abandoned_run_is_resumed_now() -> None:
    expired = NOW - timedelta(seconds=5)
    state = SecretState(
        last_success=NOW - timedelta(minutes=1), abandoned=Abandoned("run-1", 4, expired)
    )
    slot = next_slot(DAILY, state, NOW)
    assert (slot.reason, slot.start_at, slot.slot) == ("resume", expired, "resume:run-1:4")
    # A resume that dies too leaves a higher fence: a new slot, so it is resumed again.
    again = next_slot(DAILY, SecretState(abandoned=Abandoned("run-1", 5, NOW)), NOW)
    assert again.slot != slot.slot and again.task_id != slot.task_id


def test_a_failed_run_is_retried_later_under_its_own_slot() -> None:
    failed = NOW - timedelta(minutes=5)
    state = SecretState(last_success=NOW - timedelta(days=2), last_failure=failed)
    slot = next_slot(DAILY, state, NOW)
    assert slot.reason == "retry" and slot.start_at == failed + timedelta(hours=1)
    # A failure older than the last success is history, not a reason to retry.
    old = SecretState(last_success=NOW, last_failure=failed)
    assert next_slot(DAILY, old, NOW).reason == "interval"


@pytest.mark.parametrize("slot", ["first", "every:20260610T120000Z", "resume:" + "f" * 40 + ":99"])
def test_task_ids_are_deterministic_per_secret_and_slot(slot: str) -> None:
    assert task_id("db", slot) == task_id("db", slot)
    assert task_id("db", slot) != task_id("db2", slot)
    assert len(slot) <= 64


TEN_MINUTES = spec(cron="*/10 * * * *", window=timedelta(hours=1))


def test_a_cron_window_stops_at_the_next_cron_time() -> None:
    """A 1h window on a 10-minute cron: the slot stays put and starts inside its period."""
    state = SecretState(last_success=datetime(2026, 6, 10, 11, 55, tzinfo=UTC))
    first = next_slot(TEN_MINUTES, state, NOW + timedelta(seconds=30))
    assert first.due_at == NOW and NOW <= first.start_at < NOW + timedelta(minutes=10)
    moment = NOW + timedelta(seconds=30)
    while moment < first.start_at:  # the plan, a restarted beat and beat agree until it starts
        later = next_slot(TEN_MINUTES, state, moment)
        assert (later.slot, later.start_at, later.reason) == (first.slot, first.start_at, "cron")
        moment += timedelta(seconds=20)
    assert next_slot(TEN_MINUTES, state, first.start_at).slot == first.slot  # due, unchanged


@pytest.mark.parametrize("name", [f"db-{i}" for i in range(12)])
def test_after_downtime_the_missed_cron_slot_is_the_latest_that_may_start(name: str) -> None:
    """Down from 11:55 to 12:31: 12:30 if its start (12:30 + offset) has come, else 12:20."""
    ten = spec(name, cron="*/10 * * * *", window=timedelta(hours=1))
    state = SecretState(last_success=datetime(2026, 6, 10, 11, 55, tzinfo=UTC))
    now = NOW + timedelta(minutes=31)
    slot = next_slot(ten, state, now)
    latest = NOW + timedelta(minutes=30)
    latest_start = latest + window_offset(name, "cron:20260610T123000Z", timedelta(minutes=10))
    assert slot.reason == "missed" and slot.start_at <= now
    assert slot.due_at == (latest if latest_start <= now else NOW + timedelta(minutes=20))
    assert slot.start_at < slot.due_at + timedelta(minutes=10)


def test_an_adoption_that_asks_for_a_rotation_is_due_at_once_within_the_window() -> None:
    adopted = NOW - timedelta(minutes=5)
    windowed = spec(every=timedelta(days=30), window=timedelta(hours=1))
    state = SecretState(last_success=adopted, rotate_by=adopted, adopted=True)
    slot = next_slot(windowed, state, NOW)
    assert slot.reason == "adopted"
    assert slot.due_at == adopted
    assert adopted <= slot.start_at < adopted + timedelta(hours=1)
    assert slot.slot.startswith("adopted:")
    kept = next_slot(windowed, SecretState(last_success=adopted), NOW)  # rotate_on_adopt: false
    assert (kept.reason, kept.due_at) == ("interval", adopted + timedelta(days=30))


def test_a_credential_that_expires_before_its_slot_is_rotated_before_it_expires() -> None:
    last = NOW - timedelta(hours=1)
    expiry = NOW + timedelta(hours=5)
    slot = next_slot(DAILY, SecretState(last_success=last, rotate_by=expiry), NOW)
    assert (slot.reason, slot.due_at, slot.start_at) == ("expiring", expiry, expiry)
    later = NOW + timedelta(days=3)  # the schedule comes first: no early slot
    slot = next_slot(DAILY, SecretState(last_success=last, rotate_by=later), NOW)
    assert (slot.reason, slot.due_at) == ("interval", last + timedelta(days=1))


def test_a_failure_after_an_early_slot_is_retried_as_usual() -> None:
    last = NOW - timedelta(hours=3)
    state = SecretState(
        last_success=last, rotate_by=last, adopted=True, last_failure=NOW - timedelta(hours=2)
    )
    assert next_slot(DAILY, state, NOW).reason == "retry"


def test_a_credential_made_with_little_life_left_is_not_rotated_again_at_once() -> None:
    """rotate_by already passed at the success (a short lease, a slow run): the next
    `expiring` slot comes EXPIRING_FLOOR later, not at every tick."""
    from rotator.slots import EXPIRING_FLOOR

    state = SecretState(last_success=NOW, rotate_by=NOW - timedelta(seconds=5))
    slot = next_slot(DAILY, state, NOW)
    assert (slot.reason, slot.start_at) == ("expiring", NOW + EXPIRING_FLOOR)


def test_only_an_adoption_that_asked_for_it_counts_as_adopted() -> None:
    from rotator.adoption import ROTATE_NOW_SLOT
    from rotator.beat import _rotate_requested

    assert _rotate_requested("adopted", ROTATE_NOW_SLOT)  # put --rotate
    assert not _rotate_requested("adopted", None)  # put --no-rotate
    assert not _rotate_requested("succeeded", ROTATE_NOW_SLOT)


def test_an_adopted_lease_is_rotated_before_it_expires_even_inside_the_window() -> None:
    windowed = spec(every=timedelta(hours=8), window=timedelta(hours=1))
    expiry = NOW + timedelta(minutes=5)
    state = SecretState(last_success=NOW, rotate_by=expiry, adopted=True)
    slot = next_slot(windowed, state, NOW)
    assert slot.reason == "adopted" and NOW <= slot.start_at <= expiry
    kept = next_slot(windowed, SecretState(last_success=NOW, rotate_by=expiry), NOW)
    assert (kept.reason, kept.start_at) == ("expiring", expiry)


def test_a_failure_does_not_wait_the_full_retry_delay_when_the_credential_expires() -> None:
    from rotator.slots import EXPIRING_RETRY

    failed = NOW - timedelta(minutes=1)
    state = SecretState(
        last_success=NOW - timedelta(hours=1),
        rotate_by=NOW + timedelta(minutes=10),
        last_failure=failed,
    )
    slot = next_slot(spec(every=timedelta(hours=8)), state, NOW)
    assert (slot.reason, slot.start_at) == ("retry", NOW + timedelta(minutes=10))
    state = SecretState(
        last_success=NOW - timedelta(hours=1),
        rotate_by=NOW - timedelta(hours=1),
        last_failure=failed,
    )
    assert next_slot(spec(every=timedelta(hours=8)), state, NOW).start_at == failed + EXPIRING_RETRY
