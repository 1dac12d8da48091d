"""Conformance harnesses for `postgres-password`, on the `pg` fixture.

Single-user strategy: a role that changes its own password with CURRENT (no admin), and a
role changed by a CREATEROLE admin secret, starting with no CURRENT at all. Alternating
strategy: the admin makes the clone role and the two take turns, starting from the main
role's adopted password.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from rotator.credential import Credential
from rotator.testing import HarnessEnv, OtherSecret, RotatorHarness
from tests.conftest import unique_role
from tests.services.postgres import PgServer

ADMIN_SECRET = "conformance-admin"


class PostgresSelfHarness(RotatorHarness):
    """A role that logs in with its CURRENT password to change it (no admin secret)."""

    kind: ClassVar[str] = "postgres-password"
    label: ClassVar[str] = "self"

    def setup(self, env: HarnessEnv) -> None:
        self.pg: PgServer = env.fixture("pg")
        self.role = unique_role("conf")
        self.password = secrets.token_urlsafe(24)
        self.pg.create_role(self.role, self.password)

    def target(self) -> dict[str, Any]:
        return {
            "host": self.pg.host,
            "port": self.pg.port,
            "dbname": self.pg.dbname,
            "username": self.role,
        }

    def initial(self) -> Credential | None:
        return Credential(password=self.password)

    def accepts(self, credential: Credential) -> bool:
        assert credential.password is not None
        return self.pg.logs_in(credential.username or self.role, credential.password)

    def wrong_credential(self, valid: Credential) -> Credential:
        return valid.replace(password="wrong-" + secrets.token_urlsafe(24))


class PostgresAdminHarness(PostgresSelfHarness):
    """A role changed by a CREATEROLE admin secret; nobody has adopted its password yet."""

    label: ClassVar[str] = "admin"

    def setup(self, env: HarnessEnv) -> None:
        super().setup(env)
        self.admin_role = unique_role("confadm")
        self.admin_password = secrets.token_urlsafe(24)
        self.pg.create_role(self.admin_role, self.admin_password, "CREATEROLE")
        self.pg.grant_admin(self.role, self.admin_role)

    def target(self) -> dict[str, Any]:
        return {**super().target(), "admin_secret": ADMIN_SECRET}

    def other_secrets(self) -> dict[str, OtherSecret]:
        admin_target = {**super().target(), "username": self.admin_role}
        return {
            ADMIN_SECRET: OtherSecret(
                "postgres-password", admin_target, Credential(password=self.admin_password)
            )
        }

    def initial(self) -> Credential | None:
        return None


class PostgresAlternatingHarness(PostgresAdminHarness):
    """`strategy: alternating`: the main role's password is CURRENT; the clone is made on apply."""

    label: ClassVar[str] = "alternating"

    def target(self) -> dict[str, Any]:
        return {**super().target(), "strategy": "alternating"}

    def initial(self) -> Credential | None:
        return Credential(password=self.password)
