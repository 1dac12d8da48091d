"""The vault-kv store: secrets in a Vault KV version 2 engine.

Stage layout, so that applications never read an unconfirmed value:

* CURRENT is the latest version of the application path `<mount>/data/<path>`;
  PREVIOUS is the version before it.
* PENDING lives apart, at `<mount>/data/<pending_prefix><path>`, a place a
  policy keeps applications from reading. Its data is an envelope holding the
  run token, our version id and the value, written with cas=0 in one request,
  so two runs cannot both own it and its token is never missing.
* `promote` writes the value to the application path with check-and-set on
  the version it saw as CURRENT, records the version's id and token in the
  path's custom_metadata (`rotator-v<N>`; spent tokens as
  `rotator-spent-<token>`), then deletes the pending entry. A crash between
  any two of these calls is finished by the next `promote`: a latest version
  holding the pending value is recognised as our own write.

KV v2 has no multi-key transaction, so each rule is kept by ordering the
writes and by check-and-set; the engine's per-secret lease keeps the
metadata read-modify-write to one writer at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import hvac
from hvac import exceptions as hvac_errors
from pydantic import PositiveFloat, field_validator

from rotator.credential import Credential
from rotator.errors import StoreError
from rotator.stores.base import SecretStore, SecretVersion, Stage, StoreConfig, StoreContext
from rotator.stores.vault_auth import AuthConfig, VaultSession, vault_client, vault_url
from rotator.stores.vault_errors import ConcurrentWrite, body, version_deleted

#: Vault's limit on custom_metadata keys per path.
CUSTOM_KEYS_MAX = 64
#: Keys rotator needs besides spent tokens: the ids of CURRENT and PREVIOUS.
VERSION_KEYS = 2
_VERSION_KEY = "rotator-v"
_SPENT_KEY = "rotator-spent-"


class VaultKvStoreConfig(StoreConfig):
    type: Literal["vault-kv"] = "vault-kv"
    url: str
    mount: str = "secret"
    namespace: str | None = None
    ca_cert: Path | None = None
    verify: bool = True
    timeout_seconds: PositiveFloat = 10.0
    pending_prefix: str = "rotator-pending/"
    auth: AuthConfig

    @field_validator("mount", "pending_prefix")
    @classmethod
    def _no_outer_slashes(cls, value: str) -> str:
        stripped = value.strip("/")
        if not stripped:
            raise ValueError("must not be empty")
        return stripped

    _url = field_validator("url")(vault_url)


@dataclass(frozen=True)
class _Meta:
    """What the metadata endpoint says about a path (empty when the path does not exist)."""

    current_version: int = 0
    custom: dict[str, str] = field(default_factory=dict)
    live: frozenset[int] = frozenset()  # versions neither deleted nor destroyed
    delete_version_after: str = "0s"

    @property
    def user_keys(self) -> int:
        """custom_metadata keys that are not rotator's own."""
        return sum(1 for key in self.custom if not key.startswith((_VERSION_KEY, _SPENT_KEY)))


