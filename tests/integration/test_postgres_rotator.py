"""The PostgreSQL rotator against a real server: hostile names and passwords, error mapping."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from rotator.base import RotatorContext
from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import CredentialRejected, TransientError
from rotator.passwords import PasswordPolicy
from rotator.stores import Stage
from rotators.postgres import PostgresPasswordRotator, PostgresTarget
from tests.conftest import unique_role
from tests.integration.conftest import PgPlanFactory
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration

#: Passwords an operator might adopt; each must survive conninfo quoting and SQL.
NASTY_PASSWORDS = [
    "pa'ss\"wo\\rd'; DROP ROLE postgres; --",
    "$$ dollar $$ $tag$ body $tag$",
    "  spaces at both ends  ",
    "ünïcødé 日本語 пароль 🔑",
    "%s %(x)s {} {0} \\x00 \\N",
    "x host=evil.example port=1 user=postgres",
    "back\\\\slash\\",
]


def injection_roles(bystander: str) -> list[str]:
    """Role names from an injection corpus, each made unique for this test."""
    tag = secrets.token_hex(4)
    roles = [
        f"it's_{tag}",
        f'"; DROP ROLE {bystander}; --{tag}',
        f"'; DROP ROLE {bystander}; --{tag}",
        f"back\\slash\\{tag}\\",
        f"rôle ünïcode 日本 {tag}",
        f"  spaced role {tag}  ",
        f"$${tag}$$ $q$x$q$",
        f"fmt %s {{}} {{0}} {tag}",
        f"{tag}_" + "é" * 27,
        tag + "x" * 55,
    ]
    assert len(roles[-1].encode()) == 63 and len(roles[-2].encode()) == 63
    return roles


def role_exists(pg: PgServer, role: str) -> bool:
    with pg.admin() as conn:
        row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None and row[0] == 1


def test_injection_corpus_of_names_and_passwords_rotates_and_harms_no_one(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    bystander, bystander_password = unique_role("x"), secrets.token_urlsafe(16)
    pg.create_role(bystander, bystander_password)
    names = injection_roles(bystander)
    hostile = {f"inj-{i}": role for i, role in enumerate(names)}
    own = {f"self-{i}": unique_role("self") for i in range(len(NASTY_PASSWORDS))}
    plan = pg_plan(
        {**hostile, **own},
        passwords=dict(zip(own.values(), NASTY_PASSWORDS, strict=True)),
        admin_password="admin 'pass' \\ $$ " + secrets.token_hex(4),
        self_managed=own,
        defaults={"password": {"exclude_characters": "", "length": 40}},
    )
    engine = plan.runtime.engine
    for name, role in own.items():
        engine.adopt(name, Credential(password=plan.initial[role]))

    firsts = {name: engine.run(name) for name in plan.roles if name != "pg-admin"}
    seconds = {name: engine.run(name) for name in hostile}

    assert {n: r.outcome for n, r in firsts.items()} == dict.fromkeys(firsts, "succeeded")
    assert {n: r.outcome for n, r in seconds.items()} == dict.fromkeys(seconds, "succeeded")
    generated = []
    for name in firsts:
        current = plan.store.read(name, Stage.CURRENT)
        previous = plan.store.read(name, Stage.PREVIOUS)
        assert current is not None and previous is not None
        assert current.credential.username == plan.roles[name]
        assert plan.logs_in(name, current.credential.password), name
        assert not plan.logs_in(name, previous.credential.password), name
        generated.append(current.credential.password or "")
    for name, role in own.items():
        assert not plan.logs_in(name, plan.initial[role])  # the adopted nasty one is retired
    assert any(ch in password for password in generated for ch in "'\\\"")
    assert pg.logs_in(bystander, bystander_password)
    for role in [bystander, *plan.roles.values()]:
        assert role_exists(pg, role), role


def context(lookup: dict[str, Credential] | None = None) -> RotatorContext:
    secrets_by_name = lookup or {}
    return RotatorContext("db", PasswordPolicy(), lambda name: secrets_by_name[name])


def target(pg: PgServer, role: str, **extra: object) -> PostgresTarget:
    return PostgresTarget(host=pg.host, port=pg.port, dbname=pg.dbname, username=role, **extra)


def test_apply_is_idempotent_and_changes_the_password_once(pg: PgServer) -> None:
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    rotator = PostgresPasswordRotator(target(pg, role), context())
    current = rotator.complete(Credential(password=password))
    pending = rotator.generate(current)

    before = pg.verifier(role)
    rotator.apply(pending, current, None)
    applied = pg.verifier(role)
    rotator.apply(pending, current, None)  # a replay: PENDING already logs in, nothing to do

    rotator.test(pending)
    assert not pg.logs_in(role, password)
    # Every ALTER ROLE stores a freshly salted verifier, so an unchanged one means no second.
    assert applied != before
    assert pg.verifier(role) == applied


def test_apply_falls_back_to_previous_when_current_no_longer_logs_in(pg: PgServer) -> None:
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    rotator = PostgresPasswordRotator(target(pg, role), context())
    stale = rotator.complete(Credential(password="not-" + secrets.token_hex(8)))
    previous = rotator.complete(Credential(password=password))
    pending = rotator.generate(stale)

    rotator.apply(pending, stale, previous)

    rotator.test(pending)


def test_wrong_password_unknown_role_and_missing_privilege_are_rejections(
    pg: PgServer,
) -> None:
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    weak, weak_password = unique_role("weak"), secrets.token_urlsafe(16)
    pg.create_role(weak, weak_password)  # no CREATEROLE
    rotator = PostgresPasswordRotator(target(pg, role), context())

    with pytest.raises(CredentialRejected, match="refused the login"):
        rotator.test(rotator.complete(Credential(password="wrong-" + secrets.token_hex(8))))

    admin = Credential(username=weak, password=weak_password)
    deputy = PostgresPasswordRotator(
        target(pg, role, admin_secret="weak"), context({"weak": admin})
    )
    with pytest.raises(CredentialRejected, match="may not change role"):
        deputy.apply(deputy.generate(None), None, None)
    assert pg.logs_in(role, password)

    ghost = unique_role("ghost")
    creator, creator_password = unique_role("creator"), secrets.token_urlsafe(16)
    pg.create_role(creator, creator_password, "CREATEROLE")
    missing = PostgresPasswordRotator(
        target(pg, ghost, admin_secret="c"),
        context({"c": Credential(username=creator, password=creator_password)}),
    )
    with pytest.raises(CredentialRejected, match="does not exist"):
        missing.apply(missing.generate(None), None, None)


def test_no_way_in_without_current_or_admin_is_a_rejection(pg: PgServer) -> None:
    rotator = PostgresPasswordRotator(target(pg, unique_role()), context())

    with pytest.raises(CredentialRejected, match="no way in"):
        rotator.apply(rotator.generate(None), None, None)


def test_closed_port_is_transient(pg: PgServer) -> None:
    closed = PostgresTarget(host="127.0.0.1", port=free_port(), username="app", connect_timeout=2)
    rotator = PostgresPasswordRotator(closed, context())
    credential = rotator.generate(None)

    with pytest.raises(TransientError, match="unreachable") as caught:
        rotator.test(credential)

    assert credential.password is not None and credential.password not in str(caught.value)


def test_role_name_longer_than_63_bytes_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="63 bytes"):
        PostgresTarget(host="h", username="é" * 32)
    with pytest.raises(ValidationError, match="NUL"):
        PostgresTarget(host="h", username="a\x00b")


@pytest.mark.parametrize("via", ["self", "admin"])
def test_role_change_is_sent_as_a_scram_verifier(pg: PgServer, via: str) -> None:
    """The server would store a plaintext as md5 here; it stores SCRAM, so it got a verifier."""
    role, password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(role, password)
    login, login_password = role, password  # the role the rotator runs ALTER ROLE as
    lookup: dict[str, Credential] = {}
    extra: dict[str, object] = {}
    if via == "admin":
        login, login_password = unique_role("admin"), secrets.token_urlsafe(16)
        pg.create_role(login, login_password, "CREATEROLE")
        pg.grant_admin(role, login)
        lookup["adm"] = Credential(username=login, password=login_password)
        extra["admin_secret"] = "adm"
    with pg.admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET password_encryption = 'md5'").format(sql.Identifier(login))
        )
    with psycopg.connect(**pg.conninfo(user=login, password=login_password)) as conn:
        row = conn.execute("SHOW password_encryption").fetchone()
    assert row == ("md5",)  # so a plaintext sent in that session would be stored as md5
    rotator = PostgresPasswordRotator(target(pg, role, **extra), context(lookup))
    current = rotator.complete(Credential(password=password))
    pending = rotator.generate(current)

    rotator.apply(pending, current, None)

    stored = pg.verifier(role)
    assert stored is not None and stored.startswith("SCRAM-SHA-256$"), stored
    assert pending.password is not None and pending.password not in stored
    rotator.test(pending)
    assert not pg.logs_in(role, password)


def test_a_server_that_accepts_any_password_is_refused_before_anything_changes(
    tmp_path, make_runtime, write_schedules
) -> None:
    """On a trust server a login proves nothing: the rotation fails and the role is untouched."""
    from rotator.devservers import LocalPostgres

    trusting = LocalPostgres(host_auth="trust").start()
    try:
        with psycopg.connect(**trusting.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE ROLE trusted_app LOGIN PASSWORD 'initial-password-1'")
        schedules = write_schedules(
            f"""
            version: 1
            stores: {{local: {{type: embedded}}}}
            defaults: {{max_attempts: 1}}
            secrets:
              app:
                rotator: postgres-password
                store: local
                every: 30d
                target: {{host: 127.0.0.1, port: {trusting.port}, username: trusted_app}}
            """
        )
        runtime = make_runtime(schedules)
        runtime.engine.adopt("app", Credential(password="initial-password-1"))
        verifier_query = "SELECT rolpassword FROM pg_authid WHERE rolname = 'trusted_app'"
        with psycopg.connect(**trusting.conninfo(), autocommit=True) as conn:
            before = conn.execute(verifier_query).fetchone()
        result = runtime.engine.run("app")
        assert result.outcome == "failed"
        assert result.error and "any password" in result.error
        with psycopg.connect(**trusting.conninfo(), autocommit=True) as conn:
            after = conn.execute(verifier_query).fetchone()
        assert before is not None and after == before  # no ALTER ROLE reached the server
        current = runtime.stores.get("local").read("app", Stage.CURRENT)
        assert current is not None and current.credential.password == "initial-password-1"
        assert runtime.history.steps(result.run_id)[-1].status == "error"
        assert [s.step for s in runtime.history.steps(result.run_id)].count("apply") == 0
    finally:
        trusting.stop()
