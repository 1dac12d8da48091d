"""Slot claims and skipped triggers in the history database, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from rotator.history import Database, History

pytestmark = pytest.mark.integration


def test_a_slot_is_claimed_once_but_again_by_its_own_run(database: Database) -> None:
    history = History(database)
    assert history.claim_slot("db", "2030-01-01T03:00Z", "run-a") is True
    assert history.claim_slot("db", "2030-01-01T03:00Z", "run-b") is False
    assert history.claim_slot("db", "2030-01-01T03:00Z") is False
    assert history.claim_slot("db", "2030-01-01T03:00Z", "run-a") is True  # a redelivery
    assert history.claim_slot("other", "2030-01-01T03:00Z", "run-b") is True
    assert history.claim_slot("db", "2030-01-08T03:00Z", "run-b") is True
    claim = history.slot_claim("db", "2030-01-01T03:00Z")
    assert claim is not None and claim.run_id == "run-a"


def test_racing_claims_of_one_slot_grant_exactly_one(database: Database) -> None:
    history = History(database)
    granted: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claim(run_id: str) -> None:
        try:
            start.wait()
            if history.claim_slot("db", "slot-1", run_id):
                granted.append(run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(granted) == 1


def test_a_skipped_trigger_is_recorded_once(database: Database) -> None:
    history = History(database)
    history.record_skipped("run-s", "db", "schedule", "slot-1", "in progress")
    history.record_skipped("run-s", "db", "schedule", "slot-1", "in progress")
    runs = history.runs("db")
    assert [(r.id, r.status, r.slot, r.error) for r in runs] == [
        ("run-s", "skipped", "slot-1", "in progress")
    ]
    assert runs[0].finished_at is not None
    assert history.running_runs("db") == []
