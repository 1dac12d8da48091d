"""Every store keeps the SecretStore contract: the same tests, through the contract only.

Stores come from tests/integration/store_factories.py; a new kind registered
there runs here with no other change.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from rotator.credential import Credential
from rotator.errors import StoreError
from rotator.stores import SecretStore, SecretVersion, Stage
from tests.integration.store_factories import FACTORIES, StoreMaker
from tests.services.moto import unique_secret_name

pytestmark = pytest.mark.integration

STAGES = (Stage.CURRENT, Stage.PENDING, Stage.PREVIOUS)


@pytest.fixture(params=sorted(FACTORIES))
def make_store(request: pytest.FixtureRequest) -> StoreMaker:
    return FACTORIES[request.param](request)


@pytest.fixture
def store(make_store: StoreMaker) -> SecretStore:
    return make_store()


@pytest.fixture
def path() -> str:
    return unique_secret_name("conformance")


def token() -> str:
    return uuid.uuid4().hex


def value() -> Credential:
    return Credential(username="app", password="pw-" + secrets.token_urlsafe(18))


def state(store: SecretStore, path: str) -> dict[Stage, tuple[str | None, Credential] | None]:
    """Stage -> (token, credential) of the version holding it."""
    found: dict[Stage, tuple[str | None, Credential] | None] = {}
    for stage in STAGES:
        version = store.read(path, stage)
        found[stage] = None if version is None else (version.token, version.credential)
    return found


def rotate(store: SecretStore, path: str, run: str, new: Credential) -> SecretVersion:
    """One rotation's store calls, resumable the way the engine resumes a run."""
    pending = store.read(path, Stage.PENDING)
    current = store.read(path, Stage.CURRENT)
    if pending is None and current is not None and current.token == run:
        return current
    version = pending or store.put_pending(path, new, run)
    store.promote(path, version.version_id)
    return version


def test_missing_path_reads_as_nothing(store: SecretStore, path: str) -> None:
    assert state(store, path) == dict.fromkeys(STAGES)


def test_put_pending_is_idempotent_on_its_token(store: SecretStore, path: str) -> None:
    run, first = token(), value()
    written = store.put_pending(path, first, run)

    again = store.put_pending(path, value(), run)  # a replayed create step

    assert again.version_id == written.version_id and again.credential == first
    assert again.stage == Stage.PENDING and again.token == run
    assert state(store, path) == {
        Stage.CURRENT: None,
        Stage.PENDING: (run, first),
        Stage.PREVIOUS: None,
    }


@pytest.mark.parametrize("spend", ["promote", "discard_pending"])
def test_a_spent_token_is_refused(store: SecretStore, path: str, spend: str) -> None:
    store.put_current(path, value(), token())
    run, new = token(), value()
    version = store.put_pending(path, new, run)
    getattr(store, spend)(path, version.version_id)
    before = state(store, path)

    with pytest.raises(StoreError, match="spent"):
        store.put_pending(path, value(), run)

    assert state(store, path) == before


def test_a_second_pending_is_refused(store: SecretStore, path: str) -> None:
    run, first = token(), value()
    store.put_pending(path, first, run)
    other = value()

    with pytest.raises(StoreError, match="already has a PENDING") as caught:
        store.put_pending(path, other, token())

    assert other.password is not None and other.password not in str(caught.value)
    assert state(store, path)[Stage.PENDING] == (run, first)


def test_promote_makes_pending_current_and_twice_is_a_no_op(store: SecretStore, path: str) -> None:
    adopt, old = token(), value()
    store.put_current(path, old, adopt)
    run, new = token(), value()
    version = store.put_pending(path, new, run)

    store.promote(path, version.version_id)
    after_first = state(store, path)
    store.promote(path, version.version_id)

    assert after_first == {
        Stage.CURRENT: (run, new),
        Stage.PENDING: None,
        Stage.PREVIOUS: (adopt, old),
    }
    assert state(store, path) == after_first


def test_previous_is_the_current_before_the_last_rotation(store: SecretStore, path: str) -> None:
    store.put_current(path, value(), token())
    runs = [(token(), value()) for _ in range(2)]
    for run, new in runs:
        rotate(store, path, run, new)

    assert state(store, path) == {
        Stage.CURRENT: runs[1],
        Stage.PENDING: None,
        Stage.PREVIOUS: runs[0],
    }


