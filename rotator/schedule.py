"""The schedules.yaml model and loader.

`load_plan` refuses a bad file whole, listing every problem as
`FILE:LINE: key.path: what is wrong (what is expected)`. A valid file becomes
a frozen `Plan`: one `SecretSpec` per secret with its target block already
validated by the rotator's own model, and one `StoreConfig` per store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rotator.base import RotatorRegistry, SecretRotator, registered_rotators
from rotator.durations import Duration
from rotator.errors import ConfigError, UnknownSecret
from rotator.passwords import PasswordPolicy
from rotator.stores import STORE_TYPES, StoreConfig, store_class
from rotator.yamlsource import Loc, SourceDocument, load_yaml, report_errors

M = TypeVar("M", bound=BaseModel)

#: The history database keeps secret names in VARCHAR(255) and store paths in VARCHAR(512).
MAX_NAME_CHARS = 200
#: The history lease beat leads by (rotator.leader): a secret of that name would be
#: held "in progress" for good, so validation refuses it.
BEAT_LEASE_NAME = "beat:leader"
MAX_PATH_CHARS = 512
#: Store types whose stores all keep versions in one place, keyed by path alone.
_SHARED_STORE_TYPES = {"embedded": "embedded stores share one table in the history database"}


def _check_timezone(value: str | None) -> str | None:
    if value is not None and (problem := _timezone_problem(value)):
        raise ValueError(problem)
    return value


@lru_cache(maxsize=1024)
def _timezone_problem(value: str) -> str | None:
    """Cached: a large file names the same few zones thousands of times."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {value!r} (expected an IANA name such as UTC or Europe/Berlin)"
    return None


def _check_cron(value: str | None) -> str | None:
    if value is not None and (problem := _cron_problem(value)):
        raise ValueError(problem)
    return value


