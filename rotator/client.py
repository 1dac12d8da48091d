"""For applications: cached reads of a secret's CURRENT value, refreshed on auth failure.

An app keeps using the value it read until the TTL runs out, so a store is read
once per secret per TTL however many requests the app serves. When a rotation
changes a password before the TTL is up, the app's next login fails; `call`
(and `connect_postgres`) then re-read the store once and retry once, which is
how an app survives a single-user rotation. A value that still fails after the
re-read is raised, never retried in a loop.

The reader never writes: it runs no migrations, takes no leases and builds only
the stores of the secrets it is asked for.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import structlog
from sqlalchemy import inspect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from rotator.client_postgres import postgres_auth_failed, postgres_connect_kwargs
from rotator.config import Settings, load_settings
from rotator.credential import Credential
from rotator.errors import ConfigError, StoreError, TransientError, UnknownSecret
from rotator.history import Database
from rotator.schedule import Plan, load_plan
from rotator.stores import SecretStore, Stage, StoreContext, store_class

if TYPE_CHECKING:
    from psycopg import Connection

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: Secret name -> the store that keeps it and its path there.
Locator = Callable[[str], tuple[SecretStore, str]]
#: Tells whether an exception means "the target refused this credential".
AuthFailureCheck = Callable[[BaseException], bool]
Clock = Callable[[], float]

DEFAULT_TTL_SECONDS = 300.0
#: While the store cannot be read, a stale value is served and the read retried after this.
STALE_RETRY_SECONDS = 30.0


class NoCurrentValue(StoreError):
    """The store holds no CURRENT version of a secret (nothing adopted or rotated yet)."""


def require_env(name: str, hint: str = "") -> str:
    """The value of environment variable `name`; a ConfigError saying how to set it if unset."""
    value = os.environ.get(name)
    if value:
        return value
    state = "is empty" if value == "" else "is not set"
    how = hint or f"export {name}=... before starting the app, or add it to its .env file"
    raise ConfigError(f"environment variable {name} {state}: {how}")


@dataclass
class _Entry:
    """One cached CURRENT value; the credential's repr hides every value."""

    credential: Credential = field(repr=False)
    version_id: str
    expires_at: float


