"""SecretRotator: the plugin contract, and the registry that finds plugins.

A rotator knows one kind of target and nothing about stores, Celery or
history. The engine wraps it with retries, logging, secret scrubbing and
step recording, so plugins stay small. Rules every plugin keeps:

* every method may be called twice with the same arguments (a crash or a
  redelivered message replays a step) and must reach the same end state;
* a target that cannot be reached raises `TransientError` (retried);
* a target that refuses a credential raises `CredentialRejected`;
* no message or log line contains a secret value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib.metadata import entry_points
from typing import ClassVar

from pydantic import BaseModel

from rotator.credential import Credential
from rotator.errors import ConfigError
from rotator.passwords import PasswordPolicy

ENTRY_POINT_GROUP = "rotator.rotators"

#: Reads the CURRENT credential of another declared secret (e.g. an admin).
SecretLookup = Callable[[str], Credential]


@dataclass(frozen=True)
class RotatorContext:
    """What the engine hands a rotator besides its target block."""

    secret_name: str
    password_policy: PasswordPolicy
    lookup_secret: SecretLookup


class SecretRotator:
    """Base class of every rotator kind; subclasses set `kind` and `Target`."""

    kind: ClassVar[str]
    #: The pydantic model of this kind's `target:` block; validated at load time.
    Target: ClassVar[type[BaseModel]]
    #: Fields of the credential that identify *who* it is; a new credential must
    #: keep them (the confused-deputy guard), e.g. username and host.
    identity_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, target: BaseModel, context: RotatorContext) -> None:
        self.target = target
        self.context = context

    @classmethod
    def managed_identity(cls, target: BaseModel) -> tuple[str, ...] | None:
        """What the target's credential logs in as (for the self-lockout guard)."""
        return None

    @classmethod
    def managed_identities(cls, target: BaseModel) -> tuple[tuple[str, ...], ...]:
        """Every login the target's credentials may be for (several when a strategy alternates)."""
        identity = cls.managed_identity(target)
        return () if identity is None else (identity,)

    @classmethod
    def admin_problem(cls, target: BaseModel, admin_target: BaseModel) -> str | None:
        """Why the admin secret's credential must not be used for `target`, or None.

        E.g. an admin of another server: its password would be sent there.
        """
        return None

    @classmethod
    def schedule_problem(cls, target: BaseModel, shortest_interval: timedelta) -> str | None:
        """Why rotating `target` this often cannot work, or None (checked at load time).

        `shortest_interval` is the shortest gap between two scheduled rotations, e.g. a
        credential that expires by itself must be replaced before it does.
        """
        return None

    def expected_identity(self) -> dict[str, tuple[object, ...]]:
        """For each identity field the target block names, the values a credential may carry.

        The confused-deputy guard refuses a stored or generated credential whose identity is
        not among them. A field the block leaves out is compared with CURRENT instead.
        """
        expected: dict[str, tuple[object, ...]] = {}
        for name in self.identity_fields:
            value = getattr(self.target, name, None)
            if value is not None:
                expected[name] = (value,)
        return expected

    def expired(self, credential: Credential) -> bool:
        """True when `credential` can never work again by itself (a lease past its end).

        A PENDING version that expired before its run could finish (the worker was down) is
        retired and replaced by a fresh one instead of being tried again forever.
        """
        return False

    def rotate_by(self, credential: Credential) -> datetime | None:
        """When `credential` stops working by itself (a lease that expires), if it does.

        The scheduler starts the next rotation before then, whatever the schedule says.
        """
        return None

    def generate(self, current: Credential | None) -> Credential:
        """A new credential, fresh randomness from `secrets`; touches nothing."""
        raise NotImplementedError

    def complete(self, credential: Credential) -> Credential:
        """Fill fields an operator may leave out when adopting (`rotator put`)."""
        return credential

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        """Make the target accept `pending`. Idempotent: a no-op when it already does."""
        raise NotImplementedError

    def test(self, credential: Credential) -> None:
        """Prove over a real connection that the target accepts `credential`."""
        raise NotImplementedError

    def retire(self, previous: Credential) -> None:
        """Revoke a credential no longer needed: PREVIOUS once its grace period has passed,
        or a PENDING that a rollback dropped. Idempotent (revoking what is already revoked
        is success); the default keeps it."""


RotatorRegistry = Mapping[str, type[SecretRotator]]


@cache
def registered_rotators() -> dict[str, type[SecretRotator]]:
    """Every rotator kind installed under the `rotator.rotators` entry-point group."""
    found: dict[str, type[SecretRotator]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, SecretRotator)):
            raise ConfigError(f"entry point {entry.name!r} is not a SecretRotator subclass")
        found[entry.name] = cls
    return found
