"""The `example-token` rotator: API tokens of one user in a SQLite "token service".

The target is a SQLite file with one table of tokens; a token is accepted when a row for
its user and key id holds its digest. A user may hold several tokens at once, so rotating
never locks anyone out: `apply` adds the new token beside the old one, and `retire`
deletes the old one after the grace period. It needs no server, which makes it a small
example of the whole contract. Values only ever travel as SQL parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, TransientError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tokens ("
    " key_id TEXT PRIMARY KEY, username TEXT NOT NULL, digest TEXT NOT NULL)"
)
#: sqlite3 errors that pass by themselves (another writer, a file briefly unreadable).
_TRANSIENT = ("database is locked", "unable to open", "disk i/o error")


def digest(token: str) -> str:
    """What the service keeps of a token. A plain hash suffices: tokens are 256 random bits."""
    return hashlib.sha256(token.encode()).hexdigest()


def _reason(exc: sqlite3.Error) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def create_database(path: Path) -> None:
    """Make an empty token service at `path` (what an operator would do once)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(SCHEMA)


class TokenTarget(BaseModel):
    """The `target:` block of an `example-token` secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: Path
    username: str = Field(min_length=1, max_length=64)
    busy_timeout_seconds: float = Field(5.0, gt=0, le=60)


class TokenRotator(SecretRotator):
    """Rotates one user's API token in a SQLite token service."""

    kind: ClassVar[str] = "example-token"
    Target: ClassVar[type[BaseModel]] = TokenTarget
    identity_fields: ClassVar[tuple[str, ...]] = ("username",)

    target: TokenTarget

    @classmethod
    def managed_identity(cls, target: BaseModel) -> tuple[str, ...] | None:
        assert isinstance(target, TokenTarget)
        return (cls.kind, str(target.database.resolve()), target.username)

    def generate(self, current: Credential | None) -> Credential:
        return Credential(
            username=self.target.username,
            key_id=secrets.token_hex(8),
            token=secrets.token_urlsafe(32),
        )

    def complete(self, credential: Credential) -> Credential:
        """`rotator put` needs the key id and token; the username comes from the target."""
        if not credential.get("key_id") or not credential.get("token"):
            raise ConfigError(
                f'an {self.kind} value needs `key_id` and `token` (expected {{"key_id": "...", '
                '"token": "..."}})'
            )
        return Credential({"username": self.target.username, **credential.as_dict()})

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        """Add the token in one statement that a replay (or a concurrent one) turns into a
        no-op, then check that the row under its key id is this token's."""
        with self._session() as conn:
            conn.execute(
                "INSERT INTO tokens (key_id, username, digest) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id) DO NOTHING",
                (pending["key_id"], pending.username, digest(pending["token"])),
            )
            row = conn.execute(
                "SELECT username, digest FROM tokens WHERE key_id = ?", (pending["key_id"],)
            ).fetchone()
            if row is None or not self._matches(row, pending):
                raise CredentialRejected(
                    f"{self._where()} holds key {pending['key_id']!r} for another token or user"
                )

    def test(self, credential: Credential) -> None:
        """The service accepts the token: its row exists and holds the token's digest."""
        with self._session() as conn:
            row = conn.execute(
                "SELECT username, digest FROM tokens WHERE key_id = ?", (credential.get("key_id"),)
            ).fetchone()
        if row is None or not self._matches(row, credential):
            raise CredentialRejected(
                f"{self._where()} refuses key {credential.get('key_id')!r} "
                f"of user {credential.username!r}"
            )

    def retire(self, previous: Credential) -> None:
        """Delete the token; deleting one that is gone (or never was) is success."""
        with self._session() as conn:
            conn.execute(
                "DELETE FROM tokens WHERE key_id = ? AND username = ?",
                (previous.get("key_id"), previous.username),
            )

    @staticmethod
    def _matches(row: tuple[str, str], credential: Credential) -> bool:
        username, stored = row
        token = str(credential.get("token", ""))
        return username == credential.username and hmac.compare_digest(stored, digest(token))

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the existing file (never creates one); errors mapped to ours."""
        path = self.target.database.resolve()
        if not path.is_file():
            raise ConfigError(
                f"{self._where()} does not exist; fix `database` in the target block, or "
                "create it with rotator_example.tokens.create_database"
            )
        try:
            conn = sqlite3.connect(
                path.as_uri() + "?mode=rw", uri=True, timeout=self.target.busy_timeout_seconds
            )
            with closing(conn), conn:
                yield conn
        except sqlite3.IntegrityError as exc:  # names a constraint, never a value
            raise CredentialRejected(
                f"{self._where()} refused the token change ({_reason(exc)})"
            ) from None
        except sqlite3.Error as exc:
            reason = _reason(exc)
            if any(marker in reason.lower() for marker in _TRANSIENT):
                raise TransientError(f"{self._where()} unavailable: {reason}") from None
            raise ConfigError(
                f"{self._where()} is not a token database ({reason}); create it with "
                "rotator_example.tokens.create_database"
            ) from None

    def _where(self) -> str:
        return f"token service {self.target.database}"