class SecretReader:
    """Reads secrets' CURRENT values through the SecretStore contract, cached per secret."""

    def __init__(
        self,
        locate: Locator,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        jitter: float = 0.1,
        clock: Clock = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if ttl < 0 or not 0 <= jitter < 1:
            raise ConfigError("SecretReader: ttl must be >= 0 seconds and jitter in [0, 1)")
        self._locate = locate
        self.ttl = ttl
        self.jitter = jitter
        self._clock = clock
        self._on_close = on_close
        self._entries: dict[str, _Entry] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_store(
        cls, store: SecretStore, paths: Mapping[str, str] | None = None, **options: Any
    ) -> SecretReader:
        """A reader over one store; `paths` maps secret names to store paths (default: same)."""
        known = dict(paths) if paths is not None else None

        def locate(name: str) -> tuple[SecretStore, str]:
            if known is None:
                return store, name
            try:
                return store, known[name]
            except KeyError:
                names = ", ".join(sorted(known)) or "none"
                raise UnknownSecret(
                    f"no secret named {name!r} in this reader (known: {names})"
                ) from None

        return cls(locate, **options)

    @classmethod
    def from_schedules(
        cls, path: Path | str | None = None, settings: Settings | None = None, **options: Any
    ) -> SecretReader:
        """A reader over the workers' schedules.yaml and ROTATOR_* settings."""
        settings = settings or load_settings()
        stores = _PlanStores(load_plan(path or settings.schedules), settings)
        return cls(stores.locate, on_close=stores.close, **options)

    # -- reading --------------------------------------------------------------------

    def current(self, name: str) -> Credential:
        """The CURRENT credential of `name`, from the cache while its TTL lasts."""
        entry = self._entries.get(name)
        if entry is not None and self._clock() < entry.expires_at:
            return entry.credential
        with self._name_lock(name):
            entry = self._entries.get(name)
            if entry is not None and self._clock() < entry.expires_at:
                return entry.credential  # another thread read it while we waited
            return self._load(name, stale=entry)

    def get(self, name: str) -> dict[str, Any]:
        """A plain dict copy of the CURRENT value (the app's own use of it)."""
        return self.current(name).as_dict()

    def refresh(self, name: str) -> Credential:
        """Read the store now, whatever the TTL says."""
        with self._name_lock(name):
            return self._load(name, stale=None)

    def invalidate(self, name: str | None = None) -> None:
        """Forget one cached value (or all): the next read goes to the store."""
        with self._lock:
            if name is None:
                self._entries.clear()
            else:
                self._entries.pop(name, None)

    def refresh_after_failure(self, name: str, failed: Credential) -> Credential:
        """The value to retry with after `failed` was refused; one store read per rotation.

        When another thread already replaced `failed` in the cache with a different
        value, that value is returned without a read, so a burst of failing requests
        reads the store once. Values are compared, not objects: a TTL reload caches
        an equal value in a new object, which must not pass for a refreshed one.
        """
        with self._name_lock(name):
            entry = self._entries.get(name)
            if entry is not None and entry.credential != failed:
                return entry.credential
            return self._load(name, stale=None)

    def _load(self, name: str, stale: _Entry | None) -> Credential:
        store, path = self._locate(name)
        try:
            version = store.read(path, Stage.CURRENT)
        except TransientError as exc:
            if stale is None:
                raise
            stale.expires_at = self._clock() + min(self.ttl, STALE_RETRY_SECONDS)
            log.warning("client.stale_value_served", secret=name, error=str(exc))
            return stale.credential
        if version is None:
            raise NoCurrentValue(
                f"secret {name!r} has no CURRENT value in store {_store_name(store)} at "
                f"{path!r}; adopt one with `rotator put {name}`"
            )
        ttl = self.ttl * (1 - random.uniform(0, self.jitter))  # noqa: S311 (spreading load)
        entry = _Entry(version.credential, version.version_id, self._clock() + ttl)
        with self._lock:
            previous = self._entries.get(name)
            self._entries[name] = entry
        if previous is None or previous.version_id != version.version_id:
            log.info("client.secret_loaded", secret=name, version_id=version.version_id)
        return entry.credential

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    # -- using ----------------------------------------------------------------------

    def call(
        self,
        name: str,
        fn: Callable[[Credential], T],
        is_auth_failure: AuthFailureCheck = postgres_auth_failed,
    ) -> T:
        """`fn(credential)`; on an auth failure, re-read the store once and retry once.

        When the store still holds the refused value, the failure is raised at once:
        retrying a value the target refuses would only fail again.
        """
        credential = self.current(name)
        try:
            return fn(credential)
        except Exception as exc:
            if not is_auth_failure(exc):
                raise
            fresh = self.refresh_after_failure(name, credential)
            if fresh == credential:
                raise
        log.info("client.retry_after_refresh", secret=name)
        return fn(fresh)

    @contextmanager
    def credential(
        self, name: str, is_auth_failure: AuthFailureCheck = postgres_auth_failed
    ) -> Iterator[Credential]:
        """A scope using the cached credential; an auth failure inside it drops that value
        from the cache (the exception still propagates), so the next scope reads the store."""
        credential = self.current(name)
        try:
            yield credential
        except Exception as exc:
            if is_auth_failure(exc):
                self._forget(name, credential)
            raise

    def _forget(self, name: str, credential: Credential) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.credential == credential:  # by value, see above
                del self._entries[name]

    def connect_postgres(self, name: str, **kwargs: Any) -> Connection[Any]:
        """A psycopg connection as the secret's user; survives a rotation (see `call`)."""

        def connect(credential: Credential) -> Connection[Any]:
            return psycopg.connect(**postgres_connect_kwargs(credential, **kwargs))

        return self.call(name, connect, postgres_auth_failed)

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Drop the cache and release what the reader opened (the history database)."""
        self.invalidate()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> SecretReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SecretReader(ttl={self.ttl}, cached={sorted(self._entries)})"


def _store_name(store: SecretStore) -> str:
    name = getattr(store, "name", None)
    return repr(name) if isinstance(name, str) else type(store).__name__


class _PlanStores:
    """The stores of a Plan, each built on first use; the history database is opened only
    for an embedded store (AWS and Vault stores never need it)."""

    def __init__(self, plan: Plan, settings: Settings) -> None:
        self.plan = plan
        self.settings = settings
        self._stores: dict[str, SecretStore] = {}
        self._database: Database | None = None
        self._lock = threading.Lock()

    def locate(self, name: str) -> tuple[SecretStore, str]:
        spec = self.plan.secret(name)
        with self._lock:
            store = self._stores.get(spec.store)
            if store is None:
                store = self._build(spec.store)
                self._stores[spec.store] = store
            return store, spec.path

    def _build(self, name: str) -> SecretStore:
        config = self.plan.stores[name]
        database: Database = _NoHistoryDatabase(name)
        if config.type == "embedded":
            if self._database is None:
                self._database = _open_database(self.settings)
            database = self._database
            _check_embedded(name, self.settings, database)
        context = StoreContext(self.settings, database)
        return store_class(config.type).from_config(name, config, context)

    def close(self) -> None:
        with self._lock:
            if self._database is not None:
                self._database.dispose()


class _NoHistoryDatabase(Database):
    """Stands in for the history database in the context of a store that does not use it,
    so an app reading AWS or Vault never opens (or creates) the workers' database."""

    def __init__(self, store: str) -> None:  # deliberately no engine
        self.url = ""
        self.is_sqlite = False
        self._store = store

    @contextmanager
    def session(self) -> Iterator[Any]:
        raise ConfigError(f"store {self._store!r} asked the client for the history database")
        yield  # pragma: no cover


def _open_database(settings: Settings) -> Database:
    """The history database as it is: never created, never migrated here."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        file = url.split("///", 1)[-1]
        if file and file != ":memory:" and not Path(file).is_file():
            raise ConfigError(
                f"history database {file} does not exist: point ROTATOR_DATABASE_URL (or "
                "ROTATOR_VAR_DIR) at the workers' database, or start a worker once to create it"
            )
    try:
        return Database(url)
    except (ArgumentError, NoSuchModuleError, ImportError):
        raise ConfigError(
            "ROTATOR_DATABASE_URL: not a database URL rotator can use (expected "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        ) from None


def _check_embedded(store: str, settings: Settings, database: Database) -> None:
    """The embedded store needs the workers' tables and their key; say so before reading."""
    where = database.engine.url.render_as_string(hide_password=True)
    try:
        has_table = inspect(database.engine).has_table("stored_versions")
    except OperationalError as exc:
        raise TransientError(
            f"store {store!r}: history database {where} unusable: {exc.orig}"
        ) from None
    if not has_table:
        raise ConfigError(
            f"store {store!r}: history database {where} has no rotator tables yet; start a "
            "worker or run `rotator status` once to create them (the client never does)"
        )
    key_file = settings.var_dir / "rotator.key"
    if settings.encryption_key is None and not key_file.is_file():
        raise ConfigError(
            f"store {store!r}: no encryption key: set ROTATOR_ENCRYPTION_KEY to the workers' key "
            f"(or ROTATOR_VAR_DIR to the directory holding their rotator.key; {key_file} is absent)"
        )
