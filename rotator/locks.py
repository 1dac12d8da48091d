"""One rotation per secret at a time: a lease row in the history database.

A lease has an owner, an expiry and a fencing counter. It is taken with one
conditional UPDATE (or an INSERT for a secret never leased), so it works the
same on SQLite and PostgreSQL. While a run lives, a thread renews the lease
every third of its TTL; a run whose lease was lost stops at its next step.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from rotator.errors import LockLost, RotationInProgress
from rotator.history import Database, Lease, utcnow

log = structlog.get_logger(__name__)


class SecretLease:
    """A held lease; `check()` raises LockLost once renewal has failed."""

    def __init__(self, leases: LeaseManager, secret: str, owner: str, fence: int) -> None:
        self._leases = leases
        self.secret = secret
        self.owner = owner
        self.fence = fence
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"lease-{secret}", daemon=True
        )

    def _renew_loop(self) -> None:
        interval = self._leases.ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                if not self._leases.renew(self.secret, self.owner, self.fence):
                    self._lost.set()
                    return
            except Exception as exc:  # a renewal that errors is retried next tick
                log.warning("lease.renew_failed", secret=self.secret, error=type(exc).__name__)

    def check(self, confirm: bool = True) -> None:
        """Raise LockLost once the lease is gone; `confirm` asks the database, not only the
        renewal thread (which notices a loss up to a third of the TTL late)."""
        if self._lost.is_set() or (
            confirm and not self._leases.still_held(self.secret, self.owner, self.fence)
        ):
            raise LockLost(f"the lease of secret {self.secret!r} was lost to another run")


class LeaseManager:
    """Takes, renews and releases leases in the history database."""

    def __init__(self, database: Database, ttl: timedelta = timedelta(seconds=60)) -> None:
        self.database = database
        self.ttl = ttl

    def try_acquire(self, secret: str, owner: str, run_id: str | None = None) -> int | None:
        """The new fence number if the lease was free or expired, else None.

        Each statement is atomic on its own (a conditional UPDATE, or an INSERT that the
        primary key refuses to a second taker), so none needs a transaction around it.
        """
        now = utcnow()
        taken = (
            update(Lease)
            .where(Lease.secret == secret, Lease.expires_at < now)
            .values(owner=owner, run_id=run_id, expires_at=now + self.ttl, fence=Lease.fence + 1)
        )
        with self.database.statement() as session:
            if self.database.engine.dialect.update_returning:
                fence = session.scalar(taken.returning(Lease.fence))
                if fence is not None:
                    return int(fence)
            elif session.execute(taken).rowcount == 1:  # type: ignore[attr-defined]
                mine = select(Lease.fence).where(Lease.secret == secret, Lease.owner == owner)
                return int(session.scalar(mine) or 0)
            try:
                session.execute(
                    insert(Lease).values(
                        secret=secret,
                        owner=owner,
                        run_id=run_id,
                        expires_at=now + self.ttl,
                        fence=1,
                    )
                )
            except IntegrityError:
                return None
        return 1

    def renew(self, secret: str, owner: str, fence: int) -> bool:
        with self.database.statement() as session:
            result = session.execute(
                update(Lease)
                .where(Lease.secret == secret, Lease.owner == owner, Lease.fence == fence)
                .values(expires_at=utcnow() + self.ttl)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def still_held(self, secret: str, owner: str, fence: int) -> bool:
        with self.database.statement() as session:
            lease = session.get(Lease, secret)
            return (
                lease is not None
                and lease.owner == owner
                and lease.fence == fence
                and lease.expires_at > utcnow()
            )

    def release(self, secret: str, owner: str, fence: int) -> None:
        with self.database.statement() as session:
            session.execute(
                update(Lease)
                .where(Lease.secret == secret, Lease.owner == owner, Lease.fence == fence)
                .values(expires_at=utcnow(), run_id=None)
            )

    def holder(self, secret: str) -> Lease | None:
        """The live lease of a secret, if any."""
        with self.database.statement() as session:
            lease = session.get(Lease, secret)
            if lease is None or lease.expires_at <= utcnow():
                return None
            return lease

    @contextmanager
    def hold(self, secret: str, run_id: str | None = None) -> Iterator[SecretLease]:
        """Hold the lease of `secret` for the block, renewed in the background."""
        owner = f"{run_id or 'run'}:{uuid.uuid4().hex[:12]}"
        fence = self.try_acquire(secret, owner, run_id)
        if fence is None:
            raise RotationInProgress(f"secret {secret!r} is being rotated by another run")
        lease = SecretLease(self, secret, owner, fence)
        lease._thread.start()
        try:
            yield lease
        finally:
            lease._stop.set()
            lease._thread.join(timeout=5)
            self.release(secret, owner, fence)
