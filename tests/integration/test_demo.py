"""`make demo`'s command: beat and a worker (`rotator run`) rotate demo roles, each proven.

The demo runs in its own session with TMPDIR in a folder of the test's own, so whatever it
leaves behind (a directory, a process whose command line or working directory is there)
is found, and a test that times out kills the whole group rather than orphaning it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "rotator.cli", "demo"]


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A TMPDIR the `postgres` user can enter (pytest's tmp_path is 0700 under root)."""
    folder = Path(tempfile.mkdtemp(prefix="demo-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def demo_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    return {**env, "COLUMNS": "80", "TMPDIR": str(tmp), **extra}


@contextmanager
def demo(tmp: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """`rotator demo` in its own session; its whole group is killed if the test fails."""
    process = subprocess.Popen(
        [*DEMO, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=demo_env(tmp, **env),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def read_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """Output up to the first line containing `text` (the demo must still be running)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, f"demo ended before {text!r}:\n{seen}"
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout} s:\n{seen}")


def processes_under(folder: Path) -> list[str]:
    """Processes whose command line or working directory is inside `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            if str(folder) in cmdline or cwd.startswith(str(folder)):
                found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def wait_gone(folder: Path, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_under(folder)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_demo_rotates_through_beat_and_a_worker_and_proves_every_password(
    tmp_path: Path,
) -> None:
    """The user's ROTATOR_* settings (a history database, a key) are not the demo's."""
    user_db = tmp_path / "user-history.db"
    with demo(
        tmp_path,
        "--rounds",
        "2",
        "--secrets",
        "2",
        ROTATOR_DATABASE_URL=f"sqlite:///{user_db}",
        ROTATOR_ENCRYPTION_KEY="not-a-fernet-key",
        ROTATOR_BROKER_URL="nonsense://x",
    ) as process:
        stdout, _ = process.communicate(timeout=180)
    assert process.returncode == 0, stdout
    assert not user_db.exists()
    assert "4/4 rotations verified" in stdout
    rows = [line for line in stdout.splitlines() if "demo-app-" in line]
    assert len(rows) == 4 and all("succeeded" in row for row in rows), stdout
    assert all(row.count("yes") == 2 for row in rows), stdout
    assert "`rotator run` stopped with exit code 0" in stdout
    assert "runs left running" not in stdout
    assert "no password in them" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80
    assert "Traceback" not in stdout
    assert list(tmp_path.glob("rotator-*")) == []


@pytest.mark.parametrize(
    ("stop", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGHUP, False)],
)
def test_a_demo_stopped_while_rotating_leaves_no_process_and_no_directory(
    tmp_path: Path, stop: signal.Signals, group: bool
) -> None:
    """SIGTERM, SIGHUP, or a terminal's Ctrl-C (SIGINT to the whole group): rotator run is
    stopped, PostgreSQL too (not killed first by the Ctrl-C), the files go; exit 130."""
    with demo(tmp_path, "--rounds", "20") as process:
        read_until(process, "initial passwords adopted")
        time.sleep(2)  # rotator run is starting or rotating
        (os.killpg if group else os.kill)(process.pid, stop)
        stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130, stdout
    assert "demo interrupted" in stdout and "Traceback" not in stdout
    assert "`rotator run` stopped with exit code 0" in stdout, stdout
    assert wait_gone(tmp_path, timeout=10) == []
    assert list(tmp_path.glob("rotator-*")) == []


def test_a_demo_interrupted_while_postgresql_starts_leaves_nothing(tmp_path: Path) -> None:
    with demo(tmp_path) as process:
        read_until(process, "starting a throwaway PostgreSQL")
        os.killpg(process.pid, signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130, stdout
    assert "Traceback" not in stdout
    assert wait_gone(tmp_path, timeout=10) == []
    assert list(tmp_path.glob("rotator-*")) == []


def test_a_killed_demo_takes_rotator_run_and_postgresql_with_it(tmp_path: Path) -> None:
    """SIGKILL runs no clean-up of ours: the children stop because their parent died."""
    with demo(tmp_path, "--rounds", "20") as process:
        read_until(process, "initial passwords adopted")
        time.sleep(2)
        assert processes_under(tmp_path) != []
        os.kill(process.pid, signal.SIGKILL)  # the demo only, not its group
        process.wait(timeout=30)
        assert wait_gone(tmp_path, timeout=60) == []
