"""Vault login for the vault-kv store: auth methods and keeping the token alive.

`VaultSession` owns one hvac client. It logs in on first use (never in a
constructor) and renews its token at two thirds of its TTL, both from a
background timer (so a store idle between rotations keeps a renewable token)
and, should the timer not have run (a forked worker), at the next call. It
logs in again when the token cannot be renewed any further, and on a 403
only when lookup-self shows the token itself is dead (revoked or expired): a
policy denial is reported at once, without spending a login. Auth secrets
(tokens, secret ids, JWTs) come from environment variables or files named in
the YAML, never from the YAML itself.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import hvac
import structlog
from hvac import exceptions as hvac_errors
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rotator.errors import ConfigError, RotatorError, StoreError
from rotator.stores.vault_errors import body, vault_errors

log = structlog.get_logger("rotator.stores.vault")
T = TypeVar("T")

#: Where a pod's service account token is mounted.
K8S_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def vault_url(value: str) -> str:
    """A field validator: the http(s) URL of a Vault server, without a trailing slash."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL of the Vault server")
    return value.rstrip("/")


def vault_client(
    url: str, namespace: str | None, ca_cert: Path | None, verify: bool, timeout: float
) -> hvac.Client:
    """An hvac client with no token: never the ambient VAULT_TOKEN or ~/.vault-token (the
    `auth` settings say where the token comes from, and VaultSession logs in)."""
    return hvac.Client(
        url=url,
        token="",
        verify=str(ca_cert) if ca_cert else verify,
        timeout=timeout,
        namespace=namespace,
    )


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


class VaultSession:
    """An hvac client whose token is kept valid: lazy login, renewal, re-login when dead.

    Thread-safe: logins and renewals (from calls or the renewal timer) run under one
    lock, and a dead token triggers a new login only if no other thread logged in
    since the failed call started.
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
        self._timer: threading.Timer | None = None
        self._closed = False

    def call(self, what: str, action: Callable[[hvac.Client], T]) -> T:
        """Run `action` with a valid token; a 403 with a dead token logs in again and retries."""
        with vault_errors(self.store, what):
            generation = self._ensure()
            try:
                return action(self.client)
            except hvac_errors.Forbidden:
                if not self._token_dead(generation):
                    raise StoreError(
                        f"store {self.store!r}: permission denied ({what}): the token is valid "
                        "but its policies do not grant this; add the path to the store's Vault "
                        "policy (rotator-store-policy in docs/stores.md)"
                    ) from None
                return action(self.client)

    def close(self) -> None:
        """Stop the renewal timer (the token itself is left to expire)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # -- token life -------------------------------------------------------------

    def _ensure(self) -> int:
        with self._lock:
            if self._generation == 0:
                self._login()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew()
            return self._generation

    def _token_dead(self, generation: int) -> bool:
        """After a 403: log in again (True) if the token is dead, else False (policy denial)."""
        with self._lock:
            if self._generation != generation:
                return True  # another thread logged in meanwhile: retry with its token
            try:
                self.client.auth.token.lookup_self()
                return False
            except (hvac_errors.Forbidden, hvac_errors.Unauthorized):
                log.info("vault.relogin", store=self.store, reason="token revoked or expired")
                self._login()
                return True

    def _login(self) -> None:
        """Log in with the configured method and schedule the renewal of the new token."""
        auth = self.auth
        if isinstance(auth, TokenAuth):
            self.client.token = read_auth_secret(self.store, auth.token_env, auth.token_file)
            data = body(self.client.auth.token.lookup_self(), self.store, "lookup-self", "data")
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
            ttl, renewable = self._lease_of(response, f"{auth.method} login")
        self._generation += 1
        self._schedule(ttl, renewable)
        log.info("vault.login", store=self.store, method=auth.method, ttl_seconds=ttl)

    def _renew(self) -> None:
        """renew-self while the token can be extended; else (or past its max TTL) log in again."""
        if self._renewable:
            try:
                renewed = self.client.auth.token.renew_self()
                ttl, renewable = self._lease_of(renewed, "renew-self")
            except (hvac_errors.Forbidden, hvac_errors.InvalidRequest):  # dead, or past max TTL
                ttl, renewable = 0.0, False
            if ttl >= self._granted / 3 and ttl > 0:
                self._schedule(ttl, renewable)
                log.info("vault.renewed", store=self.store, ttl_seconds=ttl)
                return
        self._login()

    def _schedule(self, ttl: float, renewable: bool) -> None:
        """Note when to renew, and arm the background timer for that moment."""
        self._granted = ttl
        self._renewable = renewable
        self._renew_at = None if ttl <= 0 else self._clock() + ttl * 2 / 3
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._renew_at is not None and not self._closed:
            self._timer = threading.Timer(ttl * 2 / 3, _renew_in_background, (weakref.ref(self),))
            self._timer.daemon = True
            self._timer.start()

    def _background_renew(self) -> None:
        with self._lock:
            due = self._renew_at is not None and self._clock() >= self._renew_at
            if self._closed or not due:
                return
            try:
                with vault_errors(self.store, "background token renewal"):
                    self._renew()
            except RotatorError as exc:  # the next call renews or logs in again
                log.warning("vault.renew_failed", store=self.store, error=str(exc))

    def _lease_of(self, response: Any, what: str) -> tuple[float, bool]:
        """(TTL seconds, renewable) of a login or renew-self response."""
        auth = body(response, self.store, what, "auth")
        return float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))


def _renew_in_background(session: weakref.ref[VaultSession]) -> None:
    """The timer's target: holds the session weakly, so a dropped store is not kept alive."""
    live = session()
    if live is not None:
        live._background_renew()