def test_discard_pending_twice_keeps_current_and_frees_the_stage(
    store: SecretStore, path: str
) -> None:
    adopt, old = token(), value()
    store.put_current(path, old, adopt)
    version = store.put_pending(path, value(), token())

    store.discard_pending(path, uuid.uuid4().hex)  # not the PENDING one: nothing happens
    assert store.read(path, Stage.PENDING) is not None
    store.discard_pending(path, version.version_id)
    store.discard_pending(path, version.version_id)

    assert state(store, path) == {
        Stage.CURRENT: (adopt, old),
        Stage.PENDING: None,
        Stage.PREVIOUS: None,
    }
    run, new = token(), value()
    store.put_pending(path, new, run)
    assert state(store, path)[Stage.PENDING] == (run, new)


def test_put_current_refuses_to_pass_a_pending_unless_told(store: SecretStore, path: str) -> None:
    adopt, old = token(), value()
    store.put_current(path, old, adopt)
    pending_run, pending = token(), value()
    store.put_pending(path, pending, pending_run)
    given_run, given = token(), value()

    with pytest.raises(StoreError, match="PENDING"):
        store.put_current(path, given, given_run)
    assert state(store, path)[Stage.PENDING] == (pending_run, pending)

    store.put_current(path, given, given_run, replace_pending=True)

    assert state(store, path) == {
        Stage.CURRENT: (given_run, given),
        Stage.PENDING: None,
        Stage.PREVIOUS: (adopt, old),
    }


@pytest.mark.parametrize("crash_after", range(6))
def test_a_crash_between_store_calls_resumes_to_the_same_end(
    make_store: StoreMaker, path: str, crash_after: int
) -> None:
    """Run the first calls on one instance, then redo the unfinished part on a fresh one."""
    adopt, first = token(), value()
    runs = [(token(), value()) for _ in range(2)]
    crashed = make_store()
    calls: list[Callable[[], object]] = [lambda: crashed.put_current(path, first, adopt)]
    for run, new in runs:
        calls.append(lambda run=run, new=new: crashed.put_pending(path, new, run))  # type: ignore[misc]
        calls.append(
            lambda run=run: crashed.promote(path, _pending_id(crashed, path, run))  # type: ignore[misc]
        )
    for call in calls[:crash_after]:
        call()

    fresh = make_store()
    if fresh.read(path, Stage.CURRENT) is None:
        fresh.put_current(path, first, adopt)
    finished = max(0, (crash_after - 1) // 2)  # runs whose promote returned (history knows)
    for run, new in runs[finished:]:
        rotate(fresh, path, run, new)

    assert state(make_store(), path) == {
        Stage.CURRENT: runs[1],
        Stage.PENDING: None,
        Stage.PREVIOUS: runs[0],
    }


def _pending_id(store: SecretStore, path: str, run: str) -> str:
    version = store.read(path, Stage.PENDING)
    assert version is not None and version.token == run
    return version.version_id


def test_threads_sharing_one_store_instance_leave_exactly_one_pending(
    store: SecretStore, path: str
) -> None:
    """Threads of one worker race put_pending on one store instance: one wins, the rest fail.

    This proves the in-process serialisation only. Across processes the engine's per-secret
    lease excludes writers; for the AWS store nothing else does (docs/stores.md, Exclusion).
    """
    store.put_current(path, value(), token())
    contenders = [(token(), value()) for _ in range(6)]
    barrier = threading.Barrier(len(contenders))
    won: list[tuple[str, Credential]] = []
    refused: list[StoreError] = []

    def write(run: str, new: Credential) -> None:
        barrier.wait()
        try:
            store.put_pending(path, new, run)
            won.append((run, new))
        except StoreError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=write, args=c) for c in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(won) == 1 and len(refused) == len(contenders) - 1
    assert state(store, path)[Stage.PENDING] == won[0]


def test_no_value_reaches_logs_or_errors(
    store: SecretStore, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = [value() for _ in range(4)]
    errors: list[str] = []
    with capture_logs() as logs:
        store.put_current(path, values[0], token())
        run = token()
        version = store.put_pending(path, values[1], run)
        for attempt in (
            lambda: store.put_pending(path, values[2], token()),
            lambda: store.put_current(path, values[3], token()),
        ):
            with pytest.raises(StoreError) as caught:
                attempt()
            errors.append(str(caught.value))
        store.promote(path, version.version_id)
        with pytest.raises(StoreError) as caught:
            store.put_pending(path, values[3], run)
        errors.append(str(caught.value))

    text = "\n".join([*errors, caplog.text, *(repr(entry) for entry in logs), repr(store)])
    for credential in values:
        assert credential.password is not None and credential.password not in text
