"""An application reading a rotated PostgreSQL password through SecretReader, against a real
SCRAM PostgreSQL and the real engine (embedded store on SQLite and on PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from structlog.testing import capture_logs

from rotator.client import SecretReader
from rotator.client_postgres import postgres_auth_failed, postgres_connect_kwargs
from rotator.client_settings import FromRotator, RotatorSettingsSource
from rotator.config import Settings
from rotator.credential import Credential
from rotator.stores import Stage
from tests.integration.conftest import PgPlan, PgPlanFactory, leaked
from tests.services.moto import REGION, MotoServer, unique_secret_name

pytestmark = pytest.mark.integration


@pytest.fixture
def plan(pg_plan: PgPlanFactory) -> PgPlan:
    """A role whose CURRENT password the engine set in a first rotation."""
    plan = pg_plan()
    assert plan.runtime.engine.run("db-0").outcome == "succeeded"
    return plan


@pytest.fixture
def reader(plan: PgPlan) -> Iterator[SecretReader]:
    """The app's reader: the workers' schedules and settings, a TTL far longer than the test."""
    with SecretReader.from_schedules(
        plan.schedules, plan.runtime.settings, ttl=3600, jitter=0
    ) as reader:
        yield reader


def current_password(plan: PgPlan) -> str:
    version = plan.store.read("db-0", Stage.CURRENT)
    assert version is not None and version.credential.password is not None
    return version.credential.password


def logging_in(attempts: list[str]) -> Any:
    """A login that records which password each attempt used."""

    def login(credential: Credential) -> str:
        attempts.append(str(credential.password))
        kwargs = postgres_connect_kwargs(credential, connect_timeout=5)
        with psycopg.connect(**kwargs) as conn:
            row = conn.execute("SELECT current_user").fetchone()
        assert row is not None
        return str(row[0])

    return login


def test_app_survives_a_rotation_with_one_refresh(plan: PgPlan, reader: SecretReader) -> None:
    before = current_password(plan)
    with capture_logs() as logs:
        with reader.connect_postgres("db-0", connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (plan.roles["db-0"],)
        assert plan.runtime.engine.run("db-0").outcome == "succeeded"
        after = current_password(plan)
        assert after != before
        cached = reader.current("db-0")
        assert cached.password == before  # the TTL has not run out

        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(**postgres_connect_kwargs(cached, connect_timeout=5))
        assert postgres_auth_failed(refused.value)  # what a real refused login looks like

        attempts: list[str] = []
        assert reader.call("db-0", logging_in(attempts)) == plan.roles["db-0"]
        assert attempts == [before, after]
        with reader.connect_postgres("db-0", connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "client.retry_after_refresh" in [entry["event"] for entry in logs]
    assert leaked([repr(entry) for entry in logs], [before, after]) == []


def test_connect_postgres_recovers_without_help(plan: PgPlan, reader: SecretReader) -> None:
    reader.connect_postgres("db-0", connect_timeout=5).close()
    plan.runtime.engine.run("db-0")
    with reader.connect_postgres("db-0", connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (plan.roles["db-0"],)
    assert reader.current("db-0").password == current_password(plan)


def test_app_survives_a_rotation_after_a_ttl_reload_of_the_same_value(plan: PgPlan) -> None:
    """A request holds the password; another request reloads the same password at TTL expiry;
    the engine rotates; the held password is refused by PostgreSQL. The refused request still
    reads the store and logs in with the new password."""
    now = [1000.0]
    settings = plan.runtime.settings
    reader = SecretReader.from_schedules(
        plan.schedules, settings, ttl=60, jitter=0, clock=lambda: now[0]
    )
    before = current_password(plan)
    attempts: list[str] = []
    login = logging_in(attempts)

    def slow_login(credential: Credential) -> str:
        if not attempts:  # while this request is on its way to the database:
            now[0] += 61
            assert reader.current("db-0").password == before  # TTL reload, equal value
            assert plan.runtime.engine.run("db-0").outcome == "succeeded"
        return login(credential)

    with reader:
        assert reader.call("db-0", slow_login) == plan.roles["db-0"]
    after = current_password(plan)
    assert after != before
    assert attempts == [before, after]


def test_value_the_store_still_holds_is_raised_without_retry(
    plan: PgPlan, reader: SecretReader
) -> None:
    reader.current("db-0")
    plan.pg.create_role(plan.roles["db-0"], "changed-by-hand-" + "x" * 8)  # out of band
    attempts: list[str] = []
    with pytest.raises(psycopg.OperationalError) as raised:
        reader.call("db-0", logging_in(attempts))
    assert postgres_auth_failed(raised.value)
    assert attempts == [current_password(plan)]


def test_new_value_that_also_fails_is_raised_after_one_retry(
    plan: PgPlan, reader: SecretReader
) -> None:
    before = current_password(plan)
    reader.current("db-0")
    plan.runtime.engine.run("db-0")
    after = current_password(plan)
    plan.pg.create_role(plan.roles["db-0"], "changed-by-hand-" + "y" * 8)  # out of band
    attempts: list[str] = []
    with pytest.raises(psycopg.OperationalError):
        reader.call("db-0", logging_in(attempts))
    assert attempts == [before, after]


def test_scope_rereads_after_an_auth_failure(plan: PgPlan, reader: SecretReader) -> None:
    reader.current("db-0")
    plan.runtime.engine.run("db-0")
    with pytest.raises(psycopg.OperationalError), reader.credential("db-0") as cred:
        psycopg.connect(**postgres_connect_kwargs(cred, connect_timeout=5))
    with reader.credential("db-0") as cred:
        psycopg.connect(**postgres_connect_kwargs(cred, connect_timeout=5)).close()
        assert cred.password == current_password(plan)


def test_settings_source_fills_secretstr_from_rotated_secret(plan: PgPlan) -> None:
    class AppSettings(BaseSettings):
        database_password: Annotated[SecretStr, FromRotator("db-0")]
        database_user: Annotated[str, FromRotator("db-0", "username")]

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            def build() -> SecretReader:
                return SecretReader.from_schedules(plan.schedules, plan.runtime.settings)

            return (init_settings, RotatorSettingsSource(settings_cls, build), env_settings)

    first = AppSettings()  # type: ignore[call-arg]
    plan.runtime.engine.run("db-0")
    second = AppSettings()  # type: ignore[call-arg]

    role = plan.roles["db-0"]
    assert second.database_user == role
    new = second.database_password.get_secret_value()
    assert new == current_password(plan)
    assert plan.pg.logs_in(role, new)
    assert not plan.pg.logs_in(role, first.database_password.get_secret_value())


def test_reader_over_aws_never_opens_the_history_database(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    path = unique_secret_name("client")
    aws = moto_server.client()
    aws.create_secret(Name=path, SecretString=json.dumps({"username": "app", "password": "one-1"}))
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(
        "version: 1\n"
        f"stores: {{aws: {{type: aws-secrets-manager, region: {REGION}, "
        f"endpoint_url: '{moto_server.endpoint_url}'}}}}\n"
        "secrets:\n"
        "  orders-db:\n"
        "    rotator: postgres-password\n"
        "    store: aws\n"
        f"    path: {path}\n"
        "    every: 30d\n"
        "    target: {host: db.internal, username: app}\n"
    )
    settings = Settings(var_dir=tmp_path / "var", database_url="")
    with SecretReader.from_schedules(schedules, settings, ttl=3600, jitter=0) as reader:
        assert reader.get("orders-db") == {"username": "app", "password": "one-1"}
        aws.put_secret_value(
            SecretId=path, SecretString=json.dumps({"username": "app", "password": "two-2"})
        )
        assert reader.current("orders-db").password == "one-1"
        assert reader.refresh("orders-db").password == "two-2"
    assert not (tmp_path / "var").exists()
