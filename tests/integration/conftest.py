"""Helpers for the engine, store, lease and leak tests.

`pg_plan` builds a runtime from a schedules.yaml written for the test (any role
names, password policy, target overrides, secrets without an admin), with every
role's password known. `Crash` is an injected failure that is not a
RotatorError, so the engine neither retries nor records it: it stands for a
process dying between two steps.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.engine import StepHook
from rotator.history import Database, Lease, StoredVersion
from rotator.runtime import Runtime
from rotator.stores import SecretStore, SecretVersion, Stage
from tests.conftest import RuntimeFactory, SchedulesWriter, unique_role
from tests.services.postgres import PgServer

STAGES = (Stage.CURRENT, Stage.PENDING, Stage.PREVIOUS)


class Crash(Exception):
    """An injected crash between two steps (deliberately not a RotatorError)."""


def crash_at(point: str) -> StepHook:
    """A step hook that kills the run right after `point`."""

    def hook(reached: str) -> None:
        if reached == point:
            raise Crash(f"injected crash after {point}")

    return hook


def stages(store: SecretStore, path: str) -> dict[Stage, SecretVersion | None]:
    return {stage: store.read(path, stage) for stage in STAGES}


def stored_rows(database: Database, path: str) -> list[StoredVersion]:
    """Every version ever written at `path` (staged or not), oldest first."""
    with database.session() as session:
        query = select(StoredVersion).where(StoredVersion.path == path).order_by(StoredVersion.id)
        return list(session.scalars(query))


def set_lease(database: Database, secret: str, **values: Any) -> Lease:
    """Rewrite a lease row as another (possibly dead) process would have left it."""
    with database.session() as session:
        lease = session.get(Lease, secret)
        if lease is None:
            lease = Lease(secret=secret, fence=0, owner="", expires_at=values["expires_at"])
            session.add(lease)
        for key, value in values.items():
            setattr(lease, key, value)
        session.flush()
        return lease


def get_lease(database: Database, secret: str) -> Lease | None:
    with database.session() as session:
        return session.get(Lease, secret)


def dump_tables(database: Database) -> list[tuple[str, str, Any]]:
    """Every value of every column of every table: (table, column, value)."""
    metadata = MetaData()
    metadata.reflect(database.engine)
    found: list[tuple[str, str, Any]] = []
    with database.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for column, value in row._mapping.items():
                    found.append((table.name, str(column), value))
    return found


def value_forms(value: Any) -> list[bytes]:
    """The ways a stored value could hold a password: its text and its raw bytes."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return [raw, raw.decode("latin-1").encode()]
    if isinstance(value, datetime):
        return [value.isoformat().encode()]
    return [str(value).encode()]


def leaked(haystacks: Iterable[str | bytes], passwords: Iterable[str]) -> list[str]:
    """The passwords that appear in any haystack: as is, SQL-quoted, or escaped by repr/JSON."""
    blobs = [h if isinstance(h, bytes) else h.encode() for h in haystacks]
    found = []
    for password in passwords:
        written = {
            password,
            password.replace("'", "''"),
            repr(password)[1:-1],
            json.dumps(password)[1:-1],
            json.dumps(password, ensure_ascii=False)[1:-1],
        }
        forms = {form.encode() for form in written}
        if any(form in blob for blob in blobs for form in forms):
            found.append(password)
    return found


def _yaml(value: object) -> str:
    """A YAML flow value (JSON is YAML) for a scalar or a mapping."""
    return json.dumps(value)


@dataclass
class PgPlan:
    """A runtime over fresh roles whose passwords the test knows."""

    pg: PgServer
    runtime: Runtime
    schedules: Path
    make_runtime: RuntimeFactory
    #: secret name -> role name; "pg-admin" is the CREATEROLE admin.
    roles: dict[str, str]
    #: role name -> the password it was created with.
    initial: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> SecretStore:
        return self.runtime.stores.get("local")

    def new_runtime(self, step_hook: StepHook | None = None) -> Runtime:
        """Another process: same history database, key and schedules, nothing shared in memory."""
        return self.make_runtime(self.schedules, step_hook=step_hook)

    def logs_in(self, secret: str, password: str | None) -> bool:
        assert password is not None
        return self.pg.logs_in(self.roles[secret], password)


