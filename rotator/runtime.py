"""Wiring: settings -> database -> history, leases, stores -> engine.

The CLI, the Celery tasks, beat and the demo all build their engine here,
so they behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rotator.base import registered_rotators
from rotator.config import Settings, load_settings
from rotator.engine import Engine, StepHook
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
        self.database.dispose()


def open_database(settings: Settings) -> Database:
    """The history database, migrated to the newest schema."""
    database = Database(settings.resolved_database_url)
    database.upgrade()
    return database


def build_runtime(
    settings: Settings | None = None,
    plan: Plan | None = None,
    schedules: Path | None = None,
    step_hook: StepHook | None = None,
    retry_wait_seconds: float = 1.0,
) -> Runtime:
    settings = settings or load_settings()
    plan = plan or load_plan(schedules or settings.schedules)
    database = open_database(settings)
    history = History(database)
    leases = LeaseManager(database, timedelta(seconds=settings.lease_ttl_seconds))
    stores = StoreSet(plan.stores, StoreContext(settings, database))
    engine = Engine(
        plan,
        stores,
        history,
        leases,
        registered_rotators(),
        step_hook=step_hook,
        retry_wait_seconds=retry_wait_seconds,
    )
    return Runtime(settings, plan, database, history, leases, stores, engine)
