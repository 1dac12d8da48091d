"""The emulator's HTTP front: authentication, namespaces, mounts and routing.

A `ThreadingHTTPServer` on a free loopback port serves `/v1/...` from a daemon
thread. Every call but `sys/health` and the auth methods' login routes needs a
live `X-Vault-Token` (else 403 `permission denied`, as Vault answers); each
`X-Vault-Namespace` has its own mounts, while tokens are shared, as a root
namespace token reaches child namespaces in Vault.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.vault_emulator.acl import DEFAULT_POLICY, Acl, needed
from tests.vault_emulator.api import NO_CONTENT, ApiError, Reply, Request, envelope
from tests.vault_emulator.kv import KvV2
from tests.vault_emulator.tokens import TokenBackend, TokenStore


class Backend(Protocol):
    type: str

    def handle(self, req: Request, rest: str) -> Reply: ...


@dataclass
class Mount:
    backend: Any
    options: dict[str, str] = field(default_factory=dict)
    description: str = ""
    accessor: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.backend.type,
            "description": self.description,
            "accessor": f"{self.backend.type}_{self.accessor}",
            "uuid": self.uuid,
            "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
            "options": self.options or None,
            "local": False,
            "seal_wrap": False,
            "external_entropy_access": False,
            "plugin_version": "",
        }


#: Factories for `sys/mounts` types (a factory gets the Vault and the mount path).
SecretEngines = dict[str, Callable[["Vault", str], Any]]
#: Factories for `sys/auth` types.
AuthMethods = dict[str, Callable[["Vault", str], Any]]


class Namespace:
    """The mounts of one namespace, laid out as `vault server -dev` starts."""

    def __init__(self, tokens: TokenStore) -> None:
        self.mounts: dict[str, Mount] = {"secret/": Mount(KvV2(), {"version": "2"})}
        self.auth: dict[str, Mount] = {"token/": Mount(TokenBackend(tokens))}

    @staticmethod
    def resolve(table: dict[str, Mount], path: str) -> tuple[Mount, str] | None:
        """The mount with the longest prefix of `path`, and the rest of the path."""
        for prefix in sorted(table, key=len, reverse=True):
            if path.startswith(prefix) or path + "/" == prefix:
                return table[prefix], path[len(prefix) :]
        return None


class Vault:
    """All emulated state, and the router from a parsed request to a reply."""

    def __init__(self, engines: SecretEngines, auth_methods: AuthMethods) -> None:
        self.tokens = TokenStore()
        self.engines = engines
        self.auth_methods = auth_methods
        self.namespaces: dict[str, Namespace] = {}
        self.policies: dict[str, str] = {}
        self.system_routes: dict[str, Callable[[Request, str], Reply]] = {
            "policies": self._policies
        }
        self._lock = threading.RLock()

    def namespace(self, name: str) -> Namespace:
        with self._lock:
            return self.namespaces.setdefault(name.strip("/"), Namespace(self.tokens))

    def dispatch(self, req: Request, token_id: str | None) -> Reply:
        if req.path == "sys/health":
            return Reply(200, _health())
        ns = self.namespace(req.namespace)
        login = self._login_route(ns, req)
        if login is not None:
            return login
        req.token = self.tokens.get(token_id)
        if req.token is None:
            raise ApiError(403, "permission denied")
        found = None
        if req.path.startswith("auth/"):
            found = ns.resolve(ns.auth, req.path[len("auth/") :])
        elif not req.path.startswith("sys/"):
            found = ns.resolve(ns.mounts, req.path)
        self._authorize(req, found)
        if req.path.startswith("sys/"):
            return self._system(ns, req)
        if found is None:
            raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')
        mount, rest = found
        return mount.backend.handle(req, rest)  # type: ignore[no-any-return]

    def _authorize(self, req: Request, found: tuple[Mount, str] | None) -> None:
        """403 unless the token's policies grant the capability the call needs."""
        policies: list[str] = req.token.policies
        if "root" in policies:
            return
        exists = None
        if found is not None and hasattr(found[0].backend, "exists"):
            exists = found[0].backend.exists(found[1])
        texts = [self.policies.get(name, "") for name in policies if name != "default"]
        if "default" in policies:
            texts.append(DEFAULT_POLICY)
        if not Acl(texts).allows(req.path, needed(req.method, exists)):
            raise ApiError(403, "permission denied")

    def _login_route(self, ns: Namespace, req: Request) -> Reply | None:
        if not req.path.startswith("auth/"):
            return None
        found = ns.resolve(ns.auth, req.path[len("auth/") :])
        if found is None or found[1] not in getattr(found[0].backend, "login_paths", ()):
            return None
        return found[0].backend.handle(req, found[1])  # type: ignore[no-any-return]

    def _system(self, ns: Namespace, req: Request) -> Reply:
        section, _, rest = req.path[len("sys/") :].partition("/")
        if section in ("mounts", "auth"):
            table = ns.mounts if section == "mounts" else ns.auth
            factories = self.engines if section == "mounts" else self.auth_methods
            return self._mounts(table, factories, req, rest.strip("/"))
        route = self.system_routes.get(section)
        if route is None:
            raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')
        return route(req, rest)

    def _policies(self, req: Request, rest: str) -> Reply:
        """`sys/policies/acl/<name>`: the policies tokens name (see acl.py)."""
        kind, _, name = rest.partition("/")
        if kind != "acl":
            raise ApiError(404, f'no handler for route "{req.path}". route entry not found.')
        if not name and req.method == "LIST":
            return envelope({"keys": sorted({"default", "root", *self.policies})})
        if req.writes:
            self.policies[name] = str(req.body.get("policy", ""))
            return NO_CONTENT
        if req.method == "DELETE":
            self.policies.pop(name, None)
            return NO_CONTENT
        if req.method == "GET" and name in self.policies:
            return envelope({"name": name, "policy": self.policies[name]})
        raise ApiError(404)

    def _mounts(
        self, table: dict[str, Mount], factories: SecretEngines, req: Request, path: str
    ) -> Reply:
        if not path:
            if req.method != "GET":
                raise ApiError(405, "unsupported operation")
            listing = {name: mount.describe() for name, mount in table.items()}
            reply = envelope(listing)
            assert reply.body is not None
            reply.body.update(listing)  # Vault repeats the mounts at the top level
            return reply
        key = path + "/"
        if req.method == "DELETE":
            table.pop(key, None)
            return NO_CONTENT
        if req.method == "GET":
            if key not in table:
                raise ApiError(400, f"No secret engine mount at {key}")
            return envelope(table[key].describe())
        if not req.writes:
            raise ApiError(405, "unsupported operation")
        if key in table:
            raise ApiError(400, f"path is already in use at {key}")
        kind = str(req.body.get("type", ""))
        options = {k: str(v) for k, v in (req.body.get("options") or {}).items()}
        if kind == "kv-v2":
            kind, options["version"] = "kv", "2"
        if kind == "kv" and options.get("version") != "2":
            raise ApiError(400, "the emulator serves kv version 2 only: set options.version=2")
        factory = factories.get(kind)
        if factory is None:
            raise ApiError(400, f"plugin not found in the catalog: {kind}")
        table[key] = Mount(factory(self, key), options, str(req.body.get("description", "")))
        return NO_CONTENT


def _health() -> dict[str, Any]:
    return {
        "initialized": True,
        "sealed": False,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": "1.17.0+emulator",
        "cluster_name": "vault-cluster-emulator",
        "cluster_id": "00000000-0000-0000-0000-000000000000",
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read no access log
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        method = self.command
        if method == "GET" and query.get("list") == "true":
            method = "LIST"
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if not url.path.startswith("/v1/"):
                raise ApiError(404)
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise ApiError(400, f"failed to parse JSON input: {exc}") from exc
            req = Request(
                method,
                unquote(url.path[len("/v1/") :]).rstrip("/"),
                query,
                body if isinstance(body, dict) else {},
                self.headers.get("X-Vault-Namespace", ""),
            )
            reply = self.server.vault.dispatch(req, self.headers.get("X-Vault-Token"))
        except ApiError as exc:
            reply = Reply(exc.status, {"errors": exc.errors})
        except Exception as exc:  # an emulator bug: answer like Vault's 500 and keep serving
            reply = Reply(500, {"errors": [f"emulator error: {type(exc).__name__}: {exc}"]})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_LIST = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, vault: Vault) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.vault = vault
