"""Adoption (`rotator put`): atomic, settles interrupted runs, unsticks a PENDING."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from psycopg import sql

from rotator.credential import Credential
from rotator.errors import ConfigError, LockLost, RotationInProgress
from rotator.history import Database, utcnow
from rotator.stores import SecretVersion, Stage
from rotator.stores.embedded import EmbeddedStore
from rotators.postgres import PostgresPasswordRotator
from tests.integration.conftest import Crash, PgPlan, PgPlanFactory, crash_at, set_lease
from tests.integration.test_cli import Cli

pytestmark = pytest.mark.integration


def steal_lease(database: Database, secret: str) -> None:
    """Another worker takes the lease of `secret` for the next five minutes."""
    set_lease(
        database,
        secret,
        owner="another-worker",
        fence=999,
        expires_at=utcnow() + timedelta(minutes=5),
    )


def set_password(plan: PgPlan, secret: str, password: str) -> None:
    """What an operator does by hand on the server: ALTER ROLE as the superuser."""
    role = plan.roles[secret]
    with plan.pg.admin() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode())
            )
        )


def test_replace_pending_adopts_the_given_value_and_drops_pending(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    engine, store = plan.runtime.engine, plan.store
    role_password = plan.initial[plan.roles["db-0"]]
    engine.adopt("db-0", Credential(password=role_password))
    old = store.read("db-0", Stage.CURRENT)
    stuck = store.put_pending("db-0", Credential(password="s" * 24), "stuck-run")
    set_password(plan, "db-0", "hand-set-" + "x" * 16)

    with pytest.raises(RotationInProgress, match="--replace-pending"):
        engine.adopt("db-0", Credential(password="hand-set-" + "x" * 16))
    result = engine.adopt("db-0", Credential(password="hand-set-" + "x" * 16), replace_pending=True)

    assert result.outcome == "adopted"
    assert store.read("db-0", Stage.PENDING) is None
    current, previous = store.read("db-0", Stage.CURRENT), store.read("db-0", Stage.PREVIOUS)
    assert current is not None and current.credential.password == "hand-set-" + "x" * 16
    assert previous is not None and old is not None and previous.version_id == old.version_id
    steps = plan.runtime.history.steps(result.run_id)
    assert steps[-1].detail == f"replaced PENDING version {stuck.version_id}"


def test_an_interrupted_adoption_is_closed_not_resumed_as_a_rotation(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    plan.runtime.history.start_run("dead-adopt", "db-0", "adopt", None)  # died before storing

    result = plan.new_runtime().engine.run("db-0")

    assert result.outcome == "succeeded" and not result.resumed
    dead = plan.runtime.history.get_run("dead-adopt")
    assert dead is not None and dead.status == "failed"


def test_put_current_is_one_transaction_that_keeps_previous(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    store = plan.store
    first = store.put_current("db-0", Credential(password="a" * 20), "t1")
    second = store.put_current("db-0", Credential(password="b" * 20), "t2")
    assert store.read("db-0", Stage.CURRENT).version_id == second.version_id  # type: ignore[union-attr]
    assert store.read("db-0", Stage.PREVIOUS).version_id == first.version_id  # type: ignore[union-attr]
    store.put_pending("db-0", Credential(password="c" * 20), "t3")
    with pytest.raises(Exception, match="PENDING"):
        store.put_current("db-0", Credential(password="d" * 20), "t4")
    assert store.read("db-0", Stage.CURRENT).version_id == second.version_id  # type: ignore[union-attr]


def test_cli_put_replace_pending(pg_plan: PgPlanFactory, tmp_path) -> None:
    plan = pg_plan()
    plan.store.put_pending("db-0", Credential(password="p" * 24), "stuck-run")
    cli = Cli(tmp_path, plan.schedules)
    cli.env["ROTATOR_DATABASE_URL"] = plan.runtime.settings.resolved_database_url
    cli.env["ROTATOR_ENCRYPTION_KEY"] = plan.runtime.settings.encryption_key.get_secret_value()  # type: ignore[union-attr]
    value = json.dumps({"password": plan.initial[plan.roles["db-0"]]})
    refused = cli("put", "db-0", stdin=value)
    assert refused.returncode == 2 and "--replace-pending" in refused.stderr
    adopted = cli("put", "db-0", "--replace-pending", stdin=value)
    assert adopted.returncode == 0, adopted.stderr
    rotated = cli("rotate", "db-0", "--inline", "--json")
    assert rotated.returncode == 0, rotated.stderr
    current = plan.new_runtime().stores.get("local").read("db-0", Stage.CURRENT)
    assert current is not None and plan.logs_in("db-0", current.credential.password)


def test_replace_pending_refuses_while_pending_still_works(pg_plan: PgPlanFactory) -> None:
    """After a crash past apply only PENDING logs in: replacing it would lose the login."""
    plan = pg_plan()
    old_password = plan.initial[plan.roles["db-0"]]
    plan.runtime.engine.adopt("db-0", Credential(password=old_password))
    with pytest.raises(Crash):
        plan.new_runtime(step_hook=crash_at("applied")).engine.run("db-0")
    pending = plan.store.read("db-0", Stage.PENDING)
    assert pending is not None and plan.logs_in("db-0", pending.credential.password)

    with pytest.raises(ConfigError, match="PENDING value of 'db-0' works"):
        plan.new_runtime().engine.adopt(
            "db-0", Credential(password=old_password), replace_pending=True
        )
    assert plan.store.read("db-0", Stage.PENDING) == pending


def test_replace_pending_refuses_a_value_the_target_refuses(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    plan.store.put_pending("db-0", Credential(password="s" * 24), "stuck-run")
    with pytest.raises(ConfigError, match="refuses the value given"):
        plan.runtime.engine.adopt(
            "db-0", Credential(password="not-the-password-" + "y" * 8), replace_pending=True
        )
    assert plan.store.read("db-0", Stage.PENDING) is not None


def test_a_lease_lost_after_the_promote_still_reports_success(pg_plan: PgPlanFactory) -> None:
    """The promote is the point of no return: a run that got there succeeded."""
    plan = pg_plan()
    runtime = plan.new_runtime()
    database = runtime.database

    class LeaseStolenDuringPromote(EmbeddedStore):
        def promote(self, path: str, version_id: str) -> None:
            super().promote(path, version_id)
            steal_lease(database, "db-0")

    store = LeaseStolenDuringPromote("local", database, runtime.settings.fernet())
    runtime.stores._built["local"] = store
    result = runtime.engine.run("db-0")
    assert result.outcome == "succeeded"
    current = store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == result.version_id
    assert plan.logs_in("db-0", current.credential.password)


def test_a_pending_for_another_login_can_be_replaced(pg_plan: PgPlanFactory) -> None:
    """The target block changed after a crash past apply: the old PENDING can never finish."""
    plan = pg_plan()
    stale = Credential(
        engine="postgres",
        host=plan.pg.host,
        port=plan.pg.port,
        dbname=plan.pg.dbname,
        username=plan.roles["pg-admin"],
        password=plan.initial[plan.roles["pg-admin"]],
    )  # logs in, wrong login
    plan.store.put_pending("db-0", stale, "stuck-run")
    given = plan.initial[plan.roles["db-0"]]
    result = plan.runtime.engine.adopt("db-0", Credential(password=given), replace_pending=True)
    assert result.outcome == "adopted"
    assert plan.store.read("db-0", Stage.PENDING) is None


def test_an_adoption_that_died_after_storing_is_not_resumed(pg_plan: PgPlanFactory) -> None:
    """Its value is CURRENT already: the next rotate makes a new password, not a no-op."""
    plan = pg_plan()
    plan.runtime.history.start_run("dead-adopt", "db-0", "adopt", None)
    engine = plan.runtime.engine
    value = engine.rotator_for(engine.plan.secret("db-0")).complete(
        Credential(password=plan.initial[plan.roles["db-0"]])
    )
    adopted = plan.store.put_current("db-0", value, "dead-adopt")
    result = plan.new_runtime().engine.run("db-0")
    assert result.outcome == "succeeded" and not result.resumed
    assert result.version_id != adopted.version_id
    dead = plan.runtime.history.get_run("dead-adopt")
    assert dead is not None and dead.status == "adopted"
    assert not plan.logs_in("db-0", plan.initial[plan.roles["db-0"]])


def test_put_current_failing_midway_keeps_current(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    before = plan.store.put_current("db-0", Credential(password="a" * 20), "t1")
    runtime = plan.new_runtime()

    class FailsWhileWriting(EmbeddedStore):
        def _add(self, *args: object, **kwargs: object) -> SecretVersion:
            raise RuntimeError("disk full")

    broken = FailsWhileWriting("local", runtime.database, runtime.settings.fernet())
    with pytest.raises(RuntimeError):
        broken.put_current("db-0", Credential(password="b" * 20), "t2")
    current = plan.store.read("db-0", Stage.CURRENT)
    assert current is not None and current.version_id == before.version_id
    assert plan.store.read("db-0", Stage.PREVIOUS) is None


def test_a_put_that_lost_its_lease_writes_nothing(pg_plan: PgPlanFactory) -> None:
    """Another worker took over while the replacement was being checked: hands off."""
    plan = pg_plan()
    plan.runtime.history.start_run("stuck", "db-0", "manual", None)
    plan.store.put_pending("db-0", Credential(password="s" * 24), "stuck")
    database = plan.runtime.database

    class SlowChecks(PostgresPasswordRotator):
        def test(self, credential: Credential) -> None:
            steal_lease(database, "db-0")
            super().test(credential)

    plan.runtime.engine.rotators = {"postgres-password": SlowChecks}
    with pytest.raises(LockLost):
        plan.runtime.engine.adopt(
            "db-0", Credential(password=plan.initial[plan.roles["db-0"]]), replace_pending=True
        )
    stuck = plan.runtime.history.get_run("stuck")
    assert stuck is not None and stuck.status == "running"
    assert plan.store.read("db-0", Stage.PENDING) is not None
    assert [r.trigger for r in plan.runtime.history.runs("db-0")] == ["manual"]  # no adopt run
