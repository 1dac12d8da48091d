"""The history database: runs, step events, leases, embedded secret versions.

SQLAlchemy 2 typed models and the queries the engine and the CLI use. A
secret value never enters these tables except `stored_versions.ciphertext`,
which the embedded store encrypts before it gets here. The schema is created
and upgraded by alembic (`rotator/migrations`) when a process starts.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exists,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import Exists


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the history database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One rotation (or adoption) of one secret, from trigger to outcome."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(255), index=True)
    trigger: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str | None] = mapped_column(String(64))
    #: running, succeeded, rolled_back, failed, skipped, adopted, resumed
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    #: For a `resumed` trigger: the interrupted run it resumed (that run records the outcome).
    resumed_run_id: Mapped[str | None] = mapped_column(String(64))
    #: When the credential this run made stops working by itself (a lease's expiry, less a
    #: margin): the scheduler rotates before then, whatever the schedule says.
    rotate_by: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StepEvent(Base):
    """One step of a run: create, apply, test, finish, rollback, retire, adopt."""

    __tablename__ = "step_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[str] = mapped_column(String(16))
    #: ok, retry, error
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """Who may rotate a secret now; `fence` grows with every new holder."""

    __tablename__ = "leases"

    secret: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    fence: Mapped[int] = mapped_column(Integer, default=0)


class StoredVersion(Base):
    """A version of a secret in the embedded store; the value is Fernet ciphertext."""

    __tablename__ = "stored_versions"
    __table_args__ = (
        UniqueConstraint("path", "stage", name="uq_stored_versions_path_stage"),
        UniqueConstraint("path", "token", name="uq_stored_versions_path_token"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String(512), index=True)
    version_id: Mapped[str] = mapped_column(String(64), unique=True)
    token: Mapped[str] = mapped_column(String(128))
    stage: Mapped[str | None] = mapped_column(String(16))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SlotClaim(Base):
    """A schedule slot of a secret taken by one run: a second trigger for it is a no-op."""

    __tablename__ = "slot_claims"
    __table_args__ = (UniqueConstraint("secret", "slot", name="uq_slot_claims_secret_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret: Mapped[str] = mapped_column(String(255))
    slot: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Retirement(Base):
    """A credential to retire once its grace period has passed (see rotator.retirement).

    Durable on purpose: beat or `rotator retire` picks it up after any restart. `version_id`
    names the store version; the value itself never enters this table.
    """

    __tablename__ = "retirements"
    __table_args__ = (UniqueConstraint("secret", "version_id", name="uq_retirements_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret: Mapped[str] = mapped_column(String(255), index=True)
    version_id: Mapped[str] = mapped_column(String(128))
    #: The run (rotation or adoption) that made this version PREVIOUS.
    run_id: Mapped[str] = mapped_column(String(64))
    #: The rotator kind and a digest of the target block that made the version: a retirement
    #: is never done by another kind or against another target (schedules.yaml changed).
    rotator: Mapped[str] = mapped_column(String(64))
    target_digest: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: scheduled; retired; cancelled (its value is in use again: nothing to revoke); failed
    #: (given up: revoke it by hand, `last_error` says why)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: A pooled connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0
_USED_AT = "rotator_used_at"


def _ping_when_idle(engine: Engine) -> None:
    """Replace a connection the server dropped (a restart, a failover) before a statement
    fails on it, so a run survives a history database restart between its steps.

    Like SQLAlchemy's `pool_pre_ping`, but only for a connection that sat idle: a run's
    statements follow each other within milliseconds, and a ping before each of them
    would double their round trips.
    """

    def used(_dbapi: Any, record: Any, *_: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    def checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_USED_AT, 0.0) <= IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi)
        except Exception:
            alive = False
        if not alive:
            raise DisconnectionError("the history database dropped this connection")

    event.listen(engine, "connect", used)
    event.listen(engine, "checkin", used)
    event.listen(engine, "checkout", checkout)


class Database:
    """An engine and session factory for the history database, migrated on `upgrade`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            _ping_when_idle(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._statements = sessionmaker(autocommit, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def statement(self) -> Iterator[Session]:
        """For one statement (a read, or a single write that is atomic by itself): no
        BEGIN and COMMIT, so one round trip where a transaction would take three."""
        with self._statements() as session:
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start."""
        from rotator.migrations import upgrade_to_head

        with self._migration_lock():
            upgrade_to_head(self.engine)

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.is_sqlite:
            lock_path = self.url.split("///", 1)[-1] + ".migrate.lock"
            with open(lock_path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727100)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727100)"))

    def dispose(self) -> None:
        self.engine.dispose()


class HeldLease(Protocol):
    """A lease a run holds (rotator.locks.SecretLease): fenced writes name it."""

    secret: str
    owner: str
    fence: int


@dataclass(frozen=True)
class RetireLater:
    """A version of `secret` to retire at `due_at` (its grace period's end)."""

    secret: str
    version_id: str
    due_at: datetime
    rotator: str
    target_digest: str


def _still_held(lease: HeldLease) -> Exists:
    """True in the database while `lease` is the secret's current lease (no one took it over)."""
    return exists().where(
        Lease.secret == lease.secret, Lease.owner == lease.owner, Lease.fence == lease.fence
    )


class History:
    """The queries of runs and step events."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def start_run(self, run_id: str, secret: str, trigger: str, slot: str | None) -> Run:
        with self.database.session() as session:
            existing = session.get(Run, run_id)
            if existing is not None:
                existing.status = "running"
                existing.finished_at = None
                existing.error = None
                return existing
            run = Run(
                id=run_id,
                secret=secret,
                trigger=trigger,
                slot=slot,
                status="running",
                started_at=utcnow(),
            )
            session.add(run)
            return run

    def record_step(
        self,
        run_id: str,
        step: str,
        status: str,
        duration_ms: int | None = None,
        detail: str | None = None,
        fence: HeldLease | None = None,
    ) -> bool:
        """Append a step event; with `fence`, only while that lease is still the secret's
        (one statement: a run that lost its lease never writes into its successor's record)."""
        values = {
            "run_id": run_id,
            "step": step,
            "status": status,
            "at": utcnow(),
            "duration_ms": duration_ms,
            "detail": detail,
        }
        with self.database.statement() as session:
            if fence is None:
                session.execute(insert(StepEvent).values(**values))
                return True
            table = StepEvent.__table__.c
            row = select(*(literal(value, table[name].type) for name, value in values.items()))
            fenced = insert(StepEvent).from_select(list(values), row.where(_still_held(fence)))
            return bool(session.execute(fenced).rowcount)  # type: ignore[attr-defined]

    def finish_run(
        self,
        run_id: str,
        status: str,
        version_id: str | None = None,
        error: str | None = None,
        fence: HeldLease | None = None,
        rotate_by: datetime | None = None,
        retire: RetireLater | None = None,
    ) -> bool:
        """Record a run's outcome; with `fence`, only while that lease is still the secret's.

        `retire` schedules a version's retirement in the same transaction, so no recorded
        success can forget the credential it made PREVIOUS.
        """
        query = update(Run).where(Run.id == run_id)
        if fence is not None:
            query = query.where(_still_held(fence))
        values = {
            "status": status,
            "finished_at": utcnow(),
            "version_id": version_id,
            "rotate_by": rotate_by,
        }
        if retire is None:
            with self.database.statement() as session:
                result = session.execute(query.values(**values, error=error))
                return bool(result.rowcount)  # type: ignore[attr-defined]
        with self.database.session() as session:
            result = session.execute(query.values(**values, error=error))
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            known = select(Retirement.id).where(
                Retirement.secret == retire.secret, Retirement.version_id == retire.version_id
            )
            if session.execute(known).first() is None:
                session.add(
                    Retirement(
                        secret=retire.secret,
                        version_id=retire.version_id,
                        run_id=run_id,
                        due_at=retire.due_at,
                        rotator=retire.rotator,
                        target_digest=retire.target_digest,
                        status="scheduled",
                        attempts=0,
                    )
                )
            return True

    def record_resumed(
        self, run_id: str, secret: str, trigger: str, slot: str | None, resumed_run_id: str
    ) -> None:
        """`run_id` (a trigger) resumed `resumed_run_id`: a redelivery of it must not rotate
        again while that run's outcome stands."""
        with self.database.session() as session:
            run = session.get(Run, run_id) or Run(
                id=run_id, secret=secret, trigger=trigger, slot=slot, started_at=utcnow()
            )
            run.status, run.finished_at, run.resumed_run_id = "resumed", utcnow(), resumed_run_id
            session.add(run)

    def get_run(self, run_id: str) -> Run | None:
        with self.database.statement() as session:
            return session.get(Run, run_id)

    def steps(self, run_id: str) -> list[StepEvent]:
        with self.database.session() as session:
            query = select(StepEvent).where(StepEvent.run_id == run_id).order_by(StepEvent.id)
            return list(session.scalars(query))

    def runs(self, secret: str | None = None, limit: int = 50) -> list[Run]:
        with self.database.session() as session:
            query = select(Run).order_by(Run.started_at.desc(), Run.id).limit(limit)
            if secret is not None:
                query = query.where(Run.secret == secret)
            return list(session.scalars(query))

    def last_run(self, secret: str, statuses: Sequence[str] | None = None) -> Run | None:
        """The newest run of `secret` (with one of `statuses`); a trigger recorded `resumed`
        is not one: the run it resumed holds the outcome."""
        with self.database.statement() as session:
            query = select(Run).where(Run.secret == secret, Run.status != "resumed")
            if statuses is not None:
                query = query.where(Run.status.in_(statuses))
            query = query.order_by(Run.started_at.desc()).limit(1)
            return session.scalars(query).first()

    def last_success(self, secret: str) -> Run | None:
        """The newest run that left a new CURRENT (a rotation or an adoption)."""
        return self.last_run(secret, ("succeeded", "adopted"))

    def running_runs(self, secret: str) -> list[Run]:
        """Runs recorded as running; when no live lease backs them they were interrupted."""
        with self.database.statement() as session:
            query = (
                select(Run)
                .where(Run.secret == secret, Run.status == "running")
                .order_by(Run.started_at.desc())
            )
            return list(session.scalars(query))

    def claim_slot(self, secret: str, slot: str, run_id: str | None = None) -> bool:
        """Take `slot` of `secret`; False if it was taken already (by another run).

        The UNIQUE (secret, slot) constraint decides between racing triggers on every
        backend. A claim that already belongs to `run_id` is granted again, so a
        redelivered message of the run that took the slot still finishes its rotation.
        """
        try:
            with self.database.session() as session:
                session.add(SlotClaim(secret=secret, slot=slot, run_id=run_id, claimed_at=utcnow()))
            return True
        except IntegrityError:
            if run_id is None:
                return False
            claim = self.slot_claim(secret, slot)
            return claim is not None and claim.run_id == run_id

    def release_slot(self, secret: str, slot: str, run_id: str) -> bool:
        """Give back `run_id`'s claim of `slot` if that run was never recorded; True if it was.

        A task that gave up between claiming and starting its run leaves nothing to resume:
        without this the slot would stay taken and never be sent again.
        """
        recorded = select(Run.id).where(Run.id == run_id).exists()
        with self.database.session() as session:
            done = session.execute(
                delete(SlotClaim).where(
                    SlotClaim.secret == secret,
                    SlotClaim.slot == slot,
                    SlotClaim.run_id == run_id,
                    ~recorded,
                )
            )
            return bool(getattr(done, "rowcount", 0))

    def slot_claim(self, secret: str, slot: str) -> SlotClaim | None:
        with self.database.session() as session:
            query = select(SlotClaim).where(SlotClaim.secret == secret, SlotClaim.slot == slot)
            return session.scalars(query).first()

    def record_skipped(
        self, run_id: str, secret: str, trigger: str, slot: str | None, reason: str
    ) -> None:
        """Record a trigger that did not run (another rotation held the secret)."""
        now = utcnow()
        try:
            with self.database.session() as session:
                if session.get(Run, run_id) is not None:
                    return  # a redelivered trigger is recorded once
                session.add(
                    Run(
                        id=run_id,
                        secret=secret,
                        trigger=trigger,
                        slot=slot,
                        status="skipped",
                        started_at=now,
                        finished_at=now,
                        error=reason,
                    )
                )
        except IntegrityError:  # the same trigger recorded at the same instant elsewhere
            return
