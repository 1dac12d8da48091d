"""Shared fixtures: a real PostgreSQL with SCRAM auth, history databases, runtimes."""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from rotator.config import Settings
from rotator.engine import StepHook
from rotator.runtime import Runtime, build_runtime
from tests.services.postgres import PgServer, start_pg_server

#: Each service's fixtures live beside its helper, owned by one module each.
pytest_plugins = [
    "tests.services.redis_fixtures",
    "tests.services.moto_fixtures",
    "tests.services.vault_fixtures",
    "tests.services.keyservice_fixtures",
]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session (password auth, statement log on)."""
    server = start_pg_server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The history database URL: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.url(server.create_database())


def unique_role(prefix: str = "app") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


SchedulesWriter = Callable[[str], Path]


@pytest.fixture
def write_schedules(tmp_path: Path) -> SchedulesWriter:
    def write(text: str) -> Path:
        path = tmp_path / "schedules.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def pg_schedules(
    pg: PgServer, roles: dict[str, str], admin_role: str, admin: str = "pg-admin"
) -> str:
    """A schedules.yaml with an admin secret and one postgres-password secret per role."""
    lines = [
        "version: 1",
        "stores: {local: {type: embedded}}",
        "defaults: {max_attempts: 2}",
        "secrets:",
        f"  {admin}:",
        "    rotator: postgres-password",
        "    store: local",
        "    every: 30d",
        f"    target: {{host: {pg.host}, port: {pg.port}, dbname: {pg.dbname}, "
        f"username: {admin_role}}}",
    ]
    for name, role in roles.items():
        lines += [
            f"  {name}:",
            "    rotator: postgres-password",
            "    store: local",
            "    every: 30d",
            "    target:",
            f"      host: {pg.host}",
            f"      port: {pg.port}",
            f"      dbname: {pg.dbname}",
            f"      username: {_yaml_quote(role)}",
            f"      admin_secret: {admin}",
        ]
    return "\n".join(lines) + "\n"


def _yaml_quote(text: str) -> str:
    import json

    return json.dumps(text)


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def make_runtime(tmp_path: Path, history_url: str) -> Iterator[RuntimeFactory]:
    """Builds runtimes on one history database and one encryption key for the test."""
    built: list[Runtime] = []
    key = SecretStr(Fernet.generate_key().decode())

    def make(schedules: Path, step_hook: StepHook | None = None, **settings: object) -> Runtime:
        options: dict[str, object] = {
            "schedules": schedules,
            "database_url": history_url,
            "encryption_key": key,
            "var_dir": tmp_path / "var",
            "lease_ttl_seconds": 30.0,
            **settings,
        }
        runtime = build_runtime(
            Settings(**options),
            step_hook=step_hook,  # type: ignore[arg-type]
            retry_wait_seconds=0.01,
        )
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()
