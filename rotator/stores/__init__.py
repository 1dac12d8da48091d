"""Secret stores, found by their YAML `type:` and imported only when used."""

from __future__ import annotations

from importlib import import_module

from rotator.errors import ConfigError
from rotator.stores.base import SecretStore, SecretVersion, Stage, StoreConfig, StoreContext

#: YAML `type:` -> "module:Class". A store's SDK is imported only when it is used.
STORE_TYPES: dict[str, str] = {
    "embedded": "rotator.stores.embedded:EmbeddedStore",
    "aws-secrets-manager": "rotator.stores.aws_sm:AwsSecretsManagerStore",
    "vault-kv": "rotator.stores.vault_kv:VaultKvStore",
}


def store_class(type_name: str) -> type[SecretStore]:
    """The store class for a YAML `type:`, or a ConfigError listing the known ones."""
    try:
        module_name, class_name = STORE_TYPES[type_name].split(":")
    except KeyError:
        known = ", ".join(sorted(STORE_TYPES))
        raise ConfigError(f"unknown store type {type_name!r} (expected one of: {known})") from None
    cls: type[SecretStore] = getattr(import_module(module_name), class_name)
    return cls


__all__ = [
    "STORE_TYPES",
    "SecretStore",
    "SecretVersion",
    "Stage",
    "StoreConfig",
    "StoreContext",
    "store_class",
]
