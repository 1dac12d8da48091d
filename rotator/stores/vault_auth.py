"""Vault login for the vault-kv store: auth methods, token renewal, error mapping.

`VaultSession` owns one hvac client. It logs in on first use (never in a
constructor), renews its token when less than a third of its TTL is left,
logs in again when the token cannot be renewed any further, and on a 403
logs in once more and retries the call (the token may have been revoked under
it). `vault_errors` is the one place hvac and requests exceptions become
rotator errors. Auth secrets (tokens, secret ids, JWTs) come from environment
variables or files named in the YAML, never from the YAML itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import hvac
import requests
import structlog
from hvac import exceptions as hvac_errors
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rotator.errors import ConfigError, RotatorError, StoreError, TransientError

log = structlog.get_logger("rotator.stores.vault")
T = TypeVar("T")

#: Where a pod's service account token is mounted.
K8S_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: Vault's text for a check-and-set write that lost (400 on data/PATH).
CAS_MISMATCH = "check-and-set parameter did not match the current version"


class ConcurrentWrite(StoreError):
    """A check-and-set write lost to another writer."""


class _AuthBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenAuth(_AuthBase):
    """A token from an environment variable or a file (re-read at each login)."""

    method: Literal["token"]
    token_env: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenAuth:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env or token_file")
        return self


class AppRoleAuth(_AuthBase):
    """AppRole: role_id and secret_id each from an environment variable or a file."""

    method: Literal["approle"]
    role_id_env: str | None = None
    role_id_file: Path | None = None
    secret_id_env: str | None = None
    secret_id_file: Path | None = None
    mount: str = "approle"

    @model_validator(mode="after")
    def _one_source_each(self) -> AppRoleAuth:
        for field in ("role_id", "secret_id"):
            if (getattr(self, f"{field}_env") is None) == (getattr(self, f"{field}_file") is None):
                raise ValueError(f"give exactly one of {field}_env or {field}_file")
        return self


class KubernetesAuth(_AuthBase):
    """Kubernetes: the pod's service account JWT, sent to Vault's kubernetes auth mount."""

    method: Literal["kubernetes"]
    role: str
    token_file: Path = K8S_TOKEN_FILE
    mount: str = "kubernetes"


AuthConfig = Annotated[TokenAuth | AppRoleAuth | KubernetesAuth, Field(discriminator="method")]


def read_auth_secret(store: str, env: str | None, file: Path | None) -> str:
    """The value of an env var or file holding an auth secret; ConfigError naming it if unusable."""
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                f"store {store!r}: environment variable {env} is not set or empty; "
                "export it before starting rotator"
            )
        return value
    assert file is not None
    try:
        value = file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"store {store!r}: cannot read {file}: {exc.strerror}; "
            "fix the path or the file's permissions"
        ) from None
    if not value:
        raise ConfigError(f"store {store!r}: {file} is empty; it must hold the credential")
    return value


@contextmanager
def vault_errors(store: str, what: str) -> Iterator[None]:
    """Map hvac and requests exceptions to rotator errors naming the store and the request.

    Messages carry Vault's own error texts and the request, never a response body or a value.
    """
    try:
        yield
    except RotatorError:
        raise
    except requests.exceptions.SSLError:
        raise StoreError(
            f"store {store!r}: TLS verification failed for {what}; set `ca_cert` to the CA "
            "that signed Vault's certificate"
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TransientError(
            f"store {store!r}: Vault unreachable ({what}): {type(exc).__name__}; "
            "check `url` and that Vault is up"
        ) from None
    except hvac_errors.InvalidRequest as exc:
        errors = _errors_of(exc)
        if CAS_MISMATCH in errors:
            raise ConcurrentWrite(
                f"store {store!r}: concurrent write ({what}): another writer changed it first"
            ) from None
        raise StoreError(f"store {store!r}: Vault refused {what}: {errors}") from None
    except (hvac_errors.Forbidden, hvac_errors.Unauthorized):
        raise StoreError(
            f"store {store!r}: permission denied ({what}); check the store's auth settings and "
            "that its Vault policy grants this path (see docs/stores.md)"
        ) from None
    except hvac_errors.InvalidPath:
        raise StoreError(
            f"store {store!r}: Vault has no such path ({what}); check `mount` and that it is a "
            "KV version 2 engine"
        ) from None
    except (
        hvac_errors.RateLimitExceeded,
        hvac_errors.InternalServerError,
        hvac_errors.BadGateway,
        hvac_errors.VaultDown,
        hvac_errors.UnexpectedError,
    ) as exc:
        raise TransientError(
            f"store {store!r}: Vault unavailable ({what}): {type(exc).__name__}: {_errors_of(exc)}"
        ) from None
    except hvac_errors.VaultError as exc:
        raise StoreError(
            f"store {store!r}: Vault refused {what}: {type(exc).__name__}: {_errors_of(exc)}"
        ) from None


def _errors_of(exc: hvac_errors.VaultError) -> str:
    """Vault's `errors` list as text (never the response body), bounded in length."""
    errors = exc.errors if isinstance(exc.errors, list) else [exc.errors or "no details"]
    return "; ".join(str(e) for e in errors)[:300]