@lru_cache(maxsize=4096)
def _cron_problem(value: str) -> str | None:
    """Five fields (minute hour day month weekday) or @daily-style; and it must fire.

    Cached: a large file repeats the same few expressions, and croniter is slow to parse.
    """
    fields = value.split()
    keyword = len(fields) == 1 and value.strip().startswith("@")
    if not (keyword or len(fields) == 5) or not croniter.is_valid(value):
        return (
            f"{value!r} is not a cron expression (expected 5 fields: minute hour day-of-month "
            "month day-of-week, e.g. '0 3 * * 1', or @daily, @weekly, @monthly)"
        )
    try:
        croniter(value, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError:
        return f"{value!r} never matches a date (expected a day that exists in the month)"
    return None


def _check_path(value: str | None) -> str | None:
    if value is None:
        return value
    if not value.strip():
        raise ValueError(
            "path is empty (expected a non-empty key inside the store, or leave `path` out)"
        )
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(
            f"path is {len(value)} characters long (expected at most {MAX_PATH_CHARS})"
        )
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

    _cron = field_validator("cron")(_check_cron)

    _path = field_validator("path")(_check_path)


class ScheduleFile(BaseModel):
    """The top level of the file; each section is then checked by its own model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: dict[str, Any] | None = None
    stores: dict[str, Any] | None = None
    secrets: dict[str, Any]


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
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """Load and validate schedules.yaml; ConfigError lists every problem found.

    `environ` replaces `os.environ` for `${VAR}` expansion (tests pass their own).
    """
    doc = load_yaml(Path(path), environ)
    plan = None
    if doc.data is not None:
        plan = _validate(doc, registered_rotators() if rotators is None else rotators)
    problems = doc.problems
    if problems or plan is None:
        count = len(problems)
        raise ConfigError(
            f"{path}: {count} problem{'s' if count != 1 else ''}; nothing was loaded", problems
        )
    return plan


def _validate(doc: SourceDocument, rotators: RotatorRegistry) -> Plan | None:
    """Check every part of the file, even after a problem, so all problems are listed."""
    data = doc.data
    if not isinstance(data, dict):
        doc.problem(
            (), "the file must be a mapping (expected keys version, defaults, stores, secrets)"
        )
        return None
    # Top-level `x-...` keys hold YAML anchors for reuse (as in docker-compose); nothing reads them.
    _check(doc, ScheduleFile, {k: v for k, v in data.items() if not k.startswith("x-")}, ())
    blocks = {key: _section(data, key) for key in ("defaults", "stores", "secrets")}
    defaults = _check(doc, Defaults, blocks["defaults"], ("defaults",)) or Defaults()
    stores = _validate_stores(doc, blocks["stores"])
    secrets: dict[str, SecretSpec] = {}
    for name, block in blocks["secrets"].items():
        spec = _validate_secret(doc, name, block, defaults, blocks["stores"], rotators)
        if spec is not None:
            secrets[name] = spec
    _cross_check(doc, secrets, blocks["secrets"], rotators)
    _check_store_paths(doc, blocks["secrets"], blocks["stores"])
    return Plan(doc.path, secrets, stores)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A top-level mapping, or {} when absent or not a mapping (ScheduleFile reports that)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _check(doc: SourceDocument, model: type[M], data: Any, loc: Loc) -> M | None:
    """`model` validated from `data`, or None with each error recorded under `loc`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        report_errors(doc, exc, loc, model)
        return None


def _validate_stores(doc: SourceDocument, blocks: dict[str, Any]) -> dict[str, StoreConfig]:
    stores: dict[str, StoreConfig] = {}
    known = ", ".join(sorted(STORE_TYPES))
    for name, block in blocks.items():
        loc: Loc = ("stores", name)
        if not isinstance(block, dict):
            doc.problem(loc, f"got {block!r} (expected a mapping with `type:`, one of: {known})")
            continue
        type_name = block.get("type")
        if type_name is None:
            doc.problem(loc, f"missing `type` (expected one of: {known})")
            continue
        if not isinstance(type_name, str) or type_name not in STORE_TYPES:
            doc.problem(
                (*loc, "type"), f"unknown store type {type_name!r} (expected one of: {known})"
            )
            continue
        try:
            config_model = store_class(type_name).Config
        except ImportError as exc:
            doc.problem(
                (*loc, "type"),
                f"store type {type_name!r} cannot be loaded: {exc} (install what it needs)",
            )
            continue
        config = _check(doc, config_model, block, loc)
        if config is not None:
            stores[name] = config
    return stores


def _validate_secret(
    doc: SourceDocument,
    name: str,
    block: Any,
    defaults: Defaults,
    stores: dict[str, Any],
    rotators: RotatorRegistry,
) -> SecretSpec | None:
    """One secret, every check run even when an earlier one failed."""
    loc: Loc = ("secrets", name)
    if not isinstance(block, dict):
        doc.problem(
            loc, f"got {block!r} (expected a mapping with rotator, store, every or cron, target)"
        )
        return None
    entry = _check(doc, SecretEntry, block, loc)
    ok = _check_schedule_keys(doc, loc, block)
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        doc.problem(
            loc,
            f"secret name is {len(name)} characters long (expected 1 to {MAX_NAME_CHARS})",
        )
        ok = False
    if name == BEAT_LEASE_NAME:
        doc.problem(loc, f"secret name {name!r} is reserved for beat's leader lease (rename it)")
        ok = False
    store = block.get("store")
    if isinstance(store, str) and store not in stores:
        known = ", ".join(sorted(stores)) or "none declared under `stores:`"
        doc.problem((*loc, "store"), f"unknown store {store!r} (expected one of: {known})")
        ok = False
    target = _validate_target(doc, loc, block, rotators)
    if entry is None or target is None or not ok:
        return None
    grace = entry.grace if entry.grace is not None else defaults.grace
    if not _check_intervals(doc, loc, block, entry, grace, target, rotators[entry.rotator]):
        return None
    password = defaults.password
    if entry.password is not None:
        explicit = entry.password.model_dump(exclude_unset=True)
        merged = _check(
            doc, PasswordPolicy, {**password.model_dump(), **explicit}, (*loc, "password")
        )
        if merged is None:
            return None
        password = merged
    return SecretSpec(
        name=name,
        rotator=entry.rotator,
        store=entry.store,
        path=entry.path or name,
        every=entry.every,
        cron=entry.cron,
        timezone=entry.timezone or defaults.timezone,
        window=entry.window if entry.window is not None else defaults.window,
        grace=grace,
        max_attempts=entry.max_attempts or defaults.max_attempts,
        password=password,
        rotate_on_adopt=entry.rotate_on_adopt,
        target=target,
    )


def _check_intervals(
    doc: SourceDocument,
    loc: Loc,
    block: dict[str, Any],
    entry: SecretEntry,
    grace: timedelta,
    target: BaseModel,
    rotator: type[SecretRotator],
) -> bool:
    """The schedule leaves room for the rotator: a grace period shorter than the time between
    rotations (when the rotator retires anything), and what the rotator itself requires."""
    from rotator.durations import format_duration
    from rotator.retirement import retires

    key = "every" if entry.every is not None else "cron"
    shortest = entry.every if entry.every is not None else shortest_cron_gap(entry.cron or "")
    ok = True
    if retires(rotator) and grace >= shortest:
        where = (*loc, "grace") if "grace" in block else loc
        doc.problem(
            where,
            f"grace {format_duration(grace)} is not shorter than the time between rotations "
            f"({format_duration(shortest)}, from `{key}`): each rotation would retire the "
            f"previous credential before its grace ends (expected a grace below "
            f"{format_duration(shortest)}, or rotate less often)",
        )
        ok = False
    problem = rotator.schedule_problem(target, shortest)
    if problem:
        doc.problem((*loc, key), problem)
        ok = False
    return ok


@lru_cache(maxsize=1024)
def shortest_cron_gap(cron: str, fires: int = 120) -> timedelta:
    """The shortest time between two of the next `fires` times of `cron` (in UTC): looking a
    year ahead (so February's short month counts) unless 1000 fires come sooner, and never
    more than four years (a leap day)."""
    start = datetime(2001, 1, 1)
    times = croniter(cron, start)
    previous: datetime = times.get_next(datetime)
    shortest = timedelta.max
    for count in range(1000):
        current: datetime = times.get_next(datetime)
        shortest = min(shortest, current - previous)
        previous = current
        seen = current - start
        if (count >= fires and seen > timedelta(days=366)) or seen > timedelta(days=4 * 366):
            break
    return shortest


def _check_schedule_keys(doc: SourceDocument, loc: Loc, block: dict[str, Any]) -> bool:
    """Exactly one of `every` and `cron`."""
    every, cron = block.get("every"), block.get("cron")
    if every is not None and cron is not None:
        doc.problem(
            (*loc, "cron"), "both `every` and `cron` are set (expected one of them; remove one)"
        )
        return False
    if every is None and cron is None:
        doc.problem(
            loc, "no schedule (expected `every:` such as 30d, or `cron:` such as '0 3 * * 1')"
        )
        return False
    return True


def _validate_target(
    doc: SourceDocument, loc: Loc, block: dict[str, Any], rotators: RotatorRegistry
) -> BaseModel | None:
    """The `target:` block, validated by the model of the secret's rotator."""
    kind = block.get("rotator")
    if not isinstance(kind, str):
        return None  # SecretEntry reports a missing or mistyped rotator
    rotator_cls = rotators.get(kind)
    if rotator_cls is None:
        known = ", ".join(sorted(rotators)) or "none installed"
        doc.problem((*loc, "rotator"), f"unknown rotator {kind!r} (expected one of: {known})")
        return None
    raw = block.get("target", {})
    if not isinstance(raw, dict):
        return None  # SecretEntry reports a target that is not a mapping
    return _check(doc, rotator_cls.Target, raw, (*loc, "target"))


def _cross_check(
    doc: SourceDocument,
    secrets: dict[str, SecretSpec],
    declared: dict[str, Any],
    rotators: RotatorRegistry,
) -> None:
    """References between secrets, and the self-lockout guard."""
    for name, block in declared.items():
        _check_admin_secret(doc, name, block, declared)
    for name, spec in secrets.items():
        admin = secrets.get(spec.admin_secret or "")
        problem = admin and rotators[spec.rotator].admin_problem(spec.target, admin.target)
        if problem:
            doc.problem(("secrets", name, "target", "admin_secret"), problem)
    managed: dict[tuple[str, ...], str] = {}
    for name, spec in secrets.items():
        for identity in rotators[spec.rotator].managed_identities(spec.target):
            other = managed.setdefault(identity, name)
            if other != name:
                doc.problem(
                    ("secrets", name, "target", "username"),
                    f"manages the same login as secret {other!r} (line "
                    f"{doc.line_of(('secrets', other))}); rotating one would lock the other out "
                    "(expected one secret per login: remove one, or point them at different "
                    "logins)",
                )
                break


def _check_store_paths(
    doc: SourceDocument, declared: dict[str, Any], stores: dict[str, Any]
) -> None:
    """No two secrets keep their versions at one place: they would overwrite each other.

    A place is (store, path or name). Stores of a type in _SHARED_STORE_TYPES are one place
    for this purpose, whatever their names. Secrets whose store or path is invalid are left
    out: those problems are reported already.
    """
    owners: dict[tuple[tuple[str, str], str], tuple[str, str]] = {}
    for name, block in declared.items():
        if not isinstance(block, dict):
            continue
        store, path = block.get("store"), block.get("path")
        path = name if path is None else path
        if not isinstance(store, str) or not isinstance(stores.get(store), dict):
            continue
        if doc.explained(("secrets", name, "path")):
            continue  # a variable in it is unset: that is the problem to fix first
        if not isinstance(path, str) or _check_quietly(path) is None:
            continue
        store_type = stores[store].get("type")
        shared = _SHARED_STORE_TYPES.get(store_type) if isinstance(store_type, str) else None
        place = (("type", store_type) if shared else ("store", store), path)
        other = owners.setdefault(place, (name, store))
        if other[0] == name:
            continue
        loc: Loc = ("secrets", name, "path") if "path" in block else ("secrets", name)
        where = f" in store {other[1]!r}" if other[1] != store else ""
        why = f"{shared}, so " if where and shared else ""
        doc.problem(
            loc,
            f"store path {path!r} in store {store!r} is already used by secret {other[0]!r} "
            f"(line {doc.line_of(('secrets', other[0]))}){where}; {why}each secret needs its "
            "own path",
        )


def _check_quietly(path: str) -> str | None:
    """`path` when it is a valid store path, else None."""
    try:
        return _check_path(path)
    except ValueError:
        return None


def _check_admin_secret(
    doc: SourceDocument, name: str, block: Any, declared: dict[str, Any]
) -> None:
    """`target.admin_secret` names another declared secret (checked even if `name` is invalid)."""
    target = block.get("target") if isinstance(block, dict) else None
    admin = target.get("admin_secret") if isinstance(target, dict) else None
    if not isinstance(admin, str):
        return
    loc: Loc = ("secrets", name, "target", "admin_secret")
    if admin == name:
        doc.problem(
            loc,
            "a secret cannot be its own admin (expected another secret that may change "
            "this login, e.g. pg-admin)",
        )
    elif admin not in declared:
        others = sorted(other for other in declared if other != name)
        expected = f"one of: {', '.join(others)}" if others else f"a secret; declare {admin!r}"
        doc.problem(
            loc, f"admin secret {admin!r} is not declared under `secrets:` (expected {expected})"
        )


__all__ = ["Plan", "SecretRotator", "SecretSpec", "load_plan"]
