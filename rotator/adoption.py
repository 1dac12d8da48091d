"""Adoption: an operator hands rotator a credential that already works (`rotator put`).

How a team starts managing an existing login, and how an operator gets out of
a PENDING version that no rotation can finish (`--replace-pending`): the value
they give becomes CURRENT, the old CURRENT becomes PREVIOUS, and history
records it as an adoption.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, RotationInProgress
from rotator.logging import secret_values
from rotator.results import RunResult
from rotator.retirement import retire_later, retire_outgoing
from rotator.stores import Stage

if TYPE_CHECKING:
    from rotator.engine import Engine

log = structlog.get_logger("rotator.adoption")
#: The `slot` an adoption that asks to be rotated at once is recorded with (rotator.slots).
ROTATE_NOW_SLOT = "rotate-now"


def adopt(
    engine: Engine,
    name: str,
    credential: Credential,
    replace_pending: bool = False,
    rotate: bool | None = None,
) -> RunResult:
    """Store `credential` as the CURRENT value of secret `name`, under its lease.

    `rotate` (default: the secret's `rotate_on_adopt`) asks for a rotation at once, so a
    value a person typed does not stay in use; otherwise the adoption counts as a rotation.
    The old CURRENT is retired after the grace period, as after a rotation.
    """
    rotate = engine.plan.secret(name).rotate_on_adopt if rotate is None else rotate
    spec = engine.plan.secret(name)
    rotator = engine.rotator_for(spec)
    credential = rotator.complete(credential)
    problem = _identity_problem(rotator, credential)
    if problem is not None:
        raise ConfigError(f"refusing to adopt a value for {name!r}: {problem}")
    run_id = uuid.uuid4().hex
    store = engine.store_for(spec)
    with engine.leases.hold(name, run_id) as lease, secret_values(credential.secret_values()):
        resumable = engine.settle_interrupted(spec, store, run_id)
        pending = store.read(spec.path, Stage.PENDING)
        if pending is not None and not replace_pending:
            raise RotationInProgress(
                f"secret {name!r} has a PENDING version from an unfinished rotation; finish it "
                f"with `rotator rotate {name} --inline`, or, if the value you give is the one "
                "the target accepts now, add --replace-pending"
            )
        if pending is not None:
            with secret_values(pending.credential.secret_values()):
                _check_replacement(rotator, name, pending.credential, credential)
        lease.check()  # the checks above log in and may take a while: still ours?
        if resumable is not None and pending is None:  # its version is CURRENT: record it
            promoted = store.read_stages(spec.path)
            current = promoted[Stage.CURRENT]
            engine.history.finish_run(
                resumable,
                "succeeded",
                current.version_id if current else None,
                rotate_by=rotator.rotate_by(current.credential) if current else None,
                retire=(
                    retire_later(spec, rotator, promoted[Stage.PREVIOUS], current.credential)
                    if current
                    else None
                ),
            )
        elif resumable is not None:
            engine.history.finish_run(resumable, "failed", error="PENDING replaced by an adoption")
        # The slot column of an adoption says whether it asked to be rotated at once.
        engine.history.start_run(run_id, name, "adopt", ROTATE_NOW_SLOT if rotate else None)
        detail = None if pending is None else f"replaced PENDING version {pending.version_id}"
        stages = store.read_stages(spec.path)
        staying = [credential] + [v.credential for v in (stages[Stage.CURRENT],) if v]
        retire_outgoing(engine, spec, rotator, stages[Stage.PREVIOUS], staying, lease)
        lease.check()  # a stalled `put` must not overwrite what a newer run wrote
        version = store.put_current(spec.path, credential, run_id, replace_pending=replace_pending)
        engine.history.record_step(run_id, "adopt", "ok", detail=detail)
        retire = retire_later(spec, rotator, stages[Stage.CURRENT], credential)
        rotate_by = rotator.rotate_by(credential)
        engine.history.finish_run(
            run_id, "adopted", version.version_id, rotate_by=rotate_by, retire=retire
        )
    log.info("rotation.adopted", secret=name, run_id=run_id, version_id=version.version_id)
    return RunResult(run_id, name, "adopted", version.version_id)


def _check_replacement(
    rotator: SecretRotator, name: str, pending: Credential, given: Credential
) -> None:
    """Dropping PENDING is safe only when it no longer works and the given value does.

    A PENDING for another login than the target block names (the block changed since) is
    not this target's credential at all: no rotation can finish it, so it may go.
    """
    if _identity_problem(rotator, pending) is None:
        try:
            rotator.test(pending)
        except CredentialRejected:
            pass
        else:
            raise ConfigError(
                f"the PENDING value of {name!r} works on the target; finish the rotation with "
                f"`rotator rotate {name} --inline` instead of replacing it"
            )
    try:
        rotator.test(given)
    except CredentialRejected as exc:
        raise ConfigError(
            f"the target refuses the value given for {name!r} ({exc}); nothing was changed"
        ) from None


def _identity_problem(rotator: SecretRotator, credential: Credential) -> str | None:
    """Why `credential` is not for the login the target block names, or None."""
    for field_name, allowed in rotator.expected_identity().items():
        if credential.get(field_name) not in allowed:
            expected = " or ".join(repr(value) for value in allowed)
            return (
                f"its {field_name} is {credential.get(field_name)!r} "
                f"but the target block says {expected}"
            )
    return None
