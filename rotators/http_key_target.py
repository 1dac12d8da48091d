"""The `target:` block of an `api-key` secret: requests to a provider, checked at load time.

Every URL and body template is checked here (rotators/http_templates.py), so a run never
meets a placeholder it cannot fill or a URL it may not call; plain http leaves the machine
only when `allow_insecure_http` says so.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rotators.http_templates import (
    check_body,
    check_url,
    is_loopback,
    origin,
    placeholders,
    pointer_tokens,
)

#: What an HTTP header value may hold: visible ASCII, no spaces, no line breaks.
HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,8192}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PREFIX_SAFE = re.compile(r"[\x20-\x7e]{0,64}")
CREATE_PLACEHOLDERS = ("secret_name", "request_id")
KEY_PLACEHOLDERS = ("secret_name", "key_id")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class CreateRequest(BaseModel):
    """How the provider makes a key, and where its reply holds the key and the key's id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    url: str
    body: Any = None
    key_pointer: str
    key_id_pointer: str

    _method = field_validator("method", mode="before")(_upper)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, CREATE_PLACEHOLDERS)

    @field_validator("body")
    @classmethod
    def _body(cls, value: Any) -> Any:
        return check_body(value, CREATE_PLACEHOLDERS)

    @field_validator("key_pointer", "key_id_pointer")
    @classmethod
    def _pointer(cls, value: str) -> str:
        return _pointer(value)

    @model_validator(mode="after")
    def _apart(self) -> CreateRequest:
        if pointer_tokens(self.key_pointer) == pointer_tokens(self.key_id_pointer):
            raise ValueError(
                f"key_pointer and key_id_pointer both name {self.key_pointer} (the key id is "
                "shown in logs and status, so it must never be the key; expected e.g. "
                "/key/secret and /key/id)"
            )
        return self


class VerifyRequest(BaseModel):
    """A request made with the key itself: 2xx means the provider accepts it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "HEAD", "POST"] = "GET"
    url: str
    header: str = "Authorization"
    prefix: str = "Bearer "
    #: Where the reply names the key's id: when set, a key whose stored key_id differs fails.
    key_id_pointer: str | None = None

    _method = field_validator("method", mode="before")(_upper)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, KEY_PLACEHOLDERS)

    @field_validator("key_id_pointer")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        return None if value is None else _pointer(value)

    @model_validator(mode="after")
    def _has_body(self) -> VerifyRequest:
        if self.key_id_pointer is not None and self.method == "HEAD":
            raise ValueError(
                "key_id_pointer is set but the method is HEAD, whose reply has no body "
                "(use GET or POST, or remove key_id_pointer)"
            )
        return self

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _header_prefix(value)


class RevokeRequest(BaseModel):
    """How the provider deletes a key by its id (`{key_id}` in the URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["DELETE", "POST", "PUT", "PATCH"] = "DELETE"
    url: str
    body: Any = None

    _method = field_validator("method", mode="before")(_upper)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if "key_id" not in placeholders(value, KEY_PLACEHOLDERS):
            raise ValueError(
                f"{value!r} does not name the key to revoke (expected {{key_id}} in the URL, "
                "e.g. https://api.example.com/keys/{key_id})"
            )
        return check_url(value, KEY_PLACEHOLDERS)

    @field_validator("body")
    @classmethod
    def _body(cls, value: Any) -> Any:
        return check_body(value, KEY_PLACEHOLDERS)


class TlsSettings(BaseModel):
    """Certificate checks for https URLs: on unless turned off on purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verify: bool = True
    ca_cert: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if self.ca_cert is not None and not self.verify:
            raise ValueError("ca_cert is set but verify is false (remove one of them)")
        return self


class ApiKeyTarget(BaseModel):
    """The `target:` block of an `api-key` secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    create: CreateRequest
    verify: VerifyRequest
    revoke: RevokeRequest | None = None
    admin_secret: str | None = None
    admin_header: str = "Authorization"
    admin_prefix: str = "Bearer "
    admin_field: str = Field("api_key", min_length=1)
    connect_timeout: float = Field(5.0, gt=0, le=120)
    read_timeout: float = Field(30.0, gt=0, le=600)
    tls: TlsSettings = TlsSettings()
    allow_insecure_http: bool = False

    @field_validator("admin_header")
    @classmethod
    def _admin_header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("admin_prefix")
    @classmethod
    def _admin_prefix(cls, value: str) -> str:
        return _header_prefix(value)

    @model_validator(mode="after")
    def _no_plain_http(self) -> ApiKeyTarget:
        if self.allow_insecure_http:
            return self
        for label, url in self.urls():
            if origin(url)[0] == "http" and not is_loopback(url):
                raise ValueError(
                    f"{label} {url!r} sends keys over plain http (use https, or set "
                    "allow_insecure_http: true if the network is trusted)"
                )
        return self

    def urls(self) -> list[tuple[str, str]]:
        """Each request's URL template, labelled by its key in the block."""
        found = [("create.url", self.create.url), ("verify.url", self.verify.url)]
        if self.revoke is not None:
            found.append(("revoke.url", self.revoke.url))
        return found


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name (expected e.g. X-API-Key)")
    return value


def _header_prefix(value: str) -> str:
    if not _PREFIX_SAFE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a header prefix (expected up to 64 printable ASCII characters, "
            "e.g. 'Bearer ' or '')"
        )
    if value[:1].isspace():
        raise ValueError(
            f"{value!r} starts with a space, which a header value cannot (expected e.g. "
            "'Bearer ', or '' for none)"
        )
    return value


def _pointer(value: str) -> str:
    if not pointer_tokens(value):
        raise ValueError("the pointer is empty (expected the path to one value, e.g. /key/id)")
    return value
