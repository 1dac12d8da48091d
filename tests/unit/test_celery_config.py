"""The Celery app's configuration comes from Settings and keeps its reliability promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery.app.utils import find_app

from rotator.celery import app, celery_config
from rotator.config import Settings, load_settings
from rotator.errors import ConfigError


def test_celery_dash_a_rotator_finds_the_app() -> None:
    assert find_app("rotator") is app


def test_default_is_a_filesystem_broker_and_file_results_under_var_dir(tmp_path: Path) -> None:
    config = celery_config(Settings(var_dir=tmp_path / "var"))
    assert config["broker_url"] == "filesystem://"
    options = config["broker_transport_options"]
    queue = (tmp_path / "var" / "broker" / "queue").resolve()
    assert options["data_folder_in"] == options["data_folder_out"] == str(queue)
    assert Path(options["control_folder"]).is_dir() and queue.is_dir()
    results = (tmp_path / "var" / "results").resolve()
    assert config["result_backend"] == f"file://{results}" and results.is_dir()


def test_reliability_settings_for_long_non_idempotent_work(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        broker_url="redis://127.0.0.1:1/0",
        result_backend="redis://127.0.0.1:1/0",
        task_soft_time_limit_seconds=100,
        task_time_limit_seconds=200,
        broker_visibility_timeout_seconds=900,
        result_expires_seconds=3600,
    )
    config = celery_config(settings)
    assert config["broker_transport_options"] == {"visibility_timeout": 900}
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    # A hard-limit kill acknowledges: a rotation that always hangs is not redelivered forever.
    assert config["task_acks_on_timeout"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (100, 200)
    assert config["accept_content"] == ["json"] == config["result_accept_content"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["task_track_started"] is True
    assert config["result_expires"] == 3600
    assert config["beat_scheduler"] == "rotator.beat:YamlScheduler"
    assert not (tmp_path / "broker").exists()


def test_a_visibility_timeout_shorter_than_a_rotation_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROTATOR_TASK_TIME_LIMIT_SECONDS", "900")
    monkeypatch.setenv("ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS", "600")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed" in text
    assert "ROTATOR_?" not in text and "Value error" not in text


def test_the_visibility_timeout_must_outlast_a_wait_for_the_runs_own_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A redelivered run retries after half the lease TTL, unacknowledged all that time."""
    monkeypatch.setenv("ROTATOR_TASK_TIME_LIMIT_SECONDS", "900")
    monkeypatch.setenv("ROTATOR_TASK_RETRY_BACKOFF_MAX_SECONDS", "300")
    monkeypatch.setenv("ROTATOR_LEASE_TTL_SECONDS", "3000")
    monkeypatch.setenv("ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS", "2000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "half ROTATOR_LEASE_TTL_SECONDS (2400 s)" in text
    monkeypatch.setenv("ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS", "2401")
    assert load_settings().broker_visibility_timeout_seconds == 2401


def test_a_soft_limit_not_below_the_hard_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS", "900")
    monkeypatch.setenv("ROTATOR_TASK_TIME_LIMIT_SECONDS", "900")
    with pytest.raises(ConfigError, match="ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS must be below"):
        load_settings()


def test_an_unwritable_var_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="ROTATOR_VAR_DIR: cannot create the broker"):
        celery_config(Settings(var_dir=blocker / "var"))


def test_importing_the_app_reads_no_settings_and_touches_no_disk(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import rotator.celery, rotator.tasks"],
        cwd=tmp_path,
        env={"ROTATOR_VAR_DIR": str(tmp_path / "var"), "ROTATOR_LEASE_TTL_SECONDS": "bad"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("broker", "backend", "variable"),
    [
        ("nonsense://:url-pass-1@x", "", "ROTATOR_BROKER_URL"),
        ("redis://:url-pass-1@localhost:notaport/0", "", "ROTATOR_BROKER_URL"),
        ("redis://localhost:99999/0", "", "ROTATOR_BROKER_URL"),
        ("redis://127.0.0.1:1/0", "nonsense://:url-pass-1@x", "ROTATOR_RESULT_BACKEND"),
        ("redis://127.0.0.1:1/0", "redis://:url-pass-1@h:notaport/1", "ROTATOR_RESULT_BACKEND"),
    ],
)
def test_a_mistyped_broker_or_backend_url_is_a_config_error_naming_it(
    tmp_path: Path, broker: str, backend: str, variable: str
) -> None:
    settings = Settings(var_dir=tmp_path, broker_url=broker, result_backend=backend)
    with pytest.raises(ConfigError) as caught:
        celery_config(settings)
    assert str(caught.value).startswith(f"{variable}=")
    assert "url-pass-1" not in str(caught.value)


@pytest.mark.parametrize(
    ("broker", "backend"),
    [
        ("redis://:p@127.0.0.1:6390/0", "redis://:p@127.0.0.1:6390/1"),
        ("rediss://127.0.0.1:6390/0;redis://127.0.0.1:6391/0", "db+sqlite:///results.db"),
        ("sqla+sqlite:///broker.db", "file:///tmp/results"),
        ("memory://", "rpc://"),
    ],
)
def test_well_formed_urls_are_accepted_without_connecting(
    tmp_path: Path, broker: str, backend: str
) -> None:
    config = celery_config(Settings(var_dir=tmp_path, broker_url=broker, result_backend=backend))
    assert (config["broker_url"], config["result_backend"]) == (broker, backend)


def test_celery_leaves_stdout_and_stderr_alone_so_json_lines_stay_json(tmp_path: Path) -> None:
    assert celery_config(Settings(var_dir=tmp_path))["worker_redirect_stdouts"] is False
