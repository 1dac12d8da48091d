"""A throwaway local PostgreSQL cluster with SCRAM authentication.

Used by the test suite and by `rotator demo`, so both prove credentials
against a real server with password authentication (never `trust`). Each
server lives in a temporary directory on a free loopback port and is
removed on `stop()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotator.errors import RotatorError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: prctl(2) option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that sends the child `sig` when this process dies, even by SIGKILL.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere None, and a killed parent leaves its
    children to their own shutdown. Runs after the child took its user, so the setting holds.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the setting took hold
            os.kill(os.getpid(), sig)

    return preexec


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        candidate = base / name
        if candidate.exists():
            return str(candidate)
    raise RotatorError(
        f"PostgreSQL binary {name!r} not found; install the server (apt-get install postgresql)"
    )


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster of our own: superuser `postgres`, scram-sha-256 everywhere."""

    log_statements: bool = False
    #: pg_hba method for TCP logins; "trust" only for tests proving that we refuse it.
    host_auth: str = "scram-sha-256"
    host: str = "127.0.0.1"
    port: int = 0
    user: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rotator-pg-")))
    _process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def logfile(self) -> Path:
        return self.workdir / "postgres.log"

    def _server_user(self) -> dict[str, Any]:
        """Run server binaries as `postgres` when we are root (initdb refuses root)."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise RotatorError(
                "running as root needs a 'postgres' system user to own the throwaway "
                "cluster (initdb refuses root); install the postgresql package"
            ) from None
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        ids = self._server_user()
        if ids:
            os.chown(path, ids["user"], ids["group"])

    def start(self) -> LocalPostgres:
        """Create and start the cluster; on any failure (Ctrl-C included) nothing is left."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn_options(self) -> dict[str, Any]:
        """Its own session, so a terminal's Ctrl-C reaches only us and `stop()` ends the
        server; and it stops (fast shutdown) if this process dies without calling `stop()`."""
        return {
            **self._server_user(),
            "start_new_session": True,
            "preexec_fn": die_with_parent(signal.SIGINT),
        }

    def _start(self) -> None:
        self.port = self.port or free_port()
        self.workdir.chmod(0o755)
        self._chown(self.workdir)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        pwfile.chmod(0o600)
        initdb = subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                f"--auth-host={self.host_auth}",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            **self._spawn_options(),
        )
        pwfile.unlink()
        if initdb.returncode != 0:
            reason = (initdb.stderr or initdb.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RotatorError(f"initdb failed in {self.workdir}: {reason[0]}")
        options = [
            "-c",
            f"port={self.port}",
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self.workdir}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "password_encryption=scram-sha-256",
            "-c",
            "max_connections=200",
            "-c",
            "logging_collector=off",
        ]
        if self.log_statements:
            options += ["-c", "log_statement=all"]
        with open(self.logfile, "ab") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                [_pg_bin("postgres"), "-D", str(self.datadir), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._spawn_options(),
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RotatorError(f"PostgreSQL exited at start; see {self.logfile}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.5),
            ):
                time.sleep(0.2)
                return
            time.sleep(0.1)
        raise RotatorError(f"PostgreSQL did not start within {timeout}s; see {self.logfile}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def conninfo(self) -> dict[str, object]:
        """Keyword arguments for psycopg.connect as the superuser."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": "postgres",
        }

    def url(self, driver: str = "postgresql") -> str:
        from urllib.parse import quote

        return (
            f"{driver}://{self.user}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/postgres"
        )
