"""What a rotator kind's author writes for the conformance kit: a harness, and how the kit
finds one (given directly, or registered under the `rotator.harnesses` entry-point group)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from rotator.base import RotatorRegistry
from rotator.credential import Credential
from rotator.errors import ConfigError

HARNESS_GROUP = "rotator.harnesses"


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
    #: Whether the rotator's own `retire` makes the target refuse the credential. The suite
    #: checks it whenever the rotator overrides `retire`; set False for a kind whose retire
    #: deliberately keeps the credential working.
    retire_revokes: ClassVar[bool] = True

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

    def refuse(self, credential: Credential) -> bool:
        """Optional: make the target refuse `credential` from now on, out of band, whether or
        not it was applied yet (revoke it, or take its key id). False: this harness cannot.

        Lets the suite drive a rollback and an `apply` that meets a conflict.
        """
        return False

    def live_credentials(self) -> int | None:
        """Optional: how many credentials of the subject the target accepts now, counted out
        of band; None: this harness cannot tell.

        Lets the suite catch an `apply` or a resumed run that leaves an extra grant behind.
        """
        return None


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
    every_kind: bool = False,
) -> Coverage:
    """Harnesses given directly, then installed ones, for each kind under test.

    The kinds under test are `kinds` when given; else every registered kind when
    `every_kind`; else the registered kinds that have a harness (given or installed).
    """
    installed = installed_harnesses()
    if kinds is not None:
        wanted = sorted(kinds)
    elif every_kind:
        wanted = sorted(rotators)
    else:
        wanted = sorted({cls.kind for cls in [*direct, *installed.values()]} & set(rotators))
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
    for cls in [*direct, *installed.values()]:
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