class VaultKvStore(SecretStore):
    store_type: ClassVar[str] = "vault-kv"
    Config: ClassVar[type[StoreConfig]] = VaultKvStoreConfig

    def __init__(self, name: str, config: VaultKvStoreConfig, session: VaultSession) -> None:
        self.name = name
        self.config = config
        self.session = session

    @classmethod
    def from_config(cls, name: str, config: StoreConfig, context: StoreContext) -> VaultKvStore:
        assert isinstance(config, VaultKvStoreConfig)
        client = vault_client(
            config.url, config.namespace, config.ca_cert, config.verify, config.timeout_seconds
        )
        return cls(name, config, VaultSession(name, client, config.auth))

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"VaultKvStore({self.name!r}, {self.config.url!r}, mount={self.config.mount!r})"

    def check(self) -> None:
        mount = self.config.mount
        self.session.call("token lookup-self", lambda c: c.auth.token.lookup_self())
        self.session.call(
            f"read {mount}/config",
            lambda c: c.secrets.kv.v2.read_configuration(mount_point=mount),
        )

    # -- the contract -------------------------------------------------------------

    def read(self, path: str, stage: Stage) -> SecretVersion | None:
        if stage == Stage.PENDING:
            return self._read_pending(path)
        meta = self._meta(path)
        number = meta.current_version - (1 if stage == Stage.PREVIOUS else 0)
        if number < 1 or number not in meta.live:
            return None
        data = self._data(path, number)
        if data is None:
            return None
        credential = Credential(data)
        version_id, token = self._identity(meta, number)
        if version_id is None and stage == Stage.CURRENT:
            # A promote that crashed after its write: the version is the PENDING one.
            pending = self._read_pending(path)
            if pending is not None and pending.credential == credential:
                version_id, token = pending.version_id, pending.token
        return SecretVersion(version_id or f"kv-{number}", credential, stage, token)

    def put_pending(self, path: str, credential: Credential, token: str) -> SecretVersion:
        meta = self._meta(path)
        if self._is_spent(meta, token):
            raise StoreError(
                f"store {self.name!r}: token {token} at {path!r} was spent on a version that "
                "is no longer PENDING"
            )
        self._check_room(path, meta)  # before the target changes, not at promote
        existing, latest = self._pending_slot(path)
        if existing is not None:
            if existing.token == token:
                return existing
            raise StoreError(f"store {self.name!r}: {path!r} already has a PENDING version")
        version = SecretVersion(uuid.uuid4().hex, credential, Stage.PENDING, token)
        envelope = {"token": token, "version_id": version.version_id, "value": dict(credential)}
        try:
            # cas on the latest (deleted) version: a `vault kv delete` of the entry frees it
            self._write(self._pending_path(path), envelope, cas=latest)
        except ConcurrentWrite:
            existing = self._read_pending(path)
            if existing is not None and existing.token == token:
                return existing  # our own earlier request, whose answer was lost
            raise StoreError(
                f"store {self.name!r}: concurrent write to {path!r}; another run owns PENDING"
            ) from None
        return version

    def promote(self, path: str, version_id: str) -> None:
        pending = self._read_pending(path)
        if pending is None or pending.version_id != version_id:
            current = self.read(path, Stage.CURRENT)
            if current is not None and current.version_id == version_id:
                return
            raise StoreError(
                f"store {self.name!r}: version {version_id} at {path!r} is not PENDING "
                "(no version, or dropped); run the rotation again"
            )
        meta = self._meta(path)
        number = self._landed(path, meta, pending.credential)
        if number is None:
            self._check_room(path, meta)
            try:
                number = self._write(path, dict(pending.credential), cas=meta.current_version)
            except ConcurrentWrite:
                raise StoreError(
                    f"store {self.name!r}: concurrent write to {path!r}: it changed while "
                    "promoting; run the rotation again to finish"
                ) from None
        self._record(path, meta, number, pending)
        self._delete(self._pending_path(path))

    def discard_pending(self, path: str, version_id: str) -> None:
        pending = self._read_pending(path)
        if pending is None or pending.version_id != version_id:
            return
        if pending.token is not None:
            meta = self._meta(path)
            self._check_room(path, meta)
            self._set_custom(path, meta, self._with_spent(meta, meta.custom, pending.token))
        self._delete(self._pending_path(path))

    def put_current(
        self, path: str, credential: Credential, token: str, replace_pending: bool = False
    ) -> SecretVersion:
        """Adoption: one check-and-set write to the application path, then its metadata."""
        pending = self._read_pending(path)
        if pending is not None and not replace_pending:
            raise StoreError(f"store {self.name!r}: {path!r} has a PENDING version")
        if pending is not None:
            self.discard_pending(path, pending.version_id)
        meta = self._meta(path)
        if self._is_spent(meta, token):
            raise StoreError(f"store {self.name!r}: token {token} at {path!r} was spent already")
        self._check_room(path, meta)
        try:
            number = self._write(path, dict(credential), cas=meta.current_version)
        except ConcurrentWrite:
            raise StoreError(
                f"store {self.name!r}: concurrent write to {path!r}; nothing was adopted, try again"
            ) from None
        version = SecretVersion(uuid.uuid4().hex, credential, Stage.CURRENT, token)
        self._record(path, meta, number, version)
        return version

    # -- stage bookkeeping --------------------------------------------------------------

    def _landed(self, path: str, meta: _Meta, credential: Credential) -> int | None:
        """The latest version number if it already holds `credential` (a crashed promote)."""
        number = meta.current_version
        if number < 1 or number not in meta.live:
            return None
        data = self._data(path, number)
        return number if data is not None and Credential(data) == credential else None

    def _record(self, path: str, meta: _Meta, number: int, version: SecretVersion) -> None:
        """Name version `number` as `version`, forget ids older than PREVIOUS, spend its token."""
        custom = {
            key: value
            for key, value in meta.custom.items()
            if not key.startswith(_VERSION_KEY) or key == f"{_VERSION_KEY}{number - 1}"
        }
        custom[f"{_VERSION_KEY}{number}"] = f"{version.version_id} {version.token or ''}".strip()
        if version.token:
            custom = self._with_spent(meta, custom, version.token)
        self._set_custom(path, meta, custom)

    @staticmethod
    def _identity(meta: _Meta, number: int) -> tuple[str | None, str | None]:
        """(version id, token) recorded for version `number`, or (None, None)."""
        recorded = meta.custom.get(f"{_VERSION_KEY}{number}")
        if not recorded:
            return None, None
        version_id, _, token = recorded.partition(" ")
        return version_id, token or None

    @staticmethod
    def _spent_key(token: str) -> str:
        """Vault limits keys to 128 bytes: long tokens are remembered by their digest."""
        if len(token) <= 100 and token.isascii():
            return _SPENT_KEY + token
        return _SPENT_KEY + hashlib.sha256(token.encode()).hexdigest()

    def _is_spent(self, meta: _Meta, token: str) -> bool:
        if self._spent_key(token) in meta.custom:
            return True
        return any(
            self._identity(meta, int(key[len(_VERSION_KEY) :]))[1] == token
            for key in meta.custom
            if key.startswith(_VERSION_KEY) and key[len(_VERSION_KEY) :].isdigit()
        )

    @staticmethod
    def _spent_room(meta: _Meta) -> int:
        """How many spent tokens fit beside the path's own keys and the two version ids."""
        return CUSTOM_KEYS_MAX - meta.user_keys - VERSION_KEYS

    def _check_room(self, path: str, meta: _Meta) -> None:
        """Refuse before writing anything when custom_metadata has no room for a spent token."""
        if self._spent_room(meta) < 1:
            raise StoreError(
                f"store {self.name!r}: {self._where(path, 'metadata')} has {meta.user_keys} "
                f"custom_metadata keys of its own; rotator needs {VERSION_KEYS + 1} of Vault's "
                f"{CUSTOM_KEYS_MAX}: remove some (vault kv metadata patch) and run again"
            )

    def _with_spent(self, meta: _Meta, custom: dict[str, str], token: str) -> dict[str, str]:
        """`custom` plus `token` as spent, keeping the newest spent tokens that fit."""
        custom = {**custom, self._spent_key(token): str(time.time_ns())}
        spent = sorted(
            (key for key in custom if key.startswith(_SPENT_KEY)),
            key=lambda key: int(custom[key]) if custom[key].isdigit() else 0,
        )
        for key in spent[: max(0, len(spent) - max(1, self._spent_room(meta)))]:
            del custom[key]
        return custom

    # -- Vault calls ---------------------------------------------------------------

    def _pending_path(self, path: str) -> str:
        return f"{self.config.pending_prefix}/{path.strip('/')}"

    def _where(self, path: str, kind: str = "data") -> str:
        return f"{self.config.mount}/{kind}/{path.strip('/')}"

    def _read_pending(self, path: str) -> SecretVersion | None:
        return self._pending_slot(path)[0]

    def _pending_slot(self, path: str) -> tuple[SecretVersion | None, int]:
        """The PENDING version (or None), and the entry's latest version number for cas."""
        pending_path = self._pending_path(path)
        meta = self._meta(pending_path)
        if meta.current_version not in meta.live:
            return None, meta.current_version
        envelope = self._data(pending_path, meta.current_version)
        if envelope is None:
            return None, meta.current_version
        try:
            value, version_id = envelope["value"], envelope["version_id"]
            token = envelope.get("token")
            if not isinstance(value, dict) or not isinstance(version_id, str):
                raise TypeError
        except (KeyError, TypeError):
            raise StoreError(
                f"store {self.name!r}: {self._where(pending_path)} was not written by rotator; "
                "delete it (vault kv metadata delete) to free the PENDING slot"
            ) from None
        return SecretVersion(
            version_id, Credential(value), Stage.PENDING, token
        ), meta.current_version

    def _meta(self, path: str) -> _Meta:
        mount = self.config.mount

        def action(client: hvac.Client) -> Any:
            try:
                return client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
            except hvac_errors.InvalidPath:
                return None

        what = f"read {self._where(path, 'metadata')}"
        response = self.session.call(what, action)
        if response is None:
            return _Meta()
        data = body(response, self.name, what, "data")
        where = f"store {self.name!r}: {self._where(path, 'metadata')}"
        live = frozenset(
            int(number)
            for number, info in (data.get("versions") or {}).items()
            if not version_deleted(info, where)
        )
        return _Meta(
            current_version=int(data.get("current_version") or 0),
            custom=dict(data.get("custom_metadata") or {}),
            live=live,
            delete_version_after=str(data.get("delete_version_after") or "0s"),
        )

    def _data(self, path: str, version: int) -> dict[str, Any] | None:
        mount = self.config.mount

        def action(client: hvac.Client) -> Any:
            try:
                return client.secrets.kv.v2.read_secret_version(
                    path=path, version=version, mount_point=mount, raise_on_deleted_version=True
                )
            except hvac_errors.InvalidPath:
                return None

        what = f"read {self._where(path)} version {version}"
        response = self.session.call(what, action)
        if response is None:
            return None
        data = body(response, self.name, what, "data", "data")
        return data if isinstance(data, dict) else None

    def _write(self, path: str, data: dict[str, Any], cas: int) -> int:
        """Write a new version with check-and-set; its version number."""
        mount = self.config.mount
        what = f"write {self._where(path)}"
        response = self.session.call(
            what,
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, cas=cas, mount_point=mount
            ),
        )
        return int(body(response, self.name, what, "data", "version"))

    def _set_custom(self, path: str, meta: _Meta, custom: dict[str, str]) -> None:
        """Replace the path's custom_metadata, keeping its delete_version_after setting."""
        mount = self.config.mount
        self.session.call(
            f"write {self._where(path, 'metadata')}",
            lambda c: c.secrets.kv.v2.update_metadata(
                path=path,
                delete_version_after=meta.delete_version_after,
                custom_metadata=custom,
                mount_point=mount,
            ),
        )

    def _delete(self, path: str) -> None:
        mount = self.config.mount

        def action(client: hvac.Client) -> None:
            with contextlib.suppress(hvac_errors.InvalidPath):
                client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)

        self.session.call(f"delete {self._where(path, 'metadata')}", action)
