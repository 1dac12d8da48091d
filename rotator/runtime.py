"""Wiring: settings -> database -> history, leases, stores -> engine.

Every entry point (the CLI commands, the demo) builds its engine here, so
they all behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from rotator.base import RotatorRegistry, registered_rotators
from rotator.config import Settings, load_settings
from rotator.engine import Engine, StepHook
from rotator.errors import ConfigError, TransientError
from rotator.history import Database, History
from rotator.locks import LeaseManager
from rotator.schedule import Plan, load_plan
from rotator.stores import StoreContext
from rotator.storeset import StoreSet


@dataclass
class Runtime:
    settings: Settings
    plan: Plan
    database: Database
    history: History
    leases: LeaseManager
    stores: StoreSet
    engine: Engine

    def close(self) -> None:
        self.stores.close()
        self.database.dispose()


def open_database(settings: Settings) -> Database:
    """The history database, migrated to the newest schema; one clear error if it cannot be."""
    url = settings.resolved_database_url
    try:
        database = Database(url)
    except (ArgumentError, NoSuchModuleError, ImportError):
        raise ConfigError(
            "ROTATOR_DATABASE_URL: not a database URL rotator can use (expected "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"ROTATOR_VAR_DIR / ROTATOR_DATABASE_URL: cannot create the database directory: "
            f"{exc.strerror}"
        ) from None
    try:
        database.upgrade()
    except OSError as exc:
        database.dispose()
        raise ConfigError(
            f"ROTATOR_VAR_DIR / ROTATOR_DATABASE_URL: cannot use the database files: {exc.strerror}"
        ) from None
    except OperationalError as exc:
        database.dispose()
        where = database.engine.url.render_as_string(hide_password=True)
        reason = getattr(exc, "orig", None) or exc
        first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        raise TransientError(f"history database {where} unusable: {first_line}") from None
    return database


def build_runtime(
    settings: Settings | None = None,
    plan: Plan | None = None,
    schedules: Path | None = None,
    step_hook: StepHook | None = None,
    retry_wait_seconds: float = 1.0,
    rotators: RotatorRegistry | None = None,
) -> Runtime:
    """`rotators` replaces the installed ones (the conformance kit passes a plugin's own)."""
    settings = settings or load_settings()
    rotators = registered_rotators() if rotators is None else rotators
    plan = plan or load_plan(schedules or settings.schedules, rotators)
    database = open_database(settings)
    history = History(database)
    leases = LeaseManager(database, timedelta(seconds=settings.lease_ttl_seconds))
    stores = StoreSet(plan.stores, StoreContext(settings, database))
    engine = Engine(
        plan,
        stores,
        history,
        leases,
        rotators,
        step_hook=step_hook,
        retry_wait_seconds=retry_wait_seconds,
    )
    return Runtime(settings, plan, database, history, leases, stores, engine)
