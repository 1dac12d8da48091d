"""Guards of the rotation core: fenced history writes, lease races, autocommit statements,
redelivered triggers, per-role trust proofs and scrubbed error text."""

from __future__ import annotations

import secrets
import threading
from datetime import timedelta

import pytest
from psycopg import sql
from sqlalchemy import text

from rotator.credential import Credential
from rotator.engine import scrubbed_text
from rotator.errors import ConfigError, TransientError
from rotator.history import Database, utcnow
from rotator.locks import LeaseManager
from rotator.logging import REDACTED
from rotator.stores import Stage
from rotators import pg_connections
from rotators.postgres import PostgresPasswordRotator
from tests.conftest import unique_role
from tests.integration.conftest import PgPlanFactory, crash_at, set_lease, stages
from tests.integration.test_engine_concurrency import Gate, in_thread
from tests.integration.test_postgres_reuse import trusted
from tests.integration.test_postgres_rotator import context, target
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


# -- (1) a run that lost its lease ------------------------------------------------------------


def test_stalled_run_whose_test_fails_transiently_does_not_rewrite_the_new_holders_record(
    pg_plan: PgPlanFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled run whose test step fails after another run took its lease and finished
    writes no failure over the record the new holder wrote (the writes are fenced)."""
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    gate = Gate("applied")
    stalled = plan.new_runtime(step_hook=gate)
    thread, box = in_thread(lambda: stalled.engine.run("db-0", run_id="slow-run-" + "x" * 24))
    assert gate.entered.wait(20)
    set_lease(plan.runtime.database, "db-0", expires_at=utcnow() - timedelta(seconds=1))
    taken_over = plan.new_runtime().engine.run("db-0")
    assert taken_over.outcome == "succeeded" and taken_over.run_id.startswith("slow-run")

    def unreachable(self: PostgresPasswordRotator, credential: Credential) -> None:
        raise TransientError("target unreachable")

    monkeypatch.setattr(PostgresPasswordRotator, "test", unreachable)
    gate.release.set()
    thread.join(20)

    run = plan.runtime.history.get_run(taken_over.run_id)
    assert run is not None
    assert run.status == "succeeded", (run.status, run.error)
    assert "LockLost" in (box["result"].error or "")


def test_stalled_run_writes_no_step_event_after_the_new_holder_finished(
    pg_plan: PgPlanFactory,
) -> None:
    """A stalled run appends no step event to the run its successor finished."""
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    gate = Gate("applied")
    stalled = plan.new_runtime(step_hook=gate)
    run_id = "slow-run-" + "y" * 24
    thread, box = in_thread(lambda: stalled.engine.run("db-0", run_id=run_id))
    assert gate.entered.wait(20)
    set_lease(plan.runtime.database, "db-0", expires_at=utcnow() - timedelta(seconds=1))
    assert plan.new_runtime().engine.run("db-0").outcome == "succeeded"
    gate.release.set()
    thread.join(20)
    assert "LockLost" in (box["result"].error or "")
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(run_id)]
    assert steps[-1] == ("finish", "ok"), steps


# -- (2) autocommit statements, leases, pre-ping ----------------------------------------------


def test_racing_acquirers_of_a_new_or_expired_lease_get_exactly_one_winner(
    database: Database,
) -> None:
    """Six threads race for a lease, fresh (INSERT) and expired (UPDATE ... RETURNING)."""
    rounds = 15
    leases = LeaseManager(database, ttl=timedelta(seconds=30))
    fences: list[int] = []
    for round_ in range(rounds):
        secret = f"s{round_ % 3}"  # fresh secrets (INSERT race) and expired ones (UPDATE race)
        if round_ >= 3:
            set_lease(database, secret, expires_at=utcnow() - timedelta(seconds=1))
        barrier = threading.Barrier(6)
        won: list[int] = []
        errors: list[BaseException] = []

        def take(
            i: int,
            secret: str = secret,
            barrier: threading.Barrier = barrier,
            won: list[int] = won,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(10)
                fence = leases.try_acquire(secret, f"owner-{i}")
                if fence is not None:
                    won.append(fence)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(won) == 1, (round_, won)
        fences.append(won[0])
    assert all(fence >= 1 for fence in fences)


def test_session_after_statement_is_a_real_transaction_again(database: Database) -> None:
    """A pooled connection used for autocommit statements is a transaction again for
    `Database.session()`: an error rolls its writes back."""
    from rotator.history import Lease

    for _ in range(5):
        with database.statement() as session:
            session.execute(text("SELECT 1"))
    with pytest.raises(ZeroDivisionError), database.session() as session:
        session.add(Lease(secret="rolled", owner="o", expires_at=utcnow(), fence=1))
        session.flush()
        1 / 0  # noqa: B018
    with database.statement() as session:
        assert session.get(Lease, "rolled") is None


# -- (3) already-finished runs ------------------------------------------------------------------


def test_a_redelivered_trigger_that_resumed_another_run_does_not_rotate_again(
    pg_plan: PgPlanFactory,
) -> None:
    """A trigger that resumed an interrupted run is recorded `resumed`; delivered again, it
    returns that run's outcome instead of rotating a second time."""
    plan = pg_plan()
    crashing = plan.new_runtime(step_hook=crash_at("applied"))
    with pytest.raises(Exception):
        crashing.engine.run("db-0", run_id="crashed-" + "a" * 24)
    set_lease(plan.runtime.database, "db-0", expires_at=utcnow() - timedelta(seconds=1))
    trigger = "trigger-" + "b" * 24
    first = plan.runtime.engine.run("db-0", run_id=trigger)
    assert first.outcome == "succeeded" and first.resumed and first.run_id != trigger
    current = stages(plan.store, "db-0")[Stage.CURRENT]
    again = plan.runtime.engine.run("db-0", run_id=trigger)  # the same message, redelivered
    after = stages(plan.store, "db-0")[Stage.CURRENT]
    assert after is not None and current is not None
    assert after.version_id == current.version_id, (again.outcome, again.run_id)
    assert (again.outcome, again.run_id, again.resumed) == ("succeeded", first.run_id, True)
    recorded = plan.runtime.history.get_run(trigger)
    assert recorded is not None and recorded.status == "resumed"
    assert recorded.resumed_run_id == first.run_id


# -- (4) trust proofs are per role ------------------------------------------------------------


def _proven_then_trusted(pg: PgServer) -> tuple[str, str, str, str]:
    proven, proven_password = unique_role(), secrets.token_urlsafe(16)
    trusting, trusting_password = unique_role(), secrets.token_urlsafe(16)
    pg.create_role(proven, proven_password)
    pg.create_role(trusting, trusting_password)
    return proven, proven_password, trusting, trusting_password


def test_a_role_trusted_by_pg_hba_is_refused_before_its_password_changes(
    pg: PgServer,
) -> None:
    """A proof for one role of a server does not spare another role its own check."""
    if pg.local is None:
        pytest.skip("needs the test's own server to edit pg_hba.conf")
    proven, proven_password, role, password = _proven_then_trusted(pg)
    other = PostgresPasswordRotator(target(pg, proven), context())
    other.test(other.complete(Credential(password=proven_password)))  # a proof for that role
    verifier = pg.verifier(role)
    rotator = PostgresPasswordRotator(target(pg, role), context())
    current = rotator.complete(Credential(password=password))
    with trusted(pg, role):
        pending = rotator.generate(current)
        with pytest.raises(ConfigError):
            rotator.apply(pending, current, None)
        assert pg.verifier(role) == verifier  # refused before ALTER ROLE


def test_without_require_auth_a_trusted_role_never_passes_test(
    pg: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With libpq < 16 (no require_auth), `test` relies on the decoy proof, kept per role:
    another role's proof never lets a trusted role pass."""
    if pg.local is None:
        pytest.skip("needs the test's own server to edit pg_hba.conf")
    import rotators.postgres as pgmod

    monkeypatch.setattr(pgmod, "_PASSWORD_REQUIRED", None)
    monkeypatch.setattr(pg_connections, "PASSWORD_CHECKS", pg_connections.PasswordCheckProofs())
    monkeypatch.setattr(pgmod, "PASSWORD_CHECKS", pg_connections.PASSWORD_CHECKS)
    proven, proven_password, role, _ = _proven_then_trusted(pg)
    other = PostgresPasswordRotator(target(pg, proven), context())
    other.test(other.complete(Credential(password=proven_password)))
    rotator = PostgresPasswordRotator(target(pg, role), context())
    with trusted(pg, role), pytest.raises(ConfigError):
        rotator.test(rotator.complete(Credential(password="anything-at-all")))


# -- (5) scrubbed text ------------------------------------------------------------------------


def test_scrubbed_text_of_a_multi_line_value_keeps_no_part_of_it(
    pg_plan: PgPlanFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text is scrubbed whole before it is cut to its first line."""
    plan = pg_plan()
    first_half, second_half = "AAAA" + secrets.token_hex(8), "BBBB" + secrets.token_hex(8)
    value = f"{first_half}\n{second_half}"

    def generate(self: PostgresPasswordRotator, current: Credential | None) -> Credential:
        return self.complete(Credential(password=value))

    def failing_put(path: str, credential: Credential, token: str) -> None:
        raise RuntimeError(f"cannot store {credential['password']}")

    monkeypatch.setattr(PostgresPasswordRotator, "generate", generate)
    monkeypatch.setattr(plan.store, "put_pending", failing_put)
    with pytest.raises(RuntimeError) as raised:
        plan.runtime.engine.run("db-0")
    text_ = scrubbed_text(raised.value) or ""
    assert first_half not in text_, text_
    assert REDACTED in text_


# -- (5) an admin rotating under a dependent's run ----------------------------------------------


def test_a_dependent_whose_admin_rotated_meanwhile_retries_with_the_new_admin_password(
    pg_plan: PgPlanFactory,
) -> None:
    """The admin's rotation finished between the dependent's lookup and its ALTER ROLE: the
    refusal of the old admin password is retried with the admin's new CURRENT."""
    plan = pg_plan()
    admin_runtime = plan.new_runtime()
    done: dict[str, object] = {}

    def admin_rotates_meanwhile(point: str) -> None:
        if point == "created" and not done:
            done["admin"] = admin_runtime.engine.run("pg-admin")

    result = plan.new_runtime(step_hook=admin_rotates_meanwhile).engine.run("db-0")
    assert getattr(done["admin"], "outcome", None) == "succeeded"
    assert result.outcome == "succeeded", result.error
    steps = [(s.step, s.status) for s in plan.runtime.history.steps(result.run_id)]
    assert ("apply", "retry") in steps


def test_a_stale_admin_pending_does_not_make_a_genuine_refusal_look_transient(
    pg_plan: PgPlanFactory,
) -> None:
    plan = pg_plan()
    crashing = plan.new_runtime(step_hook=crash_at("created"))
    with pytest.raises(Exception):
        crashing.engine.run("pg-admin")  # a PENDING no live run is working on
    set_lease(plan.runtime.database, "pg-admin", expires_at=utcnow() - timedelta(seconds=1))
    with plan.pg.admin() as conn:  # a DBA changed the admin's password behind rotator's back
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(plan.roles["pg-admin"]), sql.Literal(secrets.token_urlsafe(16))
            )
        )
    result = plan.runtime.engine.run("db-0")
    assert result.outcome == "failed"
    assert (result.error or "").startswith("CredentialRejected")
