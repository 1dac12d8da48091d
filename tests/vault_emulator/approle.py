"""The AppRole auth method: roles, role IDs, secret IDs and login.

Login is the only route without a token. A wrong role ID or secret ID is a
400 `invalid role or secret ID`, as Vault answers (it no longer says which of
the two was wrong). Tokens from login are orphans carrying the role's TTLs.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.vault_emulator.api import (
    NO_CONTENT,
    ApiError,
    Reply,
    Request,
    envelope,
    not_found,
    parse_ttl,
    policy_list,
    rfc3339,
)
from tests.vault_emulator.tokens import TokenStore, normalise_policies

INVALID_LOGIN = "invalid role or secret ID"


@dataclass
class TokenSettings:
    """The token_* fields every role-based auth method shares."""

    token_ttl: int = 0
    token_max_ttl: int = 0
    token_policies: list[str] = field(default_factory=list)

    def update(self, body: dict[str, Any]) -> None:
        for name, old in (("token_ttl", "ttl"), ("token_max_ttl", "max_ttl")):
            if name in body or old in body:  # the old names are Vault's deprecated aliases
                setattr(self, name, parse_ttl(body.get(name, body.get(old)), name))
        if "token_policies" in body or "policies" in body:
            self.token_policies = policy_list(body.get("token_policies", body.get("policies")))

    def describe(self) -> dict[str, Any]:
        return {
            "token_ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
            "token_policies": self.token_policies,
            "policies": self.token_policies,
            "token_type": "default",
            "token_num_uses": 0,
            "token_period": 0,
            "token_explicit_max_ttl": 0,
            "token_no_default_policy": False,
            "token_bound_cidrs": [],
        }

    def login(self, tokens: TokenStore, path: str, meta: dict[str, str], name: str) -> Reply:
        """The auth block of a login: an orphan token with this role's policies and TTLs."""
        token = tokens.issue(
            normalise_policies(self.token_policies),
            ttl=self.token_ttl,
            max_ttl=self.token_max_ttl,
            path=path,
            parent=None,
            meta=meta,
            display_name=name,
        )
        return envelope(auth=token.auth_block(tokens.clock()))


@dataclass
class SecretId:
    accessor: str
    expires: float | None  # monotonic
    uses_left: int  # 0: unlimited
    metadata: dict[str, str]
    created: str = field(default_factory=rfc3339)


@dataclass
class Role:
    name: str
    role_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    bind_secret_id: bool = True
    secret_id_ttl: int = 0
    secret_id_num_uses: int = 0
    token: TokenSettings = field(default_factory=TokenSettings)
    secret_ids: dict[str, SecretId] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "bind_secret_id": self.bind_secret_id,
            "secret_id_ttl": self.secret_id_ttl,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_bound_cidrs": None,
            "local_secret_ids": False,
            **self.token.describe(),
        }


