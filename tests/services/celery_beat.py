"""A real `celery -A rotator beat` process for end-to-end tests.

`CeleryBeat` starts beat in a process group of its own with the ROTATOR_* settings a
test gives, a short `--max-interval` so schedules of a few seconds are met, and its
output in a log file the test can read; it stops with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.services.celery_procs import CeleryProcess


class CeleryBeat(CeleryProcess):
    """One `celery -A rotator beat` process group."""

    ready_text = "beat.schedule_loaded"
    what = "celery beat"

    def __init__(self, env: Mapping[str, str], cwd: Path, max_interval: float = 1.0) -> None:
        tag = secrets.token_hex(4)
        args = [
            "beat",
            "--loglevel=INFO",
            f"--max-interval={max_interval:g}",
            f"--pidfile={cwd / f'beat-{tag}.pid'}",
            f"--schedule={cwd / f'beat-{tag}.schedule'}",
        ]
        super().__init__(env, cwd, cwd / f"beat-{tag}.log", args)

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)


@contextmanager
def running_beat(
    env: Mapping[str, str], cwd: Path, max_interval: float = 1.0
) -> Iterator[CeleryBeat]:
    beat = CeleryBeat(env, cwd, max_interval).start()
    try:
        yield beat
    finally:
        beat.stop()
