"""Vault's token store: TTLs on a monotonic clock, renewal capped by max TTL, revocation.

A token dies when its TTL passes or its parent dies (as in Vault, revoking a
parent revokes its children); the root token never expires. Listeners hear of
every revoked token so leases it created can be revoked with it.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.vault_emulator.api import (
    NO_CONTENT,
    SYSTEM_MAX_TTL,
    ApiError,
    Reply,
    Request,
    envelope,
    format_ttl,
    parse_ttl,
    policy_list,
    rfc3339,
)

Clock = Callable[[], float]


@dataclass
class Token:
    id: str
    policies: list[str]
    creation_ttl: int
    max_ttl: int  # 0: never expires (root-policy tokens without a TTL)
    renewable: bool
    path: str
    parent: str | None
    issued: float  # monotonic
    meta: dict[str, str] | None = None
    display_name: str = "token"
    explicit_max_ttl: int = 0
    expires: float | None = None  # monotonic; None: never
    accessor: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    issued_wall: float = field(default_factory=time.time)
    last_renewal: float | None = None  # wall clock
    children: set[str] = field(default_factory=set)

    def ttl_left(self, now: float) -> int:
        return 0 if self.expires is None else max(0, math.ceil(self.expires - now))

    def wall(self, monotonic: float, now: float) -> float:
        return time.time() + (monotonic - now)

    def auth_block(self, now: float) -> dict[str, Any]:
        return {
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": self.policies,
            "token_policies": self.policies,
            "metadata": self.meta,
            "lease_duration": self.ttl_left(now),
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": self.parent is None,
            "mfa_requirement": None,
            "num_uses": 0,
        }

    def lookup_data(self, now: float) -> dict[str, Any]:
        expire = None if self.expires is None else rfc3339(self.wall(self.expires, now))
        data: dict[str, Any] = {
            "accessor": self.accessor,
            "creation_time": int(self.issued_wall),
            "creation_ttl": self.creation_ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": expire,
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": self.id,
            "issue_time": rfc3339(self.issued_wall),
            "meta": self.meta,
            "num_uses": 0,
            "orphan": self.parent is None,
            "path": self.path,
            "policies": self.policies,
            "renewable": self.renewable,
            "ttl": self.ttl_left(now),
            "type": "service",
        }
        if self.last_renewal is not None:
            data["last_renewal_time"] = int(self.last_renewal)
            data["last_renewal"] = rfc3339(self.last_renewal)
        return data


def normalise_policies(policies: list[str], no_default: bool = False) -> list[str]:
    """Sorted, de-duplicated, with `default` added unless refused or the token is root."""
    chosen = set(policies)
    if "root" not in chosen and not no_default:
        chosen.add("default")
    return sorted(chosen)


class TokenStore:
    """Every token of the emulated Vault (tokens are global across namespaces)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._tokens: dict[str, Token] = {}
        self.revoke_listeners: list[Callable[[str], None]] = []
        self.root = self.issue(
            ["root"], ttl=0, path="auth/token/root", parent=None, display_name="root"
        )

    def issue(
        self,
        policies: list[str],
        *,
        ttl: int,
        path: str,
        parent: str | None,
        max_ttl: int = 0,
        explicit_max_ttl: int = 0,
        renewable: bool = True,
        meta: dict[str, str] | None = None,
        display_name: str = "token",
    ) -> Token:
        """A new token; `ttl` 0 means the default (768h), or forever for root-policy tokens."""
        now = self.clock()
        caps = [cap for cap in (explicit_max_ttl, max_ttl or SYSTEM_MAX_TTL) if cap]
        cap = min(caps)
        forever = ttl == 0 and "root" in policies
        ttl = 0 if forever else min(ttl or cap, cap)
        token = Token(
            id="hvs." + secrets.token_urlsafe(24),
            policies=policies,
            creation_ttl=ttl,
            max_ttl=0 if forever else cap,
            renewable=renewable and not forever,
            path=path,
            parent=parent,
            issued=now,
            meta=meta,
            display_name=display_name,
            explicit_max_ttl=explicit_max_ttl,
            expires=None if forever else now + ttl,
        )
        with self._lock:
            self._tokens[token.id] = token
            if parent in self._tokens:
                self._tokens[parent].children.add(token.id)
        return token

    def get(self, token_id: str | None) -> Token | None:
        """The live token with this id; an expired one is revoked on sight."""
        if not token_id:
            return None
        with self._lock:
            token = self._tokens.get(token_id)
            if token is None:
                return None
            if token.expires is not None and token.expires <= self.clock():
                self.revoke(token_id)
                return None
            if token.parent is not None and self.get(token.parent) is None:
                self.revoke(token_id)
                return None
            return token

    def sweep(self) -> None:
        """Revoke every token whose TTL has passed (the emulator's expiry manager)."""
        with self._lock:
            ids = list(self._tokens)
        for token_id in ids:
            self.get(token_id)

    def renew(self, token: Token, increment: int) -> list[str]:
        """Extend `token` by `increment` (default: its creation TTL) within its max TTL."""
        if not token.renewable:
            raise ApiError(400, "lease is not renewable")
        now = self.clock()
        wanted = increment or token.creation_ttl
        left_to_max = max(0, math.floor(token.issued + token.max_ttl - now))
        warnings = []
        if wanted > left_to_max:
            warnings.append(
                f'TTL of "{format_ttl(wanted)}" exceeded the effective max_ttl of '
                f'"{format_ttl(left_to_max)}"; TTL value is capped accordingly'
            )
            wanted = left_to_max
        token.expires = now + wanted
        token.last_renewal = time.time()
        return warnings

    def revoke(self, token_id: str) -> None:
        """Revoke a token and its children; unknown tokens are a no-op as in Vault."""
        with self._lock:
            token = self._tokens.pop(token_id, None)
            if token is None:
                return
            for child in list(token.children):
                self.revoke(child)
        for listener in self.revoke_listeners:
            listener(token_id)


