"""The SecretStore contract every store (embedded, AWS, Vault) implements.

Stages follow AWS Secrets Manager: each path has at most one CURRENT, one
PENDING and one PREVIOUS version. Rules every store keeps:

* `put_pending` is idempotent on `token` (the run id): a second call with the
  same token returns the version the first call wrote while it is PENDING; once
  that version was promoted or dropped the token is spent (`StoreError`);
* `promote` of a version that is already CURRENT does nothing;
* `discard_pending` of a version that is no longer PENDING does nothing;
* unreachable -> `TransientError`; refused (denied, missing) -> `StoreError`;
* no message contains a secret value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from rotator.credential import Credential

if TYPE_CHECKING:
    from rotator.config import Settings
    from rotator.history import Database


class Stage(StrEnum):
    CURRENT = "CURRENT"
    PENDING = "PENDING"
    PREVIOUS = "PREVIOUS"


@dataclass(frozen=True)
class SecretVersion:
    """One stored value of a secret and the stage it holds."""

    version_id: str
    credential: Credential
    stage: Stage | None
    token: str | None = None


class StoreConfig(BaseModel):
    """Base of every store's YAML block (`stores.NAME`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


@dataclass(frozen=True)
class StoreContext:
    """Process-wide things a store may need: settings and the history database."""

    settings: Settings
    database: Database


class SecretStore(ABC):
    """A place that keeps secret versions under stages."""

    store_type: ClassVar[str]
    Config: ClassVar[type[StoreConfig]]

    @classmethod
    @abstractmethod
    def from_config(cls, name: str, config: StoreConfig, context: StoreContext) -> SecretStore:
        """Build the store; no network I/O here (call `check` for that)."""

    def close(self) -> None:  # noqa: B027 - optional hook: most stores hold nothing to release
        """Release what the store holds (connections, renewal timers); default: nothing."""

    @abstractmethod
    def check(self) -> None:
        """Prove the store can be reached and used; raise a clear error naming it if not."""

    @abstractmethod
    def read(self, path: str, stage: Stage) -> SecretVersion | None:
        """The version holding `stage` at `path`, or None."""

    def read_stages(self, path: str) -> dict[Stage, SecretVersion | None]:
        """CURRENT, PENDING and PREVIOUS at `path`; stores that can read them at once should."""
        return {stage: self.read(path, stage) for stage in Stage}

    @abstractmethod
    def put_pending(self, path: str, credential: Credential, token: str) -> SecretVersion:
        """Store `credential` as PENDING; idempotent on `token`."""

    @abstractmethod
    def promote(self, path: str, version_id: str) -> None:
        """PENDING `version_id` becomes CURRENT, CURRENT becomes PREVIOUS."""

    @abstractmethod
    def discard_pending(self, path: str, version_id: str) -> None:
        """Remove the PENDING stage from `version_id` (a rollback)."""

    def put_current(
        self, path: str, credential: Credential, token: str, replace_pending: bool = False
    ) -> SecretVersion:
        """Adopt an existing credential: store it and make it CURRENT at once.

        With `replace_pending`, a PENDING version loses its stage first (the operator vouches
        that `credential` is what the target accepts). Stores that can should do it all in one
        transaction; this default takes three calls.
        """
        pending = self.read(path, Stage.PENDING)
        if pending is not None and replace_pending:
            self.discard_pending(path, pending.version_id)
        version = self.put_pending(path, credential, token)
        self.promote(path, version.version_id)
        return SecretVersion(version.version_id, credential, Stage.CURRENT, token)
