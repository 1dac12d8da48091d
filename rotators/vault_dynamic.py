"""Dynamic PostgreSQL logins leased from Vault's database secrets engine.

Each rotation reads `<mount>/creds/<role>`: Vault creates a new role at the
database (with VALID UNTIL its lease's end) and returns its username and
password under a lease. So `generate` already changes the target and `apply`
has nothing left to do. A crash after Vault answered but before the engine
stored PENDING leaves a lease nobody knows of; it is never handed out, and
Vault drops its role when its TTL passes. `test` logs in as the new role and
insists that the server checked the password (the postgres rotator's proof).
`retire` revokes a lease by id, idempotent as Vault is: revoking an unknown
or already revoked lease succeeds.

Leases die with the Vault token that created them: `generate` looks the token
up and stores the earlier end as `expires_at`, so `rotate_by` and `expired`
follow the credential's real life (docs/rotator-vault-dynamic.md). A stored
lease id is revoked only if it is this role's, segment by segment; Vault's
texts reach our errors without statement text (rotators/vault_dynamic_errors).
Vault sessions (login and
token renewal, rotator.stores.vault_auth) are shared by every secret of a
process that uses the same Vault and auth settings.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

import hvac
import structlog
from hvac import exceptions as hvac_errors
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

from rotator.base import SecretRotator
from rotator.credential import Credential
from rotator.durations import Duration, format_duration
from rotator.errors import (
    ConfigError,
    CredentialRejected,
    RotatorError,
    StoreError,
)
from rotator.stores.vault_auth import AuthConfig, VaultSession, vault_client, vault_url
from rotators.postgres import PostgresPasswordRotator
from rotators.vault_dynamic_errors import vault_errors

log = structlog.get_logger("rotator.rotators.vault_dynamic")
T = TypeVar("T")

#: A lease shorter than this (or than a declared max_ttl) is logged as a warning: it may
#: expire before the schedule replaces it, so `rotate_by` is what keeps it alive.
SHORT_LEASE = timedelta(days=1)
#: `rotate_by` leaves this share of a lease's life for applications to move to the next one.
ROTATE_MARGIN = 1 / 3
#: The name VaultSession gives its owner in texts (it says "store"); replaced by ours.
_SESSION_LABEL = "vault-dynamic"
#: What Vault appends to the creds path in a lease id: 24 base62 characters, and in a
#: namespace other than root a dot and the namespace's id. Nothing else (no `..`, no `/`).
_LEASE_SUFFIX = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)?")


class VaultDynamicTarget(BaseModel):
    """The `target:` block of a `vault-dynamic` secret: where Vault is, and the database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    namespace: str | None = None
    ca_cert: Path | None = None
    verify: bool = True
    timeout_seconds: PositiveFloat = 10.0
    auth: AuthConfig
    mount: str = "database"
    role: str = Field(min_length=1)
    #: The longest a lease of `role` lives (Vault's TTL for it); checked against the schedule.
    max_ttl: Duration | None = None
    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "postgres"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: int = Field(5, ge=1, le=120)

    _url = field_validator("url")(vault_url)

    @field_validator("mount")
    @classmethod
    def _no_outer_slashes(cls, value: str) -> str:
        stripped = value.strip("/")
        if not stripped:
            raise ValueError("must not be empty (the database engine's mount, e.g. database)")
        return stripped

    @field_validator("role")
    @classmethod
    def _one_segment(cls, value: str) -> str:
        if "/" in value or value != value.strip():
            raise ValueError("a Vault role name has no slashes or outer spaces (e.g. app-readonly)")
        return value

    @field_validator("host", "dbname")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("cannot contain NUL (libpq would cut the connection settings there)")
        return value

    def postgres(self, username: str) -> BaseModel:
        """The same database as a postgres-password target block, for `username`."""
        return PostgresPasswordRotator.Target.model_validate(
            {
                "host": self.host,
                "port": self.port,
                "dbname": self.dbname,
                "username": username,
                "sslmode": self.sslmode,
                "connect_timeout": self.connect_timeout,
            }
        )


_sessions: dict[tuple[object, ...], VaultSession] = {}
_sessions_lock = threading.Lock()


def _session_for(target: VaultDynamicTarget) -> VaultSession:
    """One logged-in session per Vault and auth settings in this process."""
    key = (
        target.url,
        target.namespace,
        target.ca_cert,
        target.verify,
        target.timeout_seconds,
        target.auth,
    )
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            client = vault_client(
                target.url,
                target.namespace,
                target.ca_cert,
                target.verify,
                target.timeout_seconds,
            )
            session = _sessions[key] = VaultSession(_SESSION_LABEL, client, target.auth)
        return session


