"""SecretReader's cache, refresh-and-retry, settings source and helpers, over a real
embedded store on SQLite (no server needed) and an injected clock (no sleeps)."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
import sqlalchemy.exc
from cryptography.fernet import Fernet
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from rotator.client import NoCurrentValue, SecretReader, require_env
from rotator.client_postgres import postgres_auth_failed, postgres_connect_kwargs
from rotator.client_settings import FromRotator, RotatorSettingsSource
from rotator.config import Settings
from rotator.credential import Credential
from rotator.errors import ConfigError, TransientError, UnknownSecret
from rotator.history import Database
from rotator.stores import Stage
from rotator.stores.embedded import EmbeddedStore


class CountingStore(EmbeddedStore):
    """The real embedded store, counting reads and able to act unreachable."""

    def __init__(self, database: Database) -> None:
        super().__init__("local", database, Fernet(Fernet.generate_key()))
        self.reads = 0
        self.down = False
        self.delay = 0.0
        self._count_lock = threading.Lock()

    def read(self, path: str, stage: Stage) -> Any:
        with self._count_lock:
            self.reads += 1
        if self.down:
            raise TransientError(f"store {self.name!r} unreachable: connection refused")
        if self.delay:
            time.sleep(self.delay)  # widens the race window; nothing asserts on time
        return super().read(path, stage)

    def set_current(self, path: str, **fields: Any) -> None:
        self.put_current(path, Credential(fields), token=Fernet.generate_key().decode())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AuthRefused(Exception):
    """Stands for a target refusing a login."""


def refused(exc: BaseException) -> bool:
    return isinstance(exc, AuthRefused)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    database = Database(f"sqlite:///{tmp_path / 'history.db'}")
    database.upgrade()
    store = CountingStore(database)
    store.set_current("billing-db", username="billing", password="first-pass-1")
    yield store
    database.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader(store: CountingStore, clock: Clock) -> SecretReader:
    return SecretReader.from_store(store, ttl=60, jitter=0, clock=clock)


def test_value_is_read_once_per_ttl(
    reader: SecretReader, store: CountingStore, clock: Clock
) -> None:
    assert reader.get("billing-db")["password"] == "first-pass-1"
    store.set_current("billing-db", username="billing", password="second-pass-2")
    clock.now += 59.9
    assert reader.get("billing-db")["password"] == "first-pass-1"
    assert store.reads == 1
    clock.now += 0.1
    assert reader.get("billing-db")["password"] == "second-pass-2"
    assert store.reads == 2


def test_jitter_only_shortens_the_ttl(store: CountingStore, clock: Clock) -> None:
    reader = SecretReader.from_store(store, ttl=100, jitter=0.5, clock=clock)
    reader.current("billing-db")
    clock.now += 49.9
    reader.current("billing-db")
    assert store.reads == 1
    clock.now += 50.1
    reader.current("billing-db")
    assert store.reads == 2


def test_get_returns_a_copy_the_app_may_change(reader: SecretReader) -> None:
    first = reader.get("billing-db")
    first["password"] = "changed"
    assert reader.get("billing-db")["password"] == "first-pass-1"


def test_refresh_and_invalidate_go_to_the_store(reader: SecretReader, store: CountingStore) -> None:
    reader.current("billing-db")
    store.set_current("billing-db", username="billing", password="second-pass-2")
    assert reader.refresh("billing-db").password == "second-pass-2"
    store.set_current("billing-db", username="billing", password="third-pass-3")
    reader.invalidate("billing-db")
    assert reader.current("billing-db").password == "third-pass-3"
    reader.invalidate()
    reader.current("billing-db")
    assert store.reads == 4


def test_many_threads_read_the_store_once_per_ttl(
    reader: SecretReader, store: CountingStore, clock: Clock
) -> None:
    store.delay = 0.05
    barrier = threading.Barrier(32)
    seen: list[str | None] = []

    def work() -> None:
        barrier.wait()
        for _ in range(20):
            seen.append(reader.current("billing-db").password)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.reads == 1
    assert seen == ["first-pass-1"] * 640
    clock.now += 61
    threads = [threading.Thread(target=work) for _ in range(32)]
    barrier.reset()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.reads == 2


def test_secret_without_current_names_it_and_the_fix(store: CountingStore) -> None:
    reader = SecretReader.from_store(store, {"api": "apps/api"})
    with pytest.raises(NoCurrentValue) as caught:
        reader.current("api")
    assert "'api'" in str(caught.value) and "'apps/api'" in str(caught.value)
    assert "rotator put api" in str(caught.value)


def test_unknown_name_lists_the_known_ones(store: CountingStore) -> None:
    reader = SecretReader.from_store(store, {"billing-db": "billing-db"})
    with pytest.raises(UnknownSecret, match=r"'orders-db'.*known: billing-db"):
        reader.current("orders-db")


def test_stale_value_served_while_store_is_down(
    reader: SecretReader, store: CountingStore, clock: Clock
) -> None:
    reader.current("billing-db")
    store.down = True
    clock.now += 61
    assert reader.current("billing-db").password == "first-pass-1"
    assert reader.current("billing-db").password == "first-pass-1"
    assert store.reads == 2  # the failed re-read is not repeated on every request
    store.down = False
    store.set_current("billing-db", username="billing", password="second-pass-2")
    clock.now += 31
    assert reader.current("billing-db").password == "second-pass-2"


def test_store_down_with_nothing_cached_raises(reader: SecretReader, store: CountingStore) -> None:
    store.down = True
    with pytest.raises(TransientError, match="'local' unreachable"):
        reader.current("billing-db")


def test_call_refreshes_once_and_retries_after_an_auth_failure(
    reader: SecretReader, store: CountingStore
) -> None:
    reader.current("billing-db")
    store.set_current("billing-db", username="billing", password="second-pass-2")
    attempts: list[str | None] = []

    def login(credential: Credential) -> str:
        attempts.append(credential.password)
        if credential.password != "second-pass-2":
            raise AuthRefused("password authentication failed")
        return "connected"

    assert reader.call("billing-db", login, refused) == "connected"
    assert attempts == ["first-pass-1", "second-pass-2"]
    assert store.reads == 2
    assert reader.current("billing-db").password == "second-pass-2"


def test_call_raises_when_the_store_holds_the_refused_value(
    reader: SecretReader, store: CountingStore
) -> None:
    attempts = 0

    def login(credential: Credential) -> None:
        nonlocal attempts
        attempts += 1
        raise AuthRefused("password authentication failed")

    with pytest.raises(AuthRefused):
        reader.call("billing-db", login, refused)
    assert attempts == 1
    assert store.reads == 2


def test_call_retries_only_once_when_the_new_value_also_fails(
    reader: SecretReader, store: CountingStore
) -> None:
    reader.current("billing-db")
    store.set_current("billing-db", username="billing", password="second-pass-2")
    attempts = 0

    def login(credential: Credential) -> None:
        nonlocal attempts
        attempts += 1
        raise AuthRefused("password authentication failed")

    with pytest.raises(AuthRefused):
        reader.call("billing-db", login, refused)
    assert attempts == 2


def test_call_does_not_retry_other_errors(reader: SecretReader, store: CountingStore) -> None:
    def broken(credential: Credential) -> None:
        raise ValueError("not an auth failure")

    with pytest.raises(ValueError):
        reader.call("billing-db", broken, refused)
    assert store.reads == 1


def test_a_burst_of_auth_failures_reads_the_store_once(
    reader: SecretReader, store: CountingStore
) -> None:
    stale = reader.current("billing-db")
    store.set_current("billing-db", username="billing", password="second-pass-2")
    store.delay = 0.02
    barrier = threading.Barrier(16)
    results: list[str | None] = []

    def work() -> None:
        barrier.wait()
        results.append(reader.refresh_after_failure("billing-db", stale).password)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["second-pass-2"] * 16
    assert store.reads == 2


def test_call_refreshes_after_a_ttl_reload_of_the_same_value(
    reader: SecretReader, store: CountingStore, clock: Clock
) -> None:
    """While a login with the held value is under way, another caller reloads the same value
    at TTL expiry (a new Credential object) and then the secret rotates: the refused caller
    still reads the store and retries with the new value."""
    attempts: list[str | None] = []

    def login(credential: Credential) -> str:
        attempts.append(credential.password)
        if len(attempts) == 1:
            clock.now += 61
            reader.current("billing-db")  # TTL reload by another request: same value
            store.set_current("billing-db", username="billing", password="second-pass-2")
        if credential.password != "second-pass-2":
            raise AuthRefused("password authentication failed")
        return "connected"

    assert reader.call("billing-db", login, refused) == "connected"
    assert attempts == ["first-pass-1", "second-pass-2"]
    assert reader.current("billing-db").password == "second-pass-2"


def test_scope_drops_a_refused_value_reloaded_in_between(
    reader: SecretReader, store: CountingStore, clock: Clock
) -> None:
    """A refused value is dropped even when a TTL reload replaced the cached object with an
    equal one while the scope ran."""
    with pytest.raises(AuthRefused), reader.credential("billing-db", refused):
        clock.now += 61
        reader.current("billing-db")
        store.set_current("billing-db", username="billing", password="second-pass-2")
        raise AuthRefused("password authentication failed")
    with reader.credential("billing-db", refused) as cred:
        assert cred.password == "second-pass-2"


def test_scope_drops_the_value_after_an_auth_failure_only(
    reader: SecretReader, store: CountingStore
) -> None:
    with pytest.raises(ValueError), reader.credential("billing-db", refused):
        raise ValueError("unrelated")
    store.set_current("billing-db", username="billing", password="second-pass-2")
    with reader.credential("billing-db", refused) as cred:
        assert cred.password == "first-pass-1"
    with pytest.raises(AuthRefused), reader.credential("billing-db", refused):
        raise AuthRefused("password authentication failed")
    with reader.credential("billing-db", refused) as cred:
        assert cred.password == "second-pass-2"
    assert store.reads == 2


def test_reprs_and_errors_never_show_a_value(reader: SecretReader) -> None:
    reader.current("billing-db")
    assert "first-pass-1" not in repr(reader)
    assert "first-pass-1" not in repr(reader._entries)
    with reader.credential("billing-db") as cred:
        assert "first-pass-1" not in f"{cred!r} {cred}"


def test_postgres_auth_failed_recognises_refused_logins() -> None:
    refused_login = psycopg.OperationalError(
        'connection failed: FATAL:  password authentication failed for user "app"'
    )
    assert postgres_auth_failed(psycopg.errors.InvalidPassword("refused"))
    assert postgres_auth_failed(psycopg.errors.InvalidAuthorizationSpecification("no entry"))
    assert postgres_auth_failed(refused_login)
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, refused_login)
    assert postgres_auth_failed(wrapped)
    try:
        raise RuntimeError("pool gave up") from refused_login
    except RuntimeError as chained:
        assert postgres_auth_failed(chained)
    assert not postgres_auth_failed(psycopg.OperationalError("connection refused"))
    assert not postgres_auth_failed(psycopg.errors.UndefinedTable("no table"))
    assert not postgres_auth_failed(ValueError("password authentication failed"))


def test_postgres_connect_kwargs_come_from_the_secret() -> None:
    credential = Credential(
        engine="postgres", host="db", port=5433, dbname="billing", username="app", password="pw-1"
    )
    kwargs = postgres_connect_kwargs(credential, dbname="reports", connect_timeout=3)
    assert kwargs == {
        "host": "db",
        "port": 5433,
        "dbname": "reports",
        "user": "app",
        "password": "pw-1",
        "connect_timeout": 3,
    }
    with pytest.raises(ConfigError, match="do not pass one"):
        postgres_connect_kwargs(credential, password="other")
    with pytest.raises(ConfigError, match="no host") as caught:
        postgres_connect_kwargs(Credential(username="app", password="pw-secret-1"))
    assert "pw-secret-1" not in str(caught.value)


def test_require_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_REGION", "eu-west-1")
    assert require_env("APP_REGION") == "eu-west-1"
    monkeypatch.delenv("APP_MISSING", raising=False)
    with pytest.raises(ConfigError, match="APP_MISSING is not set: export APP_MISSING="):
        require_env("APP_MISSING")
    monkeypatch.setenv("APP_EMPTY", "")
    with pytest.raises(ConfigError, match="APP_EMPTY is empty: see the runbook"):
        require_env("APP_EMPTY", hint="see the runbook")


class AppSettings(BaseSettings):
    database_password: Annotated[SecretStr, FromRotator("billing-db")]
    database_user: Annotated[str, FromRotator("billing-db", "username")]
    whole: Annotated[dict[str, Any], FromRotator("billing-db", None)] = Field(alias="db")
    region: str = "eu-west-1"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, RotatorSettingsSource(settings_cls, READER[0]), env_settings)


READER: list[SecretReader] = []


@pytest.fixture
def app_reader(reader: SecretReader) -> Iterator[SecretReader]:
    READER[:] = [reader]
    yield reader
    READER.clear()


def test_settings_source_fills_marked_fields(
    app_reader: SecretReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "from-the-environment")
    monkeypatch.setenv("REGION", "us-east-1")
    settings = AppSettings()  # type: ignore[call-arg]
    assert settings.database_password.get_secret_value() == "first-pass-1"
    assert settings.database_user == "billing"
    assert settings.whole == {"username": "billing", "password": "first-pass-1"}
    assert settings.region == "us-east-1"
    assert "first-pass-1" not in repr(settings.database_password)


def test_settings_source_hands_over_secretstr(app_reader: SecretReader) -> None:
    state = RotatorSettingsSource(AppSettings, app_reader)()
    assert isinstance(state["database_password"], SecretStr)
    assert "first-pass-1" not in repr(state["database_password"])
    assert set(state) == {"database_password", "database_user", "db"}


def test_settings_source_names_a_missing_field(reader: SecretReader) -> None:
    class Bad(BaseSettings):
        token: Annotated[SecretStr, FromRotator("billing-db", "api_token")]

    with pytest.raises(ConfigError, match="'billing-db' has no field 'api_token'") as caught:
        RotatorSettingsSource(Bad, reader)()
    assert "first-pass-1" not in str(caught.value)


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(var_dir=tmp_path / "var", **values)


SCHEDULES = """\
version: 1
stores: {local: {type: embedded}}
secrets:
  billing-db:
    rotator: postgres-password
    store: local
    every: 30d
    target: {host: db.internal, username: billing}
