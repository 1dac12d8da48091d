"""Admin connections are reused within a process, and never when they could mislead."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest

from rotators import pg_connections
from rotators.pg_connections import IdleConnections, PasswordCheckProofs, connection_key
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def opener(pg: PgServer, opened: list[int]) -> Any:
    def connect() -> psycopg.Connection[Any]:
        opened.append(1)
        return psycopg.connect(**pg.conninfo(), autocommit=True)

    return connect


def key_for(pg: PgServer, password: str | None = None, **settings: Any) -> Any:
    info = {**pg.conninfo(**settings), "password": password or pg.password}
    return connection_key(info)


def test_a_returned_connection_serves_the_next_run(pg: PgServer) -> None:
    pool, opened = IdleConnections(), []
    with pool.borrow(key_for(pg), opener(pg, opened)) as conn:
        first = backend_pid(conn)
    with pool.borrow(key_for(pg), opener(pg, opened)) as conn:
        assert backend_pid(conn) == first
    assert len(opened) == 1
    pool.close_all()


def test_another_password_gets_another_connection(pg: PgServer) -> None:
    """A rotated admin password is another login: never served an old session."""
    pool, opened = IdleConnections(), []
    with pool.borrow(key_for(pg), opener(pg, opened)):
        pass
    with pool.borrow(key_for(pg, "rotated-" + secrets.token_hex(4)), opener(pg, opened)):
        pass
    assert len(opened) == 2
    pool.close_all()


def test_a_connection_left_in_a_transaction_or_failing_is_not_kept(pg: PgServer) -> None:
    pool, opened = IdleConnections(), []
    with pool.borrow(key_for(pg), opener(pg, opened)) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    with (
        pytest.raises(psycopg.errors.UndefinedTable),
        pool.borrow(key_for(pg), opener(pg, opened)) as conn,
    ):
        conn.execute("SELECT * FROM no_such_table_here")
    assert conn.closed
    with pool.borrow(key_for(pg), opener(pg, opened)):
        pass
    assert len(opened) == 3
    pool.close_all()


def test_a_connection_the_server_ended_is_replaced_before_use(pg: PgServer) -> None:
    pool, opened = IdleConnections(), []
    with pool.borrow(key_for(pg), opener(pg, opened)) as conn:
        victim = backend_pid(conn)
    with pg.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
    with pool.borrow(key_for(pg), opener(pg, opened)) as conn:
        assert backend_pid(conn) != victim
    assert len(opened) == 2
    pool.close_all()


def test_the_key_never_holds_the_password(pg: PgServer) -> None:
    password = "visible-" + secrets.token_hex(8)
    assert password not in repr(key_for(pg, password))


def test_password_check_proofs_expire_and_are_per_login_settings(pg: PgServer) -> None:
    proofs = PasswordCheckProofs(ttl_seconds=0.0)
    proofs.record(key_for(pg))
    assert not proofs.proven(key_for(pg))
    lasting = PasswordCheckProofs()
    lasting.record(key_for(pg))
    assert lasting.proven(key_for(pg, "another password, same login"))
    assert not lasting.proven(key_for(pg, user="other"))
    assert not lasting.proven(key_for(pg, sslmode="require"))


def test_an_idle_connection_past_its_age_is_closed_not_reused(
    pg: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_connections, "MAX_IDLE_SECONDS", 0.0)
    pool, opened = IdleConnections(), []
    with pool.borrow(key_for(pg), opener(pg, opened)) as first:
        pass
    with pool.borrow(key_for(pg), opener(pg, opened)):
        pass
    assert len(opened) == 2
    assert first.closed
    pool.close_all()
