"""Retirement after grace: revoke the PREVIOUS credential once clients had time to move on.

A successful rotation (or adoption) of a secret whose rotator retires credentials (API
keys, Vault leases) records a `Retirement` row in the same transaction as its outcome:
the old CURRENT's version id and the time its grace period ends. Beat sends
`rotator.retire(name)` for secrets with a row due (and `rotator retire` runs them
inline), so a restart never forgets one. A retirement runs under the secret's lease
and reads the value from the store, where it still is as PREVIOUS; transient errors
retry with backoff inside the attempt and then again later (the row's `due_at` moves
on), and every attempt is a `retire` step of the run that made the version PREVIOUS.

A rotation or adoption that would push a version with a scheduled retirement out of
the store (its PREVIOUS slot is about to be reused) retires it first, even before its
grace has passed: once the value leaves the store nothing could revoke it any more.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select, update
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from rotator.base import SecretRotator
from rotator.errors import LockLost, RotatorError, TransientError
from rotator.history import Database, Retirement, utcnow
from rotator.locks import SecretLease
from rotator.logging import scrub, secret_values
from rotator.schedule import SecretSpec
from rotator.stores import SecretVersion, Stage

if TYPE_CHECKING:
    from rotator.engine import Engine

log = structlog.get_logger("rotator.retirement")

#: A failed retirement is tried again after this long, doubling per attempt up to the cap.
RETRY_AFTER = timedelta(minutes=1)
RETRY_AFTER_MAX = timedelta(hours=1)


def retires(rotator: type[SecretRotator] | SecretRotator) -> bool:
    """True when the rotator's `retire` does something (it overrides the base no-op)."""
    cls = rotator if isinstance(rotator, type) else type(rotator)
    return cls.retire is not SecretRotator.retire


@dataclass(frozen=True)
class RetireOutcome:
    """What one retirement attempt did; names and ids only, never a value."""

    secret: str
    version_id: str
    #: retired, retry (tried again at `next_at`), failed (given up)
    outcome: str
    error: str | None = None
    next_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retirements:
    """The queries of the `retirements` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def due(self, secret: str, now: datetime) -> list[Retirement]:
        with self.database.session() as session:
            query = (
                select(Retirement)
                .where(
                    Retirement.secret == secret,
                    Retirement.status == "scheduled",
                    Retirement.due_at <= now,
                )
                .order_by(Retirement.due_at, Retirement.id)
            )
            return list(session.scalars(query))

    def scheduled(self, secret: str | None = None) -> list[Retirement]:
        """Every retirement still to do (of one secret), soonest first."""
        with self.database.session() as session:
            query = select(Retirement).where(Retirement.status == "scheduled")
            if secret is not None:
                query = query.where(Retirement.secret == secret)
            return list(session.scalars(query.order_by(Retirement.due_at, Retirement.id)))

    def of_version(self, secret: str, version_id: str) -> Retirement | None:
        with self.database.session() as session:
            query = select(Retirement).where(
                Retirement.secret == secret,
                Retirement.version_id == version_id,
                Retirement.status == "scheduled",
            )
            return session.scalars(query).first()

    def next_due(self) -> dict[str, datetime]:
        """Each secret's soonest scheduled retirement (one query, for beat)."""
        with self.database.session() as session:
            rows = session.execute(
                select(Retirement.secret, func.min(Retirement.due_at))
                .where(Retirement.status == "scheduled")
                .group_by(Retirement.secret)
            ).all()
        return {secret: due for secret, due in rows}

    def finish(self, retirement_id: int, status: str, error: str | None = None) -> None:
        with self.database.statement() as session:
            session.execute(
                update(Retirement)
                .where(Retirement.id == retirement_id)
                .values(status=status, last_error=error, retired_at=utcnow())
            )

    def postpone(self, retirement_id: int, attempts: int, error: str, due_at: datetime) -> None:
        with self.database.statement() as session:
            session.execute(
                update(Retirement)
                .where(Retirement.id == retirement_id)
                .values(attempts=attempts, last_error=error, due_at=due_at)
            )


