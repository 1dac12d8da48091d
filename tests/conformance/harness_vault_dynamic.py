"""Conformance harness for `vault-dynamic`: a database mount on the `pg` fixture in the session's
Vault (real or emulated), read with a token holding only the docs' policy.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any, ClassVar

from rotator.credential import Credential
from rotator.testing import HarnessEnv, RotatorHarness
from tests.services.postgres import PgServer
from tests.services.vault import VaultService

DOCS = Path(__file__).parents[2] / "docs" / "rotator-vault-dynamic.md"


class VaultDynamicHarness(RotatorHarness):
    """Leases of a fresh database role in Vault; every lease is a new PostgreSQL login."""

    kind: ClassVar[str] = "vault-dynamic"

    def setup(self, env: HarnessEnv) -> None:
        self.pg: PgServer = env.fixture("pg")
        vault: VaultService = env.fixture("vault")
        self.database = vault.configure_database(self.pg)
        policy = f"rotator-dyn-{secrets.token_hex(3)}"
        blocks = re.findall(r"```hcl\n(.*?)```", DOCS.read_text(), re.S)
        (block,) = [b for b in blocks if b.startswith("# rotator-vault-dynamic-policy\n")]
        vault.write_policy(policy, block.replace("database/creds/app", self.database.creds_path))
        self.token_file = env.tmp_path / "vault-dynamic-token"
        self.token_file.write_text(vault.create_token("2h", policy))
        self.url = vault.url

    def target(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "auth": {"method": "token", "token_file": str(self.token_file)},
            "mount": self.database.mount,
            "role": self.database.role,
            "host": self.pg.host,
            "port": self.pg.port,
            "dbname": self.pg.dbname,
            "sslmode": "disable",
        }

    def accepts(self, credential: Credential) -> bool:
        if not credential.username or not credential.password:
            return False
        return self.pg.logs_in(credential.username, credential.password)

    def wrong_credential(self, valid: Credential) -> Credential:
        return valid.replace(password="wrong-" + secrets.token_urlsafe(24))
