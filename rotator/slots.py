"""Which schedule slot of a secret is next, and when it starts: pure functions, no I/O.

Beat and `rotator plan` both call `next_slot`, so the plan shows exactly what beat does.
Due-ness comes from history (`SecretState`), never from a process's memory, so a restart
neither loses nor repeats a slot. A slot id is derived only from history and the schedule,
so two processes looking at the same history name the same slot, and the task id derived
from (secret, slot) makes a duplicate send of one slot the same Celery task.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from rotator.schedule import SecretSpec

Reason = Literal[
    "never-rotated", "interval", "cron", "missed", "resume", "retry", "adopted", "expiring"
]

#: A failed or rolled back run is retried after this long (or the schedule's period if shorter).
RETRY_DELAY = timedelta(hours=1)
#: The soonest an `expiring` slot comes after the success that made the credential.
EXPIRING_FLOOR = timedelta(minutes=1)
#: After a failure, a credential that expires is tried again this soon (not RETRY_DELAY).
EXPIRING_RETRY = timedelta(minutes=5)
#: Namespace of the task ids beat gives rotations; changing it would break deduplication.
TASK_ID_NAMESPACE = uuid.UUID("6f1c35f4-8b0e-4c53-9d55-3f1f6c0b7a21")


@dataclass(frozen=True)
class Abandoned:
    """A run recorded `running` whose lease has expired: its worker is gone."""

    run_id: str
    #: The fence of the expired lease; a resume that dies too leaves a higher one.
    fence: int
    #: When the lease expired.
    since: datetime


@dataclass(frozen=True)
class SecretState:
    """What history says about one secret (all times aware)."""

    last_success: datetime | None = None
    #: The newest failed or rolled back run's end, if later than the last success.
    last_failure: datetime | None = None
    abandoned: Abandoned | None = None
    #: When the caller first saw this secret with no success; anchors a first cron slot.
    first_seen: datetime | None = None
    #: The last success's `rotate_by`: its credential expires then; or, with `adopted`, it
    #: was an adoption that asked to be rotated at once (rotate_on_adopt / put --rotate).
    rotate_by: datetime | None = None
    adopted: bool = False


@dataclass(frozen=True)
class Slot:
    """The next rotation of a secret: which slot, when it is due and when it may start."""

    secret: str
    slot: str
    due_at: datetime
    #: due_at plus the secret's window offset; beat sends the task from this time on.
    start_at: datetime
    reason: Reason

    @property
    def task_id(self) -> str:
        return task_id(self.secret, self.slot)


def task_id(secret: str, slot: str) -> str:
    """The Celery task id of one slot: the same in every process, so a resend is one task."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{secret}\x00{slot}"))


