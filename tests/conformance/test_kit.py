"""The conformance suite fails rotators that break the contract, each in the case that names
the broken rule (the real postgres rotator passes them all in test_conformance.py)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rotator.credential import Credential
from rotator.errors import CredentialRejected
from rotator.testing import RotatorConformance
from rotators.postgres import PostgresPasswordRotator
from tests.conformance.harness_postgres import PostgresSelfHarness

pytestmark = pytest.mark.integration

KIND = "postgres-password"


class Repeating(PostgresPasswordRotator):
    """generate() hands out one password again and again."""

    def generate(self, current: Credential | None) -> Credential:
        return self.complete(Credential(password="the-same-password-every-time-0123456789"))


class Weak(PostgresPasswordRotator):
    """generate() makes an 8-character password."""

    def generate(self, current: Credential | None) -> Credential:
        return self.complete(Credential(password=secrets.token_hex(4)))


class TrustsAnything(PostgresPasswordRotator):
    """test() never refuses."""

    def test(self, credential: Credential) -> None:
        return None


class Leaky(PostgresPasswordRotator):
    """test() names the password it was refused."""

    def test(self, credential: Credential) -> None:
        try:
            super().test(credential)
        except CredentialRejected:
            raise CredentialRejected(f"wrong password {credential.password}") from None


class ApplyOnce(PostgresPasswordRotator):
    """apply() refuses a credential that is already set instead of doing nothing."""

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        if pending != self._generated and self._logs_in(pending):
            raise CredentialRejected("that password is set already")
        super().apply(pending, current, previous)


class RetireOnce(PostgresPasswordRotator):
    """retire() fails when asked twice for one credential."""

    retired: ClassVar[set[str]] = set()

    def retire(self, previous: Credential) -> None:
        if str(previous.password) in self.retired:
            raise CredentialRejected("already retired")
        self.retired.add(str(previous.password))


class TrustsReplays(PostgresPasswordRotator):
    """apply() assumes a PENDING it did not generate itself was applied by an earlier run."""

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        if pending == self._generated:
            super().apply(pending, current, previous)


def suite_for(rotator: type[PostgresPasswordRotator]) -> RotatorConformance:
    class Suite(RotatorConformance):
        harnesses = (PostgresSelfHarness,)
        rotators = {KIND: rotator}

    return Suite()


@pytest.mark.parametrize(
    ("rotator", "case", "raised"),
    [
        (Repeating, "test_generate_gives_fresh_strong_values", AssertionError),
        (Weak, "test_generate_gives_fresh_strong_values", AssertionError),
        (TrustsAnything, "test_test_rejects_a_wrong_credential", pytest.fail.Exception),
        (Leaky, "test_no_secret_in_logs_or_error_texts", AssertionError),
        (ApplyOnce, "test_apply_is_idempotent", CredentialRejected),
        (RetireOnce, "test_retire_is_idempotent", CredentialRejected),
    ],
)
def test_a_broken_rule_fails_its_case(
    rotator: type[PostgresPasswordRotator],
    case: str,
    raised: type[BaseException],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    with pytest.raises(raised):
        getattr(suite_for(rotator), case)(PostgresSelfHarness, request, tmp_path)


def test_a_leak_is_reported_without_the_value(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError) as failed:
        suite_for(Leaky).test_no_secret_in_logs_or_error_texts(
            PostgresSelfHarness, request, tmp_path
        )
    assert "secret values in logs or error texts" in str(failed.value)
    assert "-character value starting" in str(failed.value)


def test_a_replay_that_skips_apply_fails_the_crash_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    suite = suite_for(TrustsReplays)
    with pytest.raises(AssertionError, match="rolled_back"):
        suite.test_crash_at_each_step_then_resume(PostgresSelfHarness, "created", request, tmp_path)


def test_the_real_rotator_passes_the_same_cases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The control: the cases above fail because of the breakage, not the set-up."""
    suite = suite_for(PostgresPasswordRotator)
    for case in ("test_generate_gives_fresh_strong_values", "test_retire_is_idempotent"):
        getattr(suite, case)(PostgresSelfHarness, request, tmp_path / case)
    suite.test_crash_at_each_step_then_resume(
        PostgresSelfHarness, "created", request, tmp_path / "crash"
    )


def test_a_kind_without_a_harness_fails_naming_exactly_the_kinds_left() -> None:
    class Suite(RotatorConformance):
        harnesses = (PostgresSelfHarness,)
        rotators = {KIND: PostgresPasswordRotator, "orphan-a": Weak, "orphan-b": Weak}

    with pytest.raises(pytest.fail.Exception) as failed:
        Suite().test_every_kind_has_a_harness()
    message = str(failed.value)
    assert "no conformance harness for rotator kind(s): orphan-a, orphan-b." in message
    assert "rotator.harnesses" in message and "harnesses" in message


def test_a_harness_for_an_unknown_kind_is_a_failure() -> None:
    class Stray(PostgresSelfHarness):
        kind: ClassVar[str] = "no-such-kind"

    class Suite(RotatorConformance):
        harnesses = (PostgresSelfHarness, Stray)
        rotators = {KIND: PostgresPasswordRotator}

    with pytest.raises(pytest.fail.Exception, match="not a registered rotator"):
        Suite().test_every_kind_has_a_harness()
