"""For applications: the PostgreSQL side of the client (which failures are refused logins, and
psycopg connection arguments built from a secret's fields).

`SecretReader.call` uses `postgres_auth_failed` as its default check, and
`SecretReader.connect_postgres` uses both; apps call them directly for their own
connection code (see docs/client.md).
"""

from __future__ import annotations

from typing import Any

import psycopg

from rotator.credential import Credential
from rotator.errors import ConfigError

_PG_AUTH_SQLSTATES = frozenset({"28P01", "28000"})


def postgres_auth_failed(exc: BaseException) -> bool:
    """True when PostgreSQL refused a login or password (SQLSTATE 28P01 or 28000).

    A refused connection attempt reaches psycopg as an OperationalError without a
    SQLSTATE, so its libpq text is checked too. SQLAlchemy's wrappers are looked
    through (`exc.orig`), as are chained causes.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.Error):
            if current.sqlstate in _PG_AUTH_SQLSTATES:
                return True
            if current.sqlstate is None and "password authentication failed" in str(current):
                return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def postgres_connect_kwargs(credential: Credential, **overrides: Any) -> dict[str, Any]:
    """psycopg.connect keyword arguments from a secret's AWS-style fields (never a DSN string).

    `overrides` replace any field but the password (e.g. dbname, sslmode, connect_timeout).
    """
    if "password" in overrides:
        raise ConfigError("connect_postgres takes the password from the secret; do not pass one")
    fields = {"host": credential.get("host"), "port": credential.get("port")}
    fields["dbname"] = credential.get("dbname")
    fields["user"] = credential.get("username")
    kwargs = {k: v for k, v in fields.items() if v is not None}
    kwargs.update(overrides)
    kwargs["password"] = credential.password
    missing = [k for k in ("host", "user", "password") if not kwargs.get(k)]
    if missing:
        raise ConfigError(
            f"the secret has no {', '.join(missing)} for a PostgreSQL connection "
            f"(has: {', '.join(sorted(credential.public())) or 'no public fields'}); "
            "pass host=/user= to connect_postgres or store them in the secret"
        )
    return kwargs
