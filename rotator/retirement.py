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

import hashlib
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select, update
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.errors import CredentialRejected, LockLost, RotatorError, TransientError
from rotator.guards import shares_value
from rotator.history import Database, RetireLater, Retirement, utcnow
from rotator.locks import SecretLease
from rotator.logging import scrub, secret_values
from rotator.schedule import SecretSpec
from rotator.stores import SecretVersion, Stage

if TYPE_CHECKING:
    from rotator.engine import Engine

log = structlog.get_logger("rotator.retirement")

#: A failed retirement is tried again after this long, doubling per attempt up to the cap,
#: and given up (revoke by hand) after MAX_ATTEMPTS attempts: about two days.
RETRY_AFTER = timedelta(minutes=1)
RETRY_AFTER_MAX = timedelta(hours=1)
MAX_ATTEMPTS = 50
#: Runs that wait for a retirement that must happen before promote (the value is about to
#: leave the store), before the rotation goes on and the retirement is given up.
EARLY_ATTEMPTS = 5


def retires(rotator: type[SecretRotator] | SecretRotator) -> bool:
    """True when the rotator's `retire` does something (it overrides the base no-op)."""
    cls = rotator if isinstance(rotator, type) else type(rotator)
    return cls.retire is not SecretRotator.retire


@dataclass(frozen=True)
class RetireOutcome:
    """What one retirement attempt did; names and ids only, never a value."""

    secret: str
    version_id: str
    #: retired, retry (tried again at `next_at`), cancelled (in use again), failed (given up)
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

    def scheduled(self, secret: str | None = None, given_up: bool = False) -> list[Retirement]:
        """Every retirement still to do (of one secret), soonest first; with `given_up`, those
        given up too (their credentials must be revoked by hand)."""
        statuses = ("scheduled", "failed") if given_up else ("scheduled",)
        with self.database.session() as session:
            query = select(Retirement).where(Retirement.status.in_(statuses))
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


def target_digest(spec: SecretSpec) -> str:
    """A digest of the secret's target block: a retirement is done against that target only."""
    return hashlib.sha256(spec.target.model_dump_json().encode()).hexdigest()


def retire_later(
    spec: SecretSpec,
    rotator: SecretRotator,
    outgoing: SecretVersion | None,
    kept: Credential,
) -> RetireLater | None:
    """The retirement to schedule for `outgoing` (the old CURRENT, now PREVIOUS), if any: none
    when the rotator retires nothing, or when `kept` (the new CURRENT) shares a value with it."""
    if outgoing is None or not retires(rotator) or shares_value(outgoing.credential, [kept]):
        return None
    due_at = utcnow() + spec.grace
    return RetireLater(spec.name, outgoing.version_id, due_at, spec.rotator, target_digest(spec))


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
        in_use = [v.credential for v in (stages[Stage.CURRENT], stages[Stage.PENDING]) if v]
        retire = _Retire(engine, spec, rotator, lease, table, in_use, early=False)
        with _scrubbed(rotator, spec, stages.values()):
            return [retire(row, stages[Stage.PREVIOUS]) for row in due]


def retire_outgoing(
    engine: Engine,
    spec: SecretSpec,
    rotator: SecretRotator,
    previous: SecretVersion | None,
    in_use: list[Credential],
    lease: SecretLease,
) -> RetireOutcome | None:
    """Retire the PREVIOUS version now if it is due to be retired at all: the caller is about
    to push it out of the store, after which nothing could revoke it.

    `in_use` are the values that stay (CURRENT, the new value): a PREVIOUS sharing one is not
    revoked. A transient failure is raised as TransientError, so the caller's step fails and
    is tried again while the value is still in the store; any other failure is recorded as
    given up (revoke by hand) and the caller goes on.
    """
    if previous is None or not retires(rotator):
        return None
    table = Retirements(engine.history.database)
    row = table.of_version(spec.name, previous.version_id)
    if row is None:
        return None
    retire = _Retire(engine, spec, rotator, lease, table, in_use, early=True)
    with (
        _scrubbed(rotator, spec, [previous]),
        secret_values([value for credential in in_use for value in credential.secret_values()]),
    ):
        return retire(row, previous)


@contextmanager
def _scrubbed(
    rotator: SecretRotator, spec: SecretSpec, versions: Iterable[SecretVersion | None]
) -> Iterator[None]:
    """Every value a retirement handles is cut out of its error texts and logs: the stages
    and the admin secret's CURRENT (a provider's error may quote either)."""
    values = [v for version in versions if version for v in version.credential.secret_values()]
    if spec.admin_secret is not None:
        with suppress(RotatorError):
            values += rotator.context.lookup_secret(spec.admin_secret).secret_values()
    with secret_values(values):
        yield


