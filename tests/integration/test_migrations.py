"""The alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from rotator.history import Base, Database

pytestmark = pytest.mark.integration


def test_migrated_schema_matches_the_models(history_url: str) -> None:
    database = Database(history_url)
    try:
        database.upgrade()
        with database.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert differences == []
    finally:
        database.dispose()


def test_upgrade_is_safe_from_several_processes_at_once(history_url: str) -> None:
    """Worker, beat and CLI may start together: every upgrade succeeds, the schema is made once."""
    errors: list[BaseException] = []

    def upgrade() -> None:
        database = Database(history_url)
        try:
            database.upgrade()
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    database = Database(history_url)
    try:
        tables = set(inspect(database.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        database.dispose()