"""


def test_from_schedules_refuses_a_missing_history_file(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    reader = SecretReader.from_schedules(schedules, _settings(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        reader.current("billing-db")
    assert not (tmp_path / "var").exists()  # nothing created on the way


def test_from_schedules_refuses_a_database_without_tables(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Database(url).engine.connect().close()  # an empty database file
    with SecretReader.from_schedules(schedules, _settings(tmp_path, database_url=url)) as reader:
        with pytest.raises(ConfigError, match=r"no rotator tables yet.*rotator status"):
            reader.current("billing-db")
        with pytest.raises(UnknownSecret, match="'nope'"):
            reader.current("nope")


def test_from_schedules_reads_through_the_plan(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(SCHEDULES)
    url = f"sqlite:///{tmp_path / 'history.db'}"
    database = Database(url)
    database.upgrade()
    key = Fernet.generate_key()
    EmbeddedStore("local", database, Fernet(key)).put_current(
        "billing-db", Credential(username="billing", password="adopted-1"), token="t1"
    )
    database.dispose()
    no_key = _settings(tmp_path, database_url=url)
    with (
        SecretReader.from_schedules(schedules, no_key) as reader,
        pytest.raises(ConfigError, match="ROTATOR_ENCRYPTION_KEY"),
    ):
        reader.current("billing-db")
    assert not (tmp_path / "var" / "rotator.key").exists()
    settings = _settings(tmp_path, database_url=url, encryption_key=key.decode())
    with SecretReader.from_schedules(schedules, settings) as reader:
        assert reader.get("billing-db")["password"] == "adopted-1"


def _no_value_in(exc: BaseException, value: str) -> None:
    """Neither the error nor anything chained to it shows `value`."""
    seen: BaseException | None = exc
    while seen is not None:
        assert value not in f"{seen} {seen!r}"
        seen = seen.__cause__ or seen.__context__
    assert value not in "".join(traceback.format_exception(exc))


def test_secret_that_does_not_fit_a_model_field_names_the_field_not_the_value(
    store: CountingStore,
) -> None:
    store.set_current("stripe-key", api_key="sk_live_abcdef123456")

    class Stripe(BaseModel):
        key: SecretStr  # the secret says api_key: a misfit

    class Bad(BaseSettings):
        stripe: Annotated[Stripe, FromRotator("stripe-key", None)]

    with pytest.raises(ConfigError) as caught:
        RotatorSettingsSource(Bad, SecretReader.from_store(store))()
    message = str(caught.value)
    assert "'stripe'" in message and "'stripe-key'" in message and "key (missing)" in message
    _no_value_in(caught.value, "sk_live_abcdef123456")


def test_password_in_a_non_secret_field_is_a_config_error_without_the_value(
    reader: SecretReader,
) -> None:
    class Bad(BaseSettings):
        port: Annotated[int, FromRotator("billing-db", "password")] = 0

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], **sources: PydanticBaseSettingsSource
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (RotatorSettingsSource(settings_cls, reader),)

    with pytest.raises(
        ConfigError, match=r"'port' does not fit secret 'billing-db' field 'password': int_parsing;"
    ) as caught:
        Bad()
    _no_value_in(caught.value, "first-pass-1")


def test_constraints_on_a_marked_field_are_checked_without_showing_the_value(
    reader: SecretReader,
) -> None:
    class Bad(BaseSettings):
        pin: Annotated[str, FromRotator("billing-db", "password"), Field(max_length=4)]

    with pytest.raises(ConfigError, match="string_too_long") as caught:
        RotatorSettingsSource(Bad, reader)()
    _no_value_in(caught.value, "first-pass-1")


def test_optional_and_union_secretstr_fields_get_a_secretstr(reader: SecretReader) -> None:
    class App(BaseSettings):
        maybe: Annotated[SecretStr | None, FromRotator("billing-db")] = None
        either: Annotated[str | SecretStr, FromRotator("billing-db")] = ""
        user: Annotated[str, FromRotator("billing-db", "username")] = ""

    state = RotatorSettingsSource(App, reader)()
    assert isinstance(state["maybe"], SecretStr) and isinstance(state["either"], SecretStr)
    assert state["maybe"].get_secret_value() == "first-pass-1"
    assert state["user"] == "billing"
    assert "first-pass-1" not in repr(state)
