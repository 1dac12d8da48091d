"""Credential: a secret's fields, safe to pass around, log and raise with.

A credential never shows a confidential value: `repr`, `str` and formatting
show the public fields (username, host, ...) and `***` for the rest, and
pickling is refused. The JSON form exists for the two places a value may go,
the target and the store, and is asked for by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

#: Fields whose values are not confidential and may be shown (usernames, hosts).
PUBLIC_FIELDS = frozenset(
    {
        "engine",
        "host",
        "port",
        "dbname",
        "username",
        "key_id",
        "lease_id",
        "lease_duration",
        "expires_at",
    }
)


class Credential(Mapping[str, Any]):
    """An immutable mapping of a secret's fields whose repr hides every value."""

    __slots__ = ("_fields",)
    _fields: dict[str, Any]

    def __init__(self, fields: Mapping[str, Any] | None = None, /, **extra: Any) -> None:
        merged = dict(fields or {})
        merged.update(extra)
        object.__setattr__(self, "_fields", merged)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Credential is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Credential is immutable")

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Credential):
            return self._fields == other._fields
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        shown = {k: (v if k in PUBLIC_FIELDS else "***") for k, v in self._fields.items()}
        return f"Credential({shown})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Credential is never serialised implicitly; use to_json() on purpose")

    def __copy__(self) -> Credential:
        return self  # immutable: a copy would be the same value

    def __deepcopy__(self, memo: dict[int, Any]) -> Credential:
        return self

    @property
    def username(self) -> str | None:
        value = self._fields.get("username")
        return None if value is None else str(value)

    @property
    def password(self) -> str | None:
        value = self._fields.get("password")
        return None if value is None else str(value)

    def replace(self, **changes: Any) -> Credential:
        """A copy with some fields changed."""
        return Credential({**self._fields, **changes})

    def public(self) -> dict[str, Any]:
        """The fields that may be shown: usernames and hosts, never a password or key."""
        return {k: v for k, v in self._fields.items() if k in PUBLIC_FIELDS}

    def secret_values(self) -> Iterable[str]:
        """Every confidential value, for the log redaction processor."""
        for key, value in self._fields.items():
            if key not in PUBLIC_FIELDS and isinstance(value, str) and len(value) >= 4:
                yield value

    def to_json(self) -> str:
        """The plaintext JSON form; only for a store or a user who asked for it."""
        return json.dumps(self._fields, sort_keys=True, separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        """A plain dict copy; only for a store or a user who asked for it."""
        return dict(self._fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> Credential:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a secret value must be a JSON object")
        return cls(data)
