"""Retirement after grace: scheduled durably with the run's outcome, done once, retried, recorded.

The rotator is `token-file` (tests/integration/token_rotator.py): a real file of accepted
tokens, whose `retire` removes a token, like an API key or a Vault lease being revoked.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from rotator.config import Settings
from rotator.credential import Credential
from rotator.errors import ConfigError, TransientError
from rotator.history import Retirement, utcnow
from rotator.retirement import Retirements, retire_due
from rotator.runtime import Runtime, build_runtime
from rotator.schedule import load_plan
from rotator.stores import Stage
from tests.integration.conftest import Crash, crash_at
from tests.integration.token_rotator import registry, revoked

pytestmark = pytest.mark.integration

Make = Callable[..., Runtime]
LATER = timedelta(hours=2)


def schedules(tokens: Path, grace: str = "1h", every: str = "30d", extra: str = "") -> str:
    return (
        "version: 1\nstores: {local: {type: embedded}}\nsecrets:\n"
        f"  api:\n    rotator: token-file\n    store: local\n    every: {every}\n"
        f"    grace: {grace}\n    max_attempts: 2\n{extra}    target: {{path: '{tokens}'}}\n"
    )


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    return tmp_path / "tokens"


@pytest.fixture
def make(tmp_path: Path, history_url: str, tokens: Path) -> Iterator[Make]:
    """Runtimes with token-file installed, all on one history database and key."""
    built: list[Runtime] = []
    key = SecretStr(Fernet.generate_key().decode())

    def build(text: str | None = None) -> Runtime:
        path = tmp_path / "schedules.yaml"
        path.write_text(text or schedules(tokens))
        settings = Settings(
            schedules=path,
            database_url=history_url,
            encryption_key=key,
            var_dir=tmp_path / "var",
            lease_ttl_seconds=30.0,
        )
        runtime = build_runtime(settings, retry_wait_seconds=0.01, rotators=registry())
        built.append(runtime)
        return runtime

    yield build
    for runtime in built:
        runtime.close()


def current(runtime: Runtime) -> str:
    version = runtime.engine.store_for(runtime.plan.secret("api")).read("api", Stage.CURRENT)
    assert version is not None
    return str(version.credential.get("token"))


def adopt_first(runtime: Runtime, tokens: Path) -> str:
    first = secrets.token_urlsafe(24)
    tokens.write_text(first + "\n")
    runtime.engine.adopt("api", Credential(token=first), rotate=False)
    return first


def rows(runtime: Runtime) -> list[Retirement]:
    with runtime.database.session() as session:
        return list(session.scalars(select(Retirement).order_by(Retirement.id)))


def test_the_previous_credential_is_retired_once_its_grace_has_passed(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    result = runtime.engine.run("api")
    assert result.outcome == "succeeded"
    second = current(runtime)
    (row,) = rows(runtime)
    assert row.status == "scheduled"
    assert timedelta(minutes=59) < row.due_at - utcnow() <= timedelta(hours=1)
    # Within the grace period both work: clients still holding the old one are not cut off.
    assert retire_due(runtime.engine, "api") == []
    assert set(tokens.read_text().split()) == {first, second}

    (done,) = retire_due(runtime.engine, "api", utcnow() + LATER)
    assert done.outcome == "retired"
    assert tokens.read_text().split() == [second]
    assert revoked(tokens) == [first]
    (row,) = rows(runtime)
    assert (row.status, row.attempts, row.retired_at is not None) == ("retired", 0, True)
    steps = [(s.step, s.status) for s in runtime.history.steps(result.run_id)]
    assert steps[-1] == ("retire", "ok")
    # Done once: a second pass (a resent task) finds nothing due.
    assert retire_due(runtime.engine, "api", utcnow() + LATER) == []
    assert revoked(tokens) == [first]


def test_a_scheduled_retirement_survives_a_restart(make: Make, tokens: Path) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.run("api")
    runtime.close()
    restarted = make()  # a new process: only the history database remembers
    (done,) = retire_due(restarted.engine, "api", utcnow() + LATER)
    assert done.outcome == "retired"
    assert revoked(tokens) == [first]


def test_a_failing_retirement_is_postponed_recorded_and_retried(make: Make, tokens: Path) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    run = runtime.engine.run("api")
    down = tokens.with_name("tokens.down")
    down.touch()
    (attempt,) = retire_due(runtime.engine, "api", utcnow() + LATER)
    assert attempt.outcome == "retry"
    assert attempt.error is not None and "tokens is down" in attempt.error
    (row,) = rows(runtime)
    assert (row.status, row.attempts) == ("scheduled", 1)
    assert row.due_at > utcnow()  # tried again later, not in a tight loop
    assert ("retire", "retry") in [(s.step, s.status) for s in runtime.history.steps(run.run_id)]
    assert first in tokens.read_text().split()

    down.unlink()
    (done,) = retire_due(runtime.engine, "api", row.due_at + timedelta(seconds=1))
    assert done.outcome == "retired"
    assert revoked(tokens) == [first]


def test_a_rotation_retires_an_outgoing_previous_early_rather_than_lose_it(
    make: Make, tokens: Path
) -> None:
    """Two rotations within one grace period: the oldest value leaves the store at the second
    promote, so it is retired then; nothing could revoke it afterwards."""
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.run("api")
    second = current(runtime)
    runtime.engine.run("api")
    third = current(runtime)
    assert revoked(tokens) == [first]
    assert set(tokens.read_text().split()) == {second, third}
    statuses = [(r.status, r.version_id) for r in rows(runtime)]
    assert [status for status, _ in statuses] == ["retired", "scheduled"]
    (done,) = retire_due(runtime.engine, "api", utcnow() + LATER)
    assert done.outcome == "retired"
    assert revoked(tokens) == [first, second]


def test_a_rolled_back_rotation_retires_the_rejected_pending(make: Make, tokens: Path) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    tokens.with_name("tokens.refuse").touch()  # the target accepts no new token
    result = runtime.engine.run("api")
    assert result.outcome == "rolled_back"
    assert current(runtime) == first
    (rejected,) = revoked(tokens)
    assert rejected != first
    assert rows(runtime) == []  # nothing was promoted, nothing else to retire


def test_adopting_schedules_the_old_current_but_not_the_same_value(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.adopt("api", Credential(token=first), rotate=False)  # the same value again
    assert rows(runtime) == []
    replacement = secrets.token_urlsafe(24)
    tokens.write_text(f"{first}\n{replacement}\n")
    runtime.engine.adopt("api", Credential(token=replacement), rotate=False)
    (row,) = rows(runtime)
    assert row.status == "scheduled"
    retire_due(runtime.engine, "api", utcnow() + LATER)
    assert revoked(tokens) == [first]
    assert tokens.read_text().split() == [replacement]


def test_a_retirement_whose_version_left_the_store_is_given_up_with_a_reason(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    adopt_first(runtime, tokens)
    runtime.engine.run("api")
    (row,) = rows(runtime)
    with runtime.database.session() as session:  # as if another tool rewrote the secret
        session.get(Retirement, row.id).version_id = "v-gone"  # type: ignore[union-attr]
    (outcome,) = retire_due(runtime.engine, "api", utcnow() + LATER)
    assert outcome.outcome == "failed"
    assert outcome.error is not None and "revoke it by hand" in outcome.error
    assert rows(runtime)[0].status == "failed"


def test_grace_must_be_shorter_than_the_schedule_for_a_rotator_that_retires(
    tmp_path: Path, tokens: Path
) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(schedules(tokens, grace="2d", every="1d"))
    with pytest.raises(ConfigError) as raised:
        load_plan(path, registry())
    (problem,) = raised.value.problems
    assert problem.startswith(f"{path}:8: secrets.api.grace: grace 2d is not shorter")
    path.write_text(schedules(tokens, grace="1h", every="0 3 * * *").replace("every:", "cron:"))
    assert load_plan(path, registry()).secret("api").grace == timedelta(hours=1)
    path.write_text(schedules(tokens, grace="1d").replace("every: 30d", "cron: '0 3 * * *'"))
    with pytest.raises(ConfigError, match=r"shorter than the time between rotations \(1d"):
        load_plan(path, registry())


def test_the_scheduled_list_names_versions_never_values(make: Make, tokens: Path) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.run("api")
    (row,) = Retirements(runtime.database).scheduled("api")
    text = repr(row.__dict__)
    assert first not in text and current(runtime) not in text


def test_re_adopting_the_previous_value_cancels_its_retirement_instead_of_revoking_it(
    make: Make, tokens: Path
) -> None:
    """Going back to the previous key by hand must not revoke the key now in use."""
    runtime = make()
    first = adopt_first(runtime, tokens)
    assert runtime.engine.run("api").outcome == "succeeded"
    second = current(runtime)
    runtime.engine.adopt("api", Credential(token=first), rotate=False)
    assert current(runtime) == first
    assert first in tokens.read_text().split()
    retire_due(runtime.engine, "api", utcnow() + LATER)  # `second` is retired after grace
    assert tokens.read_text().split() == [first]
    assert revoked(tokens) == [second]
    assert sorted(r.status for r in rows(runtime)) == ["cancelled", "retired"]


def test_an_adoption_that_settles_a_promoted_run_keeps_its_retirement(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)

    runtime.engine.step_hook = crash_at("promoted")
    with pytest.raises(Crash):
        runtime.engine.run("api")
    runtime.engine.step_hook = None
    third = secrets.token_urlsafe(24)
    tokens.write_text(tokens.read_text() + third + "\n")
    runtime.engine.adopt("api", Credential(token=third), rotate=False)
    for _ in range(2):
        retire_due(runtime.engine, "api", utcnow() + LATER)
    assert first in revoked(tokens)  # pushed out by the adoption: retired early, not lost
    assert tokens.read_text().split() == [third]


def test_an_adoption_interrupted_before_its_record_still_retires_what_it_replaced(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    second = secrets.token_urlsafe(24)
    tokens.write_text(f"{first}\n{second}\n")
    history = runtime.engine.history
    real = history.finish_run

    def dies_recording_the_adoption(run_id: str, status: str, *args: object, **kw: object) -> bool:
        if status == "adopted":
            raise Crash
        return real(run_id, status, *args, **kw)  # type: ignore[arg-type]

    history.finish_run = dies_recording_the_adoption  # type: ignore[method-assign]
    with pytest.raises(Crash):
        runtime.engine.adopt("api", Credential(token=second), rotate=False)
    history.finish_run = real  # type: ignore[method-assign]
    runtime.engine.run("api")  # settles the adoption first
    for _ in range(3):
        retire_due(runtime.engine, "api", utcnow() + LATER)
    assert first in revoked(tokens)


def test_an_early_retirement_that_fails_transiently_fails_the_run_and_is_kept(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.run("api")
    down = tokens.with_name("tokens.down")

    def target_goes_down(point: str) -> None:
        if point == "tested":
            down.touch()

    runtime.engine.step_hook = target_goes_down
    result = runtime.engine.run("api")
    runtime.engine.step_hook = None
    down.unlink()
    assert result.outcome == "failed" and (result.error or "").startswith("TransientError")
    assert [r.status for r in rows(runtime)] == ["scheduled"]
    again = runtime.engine.run("api")  # the task's retry: resumes PENDING, retires first
    assert again.outcome == "succeeded"
    assert first in revoked(tokens) and first not in tokens.read_text().split()


def test_a_changed_target_block_gives_a_retirement_up_instead_of_faking_it(
    make: Make, tokens: Path, tmp_path: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)
    runtime.engine.run("api")
    moved = make(schedules(tmp_path / "other-tokens"))
    (outcome,) = retire_due(moved.engine, "api", utcnow() + LATER)
    assert outcome.outcome == "failed"
    assert outcome.error is not None and "target block of 'api' changed" in outcome.error
    assert "revoke it by hand" in outcome.error
    assert first in tokens.read_text().split() and revoked(tokens) == []


def test_retirement_errors_never_carry_the_current_value(make: Make, tokens: Path) -> None:
    runtime = make()
    adopt_first(runtime, tokens)
    runtime.engine.run("api")
    value = current(runtime)
    rotator_cls = runtime.engine.rotators["token-file"]

    class Leaky(rotator_cls):  # type: ignore[misc,valid-type]
        def retire(self, previous: Credential) -> None:
            raise TransientError(f"provider said: bad header Bearer {value}")

    runtime.engine.rotators = {**runtime.engine.rotators, "token-file": Leaky}
    (outcome,) = retire_due(runtime.engine, "api", utcnow() + LATER)
    assert outcome.outcome == "retry"
    assert value not in (outcome.error or "")
    (row,) = rows(runtime)
    assert value not in (row.last_error or "")


def test_an_expired_pending_is_retired_and_dropped_and_the_next_run_starts_afresh(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    first = adopt_first(runtime, tokens)

    runtime.engine.step_hook = crash_at("created")
    with pytest.raises(Crash):
        runtime.engine.run("api")
    runtime.engine.step_hook = None
    store = runtime.engine.store_for(runtime.plan.secret("api"))
    stale = store.read("api", Stage.PENDING)
    assert stale is not None
    expired = tokens.with_name("tokens.expired")
    expired.touch()
    result = runtime.engine.run("api", run_id=stale.token)
    assert result.outcome == "rolled_back" and "expired before its run could finish" in (
        result.error or ""
    )
    redelivered = runtime.engine.run("api", run_id=stale.token)  # final: nothing generated
    assert (redelivered.outcome, redelivered.run_id) == ("rolled_back", stale.token)
    assert store.read("api", Stage.PENDING) is None
    assert revoked(tokens) == [stale.credential.get("token")]
    expired.unlink()
    assert runtime.engine.run("api").outcome == "succeeded"
    assert current(runtime) not in (first, stale.credential.get("token"))


def test_an_expired_pending_that_cannot_be_retired_is_kept(make: Make, tokens: Path) -> None:
    """Retiring failed: the target may still accept it, so PENDING stays (invariant 1)."""
    runtime = make()
    adopt_first(runtime, tokens)

    runtime.engine.step_hook = crash_at("applied")
    with pytest.raises(Crash):
        runtime.engine.run("api")
    runtime.engine.step_hook = None
    store = runtime.engine.store_for(runtime.plan.secret("api"))
    pending = store.read("api", Stage.PENDING)
    assert pending is not None
    tokens.with_name("tokens.expired").touch()
    tokens.with_name("tokens.down").touch()
    result = runtime.engine.run("api")
    assert result.outcome == "failed"
    kept = store.read("api", Stage.PENDING)
    assert kept is not None and kept.version_id == pending.version_id


def test_a_retirement_that_never_succeeds_holds_rotations_back_only_a_few_times(
    make: Make, tokens: Path
) -> None:
    from rotator.retirement import EARLY_ATTEMPTS

    runtime = make()
    first = adopt_first(runtime, tokens)
    assert runtime.engine.run("api").outcome == "succeeded"
    rotator_cls = runtime.engine.rotators["token-file"]

    class NeverRevokes(rotator_cls):  # type: ignore[misc,valid-type]
        def retire(self, previous: Credential) -> None:
            raise TransientError("the provider answers 500 to every revoke")

    runtime.engine.rotators = {**runtime.engine.rotators, "token-file": NeverRevokes}
    outcomes = [runtime.engine.run("api").outcome for _ in range(EARLY_ATTEMPTS)]
    assert outcomes == ["failed"] * (EARLY_ATTEMPTS - 1) + ["succeeded"]
    given_up = [r for r in rows(runtime) if r.status == "failed"]
    assert len(given_up) == 1 and "revoke it by hand" in (given_up[0].last_error or "")
    assert given_up[0].attempts == EARLY_ATTEMPTS - 1
    assert first in tokens.read_text().split()  # still live: the operator was told


def test_an_adoption_scrubs_the_old_current_from_retirement_errors(
    make: Make, tokens: Path
) -> None:
    runtime = make()
    adopt_first(runtime, tokens)
    runtime.engine.run("api")
    value = current(runtime)
    rotator_cls = runtime.engine.rotators["token-file"]

    class Quotes(rotator_cls):  # type: ignore[misc,valid-type]
        def retire(self, previous: Credential) -> None:
            raise ConfigError(f"provider said: request with Bearer {value} refused")

    runtime.engine.rotators = {**runtime.engine.rotators, "token-file": Quotes}
    third = secrets.token_urlsafe(24)
    tokens.write_text(tokens.read_text() + third + "\n")
    runtime.engine.adopt("api", Credential(token=third), rotate=False)
    texts = [r.last_error or "" for r in rows(runtime)]
    texts += [
        s.detail or "" for run in runtime.history.runs("api") for s in runtime.history.steps(run.id)
    ]
    assert any("provider said" in text for text in texts)
    assert not any(value in text for text in texts)
