"""Celery tasks: `rotator.rotate(name, trigger="manual", slot=None)`.

Arguments are names only; the result is a small dict of names, ids, timings and
an error text, never a secret value.

Run ids: the Celery task id is the run id. A caller that wants to wait on a run
chooses the task id (`apply_async(task_id=...)`, or any id `celery call` makes) and
finds the run under it in the history; a retry or a redelivered message keeps
the task id, so the engine resumes that same run (it reuses the PENDING version
stored under the run id). When the engine settles an older interrupted run
instead, the result's `run_id` names that one and `resumed` is true.

Outcomes: the engine's (succeeded, rolled_back, failed), plus `skipped` (another
run holds the secret: recorded in history, nothing rotated), `duplicate` (the
schedule slot was already claimed by another run) and `error` (an unknown secret,
bad arguments or an unusable schedules file: not retried). Transient failures
(history database or target unreachable) retry with exponential backoff, at most
ROTATOR_TASK_MAX_RETRIES times.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import OperationalError

from rotator import worker_runtime
from rotator.celery import app
from rotator.errors import ConfigError, RotationInProgress, TransientError
from rotator.logging import configure_logging, scrub
from rotator.results import RunResult
from rotator.runtime import Runtime

log = structlog.get_logger("rotator.tasks")

MAX_TRIGGER = 32
MAX_SLOT = 64


class _Retry(Exception):
    """Internal: this attempt should be retried (the text says why, with no secret)."""

    def __init__(self, reason: str, countdown: float | None = None) -> None:
        super().__init__(reason)
        self.countdown = countdown


def _configure_worker_logging(**_: object) -> None:
    settings = worker_runtime.settings()
    configure_logging(settings.log_format, settings.log_level)


worker_init.connect(_configure_worker_logging, weak=False)


def _outcome(
    run_id: str, name: str, outcome: str, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    return RunResult(run_id, name, outcome, error=error, **extra).as_dict()


def _check_arguments(name: object, trigger: object, slot: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "the secret name must be a non-empty string"
    if not isinstance(trigger, str) or not 0 < len(trigger) <= MAX_TRIGGER:
        return f"trigger must be a string of 1 to {MAX_TRIGGER} characters"
    if slot is not None and (not isinstance(slot, str) or not 0 < len(slot) <= MAX_SLOT):
        return f"slot must be null or a string of 1 to {MAX_SLOT} characters"
    return None


def _rotate_once(
    runtime: Runtime, run_id: str, name: str, trigger: str, slot: str | None
) -> dict[str, Any]:
    """One attempt: claim the slot, run under the lease, or record why nothing ran."""
    bound = log.bind(secret=name, run_id=run_id, trigger=trigger, slot=slot)
    runtime.plan.secret(name)  # UnknownSecret before anything is written
    if slot is not None and not runtime.history.claim_slot(name, slot, run_id):
        bound.info("rotate.skipped", reason="duplicate slot")
        return _outcome(run_id, name, "duplicate", f"slot {slot} of {name!r} was already taken")
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
    settings = worker_runtime.settings()
    bound = log.bind(secret=name, run_id=run_id, trigger=trigger, slot=slot)
    bound.info("rotate.received", attempt=self.request.retries + 1)
    started = time.monotonic()
    problem = _check_arguments(name, trigger, slot)
    if problem is not None:
        bound.error("rotate.finished", outcome="error", error=problem)
        return _outcome(run_id, str(name), "error", problem)
    try:
        runtime = worker_runtime.get_runtime()
        result = _rotate_once(runtime, run_id, name, trigger, slot)
    except ConfigError as exc:  # UnknownSecret included: the user's to fix, never retried
        result = _outcome(run_id, name, "error", scrub(str(exc)))
    except (TransientError, OperationalError, _Retry) as exc:
        result = _retry_or_give_up(self, exc, run_id, name, bound)
    except SoftTimeLimitExceeded:
        result = _outcome(
            run_id,
            name,
            "failed",
            f"stopped after ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS "
            f"({settings.task_soft_time_limit_seconds:g} s); the next run resumes it",
        )
    result.setdefault("timings_ms", {})["task"] = int((time.monotonic() - started) * 1000)
    if result["outcome"] not in ("skipped", "duplicate"):  # those logged rotate.skipped
        level = "info" if result["outcome"] == "succeeded" else "error"
        getattr(bound, level)("rotate.finished", outcome=result["outcome"], error=result["error"])
    return result


rotate: Task[Any, Any] = app.task(name="rotator.rotate", bind=True, max_retries=None)(_rotate_task)


def _retry_or_give_up(
    task: Task[Any, Any], exc: Exception, run_id: str, name: str, bound: Any
) -> dict[str, Any]:
    """Retry a transient failure with backoff (the engine resumes the run), or give up."""
    settings = worker_runtime.settings()
    if isinstance(exc, OperationalError):
        reason = "the history database is unreachable"
    else:
        reason = scrub(str(exc))
    if task.request.retries >= settings.task_max_retries:
        bound.error("rotate.gave_up", error=reason)
        return _outcome(run_id, name, "failed", f"gave up after retries: {reason}")
    countdown = _backoff(task.request.retries, settings.task_retry_backoff_max_seconds)
    if isinstance(exc, _Retry) and exc.countdown is not None:
        countdown = max(countdown, exc.countdown)
    bound.warning("rotate.retrying", countdown=countdown, error=reason)
    raise task.retry(countdown=countdown, max_retries=None) from None


def _backoff(retries: int, maximum: float) -> float:
    """Exponential backoff with full jitter: 2, 4, 8 ... seconds, at most `maximum`."""
    return float(
        get_exponential_backoff_interval(
            factor=2, retries=retries, maximum=int(maximum), full_jitter=True
        )
        or 1
    )
