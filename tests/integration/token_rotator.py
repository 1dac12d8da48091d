"""A rotator over a token file, for the core's retirement and adoption tests.

The target is a real file of accepted tokens (one per line): `apply` adds a token, `test`
looks it up, `retire` removes it and appends it to `<file>.revoked`. A `<file>.down` file
makes every call a TransientError, a `<file>.refuse` file makes `apply` accept nothing, a
`<file>.expired` file makes every token count as expired.
It retires what it no longer needs, as API keys and Vault leases do, without a server.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from rotator.base import RotatorRegistry, SecretRotator, registered_rotators
from rotator.credential import Credential
from rotator.errors import CredentialRejected, TransientError


class TokenTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path


class TokenFileRotator(SecretRotator):
    kind: ClassVar[str] = "token-file"
    Target: ClassVar[type[BaseModel]] = TokenTarget
    target: TokenTarget

    def generate(self, current: Credential | None) -> Credential:
        return Credential(token=secrets.token_urlsafe(24))

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        self._reachable()
        if self._flag("refuse").exists():
            return
        tokens = self.accepted()
        if pending.get("token") not in tokens:
            self._write([*tokens, str(pending.get("token"))])

    def test(self, credential: Credential) -> None:
        self._reachable()
        if credential.get("token") not in self.accepted():
            raise CredentialRejected(f"{self.target.path.name} does not accept that token")

    def expired(self, credential: Credential) -> bool:
        return self._flag("expired").exists()  # as if every lease had run out

    def retire(self, previous: Credential) -> None:
        self._reachable()
        token = str(previous.get("token"))
        self._write([t for t in self.accepted() if t != token])
        with self._flag("revoked").open("a") as revoked:
            revoked.write(token + "\n")

    def accepted(self) -> list[str]:
        path = self.target.path
        return path.read_text().split() if path.exists() else []

    def _write(self, tokens: list[str]) -> None:
        self.target.path.write_text("".join(f"{t}\n" for t in tokens))

    def _flag(self, suffix: str) -> Path:
        return self.target.path.with_name(f"{self.target.path.name}.{suffix}")

    def _reachable(self) -> None:
        if self._flag("down").exists():
            raise TransientError(f"{self.target.path.name} is down")


def registry() -> RotatorRegistry:
    """The installed rotators plus token-file."""
    return {**registered_rotators(), TokenFileRotator.kind: TokenFileRotator}


def revoked(path: Path) -> list[str]:
    flag = path.with_name(f"{path.name}.revoked")
    return flag.read_text().split() if flag.exists() else []
