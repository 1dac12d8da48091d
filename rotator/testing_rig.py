"""The conformance kit's machinery: a harness behind real runtimes, and step hooks.

A `Rig` writes a schedules.yaml for one harness (its subject and the other secrets it
declares), builds runtimes on a SQLite history and the embedded store, and adopts the
starting credentials, so a contract case drives the real engine as a deployment would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet
from pydantic import SecretStr

from rotator.base import RotatorRegistry, SecretRotator
from rotator.config import Settings
from rotator.credential import Credential
from rotator.runtime import Runtime, build_runtime
from rotator.schedule import load_plan
from rotator.stores import SecretStore, Stage

if TYPE_CHECKING:
    from rotator.engine import StepHook
    from rotator.testing_harness import RotatorHarness

#: The name of the secret under test in the generated schedules.yaml.
SUBJECT = "conformance-subject"


@dataclass
class Rig:
    """One harness behind real runtimes: schedules.yaml, SQLite history, embedded store."""

    harness: RotatorHarness
    directory: Path
    rotators: RotatorRegistry
    schedules: Path = field(init=False)
    key: SecretStr = field(
        default_factory=lambda: SecretStr(Fernet.generate_key().decode()), repr=False
    )
    built: list[Runtime] = field(default_factory=list, repr=False)
    #: Every secret value the case has seen (what the leak checks look for); never shown.
    values: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        others = self.harness.other_secrets()
        entries = {
            name: {"rotator": o.kind, "store": "local", "every": o.every, "target": o.target}
            for name, o in others.items()
        }
        entries[SUBJECT] = {
            "rotator": self.harness.kind,
            "store": "local",
            "every": self.harness.every,
            "target": self.harness.target(),
        }
        lines = [
            "version: 1",
            "stores: {local: {type: embedded}}",
            "defaults: {max_attempts: 2}",
            "secrets:",
            *(f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in entries.items()),
        ]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schedules = self.directory / "schedules.yaml"
        self.schedules.write_text("\n".join(lines) + "\n")
        engine = self.runtime().engine
        for name, other in others.items():
            self.remember(other.initial)
            engine.adopt(name, other.initial)
        initial = self.harness.initial()
        if initial is not None:
            self.remember(initial)
            engine.adopt(SUBJECT, initial)

    def runtime(self, step_hook: StepHook | None = None) -> Runtime:
        """Another process's runtime: same history, key and schedules, nothing shared in memory."""
        settings = Settings(
            schedules=self.schedules,
            database_url=f"sqlite:///{self.directory / 'history.db'}",
            encryption_key=self.key,
            var_dir=self.directory / "var",
            lease_ttl_seconds=30.0,
        )
        plan = load_plan(self.schedules, self.rotators)
        runtime = build_runtime(settings, plan, step_hook=step_hook, retry_wait_seconds=0.01)
        self.built.append(runtime)
        runtime.engine.rotators = self.rotators
        return runtime

    @property
    def store(self) -> SecretStore:
        return self.built[0].stores.get("local")

    def rotator(self) -> SecretRotator:
        """A fresh rotator for the subject, as a new run (or another process) would get it."""
        engine = self.built[0].engine
        return engine.rotator_for(engine.plan.secret(SUBJECT))

    def current(self) -> Credential | None:
        version = self.store.read(SUBJECT, Stage.CURRENT)
        return None if version is None else version.credential

    def remember(self, *credentials: Credential | None) -> None:
        for credential in credentials:
            if credential is not None:
                self.values.update(credential.secret_values())

    def generate(self, current: Credential | None) -> Credential:
        credential = self.rotator().generate(current)
        self.remember(credential)
        return credential

    def working(self) -> Credential:
        """A credential the target accepts: CURRENT, or a new one applied when there is none."""
        current = self.current()
        if current is not None:
            return current
        rotator = self.rotator()
        credential = rotator.generate(None)
        self.remember(credential)
        rotator.apply(credential, None, None)
        return credential

    def refuse_pending_after(self, point: str) -> StepHook:
        """A step hook that makes the target refuse PENDING (`harness.refuse`) after `point`."""

        def hook(reached: str) -> None:
            version = self.store.read(SUBJECT, Stage.PENDING) if reached == point else None
            if version is not None:
                self.remember(version.credential)
                self.harness.refuse(version.credential)

        return hook

    def close(self) -> None:
        for runtime in self.built:
            runtime.close()


class InjectedCrash(Exception):
    """A process dying between two steps (deliberately not a RotatorError: nothing records it)."""


def crash_after(point: str) -> StepHook:
    """A step hook that kills the run right after `point`."""

    def hook(reached: str) -> None:
        if reached == point:
            raise InjectedCrash(f"injected crash after {point}")

    return hook
