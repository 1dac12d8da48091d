"""Which Vault the tests talk to, and helpers that set one up the same way on each.

In order: `VAULT_ADDR` + `VAULT_TOKEN` (a real Vault, root token); a
`hashicorp/vault` dev-mode container when a Docker engine answers; else
tests/vault_emulator. `ROTATOR_TEST_VAULT=emulator` forces the emulator.
Every helper goes through hvac, so it does the same to a real Vault and to
the emulator; tests use unique mount and role names since the server is
shared by the session.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import hvac
import requests

from tests.services.docker import docker_available
from tests.services.postgres import PgServer
from tests.vault_emulator import VaultEmulator

VAULT_IMAGE = "hashicorp/vault:1.17"


CREATION_STATEMENTS = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";',
)


@dataclass(frozen=True)
class DatabaseRole:
    """A database secrets mount and the role to read `<mount>/creds/<role>` from."""

    mount: str
    role: str

    @property
    def creds_path(self) -> str:
        return f"{self.mount}/creds/{self.role}"


@dataclass(frozen=True)
class KubernetesLogin:
    """What a pod needs to log in: the auth mount, the role and its service-account JWT."""

    mount: str
    role: str
    jwt: str
    service_account: str
    namespace: str


@dataclass
class VaultService:
    """A Vault reachable at `url` with the root token `token`."""

    url: str
    token: str
    emulated: bool
    emulator: VaultEmulator | None = None
    container: Any = None
    _approle_enabled: set[str] = field(default_factory=set)

    def client(self, token: str | None = None, namespace: str | None = None) -> hvac.Client:
        """An hvac client as rotator builds one (root token unless another is given)."""
        return hvac.Client(url=self.url, token=token or self.token, namespace=namespace)

    def enable_kv2(self, mount: str | None = None) -> str:
        """Mount KV v2 at `mount` (default: a fresh name); an existing KV v2 mount is kept."""
        mount = (mount or f"kv-{secrets.token_hex(4)}").strip("/")
        mounts = self.client().sys.list_mounted_secrets_engines()["data"]
        existing = mounts.get(f"{mount}/")
        if existing is not None:
            version = (existing.get("options") or {}).get("version")
            if existing["type"] != "kv" or version != "2":
                raise RuntimeError(f"{mount}/ is mounted as {existing['type']} v{version}")
            return mount
        self.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        return mount

    def create_token(
        self,
        ttl: str | int = "1h",
        *policies: str,
        renewable: bool = True,
        explicit_max_ttl: str | int | None = None,
        orphan: bool = False,
    ) -> str:
        """A new token (a child of root unless `orphan`) with these policies and TTL."""
        auth = self.client().auth.token.create(
            ttl=str(ttl) if isinstance(ttl, int) else ttl,
            policies=list(policies) or ["default"],
            renewable=renewable,
            explicit_max_ttl=explicit_max_ttl,
            no_parent=orphan,
        )["auth"]
        return str(auth["client_token"])

    def write_policy(self, name: str, rules: str) -> None:
        """An ACL policy (HCL), enforced by Vault and the emulator alike."""
        self.client().sys.create_or_update_acl_policy(name=name, policy=rules)

    def enable_approle(
        self,
        role: str | None = None,
        *,
        policies: tuple[str, ...] = ("default",),
        token_ttl: str = "1h",
        token_max_ttl: str = "4h",
        secret_id_ttl: str = "0",
        mount: str = "approle",
    ) -> tuple[str, str]:
        """Enable AppRole at `mount` (once), create `role`; return (role_id, secret_id)."""
        client = self.client()
        if mount not in self._approle_enabled:
            if f"{mount}/" not in client.sys.list_auth_methods()["data"]:
                client.sys.enable_auth_method("approle", path=mount)
            self._approle_enabled.add(mount)
        role = role or f"role-{secrets.token_hex(4)}"
        client.auth.approle.create_or_update_approle(
            role,
            token_policies=list(policies),
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_ttl=secret_id_ttl,
            mount_point=mount,
        )
        role_id = client.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(role, mount_point=mount)["data"][
            "secret_id"
        ]
        return str(role_id), str(secret_id)

    def kubernetes_login(
        self, role: str, *, token_ttl: str = "1h", policies: tuple[str, ...] = ("default",)
    ) -> KubernetesLogin | None:
        """A kubernetes auth mount with `role` bound to a service account, and its JWT.

        The emulator vouches for a JWT it issues itself. A real Vault verifies the
        JWT with the cluster's TokenReview API, so it needs a cluster: set
        ROTATOR_TEST_K8S_HOST, ROTATOR_TEST_K8S_CA (PEM), ROTATOR_TEST_K8S_JWT and
        ROTATOR_TEST_K8S_SA (`namespace/name`). None when no cluster is configured.
        """
        if self.emulated:
            assert self.emulator is not None
            host, ca, account = "https://kubernetes.default.svc:443", "", "default/rotator"
            namespace, name = account.split("/")
            jwt = self.emulator.service_accounts.issue(name, namespace)
        else:
            env = {k: os.environ.get(f"ROTATOR_TEST_K8S_{k}", "") for k in ("HOST", "CA", "JWT")}
            account = os.environ.get("ROTATOR_TEST_K8S_SA", "")
            if not all(env.values()) or "/" not in account:
                return None
            host, ca, jwt = env["HOST"], env["CA"], env["JWT"]
            namespace, name = account.split("/", 1)
        mount = f"k8s-{secrets.token_hex(4)}"
        client = self.client()
        client.sys.enable_auth_method("kubernetes", path=mount)
        client.auth.kubernetes.configure(host, kubernetes_ca_cert=ca or None, mount_point=mount)
        client.auth.kubernetes.create_role(
            role, [name], [namespace], ttl=token_ttl, policies=list(policies), mount_point=mount
        )
        return KubernetesLogin(mount, role, jwt, name, namespace)

    def configure_database(
        self,
        pg: PgServer,
        role: str | None = None,
        *,
        default_ttl: str = "1h",
        max_ttl: str = "24h",
        creation_statements: tuple[str, ...] = CREATION_STATEMENTS,
        revocation_statements: tuple[str, ...] = (),
    ) -> DatabaseRole:
        """A database mount on `pg` (admin: its superuser) with one role for creds.

        Passwords reach PostgreSQL as SCRAM verifiers (password_authentication).
        A real Vault must reach the server itself: ROTATOR_TEST_VAULT_PG_HOST
        names the host it should use (e.g. the Docker host), else `pg.host`.
        """
        client = self.client()
        mount = f"db-{secrets.token_hex(4)}"
        role = role or f"app-{secrets.token_hex(3)}"
        host = os.environ.get("ROTATOR_TEST_VAULT_PG_HOST") or pg.host
        client.sys.enable_secrets_engine("database", path=mount)
        client.write_data(
            f"{mount}/config/{pg.dbname}",
            data={
                "plugin_name": "postgresql-database-plugin",
                "connection_url": (
                    f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{pg.port}/{pg.dbname}"
                    "?sslmode=disable"
                ),
                "username": pg.user,
                "password": pg.password,
                "allowed_roles": [role],
                "password_authentication": "scram-sha-256",
                "verify_connection": True,
            },
        )
        client.write_data(
            f"{mount}/roles/{role}",
            data={
                "db_name": pg.dbname,
                "creation_statements": list(creation_statements),
                "revocation_statements": list(revocation_statements),
                "default_ttl": default_ttl,
                "max_ttl": max_ttl,
            },
        )
        return DatabaseRole(mount, role)

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
        if self.container is not None:
            self.container.stop()


def start_vault() -> VaultService:
    """The Vault for this test session (see the module docstring for the order)."""
    forced = os.environ.get("ROTATOR_TEST_VAULT", "")
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if forced != "emulator" and addr and token:
        return VaultService(addr.rstrip("/"), token, emulated=False)
    if forced != "emulator" and docker_available():
        return _start_container()
    emulator = VaultEmulator().start()
    return VaultService(emulator.url, emulator.root_token, emulated=True, emulator=emulator)


def _start_container() -> VaultService:
    from testcontainers.core.container import DockerContainer

    token = secrets.token_urlsafe(18)
    container = (
        DockerContainer(VAULT_IMAGE)
        .with_env("VAULT_DEV_ROOT_TOKEN_ID", token)
        .with_env("VAULT_DEV_LISTEN_ADDRESS", "0.0.0.0:8200")
        .with_env("SKIP_SETCAP", "1")
        .with_exposed_ports(8200)
    )
    container.start()
    url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8200)}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/v1/sys/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            container.stop()
            raise RuntimeError(f"the Vault container at {url} did not become healthy in 60 s")
        time.sleep(0.5)
    return VaultService(url, token, emulated=False, container=container)


class FaultyVault:
    """An HTTP server answering every KV request with one fixed reply, for the failures a
    working Vault does not give on demand: sealed (503), rate limited (429), 5xx, 405, 409,
    a proxy's HTML page, a response cut off mid-body (status 0). lookup-self answers as
    Vault does, so a token store can log in.
    """

    def __init__(self, status: int, body: str, content_type: str = "application/json") -> None:
        import http.server
        import threading

        reply = (status, body.encode(), content_type)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, payload, kind = reply
                if self.path.startswith("/v1/auth/token/lookup-self"):
                    code, kind = 200, "application/json"
                    payload = b'{"data": {"ttl": 0, "renewable": false}, "auth": null}'
                self.send_response(code or 200)
                self.send_header("Content-Type", kind)
                if code == 0:  # a response cut off mid-body: a broken chunked encoding
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"zz\r\n")
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
