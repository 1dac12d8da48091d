"""The schedules.yaml model and loader.

`load_plan` refuses a bad file whole, listing every problem as
`FILE:LINE: key.path: what is wrong (what is expected)`. A valid file becomes
a frozen `Plan`: one `SecretSpec` per secret with its target block already
validated by the rotator's own model, and one `StoreConfig` per store.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rotator.base import RotatorRegistry, SecretRotator, registered_rotators
from rotator.durations import Duration
from rotator.errors import ConfigError, UnknownSecret
from rotator.passwords import PasswordPolicy
from rotator.stores import StoreConfig, store_class
from rotator.yamlsource import Loc, SourceDocument, load_yaml


def _check_timezone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (expected an IANA name such as UTC or Europe/Berlin)"
            ) from None
    return value


class Defaults(BaseModel):
    """Values every secret inherits unless it sets its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    window: Duration = timedelta(hours=1)
    grace: Duration = timedelta(hours=1)
    max_attempts: int = Field(5, ge=1, le=50)
    password: PasswordPolicy = PasswordPolicy()

    _tz = field_validator("timezone")(_check_timezone)


class SecretEntry(BaseModel):
    """One `secrets.NAME` block as written; `target` is checked by the rotator's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rotator: str
    store: str
    path: str | None = None
    every: Duration | None = None
    cron: str | None = None
    timezone: str | None = None
    window: Duration | None = None
    grace: Duration | None = None
    max_attempts: int | None = Field(None, ge=1, le=50)
    password: PasswordPolicy | None = None
    rotate_on_adopt: bool = True
    target: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(_check_timezone)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a cron expression (expected 5 fields, e.g. '0 3 * * 1')"
            )
        return value


class ScheduleFile(BaseModel):
    """The whole file as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    stores: dict[str, dict[str, Any]] = Field(default_factory=dict)
    secrets: dict[str, SecretEntry]


@dataclass(frozen=True)
class SecretSpec:
    """Everything needed to rotate one secret, resolved against the defaults."""

    name: str
    rotator: str
    store: str
    path: str
    every: timedelta | None
    cron: str | None
    timezone: str
    window: timedelta
    grace: timedelta
    max_attempts: int
    password: PasswordPolicy
    rotate_on_adopt: bool
    target: BaseModel

    @property
    def admin_secret(self) -> str | None:
        value = getattr(self.target, "admin_secret", None)
        return value if isinstance(value, str) else None

    def describe_schedule(self) -> str:
        from rotator.durations import format_duration

        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron '{self.cron}' {self.timezone}"


@dataclass(frozen=True)
class Plan:
    """A validated schedules.yaml."""

    source: Path
    secrets: dict[str, SecretSpec]
    stores: dict[str, StoreConfig]

    def secret(self, name: str) -> SecretSpec:
        try:
            return self.secrets[name]
        except KeyError:
            known = ", ".join(sorted(self.secrets)) or "none"
            raise UnknownSecret(
                f"no secret named {name!r} in {self.source} (declared: {known})"
            ) from None


def load_plan(
    path: Path | str,
    rotators: RotatorRegistry | None = None,
    environ: dict[str, str] | None = None,
) -> Plan:
    """Load and validate schedules.yaml; ConfigError lists every problem found."""
    doc = load_yaml(Path(path), environ)
    plan = None
    if doc.data is not None:
        plan = _validate(doc, registered_rotators() if rotators is None else rotators)
    if doc.problems or plan is None:
        count = len(doc.problems)
        raise ConfigError(
            f"{path}: {count} problem{'s' if count != 1 else ''}; nothing was loaded", doc.problems
        )
    return plan


def _validate(doc: SourceDocument, rotators: RotatorRegistry) -> Plan | None:
    if not isinstance(doc.data, dict):
        doc.problem(
            (), "the file must be a mapping (expected keys version, defaults, stores, secrets)"
        )
        return None
    try:
        raw = ScheduleFile.model_validate(doc.data)
    except ValidationError as exc:
        _report(doc, exc, (), ScheduleFile)
        return None
    stores = _validate_stores(doc, raw)
    secrets: dict[str, SecretSpec] = {}
    for name, entry in raw.secrets.items():
        spec = _validate_secret(doc, name, entry, raw, stores, rotators)
        if spec is not None:
            secrets[name] = spec
    _cross_check(doc, secrets, rotators)
    return Plan(doc.path, secrets, stores)


