"""Leases on dynamic secrets: `sys/leases/lookup|renew|revoke` and expiry.

As in Vault's expiration manager, a lease ends when its TTL passes (the
emulator's background sweep revokes it) or when the token that created it is
revoked; renewal is capped by the lease's max TTL; revoking an unknown or
already revoked lease succeeds. A revocation that fails (the database is
down, or refuses to drop the role) keeps the lease and is retried on the next
sweep; asked for over `sys/leases/revoke`, it is answered 400 "failed to revoke
entry: ..." as Vault's synchronous revocation does.
"""

from __future__ import annotations

import math
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.vault_emulator.api import (
    NO_CONTENT,
    ApiError,
    Reply,
    Request,
    envelope,
    format_ttl,
    parse_ttl,
    rfc3339,
)
from tests.vault_emulator.tokens import TokenStore

_ID_CHARS = string.ascii_letters + string.digits


@dataclass
class Lease:
    id: str
    token: str  # the id of the token that created it
    ttl: int  # as issued: the default increment of a renewal
    max_ttl: int
    issued: float  # monotonic
    expires: float  # monotonic
    extend: Callable[[int], None]  # tell the backend the new TTL (e.g. VALID UNTIL)
    revoke: Callable[[], None]  # the backend's revocation
    issued_wall: float = field(default_factory=time.time)
    last_renewal: float | None = None  # wall clock

    def ttl_left(self, now: float) -> int:
        return max(0, math.ceil(self.expires - now))


class LeaseManager:
    """Every lease of the emulated Vault, and the `sys/leases/` routes."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.leases: dict[str, Lease] = {}
        self._lock = threading.RLock()
        tokens.revoke_listeners.append(self.revoke_by_token)

    def issue(
        self,
        prefix: str,
        token: str,
        ttl: int,
        max_ttl: int,
        extend: Callable[[int], None],
        revoke: Callable[[], None],
    ) -> Lease:
        """A lease under `prefix` (e.g. `database/creds/app`) owned by `token`."""
        now = self.tokens.clock()
        lease_id = f"{prefix.rstrip('/')}/" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))
        lease = Lease(lease_id, token, ttl, max_ttl, now, now + ttl, extend, revoke)
        with self._lock:
            self.leases[lease_id] = lease
        return lease

    def handle(self, req: Request, rest: str) -> Reply:
        action, _, suffix = rest.partition("/")
        lease_id = str(req.body.get("lease_id") or req.body.get("url_lease_id") or suffix)
        if action == "lookup" and req.writes:
            return envelope(self._describe(self._get(lease_id, "invalid lease")))
        if action == "renew" and req.writes:
            return self._renew(lease_id, parse_ttl(req.body.get("increment"), "increment"))
        if action == "revoke" and req.writes:
            try:
                self.revoke(lease_id)
            except Exception as exc:  # Vault: handleError turns a plain error into a 400
                detail = "; ".join(exc.errors) if isinstance(exc, ApiError) else str(exc)
                raise ApiError(
                    400,
                    "failed to revoke entry: resp: (*logical.Response)(nil) err: "
                    + " ".join(detail.split()),
                ) from None
            return NO_CONTENT
        if action == "revoke-prefix" and req.writes:
            for found in [i for i in list(self.leases) if i.startswith(suffix)]:
                self.revoke(found)
            return NO_CONTENT
        raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')

    def _get(self, lease_id: str, missing: str) -> Lease:
        if not lease_id:
            raise ApiError(400, "lease_id must be specified")
        lease = self.leases.get(lease_id)
        if lease is None or lease.expires <= self.tokens.clock():
            raise ApiError(400, missing)
        return lease

    def _describe(self, lease: Lease) -> dict[str, Any]:
        now = self.tokens.clock()
        return {
            "id": lease.id,
            "issue_time": rfc3339(lease.issued_wall),
            "expire_time": rfc3339(time.time() + (lease.expires - now)),
            "last_renewal": None if lease.last_renewal is None else rfc3339(lease.last_renewal),
            "renewable": True,
            "ttl": lease.ttl_left(now),
        }

    def _renew(self, lease_id: str, increment: int) -> Reply:
        with self._lock:
            lease = self._get(lease_id, "lease not found")
            now = self.tokens.clock()
            wanted = increment or lease.ttl
            left_to_max = max(0, math.floor(lease.issued + lease.max_ttl - now))
            warnings = []
            if wanted > left_to_max:
                warnings.append(
                    f'TTL of "{format_ttl(wanted)}" exceeded the effective max_ttl of '
                    f'"{format_ttl(left_to_max)}"; TTL value is capped accordingly'
                )
                wanted = left_to_max
            lease.extend(wanted)
            lease.expires = now + wanted
            lease.last_renewal = time.time()
        return envelope(
            None, lease_id=lease.id, renewable=True, lease_duration=wanted, warnings=warnings
        )

    def revoke(self, lease_id: str) -> None:
        """Run the backend's revocation, then forget the lease; unknown ids are a no-op."""
        with self._lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return
            lease.revoke()
            self.leases.pop(lease_id, None)

    def revoke_by_token(self, token_id: str) -> None:
        """Revoke the leases a revoked token created; a failure is left to the sweep."""
        for lease in [lease for lease in list(self.leases.values()) if lease.token == token_id]:
            try:
                self.revoke(lease.id)
            except Exception:
                lease.expires = self.tokens.clock()

    def sweep(self) -> None:
        """Revoke every lease whose TTL has passed; failures are retried on the next pass."""
        now = self.tokens.clock()
        for lease in [lease for lease in list(self.leases.values()) if lease.expires <= now]:
            try:
                self.revoke(lease.id)
            except Exception:
                continue
