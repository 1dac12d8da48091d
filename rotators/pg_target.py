"""The `target:` block of a `postgres-password` secret, validated when schedules.yaml loads.

Every check that needs only the block itself lives here, so a bad block is listed with its
file and line before any rotation runs: role names PostgreSQL cannot hold, and an
alternating strategy without the admin it needs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: The second role of `strategy: alternating` is `<username>` + this unless named.
CLONE_SUFFIX = "_clone"


class PostgresTarget(BaseModel):
    """The `target:` block of a `postgres-password` secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "postgres"
    username: str = Field(min_length=1)
    admin_secret: str | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: int = Field(5, ge=1, le=120)
    #: `single`: one role, one password. `alternating`: two roles take turns (pg_alternating).
    strategy: Literal["single", "alternating"] = "single"
    #: The second role of `alternating`; `<username>_clone` when left out.
    clone_username: str | None = Field(None, validate_default=True)

    @property
    def clone_name(self) -> str:
        return self.clone_username or f"{self.username}{CLONE_SUFFIX}"

    @property
    def role_names(self) -> tuple[str, ...]:
        """The roles whose passwords this target rotates."""
        if self.strategy == "alternating":
            return (self.username, self.clone_name)
        return (self.username,)

    @field_validator("username")
    @classmethod
    def _fits_in_name(cls, value: str) -> str:
        return _checked_role_name(value, "")

    @field_validator("strategy")
    @classmethod
    def _alternating_needs_admin(cls, value: str, info: ValidationInfo) -> str:
        if value == "alternating" and "admin_secret" in info.data and not info.data["admin_secret"]:
            raise ValueError(
                "`strategy: alternating` needs `admin_secret`: a role cannot change another "
                "role's password without CREATEROLE (set admin_secret to a secret whose login "
                "may create and alter both roles)"
            )
        return value

    @field_validator("clone_username")
    @classmethod
    def _clone_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        strategy, username = info.data.get("strategy"), info.data.get("username")
        if value is not None and strategy == "single":
            raise ValueError("is only used with `strategy: alternating` (remove it, or set that)")
        if strategy != "alternating" or username is None:
            return value
        name = value if value is not None else f"{username}{CLONE_SUFFIX}"
        _checked_role_name(name, " (set a shorter `clone_username`)", "clone role")
        if name == username:
            raise ValueError("the clone role must differ from `username` (set another name)")
        return value

    @field_validator("host", "dbname")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("cannot contain NUL (libpq would cut the connection settings there)")
        return value


def _checked_role_name(name: str, advice: str, what: str = "role") -> str:
    """`name` when PostgreSQL can hold it as a role name, else a ValueError saying why."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > 63:
        shown = repr(name) if len(name) <= 60 else repr(name[:40]) + "..."
        raise ValueError(
            f"the {what} name {shown} is {size} bytes; PostgreSQL role names are at most 63 "
            f"bytes{advice}"
        )
    if "\x00" in name:
        raise ValueError(f"{what} names cannot contain NUL")
    return name
