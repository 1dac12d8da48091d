"""Guards the engine runs before it lets a rotator act: whose credential it is, and whether a
refusal is the admin's rotation passing by rather than a real one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.errors import StoreError
from rotator.schedule import SecretSpec
from rotator.stores import SecretVersion, Stage

if TYPE_CHECKING:
    from rotator.engine import Engine


def shares_value(credential: Credential, others: list[Credential]) -> bool:
    """A confidential value of `credential` is one of `others'` (never retire those)."""
    mine = set(credential.secret_values())
    return any(mine & set(other.secret_values()) for other in others)


def guard_identity(
    spec: SecretSpec,
    rotator: SecretRotator,
    candidate: Credential,
    current: SecretVersion | None,
) -> None:
    """Confused-deputy guard: PENDING and CURRENT must be for the login the target names.

    A stored value (planted, or left from an old target block) must never make the
    rotator change some other login; where the target block does not name a field,
    the new credential must at least agree with CURRENT.
    """
    stored = current.credential if current is not None else None
    named = rotator.expected_identity()
    for name in rotator.identity_fields:
        allowed = named.get(name)
        if allowed is None and stored is not None and stored.get(name) is not None:
            allowed = (stored.get(name),)
        if allowed is None:
            continue
        for label, credential in (("new credential", candidate), ("CURRENT", stored)):
            if credential is not None and credential.get(name) not in allowed:
                expected = " or ".join(repr(value) for value in allowed)
                raise StoreError(
                    f"refusing to rotate {spec.name!r}: the {label}'s {name} is "
                    f"{credential.get(name)!r}, expected {expected}; fix the stored value"
                )


def admin_moved(engine: Engine, name: str, used: Credential | None) -> bool:
    """The admin secret's CURRENT is no longer the value this run used, or a live run of
    it is rotating it now (its new password may be set, not yet promoted). A PENDING left
    by a dead run is not enough: a genuine refusal must not look transient forever."""
    spec = engine.plan.secrets.get(name)
    if spec is None:
        return False
    current = engine.store_for(spec).read(spec.path, Stage.CURRENT)
    if used is not None and current is not None and current.credential != used:
        return True
    return engine.leases.holder(name) is not None
