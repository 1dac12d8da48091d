"""What only the emulator does: namespaces without Vault Enterprise, and its own edges.

The contract tests (tests/integration/test_vault_api_contract.py) prove the
emulator answers as Vault does; these cover behaviour a real Vault OSS cannot
show (namespaces) and the emulator's handling of malformed calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import hvac
import hvac.exceptions
import pytest
import requests

from tests.vault_emulator import VaultEmulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[VaultEmulator]:
    started = VaultEmulator().start()
    yield started
    started.stop()


def client(emulator: VaultEmulator, namespace: str | None = None) -> hvac.Client:
    return hvac.Client(url=emulator.url, token=emulator.root_token, namespace=namespace)


def test_each_namespace_has_its_own_mounts_and_secrets(emulator: VaultEmulator) -> None:
    team_a, team_b = client(emulator, "team-a"), client(emulator, "team-b")
    team_a.secrets.kv.v2.create_or_update_secret("shared/name", {"owner": "a"})
    team_a.sys.enable_secrets_engine("kv", path="only-a", options={"version": "2"})
    read = team_a.secrets.kv.v2.read_secret_version("shared/name", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"owner": "a"}
    for other in (team_b, client(emulator)):
        with pytest.raises(hvac.exceptions.InvalidPath):
            other.secrets.kv.v2.read_secret_version("shared/name", raise_on_deleted_version=True)
        assert "only-a/" not in other.sys.list_mounted_secrets_engines()["data"]


def test_a_root_namespace_token_reaches_child_namespaces(emulator: VaultEmulator) -> None:
    token = client(emulator).auth.token.create(policies=["default"], ttl="1h")["auth"]
    child = hvac.Client(url=emulator.url, token=token["client_token"], namespace="team-c")
    assert child.auth.token.lookup_self()["data"]["id"] == token["client_token"]


def test_get_with_list_true_is_the_list_method(emulator: VaultEmulator) -> None:
    client(emulator).secrets.kv.v2.create_or_update_secret("listing/one", {"v": 1})
    headers = {"X-Vault-Token": emulator.root_token}
    by_query = requests.get(
        f"{emulator.url}/v1/secret/metadata/listing?list=true", headers=headers, timeout=5
    )
    by_method = requests.request(
        "LIST", f"{emulator.url}/v1/secret/metadata/listing", headers=headers, timeout=5
    )
    assert by_query.status_code == by_method.status_code == 200
    assert by_query.json()["data"] == by_method.json()["data"] == {"keys": ["one"]}


def test_malformed_json_is_400_and_the_server_keeps_serving(emulator: VaultEmulator) -> None:
    reply = requests.post(
        f"{emulator.url}/v1/secret/data/x",
        data=b"{not json",
        headers={"X-Vault-Token": emulator.root_token},
        timeout=5,
    )
    assert reply.status_code == 400
    assert "failed to parse JSON input" in reply.json()["errors"][0]
    assert requests.get(f"{emulator.url}/v1/sys/health", timeout=5).json()["sealed"] is False


def test_expired_tokens_are_swept_without_being_used(emulator: VaultEmulator) -> None:
    """The background sweep, not the next call, retires an expired token."""
    token = client(emulator).auth.token.create(policies=["default"], ttl="1s")["auth"]
    held = emulator.vault.tokens._tokens
    assert token["client_token"] in held
    deadline = time.monotonic() + 10
    while token["client_token"] in held and time.monotonic() < deadline:
        time.sleep(0.1)
    assert token["client_token"] not in held
