"""Per-process reuse of PostgreSQL admin connections, and of trust-server proofs.

A worker rotates many roles with the same admin login; opening a connection
(a fork on the server and a SCRAM exchange) per rotation would cost more than
the ALTER ROLE itself. Admin connections are therefore kept idle between runs,
keyed by everything that decides who they log in as (so a rotated admin
password gets a new connection), and dropped after a fork, when broken, or
when left in a transaction.

Not psycopg_pool: its connections are opened by background threads, so a
refused admin login would surface as a pool timeout instead of the
server's answer, which the rotator must turn into CredentialRejected (do
not retry) or TransientError (retry) at once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

ConnectionKey = tuple[str, int, str, str, str]

#: Idle connections kept per login, and logins kept per process.
IDLE_PER_KEY = 2
MAX_KEYS = 32
#: How long a proof that a server checks passwords stays good.
PROOF_TTL_SECONDS = 600.0


def connection_key(
    host: str, port: int, dbname: str, username: str, password: str
) -> ConnectionKey:
    """The identity of a login; the password only as a digest, never kept in the clear."""
    digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()
    return (host, port, dbname, username, digest)


class IdleConnections:
    """Idle autocommit connections by login, safe to share between threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: OrderedDict[ConnectionKey, list[psycopg.Connection[Any]]] = OrderedDict()
        self._pid = os.getpid()

    @contextmanager
    def borrow(
        self, key: ConnectionKey, connect: Callable[[], psycopg.Connection[Any]]
    ) -> Iterator[psycopg.Connection[Any]]:
        """An idle connection for `key`, or a new one from `connect`; kept again if still clean."""
        conn = self._take(key) or connect()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give_back(key, conn)

    def _take(self, key: ConnectionKey) -> psycopg.Connection[Any] | None:
        with self._lock:
            self._forget_after_fork()
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if _reusable(conn):
                    return conn
                conn.close()
            return None

    def _give_back(self, key: ConnectionKey, conn: psycopg.Connection[Any]) -> None:
        if not _reusable(conn):
            conn.close()
            return
        with self._lock:
            self._forget_after_fork()
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) >= IDLE_PER_KEY:
                conn.close()
                return
            idle.append(conn)
            while len(self._idle) > MAX_KEYS:
                _, evicted = self._idle.popitem(last=False)
                for stale in evicted:
                    stale.close()

    def _forget_after_fork(self) -> None:
        """A forked child must not use (or close) the parent's sockets: drop them unused."""
        if self._pid != os.getpid():
            self._idle = OrderedDict()
            self._pid = os.getpid()

    def close_all(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn in idle:
                    conn.close()
            self._idle.clear()


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    return (
        not conn.closed
        and not conn.broken
        and conn.info.transaction_status == TransactionStatus.IDLE
    )


class PasswordCheckProofs:
    """Servers (and roles) recently proven to refuse a wrong password (not trust)."""

    def __init__(self, ttl_seconds: float = PROOF_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._proven: dict[tuple[str, int, str], float] = {}
        self._lock = threading.Lock()

    def proven(self, host: str, port: int, username: str) -> bool:
        with self._lock:
            at = self._proven.get((host, port, username))
            return at is not None and time.monotonic() - at < self._ttl

    def record(self, host: str, port: int, username: str) -> None:
        with self._lock:
            self._proven[(host, port, username)] = time.monotonic()


#: One of each per process: every rotator instance of this process shares them.
ADMIN_CONNECTIONS = IdleConnections()
PASSWORD_CHECKS = PasswordCheckProofs()
