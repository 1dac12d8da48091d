"""Settings: environment variables, .env, clear errors, the dev key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from structlog.testing import capture_logs

from rotator.config import load_settings
from rotator.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ROTATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_point_at_the_working_directory() -> None:
    settings = load_settings()
    assert settings.schedules == Path("schedules.yaml")
    assert settings.resolved_database_url == f"sqlite:///{Path('var/rotator.db').resolve()}"
    assert settings.log_format == "auto"


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ROTATOR_LOG_FORMAT=json\nROTATOR_SCHEDULES=from-dotenv.yaml\n")
    monkeypatch.setenv("ROTATOR_SCHEDULES", "from-env.yaml")
    settings = load_settings()
    assert settings.log_format == "json"  # from .env
    assert settings.schedules == Path("from-env.yaml")  # the environment wins over .env


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ROTATOR_ENCRYPTION_KEY", "not-a-fernet-key"),
        ("ROTATOR_LOG_FORMAT", "xml"),
        ("ROTATOR_LEASE_TTL_SECONDS", "soon"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.problems and raised.value.problems[0].startswith(f"{variable}:")
    assert value not in str(raised.value)  # a mistyped key may be a real secret


def test_without_a_key_a_private_key_file_is_made_once_with_a_warning(tmp_path: Path) -> None:
    settings = load_settings()
    with capture_logs() as logs:
        first = settings.fernet()
    key_file = tmp_path / "var" / "rotator.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [entry["event"] for entry in logs] == ["settings.generated_key"]
    token = first.encrypt(b"value")
    with capture_logs() as again:
        second = load_settings().fernet()
    assert again == []
    assert second.decrypt(token) == b"value"


def test_a_configured_key_is_used_and_no_file_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv("ROTATOR_ENCRYPTION_KEY", key.decode())
    token = load_settings().fernet().encrypt(b"value")
    assert Fernet(key).decrypt(token) == b"value"
    assert not (tmp_path / "var" / "rotator.key").exists()


def test_no_key_is_generated_for_a_shared_database() -> None:
    settings = load_settings(database_url="postgresql+psycopg://rotator@db.internal/rotator")
    with pytest.raises(ConfigError, match="ROTATOR_ENCRYPTION_KEY"):
        settings.fernet()


def test_processes_starting_together_share_one_generated_key(tmp_path: Path) -> None:
    import threading

    ciphers: list[Fernet] = []

    def start() -> None:
        ciphers.append(load_settings().fernet())

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    token = ciphers[0].encrypt(b"value")
    assert all(cipher.decrypt(token) == b"value" for cipher in ciphers)
    assert [p.name for p in (tmp_path / "var").iterdir()] == ["rotator.key"]
