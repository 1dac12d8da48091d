"""A PostgreSQL secret kept in Vault rotates end to end with the real engine.

The store logs in with a token holding the docs' store policy; applications'
view is read with plain hvac. PostgreSQL is the session's SCRAM server.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from hvac import exceptions as hvac_errors

from rotator.credential import Credential
from rotator.engine import StepHook
from rotator.runtime import Runtime
from rotator.stores import Stage
from tests.conftest import RuntimeFactory, SchedulesWriter, unique_role
from tests.integration.conftest import TcpProxy
from tests.integration.test_vault_store import docs_policy
from tests.services.postgres import PgServer
from tests.services.vault import VaultService

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    """One history backend is enough here: the store under test is Vault."""
    return f"sqlite:///{tmp_path / 'history.db'}"


@dataclass
class VaultPlan:
    vault: VaultService
    mount: str
    role: str
    schedules: Path
    make_runtime: RuntimeFactory

    def runtime(self, step_hook: StepHook | None = None) -> Runtime:
        return self.make_runtime(self.schedules, step_hook=step_hook)

    def app_view(self, version: int | None = None) -> Any:
        """The value an application reading apps/db-0 gets, with plain hvac (None if none)."""
        try:
            response = self.vault.client().secrets.kv.v2.read_secret_version(
                path="apps/db-0",
                version=version,
                mount_point=self.mount,
                raise_on_deleted_version=True,
            )
        except hvac_errors.InvalidPath:
            return None
        return response["data"]

    def pending_view(self) -> Any:
        try:
            response = self.vault.client().secrets.kv.v2.read_secret_version(
                path="rotator-pending/apps/db-0",
                mount_point=self.mount,
                raise_on_deleted_version=True,
            )
        except hvac_errors.InvalidPath:
            return None
        return response["data"]["data"]


@pytest.fixture
def vault_plan(
    pg: PgServer,
    vault: VaultService,
    kv_mount: str,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
) -> Callable[..., VaultPlan]:
    """A plan whose admin and app secrets live in a vault-kv store at `url` (default: Vault's)."""

    def make(url: str | None = None) -> VaultPlan:
        policy = f"rotator-{kv_mount}"
        vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
        token_file = tmp_path / "vault-token"
        token_file.write_text(vault.create_token("1h", policy))
        role, admin_role = unique_role(), unique_role("admin")
        admin_password = secrets.token_urlsafe(16)
        pg.create_role(admin_role, admin_password, "CREATEROLE")
        pg.create_role(role, secrets.token_urlsafe(16))
        pg.grant_admin(role, admin_role)
        base = {"host": pg.host, "port": pg.port, "dbname": pg.dbname}
        store = {
            "type": "vault-kv",
            "url": url or vault.url,
            "mount": kv_mount,
            "timeout_seconds": 5,
            "auth": {"method": "token", "token_file": str(token_file)},
        }
        secrets_block = {
            "pg-admin": {
                "rotator": "postgres-password",
                "store": "vault",
                "path": "apps/pg-admin",
                "every": "30d",
                "target": {**base, "username": admin_role},
            },
            "db-0": {
                "rotator": "postgres-password",
                "store": "vault",
                "path": "apps/db-0",
                "every": "30d",
                "target": {**base, "username": role, "admin_secret": "pg-admin"},
            },
        }
        text = json.dumps(
            {
                "version": 1,
                "stores": {"vault": store},
                "defaults": {"max_attempts": 2},
                "secrets": secrets_block,
            }
        )
        schedules = write_schedules(text + "\n")  # JSON is YAML
        plan = VaultPlan(vault, kv_mount, role, schedules, make_runtime)
        plan.runtime().engine.adopt("pg-admin", Credential(password=admin_password))
        return plan

    return make


def test_rotation_in_vault_makes_the_new_password_work_and_the_old_fail(
    pg: PgServer, vault_plan: Callable[..., VaultPlan]
) -> None:
    plan = vault_plan()
    runtime = plan.runtime()
    assert runtime.engine.run("db-0").outcome == "succeeded"  # from an unknown password

    result = runtime.engine.run("db-0")

    assert result.outcome == "succeeded"
    current, previous = plan.app_view(), plan.app_view(version=1)
    assert current["metadata"]["version"] == 2
    assert pg.logs_in(plan.role, current["data"]["password"])
    assert not pg.logs_in(plan.role, previous["data"]["password"])
    assert current["data"]["username"] == plan.role and current["data"]["host"] == pg.host
    assert plan.pending_view() is None
    store = runtime.stores.get("vault")
    stored = store.read("apps/db-0", Stage.CURRENT)
    assert stored is not None and stored.version_id == result.version_id


def test_rotation_completes_on_a_mount_with_delete_version_after(
    pg: PgServer, vault: VaultService, vault_plan: Callable[..., VaultPlan]
) -> None:
    """Vault stamps every version with a future deletion_time there; rotations still finish."""
    plan = vault_plan()
    vault.client().secrets.kv.v2.configure(
        max_versions=10, delete_version_after="720h", mount_point=plan.mount
    )
    runtime = plan.runtime()
    assert runtime.engine.run("db-0").outcome == "succeeded"
    result = runtime.engine.run("db-0")

    assert result.outcome == "succeeded"
    current = plan.app_view()
    assert current["metadata"]["deletion_time"] != ""
    assert pg.logs_in(plan.role, current["data"]["password"])
    stored = runtime.stores.get("vault").read("apps/db-0", Stage.CURRENT)
    assert stored is not None and stored.version_id == result.version_id


def test_a_store_outage_after_apply_keeps_pending_and_the_next_run_finishes(
    pg: PgServer, vault: VaultService, vault_plan: Callable[..., VaultPlan]
) -> None:
    target = urlparse(vault.url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port).start()
    try:
        plan = vault_plan(url=f"http://127.0.0.1:{proxy.port}")
        plan.runtime().engine.run("db-0")
        before = plan.app_view()

        def cut_vault(point: str) -> None:
            if point == "tested":
                proxy.stop()

        failed = plan.runtime(step_hook=cut_vault).engine.run("db-0")

        assert failed.outcome == "failed" and "Vault unreachable" in (failed.error or "")
        assert plan.app_view() == before  # CURRENT unchanged: apps still read the old value
        pending = plan.pending_view()
        assert pending is not None
        assert pg.logs_in(plan.role, pending["value"]["password"])  # applied, and kept

        proxy.start()
        resumed = plan.runtime().engine.run("db-0")

        assert resumed.outcome == "succeeded"
        assert resumed.version_id == pending["version_id"]
        after = plan.app_view()
        assert after["metadata"]["version"] == before["metadata"]["version"] + 1
        assert after["data"] == pending["value"]
        assert pg.logs_in(plan.role, after["data"]["password"])
        assert not pg.logs_in(plan.role, before["data"]["password"])
        assert plan.pending_view() is None
    finally:
        proxy.stop()
