"""PostgreSQL password rotation, single-user strategy (the reference rotator).

`apply` first checks whether PENDING already logs in (a replayed step; skipped
for a value this process generated a moment ago, which no server can know), then
logs in with the admin secret's CURRENT (or as the user itself with CURRENT,
falling back to PREVIOUS as AWS does) and runs ALTER ROLE with a
SCRAM-SHA-256 verifier computed here, so no plaintext reaches the server or
its statement log. Admin connections are reused between runs of one process
(rotators/pg_connections.py). Identifiers go through `sql.Identifier`, values through
`sql.Literal`: never string formatting.

`strategy: alternating` (two roles taking turns) lives in rotators/pg_alternating.py;
this class hands such targets to it when it is instantiated.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from pydantic import BaseModel

from rotator.base import RotatorContext, SecretRotator
from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, TransientError
from rotator.passwords import generate_password
from rotators.pg_connections import ADMIN_CONNECTIONS, PASSWORD_CHECKS, connection_key
from rotators.pg_target import PostgresTarget

#: SQLSTATEs meaning "this login was refused" rather than "the server is away".
_REFUSED = {"28P01", "28000", "3D000"}
_REFUSED_TEXT = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "not permitted to log",
    "does not exist",
)


#: Never answer a server that asks for the cleartext password (libpq >= 16 can refuse it).
_NO_CLEARTEXT = {"require_auth": "!password"} if psycopg.pq.version() >= 160000 else {}
#: For proofs: the server must check a password (SCRAM or md5); `trust` fails the login.
_PASSWORD_REQUIRED = (
    {"require_auth": "scram-sha-256,md5"} if psycopg.pq.version() >= 160000 else None
)
_NO_PASSWORD_ASKED = ("server did not complete authentication", "authentication method requirement")


def _usable(text: str) -> bool:
    """False for text no connection can carry: lone surrogates, or a NUL, at which libpq
    would stop reading the connection settings (sslmode, require_auth, timeouts)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _fatal(exc: psycopg.Error) -> str:
    """The server's reason (its FATAL line), which names roles and databases, never passwords."""
    text = str(exc)
    marker = text.rfind("FATAL:")
    reason = text[marker + len("FATAL:") :] if marker >= 0 else text
    return " ".join(reason.split()) or type(exc).__name__


