"""Bad settings and input at the CLI: one clear line, the right exit code, no traceback."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from rotator.devservers import free_port
from rotator.history import Database
from rotator.locks import LeaseManager
from tests.integration.test_cli import ROTATOR, Cli

pytestmark = pytest.mark.integration

# No server listens on the target port: these tests never reach a database.
SCHEDULES = f"""\
version: 1
stores: {{local: {{type: embedded}}}}
defaults: {{max_attempts: 1}}
secrets:
  app-db:
    rotator: postgres-password
    store: local
    every: 30d
    target: {{host: 127.0.0.1, port: {free_port()}, dbname: "db[/y]", username: app}}
"""


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    return Cli(tmp_path, schedules)


def one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_database_url_that_is_not_one_names_the_variable(cli: Cli) -> None:
    result = cli("status", ROTATOR_DATABASE_URL="nonsense://somewhere")
    assert result.returncode == 2
    assert "ROTATOR_DATABASE_URL" in one_clean_line(result.stderr)


def test_an_unreachable_history_database_is_one_line_without_its_password(cli: Cli) -> None:
    url = f"postgresql+psycopg://rotator:hist-pass-123@127.0.0.1:{free_port()}/rotator"
    result = cli("status", ROTATOR_DATABASE_URL=url)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert "history database" in line and "127.0.0.1" in line
    assert "hist-pass-123" not in result.stderr + result.stdout


def test_a_damaged_key_file_names_the_file(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "rotator.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("not a key")
    env = {k: v for k, v in cli.env.items() if k != "ROTATOR_ENCRYPTION_KEY"}
    cli.env = env
    result = cli("put", "app-db", stdin=json.dumps({"password": "p" * 20}))
    assert result.returncode == 2
    assert str(key_file) in one_clean_line(result.stderr)


def test_an_unusable_var_dir_names_the_variable(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("status", ROTATOR_VAR_DIR=str(blocker / "var"))
    assert result.returncode == 2
    assert "ROTATOR_VAR_DIR" in one_clean_line(result.stderr)


@pytest.mark.parametrize("value", ["{}", '{"password": 5}', '{"password": ""}'])
def test_put_refuses_a_value_without_a_password(cli: Cli, value: str) -> None:
    result = cli("put", "app-db", stdin=value)
    assert result.returncode == 2
    assert "password" in one_clean_line(result.stderr)


def test_rotate_without_names_says_what_to_give(cli: Cli) -> None:
    result = cli("rotate")
    assert result.returncode == 2
    assert "--all" in one_clean_line(result.stderr)


def test_a_rotation_already_in_progress_is_reported_and_exits_1(cli: Cli, tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'var' / 'rotator.db'}")
    database.upgrade()
    LeaseManager(database, timedelta(minutes=5)).try_acquire("app-db", "another-worker")
    database.dispose()
    result = cli("rotate", "app-db", "--inline", "--json")
    assert result.returncode == 1
    outcome = json.loads(result.stdout)[0]
    assert outcome["outcome"] == "skipped" and "another run" in outcome["error"]


def test_an_admin_of_another_server_is_refused_at_validation(cli: Cli, tmp_path: Path) -> None:
    schedules = tmp_path / "two-servers.yaml"
    schedules.write_text(
        textwrap.dedent("""\
        version: 1
        stores: {local: {type: embedded}}
        secrets:
          pg-admin:
            rotator: postgres-password
            store: local
            every: 30d
            target: {host: db-a.internal, username: admin}
          app-db:
            rotator: postgres-password
            store: local
            every: 30d
            target: {host: db-b.internal, username: app, admin_secret: pg-admin}
        """)
    )
    result = cli("validate", "-f", str(schedules))
    assert result.returncode == 2
    assert f"{schedules}:13: secrets.app-db.target.admin_secret" in result.stderr
    assert "another server" in result.stderr


def test_put_with_stdin_closed_is_one_line(cli: Cli) -> None:
    import subprocess

    result = subprocess.run(
        ["sh", "-c", f"{' '.join(ROTATOR)} put app-db <&-"],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
    )
    assert result.returncode == 2
    assert "standard input" in one_clean_line(result.stderr)


def test_put_refuses_an_oversized_stdin(cli: Cli) -> None:
    result = cli("put", "app-db", stdin='{"password": "' + "x" * 70_000 + '"}')
    assert result.returncode == 2
    assert "bytes" in one_clean_line(result.stderr)


def test_an_unsupported_database_driver_names_the_variable(cli: Cli) -> None:
    result = cli("status", ROTATOR_DATABASE_URL="mysql://rotator@127.0.0.1/rotator")
    assert result.returncode == 2
    assert "ROTATOR_DATABASE_URL" in one_clean_line(result.stderr)


@pytest.mark.parametrize("value", ["inf", "1e400", "0"])
def test_a_lease_ttl_out_of_range_names_the_variable(cli: Cli, value: str) -> None:
    result = cli("status", ROTATOR_LEASE_TTL_SECONDS=value)
    assert result.returncode == 2
    assert "ROTATOR_LEASE_TTL_SECONDS" in result.stderr and "Traceback" not in result.stderr


def test_demo_refuses_zero_secrets(cli: Cli) -> None:
    result = cli("demo", "--secrets", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_brackets_in_names_and_errors_are_shown_as_text(tmp_path: Path) -> None:
    """Rich markup in a secret name or an error message is printed, never interpreted."""
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES.replace("app-db:", "'app[/x]db':"))
    cli = Cli(tmp_path, schedules)
    for args in (("plan",), ("status",), ("history",)):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
    assert cli("put", "app[/x]db", stdin='{"password": "pw-1234567890"}').returncode == 0
    rotated = cli("rotate", "app[/x]db", "--inline", COLUMNS="400")
    assert rotated.returncode == 1 and "Traceback" not in rotated.stderr
    assert "app[/x]db" in rotated.stdout
    assert "db[/y] unreachable" in rotated.stdout  # the error text, brackets and all
    shown = cli("history", COLUMNS="400")
    assert shown.returncode == 0 and "app[/x]db" in shown.stdout


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        (b"\xff\xfe not utf-8", "JSON"),
        ('{"password": "abcdefgh", "port": "\u00b2"}'.encode(), "port"),
        (b'{"password": "abcdefgh", "port": 5432.5}', "port"),
        (b'{"password": "abc\\udcffdefgh"}', "password"),
        (b'{"password": "abc\\u0000defgh"}', "NUL"),
        (('{"password": "' + "\u00e9" * 40_000 + '"}').encode(), "bytes"),
    ],
)
def test_put_refuses_undecodable_or_unusable_values(cli: Cli, stdin: bytes, expected: str) -> None:
    import subprocess

    result = subprocess.run(
        [*ROTATOR, "put", "app-db"],
        input=stdin,
        capture_output=True,
        env={**cli.env, "PYTHONIOENCODING": "utf-8:strict"},
        cwd=cli.cwd,
        timeout=60,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert expected in one_clean_line(stderr)


def test_put_accepts_a_byte_order_mark(cli: Cli) -> None:
    result = cli("put", "app-db", stdin='\ufeff{"password": "pw-1234567890"}')
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "url", ["nonsense://x", "redis://:url-pass-7@localhost:notaport/0", "redis://h:99999/0"]
)
@pytest.mark.parametrize("command", [("rotate", "app-db"), ("run",)])
def test_a_mistyped_broker_url_is_one_line_and_exit_2(
    cli: Cli, url: str, command: tuple[str, ...]
) -> None:
    result = cli(*command, ROTATOR_BROKER_URL=url)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ROTATOR_BROKER_URL" in one_clean_line(result.stderr)
    assert "url-pass-7" not in result.stderr + result.stdout


def test_a_mistyped_result_backend_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli(
        "rotate", "app-db", "--wait", "--timeout", "2", ROTATOR_RESULT_BACKEND="nonsense://x"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ROTATOR_RESULT_BACKEND" in one_clean_line(result.stderr)


def test_overdue_json_with_nothing_due_is_still_json(cli: Cli) -> None:
    assert cli("put", "app-db", stdin='{"password": "pw-1234567890"}').returncode == 0
    result = cli("rotate", "--overdue", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
