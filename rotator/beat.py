"""YamlScheduler: Celery beat driven by schedules.yaml and the rotation history.

A `celery.beat.Scheduler` whose entries are the secrets of schedules.yaml. Due-ness
comes from history (`rotator.slots`), so restarts neither lose nor repeat a slot.
History is read in bulk (last successes, failures, running runs and their leases)
once per refresh, never per secret per tick; between refreshes a heap of start
times says when the leader looks again (a follower, or a beat whose last history
read failed, waits for the periodic refresh instead). Each due slot is sent as
`rotator.rotate(name, trigger="schedule", slot=...)` with a task id derived from
(secret, slot); a slot neither run nor freshly claimed is sent again after
`resend_after` (a lost message, a worker that claimed it and died before recording
its run), which the task id and the worker's claim make one rotation. The file is
re-read when its (mtime, size, inode) changes; an invalid file is logged and the last
good schedule keeps running. Only the leader (`rotator.leader`) sends; a follower
keeps its state fresh to take over.
"""

from __future__ import annotations

import heapq
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab, schedule
from celery.signals import beat_init
from sqlalchemy import func, select, tuple_

from rotator.adoption import ROTATE_NOW_SLOT
from rotator.config import Settings, load_settings
from rotator.errors import ConfigError, RotatorError
from rotator.history import Database, Lease, Run, SlotClaim
from rotator.leader import Leadership, LeaseLeadership, leadership_for
from rotator.logging import configure_logging
from rotator.retirement import Retirements
from rotator.runtime import open_database
from rotator.schedule import Plan, SecretSpec, load_plan
from rotator.slots import Abandoned, SecretState, Slot, next_slot, stamp, task_id

log = structlog.get_logger("rotator.beat")

TASK = "rotator.rotate"
RETIRE_TASK = "rotator.retire"
#: Slot ids of retirements in the send queue start with this (rotation slots never do).
RETIRE_PREFIX = "retire:"
Signature = tuple[int, int, int] | None
_CHUNK = 400


