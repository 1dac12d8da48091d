"""The `rotator` command as users run it: a real subprocess against real PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.conftest import pg_schedules, unique_role
from tests.services.postgres import PgServer

pytestmark = pytest.mark.integration
ROTATOR = [sys.executable, "-m", "rotator.cli"]


class Cli:
    """Runs `rotator` with a private var dir, history database and key."""

    def __init__(self, tmp_path: Path, schedules: Path) -> None:
        self.env = {
            **os.environ,
            "ROTATOR_SCHEDULES": str(schedules),
            "ROTATOR_VAR_DIR": str(tmp_path / "var"),
            "ROTATOR_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ROTATOR_LOG_FORMAT": "json",
            "COLUMNS": "200",
        }
        self.env.pop("ROTATOR_DATABASE_URL", None)
        self.cwd = tmp_path

    def __call__(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ROTATOR, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env={**self.env, **env},
            cwd=self.cwd,
        )


@pytest.fixture
def cli_setup(pg: PgServer, tmp_path: Path) -> tuple[Cli, dict[str, str], dict[str, str]]:
    """A CLI over two secrets: `pg-admin` (an adoptable CREATEROLE role) and `db-0`."""
    admin_role, role = unique_role("admin"), unique_role()
    passwords = {admin_role: secrets.token_urlsafe(16), role: secrets.token_urlsafe(16)}
    pg.create_role(admin_role, passwords[admin_role], "CREATEROLE")
    pg.create_role(role, passwords[role])
    pg.grant_admin(role, admin_role)
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(pg_schedules(pg, {"db-0": role}, admin_role))
    return Cli(tmp_path, schedules), {"pg-admin": admin_role, "db-0": role}, passwords


def test_adopt_rotate_get_history_without_showing_values(
    pg: PgServer, cli_setup: tuple[Cli, dict[str, str], dict[str, str]]
) -> None:
    cli, roles, passwords = cli_setup
    admin_password = passwords[roles["pg-admin"]]

    adopted = cli("put", "pg-admin", stdin=json.dumps({"password": admin_password}))
    assert adopted.returncode == 0, adopted.stderr
    rotated = cli("rotate", "db-0", "--inline", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)[0]["outcome"] == "succeeded"

    got = cli("get", "db-0")
    assert got.returncode == 0, got.stderr
    value = json.loads(got.stdout)
    assert value["username"] == roles["db-0"] and value["engine"] == "postgres"
    assert pg.logs_in(roles["db-0"], value["password"])
    previous = cli("get", "db-0", "--stage", "previous")
    # the first rotation had no CURRENT to keep: a usage error naming the stage, not a crash
    assert previous.returncode == 2, previous.stderr
    assert "previous" in previous.stderr.lower() and "db-0" in previous.stderr
    assert "Traceback" not in previous.stderr and previous.stdout == ""

    outputs = [
        adopted,
        rotated,
        cli("history", "--json"),
        cli("status", "--json"),
        cli("plan"),
        cli("history"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        for hidden in (value["password"], admin_password):
            assert hidden not in result.stdout and hidden not in result.stderr
    history = json.loads(cli("history", "db-0", "--json").stdout)
    assert [s["step"] for s in history[0]["steps"]] == ["create", "apply", "test", "finish"]


def test_put_refuses_a_value_for_another_login(
    cli_setup: tuple[Cli, dict[str, str], dict[str, str]],
) -> None:
    cli, _roles, _ = cli_setup
    result = cli(
        "put", "db-0", stdin=json.dumps({"username": "someone_else", "password": "x" * 20})
    )
    assert result.returncode == 2
    assert "username" in result.stderr and "Traceback" not in result.stderr
    assert "x" * 20 not in result.stderr


def test_put_refuses_input_that_is_not_a_json_object(
    cli_setup: tuple[Cli, dict[str, str], dict[str, str]],
) -> None:
    cli, _roles, _ = cli_setup
    result = cli("put", "db-0", stdin="hunter2-not-json")
    assert result.returncode == 2
    assert "JSON" in result.stderr and "hunter2" not in result.stderr


def test_unknown_secret_is_one_line_and_exit_2(
    cli_setup: tuple[Cli, dict[str, str], dict[str, str]],
) -> None:
    cli, _roles, _ = cli_setup
    result = cli("rotate", "no-such-secret", "--inline")
    assert result.returncode == 2
    assert "no-such-secret" in result.stderr and "db-0" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_schedules_lists_each_problem_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nstores: {local: {type: embedded}}\nsecrets:\n  a:\n"
        "    rotator: postgres-password\n    store: nowhere\n    every: 3x\n"
        "    target: {host: h, username: u}\n"
    )
    cli = Cli(tmp_path, bad)
    result = cli("validate")
    assert result.returncode == 2
    assert f"{bad}:6: secrets.a.store" in result.stderr
    assert f"{bad}:7: secrets.a.every" in result.stderr
    assert "Traceback" not in result.stderr
    debug = cli("--debug", "validate")
    assert "Traceback" in debug.stderr


def test_bad_setting_names_the_variable(
    cli_setup: tuple[Cli, dict[str, str], dict[str, str]],
) -> None:
    cli, _roles, _ = cli_setup
    result = cli("status", ROTATOR_ENCRYPTION_KEY="not-a-key")
    assert result.returncode == 2
    assert "ROTATOR_ENCRYPTION_KEY" in result.stderr and "Traceback" not in result.stderr


def test_failed_rotation_exits_1_and_keeps_current(
    pg: PgServer, cli_setup: tuple[Cli, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    cli, roles, passwords = cli_setup
    cli("put", "pg-admin", stdin=json.dumps({"password": "wrong-admin-password"}))
    result = cli("rotate", "db-0", "--inline")
    assert result.returncode == 1
    assert "failed" in result.stdout
    assert pg.logs_in(roles["db-0"], passwords[roles["db-0"]])


def test_keygen_prints_a_fernet_key(tmp_path: Path) -> None:
    result = Cli(tmp_path, tmp_path / "none.yaml")("keygen")
    assert result.returncode == 0
    Fernet(result.stdout.strip().encode())


def test_took_is_the_task_total_not_the_steps_counted_twice() -> None:
    from rich.console import Console

    from rotator.cli_render import results_table
    from rotator.results import RunResult

    timed = RunResult("r" * 36, "db-0", "succeeded", timings_ms={"create": 40, "apply": 60})
    tasked = RunResult("t" * 36, "db-1", "succeeded", timings_ms={"apply": 60, "task": 130})
    console = Console(width=200, record=True)
    console.print(results_table([timed, tasked]))
    text = console.export_text()
    assert "100 ms" in text and "130 ms" in text and "190 ms" not in text


def test_put_rotates_at_once_by_default_and_not_with_no_rotate(
    pg: PgServer, cli_setup: tuple[Cli, dict[str, str], dict[str, str]]
) -> None:
    cli, roles, passwords = cli_setup
    kept = cli(
        "put",
        "pg-admin",
        "--no-rotate",
        stdin=json.dumps({"password": passwords[roles["pg-admin"]]}),
    )
    assert kept.returncode == 0, kept.stderr
    assert "next rotation as scheduled (every 30d)" in kept.stdout
    typed = cli("put", "db-0", stdin=json.dumps({"password": passwords[roles["db-0"]]}))
    assert typed.returncode == 0, typed.stderr
    assert "due for rotation now" in typed.stdout
    rows = {row["secret"]: row for row in json.loads(cli("plan", "--json").stdout)}
    assert rows["pg-admin"]["reason"] == "interval"
    assert (rows["db-0"]["reason"], rows["db-0"]["slot"][:8]) == ("adopted", "adopted:")
    rotated = cli("rotate", "db-0", "--inline", "--json")  # what beat sends within the window
    assert rotated.returncode == 0, rotated.stderr
    rows = {row["secret"]: row for row in json.loads(cli("plan", "--json").stdout)}
    assert rows["db-0"]["reason"] == "interval"  # rotated once, not again and again
    listed = cli("retire", "--list")
    assert listed.returncode == 0, listed.stderr  # postgres-password retires nothing
    nothing = cli("retire")
    assert nothing.returncode == 0 and "nothing is due for retirement" in nothing.stdout
