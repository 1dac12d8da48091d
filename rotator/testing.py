"""The rotator conformance kit: one contract suite that every rotator kind must pass.

A rotator author writes a `RotatorHarness` for their kind (a throwaway target, and a way to
ask it out of band whether it accepts a credential) and registers it under the entry-point
group `rotator.harnesses` (kind -> harness class). A test module then subclasses
`RotatorConformance`:

    class TestConformance(RotatorConformance):
        harnesses = (MyHarness,)  # optional: harnesses not registered by entry point
        kinds = ("my-kind",)  # optional: only these kinds (default: every registered kind)

pytest runs each contract case once per harness, through the real engine on a SQLite
history and the embedded store. A kind under test without a harness fails
`test_every_kind_has_a_harness`, naming it. This module imports no pytest (a dev
dependency): pytest calls the class's `pytest_generate_tests`, and the cases ask for
pytest's own `request` and `tmp_path` fixtures by name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, NoReturn, Protocol

from rotator.base import RotatorRegistry, registered_rotators
from rotator.credential import PUBLIC_FIELDS, Credential
from rotator.errors import ConfigError, CredentialRejected, RotatorError
from rotator.stores import Stage
from rotator.testing_rig import (
    SUBJECT,
    InjectedCrash,
    Rig,
    captured_logs,
    crash_after,
    error_texts,
    estimated_bits,
    leaked,
)

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

HARNESS_GROUP = "rotator.harnesses"
#: Where the engine's step hook fires; the crash case dies after each in turn.
CRASH_POINTS = ("created", "applied", "tested", "promoted")
#: A generated credential must hold one value at least this long and this strong (estimated).
MIN_SECRET_CHARS = 16
MIN_SECRET_BITS = 80.0


class FixtureSource(Protocol):
    """What a harness may ask pytest for (a `pytest.FixtureRequest` is one)."""

    def getfixturevalue(self, argname: str) -> Any: ...


@dataclass(frozen=True)
class HarnessEnv:
    """What the suite hands `RotatorHarness.setup`: a scratch directory and pytest's fixtures."""

    tmp_path: Path
    request: FixtureSource

    def fixture(self, name: str) -> Any:
        """A pytest fixture by name, e.g. a session-wide server (`env.fixture("pg")`)."""
        return self.request.getfixturevalue(name)


class OtherSecret(NamedTuple):
    """Another secret the target needs declared (e.g. an admin), adopted with `initial`."""

    kind: str
    target: dict[str, Any]
    initial: Credential
    every: str = "30d"


class RotatorHarness:
    """What the suite needs to know about one rotator kind; a new instance per test case.

    `setup` runs first and prepares a fresh target; the other methods may rely on it.
    """

    kind: ClassVar[str]
    #: Tells harnesses of one kind apart in test ids ("admin" -> postgres-password-admin).
    label: ClassVar[str] = ""
    #: The subject's `every:`; a kind whose credentials expire may need a shorter one.
    every: ClassVar[str] = "30d"

    def setup(self, env: HarnessEnv) -> None:
        """Prepare a target for one case (create a role, a user, a file)."""

    def teardown(self) -> None:
        """Release what `setup` made; runs even when the case failed."""

    def target(self) -> dict[str, Any]:
        """The subject's `target:` block, as it would be written in schedules.yaml."""
        raise NotImplementedError

    def other_secrets(self) -> Mapping[str, OtherSecret]:
        """Other secrets to declare and adopt, by name (e.g. the admin the target names)."""
        return {}

    def initial(self) -> Credential | None:
        """The credential the target accepts now, adopted as CURRENT; None to start empty."""
        return None

    def accepts(self, credential: Credential) -> bool:
        """Out of band (not through the rotator): does the target accept `credential`?"""
        raise NotImplementedError

    def wrong_credential(self, valid: Credential) -> Credential:
        """A credential like `valid` (same identity) that the target must refuse."""
        raise NotImplementedError


def harness_id(cls: type[RotatorHarness]) -> str:
    return f"{cls.kind}-{cls.label}" if cls.label else cls.kind


def installed_harnesses() -> dict[str, type[RotatorHarness]]:
    """Every harness registered under the `rotator.harnesses` entry-point group, by kind."""
    found: dict[str, type[RotatorHarness]] = {}
    for entry in entry_points(group=HARNESS_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, RotatorHarness)):
            raise ConfigError(
                f"entry point {entry.name!r} in group {HARNESS_GROUP!r} ({entry.value}) is not "
                "a rotator.testing.RotatorHarness subclass"
            )
        if getattr(cls, "kind", None) != entry.name:
            raise ConfigError(
                f"entry point {entry.name!r} in group {HARNESS_GROUP!r} ({entry.value}) is a "
                f"harness for kind {getattr(cls, 'kind', None)!r}; name the entry after its kind"
            )
        found[entry.name] = cls
    return found


@dataclass(frozen=True)
class Coverage:
    """The harnesses that run, the kinds under test that have none, and other problems."""

    harnesses: list[type[RotatorHarness]]
    missing: list[str]
    problems: list[str]


