"""One Runtime per worker process, built on first use and rebuilt when schedules.yaml changes.

A prefork worker forks its children from a parent that must hold no database
connection (a pooled connection shared across fork corrupts both sides), so the
runtime is built lazily in the process that runs tasks, and a forked child drops
whatever it inherited. It is built once per process: every task reuses its pooled
history connections. Before each task the schedules file's stat signature is
compared with the one the runtime was built from; an edited file gives a new
runtime, and one that no longer loads keeps the last good one (logged).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import structlog
from celery.signals import worker_process_init, worker_process_shutdown

from rotator.config import Settings, load_settings
from rotator.errors import ConfigError
from rotator.runtime import Runtime, build_runtime

log = structlog.get_logger("rotator.worker")

#: (mtime_ns, size, inode) of the schedules file; None when it cannot be read.
Signature = tuple[int, int, int] | None


@dataclass
class _Cached:
    pid: int
    signature: Signature
    runtime: Runtime


_lock = threading.Lock()
_cached: _Cached | None = None
_settings: Settings | None = None


def schedules_signature(settings: Settings) -> Signature:
    try:
        st = os.stat(settings.schedules)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def settings() -> Settings:
    """The process's settings, read from the environment once."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def get_runtime() -> Runtime:
    """This process's runtime; ConfigError if none was ever built and the plan does not load."""
    global _cached
    with _lock:
        current = settings()
        signature = schedules_signature(current)
        cached = _cached
        if cached is not None and cached.pid == os.getpid() and cached.signature == signature:
            return cached.runtime
        try:
            runtime = build_runtime(current)
        except ConfigError as exc:
            if cached is None or cached.pid != os.getpid():
                raise
            log.error("worker.schedules_invalid", path=str(current.schedules), error=str(exc))
            cached.signature = signature  # do not retry the broken file on every task
            return cached.runtime
        if cached is not None and cached.pid == os.getpid():
            cached.runtime.close()
            log.info("worker.schedules_reloaded", path=str(current.schedules))
        _cached = _Cached(os.getpid(), signature, runtime)
        return runtime


def _forget_inherited(**_: object) -> None:
    """A forked child never uses its parent's runtime or its pooled connections."""
    global _cached
    cached = _cached
    _cached = None
    if cached is not None:
        cached.runtime.database.engine.dispose(close=False)


def _close(**_: object) -> None:
    global _cached
    cached, _cached = _cached, None
    if cached is not None and cached.pid == os.getpid():
        cached.runtime.close()


worker_process_init.connect(_forget_inherited, weak=False)
worker_process_shutdown.connect(_close, weak=False)
