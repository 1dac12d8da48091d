"""`postgres-password` with `strategy: alternating`: two roles take turns, against a real server.

Every rotation sets the role that is not CURRENT, so the credential it replaces keeps working
for one more interval; the clone is created on first use as a member of the main role.
"""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from rotator.base import RotatorContext
from rotator.credential import Credential
from rotator.errors import ConfigError
from rotator.logging import redact
from rotator.passwords import PasswordPolicy
from rotator.schedule import load_plan
from rotator.stores import Stage
from rotators.pg_alternating import AlternatingPostgresRotator
from rotators.pg_target import PostgresTarget
from rotators.postgres import PostgresPasswordRotator
from tests.conftest import SchedulesWriter, unique_role
from tests.integration.conftest import Crash, PgPlan, PgPlanFactory, crash_at, leaked, stages
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration

ALTERNATING = {"db-0": {"strategy": "alternating"}}


def alternating_plan(pg_plan: PgPlanFactory, adopt: bool = True, **kwargs: object) -> PgPlan:
    """db-0 alternates between a fresh role and `<role>_clone`; its password adopted as CURRENT."""
    plan = pg_plan(targets=ALTERNATING, **kwargs)
    if adopt:
        plan.runtime.engine.adopt("db-0", Credential(password=plan.initial[plan.roles["db-0"]]))
    return plan


def clone_of(plan: PgPlan) -> str:
    return plan.roles["db-0"] + "_clone"


def current(plan: PgPlan) -> Credential:
    version = plan.store.read("db-0", Stage.CURRENT)
    assert version is not None
    return version.credential


def logs_in(pg: PgServer, credential: Credential) -> bool:
    assert credential.username is not None and credential.password is not None
    return pg.logs_in(credential.username, credential.password)


def memberships(pg: PgServer, member: str, role: str) -> int:
    """How many times `member` was granted `role` directly."""
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
            (role, member),
        ).fetchone()
    return 0 if row is None else int(row[0])


def is_role(pg: PgServer, role: str) -> bool:
    with pg.admin() as conn:
        row = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None


def superuser(pg: PgServer, statement: sql.Composable) -> None:
    with pg.admin() as conn:
        conn.execute(statement)


def pre_create_clone(plan: PgPlan, clone: str, login: bool = True) -> None:
    """A clone made by the team, as docs/rotator-postgres.md describes (PostgreSQL 16+ needs
    the admin to hold ADMIN OPTION on it)."""
    plan.pg.create_role(clone, secrets.token_urlsafe(16))
    plan.pg.grant_admin(clone, plan.roles["pg-admin"])
    if not login:
        superuser(plan.pg, sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(clone)))


def test_first_rotation_creates_a_clone_that_can_do_what_the_main_role_can(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    table = f"t_{secrets.token_hex(4)}"
    superuser(pg, sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))
    superuser(pg, sql.SQL("INSERT INTO {} VALUES (42)").format(sql.Identifier(table)))
    superuser(
        pg, sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(main))
    )
    assert not is_role(pg, clone)

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "succeeded"
    now = current(plan)
    assert now.username == clone
    assert memberships(pg, clone, main) == 1
    assert logs_in(pg, now)
    with pg.admin() as admin_conn:
        row = admin_conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
            (clone,),
        ).fetchone()
    assert row == (True, False, False)
    info = pg.conninfo(user=clone, password=now.password)
    with psycopg.connect(**info) as conn:
        rows = conn.execute(sql.SQL("SELECT x FROM {}").format(sql.Identifier(table))).fetchall()
    assert rows == [(42,)]