@dataclass
class _Retire:
    """One pass of retirements of one secret, under its lease."""

    engine: Engine
    spec: SecretSpec
    rotator: SecretRotator
    lease: SecretLease
    table: Retirements
    in_use: list[Credential]
    early: bool

    def __call__(self, row: Retirement, previous: SecretVersion | None) -> RetireOutcome:
        spec = self.spec
        bound = log.bind(secret=spec.name, version_id=row.version_id, run_id=row.run_id)
        problem = self._mismatch(row, previous)
        if problem is not None:
            return self._close(row, "failed", problem, bound)
        assert previous is not None
        if shares_value(previous.credential, self.in_use):
            reason = "its value is in use again (adopted or current): nothing was revoked"
            return self._close(row, "cancelled", reason, bound)
        started = time.monotonic()
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(spec.max_attempts),
                wait=wait_exponential(multiplier=self.engine.retry_wait_seconds, max=30),
                retry=retry_if_exception_type(TransientError),
                reraise=True,
            ):
                with attempt:
                    self.lease.check()
                    self.rotator.retire(previous.credential)
        except LockLost:
            raise
        except RotatorError as exc:
            return self._failed(row, exc, bound)
        elapsed = int((time.monotonic() - started) * 1000)
        detail = f"retired version {row.version_id}" + (
            " early: a newer version replaces it in the store" if self.early else ""
        )
        self.table.finish(row.id, "retired")
        self.engine.history.record_step(row.run_id, "retire", "ok", elapsed, detail)
        bound.info("retirement.retired", early=self.early)
        return RetireOutcome(spec.name, row.version_id, "retired")

    def _mismatch(self, row: Retirement, previous: SecretVersion | None) -> str | None:
        """Why this retirement cannot be done from here (the reason says what to do)."""
        spec = self.spec
        if previous is None or previous.version_id != row.version_id:
            return (
                f"version {row.version_id} is no longer PREVIOUS in store {spec.store!r}, so it "
                "cannot be retired from here; if the target still accepts it, revoke it by hand"
            )
        if row.rotator != spec.rotator or row.target_digest != target_digest(spec):
            what = (
                "target block"
                if row.rotator == spec.rotator
                else f"rotator (from {row.rotator!r} to {spec.rotator!r})"
            )
            return (
                f"the {what} of {spec.name!r} changed since version {row.version_id} was made, "
                "so it is not retired against the new one; if the old target still accepts it, "
                "revoke it by hand"
            )
        return None

    def _failed(self, row: Retirement, exc: RotatorError, bound: Any) -> RetireOutcome:
        """A transient or refused attempt is tried again later (an early one: raised, so the
        rotation that needs the slot is retried); anything else is given up."""
        error = scrub(f"{type(exc).__name__}: {exc}")
        retry_later = isinstance(exc, TransientError | CredentialRejected)
        attempts = row.attempts + 1
        if not retry_later or attempts >= MAX_ATTEMPTS:
            return self._close(row, "failed", f"{error}; revoke it by hand", bound)
        if self.early:
            # The rotation waits (fails and is retried) for a few tries, then goes on: a target
            # that never lets the old value go must not stop rotations for good.
            if not isinstance(exc, TransientError) or attempts >= EARLY_ATTEMPTS:
                return self._close(row, "failed", f"{error}; revoke it by hand", bound)
            self.table.postpone(row.id, attempts, error, row.due_at)
            self.engine.history.record_step(row.run_id, "retire", "retry", None, error)
            raise TransientError(
                f"the previous version {row.version_id} must be retired before it leaves the "
                f"store, and that failed (attempt {attempts} of {EARLY_ATTEMPTS}): {error}"
            )
        next_at = utcnow() + retry_delay(attempts)
        self.table.postpone(row.id, attempts, error, next_at)
        self.engine.history.record_step(row.run_id, "retire", "retry", None, error)
        bound.warning("retirement.retrying", error=error, next_at=next_at.isoformat())
        return RetireOutcome(self.spec.name, row.version_id, "retry", error, next_at.isoformat())

    def _close(self, row: Retirement, status: str, reason: str, bound: Any) -> RetireOutcome:
        self.table.finish(row.id, status, reason)
        self.engine.history.record_step(
            row.run_id, "retire", "error" if status == "failed" else "ok", None, reason
        )
        getattr(bound, "error" if status == "failed" else "info")(
            f"retirement.{status}", reason=reason
        )
        return RetireOutcome(row.secret, row.version_id, status, reason)
