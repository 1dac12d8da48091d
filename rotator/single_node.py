"""`rotator run`: one Celery worker with beat embedded, for small setups.

The worker is Celery's own (`app.Worker(beat=True)`, what `celery -A rotator worker
-B` builds), so its signal handling is Celery's: SIGTERM and a first SIGINT (Ctrl-C)
are a warm shutdown (no new task is taken; a rotation under way finishes; the beat
child stops), a second SIGINT or SIGQUIT a cold one (running rotations stop and are
resumed by the next run, their PENDING kept in the store). Celery exits 1 after a
warm shutdown asked for with SIGINT; here a warm shutdown is exit 0, and a cold one
(even after a warm one began) is exit 1: rotations under way were cut off.

On the embedded default this needs no server: the filesystem broker and file results
under ROTATOR_VAR_DIR, the history in SQLite. The caller must not have opened the
history database: the pool and beat processes are forked from this one.
"""

from __future__ import annotations

import socket
from typing import Any

from celery.signals import worker_shutting_down

from rotator.config import Settings

#: Celery's beat_max_loop_interval: how long beat may sleep; refresh within 5x this.
DEFAULT_MAX_INTERVAL = 5.0


class _Stops:
    """How the worker was asked to stop (Celery's worker_shutting_down signal)."""

    how: str | None = None

    @classmethod
    def record(cls, sig: str = "", how: str = "", **_: Any) -> None:
        # A later Cold (Ctrl-C twice) wins over the first Warm: running rotations were cut.
        cls.how = how if how == "Cold" else (cls.how or how)


def run_worker_and_beat(
    settings: Settings,
    concurrency: int = 2,
    loglevel: str = "INFO",
    max_interval: float = DEFAULT_MAX_INTERVAL,
    hostname: str | None = None,
) -> int:
    """Run until a shutdown signal; the exit code (0 after a warm shutdown, 1 after a cold one)."""
    from rotator.celery import app, celery_config

    celery_config(settings)  # a mistyped broker or backend URL: one ConfigError, not a traceback
    app.conf.beat_max_loop_interval = max_interval
    worker_shutting_down.connect(_Stops.record, weak=False)
    worker = app.Worker(
        hostname=hostname or f"rotator@{socket.gethostname()}",
        beat=True,
        concurrency=concurrency,
        loglevel=loglevel,
        # One node: nothing to synchronise with at start-up or to gossip about.
        without_mingle=True,
        without_gossip=True,
        # The schedule is history and schedules.yaml; keep beat's shelve out of the cwd.
        schedule_filename=str((settings.var_dir / "beat-schedule").resolve()),
    )
    worker.start()
    if _Stops.how == "Warm":
        return 0
    if _Stops.how == "Cold":
        return 1
    return int(worker.exitcode or 0)
