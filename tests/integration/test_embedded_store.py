"""The embedded store keeps the SecretStore rules on SQLite and PostgreSQL, encrypted at rest."""

from __future__ import annotations

import secrets

import pytest
from cryptography.fernet import Fernet

from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import StoreError, TransientError
from rotator.history import Database
from rotator.stores import Stage
from rotator.stores.embedded import EmbeddedStore
from tests.integration.conftest import stages, stored_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def store(database: Database) -> EmbeddedStore:
    return EmbeddedStore("local", database, Fernet(Fernet.generate_key()))


def credential() -> Credential:
    return Credential(username="app", password=secrets.token_urlsafe(24))


def ids(store: EmbeddedStore, path: str) -> dict[Stage, str | None]:
    return {stage: v.version_id if v else None for stage, v in stages(store, path).items()}


def test_put_pending_is_idempotent_on_its_token(store: EmbeddedStore) -> None:
    first = credential()
    written = store.put_pending("app", first, "run-1")

    again = store.put_pending("app", credential(), "run-1")  # a replayed create step

    assert again.version_id == written.version_id
    assert again.credential == first and again.stage == Stage.PENDING
    assert store.read("app", Stage.PENDING) == written
    assert len(stored_rows(store.database, "app")) == 1


def test_second_pending_with_another_token_is_refused(store: EmbeddedStore) -> None:
    written = store.put_pending("app", credential(), "run-1")
    other = credential()

    with pytest.raises(StoreError, match="already has a PENDING") as caught:
        store.put_pending("app", other, "run-2")

    assert other.password is not None and other.password not in str(caught.value)
    assert store.read("app", Stage.PENDING) == written
    assert len(stored_rows(store.database, "app")) == 1


def test_promote_moves_current_to_previous_and_drops_the_old_previous(
    store: EmbeddedStore,
) -> None:
    versions = []
    for run in ("run-1", "run-2", "run-3"):
        version = store.put_pending("app", credential(), run)
        store.promote("app", version.version_id)
        versions.append(version)

    assert ids(store, "app") == {
        Stage.CURRENT: versions[2].version_id,
        Stage.PENDING: None,
        Stage.PREVIOUS: versions[1].version_id,
    }
    current = store.read("app", Stage.CURRENT)
    assert current is not None and current.credential == versions[2].credential
    staged = {row.version_id: row.stage for row in stored_rows(store.database, "app")}
    assert staged[versions[0].version_id] is None  # kept (encrypted) but no longer staged


def test_promote_twice_is_a_no_op(store: EmbeddedStore) -> None:
    old = store.put_current("app", credential(), "adopt")
    new = store.put_pending("app", credential(), "run-1")
    store.promote("app", new.version_id)
    after_first = ids(store, "app")

    store.promote("app", new.version_id)

    assert ids(store, "app") == after_first
    assert after_first[Stage.CURRENT] == new.version_id
    assert after_first[Stage.PREVIOUS] == old.version_id


def test_promote_refuses_unknown_foreign_and_discarded_versions(store: EmbeddedStore) -> None:
    elsewhere = store.put_pending("other", credential(), "run-o")
    discarded = store.put_pending("app", credential(), "run-1")
    store.discard_pending("app", discarded.version_id)

    with pytest.raises(StoreError, match="no version"):
        store.promote("app", "0" * 32)
    with pytest.raises(StoreError, match="no version"):
        store.promote("app", elsewhere.version_id)
    with pytest.raises(StoreError, match="not PENDING"):
        store.promote("app", discarded.version_id)
    assert ids(store, "app") == {Stage.CURRENT: None, Stage.PENDING: None, Stage.PREVIOUS: None}
    assert store.read("other", Stage.PENDING) == elsewhere


def test_discard_pending_is_idempotent_and_only_drops_that_version(
    store: EmbeddedStore,
) -> None:
    current = store.put_current("app", credential(), "adopt")
    pending = store.put_pending("app", credential(), "run-1")

    store.discard_pending("app", "f" * 32)  # not the PENDING one: nothing happens
    assert store.read("app", Stage.PENDING) == pending
    store.discard_pending("app", pending.version_id)
    store.discard_pending("app", pending.version_id)

    assert store.read("app", Stage.PENDING) is None
    assert store.read("app", Stage.CURRENT) == current
    fresh = store.put_pending("app", credential(), "run-2")  # room for the next rotation
    assert store.read("app", Stage.PENDING) == fresh


def test_paths_keep_their_own_stages(store: EmbeddedStore) -> None:
    a = store.put_current("a", credential(), "adopt-a")
    b = store.put_pending("b", credential(), "run-b")

    assert store.read("a", Stage.CURRENT) == a and store.read("a", Stage.PENDING) is None
    assert store.read("b", Stage.PENDING) == b and store.read("b", Stage.CURRENT) is None


def test_ciphertext_at_rest_does_not_contain_the_value(store: EmbeddedStore) -> None:
    value = Credential(username="app", password="pl41n-" + secrets.token_hex(12), note="visible?")
    store.put_current("app", value, "adopt")

    (row,) = stored_rows(store.database, "app")

    assert value.password is not None
    assert value.password.encode() not in row.ciphertext
    assert Credential.from_json(store._fernet.decrypt(row.ciphertext)) == value


def test_wrong_key_is_a_clear_store_error(database: Database, store: EmbeddedStore) -> None:
    value = credential()
    store.put_current("app", value, "adopt")
    stranger = EmbeddedStore("local", database, Fernet(Fernet.generate_key()))

    with pytest.raises(StoreError) as caught:
        stranger.read("app", Stage.CURRENT)

    message = str(caught.value)
    assert "cannot decrypt 'app'" in message and "ROTATOR_ENCRYPTION_KEY" in message
    assert "local" in message
    assert value.password is not None and value.password not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_unreachable_database_is_transient_and_check_names_the_store() -> None:
    database = Database(f"postgresql+psycopg://nobody:x@127.0.0.1:{free_port()}/none")
    store = EmbeddedStore("vaultless", database, Fernet(Fernet.generate_key()))
    try:
        with pytest.raises(TransientError, match="store 'vaultless' unreachable"):
            store.read("app", Stage.CURRENT)
        with pytest.raises(StoreError, match="store 'vaultless'"):
            store.check()
    finally:
        database.dispose()