def test_current_flips_and_each_credential_works_for_exactly_one_more_interval(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    history = [current(plan)]  # the adopted main-role credential

    for _ in range(4):
        assert plan.runtime.engine.run("db-0").outcome == "succeeded"
        now = stages(plan.store, "db-0")
        assert now[Stage.PENDING] is None and now[Stage.PREVIOUS] is not None
        assert now[Stage.PREVIOUS].credential == history[-1]
        history.append(current(plan))
        assert logs_in(pg, history[-1])
        assert logs_in(pg, history[-2]), "the credential just replaced must keep working"
        if len(history) >= 3:
            assert not logs_in(pg, history[-3]), "two steps back must no longer log in"

    assert [c.username for c in history] == [main, clone, main, clone, main]
    assert memberships(pg, clone, main) == 1


def test_first_rotation_with_no_current_sets_up_the_clone(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan, adopt=False)
    main, clone = plan.roles["db-0"], clone_of(plan)

    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    assert current(plan).username == clone and logs_in(pg, current(plan))
    assert pg.logs_in(main, plan.initial[main])  # the main role was not touched
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    assert current(plan).username == main and not pg.logs_in(main, plan.initial[main])


def rotator_for(pg: PgServer, plan: PgPlan, **extra: object) -> PostgresPasswordRotator:
    """The rotator db-0 would get, outside the engine (the admin read from the plan's store)."""
    target = PostgresTarget(
        host=pg.host,
        port=pg.port,
        dbname=pg.dbname,
        username=plan.roles["db-0"],
        admin_secret="pg-admin",
        strategy="alternating",
        **extra,
    )
    engine = plan.runtime.engine
    context = RotatorContext("db-0", PasswordPolicy(), engine.read_current)
    return PostgresPasswordRotator(target, context)


def test_apply_replayed_changes_nothing_on_either_role(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    rotator = rotator_for(pg, plan)
    assert isinstance(rotator, AlternatingPostgresRotator)
    adopted = current(plan)

    to_clone = rotator.generate(adopted)
    rotator.apply(to_clone, adopted, None)
    created = pg.verifier(clone)
    rotator.apply(to_clone, adopted, None)  # a replay: the clone exists and logs in
    rotator_for(pg, plan).apply(to_clone, adopted, None)  # another process replays it too
    assert to_clone.username == clone and pg.verifier(clone) == created
    assert memberships(pg, clone, main) == 1

    to_main = rotator.generate(to_clone)
    before = pg.verifier(main)
    rotator.apply(to_main, to_clone, adopted)
    changed = pg.verifier(main)
    rotator.apply(to_main, to_clone, adopted)
    assert to_main.username == main and before != changed == pg.verifier(main)
    rotator.test(to_main)
    rotator.test(to_clone)


def test_a_pre_created_clone_is_made_a_member_and_kept(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main = plan.roles["db-0"]
    clone = unique_role("own_clone")
    pre_create_clone(plan, clone)  # no membership yet
    rotator = rotator_for(pg, plan, clone_username=clone)
    adopted = current(plan)

    pending = rotator.generate(adopted)
    rotator.apply(pending, adopted, None)
    rotator.apply(pending, adopted, None)

    assert pending.username == clone and logs_in(pg, pending)
    assert memberships(pg, clone, main) == 1


def test_a_crash_after_apply_is_finished_by_the_next_run(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    clone = clone_of(plan)
    crashing = plan.new_runtime(step_hook=crash_at("applied"))

    with pytest.raises(Crash):
        crashing.engine.run("db-0", run_id="crashed-run")
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None and pending.credential.username == clone
    applied = pg.verifier(clone)

    result = plan.new_runtime().engine.run("db-0")

    assert result.outcome == "succeeded" and result.run_id == "crashed-run"
    assert current(plan) == pending.credential and pg.verifier(clone) == applied
    assert memberships(pg, clone, plan.roles["db-0"]) == 1


def test_a_current_that_does_not_log_in_stops_the_admin(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    pre_create_clone(plan, clone)
    clone_before = pg.verifier(clone)
    # Someone changed the main role's password behind rotator's back: CURRENT is unproven.
    superuser(
        pg,
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(main), sql.Literal(secrets.token_urlsafe(16))
        ),
    )

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("CredentialRejected:")
    assert "CURRENT does not log in" in result.error and repr(clone) in result.error
    assert pg.verifier(clone) == clone_before  # the admin changed nothing
    assert memberships(pg, clone, main) == 0


def test_a_clone_that_cannot_log_in_rolls_back_to_current(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    pre_create_clone(plan, clone, login=False)
    adopted, main_before = current(plan), pg.verifier(main)

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "rolled_back"
    assert current(plan) == adopted and logs_in(pg, adopted)
    assert pg.verifier(main) == main_before  # putting CURRENT back was a no-op
    assert plan.store.read("db-0", Stage.PENDING) is None


def test_a_clone_set_to_act_as_the_main_role_creates_objects_the_main_role_owns(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    """The ownership advice of docs/rotator-postgres.md: `ALTER ROLE clone SET role = main`."""
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    superuser(pg, sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(main)))
    pre_create_clone(plan, clone)
    superuser(pg, sql.SQL("GRANT {} TO {}").format(sql.Identifier(main), sql.Identifier(clone)))
    superuser(
        pg, sql.SQL("ALTER ROLE {} SET role = {}").format(sql.Identifier(clone), sql.Literal(main))
    )

    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    now = current(plan)
    assert now.username == clone
    table = f"made_{secrets.token_hex(4)}"
    with psycopg.connect(**pg.conninfo(user=clone, password=now.password)) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))
        conn.commit()
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = %s", (table,)
        ).fetchone()
    assert row == (main,)


def test_a_stored_value_for_a_third_role_is_refused(pg: PgServer, pg_plan: PgPlanFactory) -> None:
    plan = alternating_plan(pg_plan, adopt=False)
    victim, password = unique_role("victim"), secrets.token_urlsafe(16)
    pg.create_role(victim, password)
    planted = Credential(
        engine="postgres",
        host=pg.host,
        port=pg.port,
        dbname=pg.dbname,
        username=victim,
        password=password,
    )
    plan.store.put_current("db-0", planted, "planted")

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "failed" and result.error is not None
    assert "StoreError" in result.error and victim in result.error
    assert plan.roles["db-0"] in result.error and clone_of(plan) in result.error
    assert pg.logs_in(victim, password) and not is_role(pg, clone_of(plan))


def test_no_password_reaches_logs_results_or_the_server_log(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    with capture_logs(processors=[redact]) as events:
        results = [plan.runtime.engine.run("db-0") for _ in range(3)]
        superuser(
            pg,
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(current(plan).username or ""), sql.Literal("x" * 20)
            ),
        )
        results.append(plan.runtime.engine.run("db-0"))  # refused by the guard
    assert [r.outcome for r in results] == ["succeeded"] * 3 + ["failed"]
    values = {plan.initial[plan.roles["db-0"]], plan.initial[plan.roles["pg-admin"]]}
    for stage in (Stage.CURRENT, Stage.PREVIOUS, Stage.PENDING):
        version = plan.store.read("db-0", stage)
        if version is not None:
            values.add(version.credential.password or "")
    values.discard("")
    assert len(values) >= 4
    haystacks = [repr(events), *(repr(r) for r in results), *(r.error or "" for r in results)]
    assert leaked(haystacks, values) == []
    server_log = pg.server_log()
    if server_log is not None:  # the CREATE ROLE and ALTER ROLE statements carry verifiers
        assert "CREATE ROLE" in server_log and leaked([server_log], values) == []


def load_problems(write_schedules: SchedulesWriter, target: str) -> list[str]:
    path = write_schedules(
        f"""\
        version: 1
        stores: {{local: {{type: embedded}}}}
        secrets:
          pg-admin:
            rotator: postgres-password
            store: local
            every: 30d
            target: {{host: db.internal, username: rotator_admin}}
          app-db:
            rotator: postgres-password
            store: local
            every: 30d
            target:
              host: db.internal
{target}"""
    )
    with pytest.raises(ConfigError) as raised:
        load_plan(path)
    return raised.value.problems


def test_a_clone_name_over_63_bytes_is_refused_with_its_line(
    write_schedules: SchedulesWriter,
) -> None:
    username = "a" * 60
    problems = load_problems(
        write_schedules,
        f"              username: {username}\n"
        "              admin_secret: pg-admin\n"
        "              strategy: alternating\n",
    )
    assert len(problems) == 1, problems
    assert ":13: secrets.app-db.target.clone_username:" in problems[0]
    assert "66 bytes" in problems[0] and "set a shorter `clone_username`" in problems[0]

    too_long = "é" * 32
    problems = load_problems(
        write_schedules,
        "              username: app\n"
        "              admin_secret: pg-admin\n"
        "              strategy: alternating\n"
        f"              clone_username: {too_long}\n",
    )
    assert len(problems) == 1 and ":18: secrets.app-db.target.clone_username:" in problems[0]


def test_a_short_clone_username_makes_a_long_username_valid(
    write_schedules: SchedulesWriter,
) -> None:
    path = write_schedules(
        """\
        version: 1
        stores: {local: {type: embedded}}
        secrets:
          pg-admin:
            rotator: postgres-password
            store: local
            every: 30d
            target: {host: db.internal, username: rotator_admin}
          app-db:
            rotator: postgres-password
            store: local
            every: 30d
            target:
              host: db.internal
              username: %s
              admin_secret: pg-admin
              strategy: alternating
              clone_username: app_b
        """
        % ("a" * 63)
    )
    target = load_plan(path).secret("app-db").target
    assert isinstance(target, PostgresTarget)
    assert target.role_names == ("a" * 63, "app_b")


def test_alternating_without_an_admin_secret_is_refused_with_its_line(
    write_schedules: SchedulesWriter,
) -> None:
    problems = load_problems(
        write_schedules, "              username: app\n              strategy: alternating\n"
    )
    assert len(problems) == 1, problems
    assert ":16: secrets.app-db.target.strategy:" in problems[0]
    assert "needs `admin_secret`" in problems[0] and "CREATEROLE" in problems[0]


def test_a_clone_username_without_alternating_and_an_admin_that_is_the_clone_are_refused(
    write_schedules: SchedulesWriter,
) -> None:
    problems = load_problems(
        write_schedules, "              username: app\n              clone_username: app_b\n"
    )
    assert len(problems) == 1 and ":16: secrets.app-db.target.clone_username:" in problems[0]
    assert "only used with `strategy: alternating`" in problems[0]

    problems = load_problems(
        write_schedules,
        "              username: rotator_admin_x\n"
        "              admin_secret: pg-admin\n"
        "              strategy: alternating\n"
        "              clone_username: rotator_admin\n",
    )
    # Also a self-lockout (the clone is the admin's login): each problem is listed.
    (admin,) = [p for p in problems if "secrets.app-db.target.admin_secret:" in p]
    assert "the clone this secret alternates with" in admin
    assert any("target.username:" in p and "same login as secret 'pg-admin'" in p for p in problems)


def test_both_roles_are_the_secrets_managed_logins() -> None:
    """What the self-lockout cross-check needs to see (one login per role)."""
    target = PostgresTarget(
        host="db.internal", username="app", admin_secret="pg-admin", strategy="alternating"
    )
    assert PostgresPasswordRotator.managed_identities(target) == (
        ("postgres", "db.internal", "5432", "app"),
        ("postgres", "db.internal", "5432", "app_clone"),
    )
    single = PostgresTarget(host="db.internal", username="app")
    assert PostgresPasswordRotator.managed_identities(single) == (
        ("postgres", "db.internal", "5432", "app"),
    )


def refused_before_any_change(
    pg: PgServer, plan: PgPlan, clone: str, *, other_pw: str, fragments: tuple[str, ...]
) -> None:
    """The run fails with a ConfigError naming both roles, and neither role was touched."""
    main, adopted = plan.roles["db-0"], current(plan)
    main_before, clone_before = pg.verifier(main), pg.verifier(clone)
    members_before = memberships(pg, clone, main)

    result = plan.runtime.engine.run("db-0")

    assert result.outcome == "failed" and result.error is not None
    assert result.error.startswith("ConfigError:"), result.error
    assert repr(clone) in result.error and repr(main) in result.error
    assert "nothing was changed" in result.error
    for fragment in fragments:
        assert fragment in result.error, result.error
    assert pg.verifier(main) == main_before and pg.verifier(clone) == clone_before
    assert pg.logs_in(clone, other_pw) and logs_in(pg, adopted)
    assert memberships(pg, clone, main) == members_before
    assert current(plan) == adopted


def test_a_noinherit_clone_that_is_a_member_is_refused_before_any_change(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    """MEMBER without USAGE: the clone would log in but see none of the main role's tables."""
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    other_pw = secrets.token_urlsafe(16)
    pg.create_role(clone, other_pw, "NOINHERIT")
    pg.grant_admin(clone, plan.roles["pg-admin"])
    superuser(pg, sql.SQL("GRANT {} TO {}").format(sql.Identifier(main), sql.Identifier(clone)))

    refused_before_any_change(pg, plan, clone, other_pw=other_pw, fragments=("INHERIT",))

    superuser(pg, sql.SQL("ALTER ROLE {} INHERIT").format(sql.Identifier(clone)))
    result = plan.runtime.engine.run("db-0")  # fixed as the error says: the rotation resumes
    assert result.outcome == "succeeded", result.error
    assert current(plan).username == clone and logs_in(pg, current(plan))


def test_a_noinherit_clone_that_is_not_a_member_is_not_granted_the_main_role(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    clone = clone_of(plan)
    other_pw = secrets.token_urlsafe(16)
    pg.create_role(clone, other_pw, "NOINHERIT")
    pg.grant_admin(clone, plan.roles["pg-admin"])

    refused_before_any_change(pg, plan, clone, other_pw=other_pw, fragments=("NOINHERIT",))


def test_an_existing_role_with_powers_the_main_role_lacks_is_not_taken_over(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    """Another team's role that carries the clone's name keeps its password and its powers."""
    plan = alternating_plan(pg_plan)
    clone = clone_of(plan)
    other_pw = secrets.token_urlsafe(16)
    pg.create_role(clone, other_pw, "CREATEDB", "BYPASSRLS")
    pg.grant_admin(clone, plan.roles["pg-admin"])

    refused_before_any_change(
        pg, plan, clone, other_pw=other_pw, fragments=("CREATEDB, BYPASSRLS", "clone_username")
    )
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = %s", (clone,)
        ).fetchone()
    assert row == (True, True)


def test_an_existing_role_with_other_memberships_is_not_taken_over(
    pg: PgServer, pg_plan: PgPlanFactory
) -> None:
    plan = alternating_plan(pg_plan)
    main, clone = plan.roles["db-0"], clone_of(plan)
    extra = unique_role("extra")
    superuser(pg, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(extra)))
    other_pw = secrets.token_urlsafe(16)
    pg.create_role(clone, other_pw)
    pg.grant_admin(clone, plan.roles["pg-admin"])
    for role in (main, extra):
        superuser(pg, sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(clone)))

    refused_before_any_change(pg, plan, clone, other_pw=other_pw, fragments=(repr(extra),))