def _validate_stores(doc: SourceDocument, raw: ScheduleFile) -> dict[str, StoreConfig]:
    stores: dict[str, StoreConfig] = {}
    for name, block in raw.stores.items():
        loc: Loc = ("stores", name)
        type_name = block.get("type") if isinstance(block, dict) else None
        if not isinstance(type_name, str):
            doc.problem(loc, "missing `type` (expected embedded, aws-secrets-manager or vault-kv)")
            continue
        try:
            config_model = store_class(type_name).Config
        except ConfigError as exc:
            doc.problem((*loc, "type"), str(exc))
            continue
        try:
            stores[name] = config_model.model_validate(block)
        except ValidationError as exc:
            _report(doc, exc, loc, config_model)
    return stores


def _validate_secret(
    doc: SourceDocument,
    name: str,
    entry: SecretEntry,
    raw: ScheduleFile,
    stores: dict[str, StoreConfig],
    rotators: RotatorRegistry,
) -> SecretSpec | None:
    loc: Loc = ("secrets", name)
    ok = True
    if (entry.every is None) == (entry.cron is None):
        doc.problem(loc, "set exactly one of `every` (e.g. 30d) or `cron` (e.g. '0 3 * * 1')")
        ok = False
    if entry.store not in raw.stores:
        known = ", ".join(sorted(raw.stores)) or "none declared under `stores:`"
        doc.problem((*loc, "store"), f"unknown store {entry.store!r} (expected one of: {known})")
        ok = False
    rotator_cls = rotators.get(entry.rotator)
    target: BaseModel | None = None
    if rotator_cls is None:
        known = ", ".join(sorted(rotators)) or "none installed"
        doc.problem(
            (*loc, "rotator"), f"unknown rotator {entry.rotator!r} (expected one of: {known})"
        )
        ok = False
    else:
        try:
            target = rotator_cls.Target.model_validate(entry.target)
        except ValidationError as exc:
            _report(doc, exc, (*loc, "target"), rotator_cls.Target)
            ok = False
    if not ok or target is None:
        return None
    defaults = raw.defaults
    return SecretSpec(
        name=name,
        rotator=entry.rotator,
        store=entry.store,
        path=entry.path or name,
        every=entry.every,
        cron=entry.cron,
        timezone=entry.timezone or defaults.timezone,
        window=entry.window if entry.window is not None else defaults.window,
        grace=entry.grace if entry.grace is not None else defaults.grace,
        max_attempts=entry.max_attempts or defaults.max_attempts,
        password=entry.password or defaults.password,
        rotate_on_adopt=entry.rotate_on_adopt,
        target=target,
    )


def _cross_check(
    doc: SourceDocument, secrets: dict[str, SecretSpec], rotators: RotatorRegistry
) -> None:
    """References between secrets, and the self-lockout guard."""
    managed: dict[tuple[str, ...], str] = {}
    for name, spec in secrets.items():
        admin = spec.admin_secret
        if admin is not None:
            loc: Loc = ("secrets", name, "target", "admin_secret")
            if admin == name:
                doc.problem(loc, "a secret cannot be its own admin (name another secret)")
            elif admin not in doc.data.get("secrets", {}):
                doc.problem(loc, f"admin secret {admin!r} is not declared under `secrets:`")
        identity = rotators[spec.rotator].managed_identity(spec.target)
        if identity is None:
            continue
        other = managed.get(identity)
        if other is not None:
            doc.problem(
                ("secrets", name, "target"),
                f"manages the same login as secret {other!r}; rotating one would lock the "
                "other out (give each login one secret)",
            )
        managed[identity] = name


def _report(doc: SourceDocument, exc: ValidationError, base: Loc, model: type[BaseModel]) -> None:
    for error in exc.errors():
        loc: Loc = (*base, *error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(error["loc"][:-1]))
            hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
            doc.problem(loc, f"unknown key{hint}")
        elif kind == "missing":
            doc.problem(loc, "required key is missing")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            doc.problem(loc, message)


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys a nested model accepts at `loc`, for 'unknown key' hints."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = _unwrap(field.annotation)
        elif typing.get_origin(current) is dict:
            current = _unwrap(typing.get_args(current)[1])
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`Model | None` -> Model, so nested hints see through optional fields."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


__all__ = ["Plan", "SecretRotator", "SecretSpec", "load_plan"]
