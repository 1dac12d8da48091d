"""One active beat: the others tick but send nothing.

With a Redis broker the leader holds a redis-py `Lock` with a timeout, extended on
every tick and taken again when lost; a Redis error leaves the lock ours (the next
tick extends it with the same token), only a lock found not ours is lost. Otherwise
it holds the history database's lease of a reserved name (`beat:leader`, refused as
a secret name by schedules.yaml validation). Leadership only saves work: a slot sent
twice is one Celery task id and one claimed (secret, slot) in the worker.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from rotator.history import Database
from rotator.locks import LeaseManager
from rotator.schedule import BEAT_LEASE_NAME

log = structlog.get_logger("rotator.beat")

#: The lease name in the history database, reserved for beat (validation refuses it).
LEASE_NAME = BEAT_LEASE_NAME
REDIS_KEY = "rotator:beat:leader"


class Leadership(Protocol):
    def ensure(self) -> bool:
        """Keep or take the leadership; True while this process leads."""

    def release(self) -> None:
        """Give the leadership up (on shutdown), so another beat takes over at once."""


class RedisLeadership:
    """A redis-py Lock with a timeout; held across ticks by extending it."""

    def __init__(self, url: str, ttl: float, key: str = REDIS_KEY) -> None:
        self.ttl = ttl
        self._client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._lock = Lock(self._client, key, timeout=ttl, blocking=False, thread_local=False)
        self._held = False

    def ensure(self) -> bool:
        """Extend the lock we hold, or take it; False (lock kept) when Redis fails this tick.

        A timeout may hide a write that happened: dropping our token then would leave
        our own key blocking every beat, ourselves included, for a whole TTL.
        """
        try:
            if self._held:
                try:
                    self._lock.extend(self.ttl, replace_ttl=True)
                    return True
                except LockError:  # LockNotOwnedError: expired or taken by another beat
                    self._held = False
                    log.warning("beat.leadership_lost", key=self._lock.name)
            self._held = bool(self._lock.acquire(blocking=False))
            if self._held:
                log.info("beat.leader", key=self._lock.name)
            return self._held
        except RedisError as exc:
            log.warning("beat.leadership_unknown", error=type(exc).__name__)
            return False

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(LockError, RedisError):
                self._lock.release()
            self._held = False
        self._client.close()


class LeaseLeadership:
    """The history database's lease of `beat:leader` (when the broker is not Redis)."""

    def __init__(self, database: Database, ttl: float) -> None:
        from datetime import timedelta

        self._leases = LeaseManager(database, timedelta(seconds=ttl))
        self._owner = f"beat:{uuid.uuid4().hex[:12]}"
        self._fence: int | None = None

    def ensure(self) -> bool:
        try:
            if self._fence is not None and self._leases.renew(LEASE_NAME, self._owner, self._fence):
                return True
            if self._fence is not None:
                log.warning("beat.leadership_lost", lease=LEASE_NAME)
            self._fence = self._leases.try_acquire(LEASE_NAME, self._owner)
            if self._fence is not None:
                log.info("beat.leader", lease=LEASE_NAME)
        except Exception as exc:  # a history outage: lead nothing this tick, retry next
            log.warning("beat.leadership_unknown", error=type(exc).__name__)
            self._fence = None
        return self._fence is not None

    def release(self) -> None:
        if self._fence is not None:
            try:
                self._leases.release(LEASE_NAME, self._owner, self._fence)
            except Exception as exc:
                log.warning("beat.leadership_release_failed", error=type(exc).__name__)
            self._fence = None


def leadership_for(broker_url: str, database: Database, ttl: float) -> Leadership:
    """Redis locking when the broker is Redis, else the history database's lease."""
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return RedisLeadership(redis_client_url(broker_url), ttl)
    return LeaseLeadership(database, ttl)


def redis_client_url(broker_url: str) -> str:
    """redis-py's spelling of a kombu Redis URL: kombu's `redis+socket://` is `unix://`."""
    if not broker_url.startswith("redis+socket://"):
        return broker_url
    parts = urlsplit(broker_url)
    query = [("db" if k == "virtual_host" else k, v) for k, v in parse_qsl(parts.query)]
    suffix = f"?{urlencode(query)}" if query else ""
    return f"unix://{parts.netloc}{parts.path}{suffix}"  # urlunsplit would drop the "//"
