"""The vault-kv store keeps the SecretStore rules against Vault (real, or the emulator).

Applications read `<mount>/data/<path>`: its latest version is CURRENT and never an
unconfirmed value. Stores here log in with a token holding exactly the policy that
docs/stores.md publishes, so on a real Vault that policy is proven sufficient.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import pytest
import structlog
from hvac import exceptions as hvac_errors
from pydantic import ValidationError

from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import ConfigError, RotatorError, StoreError, TransientError
from rotator.stores import SecretVersion, Stage, store_class
from rotator.stores.vault_auth import VaultSession
from rotator.stores.vault_kv import VaultKvStore, VaultKvStoreConfig
from tests.services.vault import FaultyVault, VaultService

pytestmark = pytest.mark.integration
T = TypeVar("T")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "stores.md"


class Crash(Exception):
    """An injected crash before a Vault call (deliberately not a RotatorError)."""


def docs_policy(marker: str, mount: str) -> str:
    """The HCL block of docs/stores.md starting with `# marker`, for `mount`."""
    blocks = re.findall(r"```hcl\n(.*?)```", DOCS.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(f"# {marker}\n")]
    return block.replace('"secret/', f'"{mount}/')


def credential() -> Credential:
    return Credential(username="app", password=secrets.token_urlsafe(24))


def make_store(
    vault: VaultService, mount: str, auth: dict[str, Any], name: str = "vault", **extra: Any
) -> VaultKvStore:
    config = VaultKvStoreConfig.model_validate(
        {"type": "vault-kv", "url": vault.url, "mount": mount, "auth": auth, **extra}
    )
    store = VaultKvStore.from_config(name, config, None)  # type: ignore[arg-type]
    assert isinstance(store, VaultKvStore)
    return store


@pytest.fixture
def store_token(vault: VaultService, kv_mount: str) -> str:
    """A token holding only the store policy of the docs."""
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    return vault.create_token("1h", policy)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, store_token: str) -> str:
    variable = f"ROTATOR_TEST_VAULT_TOKEN_{secrets.token_hex(3).upper()}"
    monkeypatch.setenv(variable, store_token)
    return variable


@pytest.fixture
def store(vault: VaultService, kv_mount: str, token_env: str) -> VaultKvStore:
    return make_store(vault, kv_mount, {"method": "token", "token_env": token_env})


def fresh(store: VaultKvStore) -> VaultKvStore:
    """The same store as another process builds it: a new client, nothing shared in memory."""
    return VaultKvStore.from_config(store.name, store.config, None)  # type: ignore[arg-type]


def app_read(vault: VaultService, mount: str, path: str, version: int | None = None) -> Any:
    """What an application reading the path with plain hvac gets (None when nothing is there)."""
    try:
        response = vault.client().secrets.kv.v2.read_secret_version(
            path=path, version=version, mount_point=mount, raise_on_deleted_version=True
        )
    except hvac_errors.InvalidPath:
        return None
    return response["data"]


def ids(store: VaultKvStore, path: str) -> dict[Stage, str | None]:
    return {s: (v.version_id if v else None) for s in Stage for v in [store.read(path, s)]}


class HookedSession(VaultSession):
    """A session that runs `before(what)` ahead of each Vault call: crashes and races."""

    def __init__(self, base: VaultSession, before: Callable[[str], None]) -> None:
        super().__init__(base.store, base.client, base.auth)
        self.before = before

    def call(self, what: str, action: Callable[[hvac.Client], T]) -> T:
        self.before(what)
        return super().call(what, action)


# -- stage layout and the contract ------------------------------------------------------


def test_application_path_holds_current_and_never_pending(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    first, second = credential(), credential()
    adopted = store.put_current("apps/db", first, "adopt-1")
    pending = store.put_pending("apps/db", second, "run-1")

    seen = app_read(vault, kv_mount, "apps/db")
    assert seen["data"] == dict(first) and seen["metadata"]["version"] == 1
    stored = app_read(vault, kv_mount, "rotator-pending/apps/db")
    assert stored["data"]["value"] == dict(second) and stored["data"]["token"] == "run-1"
    assert store.read("apps/db", Stage.PENDING) == pending
    assert store.read("apps/db", Stage.CURRENT) == adopted

    store.promote("apps/db", pending.version_id)

    seen = app_read(vault, kv_mount, "apps/db")
    assert seen["data"] == dict(second) and seen["metadata"]["version"] == 2
    assert app_read(vault, kv_mount, "apps/db", version=1)["data"] == dict(first)
    assert app_read(vault, kv_mount, "rotator-pending/apps/db") is None
    current, previous = store.read("apps/db", Stage.CURRENT), store.read("apps/db", Stage.PREVIOUS)
    assert current is not None and previous is not None
    assert (current.version_id, current.credential, current.token) == (
        pending.version_id,
        second,
        "run-1",
    )
    assert (previous.version_id, previous.credential) == (adopted.version_id, first)
    assert store.read("apps/db", Stage.PENDING) is None


def test_missing_path_reads_as_none_for_every_stage(store: VaultKvStore) -> None:
    assert ids(store, "apps/nothing") == {s: None for s in Stage}


def test_put_pending_is_idempotent_on_its_token(store: VaultKvStore) -> None:
    first = credential()
    written = store.put_pending("apps/db", first, "run-1")

    again = fresh(store).put_pending("apps/db", credential(), "run-1")

    assert again == written and again.credential == first and again.stage == Stage.PENDING


def test_second_pending_with_another_token_is_refused(store: VaultKvStore) -> None:
    written = store.put_pending("apps/db", credential(), "run-1")
    other = credential()

    with pytest.raises(StoreError, match="already has a PENDING") as caught:
        store.put_pending("apps/db", other, "run-2")

    assert other.password is not None and other.password not in str(caught.value)
    assert store.read("apps/db", Stage.PENDING) == written


def test_spent_tokens_are_refused_after_promote_and_after_discard(store: VaultKvStore) -> None:
    promoted = store.put_pending("apps/db", credential(), "run-1")
    store.promote("apps/db", promoted.version_id)
    dropped = store.put_pending("apps/db", credential(), "run-2")
    store.discard_pending("apps/db", dropped.version_id)

    for token in ("run-1", "run-2"):
        with pytest.raises(StoreError, match=f"token {token} .* spent"):
            fresh(store).put_pending("apps/db", credential(), token)
    assert store.read("apps/db", Stage.PENDING) is None
    assert ids(store, "apps/db")[Stage.CURRENT] == promoted.version_id


def test_promote_twice_is_a_no_op_and_previous_rolls(store: VaultKvStore) -> None:
    versions = []
    for run in ("run-1", "run-2", "run-3"):
        version = store.put_pending("apps/db", credential(), run)
        store.promote("apps/db", version.version_id)
        versions.append(version)
    after = ids(store, "apps/db")

    store.promote("apps/db", versions[2].version_id)

    assert (
        ids(store, "apps/db")
        == after
        == {
            Stage.CURRENT: versions[2].version_id,
            Stage.PENDING: None,
            Stage.PREVIOUS: versions[1].version_id,
        }
    )


def test_promote_refuses_unknown_and_discarded_versions(store: VaultKvStore) -> None:
    discarded = store.put_pending("apps/db", credential(), "run-1")
    store.discard_pending("apps/db", discarded.version_id)

    for version_id in ("0" * 32, discarded.version_id):
        with pytest.raises(StoreError, match="not PENDING"):
            store.promote("apps/db", version_id)
    assert ids(store, "apps/db") == {s: None for s in Stage}


def test_discard_pending_is_idempotent_and_only_drops_that_version(
    store: VaultKvStore,
) -> None:
    current = store.put_current("apps/db", credential(), "adopt")
    pending = store.put_pending("apps/db", credential(), "run-1")

    store.discard_pending("apps/db", "f" * 32)
    assert store.read("apps/db", Stage.PENDING) == pending
    store.discard_pending("apps/db", pending.version_id)
    store.discard_pending("apps/db", pending.version_id)

    assert store.read("apps/db", Stage.PENDING) is None
    assert store.read("apps/db", Stage.CURRENT) == current
    assert store.put_pending("apps/db", credential(), "run-2").stage == Stage.PENDING


def test_put_current_refuses_a_pending_unless_told_to_replace_it(store: VaultKvStore) -> None:
    pending = store.put_pending("apps/db", credential(), "run-1")
    with pytest.raises(StoreError, match="has a PENDING"):
        store.put_current("apps/db", credential(), "adopt-1")
    assert store.read("apps/db", Stage.CURRENT) is None

    adopted = store.put_current("apps/db", credential(), "adopt-2", replace_pending=True)

    assert store.read("apps/db", Stage.PENDING) is None
    assert store.read("apps/db", Stage.CURRENT) == adopted
    with pytest.raises(StoreError, match="spent"):
        store.put_pending("apps/db", credential(), pending.token or "")


def test_a_version_written_outside_rotator_is_current(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    adopted = store.put_current("apps/db", credential(), "adopt")
    by_hand = credential()
    vault.client().secrets.kv.v2.create_or_update_secret(
        path="apps/db", secret=dict(by_hand), mount_point=kv_mount
    )

    current, previous = store.read("apps/db", Stage.CURRENT), store.read("apps/db", Stage.PREVIOUS)

    assert current is not None and current.credential == by_hand
    assert current.version_id == "kv-2" and current.token is None
    assert previous == SecretVersion(
        adopted.version_id, adopted.credential, Stage.PREVIOUS, "adopt"
    )


# -- crashes inside promote, and races ---------------------------------------------------


@pytest.mark.parametrize(
    "crash_before",
    ["write {m}/data/apps/db", "write {m}/metadata/apps/db", "delete {m}/metadata/rotator-pending"],
)
def test_promote_finishes_after_a_crash_between_its_vault_calls(
    vault: VaultService, kv_mount: str, store: VaultKvStore, crash_before: str
) -> None:
    old = store.put_current("apps/db", credential(), "adopt")
    pending = store.put_pending("apps/db", credential(), "run-1")
    point = crash_before.format(m=kv_mount)

    def crash(what: str) -> None:
        if what.startswith(point):
            raise Crash(what)

    dying = fresh(store)
    dying.session = HookedSession(dying.session, crash)
    with pytest.raises(Crash):
        dying.promote("apps/db", pending.version_id)

    # In between, applications see the old value or the new one, never anything else,
    # and the store still offers PENDING for the resumed run.
    assert app_read(vault, kv_mount, "apps/db")["data"] in (
        dict(old.credential),
        dict(pending.credential),
    )
    assert store.read("apps/db", Stage.PENDING) == pending

    fresh(store).promote("apps/db", pending.version_id)
    fresh(store).promote("apps/db", pending.version_id)

    assert ids(store, "apps/db") == {
        Stage.CURRENT: pending.version_id,
        Stage.PENDING: None,
        Stage.PREVIOUS: old.version_id,
    }
    assert app_read(vault, kv_mount, "apps/db")["metadata"]["version"] == 2  # written once
    with pytest.raises(StoreError, match="spent"):
        store.put_pending("apps/db", credential(), "run-1")


def test_a_write_between_read_and_promote_loses_nothing(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    """Check-and-set: the loser gets 'concurrent write' and the other writer's value stays."""
    store.put_current("apps/db", credential(), "adopt")
    pending = store.put_pending("apps/db", credential(), "run-1")
    intruder = credential()

    def race(what: str) -> None:
        if what.startswith(f"write {kv_mount}/data/apps/db"):
            vault.client().secrets.kv.v2.create_or_update_secret(
                path="apps/db", secret=dict(intruder), mount_point=kv_mount
            )

    racing = fresh(store)
    racing.session = HookedSession(racing.session, race)
    with pytest.raises(StoreError, match="concurrent write"):
        racing.promote("apps/db", pending.version_id)

    assert app_read(vault, kv_mount, "apps/db")["data"] == dict(intruder)
    assert store.read("apps/db", Stage.PENDING) == pending


