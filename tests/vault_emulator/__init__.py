"""A small HTTP server speaking the Vault API routes rotator calls, for tests only.

It answers with Vault's documented JSON shapes and status codes so the same
tests run unchanged against it and against a real Vault (see
tests/services/vault.py, which picks one). It is never product code.

ACL policies are enforced (acl.py). Not emulated: response wrapping, KV
version 1, identity, and sudo (paths that need it in Vault do not here).

    emulator = VaultEmulator().start()
    hvac.Client(emulator.url, token=emulator.root_token)
    emulator.stop()
"""

from __future__ import annotations

import threading
from typing import Any

from tests.vault_emulator.approle import AppRole
from tests.vault_emulator.database import DatabaseEngine
from tests.vault_emulator.kubernetes import Kubernetes, ServiceAccounts
from tests.vault_emulator.kv import KvV2
from tests.vault_emulator.leases import LeaseManager
from tests.vault_emulator.server import AuthMethods, SecretEngines, Vault, _Server

#: How often expired tokens and leases are revoked, in seconds.
SWEEP_INTERVAL = 0.2


def _kv(vault: Vault, path: str) -> Any:
    return KvV2()


def _approle(vault: Vault, path: str) -> Any:
    return AppRole(vault.tokens, path)


class VaultEmulator:
    """The emulated Vault, served from daemon threads on a free loopback port."""

    def __init__(self) -> None:
        #: The emulated cluster's TokenReview: `issue` a JWT for a service account.
        self.service_accounts = ServiceAccounts()
        auth_methods: AuthMethods = {
            "approle": _approle,
            "kubernetes": lambda vault, path: Kubernetes(vault.tokens, self.service_accounts, path),
        }
        engines: SecretEngines = {
            "kv": _kv,
            "database": lambda vault, path: DatabaseEngine(self.leases, path),
        }
        self.vault = Vault(engines, auth_methods)
        self.leases = LeaseManager(self.vault.tokens)
        self.vault.system_routes["leases"] = self.leases.handle
        self.sweepers = [self.vault.tokens.sweep, self.leases.sweep]
        self._server: _Server | None = None
        self._stop = threading.Event()

    @property
    def root_token(self) -> str:
        return self.vault.tokens.root.id

    @property
    def url(self) -> str:
        assert self._server is not None, "the emulator is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> VaultEmulator:
        self._server = _Server(self.vault)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._sweep, daemon=True).start()
        return self

    def _sweep(self) -> None:
        """Vault's expiration manager: revoke what outlived its TTL without waiting for a call."""
        while not self._stop.wait(SWEEP_INTERVAL):
            for sweep in self.sweepers:
                try:
                    sweep()
                except Exception:  # one failed revocation is retried on the next pass
                    continue

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
