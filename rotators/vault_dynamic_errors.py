"""Vault's answers to the vault-dynamic rotator as our errors, without statement text.

Texts carry only Vault's `errors` list, never a response body. A creds error from the
database plugin may quote the creation statement, and with `password_authentication=password`
that statement holds the new password in clear: PostgreSQL's "at or near ..." and every
quoted span are cut before a text reaches one of our exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from hvac import exceptions as hvac_errors

from rotator.errors import ConfigError, RotatorError, TransientError

#: Where PostgreSQL starts to quote the statement it could not parse.
_STATEMENT_TAIL = re.compile(r"\s*\bat or near\b.*", re.I | re.S)
#: Quoted spans: a value (a password, a verifier, a role name) the server echoed back.
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`")
#: Vault's text when the backend failed to revoke a lease (answered 400, sync revocation).
_REVOKE_FAILED = "failed to revoke"


def errors_of(exc: hvac_errors.VaultError) -> str:
    """Vault's `errors` list as one bounded line, with statement text and quoted values cut."""
    errors = exc.errors if isinstance(exc.errors, list) else [exc.errors or "no details"]
    texts = []
    for error in errors:
        text = _STATEMENT_TAIL.sub(" at or near [cut]", str(error))
        texts.append(" ".join(_QUOTED.sub('"[cut]"', text).split()))
    return "; ".join(texts)[:300]


def _revocation_failed(exc: hvac_errors.VaultError) -> bool:
    errors = exc.errors if isinstance(exc.errors, list) else [exc.errors or ""]
    return any(_REVOKE_FAILED in str(error) for error in errors)


@contextmanager
def vault_errors(where: str, what: str) -> Iterator[None]:
    """hvac and requests errors as ours; a 403 is left to the caller (it may log in again)."""
    try:
        yield
    except (RotatorError, hvac_errors.Forbidden):
        raise
    except requests.exceptions.SSLError:
        raise ConfigError(
            f"{where}: TLS verification failed ({what}); set `ca_cert` to the CA that "
            "signed Vault's certificate"
        ) from None
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        raise TransientError(
            f"{where}: Vault unreachable ({what}): {type(exc).__name__}; "
            "check `url` and that Vault is up"
        ) from None
    except hvac_errors.InvalidPath:
        raise ConfigError(
            f"{where}: Vault has no such path ({what}); check that `mount` is a database "
            "secrets engine"
        ) from None
    except hvac_errors.InvalidRequest as exc:
        if _revocation_failed(exc):  # the database refused or was down: Vault keeps the lease
            raise TransientError(
                f"{where}: Vault could not revoke the lease ({what}): {errors_of(exc)}"
            ) from None
        raise ConfigError(
            f"{where}: Vault refused {what}: {errors_of(exc)}; check `mount` and `role`"
        ) from None
    except (
        hvac_errors.RateLimitExceeded,
        hvac_errors.InternalServerError,
        hvac_errors.BadGateway,
        hvac_errors.VaultDown,
    ) as exc:
        raise TransientError(
            f"{where}: Vault unavailable ({what}): {type(exc).__name__}: {errors_of(exc)}"
        ) from None
    except hvac_errors.VaultError as exc:
        raise ConfigError(
            f"{where}: Vault refused {what}: {type(exc).__name__}: {errors_of(exc)}; "
            "check `url`, `mount` and the Vault version"
        ) from None
