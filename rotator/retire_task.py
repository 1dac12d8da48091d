"""Celery task `rotator.retire(name)`: retire the versions of a secret whose grace has passed.

Beat sends it when a retirement recorded in history falls due (rotator.retirement); its
task id is derived from (secret, due time), so a resend is the same task. The task never
raises: a retirement that fails stays scheduled with a later due time, and a secret held
by a rotation is left for beat's next resend. Arguments and results carry names and ids,
never values.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from sqlalchemy.exc import OperationalError

from rotator import worker_runtime
from rotator.celery import app
from rotator.errors import ConfigError, RotationInProgress, RotatorError
from rotator.logging import scrub
from rotator.retirement import retire_due

log = structlog.get_logger("rotator.tasks")


def _retire_task(self: Task[Any, Any], name: str) -> dict[str, Any]:
    """Retire what is due for secret `name`; the outcome of each retirement."""
    bound = log.bind(secret=name, task_id=self.request.id)
    if not isinstance(name, str) or not name:
        return {"secret": str(name)[:200], "outcome": "error", "error": "expected a secret name"}
    try:
        done = retire_due(worker_runtime.get_runtime().engine, name)
    except ConfigError as exc:  # an unknown secret: the user's to fix
        return {"secret": name, "outcome": "error", "error": scrub(str(exc))}
    except RotationInProgress:
        bound.info("retire.skipped", reason="in progress")
        return {"secret": name, "outcome": "skipped", "error": "a rotation holds the secret"}
    except (RotatorError, OperationalError) as exc:
        error = scrub(f"{type(exc).__name__}: {exc}").splitlines()[0][:300]
        bound.error("retire.failed", error=error)
        return {"secret": name, "outcome": "failed", "error": error}
    except Exception as exc:  # never let Celery serialise or log an unscrubbed exception
        bound.error("retire.unexpected_error", error=type(exc).__name__)
        return {"secret": name, "outcome": "failed", "error": type(exc).__name__}
    outcomes = [outcome.as_dict() for outcome in done]
    bound.info("retire.finished", retirements=len(outcomes))
    return {"secret": name, "outcome": "done", "error": None, "retirements": outcomes}


retire: Task[Any, Any] = app.task(name="rotator.retire", bind=True, max_retries=0)(_retire_task)
