"""Store factories for the store conformance kit, one per store kind.

A factory is a plain function registered under its kind:

    @store_factory("kind")
    def make_kind(request: pytest.FixtureRequest) -> StoreMaker: ...

It may pull any fixture with `request.getfixturevalue` (a server, `tmp_path`),
register clean-ups with `request.addfinalizer`, and returns a `StoreMaker`: a
no-argument callable that builds a *fresh* store instance over the same backend
each time it is called (the way another process would see it). The kit gives
every test fresh unique paths, so a backend may be shared by the whole session.
Adding a store kind is one function here; test_store_conformance.py picks it up.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet

from rotator.history import Database
from rotator.stores import SecretStore
from rotator.stores.aws_sm import AwsSecretsManagerConfig, AwsSecretsManagerStore
from rotator.stores.embedded import EmbeddedStore
from tests.services.moto import REGION
from tests.services.postgres import PgServer

StoreMaker = Callable[[], SecretStore]
StoreFactory = Callable[[pytest.FixtureRequest], StoreMaker]

FACTORIES: dict[str, StoreFactory] = {}


def store_factory(kind: str) -> Callable[[StoreFactory], StoreFactory]:
    """Register `factory` as the way to build stores of `kind`."""

    def register(factory: StoreFactory) -> StoreFactory:
        FACTORIES[kind] = factory
        return factory

    return register


@store_factory("embedded")
def make_embedded(request: pytest.FixtureRequest) -> StoreMaker:
    """Embedded stores on one fresh PostgreSQL history database and one key."""
    pg: PgServer = request.getfixturevalue("pg")
    url = pg.url(pg.create_database())
    setup = Database(url)
    setup.upgrade()
    setup.dispose()
    key = Fernet.generate_key()
    opened: list[Database] = []

    def make() -> SecretStore:
        database = Database(url)
        opened.append(database)
        return EmbeddedStore("local", database, Fernet(key))

    request.addfinalizer(lambda: [database.dispose() for database in opened])
    return make


@store_factory("aws")
def make_aws(request: pytest.FixtureRequest) -> StoreMaker:
    """AWS Secrets Manager stores on the session's moto server, each with its own client."""
    endpoint: str = request.getfixturevalue("moto_endpoint")
    config = AwsSecretsManagerConfig(region=REGION, endpoint_url=endpoint)

    def make() -> SecretStore:
        return AwsSecretsManagerStore.from_config("aws", config, None)  # type: ignore[arg-type]

    return make


@store_factory("vault")
def make_vault(request: pytest.FixtureRequest) -> StoreMaker:
    """vault-kv stores on a fresh KV v2 mount of the session's Vault, token read from a file."""
    from rotator.stores.vault_kv import VaultKvStore, VaultKvStoreConfig
    from tests.services.vault import VaultService

    vault: VaultService = request.getfixturevalue("vault")
    token_file = request.getfixturevalue("tmp_path") / "vault-token"
    token_file.write_text(vault.create_token("1h", "root"))
    config = VaultKvStoreConfig.model_validate(
        {
            "type": "vault-kv",
            "url": vault.url,
            "mount": vault.enable_kv2(),
            "auth": {"method": "token", "token_file": str(token_file)},
        }
    )
    return lambda: VaultKvStore.from_config("vault", config, None)  # type: ignore[arg-type]
