"""`rotator rotate` through Celery: choose secrets, queue `rotator.rotate`, follow the runs.

Messages carry names only. The CLI chooses each task id, and the task id is the run
id (rotator/tasks.py), so the run can be followed in the history database (its steps
as the worker records them) and through the result backend (queued, started, the
outcome). `--overdue` takes the slots beat would send now (rotator/slots.py through
`cli_render.beat_view`) and sends them with their slot, so a slot beat sends as well
is claimed once and rotated once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url

from rotator.celery import celery_config
from rotator.cli_render import beat_view
from rotator.config import Settings
from rotator.errors import ConfigError, TransientError
from rotator.history import utcnow
from rotator.results import RunResult
from rotator.runtime import Runtime

TASK = "rotator.rotate"
#: After this long with every run still queued, say that no worker seems to be there.
NO_WORKER_HINT_SECONDS = 5.0
POLL_SECONDS = 0.25
_STATE_WORDS = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "STARTED": "started",
    "RETRY": "retrying",
}
#: A publish retries this briefly: an unreachable broker is reported in seconds.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}

Progress = Callable[[str], None]


@dataclass
class Queued:
    """One run sent to the broker: the secret, its run id (= task id) and slot, if any."""

    secret: str
    run_id: str
    slot: str | None = None
    state: str = "queued"
    steps_seen: int = 0
    result: dict[str, Any] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "run_id": self.run_id, "slot": self.slot, "status": "queued"}


def choose(
    runtime: Runtime, names: Sequence[str], every: bool, overdue: bool
) -> list[tuple[str, str | None]]:
    """(secret, slot) pairs to send; unknown names fail before anything is queued."""
    if (bool(names) + every + overdue) != 1:
        raise ConfigError("name the secrets to rotate, or give --all or --overdue (one of them)")
    if names:
        for name in names:
            runtime.plan.secret(name)
        return [(name, None) for name in dict.fromkeys(names)]
    if every:
        return [(name, None) for name in runtime.plan.secrets]
    now = utcnow()
    slots, busy = beat_view(runtime, now)
    return [
        (name, slot.slot)
        for name, slot in slots.items()
        if slot.start_at <= now and name not in busy
    ]


@contextmanager
def client(settings: Settings) -> Iterator[Celery]:
    """A Celery app configured like the workers of these settings, for sending and results."""
    app = Celery("rotator-cli", set_as_current=False)
    app.conf.update(celery_config(settings))
    try:
        yield app
    finally:
        app.close()


def send(app: Celery, targets: Sequence[tuple[str, str | None]]) -> list[Queued]:
    """Queue one `rotator.rotate(name, trigger="manual", slot)` per target, names only."""
    _check_broker(app)
    queued: list[Queued] = []
    for name, slot in targets:
        run_id = str(uuid.uuid4())
        try:
            app.send_task(
                TASK,
                args=(name,),
                kwargs={"trigger": "manual", "slot": slot},
                task_id=run_id,
                retry=True,
                retry_policy=_RETRY_POLICY,
            )
        except (KombuOperationalError, OSError) as exc:
            raise _unreachable("broker", app.conf.broker_url, exc, queued) from None
        except RuntimeError as exc:  # Celery's Redis result consumer gave up reconnecting
            raise _unreachable("result backend", app.conf.result_backend, exc, queued) from None
        queued.append(Queued(name, run_id, slot))
    return queued


def _check_broker(app: Celery) -> None:
    """One short connection attempt first: an unreachable broker is one line in seconds."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=5)
    except (KombuOperationalError, OSError) as exc:
        raise _unreachable("broker", app.conf.broker_url, exc, []) from None


