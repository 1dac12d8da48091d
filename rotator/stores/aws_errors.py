"""botocore errors -> rotator errors, in one place for the AWS Secrets Manager store.

Retrying fixes throttling, 5xx answers, refused connections and timeouts
(`TransientError`; botocore's standard retry mode has already tried a few
times). Nothing else is retried: a denied call, a missing secret, a secret
scheduled for deletion or an unusable KMS key is a `StoreError` that names
the store and the secret and says what to change. Every text passes
`rotator.logging.scrub` with the value being written, so no message carries it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from rotator.errors import RotatorError, StoreError, TransientError
from rotator.logging import scrub

TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServiceError",
        "InternalServiceErrorException",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
KMS_CODES = frozenset(
    {
        "DecryptionFailure",
        "EncryptionFailure",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
    }
)
CREDENTIALS_HINT = (
    "give rotator AWS credentials through boto3's default chain (AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity or an instance/task role)"
)


@contextmanager
def aws_errors(store: str, path: str, values: Iterable[str] = ()) -> Iterator[None]:
    """Turn what boto3 raises inside the block into the rotator error tree."""
    try:
        yield
    except ClientError as exc:
        raise client_error(exc, store, path, list(values)) from None
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
        raise StoreError(
            f"store {store!r}: no usable AWS credentials ({type(exc).__name__}); {CREDENTIALS_HINT}"
        ) from None
    except (ConnectionError, HTTPClientError) as exc:
        text = scrub(str(exc), list(values))
        raise TransientError(f"store {store!r} unreachable: {text}") from None
    except BotoCoreError as exc:
        text = scrub(str(exc), list(values))
        raise StoreError(f"store {store!r}: request for {path!r} failed: {text}") from None


def client_error(exc: ClientError, store: str, path: str, values: list[str]) -> RotatorError:
    """The rotator error for an error answer from AWS."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = scrub(str(error.get("Message", "")), values)
    operation = exc.operation_name
    where = f"store {store!r}: {operation} on {path!r}"
    if code in TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientError(f"{where} failed for now ({code}); retrying")
    if code in DENIED_CODES:
        return StoreError(
            f"{where} was denied ({code}); allow secretsmanager:{operation} on this secret "
            "for the AWS identity rotator runs as (see docs/stores.md for the policy)"
        )
    if code in CREDENTIAL_CODES:
        return StoreError(f"{where}: AWS refused the credentials ({code}); {CREDENTIALS_HINT}")
    if code in KMS_CODES:
        return StoreError(
            f"{where}: its KMS key cannot be used ({code}: {message}); enable the key and allow "
            "kms:Decrypt and kms:GenerateDataKey on it for rotator's AWS identity"
        )
    if code == "ResourceNotFoundException":
        return StoreError(f"{where}: no such secret; create it or fix the secret's `path`")
    if code == "InvalidRequestException":
        return StoreError(
            f"{where} was refused ({message}); if the secret is scheduled for deletion, restore "
            "it with `aws secretsmanager restore-secret --secret-id <path>`"
        )
    return StoreError(f"{where} failed ({code}: {message})")