class TokenBackend:
    """The `auth/token/` routes."""

    type = "token"
    login_paths: frozenset[str] = frozenset()

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def handle(self, req: Request, rest: str) -> Reply:
        now = self.store.clock()
        caller: Token = req.token
        if rest in ("create", "create-orphan") and req.writes:
            return self._create(
                req, orphan=rest == "create-orphan" or bool(req.body.get("no_parent"))
            )
        if rest == "lookup-self" and req.method in ("GET", "POST", "PUT"):
            return envelope(caller.lookup_data(now))
        if rest == "lookup" and req.method in ("GET", "POST", "PUT"):
            return envelope(self._named(req).lookup_data(now))
        if rest in ("renew-self", "renew") and req.writes:
            token = caller if rest == "renew-self" else self._named(req)
            warnings = self.store.renew(token, parse_ttl(req.body.get("increment"), "increment"))
            return envelope(auth=token.auth_block(self.store.clock()), warnings=warnings)
        if rest in ("revoke-self", "revoke") and req.writes:
            target = caller.id if rest == "revoke-self" else str(req.body.get("token", ""))
            self.store.revoke(target)
            return NO_CONTENT
        raise ApiError(405 if rest in _ROUTES else 404, *_unsupported(req, rest))

    def _named(self, req: Request) -> Token:
        token = self.store.get(str(req.body.get("token") or req.query.get("token") or ""))
        if token is None:
            raise ApiError(403, "bad token")
        return token

    def _create(self, req: Request, orphan: bool) -> Reply:
        body = req.body
        caller: Token = req.token
        policies = policy_list(body.get("policies")) or [
            p for p in caller.policies if p != "default"
        ]
        if "root" not in caller.policies and not set(policies) <= set(caller.policies):
            raise ApiError(400, "child policies must be subset of parent")
        token = self.store.issue(
            normalise_policies(policies, bool(body.get("no_default_policy"))),
            ttl=parse_ttl(body.get("ttl")),
            explicit_max_ttl=parse_ttl(body.get("explicit_max_ttl"), "explicit_max_ttl"),
            renewable=bool(body.get("renewable", True)),
            path="auth/token/create",
            parent=None if orphan else caller.id,
            meta=body.get("meta"),
            display_name="token" + (f"-{body['display_name']}" if body.get("display_name") else ""),
        )
        return envelope(auth=token.auth_block(self.store.clock()))


_ROUTES = {
    "create",
    "create-orphan",
    "lookup-self",
    "lookup",
    "renew-self",
    "renew",
    "revoke-self",
    "revoke",
}


def _unsupported(req: Request, rest: str) -> list[str]:
    if rest in _ROUTES:
        return ["unsupported operation"]
    return [f'no handler for route "{req.path}". route entry not found.']