class AppRole:
    """One mount of the approle auth method."""

    type = "approle"
    login_paths = frozenset({"login"})

    def __init__(self, tokens: TokenStore, mount: str) -> None:
        self.tokens = tokens
        self.mount = mount
        self.roles: dict[str, Role] = {}
        self._lock = threading.RLock()

    def handle(self, req: Request, rest: str) -> Reply:
        with self._lock:
            if rest == "login" and req.writes:
                return self._login(req)
            parts = rest.split("/", 2)
            if parts[0] == "role" and len(parts) == 1 and req.method == "LIST":
                if not self.roles:
                    raise not_found()
                return envelope({"keys": sorted(self.roles)})
            if parts[0] != "role" or len(parts) < 2:
                raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')
            name, sub = parts[1], parts[2] if len(parts) > 2 else ""
            return self._role_route(req, name, sub)

    def _role_route(self, req: Request, name: str, sub: str) -> Reply:
        if not sub:
            return self._role(req, name)
        role = self.roles.get(name)
        if role is None:
            raise ApiError(400, f'role "{name}" does not exist')
        if sub == "role-id" and req.method == "GET":
            return envelope({"role_id": role.role_id})
        if sub == "role-id" and req.writes:
            role.role_id = str(req.body.get("role_id") or role.role_id)
            return NO_CONTENT
        if sub == "secret-id" and req.writes:
            return self._new_secret_id(role, req.body)
        if sub in ("secret-id/lookup", "secret-id/destroy") and req.writes:
            found = role.secret_ids.get(str(req.body.get("secret_id", "")))
            if sub.endswith("destroy"):
                role.secret_ids.pop(str(req.body.get("secret_id", "")), None)
                return NO_CONTENT
            if found is None:
                raise not_found()
            return envelope(self._describe_secret_id(found))
        raise ApiError(405, "unsupported operation")

    def _role(self, req: Request, name: str) -> Reply:
        if req.method == "GET":
            role = self.roles.get(name)
            if role is None:
                raise not_found()
            return envelope(role.describe())
        if req.method == "DELETE":
            self.roles.pop(name, None)
            return NO_CONTENT
        if not req.writes:
            raise ApiError(405, "unsupported operation")
        role = self.roles.setdefault(name, Role(name))
        body = req.body
        if "bind_secret_id" in body:
            role.bind_secret_id = bool(body["bind_secret_id"])
        if "secret_id_ttl" in body:
            role.secret_id_ttl = parse_ttl(body["secret_id_ttl"], "secret_id_ttl")
        if "secret_id_num_uses" in body:
            role.secret_id_num_uses = int(body["secret_id_num_uses"])
        role.token.update(body)
        if role.token.token_max_ttl and role.token.token_ttl > role.token.token_max_ttl:
            raise ApiError(400, "token_ttl should not be greater than token_max_ttl")
        return NO_CONTENT

    def _new_secret_id(self, role: Role, body: dict[str, Any]) -> Reply:
        ttl = parse_ttl(body.get("ttl"), "ttl") or role.secret_id_ttl
        raw_meta = body.get("metadata") or "{}"
        metadata = json.loads(raw_meta) if isinstance(raw_meta, str) else dict(raw_meta)
        secret_id = str(uuid.uuid4())
        role.secret_ids[secret_id] = SecretId(
            accessor=str(uuid.uuid4()),
            expires=self.tokens.clock() + ttl if ttl else None,
            uses_left=int(body.get("num_uses") or role.secret_id_num_uses),
            metadata=metadata,
        )
        found = role.secret_ids[secret_id]
        return envelope(
            {
                "secret_id": secret_id,
                "secret_id_accessor": found.accessor,
                "secret_id_ttl": ttl,
                "secret_id_num_uses": found.uses_left,
            }
        )

    def _describe_secret_id(self, found: SecretId) -> dict[str, Any]:
        now = self.tokens.clock()
        left = 0 if found.expires is None else max(0, math.ceil(found.expires - now))
        expiration = "0001-01-01T00:00:00Z"
        if found.expires is not None:
            expiration = rfc3339(time.time() + left)
        return {
            "secret_id_accessor": found.accessor,
            "secret_id_num_uses": found.uses_left,
            "secret_id_ttl": left,
            "creation_time": found.created,
            "expiration_time": expiration,
            "metadata": found.metadata,
            "cidr_list": [],
            "token_bound_cidrs": [],
        }

    def _login(self, req: Request) -> Reply:
        role_id = str(req.body.get("role_id", ""))
        role = next((r for r in self.roles.values() if r.role_id == role_id), None)
        if role is None:
            raise ApiError(400, INVALID_LOGIN)
        if role.bind_secret_id:
            self._spend_secret_id(role, str(req.body.get("secret_id", "")))
        return role.token.login(
            self.tokens,
            f"auth/{self.mount}login",
            {"role_name": role.name},
            "approle",
        )

    def _spend_secret_id(self, role: Role, secret_id: str) -> None:
        found = role.secret_ids.get(secret_id)
        if found is not None and found.expires is not None and found.expires <= self.tokens.clock():
            del role.secret_ids[secret_id]
            found = None
        if found is None:
            raise ApiError(400, INVALID_LOGIN)
        if found.uses_left:
            found.uses_left -= 1
            if found.uses_left == 0:
                del role.secret_ids[secret_id]
