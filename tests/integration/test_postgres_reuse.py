"""The PostgreSQL rotator reuses admin sessions and trust proofs only while they are still true."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from psycopg import sql

from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, TransientError
from rotators.postgres import PostgresPasswordRotator
from tests.conftest import unique_role
from tests.integration.test_postgres_rotator import context, target
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


def admin_and_role(pg: PgServer) -> tuple[Credential, str, str]:
    admin, admin_password = unique_role("adm"), secrets.token_urlsafe(16)
    pg.create_role(admin, admin_password, "CREATEROLE")
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    pg.grant_admin(role, admin)
    return Credential(username=admin, password=admin_password), role, password


def rotate(rotator: PostgresPasswordRotator, current: Credential) -> Credential:
    pending = rotator.generate(current)
    rotator.apply(pending, current, None)
    rotator.test(pending)
    return pending


def sessions_of(pg: PgServer, role: str) -> int:
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_an_admin_locked_out_on_the_server_is_not_served_from_an_idle_session(
    pg: PgServer,
) -> None:
    admin, role, password = admin_and_role(pg)
    make: Callable[[], PostgresPasswordRotator] = lambda: PostgresPasswordRotator(  # noqa: E731
        target(pg, role, admin_secret="adm"), context({"adm": admin})
    )
    current = rotate(make(), make().complete(Credential(password=password)))
    with pg.admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} NOLOGIN VALID UNTIL '2000-01-01'").format(
                sql.Identifier(admin.username)
            )
        )
    with pytest.raises(CredentialRejected):
        rotate(make(), current)
    assert pg.logs_in(role, current["password"])


def test_a_rotated_admin_password_closes_the_sessions_of_the_old_one(pg: PgServer) -> None:
    admin, role, password = admin_and_role(pg)
    holder = {"adm": admin}
    make: Callable[[], PostgresPasswordRotator] = lambda: PostgresPasswordRotator(  # noqa: E731
        target(pg, role, admin_secret="adm"), context(holder)
    )
    current = rotate(make(), make().complete(Credential(password=password)))
    assert sessions_of(pg, admin.username) == 1
    new_password = secrets.token_urlsafe(16)
    with pg.admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(admin.username), sql.Literal(new_password)
            )
        )
    holder["adm"] = admin.replace(password=new_password)
    rotate(make(), current)
    deadline = time.monotonic() + 5
    while sessions_of(pg, admin.username) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions_of(pg, admin.username) == 1


def test_another_sslmode_never_gets_an_idle_session_of_a_laxer_one(pg: PgServer) -> None:
    admin, role, password = admin_and_role(pg)
    lax = PostgresPasswordRotator(
        target(pg, role, admin_secret="adm", sslmode="disable"), context({"adm": admin})
    )
    current = rotate(lax, lax.complete(Credential(password=password)))
    strict = PostgresPasswordRotator(
        target(pg, role, admin_secret="adm", sslmode="require"), context({"adm": admin})
    )
    pending = strict.generate(current)
    with pytest.raises(TransientError, match="SSL"):
        strict.apply(pending, current, None)  # this test server has no TLS
    assert pg.logs_in(role, current["password"])


@contextmanager
def trusted(pg: PgServer, role: str) -> Iterator[None]:
    """pg_hba lets `role` in with any password for as long as the block runs."""
    assert pg.local is not None
    hba = pg.local.datadir / "pg_hba.conf"
    original = hba.read_text()
    line = f'host all "{role}" 127.0.0.1/32 trust\nhost all "{role}" ::1/128 trust\n'
    hba.write_text(line + original)
    try:
        with pg.admin() as conn:
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
        yield
    finally:
        hba.write_text(original)
        with pg.admin() as conn:
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)


def test_a_test_after_a_recent_proof_still_refuses_a_server_turned_trust(pg: PgServer) -> None:
    if pg.local is None:
        pytest.skip("needs the test's own server to edit pg_hba.conf")
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    rotator = PostgresPasswordRotator(target(pg, role), context())
    current = rotator.complete(Credential(password=password))
    rotator.test(current)  # a proof for this login is now recorded
    with trusted(pg, role), pytest.raises(ConfigError, match="any password"):
        PostgresPasswordRotator(target(pg, role), context()).test(
            current.replace(password="anything-at-all")
        )