def _parse_time(value: Any) -> datetime | None:
    """An aware datetime from ISO 8601 text, or None when it is missing or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _token_end(lookup: Any, asked: datetime) -> datetime | None:
    """When the token of a lookup-self answer dies, taking its leases along (None: never).

    A periodic token is renewed by every rotator process for as long as one runs, so only
    an explicit max TTL ends it; any other token is taken to end at its current TTL (a
    renewal may extend that, but by how much Vault does not say: early is the safe side).
    """
    data = lookup.get("data") if isinstance(lookup, dict) else None
    data = data if isinstance(data, dict) else {}
    ttl = data.get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        return None  # 0: a token that never expires (root, or no TTL)
    period, explicit = data.get("period"), data.get("explicit_max_ttl")
    if isinstance(period, int) and period > 0 and data.get("renewable"):
        if not isinstance(explicit, int) or explicit <= 0:
            return None
        created = data.get("creation_time")
        if isinstance(created, int) and not isinstance(created, bool):
            return datetime.fromtimestamp(created + explicit, UTC)
    return asked + timedelta(seconds=ttl)


class VaultDynamicRotator(SecretRotator):
    """A new Vault database lease per rotation; PREVIOUS's lease is revoked at retire."""

    kind: ClassVar[str] = "vault-dynamic"
    Target: ClassVar[type[BaseModel]] = VaultDynamicTarget
    #: Usernames change with every lease; the server must not.
    identity_fields: ClassVar[tuple[str, ...]] = ("host", "port")

    target: VaultDynamicTarget

    @classmethod
    def schedule_problem(cls, target: BaseModel, shortest_interval: timedelta) -> str | None:
        assert isinstance(target, VaultDynamicTarget)
        if target.max_ttl is None or shortest_interval < target.max_ttl:
            return None
        suggested = format_duration(timedelta(seconds=int(target.max_ttl.total_seconds() * 2 / 3)))
        return (
            f"rotates every {format_duration(shortest_interval)} at the most often, but leases of "
            f"Vault role {target.role!r} live {format_duration(target.max_ttl)} (target.max_ttl), "
            "so each credential would expire before the next one replaces it; rotate more often "
            f"(e.g. every: {suggested}) or raise the role's TTL in Vault and target.max_ttl"
        )

    # -- the contract -------------------------------------------------------------

    def generate(self, current: Credential | None) -> Credential:
        """A new lease from Vault: a new role exists at the database from this moment on."""
        t = self.target
        asked = datetime.now(UTC)  # before the request: expires_at is never later than Vault's
        token = self._call(
            "look up the token (auth/token/lookup-self)", lambda c: c.auth.token.lookup_self()
        )
        answer = self._call(
            f"read {t.mount}/creds/{t.role}",
            lambda c: c.secrets.database.generate_credentials(name=t.role, mount_point=t.mount),
        )
        credential = self._credential_of(answer, asked, _token_end(token, asked))
        lease = timedelta(seconds=credential["lease_duration"])
        if lease < (t.max_ttl or SHORT_LEASE):
            log.warning(
                "vault_dynamic.short_lease",
                secret=self.context.secret_name,
                role=t.role,
                lease_seconds=int(lease.total_seconds()),
                declared_max_ttl_seconds=int(t.max_ttl.total_seconds()) if t.max_ttl else None,
                note="the next rotation is due before the lease ends (rotate_by), not by schedule",
            )
        return credential

    def expired(self, credential: Credential) -> bool:
        """The lease has ended: Vault has revoked it (or will at its next sweep)."""
        expires = _parse_time(credential.get("expires_at"))
        return expires is not None and expires <= datetime.now(UTC)

    def complete(self, credential: Credential) -> Credential:
        """Fill the AWS-style database fields an adopted value may leave out."""
        if not credential.username or not credential.password:
            raise ConfigError(
                f"a {self.kind} value needs `username` and `password` fields "
                '(expected e.g. {"username": "v-app-...", "password": "..."})'
            )
        t = self.target
        defaults = {"engine": "postgres", "host": t.host, "port": t.port, "dbname": t.dbname}
        return Credential({**defaults, **credential.as_dict()})

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        """Nothing to do: Vault created the login when it issued the lease (`generate`)."""

    def test(self, credential: Credential) -> None:
        """A fresh password-checked login as the lease's role (never `trust`)."""
        username = credential.username
        if not username or not credential.password:
            raise CredentialRejected(f"{self._where()}: the credential has no username or password")
        expires = _parse_time(credential.get("expires_at"))
        if expires is not None and expires <= datetime.now(UTC):
            raise CredentialRejected(
                f"{self._where()}: the lease of role {username!r} ended at "
                f"{expires.isoformat()}; Vault has revoked it"
            )
        try:
            target = self.target.postgres(username)
        except ValidationError:
            raise CredentialRejected(
                f"{self._where()}: the credential's username is not a PostgreSQL role name"
            ) from None
        PostgresPasswordRotator(target, self.context).test(credential)

    def retire(self, previous: Credential) -> None:
        """Revoke `previous`'s lease: Vault drops its role. Unknown or revoked leases succeed."""
        lease_id = previous.get("lease_id")
        if lease_id is None or lease_id == "":
            log.info("vault_dynamic.no_lease", secret=self.context.secret_name)
            return
        prefix = f"{self.target.mount}/creds/{self.target.role}/"
        if not self._is_lease_of_role(lease_id):
            shown = repr(lease_id)[:120]
            raise StoreError(
                f"{self._where()}: refusing to revoke lease {shown}: it is not a lease id of "
                f"{prefix}* (that prefix, then Vault's letters and digits); fix the stored value"
            )
        # The lease id in the path (not the body) lets a policy allow only this role's leases;
        # each segment is quoted whole, so nothing in it can move the request elsewhere.
        segments = lease_id.split("/")
        path = "/v1/sys/leases/revoke/" + "/".join(quote(part, safe="") for part in segments)
        self._call(f"revoke a lease of {prefix}*", lambda c: c.adapter.put(path))
        log.info("vault_dynamic.lease_revoked", secret=self.context.secret_name, role=prefix)

    def _is_lease_of_role(self, lease_id: object) -> bool:
        """`<mount>/creds/<role>/` and Vault's suffix, nothing more (no dot segments)."""
        prefix = f"{self.target.mount}/creds/{self.target.role}/"
        if not isinstance(lease_id, str) or not lease_id.startswith(prefix):
            return False
        if any(part in ("", ".", "..") for part in prefix[:-1].split("/")):
            return False
        return _LEASE_SUFFIX.fullmatch(lease_id[len(prefix) :]) is not None

    def rotate_by(self, credential: Credential) -> datetime | None:
        """A third of the lease before it ends: time for applications to take the next one."""
        expires = _parse_time(credential.get("expires_at"))
        duration = credential.get("lease_duration")
        if expires is None or not isinstance(duration, int | float) or isinstance(duration, bool):
            return None
        if duration <= 0:
            return None
        return expires - timedelta(seconds=duration * ROTATE_MARGIN)

    # -- Vault ----------------------------------------------------------------------

    def _credential_of(
        self, answer: Any, asked: datetime, token_end: datetime | None
    ) -> Credential:
        """The credential in a creds answer; a lease we cannot use is revoked at once.

        It lives until its lease ends or the token that created it does, whichever is first:
        `expires_at` and `lease_duration` say that real end, so `rotate_by` follows it.
        """
        t = self.target
        data = answer.get("data") if isinstance(answer, dict) else None
        lease_id = answer.get("lease_id") if isinstance(answer, dict) else None
        duration = answer.get("lease_duration") if isinstance(answer, dict) else None
        username = data.get("username") if isinstance(data, dict) else None
        password = data.get("password") if isinstance(data, dict) else None
        problem = None
        if not (isinstance(username, str) and username and isinstance(password, str) and password):
            problem = "data.username and data.password"
        elif not self._is_lease_of_role(lease_id):
            problem = f"a lease_id of {t.mount}/creds/{t.role}/"
        elif not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
            problem = "a positive lease_duration"
        if problem is not None:
            if self._is_lease_of_role(lease_id):
                with suppress(RotatorError):  # else Vault drops it when its TTL passes
                    self.retire(Credential(lease_id=lease_id))
            raise ConfigError(
                f"{self._where()}: Vault's answer to read {t.mount}/creds/{t.role} lacks "
                f"{problem}; is `mount` a database secrets engine and `url` Vault itself?"
            )
        assert isinstance(duration, int)
        expires = asked + timedelta(seconds=duration)
        if token_end is not None and token_end < expires:
            log.warning(
                "vault_dynamic.token_ends_first",
                secret=self.context.secret_name,
                role=t.role,
                lease_seconds=duration,
                token_seconds_left=int((token_end - asked).total_seconds()),
                note="the lease dies with the token; give the token a longer life (docs)",
            )
            expires = token_end
            duration = max(1, int((token_end - asked).total_seconds()))
        expires = expires.replace(microsecond=0)
        return Credential(
            engine="postgres",
            host=t.host,
            port=t.port,
            dbname=t.dbname,
            username=username,
            password=password,
            lease_id=lease_id,
            lease_duration=duration,
            expires_at=expires.isoformat().replace("+00:00", "Z"),
        )

    def _call(self, what: str, action: Callable[[hvac.Client], T]) -> T:
        """Run `action` with a live token; every failure becomes one of our errors."""
        denied = False

        def guarded(client: hvac.Client) -> T:
            nonlocal denied
            denied = False
            with vault_errors(self._where(), what):
                try:
                    return action(client)
                except hvac_errors.Forbidden:
                    denied = True  # the session decides: a dead token logs in again
                    raise

        try:
            return _session_for(self.target).call(what, guarded)
        except RotatorError as exc:
            if denied:
                raise ConfigError(
                    f"{self._where()}: permission denied ({what}): the Vault token's policies do "
                    "not grant it; add the path to the rotator's policy "
                    "(docs/rotator-vault-dynamic.md)"
                ) from None
            # VaultSession's own texts (login, auth files) name their owner as a store.
            text = str(exc).replace(f"store {_SESSION_LABEL!r}", self._where(), 1)
            raise type(exc)(text) from None

    def _where(self) -> str:
        t = self.target
        return f"vault-dynamic secret {self.context.secret_name!r} ({t.mount}/creds/{t.role})"
