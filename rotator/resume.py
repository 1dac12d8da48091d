"""Resuming after a crash: which earlier run of a secret is finished, resumed or closed.

Called by the engine under the secret's lease, so runs still recorded as running are dead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from rotator.results import RunResult
from rotator.retirement import retire_later
from rotator.schedule import SecretSpec
from rotator.stores import SecretStore, Stage

if TYPE_CHECKING:
    from rotator.engine import Engine

log = structlog.get_logger("rotator.engine")
#: Run outcomes that are final: a run recorded with one of them is never run again. A failed
#: run may be (its task retries under the same id and resumes its PENDING).
FINISHED = frozenset({"succeeded", "rolled_back", "adopted"})


def already_finished(engine: Engine, name: str, run_id: str) -> RunResult | None:
    """A run id that already ended (a redelivered message, a resent slot) is not run again:
    its new credential would be generated under a spent token, and its record rewritten."""
    recorded = engine.history.get_run(run_id)
    if recorded is not None and recorded.status == "resumed" and recorded.resumed_run_id:
        recorded = engine.history.get_run(recorded.resumed_run_id)  # its outcome is ours
    if recorded is None or recorded.status not in FINISHED:
        return None
    log.info("rotation.already_finished", secret=name, run_id=recorded.id, status=recorded.status)
    return RunResult(
        recorded.id,
        name,
        recorded.status,
        recorded.version_id,
        recorded.error,
        resumed=recorded.id != run_id,
    )


def settle_interrupted(
    engine: Engine, spec: SecretSpec, store: SecretStore, run_id: str
) -> str | None:
    """The run of this secret a crash left unfinished, if any of it is left to finish.

    We hold the lease, so runs still recorded as running are dead. The newest is resumed
    under its own id when the store still has a PENDING version, or when its version is
    CURRENT already (only its record is missing). One that left nothing behind, or whose
    version was dropped or superseded since, is closed as failed: resuming it could
    re-apply a value that is no longer in the store. An interrupted adoption is closed
    too: it generated nothing, so there is nothing of it to rotate.
    """
    stale = [r for r in engine.history.running_runs(spec.name) if r.id != run_id]
    if not stale:
        return None
    newest, *older = stale
    for run in older:
        engine.history.finish_run(run.id, "failed", error="interrupted; superseded by a later run")
    pending = store.read(spec.path, Stage.PENDING)
    current = store.read(spec.path, Stage.CURRENT)
    promoted = current is not None and current.token == newest.id
    if newest.trigger == "adopt" and promoted and current is not None:
        # The adoption stored its value; only its record is missing. What it replaced is
        # PREVIOUS now, and is retired after grace as the adoption would have scheduled.
        rotator = engine.rotator_for(spec)
        engine.history.finish_run(
            newest.id,
            "adopted",
            current.version_id,
            rotate_by=rotator.rotate_by(current.credential),
            retire=retire_later(
                spec, rotator, store.read(spec.path, Stage.PREVIOUS), current.credential
            ),
        )
        return None
    if newest.trigger != "adopt" and (pending is not None or promoted):
        return newest.id
    engine.history.finish_run(newest.id, "failed", error="interrupted; nothing left to finish")
    return None
