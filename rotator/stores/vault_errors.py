"""How the vault-kv store reads Vault's answers: failures, shapes and deletion times.

`vault_errors` is the one place hvac and requests exceptions become rotator
errors; `body` checks that an answer is the JSON Vault sends before anyone
subscripts it (hvac hands back a raw Response for a 204 or a non-JSON 200, as
a KV version 1 mount or a proxy's page gives); `version_deleted` reads a KV
version's deletion_time as Vault does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import requests
from hvac import exceptions as hvac_errors

from rotator.errors import RotatorError, StoreError, TransientError

#: Vault's text for a check-and-set write that lost (400 on data/PATH).
CAS_MISMATCH = "check-and-set parameter did not match the current version"


class ConcurrentWrite(StoreError):
    """A check-and-set write lost to another writer."""


class NotKvV2(StoreError):
    """Vault answered with something other than the JSON a KV v2 engine sends."""


def body(answer: Any, store: str, what: str, *keys: str) -> Any:
    """`answer[keys[0]][keys[1]]...`, or NotKvV2 naming the request if it is not there."""
    value = answer
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise NotKvV2(
                f"store {store!r}: Vault's answer to {what} lacks {'.'.join(keys)}; is the "
                "store's `mount` a KV version 2 engine, and `url` Vault itself (not a proxy page)?"
            )
        value = value[key]
    return value


def version_deleted(info: dict[str, Any], where: str) -> bool:
    """Whether Vault treats a version as deleted: destroyed, or its deletion_time has passed.

    With delete_version_after, Vault stamps each new version with a deletion_time in
    the future; the version stays readable until then. Vault writes RFC 3339 with up to
    nanoseconds, which fromisoformat reads (to microseconds).
    """
    if info.get("destroyed"):
        return True
    stamp = info.get("deletion_time") or ""
    if not stamp:
        return False
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        raise StoreError(
            f"{where}: unreadable deletion_time {stamp!r}; is this a KV version 2 engine?"
        ) from None
    return when <= datetime.now(UTC)


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
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
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
    ) as exc:
        raise TransientError(
            f"store {store!r}: Vault unavailable ({what}): {type(exc).__name__}: {_errors_of(exc)}"
        ) from None
    except hvac_errors.VaultError as exc:
        # 405, 409, 412, 501 and the rest: retrying the same request cannot help.
        raise StoreError(
            f"store {store!r}: Vault refused {what}: {type(exc).__name__}: {_errors_of(exc)}; "
            "check `url`, `mount` and the Vault version"
        ) from None


def _errors_of(exc: hvac_errors.VaultError) -> str:
    """Vault's `errors` list as text (never the response body), bounded in length."""
    errors = exc.errors if isinstance(exc.errors, list) else [exc.errors or "no details"]
    return "; ".join(str(e) for e in errors)[:300]
