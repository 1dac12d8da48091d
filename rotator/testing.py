"""The rotator conformance kit: one contract suite that every rotator kind must pass.

A rotator author writes a `RotatorHarness` for their kind (a throwaway target, and a way to
ask it out of band whether it accepts a credential) and registers it under the entry-point
group `rotator.harnesses` (kind -> harness class). A test module then subclasses
`RotatorConformance`:

    class TestConformance(RotatorConformance):
        harnesses = (MyHarness,)  # optional: harnesses not registered by entry point
        kinds = ("my-kind",)  # optional: only these kinds (default: those with a harness)

pytest runs each contract case once per harness, through the real engine on a SQLite
history and the embedded store. A kind under test without a harness fails
`test_every_kind_has_a_harness`, naming it; `every_kind = True` puts every registered
kind under test. This module imports no pytest (a dev
dependency): pytest calls the class's `pytest_generate_tests`, and the cases ask for
pytest's own `request` and `tmp_path` fixtures by name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NoReturn

from rotator.base import RotatorRegistry, SecretRotator, registered_rotators
from rotator.credential import PUBLIC_FIELDS, Credential
from rotator.errors import CredentialRejected, RotatorError
from rotator.stores import Stage
from rotator.testing_checks import captured_logs, error_texts, estimated_bits, leaked
from rotator.testing_harness import (
    HARNESS_GROUP,
    FixtureSource,
    HarnessEnv,
    OtherSecret,
    RotatorHarness,
    coverage,
    harness_id,
    installed_harnesses,
    missing_harness_message,
)
from rotator.testing_rig import SUBJECT, InjectedCrash, Rig, crash_after

if TYPE_CHECKING:
    import pytest

__all__ = [
    "HARNESS_GROUP",
    "HarnessEnv",
    "OtherSecret",
    "RotatorConformance",
    "RotatorHarness",
    "installed_harnesses",
]

#: Where the engine's step hook fires; the crash case dies after each in turn.
CRASH_POINTS = ("created", "applied", "tested", "promoted")
#: How many credentials the strength case generates; all must differ.
SAMPLES = 8
#: A generated credential must hold one value at least this long and this strong (estimated).
MIN_SECRET_CHARS = 16
MIN_SECRET_BITS = 80.0


def _fail(message: str) -> NoReturn:
    import pytest  # only ever called while pytest runs a case

    pytest.fail(message, pytrace=False)


class RotatorConformance:
    """The contract suite; subclass it in a test module, under a name starting with `Test`."""

    #: Harnesses to run besides those registered under `rotator.harnesses`.
    harnesses: ClassVar[Sequence[type[RotatorHarness]]] = ()
    #: Only these kinds (default: every registered kind that has a harness).
    kinds: ClassVar[Collection[str] | None] = None
    #: With `kinds` unset: every registered kind is under test, and one without a harness
    #: fails `test_every_kind_has_a_harness` (rotator's own suite sets it).
    every_kind: ClassVar[bool] = False
    #: Rotator classes to test instead of the installed ones (`rotator.rotators`), e.g. a
    #: plugin before it is packaged: {"my-kind": MyRotator}.
    rotators: ClassVar[RotatorRegistry | None] = None

    def registry(self) -> RotatorRegistry:
        return registered_rotators() if self.rotators is None else self.rotators

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """pytest's hook, called per case: one case per harness (and per crash point)."""
        if "harness_class" in metafunc.fixturenames:
            found = coverage(self.harnesses, self.kinds, self.registry(), self.every_kind)
            chosen = found.harnesses
            metafunc.parametrize("harness_class", chosen, ids=[harness_id(c) for c in chosen])
        if "crash_point" in metafunc.fixturenames:
            metafunc.parametrize("crash_point", CRASH_POINTS)

    @contextmanager
    def rig(
        self, cls: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> Iterator[Rig]:
        """A harness set up behind real runtimes; torn down whatever the case did."""
        harness = cls()
        harness.setup(HarnessEnv(tmp_path, request))
        rig: Rig | None = None
        try:
            rig = Rig(harness, tmp_path, self.registry())
            yield rig
        finally:
            if rig is not None:
                rig.close()
            harness.teardown()

    def test_every_kind_has_a_harness(self) -> None:
        """A kind under test that nobody can test is a failure, never a skip."""
        found = coverage(self.harnesses, self.kinds, self.registry(), self.every_kind)
        problems = list(found.problems)
        if found.missing:
            problems.append(missing_harness_message(found.missing))
        if problems:
            _fail("\n".join(problems))

    def test_generate_gives_fresh_strong_values(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            current = rig.current()
            one = rig.rotator()
            made: list[Credential] = []
            try:
                for n in range(SAMPLES):  # from one instance and from fresh ones
                    made.append((one if n % 2 else rig.rotator()).generate(current))
                    rig.remember(made[-1])
                _check_strength(made, one)
            finally:  # a generated value may hold a lease: give it back
                for credential in made:
                    with suppress(RotatorError):
                        rig.rotator().retire(credential)

    def test_apply_is_idempotent(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            current = rig.current()
            before = rig.harness.live_credentials()
            rotator = rig.rotator()
            pending = rig.generate(current)
            for call, applier in enumerate((rotator, rotator, rig.rotator()), 1):
                applier.apply(pending, current, None)  # the third: a replay by another process
                assert rig.harness.accepts(pending), (
                    f"the target refuses PENDING after apply() #{call}"
                )
            _check_no_extra_grant(rig, before, "apply() of one PENDING, three times,")
            rig.rotator().test(pending)
            expires = rig.rotator().rotate_by(pending)
            if expires is not None:
                assert expires.tzinfo is not None, "rotate_by() must be timezone-aware"
                assert expires > datetime.now(UTC), "rotate_by() of a new credential has passed"

    def test_test_rejects_a_wrong_credential(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            valid = rig.working()
            assert rig.harness.accepts(valid), "harness: the target refuses the valid credential"
            rig.rotator().test(valid)
            wrong = rig.harness.wrong_credential(valid)
            assert not rig.harness.accepts(wrong), "harness: wrong_credential() is accepted"
            try:
                rig.rotator().test(wrong)
            except CredentialRejected:
                return
            _fail("test() accepted a wrong credential (expected CredentialRejected)")

    def test_retire_is_idempotent(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            start = rig.current()
            first = rig.generate(start)
            rig.rotator().apply(first, start, None)
            second = rig.generate(first)
            rig.rotator().apply(second, first, start)
            retiring = rig.rotator()
            retiring.retire(first)
            retiring.retire(first)
            rig.rotator().retire(first)  # a replay by another process
            if type(retiring).retire is not SecretRotator.retire and rig.harness.retire_revokes:
                assert not rig.harness.accepts(first), "the target still accepts after retire()"
            dropped = rig.generate(second)  # a PENDING a rollback dropped, never applied
            rig.rotator().retire(dropped)
            rig.rotator().retire(dropped)
            assert rig.harness.accepts(second), "retiring an old credential broke the new one"
            rig.rotator().test(second)

    def test_no_secret_in_logs_or_error_texts(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig, captured_logs() as lines:
            start = rig.current()
            engine = rig.runtime().engine
            results = [engine.run(SUBJECT)]
            assert results[0].outcome == "succeeded", f"rotation: {results[0].error}"
            new = rig.current()
            assert new is not None
            wrong = rig.harness.wrong_credential(new)
            rig.remember(new, wrong)
            errors = _raised(lambda: rig.rotator().test(wrong))
            if not any(isinstance(exc, CredentialRejected) for exc in errors):
                _fail("test() accepted a wrong credential (expected CredentialRejected)")
            if start is not None:
                rig.rotator().retire(start)  # PREVIOUS, once its grace period has passed
            refused = rig.generate(new)
            refusable = rig.harness.refuse(refused)
            if refusable:  # the target refuses PENDING: apply and test meet it
                errors += _raised(lambda: rig.rotator().apply(refused, new, start))
                errors += _raised(lambda: rig.rotator().test(refused))
            rig.rotator().retire(refused)  # a dropped PENDING (it may hold a lease)
            if refusable:  # a run whose PENDING is refused after apply rolls back
                refusing = rig.runtime(step_hook=rig.refuse_pending_after("applied")).engine
                results.append(refusing.run(SUBJECT))
                assert results[-1].outcome == "rolled_back", f"expected a rollback: {results[-1]}"
                assert rig.harness.accepts(new), "after a rollback the target refuses CURRENT"
            steps = [s.detail for r in results for s in engine.history.steps(r.run_id)]
        texts = [*lines, *steps]
        for result in results:
            texts += [repr(result), json.dumps(result.as_dict())]
        for exc in errors:
            texts += error_texts(exc)
        assert lines, "no log line was captured"
        found = leaked(texts, rig.values)
        assert not found, f"secret values in logs or error texts: {', '.join(found)}"

    def test_crash_at_each_step_then_resume(
        self,
        harness_class: type[RotatorHarness],
        crash_point: str,
        request: FixtureSource,
        tmp_path: Path,
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            start = rig.current()
            before = rig.harness.live_credentials()
            crashed_id = uuid.uuid4().hex
            crashing = rig.runtime(step_hook=crash_after(crash_point)).engine
            try:
                crashing.run(SUBJECT, run_id=crashed_id)
            except InjectedCrash:
                pass
            else:
                _fail(f"the run never reached step {crash_point!r}")
            stage = Stage.CURRENT if crash_point == "promoted" else Stage.PENDING
            made = rig.store.read(SUBJECT, stage)
            assert made is not None and made.token == crashed_id, "the crashed run stored nothing"
            rig.remember(made.credential)

            engine = rig.runtime().engine
            result = engine.run(SUBJECT)
            assert (result.outcome, result.run_id) == ("succeeded", crashed_id), (
                f"the next run ended {result.outcome} as run {result.run_id} (expected succeeded, "
                f"resuming the crashed run {crashed_id}): {result.error}"
            )
            current = rig.store.read(SUBJECT, Stage.CURRENT)
            assert current is not None and current.credential == made.credential
            assert current.credential != start, "CURRENT is still the starting credential"
            assert rig.store.read(SUBJECT, Stage.PENDING) is None
            assert rig.harness.accepts(current.credential), "the target refuses the new CURRENT"
            rig.rotator().test(current.credential)
            _check_no_extra_grant(rig, before, "a rotation resumed after a crash")
            runs = [run for run in engine.history.runs(SUBJECT) if run.trigger != "adopt"]
            succeeded = [run.id for run in runs if run.status == "succeeded"]
            assert succeeded == [crashed_id], f"runs recorded as succeeded: {succeeded}"


def _raised(call: Callable[[], object]) -> list[RotatorError]:
    """The rotator error `call` raised, if any (for its texts)."""
    try:
        call()
    except RotatorError as exc:
        return [exc]
    return []


def _check_no_extra_grant(rig: Rig, before: int | None, what: str) -> None:
    after = rig.harness.live_credentials()
    if before is not None and after is not None:
        assert after <= before + 1, (
            f"{what} left {after - before} new credentials working on the target (at most 1)"
        )


def _check_strength(made: Sequence[Credential], rotator: SecretRotator) -> None:
    """Distinct, complete credentials of the right identity, one field long and random."""
    samples: dict[str, list[str]] = {}
    for credential in made:
        empty = [k for k, v in credential.items() if k not in PUBLIC_FIELDS and v in (None, "")]
        assert not empty, f"generate() left confidential fields empty: {empty}"
        for name, allowed in rotator.expected_identity().items():
            assert credential.get(name) in allowed, f"generate() changed {name!r}"
        for name, value in credential.items():
            if name not in PUBLIC_FIELDS and isinstance(value, str):
                samples.setdefault(name, []).append(value)
    full = {name: values for name, values in samples.items() if len(values) == len(made)}
    assert full, "generate() gives no confidential text field"
    strongest = max(full, key=lambda name: estimated_bits(full[name]))
    values = full[strongest]
    distinct = len(set(values))
    assert distinct == len(values), (
        f"{len(values)} generate() calls gave {distinct} distinct {strongest!r} values"
    )
    assert min(map(len, values)) >= MIN_SECRET_CHARS, (
        f"no confidential value of {MIN_SECRET_CHARS}+ characters"
    )
    bits = estimated_bits(values)
    assert bits >= MIN_SECRET_BITS, f"the secret value {strongest!r} is weak (~{bits:.0f} bits)"