def retry_delay(attempts: int) -> timedelta:
    """How long after its `attempts`-th failure a retirement is tried again."""
    doubling: int = 2 ** min(max(attempts - 1, 0), 16)
    return min(RETRY_AFTER * doubling, RETRY_AFTER_MAX)


def retire_due(engine: Engine, name: str, now: datetime | None = None) -> list[RetireOutcome]:
    """Retire every version of secret `name` whose grace period has passed.

    RotationInProgress (from the lease) when a rotation holds the secret: try later.
    """
    spec = engine.plan.secret(name)
    table = Retirements(engine.history.database)
    now = now or utcnow()
    if not table.due(name, now):
        return []
    with engine.leases.hold(name, f"retire-{uuid.uuid4().hex}") as lease:
        due = table.due(name, now)  # again, under the lease: another worker may have done them
        if not due:
            return []
        stages = engine.store_for(spec).read_stages(spec.path)
        rotator = engine.rotator_for(spec)
        return [
            _retire(engine, spec, rotator, row, stages[Stage.PREVIOUS], lease, table, early=False)
            for row in due
        ]


def retire_outgoing(
    engine: Engine,
    spec: SecretSpec,
    rotator: SecretRotator,
    previous: SecretVersion | None,
    lease: SecretLease,
) -> RetireOutcome | None:
    """Retire the PREVIOUS version now if it is due to be retired at all: the caller is about
    to push it out of the store. A failure is recorded and logged, never raised: the caller's
    rotation must go on, and the version could not be retired later anyway."""
    if previous is None or not retires(rotator):
        return None
    table = Retirements(engine.history.database)
    row = table.of_version(spec.name, previous.version_id)
    if row is None:
        return None
    return _retire(engine, spec, rotator, row, previous, lease, table, early=True)


def _retire(
    engine: Engine,
    spec: SecretSpec,
    rotator: SecretRotator,
    row: Retirement,
    previous: SecretVersion | None,
    lease: SecretLease,
    table: Retirements,
    early: bool,
) -> RetireOutcome:
    bound = log.bind(secret=spec.name, version_id=row.version_id, run_id=row.run_id)
    if previous is None or previous.version_id != row.version_id:
        error = (
            f"version {row.version_id} is no longer PREVIOUS in store {spec.store!r}, so it "
            "cannot be retired from here; if the target still accepts it, revoke it by hand"
        )
        return _give_up(engine, table, row, error, bound)
    started = time.monotonic()
    with secret_values(previous.credential.secret_values()):
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(spec.max_attempts),
                wait=wait_exponential(multiplier=engine.retry_wait_seconds, max=30),
                retry=retry_if_exception_type(TransientError),
                reraise=True,
            ):
                with attempt:
                    lease.check()
                    rotator.retire(previous.credential)
        except LockLost:
            raise
        except RotatorError as exc:
            error = scrub(f"{type(exc).__name__}: {exc}")
            if early:
                return _give_up(engine, table, row, error, bound)
            attempts = row.attempts + 1
            next_at = utcnow() + retry_delay(attempts)
            table.postpone(row.id, attempts, error, next_at)
            engine.history.record_step(row.run_id, "retire", "retry", None, error)
            bound.warning("retirement.retrying", error=error, next_at=next_at.isoformat())
            return RetireOutcome(spec.name, row.version_id, "retry", error, next_at.isoformat())
    elapsed = int((time.monotonic() - started) * 1000)
    detail = f"retired version {row.version_id}" + (
        " early: a newer version replaces it in the store" if early else ""
    )
    table.finish(row.id, "retired")
    engine.history.record_step(row.run_id, "retire", "ok", elapsed, detail)
    bound.info("retirement.retired", early=early)
    return RetireOutcome(spec.name, row.version_id, "retired")


def _give_up(
    engine: Engine, table: Retirements, row: Retirement, error: str, bound: Any
) -> RetireOutcome:
    table.finish(row.id, "failed", error)
    engine.history.record_step(row.run_id, "retire", "error", None, error)
    bound.error("retirement.failed", error=error)
    return RetireOutcome(row.secret, row.version_id, "failed", error)