class VaultSession:
    """An hvac client whose token is kept valid: lazy login, renewal, one re-login on 403.

    Thread-safe: logins and renewals run under one lock, and a 403 triggers a new login
    only if no other thread logged in since the failed call started.
    """

    def __init__(
        self,
        store: str,
        client: hvac.Client,
        auth: TokenAuth | AppRoleAuth | KubernetesAuth,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = client
        self.auth = auth
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every login
        self._granted = 0.0  # TTL granted by the last login or renewal (0: never expires)
        self._renew_at: float | None = None
        self._renewable = False

    def call(self, what: str, action: Callable[[hvac.Client], T]) -> T:
        """Run `action` with a valid token; a 403 logs in again once and retries."""
        with vault_errors(self.store, what):
            generation = self._ensure()
            try:
                return action(self.client)
            except hvac_errors.Forbidden:
                self._relogin_after(generation)
                return action(self.client)

    # -- token life -------------------------------------------------------------

    def _ensure(self) -> int:
        with self._lock:
            if self._generation == 0:
                self._login()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew()
            return self._generation

    def _relogin_after(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:
                log.info("vault.relogin", store=self.store, reason="permission denied")
                self._login()

    def _login(self) -> None:
        """Log in with the configured method and schedule the renewal of the new token."""
        auth = self.auth
        if isinstance(auth, TokenAuth):
            self.client.token = read_auth_secret(self.store, auth.token_env, auth.token_file)
            data = self.client.auth.token.lookup_self()["data"]
            ttl, renewable = float(data.get("ttl") or 0), bool(data.get("renewable"))
        else:
            if isinstance(auth, AppRoleAuth):
                response = self.client.auth.approle.login(
                    role_id=read_auth_secret(self.store, auth.role_id_env, auth.role_id_file),
                    secret_id=read_auth_secret(self.store, auth.secret_id_env, auth.secret_id_file),
                    mount_point=auth.mount,
                )
            else:
                jwt = read_auth_secret(self.store, None, auth.token_file)
                response = self.client.auth.kubernetes.login(
                    role=auth.role, jwt=jwt, mount_point=auth.mount
                )
            ttl, renewable = _lease_of(response)
        self._generation += 1
        self._schedule(ttl, renewable)
        log.info("vault.login", store=self.store, method=auth.method, ttl_seconds=ttl)

    def _renew(self) -> None:
        """renew-self while the token can be extended; else (or past its max TTL) log in again."""
        if self._renewable:
            try:
                ttl, renewable = _lease_of(self.client.auth.token.renew_self())
            except hvac_errors.Forbidden:  # expired or revoked meanwhile
                ttl, renewable = 0.0, False
            if ttl >= self._granted / 3 and ttl > 0:
                self._schedule(ttl, renewable)
                log.info("vault.renewed", store=self.store, ttl_seconds=ttl)
                return
        self._login()

    def _schedule(self, ttl: float, renewable: bool) -> None:
        self._granted = ttl
        self._renewable = renewable
        self._renew_at = None if ttl <= 0 else self._clock() + ttl * 2 / 3


def _lease_of(response: Any) -> tuple[float, bool]:
    """(TTL seconds, renewable) of a login or renew-self response."""
    auth = response["auth"]
    return float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
