"""When a secret is next due: from history, not from a scheduler's memory.

`every:` secrets are due when the last successful rotation is older than the
interval; `cron:` secrets at the next cron time in their timezone after the
last success. A secret never rotated is due now (`every:`) or at its next
cron time (`cron:`).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from rotator.schedule import SecretSpec


def next_due(spec: SecretSpec, last_success: datetime | None, now: datetime) -> datetime:
    """The time the next rotation of `spec` should start (aware, in UTC)."""
    if spec.every is not None:
        return now if last_success is None else last_success + spec.every
    assert spec.cron is not None
    zone = ZoneInfo(spec.timezone)
    start = (last_success or now).astimezone(zone)
    following: datetime = croniter(spec.cron, start).get_next(datetime)
    return following.astimezone(ZoneInfo("UTC"))
