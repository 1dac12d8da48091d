"""Celery tasks: `rotator.rotate(name, trigger="manual", slot=None)`.

Arguments are names only; the result is a small dict of names, ids, timings and
an error text, never a secret value.

Run ids: the Celery task id is the run id. A caller that wants to wait on a run
chooses the task id (`apply_async(task_id=...)`, or any id `celery call` makes) and
finds the run under it in the history; a retry or a redelivered message keeps
the task id, so the engine resumes that same run (it reuses the PENDING version
stored under the run id). When the engine settles an older interrupted run
instead, the result's `run_id` names that one and `resumed` is true.

A run id is 32 to 64 letters, digits or `-_.:` (RUN_ID): it is stored in
String(64) columns and becomes the AWS ClientRequestToken (32 to 64 characters) of
the new version, so an id that one store would refuse is refused on every store.
Celery's own ids (uuid4, 36 characters) and beat's (uuid5) fit.

Outcomes: the engine's (succeeded, rolled_back, failed), plus `skipped` (another
run holds the secret: recorded in history, nothing rotated), `duplicate` (the
schedule slot was already claimed by another run) and `error` (an unknown secret,
bad arguments or run id, or an unusable schedules file: not retried). Transient
failures (history database or target unreachable) retry with exponential backoff,
at most ROTATOR_TASK_MAX_RETRIES times; waiting for this run's own earlier attempt
to let go of the lease is not counted. Any other exception becomes a `failed`
outcome naming its type, with a scrubbed one-line text: Celery never serialises
or logs the exception itself (its text can carry SQL and parameters). A task that
ends `failed` before its run was recorded gives its slot claim back, so the slot
can be sent again.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import OperationalError

from rotator import worker_runtime
from rotator.celery import app
from rotator.engine import scrubbed_text
from rotator.errors import ConfigError, RotationInProgress, TransientError
from rotator.logging import configure_logging, scrub
from rotator.results import RunResult
from rotator.runtime import Runtime
from rotator.stores import Stage

log = structlog.get_logger("rotator.tasks")

MAX_TRIGGER = 32
MAX_SLOT = 64
#: Run ids (= task ids): what String(64) columns and AWS ClientRequestToken both accept.
RUN_ID = re.compile(r"[A-Za-z0-9_.:-]{32,64}")
#: The message header counting retries spent waiting for this run's own lease.
LEASE_WAITS = "rotator_lease_waits"
#: The longest error text an unexpected exception contributes to a result.
MAX_ERROR = 300


class _Retry(Exception):
    """Internal: this attempt should be retried (the text says why, with no secret)."""

    def __init__(self, reason: str, countdown: float | None = None, lease: bool = False) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.lease = lease  # waiting for this run's own lease: not a failure, not counted


def _configure_worker_logging(**_: object) -> None:
    settings = worker_runtime.settings()
    configure_logging(settings.log_format, settings.log_level)


worker_init.connect(_configure_worker_logging, weak=False)


def _outcome(
    run_id: str, name: str, outcome: str, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    return RunResult(run_id, name, outcome, error=error, **extra).as_dict()


def _check_arguments(run_id: str, name: object, trigger: object, slot: object) -> str | None:
    if not RUN_ID.fullmatch(run_id):
        return (
            f"task id {run_id[:80]!r} cannot be a run id: use 32 to 64 letters, digits or "
            "'-_.:' (or let Celery choose the id)"
        )
    if not isinstance(name, str) or not name:
        return "the secret name must be a non-empty string"
    if not isinstance(trigger, str) or not 0 < len(trigger) <= MAX_TRIGGER:
        return f"trigger must be a string of 1 to {MAX_TRIGGER} characters"
    if slot is not None and (not isinstance(slot, str) or not 0 < len(slot) <= MAX_SLOT):
        return f"slot must be null or a string of 1 to {MAX_SLOT} characters"
    return None


def claim_slot(runtime: Runtime, run_id: str, name: str, slot: str | None) -> RunResult | None:
    """Take `slot` for this run; the `duplicate` outcome if another run took it first.

    Shared with `rotator rotate --overdue --inline`, so a slot is rotated once whoever
    sends it (invariant 3).
    """
    if slot is None or runtime.history.claim_slot(name, slot, run_id):
        return None
    return RunResult(run_id, name, "duplicate", error=f"slot {slot} of {name!r} was already taken")


def release_claim(
    runtime: Callable[[], Runtime], run_id: str, name: str, slot: str | None, bound: Any
) -> None:
    """A slot claimed by a run that never started is given back, so beat can send it again."""
    if slot is None:
        return
    try:
        released = runtime().history.release_slot(name, slot, run_id)
    except Exception as exc:  # the database may be the very thing that is down
        bound.warning("rotate.claim_kept", error=type(exc).__name__)
        return
    if released:
        bound.info("rotate.claim_released")


def _rotate_once(
    runtime: Runtime, run_id: str, name: str, trigger: str, slot: str | None
) -> dict[str, Any]:
    """One attempt: claim the slot, run under the lease, or record why nothing ran."""
    bound = log.bind(secret=name, run_id=run_id, trigger=trigger, slot=slot)
    runtime.plan.secret(name)  # UnknownSecret before anything is written
    taken = claim_slot(runtime, run_id, name, slot)
    if taken is not None:
        bound.info("rotate.skipped", reason="duplicate slot")
        return taken.as_dict()
    bound.info("rotate.started")
    try:
        result = runtime.engine.run(name, trigger, run_id, slot)
    except RotationInProgress as exc:
        holder = runtime.leases.holder(name)
        if holder is not None and holder.run_id == run_id:
            # An earlier delivery of this very run (a killed worker) still holds the lease:
            # wait for it to expire, then resume the run, instead of dropping the trigger.
            raise _Retry(
                "this run's earlier attempt still holds the lease",
                countdown=runtime.settings.lease_ttl_seconds / 2,
                lease=True,
            ) from None
        runtime.history.record_skipped(run_id, name, trigger, slot, "in progress")
        bound.info("rotate.skipped", reason="in progress")
        return _outcome(run_id, name, "skipped", f"in progress: {exc}")
    if result.outcome == "failed" and (result.error or "").startswith("TransientError"):
        raise _Retry(result.error or "transient failure")
    return result.as_dict()


def _rotate_task(
    self: Task[Any, Any], name: str, trigger: str = "manual", slot: str | None = None
) -> dict[str, Any]:
    """Rotate one secret through the engine; see the module docstring for the outcomes."""
    run_id = str(self.request.id or uuid.uuid4().hex)
    bound = log.bind(secret=name, run_id=run_id, trigger=trigger, slot=slot)
    bound.info("rotate.received", attempt=self.request.retries + 1)
    started = time.monotonic()
    problem = _check_arguments(run_id, name, trigger, slot)
    if problem is not None:
        bound.error("rotate.finished", outcome="error", error=problem)
        return _outcome(run_id[:64], str(name), "error", problem)
    result = _attempt(self, run_id, name, trigger, slot, bound)
    result.setdefault("timings_ms", {})["task"] = int((time.monotonic() - started) * 1000)
    if result["outcome"] not in ("skipped", "duplicate"):  # those logged rotate.skipped
        level = "info" if result["outcome"] == "succeeded" else "error"
        getattr(bound, level)("rotate.finished", outcome=result["outcome"], error=result["error"])
    return result


rotate: Task[Any, Any] = app.task(name="rotator.rotate", bind=True, max_retries=None)(_rotate_task)


def _attempt(
    task: Task[Any, Any], run_id: str, name: str, trigger: str, slot: str | None, bound: Any
) -> dict[str, Any]:
    """One delivery: the outcome, a retry (raised), or a scrubbed `failed` for anything else."""
    try:
        runtime = worker_runtime.get_runtime()
        return _rotate_once(runtime, run_id, name, trigger, slot)
    except ConfigError as exc:  # UnknownSecret included: the user's to fix, never retried
        return _outcome(run_id, name, "error", scrub(str(exc)))
    except (TransientError, OperationalError, _Retry) as exc:
        result = _retry_or_give_up(task, exc, run_id, name, bound)
    except SoftTimeLimitExceeded:
        # Not a RotatorError: the engine recorded nothing, the run stays `running` (resumable).
        limit = worker_runtime.settings().task_soft_time_limit_seconds
        result = _outcome(
            run_id,
            name,
            "failed",
            f"stopped after ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS ({limit:g} s); "
            "the next run resumes it",
        )
    except Exception as exc:  # never let Celery serialise or log an unscrubbed exception
        result = _unexpected(exc, run_id, name, bound)
    release_claim(worker_runtime.get_runtime, run_id, name, slot, bound)
    return result


def _unexpected(exc: Exception, run_id: str, name: str, bound: Any) -> dict[str, Any]:
    """A `failed` outcome naming the exception's type, with the first line of its text only.

    SQLAlchemy puts the statement and its parameters on the following lines. An exception
    that left a run carries its text scrubbed by the engine while the run's values (a new
    one not yet stored included) were known; the stored values are cut out again here, and
    when they cannot be read, the text is withheld.
    """
    values = _stored_values(name)
    if values is None:
        text = "(text withheld: the secret's values could not be read to cut them out)"
    else:
        # Scrubbed whole before it is cut to one line: a value may span lines.
        whole = scrub(scrubbed_text(exc) or str(exc), values)
        lines = whole.strip().splitlines()
        text = (lines[0] if lines else "").removeprefix(f"{type(exc).__name__}: ")[:MAX_ERROR]
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    bound.error("rotate.unexpected_error", error=error, where=_where(exc.__traceback__))
    return _outcome(run_id, name, "failed", error)


def _stored_values(name: str) -> list[str] | None:
    """Every value a run of `name` handles: its stages, and its admin secret's CURRENT."""
    try:
        runtime = worker_runtime.get_runtime()
        spec = runtime.plan.secret(name)
        store = runtime.engine.store_for(spec)
        values = [
            value
            for stage in Stage
            if (version := store.read(spec.path, stage)) is not None
            for value in version.credential.secret_values()
        ]
        if spec.admin_secret is not None:
            values += runtime.engine.read_current(spec.admin_secret).secret_values()
    except Exception:  # the store or the database may be what failed
        return None
    return values


