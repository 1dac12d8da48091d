"""vault-dynamic: leases from Vault's database engine rotate end to end with the real engine.

Vault (real, or the emulator whose database engine creates real roles on the session's
SCRAM PostgreSQL) is set up through its HTTP API as an operator would; the rotator's token
holds only the policy printed in docs/rotator-vault-dynamic.md. The store is the embedded one.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hvac import exceptions as hvac_errors
from psycopg import sql
from structlog.testing import capture_logs

from rotator.base import registered_rotators
from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import ConfigError, CredentialRejected, StoreError, TransientError
from rotator.runtime import Runtime
from rotator.schedule import load_plan
from rotator.stores import Stage
from rotators.vault_dynamic import VaultDynamicRotator
from tests.conftest import RuntimeFactory, SchedulesWriter
from tests.integration.conftest import Crash, crash_at
from tests.services.postgres import PgServer
from tests.services.vault import DatabaseRole, VaultService

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs" / "rotator-vault-dynamic.md"
SECRET = "app-db"


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    """One history backend is enough here: what is under test is the Vault lease."""
    return f"sqlite:///{tmp_path / 'history.db'}"


def docs_policy(database: DatabaseRole) -> str:
    """The docs' HCL policy for the rotator, pointed at this test's mount and role."""
    blocks = re.findall(r"```hcl\n(.*?)```", DOCS.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith("# rotator-vault-dynamic-policy\n")]
    return block.replace("database/creds/app", f"{database.mount}/creds/{database.role}")


@dataclass
class DynamicPlan:
    """A schedules.yaml with one vault-dynamic secret, and what the test needs to check it."""

    pg: PgServer
    vault: VaultService
    database: DatabaseRole
    schedules: Path
    make_runtime: RuntimeFactory

    def runtime(self) -> Runtime:
        return self.make_runtime(self.schedules)

    def rotator(self, runtime: Runtime) -> VaultDynamicRotator:
        rotator = runtime.engine.rotator_for(runtime.engine.plan.secret(SECRET))
        assert isinstance(rotator, VaultDynamicRotator)
        return rotator

    def stage(self, runtime: Runtime, stage: Stage) -> Credential:
        version = runtime.stores.get("local").read(SECRET, stage)
        assert version is not None, f"no {stage} version"
        return version.credential

    def lease_exists(self, lease_id: str) -> bool:
        try:
            self.vault.client().sys.read_lease(lease_id)
        except hvac_errors.InvalidRequest:  # Vault: 400 "invalid lease"
            return False
        return True

    def role_exists(self, username: str) -> bool:
        with self.pg.admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,))
            return row.fetchone() is not None


PlanFactory = Callable[..., DynamicPlan]


@pytest.fixture
def dynamic_plan(
    pg: PgServer,
    vault: VaultService,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
) -> PlanFactory:
    """Builds a DynamicPlan: a database mount and role on `pg`, a token with the docs' policy.

    default_ttl: the role's lease TTL; every: the schedule; target: extra target keys;
    policy: the token's policy text (default: the docs'); token_ttl and renewable: the
    rotator's token; creation_statements: the role's (default: the service's).
    """

    def make(
        default_ttl: str = "1h",
        every: str = "30m",
        target: dict[str, Any] | None = None,
        policy: str | None = None,
        token_ttl: str = "2h",
        renewable: bool = True,
        creation_statements: tuple[str, ...] | None = None,
    ) -> DynamicPlan:
        extra = {"creation_statements": creation_statements} if creation_statements else {}
        database = vault.configure_database(pg, default_ttl=default_ttl, max_ttl="24h", **extra)
        name = f"rotator-dyn-{secrets.token_hex(3)}"
        vault.write_policy(name, policy if policy is not None else docs_policy(database))
        token_file = tmp_path / f"vault-token-{name}"
        token_file.write_text(vault.create_token(token_ttl, name, renewable=renewable))
        block = {
            "url": vault.url,
            "timeout_seconds": 5,
            "auth": {"method": "token", "token_file": str(token_file)},
            "mount": database.mount,
            "role": database.role,
            "host": pg.host,
            "port": pg.port,
            "dbname": pg.dbname,
            "sslmode": "disable",
            **(target or {}),
        }
        entry = {"rotator": "vault-dynamic", "store": "local", "every": every, "target": block}
        lines = [
            "version: 1",
            "stores: {local: {type: embedded}}",
            "defaults: {max_attempts: 2, grace: 5m}",
            "secrets:",
            f"  {SECRET}: {json.dumps(entry)}",
        ]
        schedules = write_schedules("\n".join(lines) + "\n")
        return DynamicPlan(pg, vault, database, schedules, make_runtime)

    return make


def test_a_rotation_stores_a_lease_whose_role_logs_in_with_scram(
    dynamic_plan: PlanFactory,
) -> None:
    plan = dynamic_plan()
    runtime = plan.runtime()
    before = datetime.now(UTC).replace(microsecond=0)

    result = runtime.engine.run(SECRET)

    assert result.outcome == "succeeded", result.error
    current = plan.stage(runtime, Stage.CURRENT)
    assert current["engine"] == "postgres"
    assert (current["host"], current["port"], current["dbname"]) == (
        plan.pg.host,
        plan.pg.port,
        plan.pg.dbname,
    )
    username, password = current.username, current.password
    assert username is not None and username.startswith("v-")
    assert password is not None and plan.pg.logs_in(username, password)
    verifier = plan.pg.verifier(username)
    assert verifier is not None and verifier.startswith("SCRAM-SHA-256$")
    assert current["lease_id"].startswith(f"{plan.database.creds_path}/")
    assert plan.lease_exists(current["lease_id"])
    assert current["lease_duration"] == 3600
    expires = datetime.fromisoformat(current["expires_at"])
    assert current["expires_at"].endswith("Z") and expires.utcoffset() == timedelta(0)
    assert before + timedelta(hours=1) - timedelta(seconds=5) <= expires
    assert expires <= before + timedelta(hours=1) + timedelta(seconds=1)
    assert runtime.stores.get("local").read(SECRET, Stage.PENDING) is None


def test_retire_revokes_the_previous_lease_and_is_idempotent(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan()
    runtime = plan.runtime()
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    current, previous = plan.stage(runtime, Stage.CURRENT), plan.stage(runtime, Stage.PREVIOUS)
    assert current.username != previous.username
    assert current["lease_id"] != previous["lease_id"]
    assert previous.username and previous.password
    assert plan.pg.logs_in(previous.username, previous.password)  # alive until retired
    rotator = plan.rotator(runtime)

    rotator.retire(previous)

    assert not plan.pg.logs_in(previous.username, previous.password)
    assert not plan.role_exists(previous.username)
    assert not plan.lease_exists(previous["lease_id"])
    assert current.username and current.password
    assert plan.pg.logs_in(current.username, current.password)
    assert plan.lease_exists(current["lease_id"])
    rotator.retire(previous)  # already revoked: success, as Vault answers 204
    plan.rotator(plan.runtime()).retire(previous)  # another process, same answer
    rotator.retire(Credential(username="adopted", password="x" * 12))  # no lease: nothing to do


def test_retire_refuses_a_lease_of_another_role(dynamic_plan: PlanFactory) -> None:
    """A planted lease id must not make the rotator revoke someone else's lease."""
    plan = dynamic_plan()
    runtime = plan.runtime()
    other = plan.vault.configure_database(plan.pg)
    lease = plan.vault.client().secrets.database.generate_credentials(
        name=other.role, mount_point=other.mount
    )

    with pytest.raises(StoreError, match="refusing to revoke lease"):
        plan.rotator(runtime).retire(Credential(lease_id=lease["lease_id"]))

    assert plan.lease_exists(lease["lease_id"])
    plan.vault.client().sys.revoke_lease(lease["lease_id"])


def test_test_rejects_a_wrong_password_and_an_ended_lease(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan()
    runtime = plan.runtime()
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    current = plan.stage(runtime, Stage.CURRENT)
    rotator = plan.rotator(runtime)
    rotator.test(current)

    with pytest.raises(CredentialRejected, match="refused the login") as refused:
        rotator.test(current.replace(password="wrong-" + secrets.token_urlsafe(12)))
    ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with pytest.raises(CredentialRejected, match=r"lease of role .* ended") as expired:
        rotator.test(current.replace(expires_at=ended))

    for exc in (refused.value, expired.value):
        assert str(current.password) not in str(exc)


def test_rotate_by_leaves_a_third_of_the_lease(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(default_ttl="90m")
    runtime = plan.runtime()
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    current = plan.stage(runtime, Stage.CURRENT)
    expires = datetime.fromisoformat(current["expires_at"])

    due = plan.rotator(runtime).rotate_by(current)

    assert due is not None and datetime.now(UTC) < due < expires
    assert expires - due == timedelta(minutes=30)
    assert plan.rotator(runtime).rotate_by(Credential(username="u", password="p" * 8)) is None


def test_a_schedule_not_shorter_than_max_ttl_is_refused_at_load(
    dynamic_plan: PlanFactory,
) -> None:
    refused = dynamic_plan(every="1h", target={"max_ttl": "1h"})

    with pytest.raises(ConfigError) as caught:
        load_plan(refused.schedules, registered_rotators())

    text = str(caught.value)
    assert f"{refused.schedules}:5:" in text  # the secret's line
    assert "max_ttl" in text and "rotate more often" in text and "every: 40m" in text
    accepted = dynamic_plan(every="45m", target={"max_ttl": "1h"})
    assert load_plan(accepted.schedules, registered_rotators()).secret(SECRET).every


def test_bad_target_blocks_are_refused_at_load(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(target={"url": "vault:8200", "role": "a/b", "max_ttl": "soon"})

    with pytest.raises(ConfigError) as caught:
        load_plan(plan.schedules, registered_rotators())

    text = str(caught.value)
    assert "3 problems" in text
    assert "target.url" in text and "target.role" in text and "target.max_ttl" in text


def test_logs_carry_no_values_and_warn_of_a_short_lease(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(default_ttl="10m")
    runtime = plan.runtime()

    with capture_logs() as events:
        assert runtime.engine.run(SECRET).outcome == "succeeded"
        assert runtime.engine.run(SECRET).outcome == "succeeded"
        previous = plan.stage(runtime, Stage.PREVIOUS)
        plan.rotator(runtime).retire(previous)

    current = plan.stage(runtime, Stage.CURRENT)
    assert current["lease_duration"] == 600
    warnings = [e for e in events if e["event"] == "vault_dynamic.short_lease"]
    assert len(warnings) == 2 and warnings[0]["lease_seconds"] == 600
    assert any(e["event"] == "vault_dynamic.lease_revoked" for e in events)
    text = repr(events)
    for credential in (current, previous):
        assert str(credential.password) not in text
    assert str(current.password) not in repr(current)


def test_a_token_without_the_policy_fails_with_a_clear_error(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(policy='path "nothing/*" { capabilities = ["read"] }\n')
    runtime = plan.runtime()

    result = runtime.engine.run(SECRET)

    assert result.outcome == "failed"
    assert "permission denied" in (result.error or "")
    assert f"{plan.database.mount}/creds/{plan.database.role}" in (result.error or "")
    assert "docs/rotator-vault-dynamic.md" in (result.error or "")


def test_an_unknown_role_is_a_configuration_error(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(
        target={"role": "missing"},
        policy='path "+/creds/missing" { capabilities = ["read"] }\n',
    )

    result = plan.runtime().engine.run(SECRET)

    assert result.outcome == "failed"
    assert "ConfigError" in (result.error or "") and "unknown role" in (result.error or "")


def test_a_run_that_crashed_after_create_finishes_with_the_same_lease(
    dynamic_plan: PlanFactory,
) -> None:
    plan = dynamic_plan()
    with pytest.raises(Crash):
        plan.make_runtime(plan.schedules, step_hook=crash_at("created")).engine.run(SECRET)
    runtime = plan.runtime()
    pending = plan.stage(runtime, Stage.PENDING)

    result = runtime.engine.run(SECRET)

    assert result.outcome == "succeeded" and result.resumed
    current = plan.stage(runtime, Stage.CURRENT)
    assert current == pending  # no second lease: the stored one is finished
    assert current.username and current.password
    assert plan.pg.logs_in(current.username, current.password)


def test_an_unreachable_vault_fails_the_run_as_transient(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(target={"url": f"http://127.0.0.1:{free_port()}"})

    result = plan.runtime().engine.run(SECRET)

    assert result.outcome == "failed"
    assert "Vault unreachable" in (result.error or "")
    assert "vault-dynamic secret 'app-db'" in (result.error or "")


@pytest.mark.parametrize(
    "suffix",
    [
        "../../../../auth/token/revoke-self",
        "x/../../../../../auth/token/revoke-self",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/auth/token/revoke-self",
        "abc/def",
        "abc?x=1",
        "abc..def",
        "",
    ],
)
def test_retire_refuses_a_lease_id_that_leaves_the_roles_prefix(
    dynamic_plan: PlanFactory, suffix: str
) -> None:
    """A planted id that starts with the role's prefix but walks out of it revokes nothing."""
    plan = dynamic_plan()
    runtime = plan.runtime()
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    current = plan.stage(runtime, Stage.CURRENT)
    planted = f"{plan.database.mount}/creds/{plan.database.role}/{suffix}"

    with pytest.raises(StoreError, match="refusing to revoke lease"):
        plan.rotator(runtime).retire(Credential(lease_id=planted))

    assert current.username and current.password
    assert plan.pg.logs_in(current.username, current.password)  # the token was not revoked
    assert runtime.engine.run(SECRET).outcome == "succeeded"  # and it still works


def test_a_pending_whose_lease_ended_while_the_worker_was_down_is_replaced(
    dynamic_plan: PlanFactory,
) -> None:
    """A crash after create, then a lease that ends before the next run: a fresh lease."""
    plan = dynamic_plan(default_ttl="3s")
    with pytest.raises(Crash):
        plan.make_runtime(plan.schedules, step_hook=crash_at("created")).engine.run(SECRET)
    stale = plan.stage(plan.runtime(), Stage.PENDING)
    assert not plan.rotator(plan.runtime()).expired(stale)
    time.sleep(4.5)  # the worker is down longer than the lease
    assert plan.rotator(plan.runtime()).expired(stale)

    outcomes = []
    for _ in range(2):
        outcomes.append(plan.runtime().engine.run(SECRET).outcome)
        if outcomes[-1] == "succeeded":
            break

    assert outcomes[-1] == "succeeded", outcomes
    runtime = plan.runtime()
    current = plan.stage(runtime, Stage.CURRENT)
    assert current["lease_id"] != stale["lease_id"]
    assert runtime.stores.get("local").read(SECRET, Stage.PENDING) is None
    assert current.username and current.password
    assert plan.pg.logs_in(current.username, current.password)


def test_a_lease_lives_no_longer_than_the_token_that_created_it(
    dynamic_plan: PlanFactory,
) -> None:
    """expires_at and rotate_by follow the token's end when it comes before the lease's."""
    plan = dynamic_plan(default_ttl="1h", token_ttl="8s", renewable=False)
    runtime = plan.runtime()
    asked = datetime.now(UTC)

    with capture_logs() as events:
        assert runtime.engine.run(SECRET).outcome == "succeeded"

    current = plan.stage(runtime, Stage.CURRENT)
    expires = datetime.fromisoformat(current["expires_at"])
    assert expires <= asked + timedelta(seconds=8)
    assert 1 <= current["lease_duration"] <= 8
    due = plan.rotator(runtime).rotate_by(current)
    assert due is not None and due < expires
    (warning,) = [e for e in events if e["event"] == "vault_dynamic.token_ends_first"]
    assert warning["lease_seconds"] == 3600 and warning["token_seconds_left"] <= 8
    assert str(current.password) not in repr(events)
    assert current.username and current.password
    assert plan.pg.logs_in(current.username, current.password)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 2.5)
    assert not plan.pg.logs_in(current.username, current.password)  # gone with the token
    assert plan.rotator(runtime).expired(current)


def test_a_token_that_outlives_the_lease_leaves_it_whole(dynamic_plan: PlanFactory) -> None:
    plan = dynamic_plan(default_ttl="10m", token_ttl="2h")
    runtime = plan.runtime()

    with capture_logs() as events:
        assert runtime.engine.run(SECRET).outcome == "succeeded"

    assert plan.stage(runtime, Stage.CURRENT)["lease_duration"] == 600
    assert not [e for e in events if e["event"] == "vault_dynamic.token_ends_first"]


def test_a_revocation_the_database_refuses_is_transient(dynamic_plan: PlanFactory) -> None:
    """Vault answers 400 "failed to revoke" (sync revocation): retried later, lease kept."""
    plan = dynamic_plan()
    runtime = plan.runtime()
    assert runtime.engine.run(SECRET).outcome == "succeeded"
    current = plan.stage(runtime, Stage.CURRENT)
    table = sql.Identifier(f"owned_{secrets.token_hex(4)}")
    with plan.pg.admin() as conn:  # an object the role owns: DROP ROLE fails
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
        conn.execute(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(current.username))
        )
    rotator = plan.rotator(runtime)

    with pytest.raises(TransientError, match="could not revoke the lease") as caught:
        rotator.retire(current)

    assert str(current.password) not in str(caught.value)
    assert plan.lease_exists(current["lease_id"]) and plan.role_exists(str(current.username))
    with plan.pg.admin() as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    rotator.retire(current)
    assert not plan.role_exists(str(current.username))


def test_a_creds_error_carries_no_statement_text(dynamic_plan: PlanFactory) -> None:
    """A creation statement PostgreSQL cannot parse: the error quotes none of it."""
    broken = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD {{password}} VALID UNTIL '{{expiration}}';"
    )
    plan = dynamic_plan(creation_statements=(broken,))

    result = plan.runtime().engine.run(SECRET)

    assert result.outcome == "failed"
    error = result.error or ""
    assert "Vault unavailable" in error and "syntax error" in error
    assert "SCRAM-SHA-256" not in error and "VALID UNTIL" not in error
    assert re.search(r"at or near (?!\[cut\])", error) is None
    assert re.search(r"\"(?!\[cut\]\")[^\"]*\"", error) is None, error
