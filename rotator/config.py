"""Process settings from ROTATOR_* environment variables and an optional .env file."""

from __future__ import annotations

import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Literal

import structlog
from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rotator.errors import ConfigError

log = structlog.get_logger(__name__)


class Settings(BaseSettings):
    """Everything a rotator process needs that is not in schedules.yaml."""

    model_config = SettingsConfigDict(
        env_prefix="ROTATOR_", env_file=".env", extra="ignore", frozen=True
    )

    schedules: Path = Path("schedules.yaml")
    #: Where runs, step events, leases and the embedded store live.
    database_url: str = ""
    #: Fernet key for the embedded store; `rotator keygen` prints one.
    encryption_key: SecretStr | None = None
    #: Working directory for the defaults (the SQLite history file and the key file).
    var_dir: Path = Path("var")
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: How long a run's lease lives without renewal; renewed every third of it.
    lease_ttl_seconds: float = Field(60.0, gt=1, le=86400, allow_inf_nan=False)

    # -- Celery (rotator/celery.py) ---------------------------------------------
    #: Celery broker; empty means kombu's filesystem transport under <var_dir>/broker
    #: (one host, no server). Use redis://HOST:6379/0 in production.
    broker_url: str = ""
    #: Where task results go; empty means files under <var_dir>/results (no server).
    result_backend: str = ""
    #: A rotation still running after this gets SoftTimeLimitExceeded: the task result says
    #: failed, but the engine records nothing, so the run stays `running` and is resumed.
    task_soft_time_limit_seconds: float = Field(600.0, gt=0, le=86400, allow_inf_nan=False)
    #: A rotation still running after this has its worker process killed and its message
    #: acknowledged (not redelivered): beat's resume slot or the next trigger finishes it.
    task_time_limit_seconds: float = Field(900.0, gt=0, le=86400, allow_inf_nan=False)
    #: Redis redelivers a message not acknowledged within this; must exceed the hard time
    #: limit plus the longest retry countdown (the backoff maximum, or half the lease TTL
    #: when a redelivered run waits for its own lease), or a running rotation is delivered twice.
    broker_visibility_timeout_seconds: float = Field(
        7200.0, gt=1, le=7 * 86400, allow_inf_nan=False
    )
    #: How long task results are kept.
    result_expires_seconds: float = Field(86400.0, gt=0, allow_inf_nan=False)
    #: How often a task retries a transient failure (with exponential backoff).
    task_max_retries: int = Field(5, ge=0, le=100)
    #: The longest wait between two retries of a task.
    task_retry_backoff_max_seconds: float = Field(300.0, gt=0, le=86400, allow_inf_nan=False)

    @field_validator("encryption_key")
    @classmethod
    def _is_fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                Fernet(value.get_secret_value().encode())
            except (ValueError, TypeError):
                raise ValueError(
                    "not a Fernet key (32 url-safe base64-encoded bytes); "
                    "make one with `rotator keygen`"
                ) from None
        return value

    @model_validator(mode="after")
    def _limits_fit(self) -> Settings:
        if self.task_soft_time_limit_seconds >= self.task_time_limit_seconds:
            raise ValueError(
                "ROTATOR_TASK_SOFT_TIME_LIMIT_SECONDS must be below "
                "ROTATOR_TASK_TIME_LIMIT_SECONDS (the soft limit warns the task first)"
            )
        # A retry waits unacknowledged for its countdown: the backoff, or half the lease TTL
        # while a redelivered run waits for its own dead attempt's lease (rotator/tasks.py).
        longest_wait = max(self.task_retry_backoff_max_seconds, self.lease_ttl_seconds / 2)
        needed = self.task_time_limit_seconds + longest_wait
        if self.broker_visibility_timeout_seconds <= needed:
            raise ValueError(
                "ROTATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed "
                "ROTATOR_TASK_TIME_LIMIT_SECONDS plus the longest retry wait, the larger of "
                "ROTATOR_TASK_RETRY_BACKOFF_MAX_SECONDS and half ROTATOR_LEASE_TTL_SECONDS "
                f"({needed:g} s), or Redis redelivers a rotation that is still running"
            )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'rotator.db').resolve()}"

    def fernet(self) -> Fernet:
        """The embedded store's cipher; creates ./var/rotator.key (0600) when no key is set."""
        if self.encryption_key is not None:
            return Fernet(self.encryption_key.get_secret_value().encode())
        if self.database_url and not self.database_url.startswith("sqlite"):
            raise ConfigError(
                "ROTATOR_ENCRYPTION_KEY is not set: with a shared ROTATOR_DATABASE_URL every "
                "host must use the same key, so none is generated (make one with `rotator keygen`)"
            )
        key_file = self.var_dir / "rotator.key"
        try:
            if not key_file.exists():
                self._write_key_file(key_file)
            return Fernet(key_file.read_bytes().strip())
        except OSError as exc:
            raise ConfigError(
                f"ROTATOR_VAR_DIR: cannot use key file {key_file}: {exc.strerror} "
                "(set ROTATOR_ENCRYPTION_KEY, or point ROTATOR_VAR_DIR at a writable directory)"
            ) from None
        except ValueError:
            raise ConfigError(
                f"{key_file} does not hold a Fernet key (restore it, or set "
                "ROTATOR_ENCRYPTION_KEY; values stored under another key cannot be read)"
            ) from None

    def _write_key_file(self, key_file: Path) -> None:
        """Write the key whole, then link it into place: no reader ever sees a partial file."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.var_dir, prefix=".rotator.key.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, key_file)
            except FileExistsError:  # another process made it first; use theirs
                return
        finally:
            os.unlink(temporary)
        log.warning(
            "settings.generated_key",
            path=str(key_file),
            hint="set ROTATOR_ENCRYPTION_KEY in production (rotator keygen)",
        )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with one clear line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule across fields names its variables itself
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            field = str(error["loc"][0])
            problems.append(f"ROTATOR_{field.upper()}: {error['msg']}")
        raise ConfigError("invalid settings", problems) from None
