"""The database secrets engine with the PostgreSQL plugin, against a real PostgreSQL.

`creds/<role>` runs the role's creation statements over psycopg as Vault's
postgresql-database-plugin does: statements split on `;`, `{{name}}`,
`{{username}}`, `{{password}}` and `{{expiration}}` substituted as text, all
in one transaction; with `password_authentication=scram-sha-256` the password
is replaced by its SCRAM verifier first. Usernames follow Vault's template
`v-<display name>-<role>-<random>-<unix time>` cut to 63 bytes. Each
credential is a lease: renewal moves VALID UNTIL, revocation drops the role.
Error texts show `[password]` where a password was, as Vault's sanitizer does.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.vault_emulator.api import (
    NO_CONTENT,
    SYSTEM_MAX_TTL,
    ApiError,
    Reply,
    Request,
    envelope,
    not_found,
    parse_ttl,
    policy_list,
)
from tests.vault_emulator.leases import LeaseManager

POSTGRES_PLUGIN = "postgresql-database-plugin"
DEFAULT_RENEW = "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';"
_PASSWORD_CHARS = string.ascii_letters + string.digits + "-"


@dataclass
class Connection:
    """`config/<name>`: how to reach the database as the engine's admin."""

    connection_url: str
    username: str
    password: str
    allowed_roles: list[str]
    password_authentication: str = "password"
    verify_connection: bool = True

    def connect(self) -> psycopg.Connection[Any]:
        url = self.connection_url.replace("{{username}}", quote(self.username, safe=""))
        url = url.replace("{{password}}", quote(self.password, safe=""))
        return psycopg.connect(url, connect_timeout=5)

    def describe(self) -> dict[str, Any]:
        return {
            "plugin_name": POSTGRES_PLUGIN,
            "plugin_version": "",
            "allowed_roles": self.allowed_roles,
            "connection_details": {
                "connection_url": self.connection_url,
                "username": self.username,
                "max_open_connections": 4,
                "password_authentication": self.password_authentication,
            },
            "password_policy": "",
            "root_credentials_rotate_statements": [],
            "verify_connection": self.verify_connection,
        }


@dataclass
class DbRole:
    """`roles/<name>`: the statements and TTLs of one kind of credential."""

    db_name: str
    creation_statements: list[str]
    revocation_statements: list[str] = field(default_factory=list)
    renew_statements: list[str] = field(default_factory=list)
    rollback_statements: list[str] = field(default_factory=list)
    default_ttl: int = 0
    max_ttl: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "db_name": self.db_name,
            "creation_statements": self.creation_statements,
            "revocation_statements": self.revocation_statements,
            "renew_statements": self.renew_statements,
            "rollback_statements": self.rollback_statements,
            "default_ttl": self.default_ttl,
            "max_ttl": self.max_ttl,
            "credential_type": "password",
            "credential_config": None,
        }