def test_concurrent_put_pending_has_one_winner(store: VaultKvStore) -> None:
    results: dict[str, Any] = {}
    start = threading.Barrier(4)

    def put(token: str) -> None:
        start.wait()
        try:
            results[token] = fresh(store).put_pending("apps/db", credential(), token)
        except RotatorError as exc:
            results[token] = exc

    threads = [threading.Thread(target=put, args=(f"run-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [v for v in results.values() if not isinstance(v, Exception)]
    losers = [v for v in results.values() if isinstance(v, Exception)]
    assert len(winners) == 1 and len(losers) == 3
    assert all(isinstance(e, StoreError) for e in losers)
    assert store.read("apps/db", Stage.PENDING) == winners[0]


def test_concurrent_adoptions_are_resolved_by_check_and_set(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    store.put_current("apps/db", credential(), "adopt-0")
    intruder = credential()

    def race(what: str) -> None:
        if what.startswith(f"write {kv_mount}/data/apps/db"):
            vault.client().secrets.kv.v2.create_or_update_secret(
                path="apps/db", secret=dict(intruder), mount_point=kv_mount
            )

    racing = fresh(store)
    racing.session = HookedSession(racing.session, race)
    with pytest.raises(StoreError, match="concurrent write"):
        racing.put_current("apps/db", credential(), "adopt-1")
    assert app_read(vault, kv_mount, "apps/db")["data"] == dict(intruder)


# -- auth, renewal, errors ------------------------------------------------------------------


def test_approle_login_works_and_check_passes(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    role_id, secret_id = vault.enable_approle(policies=(policy,))
    (tmp_path / "role-id").write_text(role_id + "\n")
    monkeypatch.setenv("ROTATOR_TEST_SECRET_ID", secret_id)
    store = make_store(
        vault,
        kv_mount,
        {
            "method": "approle",
            "role_id_file": str(tmp_path / "role-id"),
            "secret_id_env": "ROTATOR_TEST_SECRET_ID",
        },
    )

    store.check()
    adopted = store.put_current("apps/db", credential(), "adopt")
    assert store.read("apps/db", Stage.CURRENT) == adopted


def test_store_keeps_working_past_its_tokens_first_ttl(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    token = vault.create_token("3s", policy, explicit_max_ttl="1h")
    idle = vault.create_token("3s", policy, explicit_max_ttl="1h")  # same TTL, never renewed
    monkeypatch.setenv("ROTATOR_TEST_SHORT_TOKEN", token)
    store = make_store(
        vault, kv_mount, {"method": "token", "token_env": "ROTATOR_TEST_SHORT_TOKEN"}
    )
    adopted = store.put_current("apps/db", credential(), "adopt")

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert store.read("apps/db", Stage.CURRENT) == adopted
        time.sleep(0.5)

    assert store.session.client.token == token  # renewed, not replaced
    assert vault.client().auth.token.lookup(token)["data"]["ttl"] > 0
    with pytest.raises(hvac_errors.Forbidden):  # the server does expire tokens
        vault.client(idle).auth.token.lookup_self()


def test_store_logs_in_again_when_its_token_is_revoked(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    role_id, secret_id = vault.enable_approle(policies=(policy,))
    monkeypatch.setenv("ROTATOR_TEST_ROLE_ID", role_id)
    monkeypatch.setenv("ROTATOR_TEST_SECRET_ID", secret_id)
    store = make_store(
        vault,
        kv_mount,
        {
            "method": "approle",
            "role_id_env": "ROTATOR_TEST_ROLE_ID",
            "secret_id_env": "ROTATOR_TEST_SECRET_ID",
        },
    )
    adopted = store.put_current("apps/db", credential(), "adopt")
    first_token = store.session.client.token

    vault.client().auth.token.revoke(first_token)

    assert store.read("apps/db", Stage.CURRENT) == adopted
    assert store.session.client.token != first_token


def test_building_the_store_does_no_network_io(vault: VaultService) -> None:
    config = VaultKvStoreConfig.model_validate(
        {
            "type": "vault-kv",
            "url": f"http://127.0.0.1:{free_port()}",
            "auth": {"method": "token", "token_env": "ROTATOR_TEST_UNSET_VARIABLE"},
        }
    )
    built = store_class("vault-kv").from_config("offline", config, None)  # type: ignore[arg-type]
    assert isinstance(built, VaultKvStore)


def test_unreachable_vault_is_transient_and_names_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROTATOR_TEST_ANY_TOKEN", "hvs.unused")
    config = VaultKvStoreConfig.model_validate(
        {
            "type": "vault-kv",
            "url": f"http://127.0.0.1:{free_port()}",
            "timeout_seconds": 2,
            "auth": {"method": "token", "token_env": "ROTATOR_TEST_ANY_TOKEN"},
        }
    )
    store = VaultKvStore.from_config("offline", config, None)  # type: ignore[arg-type]

    with pytest.raises(TransientError, match="store 'offline': Vault unreachable") as caught:
        store.read("apps/db", Stage.CURRENT)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(TransientError, match="store 'offline'"):
        store.check()


def test_a_bad_token_is_a_store_error_naming_the_store(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = "hvs." + secrets.token_urlsafe(18)
    monkeypatch.setenv("ROTATOR_TEST_BAD_TOKEN", bogus)
    store = make_store(vault, kv_mount, {"method": "token", "token_env": "ROTATOR_TEST_BAD_TOKEN"})

    for action in (store.check, lambda: store.read("apps/db", Stage.CURRENT)):
        with pytest.raises(StoreError, match="store 'vault': permission denied") as caught:
            action()
        assert bogus not in str(caught.value)


def test_missing_auth_sources_are_config_errors_naming_them(
    vault: VaultService, kv_mount: str, tmp_path: Path
) -> None:
    unset = make_store(vault, kv_mount, {"method": "token", "token_env": "ROTATOR_TEST_NOPE"})
    with pytest.raises(ConfigError, match="store 'vault': environment variable ROTATOR_TEST_NOPE"):
        unset.read("apps/db", Stage.CURRENT)
    missing = tmp_path / "no-such-token"
    unreadable = make_store(vault, kv_mount, {"method": "token", "token_file": str(missing)})
    with pytest.raises(ConfigError, match=f"cannot read {re.escape(str(missing))}"):
        unreadable.check()


def test_auth_blocks_are_validated() -> None:
    for auth in (
        {"method": "token"},
        {"method": "token", "token_env": "A", "token_file": "/b"},
        {"method": "token", "token": "hvs.inline"},
        {"method": "approle", "role_id_env": "A"},
        {"method": "kubernetes"},
        {"method": "ldap"},
    ):
        with pytest.raises(ValidationError):
            VaultKvStoreConfig.model_validate(
                {"type": "vault-kv", "url": "http://vault:8200", "auth": auth}
            )


def test_no_value_reaches_logs_errors_or_reprs(
    vault: VaultService, kv_mount: str, store: VaultKvStore, store_token: str
) -> None:
    values = [credential() for _ in range(3)]
    with structlog.testing.capture_logs() as logs:
        store.put_current("apps/db", values[0], "adopt")
        pending = store.put_pending("apps/db", values[1], "run-1")
        errors = []
        for action in (
            lambda: store.put_pending("apps/db", values[2], "run-2"),
            lambda: store.put_current("apps/db", values[2], "adopt-2"),
        ):
            with pytest.raises(StoreError) as caught:
                action()
            errors.append(caught.value)
        store.promote("apps/db", pending.version_id)
        texts = [repr(store), repr(store.read("apps/db", Stage.CURRENT))]

    assert logs, "the login is logged"
    haystack = repr(logs) + repr([str(e) for e in errors]) + repr(texts)
    for value in values:
        assert value.password is not None and value.password not in haystack
    assert store_token not in haystack


# -- delete_version_after, spent-token room, a soft-deleted PENDING ------------------------


@pytest.mark.parametrize("where", ["mount", "key"])
def test_versions_under_delete_version_after_stay_live_until_it_passes(
    vault: VaultService, kv_mount: str, store: VaultKvStore, where: str
) -> None:
    """Vault stamps each new version with a FUTURE deletion_time; it is live until then."""
    root = vault.client().secrets.kv.v2
    if where == "mount":
        root.configure(max_versions=10, delete_version_after="24h", mount_point=kv_mount)
    else:
        root.update_metadata("apps/db", delete_version_after="24h", mount_point=kv_mount)
    adopted = store.put_current("apps/db", credential(), "adopt")
    assert app_read(vault, kv_mount, "apps/db")["metadata"]["deletion_time"] != ""
    assert app_read(vault, kv_mount, "apps/db")["data"] == dict(adopted.credential)
    assert store.read("apps/db", Stage.CURRENT) == adopted

    pending = store.put_pending("apps/db", credential(), "run-1")
    assert store.read("apps/db", Stage.PENDING) == pending
    assert store.put_pending("apps/db", pending.credential, "run-1") == pending
    store.promote("apps/db", pending.version_id)
    assert ids(store, "apps/db") == {
        Stage.CURRENT: pending.version_id,
        Stage.PENDING: None,
        Stage.PREVIOUS: adopted.version_id,
    }


def test_a_version_whose_deletion_time_passed_is_gone(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    vault.client().secrets.kv.v2.update_metadata(
        "apps/db", delete_version_after="1s", mount_point=kv_mount
    )
    store.put_current("apps/db", credential(), "adopt")
    time.sleep(1.5)
    assert app_read(vault, kv_mount, "apps/db") is None
    assert store.read("apps/db", Stage.CURRENT) is None


def test_spent_tokens_fit_beside_the_paths_own_custom_metadata(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    """40 keys of the user's own leave room for 22 spent tokens, not the 40 once assumed."""
    own = {f"team-{n}": "db" for n in range(40)}
    vault.client().secrets.kv.v2.update_metadata(
        "apps/db", custom_metadata=own, mount_point=kv_mount
    )
    for run in range(26):
        pending = store.put_pending("apps/db", credential(), f"run-{run}")
        store.promote("apps/db", pending.version_id)
        assert ids(store, "apps/db")[Stage.CURRENT] == pending.version_id
    custom = vault.client().secrets.kv.v2.read_secret_metadata("apps/db", mount_point=kv_mount)
    custom = custom["data"]["custom_metadata"]
    assert len(custom) == 64 and own.items() <= custom.items()
    with pytest.raises(StoreError, match="spent"):  # the newest spent tokens are kept
        store.put_pending("apps/db", credential(), "run-25")


def test_a_path_without_room_is_refused_before_anything_is_written(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    current = store.put_current("apps/db", credential(), "adopt")
    own = {f"team-{n}": "db" for n in range(62)}
    vault.client().secrets.kv.v2.update_metadata(
        "apps/db", custom_metadata=own, mount_point=kv_mount
    )
    for action in (
        lambda: store.put_pending("apps/db", credential(), "run-1"),
        lambda: store.put_current("apps/db", credential(), "adopt-2"),
    ):
        with pytest.raises(StoreError, match="62 custom_metadata keys of its own; rotator needs"):
            action()
    assert store.read("apps/db", Stage.PENDING) is None
    assert app_read(vault, kv_mount, "apps/db")["data"] == dict(current.credential)


def test_a_pending_entry_soft_deleted_by_hand_frees_the_slot(
    vault: VaultService, kv_mount: str, store: VaultKvStore
) -> None:
    """`vault kv delete` of the pending entry leaves its metadata; cas=0 would fail forever."""
    store.put_current("apps/db", credential(), "adopt")
    store.put_pending("apps/db", credential(), "run-1")
    vault.client().secrets.kv.v2.delete_latest_version_of_secret(
        "rotator-pending/apps/db", mount_point=kv_mount
    )
    assert store.read("apps/db", Stage.PENDING) is None
    pending = store.put_pending("apps/db", credential(), "run-2")
    assert store.read("apps/db", Stage.PENDING) == pending
    store.promote("apps/db", pending.version_id)
    assert app_read(vault, kv_mount, "apps/db")["data"] == dict(pending.credential)


# -- a policy denial, idle stores, kubernetes ------------------------------------------------


def test_a_policy_denial_is_reported_without_spending_a_login(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 403 with a valid token is the policy's answer: no new token, no secret-id use."""
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    role = "uses-" + kv_mount
    role_id, _ = vault.enable_approle(role, policies=(policy,))
    client = vault.client()
    client.auth.approle.create_or_update_approle(
        role, token_policies=[policy], secret_id_num_uses=2, mount_point="approle"
    )
    secret_id = client.auth.approle.generate_secret_id(role, mount_point="approle")["data"]
    monkeypatch.setenv("ROTATOR_TEST_ROLE_ID", role_id)
    monkeypatch.setenv("ROTATOR_TEST_SECRET_ID", secret_id["secret_id"])
    auth = {
        "method": "approle",
        "role_id_env": "ROTATOR_TEST_ROLE_ID",
        "secret_id_env": "ROTATOR_TEST_SECRET_ID",
    }
    denied = make_store(vault, kv_mount, auth, pending_prefix="not-granted-pending/")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(StoreError, match=r"permission denied .*rotator-store-policy"):
                denied.read("apps/db", Stage.PENDING)
    assert [e["event"] for e in logs if e["event"].startswith("vault.")] == ["vault.login"]

    granted = make_store(vault, kv_mount, auth)  # the secret id's second and last use
    adopted = granted.put_current("apps/db", credential(), "adopt")
    assert granted.read("apps/db", Stage.CURRENT) == adopted


def test_an_idle_token_store_keeps_its_token_alive(
    vault: VaultService, kv_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal timer renews between calls: idle past the TTL, the store still works."""
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    token = vault.create_token("2s", policy, explicit_max_ttl="1h")
    monkeypatch.setenv("ROTATOR_TEST_SHORT_TOKEN", token)
    store = make_store(
        vault, kv_mount, {"method": "token", "token_env": "ROTATOR_TEST_SHORT_TOKEN"}
    )
    adopted = store.put_current("apps/db", credential(), "adopt")
    time.sleep(3.5)  # no call in between
    assert store.read("apps/db", Stage.CURRENT) == adopted
    assert store.session.client.token == token
    store.session.close()
    time.sleep(2.5)  # closed: no more renewals, and the server expires the token
    with pytest.raises(hvac_errors.Forbidden):
        vault.client(token).auth.token.lookup_self()


def test_kubernetes_auth_through_the_store(
    vault: VaultService, kv_mount: str, tmp_path: Path
) -> None:
    policy = f"rotator-{kv_mount}"
    vault.write_policy(policy, docs_policy("rotator-store-policy", kv_mount))
    login = vault.kubernetes_login("rotator", policies=(policy,))
    if login is None:
        pytest.skip("real Vault without a Kubernetes cluster (set ROTATOR_TEST_K8S_*)")
    (tmp_path / "sa-token").write_text(login.jwt)
    auth = {
        "method": "kubernetes",
        "role": login.role,
        "token_file": str(tmp_path / "sa-token"),
        "mount": login.mount,
    }
    store = make_store(vault, kv_mount, auth)
    store.check()
    adopted = store.put_current("apps/db", credential(), "adopt")
    assert store.read("apps/db", Stage.CURRENT) == adopted


# -- failures a working Vault does not give on demand -----------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (503, '{"errors": ["Vault is sealed"]}', TransientError, "VaultDown: Vault is sealed"),
        (429, '{"errors": ["request rate limit exceeded"]}', TransientError, "RateLimitExceeded"),
        (500, '{"errors": ["internal error"]}', TransientError, "InternalServerError"),
        (502, '{"errors": []}', TransientError, "BadGateway"),
        (405, '{"errors": ["unsupported operation"]}', StoreError, "UnexpectedError"),
        (409, '{"errors": ["conflict"]}', StoreError, "UnexpectedError"),
        (200, "<html>sign in</html>", StoreError, "a KV version 2 engine"),
        (204, "", StoreError, "a KV version 2 engine"),
        (0, "", TransientError, "ChunkedEncodingError"),
    ],
)
def test_vault_failures_through_the_store_are_transient_only_when_retrying_helps(
    monkeypatch: pytest.MonkeyPatch, status: int, body: str, error: type, text: str
) -> None:
    faulty = FaultyVault(status, body, "text/html" if body.startswith("<") else "application/json")
    monkeypatch.setenv("ROTATOR_TEST_ANY_TOKEN", "hvs.unused")
    config = VaultKvStoreConfig.model_validate(
        {
            "type": "vault-kv",
            "url": faulty.url,
            "auth": {"method": "token", "token_env": "ROTATOR_TEST_ANY_TOKEN"},
        }
    )
    store = VaultKvStore.from_config("faulty", config, None)  # type: ignore[arg-type]
    try:
        for action in (
            lambda: store.read("apps/db", Stage.CURRENT),
            lambda: store.put_pending("apps/db", credential(), "run-1"),
        ):
            with pytest.raises(RotatorError) as caught:
                action()
            assert type(caught.value) is error or (
                error is StoreError and not isinstance(caught.value, TransientError)
            )
            assert "store 'faulty'" in str(caught.value) and text in str(caught.value)
    finally:
        faulty.stop()


def test_deletion_times_are_read_as_vault_writes_them() -> None:
    """Vault writes RFC 3339 with nanoseconds (trailing zeros trimmed); the past is deleted."""
    from datetime import UTC, datetime, timedelta

    from rotator.stores.vault_errors import version_deleted

    def stamp(delta: timedelta, digits: str) -> str:
        return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.") + digits + "Z"

    assert not version_deleted({"deletion_time": "", "destroyed": False}, "here")
    assert not version_deleted({"deletion_time": stamp(timedelta(hours=1), "123456789")}, "here")
    assert version_deleted({"deletion_time": stamp(-timedelta(seconds=5), "123456789")}, "here")
    assert version_deleted({"deletion_time": "2024-01-02T03:04:05Z"}, "here")
    assert version_deleted({"deletion_time": "", "destroyed": True}, "here")
    with pytest.raises(StoreError, match="here: unreadable deletion_time"):
        version_deleted({"deletion_time": "yesterday"}, "here")
