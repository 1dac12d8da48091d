"""The shapes every emulated route shares: requests, replies, errors, TTLs and times.

Vault answers with one JSON envelope (request_id, lease_id, renewable,
lease_duration, data, wrap_info, warnings, auth) and errors as
`{"errors": [...]}`; these helpers build both so each engine only says what
differs.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Vault's system-wide default and maximum lease TTL (768h).
SYSTEM_MAX_TTL = 768 * 3600

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")
_WHOLE = re.compile(r"^(\d+[dhms])+$")


class ApiError(Exception):
    """An error reply: HTTP status and Vault's `errors` list."""

    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(f"{status}: {'; '.join(errors)}")
        self.status = status
        self.errors = list(errors)


def not_found() -> ApiError:
    """Vault's bare 404 for a missing secret, role or version: `{"errors": []}`."""
    return ApiError(404)


@dataclass
class Request:
    """One API call, after the token and namespace have been resolved."""

    method: str  # GET, POST, PUT, PATCH, DELETE or LIST
    path: str  # without the leading /v1/
    query: dict[str, str]
    body: dict[str, Any]
    namespace: str = ""
    token: Any = None  # the caller's tokens.Token, or None on unauthenticated routes

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT")


@dataclass
class Reply:
    """An HTTP status and a JSON body (None for 204 No Content)."""

    status: int = 200
    body: dict[str, Any] | None = field(default=None)


NO_CONTENT = Reply(204, None)


def envelope(
    data: Any = None,
    *,
    auth: dict[str, Any] | None = None,
    lease_id: str = "",
    lease_duration: int = 0,
    renewable: bool = False,
    warnings: list[str] | None = None,
    status: int = 200,
) -> Reply:
    """Vault's standard response body around `data` or an `auth` block."""
    return Reply(
        status,
        {
            "request_id": str(uuid.uuid4()),
            "lease_id": lease_id,
            "renewable": renewable,
            "lease_duration": lease_duration,
            "data": data,
            "wrap_info": None,
            "warnings": warnings or None,
            "auth": auth,
        },
    )


def parse_ttl(value: Any, name: str = "ttl") -> int:
    """Seconds from an int or a Go-style duration (`90`, `"90"`, `"1h30m"`, `"2s"`)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ApiError(400, f"invalid value for {name!r}: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if not _WHOLE.match(text):
        raise ApiError(400, f"error parsing {name!r}: invalid duration {text!r}")
    return sum(int(number) * _UNITS[unit] for number, unit in _PART.findall(text))


def format_ttl(seconds: int) -> str:
    """A duration as Go prints one (`1h0m0s`, `2m30s`, `5s`), as Vault's warnings do."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch: float | None = None) -> str:
    """A UTC timestamp as Vault writes them (`2024-01-02T03:04:05.123456Z`)."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def policy_list(value: Any) -> list[str]:
    """Policies given as a list or a comma-separated string."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def random_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex
