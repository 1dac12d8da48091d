"""The KV version 2 secrets engine: versions, check-and-set, metadata, soft delete.

Status codes and messages follow Vault's kv plugin: a missing secret or
version is a bare 404, a deleted or destroyed version is a 404 whose body
still carries the version's metadata, and a check-and-set mismatch is a 400.
"""

from __future__ import annotations

import threading
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
    rfc3339,
)

#: What max_versions 0 means, in the mount's config and in a secret's metadata.
DEFAULT_MAX_VERSIONS = 10
CAS_MISMATCH = "check-and-set parameter did not match the current version"
CAS_REQUIRED = "check-and-set parameter required for this call"


@dataclass
class Version:
    data: dict[str, Any] | None
    created_time: str = field(default_factory=rfc3339)
    deletion_time: str = ""
    destroyed: bool = False

    def metadata(self, number: int, custom: dict[str, str] | None) -> dict[str, Any]:
        return {
            "created_time": self.created_time,
            "custom_metadata": custom,
            "deletion_time": self.deletion_time,
            "destroyed": self.destroyed,
            "version": number,
        }


@dataclass
class Secret:
    versions: dict[int, Version] = field(default_factory=dict)
    current_version: int = 0
    oldest_version: int = 0
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: str = "0s"
    custom_metadata: dict[str, str] | None = None
    created_time: str = field(default_factory=rfc3339)
    updated_time: str = field(default_factory=rfc3339)

    def describe(self) -> dict[str, Any]:
        return {
            "cas_required": self.cas_required,
            "created_time": self.created_time,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": self.delete_version_after,
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": self.updated_time,
            "versions": {
                str(number): {
                    "created_time": version.created_time,
                    "deletion_time": version.deletion_time,
                    "destroyed": version.destroyed,
                }
                for number, version in sorted(self.versions.items())
            },
        }


class KvV2:
    """One mount of the kv engine with `options.version = 2`."""

    type = "kv"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.secrets: dict[str, Secret] = {}
        self.config: dict[str, Any] = {
            "cas_required": False,
            "delete_version_after": "0s",
            "max_versions": 0,
        }

    def handle(self, req: Request, rest: str) -> Reply:
        action, _, path = rest.partition("/")
        handler = _ACTIONS.get((action, req.method))
        if handler is None:
            if action == "config" and not path:
                return self._config(req)
            raise ApiError(
                405 if action in _KNOWN else 404,
                *(["unsupported operation"] if action in _KNOWN else []),
            )
        with self._lock:
            return handler(self, req, path.strip("/"))

    def exists(self, rest: str) -> bool | None:
        """Whether a write would update (True) or create (False), for the ACL check."""
        action, _, path = rest.partition("/")
        if action in ("data", "metadata"):
            return path.strip("/") in self.secrets
        return None

    def _config(self, req: Request) -> Reply:
        if req.method == "GET":
            return envelope(dict(self.config))
        if not req.writes:
            raise ApiError(405, "unsupported operation")
        for key in ("cas_required", "max_versions"):
            if key in req.body:
                self.config[key] = type(self.config[key])(req.body[key])
        if "delete_version_after" in req.body:
            seconds = parse_ttl(req.body["delete_version_after"], "delete_version_after")
            self.config["delete_version_after"] = f"{seconds}s"
        return NO_CONTENT

    # data/<path>

    def read(self, req: Request, path: str) -> Reply:
        secret = self.secrets.get(path)
        if secret is None or not secret.versions:
            raise not_found()
        wanted = req.query.get("version") or "0"
        if not wanted.isdigit():
            raise ApiError(400, f"invalid version {wanted!r}: expected a whole number")
        number = int(wanted) or secret.current_version
        version = secret.versions.get(number)
        if version is None:
            raise not_found()
        metadata = version.metadata(number, secret.custom_metadata)
        if version.deletion_time or version.destroyed:
            return envelope({"data": None, "metadata": metadata}, status=404)
        return envelope({"data": dict(version.data or {}), "metadata": metadata})

    def write(self, req: Request, path: str) -> Reply:
        data = req.body.get("data")
        if not isinstance(data, dict):
            raise ApiError(400, "no data provided")
        secret = self.secrets.get(path) or Secret()
        self._check_cas(secret, req.body.get("options") or {})
        number = secret.current_version + 1
        version = Version(dict(data))
        secret.versions[number] = version
        secret.current_version = number
        secret.updated_time = version.created_time
        self.secrets[path] = secret
        self._prune(secret)
        return envelope(version.metadata(number, secret.custom_metadata))

    def patch(self, req: Request, path: str) -> Reply:
        secret = self.secrets.get(path)
        latest = secret.versions.get(secret.current_version) if secret else None
        if latest is None or latest.deletion_time or latest.destroyed:
            raise not_found()
        merged = _merge_patch(dict(latest.data or {}), req.body.get("data") or {})
        return self.write(Request("POST", req.path, {}, {**req.body, "data": merged}), path)

    def _check_cas(self, secret: Secret, options: dict[str, Any]) -> None:
        cas = options.get("cas")
        required = secret.cas_required or bool(self.config["cas_required"])
        if cas is None:
            if required:
                raise ApiError(400, CAS_REQUIRED)
            return
        if int(cas) != secret.current_version:
            raise ApiError(400, CAS_MISMATCH)

    def _prune(self, secret: Secret) -> None:
        limit = secret.max_versions or int(self.config["max_versions"]) or DEFAULT_MAX_VERSIONS
        for number in sorted(secret.versions):
            if number <= secret.current_version - limit:
                del secret.versions[number]
        secret.oldest_version = min(secret.versions, default=0)
        if secret.oldest_version == 1 and secret.current_version <= limit:
            secret.oldest_version = 0  # Vault reports 0 until something was pruned

    def delete_latest(self, req: Request, path: str) -> Reply:
        secret = self.secrets.get(path)
        if secret is not None and secret.current_version in secret.versions:
            version = secret.versions[secret.current_version]
            if not version.deletion_time and not version.destroyed:
                version.deletion_time = rfc3339()
        return NO_CONTENT

    # delete/, undelete/, destroy/

    def _versions(self, req: Request, path: str) -> list[Version]:
        numbers = req.body.get("versions")
        if not numbers:
            raise ApiError(400, "no version number provided")
        secret = self.secrets.get(path)
        if secret is None:
            return []
        return [secret.versions[int(n)] for n in numbers if int(n) in secret.versions]

    def delete_versions(self, req: Request, path: str) -> Reply:
        for version in self._versions(req, path):
            if not version.destroyed and not version.deletion_time:
                version.deletion_time = rfc3339()
        return NO_CONTENT

    def undelete_versions(self, req: Request, path: str) -> Reply:
        for version in self._versions(req, path):
            if not version.destroyed:
                version.deletion_time = ""
        return NO_CONTENT

    def destroy_versions(self, req: Request, path: str) -> Reply:
        for version in self._versions(req, path):
            version.destroyed = True
            version.data = None
        return NO_CONTENT

    # metadata/<path>

    def read_metadata(self, req: Request, path: str) -> Reply:
        secret = self.secrets.get(path)
        if secret is None:
            raise not_found()
        return envelope(secret.describe())

    def write_metadata(self, req: Request, path: str) -> Reply:
        body = req.body
        secret = self.secrets.setdefault(path, Secret())
        if "max_versions" in body:
            secret.max_versions = int(body["max_versions"])
        if "cas_required" in body:
            secret.cas_required = bool(body["cas_required"])
        if "delete_version_after" in body:
            seconds = parse_ttl(body["delete_version_after"], "delete_version_after")
            secret.delete_version_after = f"{seconds}s"
        if "custom_metadata" in body:
            secret.custom_metadata = _custom_metadata(body["custom_metadata"])
        secret.updated_time = rfc3339()
        self._prune(secret)
        return NO_CONTENT

    def delete_metadata(self, req: Request, path: str) -> Reply:
        self.secrets.pop(path, None)
        return NO_CONTENT

    def list_keys(self, req: Request, path: str) -> Reply:
        prefix = f"{path}/" if path else ""
        keys = set()
        for name in self.secrets:
            if name.startswith(prefix):
                head, slash, _ = name[len(prefix) :].partition("/")
                keys.add(head + slash)
        if not keys:
            raise not_found()
        return envelope({"keys": sorted(keys)})


