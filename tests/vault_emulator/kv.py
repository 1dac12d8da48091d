"""The KV version 2 secrets engine: versions, check-and-set, metadata, soft delete.

Status codes and messages follow Vault's kv plugin: a missing secret or
version is a bare 404, a deleted or destroyed version is a 404 whose body
still carries the version's metadata, and a check-and-set mismatch is a 400.
As Vault does, a write under delete_version_after (the mount's or the key's,
the shorter non-zero one) stamps the new version with a future deletion_time,
and a version counts as deleted only once its deletion_time has passed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.vault_emulator.api import (
    NO_CONTENT,
    ApiError,
    Reply,
    Request,
    envelope,
    format_ttl,
    not_found,
    parse_ttl,
    rfc3339,
)

#: What max_versions 0 means, in the mount's config and in a secret's metadata.
DEFAULT_MAX_VERSIONS = 10
CAS_MISMATCH = "check-and-set parameter did not match the current version"
CAS_REQUIRED = "check-and-set parameter required for this call"


def _gone(deletion_time: str) -> bool:
    """Vault's check: a version is deleted once its deletion_time (if any) has passed."""
    if not deletion_time:
        return False
    return datetime.strptime(deletion_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC
    ) <= datetime.now(UTC)


@dataclass
class Version:
    data: dict[str, Any] | None
    created_time: str = field(default_factory=rfc3339)
    deletion_time: str = ""
    destroyed: bool = False

    @property
    def gone(self) -> bool:
        return self.destroyed or _gone(self.deletion_time)

    def delete(self) -> None:
        """As Vault's delete: stamp now unless already deleted (a future stamp moves to now)."""
        if not self.gone:
            self.deletion_time = rfc3339()

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
            self.config["delete_version_after"] = format_ttl(seconds)
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
        if version.gone:
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
        afters = (self.config["delete_version_after"], secret.delete_version_after)
        seconds = [parse_ttl(after) for after in afters if parse_ttl(after)]
        if seconds:  # as Vault's deletionTime(): the shorter of the two non-zero settings
            version.deletion_time = rfc3339(time.time() + min(seconds))
        secret.versions[number] = version
        secret.current_version = number
        secret.updated_time = version.created_time
        self.secrets[path] = secret
        self._prune(secret)
        return envelope(version.metadata(number, secret.custom_metadata))

    def patch(self, req: Request, path: str) -> Reply:
        secret = self.secrets.get(path)
        latest = secret.versions.get(secret.current_version) if secret else None
        if latest is None or latest.gone:
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
            secret.versions[secret.current_version].delete()
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
            version.delete()
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
        if not any(key in body for key in _METADATA_FIELDS):
            return NO_CONTENT  # Vault's fast path: nothing to set, nothing created
        secret = self.secrets.setdefault(path, Secret())
        if "max_versions" in body:
            secret.max_versions = int(body["max_versions"])
        if "cas_required" in body:
            secret.cas_required = bool(body["cas_required"])
        if "delete_version_after" in body:
            seconds = parse_ttl(body["delete_version_after"], "delete_version_after")
            secret.delete_version_after = format_ttl(seconds)
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
    """Vault's validateCustomMetadata: at most 64 pairs of printable strings, keys of
    1-128 bytes, values of 1-512 bytes."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "custom_metadata must be a map of strings")
    problems = []
    if len(value) > 64:
        problems.append("payload must contain at most 64 keys, provided keys: " + str(len(value)))
    for key, item in value.items():
        if not isinstance(item, str):
            raise ApiError(400, "custom_metadata must be a map of strings")
        size, item_size = len(str(key).encode()), len(item.encode())
        if not 0 < size <= 128:
            problems.append(f'length of key "{key}" is {size} but must be 0 < len(key) <= 128')
        if not 0 < item_size <= 512:
            problems.append(
                f'length of value for key "{key}" is {item_size} but must be 0 < len(value) <= 512'
            )
        if not str(key).isprintable():
            problems.append(f'key "{key!r}" contains unprintable characters')
        if not item.isprintable():
            problems.append(f'value for key "{key}" contains unprintable characters')
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
_METADATA_FIELDS = ("max_versions", "cas_required", "delete_version_after", "custom_metadata")
_KNOWN = {"data", "delete", "undelete", "destroy", "metadata", "config"}
