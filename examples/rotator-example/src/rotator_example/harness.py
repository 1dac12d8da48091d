"""The conformance harness of `example-token`: a fresh token database per test case.

Registered under the `rotator.harnesses` entry-point group, so any project that installs
this package runs the conformance suite against it (rotator.testing).
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
from contextlib import closing
from typing import Any, ClassVar

from rotator.credential import Credential
from rotator.testing import HarnessEnv, RotatorHarness
from rotator_example.tokens import create_database, digest

USERNAME = "svc-reports"


class TokenHarness(RotatorHarness):
    kind: ClassVar[str] = "example-token"

    def setup(self, env: HarnessEnv) -> None:
        self.path = env.tmp_path / "tokens.db"
        create_database(self.path)
        self.first = Credential(
            username=USERNAME, key_id=secrets.token_hex(8), token=secrets.token_urlsafe(32)
        )
        with closing(sqlite3.connect(self.path)) as conn, conn:  # issued by hand, as today
            conn.execute(
                "INSERT INTO tokens (key_id, username, digest) VALUES (?, ?, ?)",
                (self.first["key_id"], USERNAME, digest(self.first["token"])),
            )

    def target(self) -> dict[str, Any]:
        return {"database": str(self.path), "username": USERNAME}

    def initial(self) -> Credential | None:
        return self.first

    def accepts(self, credential: Credential) -> bool:
        """Read the service's table directly, not through the rotator."""
        with closing(sqlite3.connect(self.path)) as conn:
            row = conn.execute(
                "SELECT username, digest FROM tokens WHERE key_id = ?", (credential["key_id"],)
            ).fetchone()
        return (
            row is not None
            and row[0] == credential.username
            and hmac.compare_digest(row[1], digest(str(credential["token"])))
        )

    def wrong_credential(self, valid: Credential) -> Credential:
        return valid.replace(token=secrets.token_urlsafe(32))

    def refuse(self, credential: Credential) -> bool:
        """Take the token's key id for another token, whether or not it was issued yet."""
        with closing(sqlite3.connect(self.path)) as conn, conn:
            conn.execute(
                "INSERT INTO tokens (key_id, username, digest) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET digest = excluded.digest",
                (credential["key_id"], USERNAME, digest(secrets.token_urlsafe(32))),
            )
        return True

    def live_credentials(self) -> int | None:
        """The user's tokens: an extra row is a grant nobody can find or revoke."""
        with closing(sqlite3.connect(self.path)) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM tokens WHERE username = ?", (USERNAME,)
            ).fetchone()
        return int(count)