def _where(trace: TracebackType | None) -> str:
    """`file:line` of the innermost frame: enough to find the bug, no values."""
    if trace is None:
        return "unknown"
    while trace.tb_next is not None:
        trace = trace.tb_next
    return f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}"


def _lease_waits(task: Task[Any, Any]) -> int:
    """Retries this message spent waiting for its own run's lease (a header it carries)."""
    request = task.request
    value = getattr(request, LEASE_WAITS, None)
    if value is None:
        value = (request.headers or {}).get(LEASE_WAITS)
    return value if isinstance(value, int) and value >= 0 else 0


def _retry_or_give_up(
    task: Task[Any, Any], exc: Exception, run_id: str, name: str, bound: Any
) -> dict[str, Any]:
    """Retry a transient failure with backoff (the engine resumes the run), or give up.

    Waiting for this run's own earlier attempt to release the lease always retries: the lease
    expires within ROTATOR_LEASE_TTL_SECONDS, and the run it guards is this message's to finish.
    """
    settings = worker_runtime.settings()
    if isinstance(exc, OperationalError):
        reason = "the history database is unreachable"
    else:
        reason = scrub(str(exc))
    lease_waits = _lease_waits(task)
    waiting = isinstance(exc, _Retry) and exc.lease
    if not waiting and task.request.retries - lease_waits >= settings.task_max_retries:
        bound.error("rotate.gave_up", error=reason)
        return _outcome(run_id, name, "failed", f"gave up after retries: {reason}")
    countdown = _backoff(task.request.retries, settings.task_retry_backoff_max_seconds)
    if isinstance(exc, _Retry) and exc.countdown is not None:
        countdown = max(countdown, exc.countdown)
    bound.warning("rotate.retrying", countdown=countdown, error=reason, lease_waits=lease_waits)
    headers = {LEASE_WAITS: lease_waits + int(waiting)}
    raise task.retry(countdown=countdown, max_retries=None, headers=headers) from None


def _backoff(retries: int, maximum: float) -> float:
    """Exponential backoff with full jitter: 2, 4, 8 ... seconds, at most `maximum`."""
    return float(
        get_exponential_backoff_interval(
            factor=2, retries=retries, maximum=int(maximum), full_jitter=True
        )
        or 1
    )
