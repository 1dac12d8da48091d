"""A small API-key provider over real HTTP, for the api-key rotator's tests.

A `ThreadingHTTPServer` on a free loopback port:

* `POST /keys` with `Authorization: Bearer <admin key>` and a JSON body `{"name": ...,
  "admin": bool}` -> 201 `{"key": {"id": "k-...", "secret": "sk_..."}, "name": ...}`;
* `GET /whoami` with `Authorization: Bearer <key>` -> 200 `{"id": ...}`, else 401;
* `DELETE /keys/{id}` with an admin key -> 204; an unknown or deleted id -> 404.

`GET /moved` redirects to `/whoami` (a client must not follow it). Given a certificate and
key (`self_signed_cert` makes them), it speaks https. A wrong admin key is 401, a key
without admin rights 403. Tests can make the next calls of a route answer 503
(`fail_next`), do their work and then hang up without answering (`drop_next`), hold
replies (`delay_seconds`), issue keys that never work (`broken_new_keys`), shape the create
reply (`create_reply`: JSON, or raw bytes) and have error bodies echo the key they were
sent (`echo_keys`), as careless providers do. Every request is recorded (method, path, JSON
body, auth header).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotator.devservers import free_port


@dataclass
class Key:
    id: str
    secret: str
    name: str
    admin: bool
    works: bool = True


@dataclass
class Seen:
    """One request as the service received it."""

    method: str
    path: str
    body: Any
    authorization: str | None
    query: str = ""
    status: int = 0


@dataclass
class KeyService:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    keys: dict[str, Key] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    #: route ("create", "whoami", "revoke") -> how many of its next calls answer 503.
    failures: dict[str, int] = field(default_factory=dict)
    #: route -> how many of its next calls do their work, then close without a reply.
    drops: dict[str, int] = field(default_factory=dict)
    #: the create reply for a key just made (JSON-able, or bytes sent as they are).
    create_reply: Callable[[Key], Any] | None = None
    delay_seconds: float = 0.0
    broken_new_keys: bool = False
    echo_keys: bool = False
    #: (certificate file, key file): serve https instead of http.
    tls: tuple[Path, Path] | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> KeyService:
        service = self

        class Handler(_Handler):
            keyservice = service

        server = _Server((self.host, self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def issue(self, name: str = "seed", admin: bool = False) -> Key:
        """A key made directly (as an operator would in the provider's console)."""
        with self._lock:
            key = Key(
                id=f"k-{secrets.token_hex(6)}",
                secret=f"sk_{secrets.token_urlsafe(24)}",
                name=name,
                admin=admin,
                works=not self.broken_new_keys,
            )
            self.keys[key.id] = key
            return key

    def fail_next(self, route: str, count: int) -> None:
        with self._lock:
            self.failures[route] = count

    def drop_next(self, route: str, count: int) -> None:
        with self._lock:
            self.drops[route] = count

    def works(self, secret: str) -> bool:
        """Whether the service accepts `secret` right now."""
        return self._key_of(f"Bearer {secret}") is not None

    def seen(self, method: str, prefix: str = "/") -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def all_secrets(self) -> list[str]:
        return [key.secret for key in self.keys.values()]

    def _key_of(self, authorization: str | None) -> Key | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            for key in self.keys.values():
                if key.works and secrets.compare_digest(key.secret, token):
                    return key
        return None

    def _take(self, counts: dict[str, int], route: str | None) -> bool:
        with self._lock:
            left = counts.get(route or "", 0)
            if left > 0:
                counts[route or ""] = left - 1
            return left > 0


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a test's timeout) or refused our certificate is expected."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    keyservice: KeyService
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        service = self.keyservice
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        target = urlsplit(self.path)
        body = json.loads(raw) if raw else None
        seen = Seen(self.command, target.path, body, self.headers["Authorization"], target.query)
        service.requests.append(seen)
        if service.delay_seconds:
            time.sleep(service.delay_seconds)
        status, body = self._route(service, seen)
        seen.status = status
        if service._take(service.drops, self._route_name(seen)):
            self.close_connection = True  # the work is done, but no reply comes back
            return
        self._reply(status, body)

    def _route(self, service: KeyService, seen: Seen) -> tuple[int, Any]:
        route = self._route_name(seen)
        if route == "moved":
            return 302, None
        if route is None:
            return 404, {"error": "no such route"}
        if service._take(service.failures, route):
            return 503, self._error("try again later", seen)
        caller = service._key_of(seen.authorization)
        if caller is None:
            return 401, self._error("unknown key", seen)
        if route == "whoami":
            return 200, {"id": caller.id, "name": caller.name}
        if not caller.admin:
            return 403, self._error("not an admin key", seen)
        if route == "create":
            body = seen.body if isinstance(seen.body, dict) else {}
            key = service.issue(str(body.get("name", "")), bool(body.get("admin", False)))
            if service.create_reply is not None:
                return 201, service.create_reply(key)
            return 201, {"key": {"id": key.id, "secret": key.secret}, "name": key.name}
        key_id = seen.path.removeprefix("/keys/")
        with service._lock:
            removed = service.keys.pop(key_id, None)
        return (204, None) if removed is not None else (404, {"error": "no such key"})

    @staticmethod
    def _route_name(seen: Seen) -> str | None:
        if seen.method == "POST" and seen.path == "/keys":
            return "create"
        if seen.path == "/moved":
            return "moved"
        if seen.method == "GET" and seen.path == "/whoami":
            return "whoami"
        if seen.method == "DELETE" and seen.path.startswith("/keys/"):
            return "revoke"
        return None

    def _error(self, message: str, seen: Seen) -> dict[str, Any]:
        if self.keyservice.echo_keys:
            return {"error": message, "you_sent": seen.authorization}
        return {"error": message}

    def _reply(self, status: int, body: Any) -> None:
        if isinstance(body, bytes):
            data = body
        else:
            data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/whoami")
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_keyservice(tls: tuple[Path, Path] | None = None) -> KeyService:
    return KeyService(tls=tls).start()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyservice test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "keyservice.crt", directory / "keyservice.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
