"""Conformance harnesses for `api-key`, on a fresh test provider (tests/services/keyservice.py).

Two shapes of target: a key created and revoked with an admin secret's key, starting with no
CURRENT at all; and an admin key that rotates itself (no admin secret). Both check, when
verifying, that the provider names the stored key id (`verify.key_id_pointer`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rotator.credential import Credential
from rotator.testing import HarnessEnv, OtherSecret, RotatorHarness
from tests.services.keyservice import KeyService, start_keyservice

ADMIN_SECRET = "conformance-admin"


class ApiKeyAdminHarness(RotatorHarness):
    """An app key made by an admin secret's key; nobody has adopted one yet."""

    kind: ClassVar[str] = "api-key"
    label: ClassVar[str] = "admin"

    def setup(self, env: HarnessEnv) -> None:
        self.service: KeyService = start_keyservice()
        self.seed = self.service.issue("bootstrap", admin=True)

    def teardown(self) -> None:
        self.service.stop()

    def _target(self, admin: bool) -> dict[str, Any]:
        url = self.service.url
        return {
            "create": {
                "url": f"{url}/keys",
                "body": {"name": "conformance-{secret_name}-{request_id}", "admin": admin},
                "key_pointer": "/key/secret",
                "key_id_pointer": "/key/id",
            },
            "verify": {"url": f"{url}/whoami", "key_id_pointer": "/id"},
            "revoke": {"url": f"{url}/keys/{{key_id}}"},
        }

    def target(self) -> dict[str, Any]:
        return {**self._target(admin=False), "admin_secret": ADMIN_SECRET}

    def other_secrets(self) -> dict[str, OtherSecret]:
        seed = Credential(api_key=self.seed.secret, key_id=self.seed.id)
        return {ADMIN_SECRET: OtherSecret("api-key", self._target(admin=True), seed)}

    def accepts(self, credential: Credential) -> bool:
        return self.service.works(str(credential["api_key"]))

    def wrong_credential(self, valid: Credential) -> Credential:
        return valid.replace(api_key=f"{valid['api_key']}-wrong")

    def refuse(self, credential: Credential) -> bool:
        """Disable the key in the provider, as an operator would."""
        key = self.service.keys.get(str(credential.get("key_id")))
        if key is None:
            return False
        key.works = False
        return True

    def live_credentials(self) -> int | None:
        return sum(1 for key in self.service.keys.values() if key.works)


class ApiKeySelfHarness(ApiKeyAdminHarness):
    """An admin key that authorises its own rotation with its CURRENT value."""

    label: ClassVar[str] = "self"

    def target(self) -> dict[str, Any]:
        return self._target(admin=True)

    def other_secrets(self) -> dict[str, OtherSecret]:
        return {}

    def initial(self) -> Credential | None:
        return Credential(api_key=self.seed.secret, key_id=self.seed.id)