def _custom_metadata(value: Any) -> dict[str, str] | None:
    """Vault's limits: at most 64 string pairs, keys up to 128 bytes, values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "custom_metadata must be a map of strings")
    problems = []
    if len(value) > 64:
        problems.append("payload must contain at most 64 keys, provided keys: " + str(len(value)))
    for key, item in value.items():
        if len(str(key).encode()) > 128:
            problems.append(f"length of key {key!r} is greater than 128 bytes")
        if not isinstance(item, str):
            raise ApiError(400, "custom_metadata must be a map of strings")
        if len(item.encode()) > 512:
            problems.append(f"length of value for key {key!r} is greater than 512 bytes")
    if problems:
        raise ApiError(400, "custom_metadata validation failed: " + "; ".join(problems))
    return {str(k): v for k, v in value.items()}


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch, as Vault's PATCH on data/ applies."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge_patch(dict(target[key]), value)
        else:
            target[key] = value
    return target


_ACTIONS = {
    ("data", "GET"): KvV2.read,
    ("data", "POST"): KvV2.write,
    ("data", "PUT"): KvV2.write,
    ("data", "PATCH"): KvV2.patch,
    ("data", "DELETE"): KvV2.delete_latest,
    ("delete", "POST"): KvV2.delete_versions,
    ("delete", "PUT"): KvV2.delete_versions,
    ("undelete", "POST"): KvV2.undelete_versions,
    ("undelete", "PUT"): KvV2.undelete_versions,
    ("destroy", "POST"): KvV2.destroy_versions,
    ("destroy", "PUT"): KvV2.destroy_versions,
    ("metadata", "GET"): KvV2.read_metadata,
    ("metadata", "POST"): KvV2.write_metadata,
    ("metadata", "PUT"): KvV2.write_metadata,
    ("metadata", "DELETE"): KvV2.delete_metadata,
    ("metadata", "LIST"): KvV2.list_keys,
}
_KNOWN = {"data", "delete", "undelete", "destroy", "metadata", "config"}
