"""The Vault API routes rotator relies on, through hvac, as Vault documents them.

The module runs unchanged against a real Vault and against tests/vault_emulator
(the `vault` fixture decides), so a pass on both proves the emulator answers
as Vault does for every route and status code rotator depends on.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import hvac
import hvac.exceptions
import psycopg
import pytest
import requests
from psycopg import sql

from tests.services.postgres import PgServer
from tests.services.vault import KubernetesLogin, VaultService

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes (for TTLs running out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def path() -> str:
    return f"app/{secrets.token_hex(4)}"


# KV v2


def test_kv_write_then_read_returns_the_data_and_version_metadata(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    written = kv.create_or_update_secret(where, {"password": "s3cret"}, mount_point=kv_mount)
    assert written["data"]["version"] == 1
    assert written["data"]["deletion_time"] == ""
    assert written["data"]["destroyed"] is False
    assert {"request_id", "lease_id", "renewable", "lease_duration", "wrap_info"} <= set(written)
    read = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "s3cret"}
    assert read["data"]["metadata"]["version"] == 1
    assert read["data"]["metadata"]["created_time"] == written["data"]["created_time"]
    assert read["lease_id"] == "" and read["renewable"] is False


def test_kv_versions_are_kept_and_readable_by_number(vault: VaultService, kv_mount: str) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    for n in range(1, 4):
        assert (
            kv.create_or_update_secret(where, {"n": n}, mount_point=kv_mount)["data"]["version"]
            == n
        )
    latest = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    first = kv.read_secret_version(
        where, version=1, mount_point=kv_mount, raise_on_deleted_version=True
    )
    assert latest["data"]["data"] == {"n": 3}
    assert first["data"]["data"] == {"n": 1}
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(
            where, version=9, mount_point=kv_mount, raise_on_deleted_version=True
        )


def test_kv_cas_mismatch_is_refused_with_400_and_vaults_message(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)
    kv.create_or_update_secret(where, {"v": 2}, cas=1, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        kv.create_or_update_secret(where, {"v": 3}, cas=1, mount_point=kv_mount)
    assert "check-and-set parameter did not match the current version" in str(caught.value)
    current = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    assert current["data"]["data"] == {"v": 2}


def test_kv_cas_zero_writes_only_when_the_secret_does_not_exist(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    assert (
        kv.create_or_update_secret(where, {"v": 1}, cas=0, mount_point=kv_mount)["data"]["version"]
        == 1
    )
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret(where, {"v": 2}, cas=0, mount_point=kv_mount)


def test_kv_cas_required_refuses_a_write_without_cas(vault: VaultService, kv_mount: str) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    kv.update_metadata(where, cas_required=True, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter required"):
        kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)
    kv.create_or_update_secret(where, {"v": 1}, cas=0, mount_point=kv_mount)


def test_kv_metadata_carries_custom_metadata_versions_and_max_versions(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    kv.update_metadata(
        where, max_versions=2, custom_metadata={"owner": "rotator"}, mount_point=kv_mount
    )
    for n in range(1, 4):
        kv.create_or_update_secret(where, {"n": n}, mount_point=kv_mount)
    meta = kv.read_secret_metadata(where, mount_point=kv_mount)["data"]
    assert meta["current_version"] == 3
    assert meta["max_versions"] == 2
    assert meta["custom_metadata"] == {"owner": "rotator"}
    assert sorted(meta["versions"]) == ["2", "3"]
    assert meta["oldest_version"] == 2
    assert set(meta["versions"]["3"]) >= {"created_time", "deletion_time", "destroyed"}
    read = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    assert read["data"]["metadata"]["custom_metadata"] == {"owner": "rotator"}
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(
            where, version=1, mount_point=kv_mount, raise_on_deleted_version=True
        )


def test_kv_soft_delete_undelete_and_destroy(vault: VaultService, kv_mount: str) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)
    kv.create_or_update_secret(where, {"v": 2}, mount_point=kv_mount)
    kv.delete_latest_version_of_secret(where, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    deleted = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["deletion_time"] != ""
    kv.undelete_secret_versions(where, versions=[2], mount_point=kv_mount)
    restored = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
    assert restored["data"]["data"] == {"v": 2}
    kv.destroy_secret_versions(where, versions=[1], mount_point=kv_mount)
    meta = kv.read_secret_metadata(where, mount_point=kv_mount)["data"]
    assert meta["versions"]["1"]["destroyed"] is True
    kv.undelete_secret_versions(where, versions=[1], mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(
            where, version=1, mount_point=kv_mount, raise_on_deleted_version=True
        )


def test_kv_delete_version_after_stamps_a_future_deletion_time_that_then_deletes(
    vault: VaultService, kv_mount: str
) -> None:
    """Each new version gets created_time + the shorter of the mount's and the key's setting;
    it reads normally until then and as deleted after."""
    kv = vault.client().secrets.kv.v2
    kv.configure(max_versions=10, delete_version_after="24h", mount_point=kv_mount)
    assert kv.read_configuration(mount_point=kv_mount)["data"]["delete_version_after"] == "24h0m0s"
    long, short = path(), path()
    kv.update_metadata(short, delete_version_after="2s", mount_point=kv_mount)
    assert (
        kv.read_secret_metadata(short, mount_point=kv_mount)["data"]["delete_version_after"] == "2s"
    )

    def deleted(where: str) -> bool:
        try:
            kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return True
        return False

    stamps = {}
    for where in (long, short):
        written = kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)["data"]
        created = datetime.fromisoformat(written["created_time"])
        stamps[where] = datetime.fromisoformat(written["deletion_time"]) - created
        read = kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)
        assert read["data"]["data"] == {"v": 1}
    assert abs(stamps[long] - timedelta(hours=24)) < timedelta(seconds=1)
    assert abs(stamps[short] - timedelta(seconds=2)) < timedelta(seconds=1)
    assert wait_until(lambda: deleted(short))
    assert kv.read_secret_metadata(short, mount_point=kv_mount)["data"]["current_version"] == 1
    assert not deleted(long)


def test_kv_custom_metadata_refuses_empty_and_unprintable_keys_and_values(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    for custom in ({"": "x"}, {"owner": ""}, {"own\ner": "x"}, {"owner": "a\x07b"}):
        with pytest.raises(hvac.exceptions.InvalidRequest, match="custom_metadata validation"):
            kv.update_metadata(path(), custom_metadata=custom, mount_point=kv_mount)


def test_kv_metadata_write_with_no_fields_creates_nothing(
    vault: VaultService, kv_mount: str
) -> None:
    where = path()
    vault.client().write_data(f"{kv_mount}/metadata/{where}", data={})
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.client().secrets.kv.v2.read_secret_metadata(where, mount_point=kv_mount)


def test_kv_metadata_delete_removes_every_version(vault: VaultService, kv_mount: str) -> None:
    kv = vault.client().secrets.kv.v2
    where = path()
    kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)
    kv.delete_metadata_and_all_versions(where, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata(where, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)


def test_kv_list_shows_keys_and_folders_and_404_when_empty(
    vault: VaultService, kv_mount: str
) -> None:
    kv = vault.client().secrets.kv.v2
    kv.create_or_update_secret("team/db", {"v": 1}, mount_point=kv_mount)
    kv.create_or_update_secret("team/sub/api", {"v": 1}, mount_point=kv_mount)
    assert kv.list_secrets("team", mount_point=kv_mount)["data"]["keys"] == ["db", "sub/"]
    assert kv.list_secrets("", mount_point=kv_mount)["data"]["keys"] == ["team/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("nobody", mount_point=kv_mount)


def test_kv_missing_secret_is_404(vault: VaultService, kv_mount: str) -> None:
    kv = vault.client().secrets.kv.v2
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path(), mount_point=kv_mount, raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata(path(), mount_point=kv_mount)


def test_mounting_twice_is_refused(vault: VaultService, kv_mount: str) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest, match="path is already in use"):
        vault.client().sys.enable_secrets_engine("kv", path=kv_mount, options={"version": "2"})


# Tokens and policies


@pytest.mark.parametrize("token", ["", "hvs.not-a-token"])
def test_missing_or_unknown_token_is_403_permission_denied(
    vault: VaultService, kv_mount: str, token: str
) -> None:
    client = hvac.Client(url=vault.url, token=token or None)
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        client.secrets.kv.v2.read_secret_version(
            path(), mount_point=kv_mount, raise_on_deleted_version=True
        )


def test_policies_grant_exactly_their_paths_and_deny_wins(
    vault: VaultService, kv_mount: str
) -> None:
    name = f"reader-{secrets.token_hex(3)}"
    vault.write_policy(
        name,
        f'''
        path "{kv_mount}/data/apps/*" {{ capabilities = ["read"] }}
        path "{kv_mount}/data/apps/hidden" {{ capabilities = ["deny"] }}
        path "{kv_mount}/data/own/+/secret" {{ capabilities = ["create"] }}
        ''',
    )
    root_kv = vault.client().secrets.kv.v2
    for where in ("apps/db", "apps/hidden", "other/db", "own/x/secret"):
        root_kv.create_or_update_secret(where, {"v": 1}, mount_point=kv_mount)
    kv = vault.client(vault.create_token("1h", name)).secrets.kv.v2

    def read(where: str) -> object:
        return kv.read_secret_version(where, mount_point=kv_mount, raise_on_deleted_version=True)

    assert read("apps/db")["data"]["data"] == {"v": 1}  # type: ignore[index]
    for denied in ("apps/hidden", "other/db"):
        with pytest.raises(hvac.exceptions.Forbidden):
            read(denied)
    with pytest.raises(hvac.exceptions.Forbidden):  # read only: no update
        kv.create_or_update_secret("apps/db", {"v": 2}, mount_point=kv_mount)
    with pytest.raises(hvac.exceptions.Forbidden):  # create only: the secret exists
        kv.create_or_update_secret("own/x/secret", {"v": 2}, mount_point=kv_mount)
    kv.create_or_update_secret("own/y/secret", {"v": 1}, mount_point=kv_mount)


def test_unknown_route_is_404(vault: VaultService) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.client().adapter.get(f"/v1/no-such-mount-{secrets.token_hex(3)}/thing")


def test_token_lookup_self_reports_policies_and_ttl(vault: VaultService) -> None:
    token = vault.create_token("1h", "default")
    data = vault.client(token).auth.token.lookup_self()["data"]
    assert data["id"] == token
    assert data["policies"] == ["default"]
    assert 3500 < data["ttl"] <= 3600
    assert data["creation_ttl"] == 3600
    assert data["renewable"] is True
    assert data["expire_time"]


def test_token_expires_after_its_ttl(vault: VaultService) -> None:
    client = vault.client(vault.create_token("2s", "default"))
    assert client.auth.token.lookup_self()["data"]["ttl"] <= 2

    def expired() -> bool:
        try:
            client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return True
        return False

    assert wait_until(expired, timeout=10)


def test_renew_self_extends_the_ttl_capped_by_explicit_max_ttl(vault: VaultService) -> None:
    client = vault.client(vault.create_token("2s", "default", explicit_max_ttl="5s"))
    renewed = client.auth.token.renew_self(increment="4s")["auth"]
    assert 3 <= renewed["lease_duration"] <= 4
    capped = client.auth.token.renew_self(increment="1h")
    assert capped["auth"]["lease_duration"] <= 5
    assert any("capped" in warning for warning in capped["warnings"] or [])


def test_non_renewable_token_cannot_renew(vault: VaultService) -> None:
    client = vault.client(vault.create_token("1h", "default", renewable=False))
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not renewable"):
        client.auth.token.renew_self()


def test_revoke_self_makes_the_token_unusable(vault: VaultService) -> None:
    client = vault.client(vault.create_token("1h", "default"))
    client.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_revoking_a_parent_revokes_its_children(vault: VaultService) -> None:
    vault.write_policy("token-creator", 'path "auth/token/create" { capabilities = ["update"] }')
    parent = vault.client(vault.create_token("1h", "token-creator"))
    child = parent.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    parent.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client(child).auth.token.lookup_self()


# AppRole


def test_approle_login_issues_a_token_with_the_roles_policies_and_ttl(
    vault: VaultService,
) -> None:
    role_id, secret_id = vault.enable_approle(
        policies=("default",), token_ttl="1h", token_max_ttl="2h"
    )
    client = hvac.Client(url=vault.url)
    auth = client.auth.approle.login(role_id=role_id, secret_id=secret_id)["auth"]
    assert auth["client_token"] and auth["accessor"]
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True
    assert auth["policies"] == ["default"]
    assert auth["metadata"]["role_name"]
    data = vault.client(auth["client_token"]).auth.token.lookup_self()["data"]
    assert data["path"] == "auth/approle/login"
    assert data["orphan"] is True


def test_approle_token_renewal_is_capped_by_token_max_ttl(vault: VaultService) -> None:
    role_id, secret_id = vault.enable_approle(token_ttl="2s", token_max_ttl="4s")
    login = hvac.Client(url=vault.url).auth.approle.login(role_id=role_id, secret_id=secret_id)
    client = vault.client(login["auth"]["client_token"])
    renewed = client.auth.token.renew_self(increment="1h")
    assert renewed["auth"]["lease_duration"] <= 4
    assert renewed["warnings"]

    def expired() -> bool:
        try:
            client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return True
        return False

    assert wait_until(expired, timeout=10)


@pytest.mark.parametrize("wrong", ["role_id", "secret_id"])
def test_approle_login_with_a_wrong_id_is_400_invalid_role_or_secret_id(
    vault: VaultService, wrong: str
) -> None:
    role_id, secret_id = vault.enable_approle()
    ids = {
        "role_id": role_id,
        "secret_id": secret_id,
        wrong: "00000000-0000-0000-0000-000000000000",
    }
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        hvac.Client(url=vault.url).auth.approle.login(**ids)


def test_approle_secret_id_with_one_use_logs_in_once(vault: VaultService) -> None:
    role = f"single-use-{secrets.token_hex(3)}"
    vault.enable_approle(role)
    approle = vault.client().auth.approle
    approle.create_or_update_approle(role, token_policies=["default"], secret_id_num_uses=1)
    role_id = approle.read_role_id(role)["data"]["role_id"]
    secret_id = approle.generate_secret_id(role)["data"]["secret_id"]
    client = hvac.Client(url=vault.url)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        client.auth.approle.login(role_id=role_id, secret_id=secret_id)


# Kubernetes


@pytest.fixture
def k8s(vault: VaultService) -> KubernetesLogin:
    """A kubernetes auth mount and a JWT it accepts.

    Real Vault checks the JWT with the cluster's TokenReview API, so against a real
    Vault these tests need a cluster (ROTATOR_TEST_K8S_*, see
    VaultService.kubernetes_login) and skip without one; the emulator stands in for
    the cluster itself. This is the one place a real-Vault run may skip.
    """
    login = vault.kubernetes_login(f"app-{secrets.token_hex(3)}")
    if login is None:
        pytest.skip("real Vault without a Kubernetes cluster (set ROTATOR_TEST_K8S_*)")
    return login


def test_kubernetes_login_issues_a_token_for_the_bound_service_account(
    vault: VaultService, k8s: KubernetesLogin
) -> None:
    auth = hvac.Client(url=vault.url).auth.kubernetes.login(
        k8s.role, k8s.jwt, mount_point=k8s.mount
    )["auth"]
    assert auth["policies"] == ["default"]
    assert auth["lease_duration"] == 3600
    assert auth["metadata"]["role"] == k8s.role
    assert auth["metadata"]["service_account_name"] == k8s.service_account
    assert auth["metadata"]["service_account_namespace"] == k8s.namespace
    assert vault.client(auth["client_token"]).auth.token.lookup_self()["data"]["ttl"] > 0


def test_kubernetes_login_with_an_unknown_role_is_400(
    vault: VaultService, k8s: KubernetesLogin
) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role name"):
        hvac.Client(url=vault.url).auth.kubernetes.login(
            "no-such-role", k8s.jwt, mount_point=k8s.mount
        )


def test_kubernetes_login_with_a_forged_jwt_is_403(
    vault: VaultService, k8s: KubernetesLogin
) -> None:
    header, claims, _ = k8s.jwt.split(".")
    forged = f"{header}.{claims}.{secrets.token_urlsafe(32)}"
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=vault.url).auth.kubernetes.login(k8s.role, forged, mount_point=k8s.mount)


def test_kubernetes_login_for_an_unbound_service_account_is_403(
    vault: VaultService, k8s: KubernetesLogin
) -> None:
    client = vault.client()
    client.auth.kubernetes.create_role(
        "others", ["someone-else"], [k8s.namespace], policies=["default"], mount_point=k8s.mount
    )
    with pytest.raises(hvac.exceptions.Forbidden, match="not authorized"):
        hvac.Client(url=vault.url).auth.kubernetes.login("others", k8s.jwt, mount_point=k8s.mount)


# The database secrets engine and leases


def role_exists(pg: PgServer, username: str) -> bool:
    with pg.admin() as conn:
        found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone()
    return found is not None


def valid_until(pg: PgServer, username: str) -> datetime:
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (username,)
        ).fetchone()
    assert row is not None and row[0] is not None
    return row[0]  # type: ignore[no-any-return]


def test_database_creds_create_a_role_that_logs_in_with_the_returned_password(
    vault: VaultService, pg: PgServer
) -> None:
    db = vault.configure_database(pg, default_ttl="1h", max_ttl="2h")
    creds = vault.client().read(db.creds_path)
    assert creds["lease_id"].startswith(f"{db.creds_path}/")
    assert creds["renewable"] is True
    assert creds["lease_duration"] == 3600
    username, password = creds["data"]["username"], creds["data"]["password"]
    template = rf"v-root-{re.escape(db.role[:8])}-[A-Za-z0-9]{{20}}-\d{{10}}"
    assert re.fullmatch(template, username), username
    assert len(username.encode()) <= 63
    assert pg.logs_in(username, password)
    assert not pg.logs_in(username, password + "x")
    expires = valid_until(pg, username) - datetime.now(UTC)
    assert timedelta(minutes=55) < expires <= timedelta(hours=1, minutes=1)


def test_lease_renew_moves_valid_until_and_is_capped_at_max_ttl(
    vault: VaultService, pg: PgServer
) -> None:
    db = vault.configure_database(pg, default_ttl="1m", max_ttl="10m")
    client = vault.client()
    creds = client.read(db.creds_path)
    username = creds["data"]["username"]
    before = valid_until(pg, username)
    renewed = client.sys.renew_lease(creds["lease_id"], increment=300)
    assert renewed["lease_id"] == creds["lease_id"]
    assert 290 <= renewed["lease_duration"] <= 300
    assert valid_until(pg, username) > before + timedelta(minutes=3)
    capped = client.sys.renew_lease(creds["lease_id"], increment=3600)
    assert capped["lease_duration"] <= 600
    assert capped["warnings"]
    lookup = client.sys.read_lease(creds["lease_id"])["data"]
    assert lookup["id"] == creds["lease_id"]
    assert lookup["renewable"] is True
    assert 0 < lookup["ttl"] <= 600


def test_lease_revoke_drops_the_role_and_revoking_twice_succeeds(
    vault: VaultService, pg: PgServer
) -> None:
    db = vault.configure_database(pg)
    client = vault.client()
    creds = client.read(db.creds_path)
    username, password = creds["data"]["username"], creds["data"]["password"]
    assert pg.logs_in(username, password)
    client.sys.revoke_lease(creds["lease_id"])
    assert not role_exists(pg, username)
    assert not pg.logs_in(username, password)
    client.sys.revoke_lease(creds["lease_id"])
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.read_lease(creds["lease_id"])
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.renew_lease(creds["lease_id"])


def test_lease_expiry_drops_the_role(vault: VaultService, pg: PgServer) -> None:
    db = vault.configure_database(pg, default_ttl="2s", max_ttl="3s")
    creds = vault.client().read(db.creds_path)
    username, password = creds["data"]["username"], creds["data"]["password"]
    assert creds["lease_duration"] == 2
    assert pg.logs_in(username, password)
    assert wait_until(lambda: not role_exists(pg, username), timeout=15)
    assert not pg.logs_in(username, password)


def test_revoking_the_token_that_read_creds_revokes_its_leases(
    vault: VaultService, pg: PgServer
) -> None:
    db = vault.configure_database(pg)
    client = vault.client(vault.create_token("1h", "root"))
    creds = client.read(db.creds_path)
    username = creds["data"]["username"]
    assert role_exists(pg, username)
    client.auth.token.revoke_self()
    assert wait_until(lambda: not role_exists(pg, username), timeout=15)


def test_custom_revocation_statements_run_on_revoke(vault: VaultService, pg: PgServer) -> None:
    db = vault.configure_database(pg, revocation_statements=('ALTER ROLE "{{name}}" NOLOGIN;',))
    client = vault.client()
    creds = client.read(db.creds_path)
    username, password = creds["data"]["username"], creds["data"]["password"]
    client.sys.revoke_lease(creds["lease_id"])
    assert role_exists(pg, username)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        pg.logs_in(username, password)
    with pg.admin() as conn:  # its grants too: other tests leave tables in the database
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(username)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(username)))


def test_creds_for_an_unknown_role_is_400(vault: VaultService, pg: PgServer) -> None:
    db = vault.configure_database(pg)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="unknown role"):
        vault.client().read(f"{db.mount}/creds/no-such-role")


def test_list_works_as_the_list_method_and_as_get_with_list_true(
    vault: VaultService, kv_mount: str
) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret("dir/one", {"v": 1}, mount_point=kv_mount)
    headers = {"X-Vault-Token": vault.token}
    url = f"{vault.url}/v1/{kv_mount}/metadata/dir"
    by_method = requests.request("LIST", url, headers=headers, timeout=10)
    by_query = requests.get(url, params={"list": "true"}, headers=headers, timeout=10)
    assert by_method.status_code == by_query.status_code == 200
    assert by_method.json()["data"]["keys"] == by_query.json()["data"]["keys"] == ["one"]


def test_approle_secret_id_expires_after_its_ttl(vault: VaultService) -> None:
    role_id, secret_id = vault.enable_approle(secret_id_ttl="1s")
    client = hvac.Client(url=vault.url)

    def refused() -> bool:
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id)
        except hvac.exceptions.InvalidRequest:
            return True
        return False

    assert wait_until(refused, timeout=10)