class DatabaseEngine:
    """One mount of the database secrets engine (PostgreSQL plugin only)."""

    type = "database"

    def __init__(self, leases: LeaseManager, mount: str) -> None:
        self.leases = leases
        self.mount = mount
        self.connections: dict[str, Connection] = {}
        self.roles: dict[str, DbRole] = {}
        self._lock = threading.RLock()

    def handle(self, req: Request, rest: str) -> Reply:
        section, _, name = rest.partition("/")
        if section == "creds" and name and req.method == "GET":
            return self._creds(req, name)
        if section in ("config", "roles"):
            table: dict[str, Any] = self.connections if section == "config" else self.roles
            if not name and req.method == "LIST":
                if not table:
                    raise not_found()
                return envelope({"keys": sorted(table)})
            if req.method == "GET":
                if name not in table:
                    raise not_found()
                return envelope(table[name].describe())
            if req.method == "DELETE":
                table.pop(name, None)
                return NO_CONTENT
            if req.writes and name:
                write = self._write_config if section == "config" else self._write_role
                return write(name, req.body)
        raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')

    def _write_config(self, name: str, body: dict[str, Any]) -> Reply:
        if body.get("plugin_name") != POSTGRES_PLUGIN:
            raise ApiError(400, f"the emulator serves only plugin_name={POSTGRES_PLUGIN}")
        if not body.get("connection_url"):
            raise ApiError(400, "connection_url cannot be empty")
        connection = Connection(
            str(body["connection_url"]),
            str(body.get("username", "")),
            str(body.get("password", "")),
            policy_list(body.get("allowed_roles")),
            str(body.get("password_authentication") or "password"),
            bool(body.get("verify_connection", True)),
        )
        if connection.verify_connection:
            try:
                connection.connect().close()
            except psycopg.Error as exc:
                text = _sanitize(str(exc), connection.password)
                raise ApiError(
                    400, f"error creating database object: error verifying - ping: {text}"
                ) from None
        self.connections[name] = connection
        return NO_CONTENT

    def _write_role(self, name: str, body: dict[str, Any]) -> Reply:
        creation = policy_list_of_statements(body.get("creation_statements"))
        if not body.get("db_name"):
            raise ApiError(400, "empty database name attribute")
        if not creation:
            raise ApiError(400, "creation_statements cannot be empty")
        role = DbRole(
            str(body["db_name"]),
            creation,
            policy_list_of_statements(body.get("revocation_statements")),
            policy_list_of_statements(body.get("renew_statements")),
            policy_list_of_statements(body.get("rollback_statements")),
            parse_ttl(body.get("default_ttl"), "default_ttl"),
            parse_ttl(body.get("max_ttl"), "max_ttl"),
        )
        if role.max_ttl and role.default_ttl > role.max_ttl:
            raise ApiError(400, "ttl cannot be greater than max_ttl")
        self.roles[name] = role
        return NO_CONTENT

    def _creds(self, req: Request, name: str) -> Reply:
        role = self.roles.get(name)
        if role is None:
            raise ApiError(400, f"unknown role: {name}")
        connection = self.connections.get(role.db_name)
        if connection is None:
            raise ApiError(400, f'database configuration "{role.db_name}" not found')
        if not any(allowed in ("*", name) for allowed in connection.allowed_roles):
            raise ApiError(400, f'"{name}" is not an allowed role')
        max_ttl = role.max_ttl or SYSTEM_MAX_TTL
        ttl = min(role.default_ttl or SYSTEM_MAX_TTL, max_ttl)
        username = vault_username(req.token.display_name, name)
        password = generate_password()
        stored = password
        if connection.password_authentication == "scram-sha-256":
            stored = scram_verifier(connection, username, password)
        values = {"name": username, "username": username, "password": stored}
        run_statements(connection, role.creation_statements, values, ttl, secret=password)
        lease = self.leases.issue(
            f"{self.mount}creds/{name}",
            req.token.id,
            ttl,
            max_ttl,
            extend=lambda seconds: run_statements(
                connection, role.renew_statements or [DEFAULT_RENEW], values, seconds
            ),
            revoke=lambda: revoke_user(connection, role.revocation_statements, username),
        )
        return envelope(
            {"username": username, "password": password},
            lease_id=lease.id,
            lease_duration=ttl,
            renewable=True,
        )


def policy_list_of_statements(value: Any) -> list[str]:
    """Statements given as a list or one string (Vault accepts both)."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


def vault_username(display_name: str, role: str) -> str:
    """Vault's PostgreSQL username template: `v-<display 8>-<role 8>-<random 20>-<unix>`."""
    random = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))
    return f"v-{display_name[:8]}-{role[:8]}-{random}-{int(time.time())}"[:63]


def generate_password() -> str:
    """Vault's default password policy: 20 characters with a lower, an upper, a digit, a dash."""
    while True:
        password = "".join(secrets.choice(_PASSWORD_CHARS) for _ in range(20))
        groups = (string.ascii_lowercase, string.ascii_uppercase, string.digits, "-")
        if all(any(char in group for char in password) for group in groups):
            return password


def scram_verifier(connection: Connection, username: str, password: str) -> str:
    with connection.connect() as conn:
        return conn.pgconn.encrypt_password(
            password.encode(), username.encode(), b"scram-sha-256"
        ).decode()


def run_statements(
    connection: Connection,
    statements: list[str],
    values: dict[str, str],
    ttl: int,
    secret: str = "",
) -> None:
    """Run templated statements in one transaction, as the PostgreSQL plugin does."""
    expiration = datetime.now(UTC) + timedelta(seconds=ttl)
    values = {**values, "expiration": expiration.strftime("%Y-%m-%d %H:%M:%S+0000")}
    try:
        with connection.connect() as conn, conn.transaction():
            for statement in statements:
                for query in (part.strip() for part in statement.split(";")):
                    if query:
                        conn.execute(_render(query, values).encode())
    except psycopg.Error as exc:
        text = _sanitize(_sanitize(str(exc), secret), values.get("password", ""))
        raise ApiError(500, f"1 error occurred:\n\t* {text}\n\n") from None


def revoke_user(connection: Connection, statements: list[str], username: str) -> None:
    """The role's revocation statements, or the plugin's default: revoke, then DROP ROLE."""
    if statements:
        run_statements(connection, statements, {"name": username, "username": username}, 0)
        return
    role = sql.Identifier(username)
    with connection.connect() as conn, conn.transaction():
        schemas = conn.execute(
            "SELECT DISTINCT table_schema FROM information_schema.role_table_grants"
            " WHERE grantee = %s",
            (username,),
        ).fetchall()
        for (schema,) in schemas:
            name = sql.Identifier(schema)
            conn.execute(
                sql.SQL("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA {} FROM {}").format(
                    name, role
                )
            )
            conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(name, role))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone()
        if exists:
            database = sql.Identifier(conn.info.dbname)
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(database, role))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


def _render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def _sanitize(text: str, secret: str) -> str:
    return text.replace(secret, "[password]") if secret else text
