"""Invariant 4: secret values reach only the target and the store.

A scenario of rotations, a rollback and a failure (the last two from a
careless plugin that puts the password in its error messages) runs with
hostile passwords; then every place a value could escape is searched for
every value: log events, the JSON lines the logger writes to stderr, run
results, every column of every history table, reprs, and the PostgreSQL
statement log. (The rotator logs through structlog's WriteLoggerFactory, not
stdlib logging, so the rendered stderr lines are what a deployment keeps.)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from rotator.credential import Credential
from rotator.engine import RunResult, scrubbed_text
from rotator.errors import CredentialRejected, TransientError
from rotator.history import StoredVersion
from rotator.logging import REDACTED, configure_logging, redact
from rotator.stores import Stage
from rotators.postgres import PostgresPasswordRotator
from tests.conftest import unique_role
from tests.integration.conftest import PgPlan, PgPlanFactory, dump_tables, leaked, value_forms

pytestmark = pytest.mark.integration

NASTY_ADMIN = 'adm\'n "pw" \\ $$ ünï ' + secrets.token_hex(4)
NASTY_CURRENT = "cur'rent; DROP ROLE x; -- \\ 日本 " + secrets.token_hex(4)


class CarelessRejecting(PostgresPasswordRotator):
    """Rejects every credential it generated, naming the password in the message."""

    generated: list[str] = []

    def generate(self, current: Credential | None) -> Credential:
        # A backslash and a non-ASCII letter, so repr() in the message escapes the value.
        credential = super().generate(current)
        credential = credential.replace(password=f"{credential.password}\\é")
        self.generated.append(credential.password or "")
        return credential

    def test(self, credential: Credential) -> None:
        if credential.password in self.generated:
            raise CredentialRejected(f"server said no to {credential.password!r}")
        super().test(credential)


class CarelessFlaky(PostgresPasswordRotator):
    """Cannot reach the target, and says which password it was trying to set."""

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        raise TransientError(f"timeout setting password {pending.password} (was {current})")


def run_scenario(plan: PgPlan) -> list[RunResult]:
    engine = plan.runtime.engine
    CarelessRejecting.generated.clear()
    engine.adopt("self-0", Credential(password=NASTY_CURRENT))
    results = [engine.run("db-0"), engine.run("db-0"), engine.run("self-0")]
    engine.rotators = {"postgres-password": CarelessRejecting}
    results.append(engine.run("db-0"))
    engine.rotators = {"postgres-password": CarelessFlaky}
    results.append(engine.run("db-1"))
    engine.rotators = {"postgres-password": PostgresPasswordRotator}
    results.append(engine.run("db-1"))
    outcomes = [r.outcome for r in results]
    assert outcomes == ["succeeded"] * 3 + ["rolled_back", "failed", "succeeded"]
    return results


def scenario_plan(pg_plan: PgPlanFactory) -> PgPlan:
    own = unique_role("self")
    return pg_plan(
        {"db-0": unique_role(), "db-1": unique_role(), "self-0": own},
        passwords={own: NASTY_CURRENT},
        admin_password=NASTY_ADMIN,
        self_managed=["self-0"],
        defaults={"password": {"exclude_characters": ""}},
    )


def every_secret(plan: PgPlan) -> list[str]:
    """Every value that must not escape: all stored passwords, starting ones, the Fernet key."""
    fernet = plan.runtime.settings.fernet()
    values = set(plan.initial.values())
    with plan.runtime.database.session() as session:
        for row in session.query(StoredVersion):
            values.update(Credential.from_json(fernet.decrypt(row.ciphertext)).secret_values())
    key = plan.runtime.settings.encryption_key
    assert key is not None
    values.add(key.get_secret_value())
    assert NASTY_ADMIN in values and NASTY_CURRENT in values
    assert len(values) >= 10
    return sorted(values)


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_no_secret_in_log_events_results_history_or_reprs(pg_plan: PgPlanFactory) -> None:
    plan = scenario_plan(pg_plan)
    with capture_logs(processors=[redact]) as events:
        results = run_scenario(plan)
    values = every_secret(plan)

    assert events and leaked([repr(events)], values) == []
    names = [e["event"] for e in events]
    assert {"rotation.retrying", "rotation.rejected", "rotation.failed"} <= set(names)
    careless = [e for e in events if e["event"] in ("rotation.rejected", "rotation.failed")]
    assert all(REDACTED in str(e.get("error")) for e in careless), careless

    texts = [repr(r) for r in results] + [json.dumps(r.as_dict()) for r in results]
    errors = [r.error for r in results if r.error]
    assert len(errors) == 2 and all(REDACTED in e for e in errors)
    assert leaked(texts + errors, values) == []

    dumped = dump_tables(plan.runtime.database)
    assert {table for table, _, _ in dumped} >= {"runs", "step_events", "stored_versions"}
    blobs = [form for _, _, value in dumped for form in value_forms(value)]
    assert leaked(blobs, values) == []

    for name in ("db-0", "db-1", "self-0", "pg-admin"):
        for stage in Stage:
            version = plan.store.read(name, stage)
            if version is not None:
                shown = [repr(version), str(version), f"{version.credential}", repr(plan.store)]
                assert leaked(shown, values) == []
                assert version.credential.username in repr(version)  # public fields still show


def test_no_secret_in_rendered_log_lines(
    pg_plan: PgPlanFactory, capsys: pytest.CaptureFixture[str], restore_structlog: None
) -> None:
    plan = scenario_plan(pg_plan)
    configure_logging("json", "debug")
    run_scenario(plan)
    out, err = capsys.readouterr()
    values = every_secret(plan)

    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"rotation.finished", "rotation.rolled_back", "rotation.failed"} <= {
        line["event"] for line in lines
    }
    careless = [line for line in lines if line["event"] in ("rotation.rejected", "rotation.failed")]
    assert careless and all(REDACTED in str(line.get("error")) for line in careless), careless
    assert leaked([out, err], values) == []


def test_server_statement_log_holds_verifiers_never_passwords(
    pg_plan: PgPlanFactory,
) -> None:
    plan = scenario_plan(pg_plan)
    if plan.pg.server_log() is None:
        pytest.skip("the PostgreSQL log is not readable (ROTATOR_TEST_PG_URL points elsewhere)")

    run_scenario(plan)
    log = plan.pg.server_log() or ""
    values = every_secret(plan)

    assert leaked([log], values) == []
    alters = [line for line in log.splitlines() if "ALTER ROLE" in line]
    for secret in ("db-0", "db-1", "self-0"):
        quoted = '"' + plan.roles[secret].replace('"', '""') + '"'
        mine = [line for line in alters if f"ALTER ROLE {quoted}" in line]
        assert mine, f"no ALTER ROLE logged for {secret}"
        assert all("PASSWORD 'SCRAM-SHA-256$4096:" in line for line in mine)


def test_admin_password_in_a_plugin_message_is_scrubbed(pg_plan: PgPlanFactory) -> None:
    """A rotator error that quotes the admin's password never reaches history or the result."""
    from rotator.errors import TransientError
    from rotators.postgres import PostgresPasswordRotator

    runtime = pg_plan().runtime
    admin_password = runtime.engine.read_current("pg-admin").password
    assert admin_password

    class Careless(PostgresPasswordRotator):
        def apply(self, pending, current, previous) -> None:
            admin = self.context.lookup_secret("pg-admin")
            raise TransientError(f"could not log in with {admin.password}")

    runtime.engine.rotators = {"postgres-password": Careless}
    result = runtime.engine.run("db-0")
    assert result.outcome == "failed"
    assert result.error and "could not log in with" in result.error
    assert admin_password not in result.error
    for step in runtime.history.steps(result.run_id):
        assert admin_password not in (step.detail or "")


def test_an_unexpected_error_leaving_a_run_carries_its_text_scrubbed_even_of_a_value_not_yet_stored(
    pg_plan: PgPlanFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-rotator exception propagates (a crash leaves the run resumable), but its text is
    scrubbed while the run still knows its values: here the new password, which never
    reached the store."""
    plan = pg_plan()
    store = plan.store
    generated: list[str] = []

    def failing_put(path: str, credential: Credential, token: str) -> None:
        generated.append(str(credential["password"]))
        raise RuntimeError(f"cannot store {credential['password']}\nparameters: {token}")

    monkeypatch.setattr(store, "put_pending", failing_put)
    with pytest.raises(RuntimeError) as raised:
        plan.runtime.engine.run("db-0")

    assert generated
    assert scrubbed_text(raised.value) == f"RuntimeError: cannot store {REDACTED}"
    assert store.read("db-0", Stage.PENDING) is None
