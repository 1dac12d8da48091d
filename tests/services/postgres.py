"""A PostgreSQL server for tests, with password (SCRAM) authentication.

In order: `ROTATOR_TEST_PG_URL` (a superuser URL), a testcontainers
PostgresContainer when Docker answers, else a throwaway cluster from the
installed binaries (`rotator.devservers.LocalPostgres`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import psycopg
from psycopg import sql

from rotator.devservers import LocalPostgres
from tests.services.docker import docker_available


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str = "postgres"
    local: LocalPostgres | None = None
    container: Any = None

    def conninfo(self, **overrides: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }
        info.update(overrides)
        return info

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(**self.conninfo(), autocommit=True) as conn:
            yield conn

    def url(self, dbname: str | None = None, driver: str = "postgresql+psycopg") -> str:
        return (
            f"{driver}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{dbname or self.dbname}"
        )

    def create_role(self, name: str, password: str, *extra: str) -> None:
        with self.admin() as conn:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), name.encode(), b"scram-sha-256"
            ).decode()
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            options = sql.SQL(" ").join(sql.SQL(option) for option in ("LOGIN", *extra))
            conn.execute(
                sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                    sql.Identifier(name), options, sql.Literal(verifier)
                )
            )

    def grant_admin(self, role: str, admin: str) -> None:
        """Let `admin` (a CREATEROLE role) change `role`: PostgreSQL 16+ requires ADMIN OPTION."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                    sql.Identifier(role), sql.Identifier(admin)
                )
            )

    def verifier(self, role: str) -> str | None:
        """`role`'s stored password (pg_authid.rolpassword); each ALTER ROLE salts it anew."""
        with self.admin() as conn:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        return None if row is None else row[0]

    def create_database(self) -> str:
        name = "hist_" + secrets.token_hex(6)
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def logs_in(self, username: str, password: str) -> bool:
        try:
            psycopg.connect(
                **self.conninfo(user=username, password=password), connect_timeout=5
            ).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return False
            raise
        return True

    def server_log(self) -> str | None:
        """The server's log text, where the tests can read it."""
        if self.local is not None:
            return self.local.logfile.read_text(errors="replace")
        if self.container is not None:
            out, err = self.container.get_logs()
            return (out + err).decode(errors="replace")
        return None

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop()
        if self.container is not None:
            self.container.stop()


def start_pg_server() -> PgServer:
    url = os.environ.get("ROTATOR_TEST_PG_URL")
    if url:
        parsed = urlparse(url)
        return PgServer(
            parsed.hostname or "127.0.0.1",
            parsed.port or 5432,
            unquote(parsed.username or "postgres"),
            unquote(parsed.password or ""),
            (parsed.path or "/postgres").lstrip("/") or "postgres",
        )
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        password = secrets.token_urlsafe(18)
        container = PostgresContainer("postgres:16", password=password, driver=None)
        container.with_command("postgres -c log_statement=all -c max_connections=200")
        container.start()
        return PgServer(
            container.get_container_host_ip(),
            int(container.get_exposed_port(5432)),
            container.username,
            password,
            container.dbname,
            container=container,
        )
    local = LocalPostgres(log_statements=True).start()
    return PgServer(local.host, local.port, local.user, local.password, local=local)