PgPlanFactory = Callable[..., PgPlan]


@pytest.fixture
def pg_plan(
    pg: PgServer, write_schedules: SchedulesWriter, make_runtime: RuntimeFactory
) -> PgPlanFactory:
    """Builds a PgPlan.

    roles: secret name -> role name (default: one fresh role, secret "db-0").
    passwords: role name -> its starting password (default: random, url-safe).
    admin_password: the admin role's password (adopted as pg-admin's CURRENT).
    self_managed: secrets with no admin_secret (the role changes its own password).
    defaults: the `defaults:` block (max_attempts 2 unless given).
    targets: secret name -> extra `target:` keys (e.g. a port).
    """

    def make(
        roles: dict[str, str] | None = None,
        *,
        passwords: dict[str, str] | None = None,
        admin_password: str | None = None,
        self_managed: Iterable[str] = (),
        defaults: dict[str, Any] | None = None,
        targets: dict[str, dict[str, Any]] | None = None,
        step_hook: StepHook | None = None,
    ) -> PgPlan:
        roles = dict(roles or {"db-0": unique_role()})
        initial = {role: secrets.token_urlsafe(16) for role in roles.values()}
        initial.update(passwords or {})
        admin_role = unique_role("admin")
        initial[admin_role] = admin_password or secrets.token_urlsafe(16)
        self_managed = set(self_managed)
        pg.create_role(admin_role, initial[admin_role], "CREATEROLE")
        for name, role in roles.items():
            pg.create_role(role, initial[role])
            if name not in self_managed:
                pg.grant_admin(role, admin_role)
        base = {"host": pg.host, "port": pg.port, "dbname": pg.dbname}
        entries: dict[str, dict[str, Any]] = {
            "pg-admin": {
                "rotator": "postgres-password",
                "store": "local",
                "every": "30d",
                "target": {**base, "username": admin_role, **(targets or {}).get("pg-admin", {})},
            }
        }
        for name, role in roles.items():
            target: dict[str, Any] = {**base, "username": role}
            if name not in self_managed:
                target["admin_secret"] = "pg-admin"
            target.update((targets or {}).get(name, {}))
            entries[name] = {
                "rotator": "postgres-password",
                "store": "local",
                "every": "30d",
                "target": target,
            }
        lines = [
            "version: 1",
            "stores: {local: {type: embedded}}",
            f"defaults: {_yaml({'max_attempts': 2, **(defaults or {})})}",
            "secrets:",
            *(f"  {_yaml(name)}: {_yaml(entry)}" for name, entry in entries.items()),
        ]
        schedules = write_schedules("\n".join(lines) + "\n")
        runtime = make_runtime(schedules, step_hook=step_hook)
        runtime.engine.adopt("pg-admin", Credential(password=initial[admin_role]), rotate=False)
        return PgPlan(
            pg, runtime, schedules, make_runtime, {**roles, "pg-admin": admin_role}, initial
        )

    return make


class TcpProxy:
    """A loopback TCP forwarder to a server; while stopped its port refuses connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        listener.settimeout(0.05)
        self._listener = listener
        self._stop.clear()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()
        listener.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()


@pytest.fixture
def tcp_proxy(pg: PgServer) -> Iterable[Callable[[], TcpProxy]]:
    """Makes TcpProxy instances to the test PostgreSQL (not started); stops them after."""
    made: list[TcpProxy] = []

    def make() -> TcpProxy:
        proxy = TcpProxy(pg.host, pg.port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def database(history_url: str) -> Iterator[Database]:
    """A migrated history database on each backend."""
    database = Database(history_url)
    database.upgrade()
    yield database
    database.dispose()
