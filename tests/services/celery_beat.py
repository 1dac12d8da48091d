"""A real `celery -A rotator beat` process for end-to-end tests.

`CeleryBeat` starts beat in a process group of its own with the ROTATOR_* settings a
test gives, a short `--max-interval` so schedules of a few seconds are met, and its
output in a log file the test can read; it stops with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.services.celery_procs import CELERY, worker_env


class CeleryBeat:
    """One `celery -A rotator beat` process group."""

    def __init__(self, env: Mapping[str, str], cwd: Path, max_interval: float = 1.0) -> None:
        self.env = worker_env(env)
        self.cwd = cwd
        tag = secrets.token_hex(4)
        self.logfile = cwd / f"beat-{tag}.log"
        self.args = [
            CELERY,
            "-A",
            "rotator",
            "beat",
            "--loglevel=INFO",
            f"--max-interval={max_interval:g}",
            f"--pidfile={cwd / f'beat-{tag}.pid'}",
            f"--schedule={cwd / f'beat-{tag}.schedule'}",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> CeleryBeat:
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_log("beat.schedule_loaded", timeout)
        return self

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        """Until `text` appears `count` times in beat's output."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"celery beat exited early:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from beat:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def running_beat(
    env: Mapping[str, str], cwd: Path, max_interval: float = 1.0
) -> Iterator[CeleryBeat]:
    beat = CeleryBeat(env, cwd, max_interval).start()
    try:
        yield beat
    finally:
        beat.stop()