def _configure_beat_logging(**_: object) -> None:
    """structlog as the settings say, in the beat process only (not in importers)."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)


beat_init.connect(_configure_beat_logging, weak=False)


class YamlScheduler(Scheduler):  # type: ignore[misc]  # celery ships no type hints
    """Sends each secret's due slot once; see the module docstring."""

    #: Re-read history at least this often (seconds); capped at 5 x max_interval.
    refresh_interval = 60.0
    #: The leader lock lives this many beat intervals without an extension.
    leader_ttl_intervals = 3.0
    #: Send an unclaimed (or orphan-claimed) slot again after this many seconds;
    #: None: the rotation lease TTL plus two refresh intervals.
    resend_after: float | None = None

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # No I/O here: `celery beat --detach` and `inspect` build lazy instances.
        self._settings: Settings | None = None
        self._plan: Plan | None = None
        self._signature: Signature = None
        self._database: Database | None = None
        self._leader: Leadership | None = None
        self._slots: dict[str, Slot] = {}
        self._busy: set[str] = set()
        #: The slot last sent per secret, and when (time.monotonic()).
        self._sent: dict[str, tuple[str, float]] = {}
        self._leading = False
        self._refresh_failed = False
        self._first_seen: dict[str, datetime] = {}
        #: The history state each slot was computed from, reused while both stand.
        self._known: dict[str, tuple[SecretState, Slot]] = {}
        self._due: list[tuple[float, str, str]] = []
        self._next_refresh = 0.0
        #: Consecutive history outages; each doubles the wait before the next try.
        self._outages = 0
        self._entries: dict[str, ScheduleEntry] | None = None
        #: Each secret's soonest scheduled retirement, as read at the last refresh.
        self._retire: dict[str, datetime] = {}
        self._retire_sent: dict[str, tuple[str, float]] = {}
        self._stranded: list[str] = []
        super().__init__(app, *args, **kwargs)

    # -- Celery's Scheduler interface ----------------------------------------------

    def setup_schedule(self) -> None:
        """Settings, logging, the plan and the history database; failures retry at tick."""
        self._settings = load_settings()
        self.refresh_interval = min(self.refresh_interval, max(5 * self.max_interval, 1.0))
        if self.resend_after is None:
            self.resend_after = self._settings.lease_ttl_seconds + 2 * self.refresh_interval
        self._maybe_reload()
        self._connect()

    def get_schedule(self) -> dict[str, ScheduleEntry]:
        """Entries for introspection (the base `schedule` would return `self.data`)."""
        if self._entries is None:
            plan = self._plan
            specs = plan.secrets.values() if plan is not None else ()
            self._entries = {spec.name: self._entry(spec) for spec in specs}
        return self._entries

    def set_schedule(self, schedule: dict[str, ScheduleEntry]) -> None:
        """The schedule comes from schedules.yaml; assignments are ignored."""

    schedule = property(get_schedule, set_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Reload, lead, refresh and send what is due; never raises (beat must live)."""
        try:
            if self._settings is None:
                self.setup_schedule()
            self._maybe_reload()
            if self._database is None and time.monotonic() >= self._next_refresh:
                self._connect()
            leading = self._leader.ensure() if self._leader is not None else False
            self._tick(leading)
        except Exception as exc:
            log.error("beat.tick_failed", error=f"{type(exc).__name__}: {exc}")
        return self._wait()

    def sync(self) -> None:
        """Nothing to persist: history is the schedule's state."""

    def close(self) -> None:
        if self._leader is not None:
            self._leader.release()
            self._leader = None
        if self._database is not None:
            self._database.dispose()
            self._database = None
        super().close()

    @property
    def info(self) -> str:
        source = self._settings.schedules if self._settings else "?"
        count = len(self._plan.secrets) if self._plan else 0
        return f"    . schedules -> {source} ({count} secrets)"

    # -- the work of a tick --------------------------------------------------------

    def _tick(self, leading: bool) -> None:
        self._leading = leading
        if (self._head_due() or time.monotonic() >= self._next_refresh) and not self._refresh():
            return
        if leading:
            self._send_due()

    def _head_due(self) -> bool:
        """The first queued slot may start and this beat sends it (after a good read).

        Only the leader's sends empty the queue: a follower, or a leader whose last
        history read failed, waits for `_next_refresh` instead of re-reading each tick.
        """
        if not self._leading or self._refresh_failed or not self._due:
            return False
        return self._due[0][0] <= time.time()

    def _wait(self) -> float:
        """Seconds until the leader's next start time or the next refresh, at most max_interval."""
        waits = [float(self.max_interval), self._next_refresh - time.monotonic()]
        if self._leading and not self._refresh_failed and self._due:
            waits.append(self._due[0][0] - time.time())
        return max(min(waits), 0.05)

    def _sent_recently(self, name: str, slot_id: str, now: float) -> bool:
        """This beat sent `slot_id` of `name` less than `resend_after` ago."""
        sent = self._sent.get(name)
        return sent is not None and sent[0] == slot_id and now - sent[1] < self._resend_seconds()

    def _resend_seconds(self) -> float:
        return self.resend_after if self.resend_after is not None else 0.0

    def _connect(self) -> None:
        """The history database and the leadership; any failure is logged, retried at tick."""
        assert self._settings is not None
        try:
            self._database = open_database(self._settings)
        except Exception as exc:  # beat must live: a bad URL is logged, not fatal
            error = str(exc) if isinstance(exc, RotatorError) else f"{type(exc).__name__}: {exc}"
            self._history_outage(error=error[:300])
            return
        self._outages = 0
        ttl = max(self.leader_ttl_intervals * self.max_interval, 5.0)
        broker = str(self.app.conf.broker_url or "")
        try:
            self._leader = leadership_for(broker, self._database, ttl)
        except Exception as exc:  # an unusable Redis URL: lead through the history lease
            log.error(
                "beat.leadership_fallback",
                error=f"{type(exc).__name__}: {exc}"[:300],
                detail="leading through the history database's lease; check the broker URL",
            )
            self._leader = LeaseLeadership(self._database, ttl)

    def _history_outage(self, **details: str) -> None:
        """Log the outage and wait longer before each next try (max_interval, doubling, up to
        the refresh interval), so an unreachable database is not asked many times a second."""
        self._outages += 1
        delay = min(self.max_interval * 2 ** (self._outages - 1), self.refresh_interval)
        self._next_refresh = time.monotonic() + max(delay, 0.05)
        log.error("beat.history_unavailable", attempt=self._outages, retry_in=delay, **details)

    def _refresh(self) -> bool:
        """Bulk-read history and recompute every slot; False (logged) on a history outage."""
        plan, database = self._plan, self._database
        self._refresh_failed = True
        if plan is None or database is None:
            return False
        self._next_refresh = time.monotonic() + self.refresh_interval
        try:
            states, busy = load_states(database, self._first_seen)
            retirements = Retirements(database).next_due()
        except Exception as exc:
            self._history_outage(error=type(exc).__name__, detail=str(exc)[:200])
            return False
        self._outages = 0
        self._refresh_failed = False
        now = datetime.now(UTC)
        self._busy = busy & plan.secrets.keys()
        slots: dict[str, Slot] = {}
        known = self._known
        self._known = {}
        for name, spec in plan.secrets.items():
            if name not in states and name not in self._first_seen:
                self._first_seen[name] = now
            state = states.get(name) or SecretState(first_seen=self._first_seen.get(name))
            cached = known.get(name)
            if cached is not None and cached[0] == state and cached[1].start_at > now:
                slots[name] = cached[1]  # same history, not yet due: the same slot
            else:
                try:
                    slots[name] = next_slot(spec, state, now)
                except Exception as exc:  # one bad entry must not stop the others
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("beat.entry_failed", secret=name, error=error)
                    continue
            self._known[name] = (state, slots[name])
        self._slots = slots
        # Held secrets and slots sent lately wait for a later refresh, not for every tick.
        mono = time.monotonic()
        self._due = [
            (s.start_at.timestamp(), n, s.slot)
            for n, s in slots.items()
            if n not in self._busy and not self._sent_recently(n, s.slot, mono)
        ]
        self._retire = {n: due for n, due in retirements.items() if n in plan.secrets}
        stranded = sorted(set(retirements) - plan.secrets.keys())
        if stranded and stranded != self._stranded:
            log.warning(
                "beat.retirements_stranded",
                secrets=stranded,
                detail="these secrets are no longer in schedules.yaml but have credentials "
                "waiting to be retired; declare them again, or revoke those by hand "
                "(rotator retire --list shows them)",
            )
        self._stranded = stranded
        self._due += [
            (due.timestamp(), n, retire_slot(due))
            for n, due in self._retire.items()
            if n not in self._busy and not self._retire_sent_recently(n, retire_slot(due), mono)
        ]
        heapq.heapify(self._due)
        return True

    def _retire_sent_recently(self, name: str, slot_id: str, now: float) -> bool:
        sent = self._retire_sent.get(name)
        return sent is not None and sent[0] == slot_id and now - sent[1] < self._resend_seconds()

    def _send_due(self) -> None:
        """Send every slot whose start has come, unless busy, sent lately or claimed."""
        now, mono = time.time(), time.monotonic()
        ready: list[Slot] = []
        while self._due and self._due[0][0] <= now:
            _, name, slot_id = heapq.heappop(self._due)
            if slot_id.startswith(RETIRE_PREFIX):
                self._send_retire(name, slot_id, mono)
                continue
            slot = self._slots.get(name)
            if slot is None or slot.slot != slot_id:
                continue
            if name in self._busy or self._sent_recently(name, slot_id, mono):
                continue
            ready.append(slot)
        if not ready or self._database is None:
            return
        orphan_age = timedelta(seconds=self._resend_seconds())
        claimed = claimed_slots(self._database, [(s.secret, s.slot) for s in ready], orphan_age)
        for slot in ready:
            if (slot.secret, slot.slot) in claimed:
                self._sent[slot.secret] = (slot.slot, mono)  # looked at again after resend_after
                continue
            try:
                self._send(slot)
            except Exception as exc:
                log.error("beat.send_failed", secret=slot.secret, slot=slot.slot, error=str(exc))
                return

    def _send_retire(self, name: str, slot_id: str, mono: float) -> None:
        """Send `rotator.retire(name)` for the retirement due at `slot_id`'s time."""
        due = self._retire.get(name)
        if due is None or retire_slot(due) != slot_id or name in self._busy:
            return
        if self._retire_sent_recently(name, slot_id, mono):
            return
        try:
            self.app.send_task(
                RETIRE_TASK,
                args=(name,),
                task_id=task_id(name, slot_id),
                producer=self.producer,
                headers={"celery_beat_task": True},
            )
        except Exception as exc:
            log.error("beat.send_failed", secret=name, slot=slot_id, error=str(exc))
            return
        self._retire_sent[name] = (slot_id, mono)
        log.info("beat.sent_retire", secret=name, due_at=due.isoformat())

    def _send(self, slot: Slot) -> None:
        self.app.send_task(
            TASK,
            args=(slot.secret,),
            kwargs={"trigger": "schedule", "slot": slot.slot},
            task_id=slot.task_id,
            producer=self.producer,
            headers={"celery_beat_task": True},
        )
        self._sent[slot.secret] = (slot.slot, time.monotonic())
        log.info(
            "beat.sent",
            secret=slot.secret,
            slot=slot.slot,
            reason=slot.reason,
            task_id=slot.task_id,
            due_at=slot.due_at.isoformat(),
        )

    # -- schedules.yaml ------------------------------------------------------------

    def _maybe_reload(self) -> None:
        """Load schedules.yaml when its (mtime, size, inode) changed; keep the last good plan."""
        assert self._settings is not None
        path = self._settings.schedules
        signature = file_signature(path)
        if signature == self._signature and self._plan is not None:
            return
        self._signature = signature
        try:
            plan = load_plan(path)
        except ConfigError as exc:
            kept = "the previous schedule keeps running" if self._plan else "nothing is scheduled"
            log.error("beat.schedule_invalid", file=str(path), problems=exc.problems or [str(exc)])
            log.error("beat.schedule_kept", file=str(path), detail=kept)
            return
        self._apply_plan(plan)

    def _apply_plan(self, plan: Plan) -> None:
        """Keep the state of unchanged secrets; changed, added and removed ones take effect."""
        old = self._plan.secrets if self._plan is not None else {}
        unchanged = {name for name, spec in plan.secrets.items() if old.get(name) == spec}
        for table in (self._sent, self._first_seen):
            for name in set(table) - unchanged:
                del table[name]
        changed = sorted(name for name in plan.secrets if name in old and name not in unchanged)
        log.info(
            "beat.schedule_loaded",
            file=str(plan.source),
            secrets=len(plan.secrets),
            added=sorted(set(plan.secrets) - set(old)),
            removed=sorted(set(old) - set(plan.secrets)),
            changed=changed,
        )
        self._plan = plan
        self._entries = None
        self._known = {n: k for n, k in self._known.items() if n in unchanged}
        self._next_refresh = 0.0  # recompute slots at the next tick

    def _entry(self, spec: SecretSpec) -> ScheduleEntry:
        every = spec.every
        if every is not None:
            when: Any = schedule(every, app=self.app)
        else:
            minute, hour, day, month, weekday = _cron_fields(spec.cron or "")
            when = crontab(minute, hour, weekday, day, month, app=self.app)
        return ScheduleEntry(
            name=spec.name,
            task=TASK,
            schedule=when,
            args=(spec.name,),
            kwargs={"trigger": "schedule"},
            app=self.app,
        )


def retire_slot(due: datetime) -> str:
    """The queue and task-id key of a retirement due at `due`."""
    return f"{RETIRE_PREFIX}{stamp(due)}"


def _cron_fields(cron: str) -> list[str]:
    """Five cron fields; @daily-style keywords spelled out (for introspection only)."""
    keywords = {
        "@hourly": "0 * * * *",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@weekly": "0 0 * * 0",
        "@monthly": "0 0 1 * *",
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
    }
    return keywords.get(cron.strip(), cron).split()


def file_signature(path: os.PathLike[str] | str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_states(
    database: Database, first_seen: dict[str, datetime]
) -> tuple[dict[str, SecretState], set[str]]:
    """Every secret's SecretState in three queries, and the secrets a live run holds."""
    now = datetime.now(UTC)
    succeeded = Run.status.in_(("succeeded", "adopted"))
    with database.session() as session:
        newest = (
            select(Run.secret, func.max(Run.finished_at).label("at"))
            .where(succeeded)
            .group_by(Run.secret)
            .subquery()
        )
        latest = {
            secret: (finished_at, status, rotate_by, slot)
            for secret, finished_at, status, rotate_by, slot in session.execute(
                select(Run.secret, Run.finished_at, Run.status, Run.rotate_by, Run.slot)
                .join(newest, (Run.secret == newest.c.secret) & (Run.finished_at == newest.c.at))
                .where(succeeded)
            ).all()
        }
        failures = dict(
            session.execute(
                select(Run.secret, func.max(Run.finished_at))
                .where(Run.status.in_(("failed", "rolled_back")))
                .group_by(Run.secret)
            ).all()
        )
        running = session.execute(
            select(Run.id, Run.secret, Run.started_at, Lease.fence, Lease.expires_at)
            .outerjoin(Lease, Lease.secret == Run.secret)
            .where(Run.status == "running")
            .order_by(Run.started_at)
        ).all()
    abandoned: dict[str, Abandoned] = {}
    busy: set[str] = set()
    for run_id, secret, started_at, fence, expires_at in running:
        if expires_at is not None and expires_at > now:
            busy.add(secret)
        else:  # the newest abandoned run wins (rows are oldest first)
            abandoned[secret] = Abandoned(run_id, fence or 0, expires_at or started_at)
    successes = {name: row[0] for name, row in latest.items()}
    states = {
        name: SecretState(
            last_success=successes.get(name),
            rotate_by=latest[name][2] if name in latest else None,
            adopted=name in latest and _rotate_requested(latest[name][1], latest[name][3]),
            last_failure=failures.get(name),
            abandoned=None if name in busy else abandoned.get(name),
            first_seen=first_seen.get(name),
        )
        for name in successes.keys() | failures.keys() | abandoned.keys()
    }
    return states, busy


def _rotate_requested(status: str, slot: str | None) -> bool:
    """The last success is an adoption that asked to be rotated at once (rotate_on_adopt)."""
    return status == "adopted" and slot == ROTATE_NOW_SLOT


def claimed_slots(
    database: Database, pairs: list[tuple[str, str]], orphan_age: timedelta
) -> set[tuple[str, str]]:
    """Which (secret, slot) pairs a worker has taken: claimed by a recorded run, or lately.

    A claim whose run was never recorded (the worker died or gave up between claiming and
    starting the run) is an orphan once older than `orphan_age`: the slot is sent again
    under the same task id, and the worker's claim grants it again to that run id.
    """
    claimed: set[tuple[str, str]] = set()
    fresh_since = datetime.now(UTC) - orphan_age
    with database.session() as session:
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            rows = session.execute(
                select(SlotClaim.secret, SlotClaim.slot, SlotClaim.claimed_at, Run.id)
                .outerjoin(Run, Run.id == SlotClaim.run_id)
                .where(tuple_(SlotClaim.secret, SlotClaim.slot).in_(chunk))
            ).all()
            claimed.update(
                (secret, slot)
                for secret, slot, claimed_at, run_id in rows
                if run_id is not None or claimed_at > fresh_since
            )
    return claimed