def _unreachable(
    what: str, url: object, exc: BaseException, queued: list[Queued]
) -> TransientError:
    where = maybe_sanitize_url(str(url))
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    done = f"; {len(queued)} run(s) were queued before it failed" if queued else ""
    variable = "ROTATOR_BROKER_URL" if what == "broker" else "ROTATOR_RESULT_BACKEND"
    return TransientError(
        f"{what} {where} unreachable ({reason or type(exc).__name__}){done}: start it, or "
        f"point {variable} at a running server (or use --inline to rotate in this process)"
    )


def wait(
    app: Celery, runtime: Runtime, queued: list[Queued], timeout: float, progress: Progress
) -> list[RunResult]:
    """Follow every run to its outcome, reporting states and steps; `timeout` ends the wait."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    hinted = False
    open_runs = list(queued)
    while open_runs:
        for run in list(open_runs):
            if _poll(app, runtime, run, progress):
                open_runs.remove(run)
        if not open_runs:
            break
        waited = time.monotonic() - started
        if (
            not hinted
            and waited > NO_WORKER_HINT_SECONDS
            and all(r.state == "queued" for r in open_runs)
        ):
            hinted = True
            progress(
                "no worker has picked the run up yet: start one with `rotator run` "
                "(worker and beat) or `celery -A rotator worker`"
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return [_result(run, timeout) for run in queued]


def _poll(app: Celery, runtime: Runtime, run: Queued, progress: Progress) -> bool:
    """Report what changed for one run; True once it has an outcome."""
    label = f"{run.secret} {run.run_id[:8]}"
    for event in runtime.history.steps(run.run_id)[run.steps_seen :]:
        run.steps_seen += 1
        progress(f"{label}: {event.step} {event.status}")
    try:
        state, ready, value = _backend_state(app, run)
    except Exception as exc:  # any backend's error type: the runs go on regardless
        return _poll_history(app, runtime, run, progress, exc)
    if ready:
        if state == "SUCCESS" and isinstance(value, dict):
            run.result = value
        else:  # only the exception's type: its text is not ours to vet
            run.result = RunResult(
                run.run_id, run.secret, "error", error=type(value).__name__
            ).as_dict()
        progress(f"{label}: {run.result.get('outcome')}")
        return True
    word = _STATE_WORDS.get(state, state.lower())
    if word != run.state:
        run.state = word
        progress(f"{label}: {word}")
    return False


def _backend_state(app: Celery, run: Queued) -> tuple[str, bool, Any]:
    handle = app.AsyncResult(run.run_id)
    state = str(handle.state)
    ready = bool(handle.ready())
    return state, ready, handle.result if ready else None


def _poll_history(
    app: Celery, runtime: Runtime, run: Queued, progress: Progress, exc: Exception
) -> bool:
    """The result backend failed: follow the run in the history database instead."""
    label = f"{run.secret} {run.run_id[:8]}"
    if run.state != "unknown":
        run.state = "unknown"
        where = maybe_sanitize_url(str(app.conf.result_backend))
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        progress(
            f"{label}: result backend {where} unreachable ({reason or type(exc).__name__}); "
            "following the run in the history database (the runs go on; see `rotator history`)"
        )
    recorded = runtime.history.get_run(run.run_id)
    if recorded is None or recorded.status in ("running", "adopted"):
        return False
    run.result = RunResult(
        recorded.id, recorded.secret, recorded.status, recorded.version_id, recorded.error
    ).as_dict()
    progress(f"{label}: {recorded.status}")
    return True


def _result(run: Queued, timeout: float) -> RunResult:
    if run.result is None:
        return RunResult(
            run.run_id,
            run.secret,
            run.state,
            error=f"no outcome within {timeout:g} s; it may still finish "
            f"(see `rotator history {run.secret}`)",
        )
    data = run.result
    return RunResult(
        str(data.get("run_id") or run.run_id),
        str(data.get("secret") or run.secret),
        str(data.get("outcome")),
        version_id=data.get("version_id"),
        error=data.get("error"),
        resumed=bool(data.get("resumed")),
        timings_ms=dict(data.get("timings_ms") or {}),
    )
