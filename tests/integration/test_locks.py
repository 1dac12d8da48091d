"""Leases: one holder per secret, renewed while held, fenced when taken over after expiry."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from rotator.errors import LockLost, RotationInProgress
from rotator.history import Database
from rotator.locks import LeaseManager

pytestmark = pytest.mark.integration

SHORT = timedelta(milliseconds=300)


@pytest.fixture
def leases(database: Database) -> LeaseManager:
    return LeaseManager(database, timedelta(seconds=30))


def test_acquire_refuses_a_second_owner_until_release(leases: LeaseManager) -> None:
    fence = leases.try_acquire("db", "a", "run-a")

    assert fence == 1
    assert leases.try_acquire("db", "b") is None
    assert leases.try_acquire("other", "b") == 1  # leases are per secret
    holder = leases.holder("db")
    assert holder is not None and holder.owner == "a" and holder.run_id == "run-a"

    leases.release("db", "a", fence)

    assert leases.holder("db") is None
    assert not leases.still_held("db", "a", fence)
    assert leases.try_acquire("db", "b") == 2


def test_renew_and_release_need_the_owner_and_its_fence(leases: LeaseManager) -> None:
    fence = leases.try_acquire("db", "a")
    assert fence is not None

    assert leases.renew("db", "a", fence)
    assert not leases.renew("db", "b", fence)
    assert not leases.renew("db", "a", fence + 1)
    leases.release("db", "b", fence)  # not the owner: nothing happens
    leases.release("db", "a", fence + 1)

    assert leases.still_held("db", "a", fence)


def test_renew_extends_the_expiry(database: Database) -> None:
    leases = LeaseManager(database, SHORT)
    fence = leases.try_acquire("db", "a")
    assert fence is not None
    time.sleep(0.2)

    assert leases.renew("db", "a", fence)
    time.sleep(0.2)  # past the first expiry, within the renewed one

    assert leases.still_held("db", "a", fence)
    assert leases.try_acquire("db", "b") is None


def test_expired_lease_is_taken_over_with_a_higher_fence(database: Database) -> None:
    leases = LeaseManager(database, SHORT)
    old = leases.try_acquire("db", "a")
    assert old is not None
    time.sleep(0.35)

    assert leases.holder("db") is None
    new = leases.try_acquire("db", "b")

    assert new is not None and new > old
    assert not leases.still_held("db", "a", old)
    assert not leases.renew("db", "a", old)  # the old owner cannot come back
    leases.release("db", "a", old)
    assert leases.still_held("db", "b", new)


def test_hold_refuses_a_held_secret_and_releases_on_exit_and_on_error(
    leases: LeaseManager,
) -> None:
    with leases.hold("db", "run-1") as lease:
        lease.check()
        with pytest.raises(RotationInProgress, match="'db'"), leases.hold("db", "run-2"):
            pass
    assert leases.holder("db") is None

    with pytest.raises(RuntimeError), leases.hold("db", "run-3"):
        raise RuntimeError("the run died")
    assert leases.holder("db") is None


def test_held_lease_is_renewed_in_the_background_past_its_ttl(database: Database) -> None:
    leases = LeaseManager(database, SHORT)
    with leases.hold("db", "run-1") as lease:
        time.sleep(0.7)  # more than two TTLs

        lease.check()
        assert leases.try_acquire("db", "intruder") is None


def test_lost_lease_makes_check_raise_lock_lost(database: Database) -> None:
    leases = LeaseManager(database, timedelta(seconds=30))
    with leases.hold("db", "run-1") as lease:
        lease.check()
        # The lease expires (a stalled process) and another run takes it over.
        leases.release("db", lease.owner, lease.fence)
        thief = leases.try_acquire("db", "thief")
        assert thief == lease.fence + 1

        with pytest.raises(LockLost, match="'db'"):
            lease.check()
    assert leases.still_held("db", "thief", thief)  # leaving the block frees only our own lease


def test_renewal_of_a_lost_lease_never_extends_the_new_holders(database: Database) -> None:
    leases = LeaseManager(database, SHORT)
    with leases.hold("db", "run-1") as lease:
        leases.release("db", lease.owner, lease.fence)
        thief = leases.try_acquire("db", "thief")
        assert thief is not None
        time.sleep(0.45)  # several renewal ticks of ours; the thief never renews

        assert leases.holder("db") is None  # the thief's lease ran out: we did not renew it
        with pytest.raises(LockLost):
            lease.check()
