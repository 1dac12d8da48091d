"""Real `celery -A rotator ...` processes for end-to-end tests.

`CeleryWorker` starts `celery -A rotator worker` in a process group of its own with
the environment a test gives (ROTATOR_* settings for its schedules, history
database and broker), waits for the worker's "ready" line, and stops it with
SIGTERM then SIGKILL, or kills the whole group with -9 (main process and pool
children) to stand for a machine dying. `celery_cli` runs any other celery command.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

from celery import Celery

from rotator.celery import celery_config
from rotator.config import Settings

CELERY = str(Path(sys.executable).parent / "celery")


def worker_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any ROTATOR_* of its own, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "CELERY_"))}
    env.update(settings)
    env.setdefault("ROTATOR_LOG_FORMAT", "json")
    return env


class CeleryProcess:
    """One `celery -A rotator ...` process group, its output in a log file the test reads."""

    #: What the process prints once it is ready, and what the error texts call it.
    ready_text = ""
    what = "celery"

    def __init__(self, env: Mapping[str, str], cwd: Path, logfile: Path, args: list[str]) -> None:
        self.env = worker_env(env)
        self.cwd = cwd
        self.logfile = logfile
        self.args = [CELERY, "-A", "rotator", *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_log(self.ready_text, timeout)
        return self

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        """Until `text` appears `count` times in the output."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited early:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from {self.what}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL to the group."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        self.kill9()

    def kill9(self) -> None:
        """SIGKILL to the whole process group: the main process and every child."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class CeleryWorker(CeleryProcess):
    """One `celery -A rotator worker` process group."""

    ready_text = " ready."
    what = "celery worker"

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name = f"w{secrets.token_hex(4)}@%h"
        args = [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
            *extra,
        ]
        super().__init__(env, cwd, cwd / f"worker-{secrets.token_hex(4)}.log", args)

    def pool_children(self) -> list[int]:
        """Process ids of the main process's children (the prefork pool), from /proc."""
        assert self.process is not None
        children: list[int] = []
        for thread in os.listdir(f"/proc/{self.process.pid}/task"):
            with open(f"/proc/{self.process.pid}/task/{thread}/children") as handle:
                children += [int(pid) for pid in handle.read().split()]
        return children


@contextmanager
def running_worker(
    env: Mapping[str, str], cwd: Path, concurrency: int = 2, extra: tuple[str, ...] = ()
) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(env, cwd, concurrency, extra).start()
    try:
        yield worker
    finally:
        worker.stop()


def celery_cli(
    env: Mapping[str, str], cwd: Path, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `celery -A rotator ARGS...` to completion with the given settings."""
    return subprocess.run(
        [CELERY, "-A", "rotator", *args],
        cwd=cwd,
        env=worker_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rotator_env(settings: Settings, broker: str | None, **extra: str) -> dict[str, str]:
    """The ROTATOR_* environment of a process sharing `settings` (None: the default broker)."""
    env = {
        "ROTATOR_SCHEDULES": str(settings.schedules),
        "ROTATOR_DATABASE_URL": settings.resolved_database_url,
        "ROTATOR_VAR_DIR": str(settings.var_dir),
    }
    if settings.encryption_key is not None:
        env["ROTATOR_ENCRYPTION_KEY"] = settings.encryption_key.get_secret_value()
    if broker is not None:
        env["ROTATOR_BROKER_URL"] = broker
        env["ROTATOR_RESULT_BACKEND"] = broker
    env.update(extra)
    return env


@contextmanager
def client_app(env: Mapping[str, str]) -> Iterator[Celery]:
    """A Celery app configured like the workers of `env`: sends tasks and reads results."""
    settings = Settings(
        broker_url=env.get("ROTATOR_BROKER_URL", ""),
        result_backend=env.get("ROTATOR_RESULT_BACKEND", ""),
        var_dir=Path(env["ROTATOR_VAR_DIR"]),
    )
    app = Celery("rotator-client", set_as_current=False)
    app.conf.update(celery_config(settings))
    try:
        yield app
    finally:
        app.close()


def wait_result(app: Celery, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
    result = app.AsyncResult(task_id).get(timeout=timeout)
    assert isinstance(result, dict), result
    return result
