"""The Kubernetes auth method: config, roles bound to service accounts, login with a JWT.

Real Vault sends the login JWT to the cluster's TokenReview API and trusts the
service account the cluster names. The emulator has no cluster: it accepts
only JWTs that a test registered with `ServiceAccounts.issue` (what the
TokenReview API would vouch for), and refuses any other with 403, as Vault
does when the review fails.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from tests.vault_emulator.api import (
    NO_CONTENT,
    ApiError,
    Reply,
    Request,
    envelope,
    not_found,
    policy_list,
)
from tests.vault_emulator.approle import TokenSettings
from tests.vault_emulator.tokens import TokenStore


@dataclass(frozen=True)
class ServiceAccount:
    name: str
    namespace: str
    uid: str


class ServiceAccounts:
    """The emulated cluster's TokenReview: which JWT belongs to which service account."""

    def __init__(self) -> None:
        self._by_jwt: dict[str, ServiceAccount] = {}

    def issue(self, name: str, namespace: str = "default") -> str:
        """A service-account JWT the emulated cluster vouches for."""
        claims = {
            "iss": "kubernetes/serviceaccount",
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
        }
        parts = [{"alg": "RS256", "typ": "JWT"}, claims]
        encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in parts]
        jwt = b".".join([*encoded, secrets.token_urlsafe(32).encode()]).decode()
        self._by_jwt[jwt] = ServiceAccount(name, namespace, str(uuid.uuid4()))
        return jwt

    def review(self, jwt: str) -> ServiceAccount | None:
        return self._by_jwt.get(jwt)


@dataclass
class KubernetesRole:
    names: list[str]
    namespaces: list[str]
    audience: str = ""
    token: TokenSettings = field(default_factory=TokenSettings)

    def describe(self) -> dict[str, Any]:
        return {
            "bound_service_account_names": self.names,
            "bound_service_account_namespaces": self.namespaces,
            "audience": self.audience,
            "alias_name_source": "serviceaccount_uid",
            **self.token.describe(),
        }


class Kubernetes:
    """One mount of the kubernetes auth method."""

    type = "kubernetes"
    login_paths = frozenset({"login"})

    def __init__(self, tokens: TokenStore, accounts: ServiceAccounts, mount: str) -> None:
        self.tokens = tokens
        self.accounts = accounts
        self.mount = mount
        self.config: dict[str, Any] | None = None
        self.roles: dict[str, KubernetesRole] = {}
        self._lock = threading.RLock()

    def handle(self, req: Request, rest: str) -> Reply:
        with self._lock:
            if rest == "login" and req.writes:
                return self._login(req.body)
            if rest == "config":
                return self._config(req)
            if rest == "role" and req.method == "LIST":
                if not self.roles:
                    raise not_found()
                return envelope({"keys": sorted(self.roles)})
            if rest.startswith("role/"):
                return self._role(req, rest[len("role/") :])
        raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')

    def _config(self, req: Request) -> Reply:
        if req.writes:
            if not req.body.get("kubernetes_host"):
                raise ApiError(400, "no host provided")
            self.config = {
                "kubernetes_host": req.body["kubernetes_host"],
                "kubernetes_ca_cert": req.body.get("kubernetes_ca_cert", ""),
                "issuer": req.body.get("issuer", ""),
                "disable_local_ca_jwt": bool(req.body.get("disable_local_ca_jwt", False)),
                "pem_keys": req.body.get("pem_keys") or [],
            }
            return NO_CONTENT
        if req.method == "GET":
            if self.config is None:
                raise not_found()
            return envelope(dict(self.config))
        raise ApiError(405, "unsupported operation")

    def _role(self, req: Request, name: str) -> Reply:
        if req.method == "GET":
            if name not in self.roles:
                raise not_found()
            return envelope(self.roles[name].describe())
        if req.method == "DELETE":
            self.roles.pop(name, None)
            return NO_CONTENT
        if not req.writes:
            raise ApiError(405, "unsupported operation")
        body = req.body
        names = policy_list(body.get("bound_service_account_names"))
        namespaces = policy_list(body.get("bound_service_account_namespaces"))
        if not names or not namespaces:
            raise ApiError(
                400,
                '"bound_service_account_names" and "bound_service_account_namespaces" '
                "can not be empty",
            )
        role = KubernetesRole(names, namespaces, str(body.get("audience") or ""))
        role.token.update(body)
        self.roles[name] = role
        return NO_CONTENT

    def _login(self, body: dict[str, Any]) -> Reply:
        name = str(body.get("role") or "")
        if not name:
            raise ApiError(400, "missing role")
        if not body.get("jwt"):
            raise ApiError(400, "missing jwt")
        role = self.roles.get(name)
        if role is None:
            raise ApiError(400, f'invalid role name "{name}"')
        if self.config is None:
            raise ApiError(400, "could not load backend configuration")
        account = self.accounts.review(str(body["jwt"]))
        if account is None:
            raise ApiError(403, "permission denied")
        if not any(fnmatchcase(account.name, bound) for bound in role.names):
            raise ApiError(403, "service account name not authorized")
        if not any(fnmatchcase(account.namespace, bound) for bound in role.namespaces):
            raise ApiError(403, "namespace not authorized")
        meta = {
            "role": name,
            "service_account_name": account.name,
            "service_account_namespace": account.namespace,
            "service_account_secret_name": "",
            "service_account_uid": account.uid,
        }
        display = f"{self.mount.rstrip('/')}-{account.namespace}-{account.name}"
        return role.token.login(self.tokens, f"auth/{self.mount}login", meta, display)