def connect_kwargs(target: PostgresTarget, username: str, password: str) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect; never a DSN string holding a password."""
    return {
        "host": target.host,
        "port": target.port,
        "dbname": target.dbname,
        "user": username,
        "password": password,
        "sslmode": target.sslmode,
        "connect_timeout": target.connect_timeout,
        "application_name": "rotator",
        # A stuck ALTER ROLE must end well within the run's lease, never hang on a lock.
        "options": "-c statement_timeout=30000 -c lock_timeout=10000",
        **_NO_CLEARTEXT,
    }


def is_auth_failure(exc: psycopg.Error) -> bool:
    """True when the server refused the login (as opposed to being unreachable)."""
    if exc.sqlstate in _REFUSED:
        return True
    text = str(exc)
    return any(marker in text for marker in _REFUSED_TEXT)


class PostgresPasswordRotator(SecretRotator):
    """Rotates the password of one PostgreSQL role."""

    kind: ClassVar[str] = "postgres-password"
    Target: ClassVar[type[BaseModel]] = PostgresTarget
    identity_fields: ClassVar[tuple[str, ...]] = ("username", "host", "port")

    target: PostgresTarget
    #: The value `generate` made in this process: apply need not ask whether it logs in.
    _generated: Credential | None = None

    def __new__(cls, target: BaseModel, context: RotatorContext) -> PostgresPasswordRotator:
        """A target with `strategy: alternating` gets the alternating-users rotator: one
        entry point, one `kind`, two strategies."""
        if cls is PostgresPasswordRotator and getattr(target, "strategy", None) == "alternating":
            from rotators.pg_alternating import AlternatingPostgresRotator

            return super().__new__(AlternatingPostgresRotator)
        return super().__new__(cls)

    @classmethod
    def managed_identity(cls, target: BaseModel) -> tuple[str, ...] | None:
        assert isinstance(target, PostgresTarget)
        return ("postgres", target.host, str(target.port), target.username)

    @classmethod
    def managed_identities(cls, target: BaseModel) -> tuple[tuple[str, ...], ...]:
        """Every login the target's credentials are for (both roles when alternating)."""
        assert isinstance(target, PostgresTarget)
        return tuple(("postgres", target.host, str(target.port), r) for r in target.role_names)

    @classmethod
    def admin_problem(cls, target: BaseModel, admin_target: BaseModel) -> str | None:
        assert isinstance(target, PostgresTarget)
        if not isinstance(admin_target, PostgresTarget):
            return "the admin secret is not a postgres-password secret (expected an admin login)"
        if (admin_target.host, admin_target.port) != (target.host, target.port):
            return (
                f"the admin secret logs in to {admin_target.host}:{admin_target.port}, not "
                f"{target.host}:{target.port}; its password would be sent to another server "
                "(expected an admin secret for the same server)"
            )
        if admin_target.username in target.role_names[1:]:  # the main role: managed_identity
            return (
                f"the admin secret logs in as role {admin_target.username!r}, the clone this "
                "secret alternates with (expected another login, e.g. a CREATEROLE admin)"
            )
        return None

    def generate(self, current: Credential | None) -> Credential:
        self._generated = self.complete(
            Credential(password=generate_password(self.context.password_policy))
        )
        return self._generated

    def complete(self, credential: Credential) -> Credential:
        """Fill the AWS-style fields (engine, host, port, dbname, username) from the target."""
        t = self.target
        defaults = {
            "engine": "postgres",
            "host": t.host,
            "port": t.port,
            "dbname": t.dbname,
            "username": t.username,
        }
        port = credential.get("port", t.port)
        if isinstance(port, str) and port.isascii() and port.isdigit():  # typed as "5432"
            port = int(port)
        if not isinstance(port, int) or isinstance(port, bool):
            raise ConfigError(f"a {self.kind} value's `port` must be a whole number, like {t.port}")
        credential = credential.replace(port=port)
        password = credential.get("password")
        if not isinstance(password, str) or not password or not _usable(password):
            raise ConfigError(
                f"a {self.kind} value needs a non-empty UTF-8 string `password` field without "
                'NUL characters (expected e.g. {"password": "..."})'
            )
        return Credential({**defaults, **credential.as_dict()})

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        if self._already_accepted(pending):
            return
        with self._admin_session(current, previous) as conn:
            self._set_password(conn, pending)

    def _already_accepted(self, pending: Credential) -> bool:
        """True when PENDING logs in already (a replay); refuses a `trust` server first."""
        fresh = self._generated is not None and pending == self._generated
        self._generated = None  # once sent, a retry of this step must ask the server again
        if fresh:
            self._require_password_checks(pending)  # a trust server is refused before any change
            return False
        return self._logs_in(pending)

    def _set_password(self, conn: psycopg.Connection[Any], credential: Credential) -> None:
        username = credential.username or self.target.username
        statement = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
            sql.Identifier(username), self._verifier(conn, credential)
        )
        with self._statement_errors(username):
            conn.execute(statement)

    def _verifier(self, conn: psycopg.Connection[Any], credential: Credential) -> sql.Literal:
        """The SCRAM-SHA-256 verifier of `credential`'s password, computed on our side."""
        username = credential.username or self.target.username
        verifier = conn.pgconn.encrypt_password(
            str(credential.password).encode(), username.encode(), b"scram-sha-256"
        )
        return sql.Literal(verifier.decode())

    def test(self, credential: Credential) -> None:
        """A fresh login that the server had to check the password of (never `trust`).

        The session's login role (session_user) must be the credential's: a role whose
        settings switch to another role (`ALTER ROLE ... SET role`) still proves its own.
        """
        proof = self._connect(credential, prove_password=True)
        with proof as conn, self._statement_errors(credential.username):
            row = conn.execute("SELECT session_user").fetchone()
        if row is None or row[0] != credential.username:
            raise CredentialRejected(f"{self._where()} logged in as another role")
        if _PASSWORD_REQUIRED is None:  # libpq < 16 cannot insist: prove it with a decoy
            self._require_password_checks(credential)
        else:
            PASSWORD_CHECKS.record(self._login_key(credential))

    def _require_password_checks(self, credential: Credential) -> None:
        """A server that lets any password in (trust) makes a successful login prove nothing.

        Checked before a change; a recent proof for the same login settings (a successful
        `test`, which insists on a password, or a refused decoy) is reused.
        """
        # Per role: pg_hba may trust one role of a server that checks the others' passwords.
        key = self._login_key(credential)
        if PASSWORD_CHECKS.proven(key):
            return
        decoy = credential.replace(password="decoy-" + secrets.token_urlsafe(24))
        try:
            self._connect(decoy, prove_password=True).close()
        except CredentialRejected as exc:
            if "password authentication failed" in str(exc):
                PASSWORD_CHECKS.record(key)
            return
        raise self._trust_error(credential.username)

    def _trust_error(self, username: str | None) -> ConfigError:
        return ConfigError(
            f"{self._where()} lets role {username!r} in with any password "
            "(trust or ident in pg_hba.conf), so a new password cannot be proven; "
            "use scram-sha-256 authentication for this role"
        )

    def _login_key(self, credential: Credential) -> tuple[tuple[tuple[str, str], ...], str]:
        """The login's connection settings without its password: what a trust proof is kept by."""
        username = credential.username or self.target.username
        return connection_key(connect_kwargs(self.target, username, ""))

    @contextmanager
    def _statement_errors(self, username: str | None) -> Iterator[None]:
        """psycopg errors of a statement as ours: refused, or retry when the link broke."""
        try:
            yield
        except psycopg.errors.InsufficientPrivilege:
            raise CredentialRejected(
                f"the login used for {self._where()} may not change role {username!r} "
                "(it needs CREATEROLE, and on PostgreSQL 16+ ADMIN OPTION on that role)"
            ) from None
        except psycopg.errors.ReadOnlySqlTransaction:
            raise TransientError(
                f"{self._where()} is read-only now (a standby after a failover?)"
            ) from None
        except psycopg.errors.UndefinedObject:
            raise CredentialRejected(
                f"role {username!r} does not exist at {self._where()}"
            ) from None
        except psycopg.OperationalError as exc:
            raise TransientError(f"{self._where()}: connection lost ({exc.sqlstate})") from None
        except psycopg.Error as exc:
            raise CredentialRejected(
                f"{self._where()} refused a statement for role {username!r} "
                f"(SQLSTATE {exc.sqlstate}: {type(exc).__name__})"
            ) from None

    def _logs_in(self, credential: Credential) -> bool:
        try:
            self.test(credential)
        except CredentialRejected:
            return False
        return True

    @contextmanager
    def _admin_session(
        self, current: Credential | None, previous: Credential | None
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection allowed to ALTER ROLE; the admin secret's is reused between runs."""
        if not self.target.admin_secret:
            with self._connect_as_self(current, previous) as conn:
                yield conn
            return
        admin = self.context.lookup_secret(self.target.admin_secret)
        username = admin.username or self.target.username
        key = connection_key(connect_kwargs(self.target, username, str(admin.password)))
        with ADMIN_CONNECTIONS.borrow(key, lambda: self._connect(admin)) as conn:
            yield conn

    def _connect_as_self(
        self, current: Credential | None, previous: Credential | None
    ) -> psycopg.Connection[Any]:
        """No admin: log in as the user itself with CURRENT, else PREVIOUS (as AWS does)."""
        candidates = [c for c in (current, previous) if c is not None]
        if not candidates:
            raise CredentialRejected(
                f"no way in to {self._where()}: no CURRENT credential and no admin_secret; "
                "adopt the current password with `rotator put` or set target.admin_secret"
            )
        for index, candidate in enumerate(candidates):
            try:
                return self._connect(candidate)
            except CredentialRejected:
                if index == len(candidates) - 1:
                    raise
        raise AssertionError("unreachable")

    def _connect(
        self, credential: Credential, prove_password: bool = False
    ) -> psycopg.Connection[Any]:
        username = credential.username or self.target.username
        kwargs = connect_kwargs(self.target, username, str(credential.password))
        if prove_password and _PASSWORD_REQUIRED is not None:
            kwargs.update(_PASSWORD_REQUIRED)
        try:
            return psycopg.connect(**kwargs, autocommit=True)
        except psycopg.Error as exc:
            if prove_password and any(marker in str(exc) for marker in _NO_PASSWORD_ASKED):
                raise self._trust_error(username) from None
            if is_auth_failure(exc):
                raise CredentialRejected(
                    f"{self._where()} refused the login of role {username!r}: {_fatal(exc)}"
                ) from None
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TransientError(f"{self._where()} unreachable: {reason}") from None

    def _where(self) -> str:
        return f"postgres {self.target.host}:{self.target.port}/{self.target.dbname}"
