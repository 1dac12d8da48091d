"""Adoption (`rotator put`): atomic, settles interrupted runs, unsticks a PENDING."""

from __future__ import annotations

import json

import pytest

from rotator.credential import Credential
from rotator.errors import RotationInProgress
from rotator.stores import Stage
from tests.integration.conftest import PgPlanFactory
from tests.integration.test_cli import Cli

pytestmark = pytest.mark.integration


def test_replace_pending_adopts_the_given_value_and_drops_pending(pg_plan: PgPlanFactory) -> None:
    plan = pg_plan()
    engine, store = plan.runtime.engine, plan.store
    role_password = plan.initial[plan.roles["db-0"]]
    engine.adopt("db-0", Credential(password=role_password))
    old = store.read("db-0", Stage.CURRENT)
    stuck = store.put_pending("db-0", Credential(password="s" * 24), "stuck-run")

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
