"""docs/schedules.md keeps up with the loader: every key documented, the example is the real one."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from rotator import yamlsource
from rotator.durations import format_duration
from rotator.passwords import PasswordPolicy
from rotator.schedule import MAX_NAME_CHARS, MAX_PATH_CHARS, Defaults, ScheduleFile, SecretEntry
from rotators.postgres import PostgresTarget

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "schedules.md").read_text()


@pytest.mark.parametrize(
    "model", [ScheduleFile, Defaults, PasswordPolicy, SecretEntry, PostgresTarget]
)
def test_every_key_is_documented(model: type[BaseModel]) -> None:
    missing = [key for key in model.model_fields if f"| `{key}` |" not in DOC]
    assert not missing, f"docs/schedules.md has no table row for {missing}"


def test_the_complete_example_is_the_root_schedules_yaml() -> None:
    first_block = re.search(r"```yaml\n(.*?)```", DOC, re.S)
    assert first_block is not None
    documented = yaml.safe_load(first_block[1])
    assert documented == yaml.safe_load((ROOT / "schedules.yaml").read_text())


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        return format_duration(value)
    return str(value)


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        (Defaults, ["timezone", "window", "grace", "max_attempts"]),
        (PasswordPolicy, ["length", "require_each_type"]),
        (PostgresTarget, ["port", "dbname", "sslmode", "connect_timeout"]),
    ],
)
def test_the_documented_defaults_are_the_real_ones(model: type[BaseModel], keys: list[str]) -> None:
    for key in keys:
        default = f"`{_shown(model.model_fields[key].default)}`"
        row = rf"\| `{key}` \|(?:[^\n]*?\|)? {re.escape(default)} \|"
        assert re.search(row, DOC), f"{key}: expected the default {default} in its table row"


def test_the_documented_password_exclusions_are_the_real_ones() -> None:
    assert f"`` {PasswordPolicy().exclude_characters} ``" in DOC


def test_the_documented_limits_are_the_real_ones() -> None:
    assert yamlsource.MAX_FILE_BYTES == 10 * 1024 * 1024
    assert "at most 10 MiB" in DOC
    assert f"more than {yamlsource.MAX_VALUES} values" in DOC
    assert f"1 to {MAX_NAME_CHARS} characters" in DOC
    assert f"1 to {MAX_PATH_CHARS} characters" in DOC


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        ("postgres-password", "rotator-postgres.md"),
        ("api-key", "rotator-api-key.md"),
        ("vault-dynamic", "rotator-vault-dynamic.md"),
    ],
)
def test_each_rotator_documents_every_target_key_on_its_page(kind: str, doc: str) -> None:
    from rotator.base import registered_rotators

    page = (ROOT / "docs" / doc).read_text()
    model = registered_rotators()[kind].Target
    missing = [key for key in model.model_fields if not re.search(rf"`{key}[`.]", page)]
    assert not missing, f"docs/{doc} does not mention target keys {missing}"
