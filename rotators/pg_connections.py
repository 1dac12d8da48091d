"""Per-process reuse of PostgreSQL admin connections, and of trust-server proofs.

A worker rotates many roles with the same admin login; opening a connection
(a fork on the server and a SCRAM exchange) per rotation would cost more than
the ALTER ROLE itself. Admin connections are therefore kept idle between runs,
keyed by every connection setting and a digest of the password (a rotated
admin password, another sslmode or database is another key). Reuse is short
and checked, because a session stays logged in after its password changed:

* an idle connection older than `MAX_IDLE_SECONDS`, or opened more than
  `MAX_LIFETIME_SECONDS` ago, is closed instead of reused;
* a new password for the same login closes the sessions of the old one;
* before reuse the server confirms the role may still log in (not NOLOGIN,
  not past VALID UNTIL) and the session still answers;
* a connection left in a transaction, broken, or inherited over a fork is
  never reused.

Not psycopg_pool: its connections are opened by background threads, so a
refused admin login would surface as a pool timeout instead of the server's
answer, which the rotator must turn into CredentialRejected (do not retry) or
TransientError (retry) at once.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

#: Every connection setting but the password, sorted; then the password's digest.
ConnectionKey = tuple[tuple[tuple[str, str], ...], str]

IDLE_PER_KEY = 2
MAX_KEYS = 32
MAX_IDLE_SECONDS = 30.0
MAX_LIFETIME_SECONDS = 300.0
#: How long a proof that a server checks passwords stays good for the pre-change check.
PROOF_TTL_SECONDS = 300.0

_STILL_ALLOWED = (
    "SELECT rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) "
    "FROM pg_roles WHERE rolname = current_user"
)


def connection_key(kwargs: Mapping[str, Any]) -> ConnectionKey:
    """The identity of a login; the password only as a digest, never kept in the clear."""
    settings = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "password"))
    password = str(kwargs.get("password", ""))
    return settings, hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Idle:
    conn: psycopg.Connection[Any]
    opened_at: float
    idle_since: float


class IdleConnections:
    """Idle autocommit connections by login, safe to share between threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: OrderedDict[ConnectionKey, list[_Idle]] = OrderedDict()
        self._opened_at: dict[int, float] = {}
        self._pid = os.getpid()

    @contextmanager
    def borrow(
        self, key: ConnectionKey, connect: Callable[[], psycopg.Connection[Any]]
    ) -> Iterator[psycopg.Connection[Any]]:
        """An idle connection for `key`, or a new one from `connect`; kept again if still clean."""
        taken = self._take(key)
        conn = taken.conn if taken else connect()
        opened_at = taken.opened_at if taken else time.monotonic()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give_back(key, _Idle(conn, opened_at, time.monotonic()))

    def _take(self, key: ConnectionKey) -> _Idle | None:
        while True:
            with self._lock:
                self._forget_after_fork()
                idle = self._idle.get(key)
                candidate = idle.pop() if idle else None
            if candidate is None:
                return None
            if _fresh(candidate) and _still_allowed(candidate.conn):
                return candidate
            candidate.conn.close()

    def _give_back(self, key: ConnectionKey, entry: _Idle) -> None:
        closing: list[psycopg.Connection[Any]] = []
        with self._lock:
            self._forget_after_fork()
            if not _reusable(entry.conn) or not _fresh(entry):
                closing.append(entry.conn)
            else:
                # Another password for the same login: the old one's sessions must go.
                for other in [k for k in self._idle if k[0] == key[0] and k != key]:
                    closing += [e.conn for e in self._idle.pop(other)]
                idle = self._idle.setdefault(key, [])
                self._idle.move_to_end(key)
                if len(idle) >= IDLE_PER_KEY:
                    closing.append(entry.conn)
                else:
                    idle.append(entry)
                while len(self._idle) > MAX_KEYS:
                    closing += [e.conn for e in self._idle.popitem(last=False)[1]]
        for conn in closing:
            conn.close()

    def _forget_after_fork(self) -> None:
        """A forked child must not use (or close) the parent's sockets: drop them unused."""
        if self._pid != os.getpid():
            self._idle = OrderedDict()
            self._pid = os.getpid()

    def close_all(self) -> None:
        with self._lock:
            self._forget_after_fork()
            entries = [e for idle in self._idle.values() for e in idle]
            self._idle.clear()
        for entry in entries:
            entry.conn.close()


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    return (
        not conn.closed
        and not conn.broken
        and conn.info.transaction_status == TransactionStatus.IDLE
    )


def _fresh(entry: _Idle) -> bool:
    now = time.monotonic()
    return (
        now - entry.idle_since < MAX_IDLE_SECONDS and now - entry.opened_at < MAX_LIFETIME_SECONDS
    )


def _still_allowed(conn: psycopg.Connection[Any]) -> bool:
    """The session answers and its role may still log in (a fresh login would work)."""
    if not _reusable(conn):
        return False
    try:
        row = conn.execute(_STILL_ALLOWED).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0]) and _reusable(conn)


class PasswordCheckProofs:
    """Logins recently proven to need a password (the server is not `trust` for them)."""

    def __init__(self, ttl_seconds: float = PROOF_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._proven: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def proven(self, key: ConnectionKey) -> bool:
        with self._lock:
            at = self._proven.get(key[0])
            return at is not None and time.monotonic() - at < self._ttl

    def record(self, key: ConnectionKey) -> None:
        with self._lock:
            self._proven[key[0]] = time.monotonic()


#: One of each per process: every rotator instance of this process shares them.
ADMIN_CONNECTIONS = IdleConnections()
PASSWORD_CHECKS = PasswordCheckProofs()
atexit.register(ADMIN_CONNECTIONS.close_all)