def window_offset(secret: str, slot: str, window: timedelta) -> timedelta:
    """A stable pseudo-random delay in [0, window), spreading secrets due at one time."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        return timedelta(0)
    digest = hashlib.blake2b(f"{secret}\x00{slot}".encode(), digest_size=8).digest()
    return timedelta(seconds=int.from_bytes(digest, "big") % seconds)


def next_slot(spec: SecretSpec, state: SecretState, now: datetime) -> Slot:
    """The slot beat sends next for `spec`; `start_at <= now` means send it now."""
    if state.abandoned is not None:
        run = state.abandoned
        slot_id = f"resume:{run.run_id[:40]}:{run.fence}"
        return Slot(spec.name, slot_id, run.since, run.since, "resume")
    failure = state.last_failure
    if failure is not None and (state.last_success is None or failure > state.last_success):
        due = _retry_time(spec, failure)
        if state.rotate_by is not None:  # the credential expires: do not wait the full delay
            due = min(due, max(state.rotate_by, failure + EXPIRING_RETRY))
        return Slot(spec.name, f"retry:{stamp(failure)}", due, due, "retry")
    if spec.every is not None:
        slot = _every_slot(spec, spec.every, state.last_success, now)
    else:
        slot = _cron_slot(spec, state.last_success, state.first_seen or now, now)
    if state.adopted and state.last_success is not None:
        early: datetime | None = state.last_success
    else:
        early = state.rotate_by
    if early is None or state.last_success is None or slot.due_at <= early:
        return slot
    if state.adopted:  # `rotate_on_adopt`: at once, spread by the window like any due slot,
        adopted = _windowed(  # but never past the adopted credential's own expiry
            spec, f"adopted:{stamp(early)}", early, "adopted", slot.due_at - early
        )
        if state.rotate_by is not None and adopted.start_at > state.rotate_by:
            start = max(state.rotate_by, early)
            return Slot(spec.name, adopted.slot, early, start, "adopted")
        return adopted
    # The credential expires by itself: rotate before it does, with no window delay; but
    # never sooner than EXPIRING_FLOOR after the success (a credential that was made with
    # less life left than that would otherwise be rotated again and again at once).
    due = max(early, state.last_success + EXPIRING_FLOOR)
    return Slot(spec.name, f"expiring:{stamp(due)}", due, due, "expiring")


def _every_slot(
    spec: SecretSpec, every: timedelta, last_success: datetime | None, now: datetime
) -> Slot:
    if last_success is None:
        return Slot(spec.name, "first", now, now, "never-rotated")
    due = last_success + every
    reason: Reason = "missed" if now >= due + every else "interval"
    return _windowed(spec, f"every:{stamp(due)}", due, reason, every)


def _cron_slot(
    spec: SecretSpec, last_success: datetime | None, first_seen: datetime, now: datetime
) -> Slot:
    """The first cron time after the last success; after downtime only the latest missed one.

    A secret never rotated is due at the first cron time after `first_seen`. When a later
    cron time has passed too, the slot is the latest cron time whose start (with its
    window offset) has come, so the slot only moves when its successor may start.
    """
    assert spec.cron is not None
    zone = ZoneInfo(spec.timezone)
    due = next_fire(spec.cron, zone, last_success or first_seen)
    following = next_fire(spec.cron, zone, due)
    if following > now:
        return _cron_windowed(spec, due, following, "cron")
    latest = previous_fire(spec.cron, zone, now)
    slot = _cron_windowed(spec, latest, next_fire(spec.cron, zone, latest), "missed")
    if slot.start_at <= now:
        return slot
    prior = previous_fire(spec.cron, zone, latest - timedelta(seconds=1))
    return _cron_windowed(spec, prior, latest, "missed")


def _cron_windowed(spec: SecretSpec, due: datetime, following: datetime, reason: Reason) -> Slot:
    """A cron slot whose window never reaches the next cron time."""
    return _windowed(spec, f"cron:{stamp(due)}", due, reason, following - due)


def _windowed(
    spec: SecretSpec, slot: str, due: datetime, reason: Reason, period: timedelta
) -> Slot:
    """Offset the start inside the window, never as far as the schedule's next slot."""
    window = min(spec.window, period)
    start = due + window_offset(spec.name, slot, window)
    return Slot(spec.name, slot, due, start, reason)


def _retry_time(spec: SecretSpec, failure: datetime) -> datetime:
    if spec.every is not None:
        return failure + min(spec.every, RETRY_DELAY)
    assert spec.cron is not None
    return min(next_fire(spec.cron, ZoneInfo(spec.timezone), failure), failure + RETRY_DELAY)


def next_fire(cron: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first cron time strictly after `after`, in UTC.

    A wall-clock time that occurs twice when clocks go back fires once (its first
    occurrence), as cron daemons do; a time skipped when clocks go forward fires at
    the first valid instant after it (croniter's behaviour).
    """
    times = croniter(cron, after.astimezone(zone))
    while True:
        fire: datetime = times.get_next(datetime)
        if not _second_occurrence(fire, zone):
            return fire.astimezone(UTC)


def previous_fire(cron: str, zone: ZoneInfo, before: datetime) -> datetime:
    """The last cron time at or before `before`, in UTC (first occurrence of a repeated time)."""
    times = croniter(cron, (before + timedelta(seconds=1)).astimezone(zone))
    while True:
        fire: datetime = times.get_prev(datetime)
        if not _second_occurrence(fire, zone):
            return fire.astimezone(UTC)


def _second_occurrence(fire: datetime, zone: ZoneInfo) -> bool:
    first = fire.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return first.astimezone(UTC) != fire.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """A compact, exact UTC time for slot ids (slot ids fit in 64 characters)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ").replace(".000000Z", "Z")
