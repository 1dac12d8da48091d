"""The Celery app: `celery -A rotator worker|beat|call|inspect` finds it here.

Celery's find_app looks for `rotator.app`, then `rotator.celery`, then imports the
submodule `rotator.celery` and takes its `app`; `rotator/__init__.py` stays free of
Celery so the `rotator` CLI starts fast. The configuration is built from Settings
when the app first reads it, not at import.

With no ROTATOR_BROKER_URL the broker is kombu's filesystem transport under
`<var_dir>/broker/` and results are files under `<var_dir>/results/`: one host, no
server, and still `worker -B`, `call` and `inspect` work (the control folder carries
the broadcast exchange table). Files were chosen over `db+sqlite` for results because
they need no second SQLite writer next to the history database. Use Redis for both in
production: the filesystem broker cannot give a message back when a worker is killed
with -9 (see docs/operations.md).
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

from celery import Celery
from celery.app.backends import by_url
from celery.exceptions import ImproperlyConfigured
from celery.signals import beat_init, worker_init
from kombu.transport import resolve_transport
from kombu.utils.url import maybe_sanitize_url, parse_url

from rotator.config import Settings, load_settings
from rotator.errors import ConfigError

app = Celery("rotator", include=["rotator.tasks", "rotator.retire_task"])


def filesystem_broker_options(var_dir: Path) -> dict[str, Any]:
    """Folders of kombu's filesystem transport; one queue folder serves senders and workers."""
    root = (var_dir / "broker").resolve()
    queue, control, processed = root / "queue", root / "control", root / "processed"
    for folder in (queue, control, processed):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "processed_folder": str(processed),
        "store_processed": False,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long, non-idempotent rotations (each choice says why)."""
    broker = settings.broker_url or "filesystem://"
    try:
        if broker.startswith("filesystem"):
            transport_options = filesystem_broker_options(settings.var_dir)
        else:
            # Redis hands an unacknowledged message to another worker after this long: it
            # must outlast the hard limit plus the longest retry countdown (a retry waits
            # in the worker, unacknowledged), or a rotation still running is redelivered.
            transport_options = {"visibility_timeout": settings.broker_visibility_timeout_seconds}
        backend = settings.result_backend
        if not backend:
            results = (settings.var_dir / "results").resolve()
            results.mkdir(parents=True, exist_ok=True)
            backend = f"file://{results}"
    except OSError as exc:
        raise ConfigError(
            f"ROTATOR_VAR_DIR: cannot create the broker or result folders under "
            f"{settings.var_dir}: {exc.strerror} (point ROTATOR_VAR_DIR at a writable "
            "directory, or set ROTATOR_BROKER_URL and ROTATOR_RESULT_BACKEND)"
        ) from None
    _check_broker_url(broker)
    _check_backend_url(backend)
    return {
        "broker_url": broker,
        "result_backend": backend,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # Task arguments are names and results are small dicts: JSON only, never pickle.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the task ran, not when it arrived: a worker that dies mid-rotation
        # leaves the message to be redelivered, and the engine resumes the same run.
        "task_acks_late": True,
        # ...including when the worker process itself died (OOM kill, -9): requeue, not fail.
        "task_reject_on_worker_lost": True,
        # Reserve one message per process: a long rotation must not hold others hostage.
        "worker_prefetch_multiplier": 1,
        # A lost broker connection redelivers the unacknowledged messages anyway; stop the
        # rotations they belong to rather than run them twice (the engine resumes them).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The soft limit raises SoftTimeLimitExceeded inside the task: the task result says
        # failed, but the engine records nothing, so the history run stays `running` with its
        # PENDING, to be resumed. The hard limit kills a process that ignored it.
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        # A hard-limit kill acknowledges the message (unlike -9, which requeues it): a rotation
        # that always hangs must not be redelivered forever. Its run stays `running` and is
        # finished by beat's resume slot or the next trigger. (Celery's default; set so no
        # upgrade or edit flips it unnoticed.)
        "task_acks_on_timeout": True,
        # `started` tells a waiting CLI that a worker has the run, not just the queue.
        "task_track_started": True,
        "result_expires": settings.result_expires_seconds,
        # Our structlog lines go to stderr as they are: Celery's redirection would wrap each
        # one in its own log format ("[... WARNING/Beat] {...}"), and JSON would not parse.
        "worker_redirect_stdouts": False,
        "beat_scheduler": "rotator.beat:YamlScheduler",
        "timezone": "UTC",
        "enable_utc": True,
    }


_PASSWORD = re.compile(r"(//[^/@:]*:)[^@/]*@")


def _masked(url: str) -> str:
    """The URL with any password hidden, even when kombu cannot parse it."""
    try:
        return str(maybe_sanitize_url(url))
    except ValueError:
        return _PASSWORD.sub(r"\1**@", url)


def _url_error(variable: str, url: str, reason: str, example: str) -> ConfigError:
    return ConfigError(
        f"{variable}={_masked(url)}: {reason} (expected e.g. {example}, or unset it for the "
        "filesystem default)"
    )


def _check_broker_url(url: str) -> None:
    """Refuse a broker URL kombu cannot use now, rather than a traceback when it connects."""
    example = "redis://:password@host:6379/0"
    for part in url.split(";"):  # kombu's failover list
        try:
            transport = parse_url(part)["transport"]
            resolve_transport(transport.split("+", 1)[0] if "+" in transport else transport)
        except KeyError:
            raise _url_error("ROTATOR_BROKER_URL", url, "no such transport", example) from None
        except (ValueError, ImportError) as exc:
            raise _url_error("ROTATOR_BROKER_URL", url, str(exc), example) from None


def _check_backend_url(url: str) -> None:
    """Refuse a result backend Celery cannot load, or whose port is not a number."""
    example = "redis://:password@host:6379/1"
    try:
        parse_url(url)
        by_url(url)
    except (ImportError, ImproperlyConfigured):
        raise _url_error("ROTATOR_RESULT_BACKEND", url, "no such backend", example) from None
    except ValueError as exc:
        raise _url_error("ROTATOR_RESULT_BACKEND", url, str(exc), example) from None


def whole_lines(**_: object) -> None:
    """Each log line leaves in one write, so the pool processes and beat, which share the
    stream, cannot interleave two JSON lines (print() writes the text and the newline apart,
    and Python's stderr passes every write straight through)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(write_through=False, line_buffering=True)


worker_init.connect(whole_lines, weak=False)
beat_init.connect(whole_lines, weak=False)


def _configure() -> dict[str, Any]:
    return celery_config(load_settings())


# Built lazily: importing this module (the CLI does) reads no settings and touches no disk.
app.add_defaults(_configure)
