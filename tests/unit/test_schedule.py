"""A valid schedules.yaml becomes a Plan: defaults resolved, targets checked, ${VAR} expanded."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from rotator.base import SecretRotator
from rotator.errors import ConfigError, UnknownSecret
from rotator.passwords import PasswordPolicy
from rotator.schedule import Plan, load_plan
from rotators.postgres import PostgresTarget

ROOT = Path(__file__).parents[2]
VALID = sorted((Path(__file__).parents[1] / "data" / "schedules" / "valid").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def one_secret(tmp_path: Path, secret: str = "", defaults: str = "", target: str = "") -> Path:
    """A file with store `local` and secret `app` plus the given extra lines."""
    text = "stores:\n  local: {type: embedded}\n"
    if defaults:
        text += "defaults:\n" + textwrap.indent(textwrap.dedent(defaults).strip(), "  ") + "\n"
    text += (
        "secrets:\n  app:\n    rotator: postgres-password\n    store: local\n"
        + textwrap.indent(textwrap.dedent(secret).strip() or "every: 30d", "    ")
        + "\n    target:\n      host: db.internal\n      username: app\n"
        + textwrap.indent(textwrap.dedent(target).strip(), "      ")
    )
    return write(tmp_path, text)


def target_of(plan: Plan, name: str) -> PostgresTarget:
    target = plan.secret(name).target
    assert isinstance(target, PostgresTarget)
    return target


# -- the root example and the valid corpus -----------------------------------------------------


def test_the_root_example_loads_with_no_variables_set() -> None:
    plan = load_plan(ROOT / "schedules.yaml", environ={})
    assert set(plan.secrets) == {
        "pg-admin",
        "billing-db",
        "reports-db",
        "payments-api-admin",
        "payments-api-key",
        "analytics-db",
    }
    assert {spec.rotator for spec in plan.secrets.values()} == {
        "postgres-password",
        "api-key",
        "vault-dynamic",
    }
    assert set(plan.stores) == {"local"}
    admin, billing = plan.secret("pg-admin"), plan.secret("billing-db")
    assert admin.every == timedelta(days=30) and admin.cron is None
    assert billing.cron == "0 3 * * 1" and billing.timezone == "Europe/Berlin"
    assert billing.admin_secret == "pg-admin"
    assert target_of(plan, "billing-db").host == "127.0.0.1"
    assert target_of(plan, "billing-db").port == 5432


def test_the_root_example_takes_host_and_port_from_the_environment() -> None:
    plan = load_plan(ROOT / "schedules.yaml", environ={"PGHOST": "db.prod", "PGPORT": "6432"})
    for name in ("pg-admin", "billing-db"):
        assert (target_of(plan, name).host, target_of(plan, name).port) == ("db.prod", 6432)


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_valid_example_loads(path: Path) -> None:
    assert load_plan(path, environ={}).secrets


def test_merge_keys_share_a_block_and_explicit_keys_win() -> None:
    plan = load_plan(next(p for p in VALID if p.stem == "anchors"), environ={})
    admin, orders = target_of(plan, "pg-admin"), target_of(plan, "orders-db")
    assert (admin.host, admin.port, admin.sslmode) == ("db.internal", 6432, "require")
    assert (orders.host, orders.port, orders.sslmode) == ("db.internal", 5432, "require")


# -- defaults ----------------------------------------------------------------------------------


def test_built_in_defaults(tmp_path: Path) -> None:
    spec = load_plan(one_secret(tmp_path), environ={}).secret("app")
    assert spec.path == "app"
    assert spec.timezone == "UTC"
    assert spec.window == timedelta(hours=1)
    assert spec.grace == timedelta(hours=1)
    assert spec.max_attempts == 5
    assert spec.password == PasswordPolicy()
    assert spec.rotate_on_adopt is True
    target = spec.target
    assert isinstance(target, PostgresTarget)
    assert (target.port, target.dbname, target.sslmode, target.connect_timeout) == (
        5432,
        "postgres",
        "prefer",
        5,
    )
    assert target.admin_secret is None


def test_secrets_inherit_the_defaults_block(tmp_path: Path) -> None:
    path = one_secret(
        tmp_path,
        defaults="timezone: Europe/Paris\nwindow: 2h\ngrace: 1d\nmax_attempts: 9",
        secret="cron: '0 4 * * *'",
    )
    spec = load_plan(path, environ={}).secret("app")
    assert (spec.timezone, spec.window, spec.grace, spec.max_attempts) == (
        "Europe/Paris",
        timedelta(hours=2),
        timedelta(days=1),
        9,
    )


def test_a_secret_overrides_the_defaults(tmp_path: Path) -> None:
    path = one_secret(
        tmp_path,
        defaults="timezone: Europe/Paris\nwindow: 2h\ngrace: 1d\nmax_attempts: 9",
        secret=(
            "cron: '0 4 * * *'\ntimezone: Asia/Tokyo\nwindow: 10m\ngrace: 90s\n"
            "max_attempts: 1\nrotate_on_adopt: false\npath: teams/app/db"
        ),
    )
    spec = load_plan(path, environ={}).secret("app")
    assert (spec.timezone, spec.window, spec.grace, spec.max_attempts) == (
        "Asia/Tokyo",
        timedelta(minutes=10),
        timedelta(seconds=90),
        1,
    )
    assert spec.rotate_on_adopt is False
    assert spec.path == "teams/app/db"


def test_a_secret_password_policy_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    path = one_secret(
        tmp_path,
        defaults="password: {length: 40, exclude_characters: 'xyz', require_each_type: false}",
        secret="every: 30d\npassword: {length: 64}",
    )
    policy = load_plan(path, environ={}).secret("app").password
    assert policy == PasswordPolicy(length=64, exclude_characters="xyz", require_each_type=False)


def test_describe_schedule(tmp_path: Path) -> None:
    assert load_plan(one_secret(tmp_path, secret="every: 1h30m"), environ={}).secret(
        "app"
    ).describe_schedule() == ("every 1h30m")
    path = one_secret(tmp_path, secret="cron: '0 3 * * 1'\ntimezone: Europe/Berlin")
    spec = load_plan(path, environ={}).secret("app")
    assert spec.describe_schedule() == "cron '0 3 * * 1' Europe/Berlin"


# -- ${VAR} ------------------------------------------------------------------------------------


def test_a_set_variable_is_substituted(tmp_path: Path) -> None:
    path = one_secret(tmp_path, target="dbname: ${APP_DB}")
    assert target_of(load_plan(path, environ={"APP_DB": "orders"}), "app").dbname == "orders"


def test_a_default_is_used_when_the_variable_is_unset_or_empty(tmp_path: Path) -> None:
    path = one_secret(tmp_path, target="dbname: ${APP_DB:-fallback}")
    assert target_of(load_plan(path, environ={}), "app").dbname == "fallback"
    assert target_of(load_plan(path, environ={"APP_DB": ""}), "app").dbname == "fallback"
    assert target_of(load_plan(path, environ={"APP_DB": "orders"}), "app").dbname == "orders"


def test_variables_expand_inside_text_and_become_numbers_where_expected(tmp_path: Path) -> None:
    path = one_secret(tmp_path, target="port: ${PORT:-5432}\ndbname: app_${ENV}_db")
    target = target_of(load_plan(path, environ={"PORT": "6543", "ENV": "prod"}), "app")
    assert (target.port, target.dbname) == (6543, "app_prod_db")


def test_os_environ_is_used_when_no_environ_is_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_TEST_DBNAME", "from_env")
    path = one_secret(tmp_path, target="dbname: ${ROTATOR_TEST_DBNAME}")
    assert target_of(load_plan(path), "app").dbname == "from_env"


def test_an_unset_variable_refuses_the_file(tmp_path: Path) -> None:
    path = one_secret(tmp_path, target="dbname: ${APP_DB}")
    with pytest.raises(ConfigError) as info:
        load_plan(path, environ={})
    assert info.value.problems == [
        f"{path}:11: secrets.app.target.dbname: environment variable APP_DB is not set "
        "(set it, or write ${APP_DB:-default})"
    ]


# -- plan lookups and injected rotators --------------------------------------------------------


def test_an_unknown_secret_name_lists_the_declared_ones(tmp_path: Path) -> None:
    plan = load_plan(one_secret(tmp_path), environ={})
    with pytest.raises(UnknownSecret, match=r"no secret named 'nope' .*\(declared: app\)"):
        plan.secret("nope")


class _Token(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    service: str


class _TokenRotator(SecretRotator):
    kind: ClassVar[str] = "token"
    Target: ClassVar[type[BaseModel]] = _Token


def test_the_rotator_registry_can_be_injected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stores: {local: {type: embedded}}
        secrets:
          a: {rotator: token, store: local, every: 1d, target: {service: billing}}
          b: {rotator: token, store: local, every: 1d, target: {service: billing}}
        """,
    )
    plan = load_plan(path, rotators={"token": _TokenRotator}, environ={})
    assert plan.secret("a").target == _Token(service="billing")
    with pytest.raises(ConfigError, match="unknown rotator 'token'"):
        load_plan(path, environ={})


def test_the_plan_is_frozen(tmp_path: Path) -> None:
    spec = load_plan(one_secret(tmp_path), environ={}).secret("app")
    with pytest.raises(AttributeError):
        spec.every = timedelta(days=1)  # type: ignore[misc]


def test_a_list_of_merge_sources_lets_the_earlier_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        x-a: &a {host: a.internal, port: 6001}
        x-b: &b {host: b.internal, port: 6002, dbname: from_b}
        stores: {local: {type: embedded}}
        secrets:
          app:
            rotator: postgres-password
            store: local
            every: 30d
            target:
              <<: [*a, *b]
              username: app
        """,
    )
    target = target_of(load_plan(path, environ={}), "app")
    assert (target.host, target.port, target.dbname) == ("a.internal", 6001, "from_b")
