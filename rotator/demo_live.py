"""The demo's live part: `rotator run` as a subprocess, a table of each run as it ends.

The worker and beat are a real `rotator run` process with ROTATOR_* pointing at the
demo's var dir; this process only reads the history and the store and proves each
new password against PostgreSQL. It stops the subprocess with SIGTERM (a warm
shutdown: a rotation under way finishes) and reports any run left `running`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from rotator.demo import Check, DemoSetup
from rotator.devservers import die_with_parent

#: The demo gives up when the rotations it waits for have not happened by then.
DEADLINE_BASE_SECONDS = 60.0
DEADLINE_PER_ROUND_SECONDS = 15.0
STOP_SECONDS = 30.0
POLL_SECONDS = 0.25


def start_run(setup: DemoSetup) -> tuple[subprocess.Popen[bytes], Path]:
    """`rotator run` on the demo's settings; its output goes to a log file in the var dir."""
    settings = setup.settings
    assert settings.encryption_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "CELERY_"))}
    env.update(
        ROTATOR_SCHEDULES=str(settings.schedules),
        ROTATOR_VAR_DIR=str(settings.var_dir),
        ROTATOR_ENCRYPTION_KEY=settings.encryption_key.get_secret_value(),
        ROTATOR_LOG_FORMAT="json",
        ROTATOR_LOG_LEVEL="warning",
    )
    log = setup.workdir / "rotator-run.log"
    command = [sys.executable, "-m", "rotator.cli", "run", "--max-interval", "1", "-c", "2"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--loglevel", "warning"],
            env=env,
            cwd=setup.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C here stops it through stop_run, warmly
            preexec_fn=die_with_parent(signal.SIGTERM),  # and so does the demo's death
        )
    return process, log


def stop_run(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM (warm shutdown), then SIGKILL to the group if it does not end in time or
    the wait is interrupted (a second Ctrl-C): nothing of it outlives the demo."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_SECONDS)
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.wait()


def new_table() -> Table:
    table = Table(title="rotations by beat + worker (rotator run)")
    for column, width in (("#", 2), ("secret", 10), ("run", 8), ("outcome", 9)):
        table.add_column(column, no_wrap=True, min_width=width)
    for column in ("took", "new logs in", "old refused"):
        table.add_column(column, no_wrap=True)
    return table


def add_row(table: Table, number: int, check: Check) -> None:
    run = check.run
    took = "-"
    if run.finished_at is not None:
        took = f"{(run.finished_at - run.started_at).total_seconds():.1f} s"
    table.add_row(
        str(number),
        run.secret,
        run.id[:8],
        _mark(run.status == "succeeded", run.status),
        took,
        _mark(check.new_logs_in),
        _mark(
            check.old_refused,
            ("yes" if check.old_refused else "NO") if check.had_previous else "n/a",
        ),
    )


def watch_rotations(console: Console, setup: DemoSetup, rounds: int) -> bool:
    """Show each scheduled run as it ends until every secret rotated `rounds` times.

    Ctrl-C (or SIGTERM, see run_demo) stops `rotator run`, shows the summary and raises
    KeyboardInterrupt again, so an interrupted demo always ends the same way (exit 130).
    """
    process, log = start_run(setup)
    checks: list[Check] = []
    interrupted = False
    try:
        table = new_table()
        with Live(table, console=console, refresh_per_second=4):
            interrupted = _follow(setup, rounds, process, table, checks)
    finally:
        code = stop_run(process)
    finished = interrupted or _done(setup, rounds, checks)
    ok = _summary(console, setup, checks, code, log, interrupted, finished)
    if interrupted:
        raise KeyboardInterrupt
    return ok


def _follow(
    setup: DemoSetup,
    rounds: int,
    process: subprocess.Popen[bytes],
    table: Table,
    checks: list[Check],
) -> bool:
    """Poll the history; True if stopped by Ctrl-C. Raises nothing on a dead subprocess."""
    seen: set[str] = set()
    deadline = time.monotonic() + DEADLINE_BASE_SECONDS + rounds * DEADLINE_PER_ROUND_SECONDS
    try:
        while not _done(setup, rounds, checks) and time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            for run in _finished_runs(setup, seen):
                seen.add(run.id)
                checks.append(setup.check(run))
                add_row(table, len(checks), checks[-1])
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return True
    return False


def _finished_runs(setup: DemoSetup, seen: set[str]) -> list[Any]:
    runs = setup.runtime.history.runs(limit=500)
    fresh = [
        r
        for r in runs
        if r.id not in seen and r.secret in setup.roles and r.status not in ("running", "adopted")
    ]
    return sorted(fresh, key=lambda r: r.finished_at or r.started_at)


def _done(setup: DemoSetup, rounds: int, checks: list[Check]) -> bool:
    return all(
        sum(c.run.secret == name and c.run.status == "succeeded" for c in checks) >= rounds
        for name in setup.roles
    )


def _summary(
    console: Console,
    setup: DemoSetup,
    checks: list[Check],
    exit_code: int,
    log: Path,
    interrupted: bool,
    finished: bool,
) -> bool:
    history = setup.runtime.history.runs(limit=1000)
    left_running = [r.id[:8] for r in history if r.status == "running"]
    verified = sum(c.verified for c in checks)
    leaks = setup.leaks(log)
    clean = exit_code == 0 and not left_running and not leaks
    ok = bool(checks) and verified == len(checks) and clean and finished
    colour = "green" if ok else "red"
    console.print(
        f"\n[bold {colour}]{verified}/{len(checks)} rotations verified[/] against PostgreSQL.\n"
        f"{len(history)} runs recorded; "
        + (f"{leaks} passwords found in history or logs!\n" if leaks else "no password in them.\n")
        + f"`rotator run` stopped with exit code {exit_code}"
        + (f"; runs left running: {', '.join(left_running)}" if left_running else "")
        + (" (Ctrl-C)" if interrupted else "")
        + ("" if finished else "; not every secret rotated in time")
    )
    if not ok and not interrupted and not leaks:  # the log tail is shown only when clean
        tail = log.read_text(errors="replace").splitlines()[-15:]
        console.print(
            "last lines of `rotator run`:", *tail, sep="\n", markup=False, highlight=False
        )
    return ok


def _mark(ok: bool, text: Any = None) -> str:
    label = text if text is not None else ("yes" if ok else "NO")
    return f"[green]{label}[/]" if ok else f"[bold red]{label}[/]"
