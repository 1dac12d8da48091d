"""End to end: a PostgreSQL password kept in AWS Secrets Manager (moto over HTTP) rotates.

The real engine and the postgres-password rotator run against the SCRAM
PostgreSQL; what they leave in AWS is read back with plain boto3, the way an
application reads its secret, and proven by logging in with it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rotator.credential import Credential
from rotator.engine import StepHook
from rotator.runtime import Runtime
from tests.conftest import RuntimeFactory, SchedulesWriter, unique_role
from tests.integration.conftest import TcpProxy
from tests.services.moto import REGION, MotoServer, unique_secret_name
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration


@dataclass
class AwsPlan:
    """One app role and its admin, both stored in AWS under fresh secret names."""

    pg: PgServer
    aws: Any
    schedules: Any
    make_runtime: RuntimeFactory
    role: str
    path: str
    initial: str

    def runtime(self, step_hook: StepHook | None = None) -> Runtime:
        return self.make_runtime(self.schedules, step_hook=step_hook)

    def aws_current(self) -> dict[str, Any]:
        """AWSCURRENT as an application reads it (named: moto's default ignores label moves)."""
        answer = self.aws.get_secret_value(SecretId=self.path, VersionStage="AWSCURRENT")
        value: dict[str, Any] = json.loads(answer["SecretString"])
        return value

    def labels(self) -> dict[str, list[str]]:
        stages = self.aws.describe_secret(SecretId=self.path).get("VersionIdsToStages", {})
        return {vid: sorted(found) for vid, found in stages.items() if found}


def build_plan(
    pg: PgServer,
    moto_server: MotoServer,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
    endpoint: str,
) -> AwsPlan:
    role, admin = unique_role(), unique_role("admin")
    passwords = {role: secrets.token_urlsafe(16), admin: secrets.token_urlsafe(16)}
    pg.create_role(admin, passwords[admin], "CREATEROLE")
    pg.create_role(role, passwords[role])
    pg.grant_admin(role, admin)
    path, admin_path = unique_secret_name("prod/db"), unique_secret_name("prod/admin")
    base = {"host": pg.host, "port": pg.port, "dbname": pg.dbname}
    store = {"type": "aws-secrets-manager", "region": REGION, "endpoint_url": endpoint}
    entries = {
        "pg-admin": {"path": admin_path, "target": {**base, "username": admin}},
        "db-0": {"path": path, "target": {**base, "username": role, "admin_secret": "pg-admin"}},
    }
    lines = [
        "version: 1",
        f"stores: {json.dumps({'aws': store})}",
        "defaults: {max_attempts: 2}",
        "secrets:",
        *(
            f"  {name}: "
            + json.dumps({"rotator": "postgres-password", "store": "aws", "every": "30d", **entry})
            for name, entry in entries.items()
        ),
    ]
    schedules = write_schedules("\n".join(lines) + "\n")
    plan = AwsPlan(pg, moto_server.client(), schedules, make_runtime, role, path, passwords[role])
    setup = plan.runtime()
    setup.engine.adopt("pg-admin", Credential(password=passwords[admin]))
    setup.engine.adopt("db-0", Credential(password=passwords[role]))
    return plan


@pytest.fixture
def moto_proxy(moto_server: MotoServer) -> Iterator[TcpProxy]:
    """A TCP forwarder to moto that a test can stop, as a network outage would."""
    proxy = TcpProxy("127.0.0.1", moto_server.port).start()
    yield proxy
    proxy.stop()


def test_a_postgres_secret_in_aws_rotates_and_only_the_new_password_logs_in(
    pg: PgServer,
    moto_server: MotoServer,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
) -> None:
    plan = build_plan(pg, moto_server, write_schedules, make_runtime, moto_server.endpoint_url)
    adopted = plan.aws_current()

    result = plan.runtime().engine.run("db-0")

    assert result.outcome == "succeeded", result.error
    current = plan.aws_current()
    assert current["username"] == plan.role and current["password"] != plan.initial
    assert adopted["password"] == plan.initial
    assert pg.logs_in(plan.role, current["password"])
    assert not pg.logs_in(plan.role, plan.initial)
    assert plan.labels() == {
        result.version_id: ["AWSCURRENT"],
        next(v for v, found in plan.labels().items() if "AWSPREVIOUS" in found): ["AWSPREVIOUS"],
    }
    assert result.version_id == result.run_id  # the run id is the ClientRequestToken


def test_a_store_outage_after_apply_keeps_pending_and_the_next_run_finishes(
    pg: PgServer,
    moto_server: MotoServer,
    moto_proxy: TcpProxy,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
) -> None:
    endpoint = f"http://127.0.0.1:{moto_proxy.port}"
    plan = build_plan(pg, moto_server, write_schedules, make_runtime, endpoint)

    def outage(point: str) -> None:
        if point == "tested":
            moto_proxy.stop()  # the promote that follows cannot reach AWS

    failed = plan.runtime(step_hook=outage).engine.run("db-0")

    assert failed.outcome == "failed" and "unreachable" in (failed.error or "")
    pending = plan.aws.get_secret_value(SecretId=plan.path, VersionStage="AWSPENDING")
    new_password = json.loads(pending["SecretString"])["password"]
    assert plan.aws_current()["password"] == plan.initial  # the old CURRENT is still current
    assert pg.logs_in(plan.role, new_password)  # the target has PENDING: it is not lost
    assert failed.error is not None and new_password not in failed.error

    moto_proxy.start()
    resumed = plan.runtime().engine.run("db-0")

    # The failed run was recorded; the next run reuses its PENDING version, token and all.
    assert resumed.outcome == "succeeded", resumed.error
    assert resumed.version_id == pending["VersionId"] == failed.run_id
    assert plan.aws_current()["password"] == new_password  # one new credential, not two
    assert pg.logs_in(plan.role, new_password)
    assert not pg.logs_in(plan.role, plan.initial)
    assert [found for found in plan.labels().values() if "AWSPENDING" in found] == []
