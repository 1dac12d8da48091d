"""The conformance suite fails rotators that break the contract, each in the case that names
the broken rule (the real rotators pass them all in test_conformance.py and below).

Broken postgres rotators run on the `pg` fixture; broken example-token rotators (the example
plugin, installed with the venv) on a SQLite file.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rotator_example.harness import TokenHarness
from rotator_example.tokens import TokenRotator, digest

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.errors import CredentialRejected
from rotator.testing import RotatorConformance, RotatorHarness
from rotators.postgres import PostgresPasswordRotator
from tests.conformance.harness_postgres import PostgresSelfHarness

pytestmark = pytest.mark.integration

KIND = "postgres-password"
TOKEN = "example-token"


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


class PaddedWeak(TokenRotator):
    """generate() pads 8 random bits to a long token."""

    def generate(self, current: Credential | None) -> Credential:
        return super().generate(current).replace(token="a" * 20 + secrets.token_hex(1))


class CyclesTwo(TokenRotator):
    """generate() takes turns between two tokens: every other rotation repeats one."""

    pool: ClassVar[Any] = itertools.cycle([secrets.token_urlsafe(32), secrets.token_urlsafe(32)])

    def generate(self, current: Credential | None) -> Credential:
        return super().generate(current).replace(token=next(self.pool))


class ToggleApply(TokenRotator):
    """apply() deletes the token when it finds it (a replay undoes the first call)."""

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        with self._session() as conn:
            if conn.execute("DELETE FROM tokens WHERE key_id = ?", (pending["key_id"],)).rowcount:
                return
        super().apply(pending, current, previous)


class DuplicatingApply(TokenRotator):
    """apply() replayed grants the token again under a fresh key id (an orphan grant)."""

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        with self._session() as conn:
            known = conn.execute("SELECT 1 FROM tokens WHERE key_id = ?", (pending["key_id"],))
            key = secrets.token_hex(8) if known.fetchone() else pending["key_id"]
            conn.execute(
                "INSERT INTO tokens VALUES (?, ?, ?)",
                (key, pending.username, digest(pending["token"])),
            )


class RetireRevokesNothing(TokenRotator):
    """retire() swaps its parameters, so it deletes nothing and old tokens stay valid."""

    def retire(self, previous: Credential) -> None:
        with self._session() as conn:
            conn.execute(
                "DELETE FROM tokens WHERE key_id = ? AND username = ?",
                (previous.username, previous.get("key_id")),
            )


class LeakPrefix(TokenRotator):
    """test() names the first 16 characters of the token it was refused."""

    def test(self, credential: Credential) -> None:
        try:
            super().test(credential)
        except CredentialRejected:
            raise CredentialRejected(f"refused token {credential['token'][:16]}...") from None


class LeakInRetireLog(TokenRotator):
    """retire() logs the token it revokes (stdlib logging)."""

    def retire(self, previous: Credential) -> None:
        logging.getLogger("rotator_example").warning("revoking token %s", previous.get("token"))
        super().retire(previous)


class LeakInApplyError(TokenRotator):
    """apply() names the token when its key id is taken."""

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        try:
            super().apply(pending, current, previous)
        except CredentialRejected:
            raise CredentialRejected(f"conflict for token {pending['token']}") from None


class RegeneratesOnResume(TokenRotator):
    """apply() of a PENDING it did not generate also grants a fresh token (an orphan)."""

    mine: Credential | None = None

    def generate(self, current: Credential | None) -> Credential:
        self.mine = super().generate(current)
        return self.mine

    def apply(self, pending: Credential, current: Any, previous: Any) -> None:
        if pending is not self.mine:
            super().apply(TokenRotator.generate(self, current), current, previous)
        super().apply(pending, current, previous)


def suite_for(
    rotator: type[SecretRotator], harness: type[RotatorHarness] = PostgresSelfHarness
) -> RotatorConformance:
    class Suite(RotatorConformance):
        harnesses = (harness,)
        kinds = (harness.kind,)
        rotators = {harness.kind: rotator}

    return Suite()


def run_case(
    rotator: type[SecretRotator], case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Run one case (`name` or `name[crash point]`) against `rotator` and its kind's harness."""
    harness: type[RotatorHarness] = TokenHarness if rotator.kind == TOKEN else PostgresSelfHarness
    name, _, point = case.rstrip("]").partition("[")
    method = getattr(suite_for(rotator, harness), name)
    if point:
        method(harness, point, request, tmp_path)
    else:
        method(harness, request, tmp_path)


@pytest.mark.parametrize(
    ("rotator", "case", "raised"),
    [
        (Repeating, "test_generate_gives_fresh_strong_values", AssertionError),
        (Weak, "test_generate_gives_fresh_strong_values", AssertionError),
        (TrustsAnything, "test_test_rejects_a_wrong_credential", pytest.fail.Exception),
        (Leaky, "test_no_secret_in_logs_or_error_texts", AssertionError),
        (ApplyOnce, "test_apply_is_idempotent", CredentialRejected),
        (RetireOnce, "test_retire_is_idempotent", CredentialRejected),
        (PaddedWeak, "test_generate_gives_fresh_strong_values", AssertionError),
        (CyclesTwo, "test_generate_gives_fresh_strong_values", AssertionError),
        (ToggleApply, "test_apply_is_idempotent", AssertionError),
        (DuplicatingApply, "test_apply_is_idempotent", AssertionError),
        (DuplicatingApply, "test_crash_at_each_step_then_resume[applied]", AssertionError),
        (RetireRevokesNothing, "test_retire_is_idempotent", AssertionError),
        (LeakPrefix, "test_no_secret_in_logs_or_error_texts", AssertionError),
        (LeakInRetireLog, "test_no_secret_in_logs_or_error_texts", AssertionError),
        (LeakInApplyError, "test_no_secret_in_logs_or_error_texts", AssertionError),
        (RegeneratesOnResume, "test_crash_at_each_step_then_resume[created]", AssertionError),
    ],
)
def test_a_broken_rule_fails_its_case(
    rotator: type[SecretRotator],
    case: str,
    raised: type[BaseException],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    with pytest.raises(raised):
        run_case(rotator, case, request, tmp_path)


@pytest.mark.parametrize("rotator", [PostgresPasswordRotator, TokenRotator])
@pytest.mark.parametrize(
    "case",
    [
        "test_generate_gives_fresh_strong_values",
        "test_apply_is_idempotent",
        "test_retire_is_idempotent",
        "test_no_secret_in_logs_or_error_texts",
        "test_crash_at_each_step_then_resume[created]",
        "test_crash_at_each_step_then_resume[applied]",
    ],
)
def test_the_real_rotators_pass_the_same_cases(
    rotator: type[SecretRotator], case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The control: the cases above fail because of the breakage, not the set-up."""
    run_case(rotator, case, request, tmp_path)


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