def coverage(
    direct: Sequence[type[RotatorHarness]],
    kinds: Collection[str] | None,
    rotators: RotatorRegistry,
) -> Coverage:
    """Harnesses given directly, then installed ones, for each kind under test."""
    wanted = sorted(rotators if kinds is None else kinds)
    problems = [
        f"kind {kind!r} is not a registered rotator (registered: "
        f"{', '.join(sorted(rotators)) or 'none'})"
        for kind in wanted
        if kind not in rotators
    ]
    problems += [
        f"harness {cls.__qualname__} is for kind {cls.kind!r}, which is not a registered rotator"
        for cls in direct
        if cls.kind not in rotators
    ]
    chosen: list[type[RotatorHarness]] = []
    for cls in [*direct, *installed_harnesses().values()]:
        if cls.kind in wanted and cls.kind in rotators and cls not in chosen:
            chosen.append(cls)
    covered = {cls.kind for cls in chosen}
    missing = [kind for kind in wanted if kind in rotators and kind not in covered]
    return Coverage(chosen, missing, problems)


def missing_harness_message(missing: Sequence[str]) -> str:
    return (
        f"no conformance harness for rotator kind(s): {', '.join(missing)}. Every registered "
        "kind must pass the conformance suite: write a rotator.testing.RotatorHarness subclass "
        f'for it and register it under the entry-point group "{HARNESS_GROUP}" '
        '(e.g. my-kind = "my_package.harness:MyHarness"), or list it in `harnesses` of the '
        "RotatorConformance subclass (see docs/plugins.md)"
    )


def _fail(message: str) -> NoReturn:
    import pytest  # only ever called while pytest runs a case

    pytest.fail(message, pytrace=False)


class RotatorConformance:
    """The contract suite; subclass it in a test module, under a name starting with `Test`."""

    #: Harnesses to run besides those registered under `rotator.harnesses`.
    harnesses: ClassVar[Sequence[type[RotatorHarness]]] = ()
    #: Only these kinds (default: every kind under test).
    kinds: ClassVar[Collection[str] | None] = None
    #: Rotator classes to test instead of the installed ones (`rotator.rotators`), e.g. a
    #: plugin before it is packaged: {"my-kind": MyRotator}.
    rotators: ClassVar[RotatorRegistry | None] = None

    def registry(self) -> RotatorRegistry:
        return registered_rotators() if self.rotators is None else self.rotators

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """pytest's hook, called per case: one case per harness (and per crash point)."""
        if "harness_class" in metafunc.fixturenames:
            chosen = coverage(self.harnesses, self.kinds, self.registry()).harnesses
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
        """A registered kind nobody can test is a failure, never a skip."""
        found = coverage(self.harnesses, self.kinds, self.registry())
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
            rotator = rig.rotator()
            first, second = rotator.generate(current), rotator.generate(current)
            rig.remember(first, second)
            assert first != second, "two generate() calls returned the same credential"
            for credential in (first, second):
                empty = [
                    k for k, v in credential.items() if k not in PUBLIC_FIELDS and v in (None, "")
                ]
                assert not empty, f"generate() left confidential fields empty: {empty}"
                for name, allowed in rotator.expected_identity().items():
                    assert credential.get(name) in allowed, f"generate() changed {name!r}"
            strongest = max(first.secret_values(), key=estimated_bits, default="")
            assert len(strongest) >= MIN_SECRET_CHARS, "no confidential value of 16+ characters"
            bits = estimated_bits(strongest)
            assert bits >= MIN_SECRET_BITS, f"the secret value is weak (~{bits:.0f} bits)"
            assert strongest not in set(second.secret_values()), "generate() repeated a value"
            for credential in (first, second):  # a generated value may hold a lease: give it back
                with suppress(RotatorError):
                    rig.rotator().retire(credential)

    def test_apply_is_idempotent(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig:
            current = rig.current()
            rotator = rig.rotator()
            pending = rotator.generate(current)
            rig.remember(pending)
            rotator.apply(pending, current, None)
            rotator.apply(pending, current, None)
            rig.rotator().apply(pending, current, None)  # a replay by another process
            assert rig.harness.accepts(pending), "the target refuses PENDING after apply()"
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
            dropped = rig.generate(second)  # a PENDING a rollback dropped, never applied
            rig.rotator().retire(dropped)
            rig.rotator().retire(dropped)
            assert rig.harness.accepts(second), "retiring an old credential broke the new one"
            rig.rotator().test(second)

    def test_no_secret_in_logs_or_error_texts(
        self, harness_class: type[RotatorHarness], request: FixtureSource, tmp_path: Path
    ) -> None:
        with self.rig(harness_class, request, tmp_path) as rig, captured_logs() as lines:
            engine = rig.runtime().engine
            result = engine.run(SUBJECT)
            assert result.outcome == "succeeded", f"rotation {result.outcome}: {result.error}"
            new = rig.current()
            assert new is not None
            wrong = rig.harness.wrong_credential(new)
            rig.remember(new, wrong)
            try:
                rig.rotator().test(wrong)
            except CredentialRejected as exc:
                rejected = exc
            else:
                _fail("test() accepted a wrong credential (expected CredentialRejected)")
            steps = [step.detail for step in engine.history.steps(result.run_id)]
        texts = [*lines, *error_texts(rejected), repr(result), json.dumps(result.as_dict()), *steps]
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
            runs = [run for run in engine.history.runs(SUBJECT) if run.trigger != "adopt"]
            succeeded = [run.id for run in runs if run.status == "succeeded"]
            assert succeeded == [crashed_id], f"runs recorded as succeeded: {succeeded}"
