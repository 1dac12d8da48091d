"""The AWS Secrets Manager store: our stages are its native staging labels.

CURRENT, PENDING and PREVIOUS are AWSCURRENT, AWSPENDING and AWSPREVIOUS; the
run id is the ClientRequestToken, so a version's id IS its token. Every method
reads the version->labels map first and only then moves labels, so each call is
safe to repeat and safe after a crash between any two of its own calls.

AWS attaches AWSCURRENT to the first version a secret ever gets, whatever
VersionStages says. A version holding both AWSCURRENT and AWSPENDING is
therefore PENDING only to rotator (its promote has not finished, or it is the
unconfirmed first value of a new secret); `read(path, CURRENT)` does not
return it. Exclusion between processes comes from the engine's per-secret
lease; AWS has no compare-and-set on labels, so `put_pending` checks before it
writes and checks again after, and serialises writers inside one process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field

from rotator.credential import Credential
from rotator.errors import ConfigError, StoreError
from rotator.stores.aws_errors import aws_errors
from rotator.stores.base import SecretStore, SecretVersion, Stage, StoreConfig, StoreContext

CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
LABELS = {Stage.CURRENT: CURRENT, Stage.PENDING: PENDING, Stage.PREVIOUS: PREVIOUS}

#: botocore logs request bodies (SecretString included) at DEBUG: never let them through.
for _noisy in ("boto3", "botocore", "urllib3", "s3transfer"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

#: Standard retry mode (throttling, 5xx, connection errors) and bounded waits per attempt.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=5,
    read_timeout=15,
)

Versions = dict[str, list[str]]


class AwsSecretsManagerConfig(StoreConfig):
    """`stores.NAME` for AWS; credentials come only from boto3's default chain."""

    type: Literal["aws-secrets-manager"] = "aws-secrets-manager"
    region: str = Field(min_length=1, pattern=r"^[a-z0-9-]+$")
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    kms_key_id: str | None = Field(default=None, min_length=1)


class AwsSecretsManagerStore(SecretStore):
    store_type: ClassVar[str] = "aws-secrets-manager"
    Config: ClassVar[type[StoreConfig]] = AwsSecretsManagerConfig

    def __init__(self, name: str, client: Any, kms_key_id: str | None = None) -> None:
        self.name = name
        self.client = client
        self.kms_key_id = kms_key_id
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def from_config(
        cls, name: str, config: StoreConfig, context: StoreContext
    ) -> AwsSecretsManagerStore:
        assert isinstance(config, AwsSecretsManagerConfig)
        try:
            # One session per store: boto3 sessions are not thread-safe, their clients are.
            session = boto3.session.Session(region_name=config.region)
            client = session.client(
                "secretsmanager", endpoint_url=config.endpoint_url, config=CLIENT_CONFIG
            )
        except Exception as exc:  # botocore raises many types for a bad region or URL
            raise ConfigError(f"store {name!r}: cannot build an AWS client: {exc}") from None
        return cls(name, client, config.kms_key_id)

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.name!r})"

    def check(self) -> None:
        """One cheap ListSecrets call (needs secretsmanager:ListSecrets): reachable, signed ok."""
        with aws_errors(self.name, "(any)"):
            self.client.list_secrets(MaxResults=1)

    # -- reading ------------------------------------------------------------------

    def read(self, path: str, stage: Stage) -> SecretVersion | None:
        try:
            with aws_errors(self.name, path):
                answer = self._get(path, VersionStage=LABELS[stage])
        except _NotFound:
            return None
        labels = answer.get("VersionStages", [])
        if stage == Stage.CURRENT and PENDING in labels:
            return None  # an unfinished promote or the unconfirmed first value: not CURRENT
        return self._version(path, answer, stage)

    def _get(self, path: str, **which: str) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = self.client.get_secret_value(SecretId=path, **which)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise _NotFound from None
            raise
        return answer

    def _version(self, path: str, answer: dict[str, Any], stage: Stage | None) -> SecretVersion:
        text = answer.get("SecretString")
        try:
            credential = Credential.from_json(text or "")
        except ValueError:
            raise StoreError(
                f"store {self.name!r}: the value of {path!r} is not a JSON object; "
                "store the secret's fields as a JSON object (SecretString)"
            ) from None
        version_id = str(answer["VersionId"])
        return SecretVersion(version_id, credential, stage, version_id)

    def _versions(self, path: str) -> Versions | None:
        """Each labelled version at `path` -> its labels; None when there is no secret.

        Versions without labels are left out (AWS deprecates them): a token spent on one is
        refused by AWS itself when it is used again with another value.
        """
        try:
            answer = self.client.describe_secret(SecretId=path)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise
        if answer.get("DeletedDate"):
            raise StoreError(
                f"store {self.name!r}: secret {path!r} is scheduled for deletion; restore it "
                f"with `aws secretsmanager restore-secret --secret-id {path}` or use another path"
            )
        stages = answer.get("VersionIdsToStages") or {}
        return {str(vid): list(labels) for vid, labels in stages.items()}

    # -- writing ------------------------------------------------------------------

    def put_pending(self, path: str, credential: Credential, token: str) -> SecretVersion:
        values = list(credential.secret_values())
        with self._lock(path), aws_errors(self.name, path, values):
            versions = self._versions(path)
            if versions is None:
                self._create(path)
                versions = {}
            if token in versions:
                return self._same_token(path, token, versions[token])
            holder = _holder(versions, PENDING)
            if holder is not None:
                raise StoreError(f"store {self.name!r}: {path!r} already has a PENDING version")
            self._put(path, credential, token, PENDING)
            after = self._versions(path) or {}
            if _holder(after, PENDING) != token:  # another writer moved the label since
                raise StoreError(
                    f"store {self.name!r}: concurrent write to {path!r}; another run owns PENDING"
                )
        return SecretVersion(token, credential, Stage.PENDING, token)

    def _same_token(self, path: str, token: str, labels: list[str]) -> SecretVersion:
        """A replayed put: the version this token wrote, while it is still PENDING."""
        if PENDING not in labels:
            raise StoreError(
                f"store {self.name!r}: token {token} at {path!r} was spent on a "
                "version that is no longer PENDING"
            )
        return self._version(path, self._get(path, VersionId=token), Stage.PENDING)

    def _create(self, path: str) -> None:
        """A new secret with no value, so no version holds AWSCURRENT before a put."""
        options = {"KmsKeyId": self.kms_key_id} if self.kms_key_id else {}
        try:
            self.client.create_secret(
                Name=path, Description="managed by rotator (secret rotation)", **options
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise  # another writer creating it at the same moment is fine

    def promote(self, path: str, version_id: str) -> None:
        with self._lock(path), aws_errors(self.name, path):
            versions = self._versions(path) or {}
            labels = versions.get(version_id)
            if labels is None:
                raise StoreError(f"store {self.name!r}: no version {version_id} at {path!r}")
            if PENDING not in labels:
                if CURRENT in labels:
                    return  # promoted already
                raise StoreError(f"store {self.name!r}: version {version_id} is not PENDING")
            old = _holder(versions, CURRENT)
            if old != version_id:
                self._move(path, CURRENT, version_id, old)
                # AWS moves AWSPREVIOUS to the old CURRENT itself; make sure wherever we run.
                if old is not None and PREVIOUS not in (self._versions(path) or {}).get(old, []):
                    self._move(path, PREVIOUS, old, _holder(self._versions(path) or {}, PREVIOUS))
            self._unlabel(path, PENDING, version_id)

    def discard_pending(self, path: str, version_id: str) -> None:
        with self._lock(path), aws_errors(self.name, path):
            labels = (self._versions(path) or {}).get(version_id, [])
            if PENDING not in labels:
                return
            if CURRENT in labels:
                self._drop_first_value(path, version_id)
            self._unlabel(path, PENDING, version_id)

    def _drop_first_value(self, path: str, version_id: str) -> None:
        """A new secret's only value got AWSCURRENT from AWS: take it away before PENDING."""
        versions = self._versions(path) or {}
        if any(labels for vid, labels in versions.items() if vid != version_id):
            raise StoreError(
                f"store {self.name!r}: version {version_id} at {path!r} was being promoted; "
                "finish the rotation instead of dropping it"
            )
        self._unlabel(path, CURRENT, version_id)
        if PREVIOUS in (self._versions(path) or {}).get(version_id, []):
            self._unlabel(path, PREVIOUS, version_id)  # some servers move it there

    def put_current(
        self, path: str, credential: Credential, token: str, replace_pending: bool = False
    ) -> SecretVersion:
        """Adoption: the value becomes AWSCURRENT in one put; AWS moves AWSPREVIOUS itself."""
        values = list(credential.secret_values())
        with aws_errors(self.name, path, values):
            with self._lock(path):
                versions = self._versions(path)
                if versions is None:
                    self._create(path)
                    versions = {}
                pending = _holder(versions, PENDING)
            if pending is not None and pending != token:
                if not replace_pending:
                    raise StoreError(f"store {self.name!r}: {path!r} has a PENDING version")
                self.discard_pending(path, pending)
            with self._lock(path):
                self._put_current(path, credential, token)
        return SecretVersion(token, credential, Stage.CURRENT, token)

    def _put_current(self, path: str, credential: Credential, token: str) -> None:
        versions = self._versions(path) or {}
        if CURRENT in versions.get(token, []) and PENDING not in versions[token]:
            return  # a replayed adoption
        old = _holder(versions, CURRENT)
        # AWSPREVIOUS belongs on the old CURRENT; with none, it stays where it was.
        wanted = old if old not in (None, token) else _holder(versions, PREVIOUS)
        self._put(path, credential, token, CURRENT)
        after = self._versions(path) or {}
        for stale in [v for v, labels in after.items() if CURRENT in labels and v != token]:
            self._unlabel(path, CURRENT, stale)  # AWS moves it; some emulators leave a copy
        if PENDING in after.get(token, []):
            self._unlabel(path, PENDING, token)
        holder = _holder(self._versions(path) or {}, PREVIOUS)
        if holder != wanted and wanted is not None:
            self._move(path, PREVIOUS, wanted, holder)
        elif holder != wanted and holder is not None:
            self._unlabel(path, PREVIOUS, holder)

    def _put(self, path: str, credential: Credential, token: str, label: str) -> None:
        """A new version under `label`; a token AWS already holds for another value is spent."""
        try:
            self.client.put_secret_value(
                SecretId=path,
                ClientRequestToken=token,
                SecretString=credential.to_json(),
                VersionStages=[label],
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise
            raise StoreError(
                f"store {self.name!r}: token {token} at {path!r} was spent on a version that "
                "is no longer PENDING"
            ) from None

    # -- label moves --------------------------------------------------------------

    def _move(self, path: str, label: str, to: str, away_from: str | None) -> None:
        options = {"RemoveFromVersionId": away_from} if away_from and away_from != to else {}
        self.client.update_secret_version_stage(
            SecretId=path, VersionStage=label, MoveToVersionId=to, **options
        )

    def _unlabel(self, path: str, label: str, version_id: str) -> None:
        self.client.update_secret_version_stage(
            SecretId=path, VersionStage=label, RemoveFromVersionId=version_id
        )

    def _lock(self, path: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(path, threading.Lock())


class _NotFound(Exception):
    """No secret at the path, or no version holding the label."""


def _holder(versions: Versions, label: str) -> str | None:
    return next((vid for vid, labels in versions.items() if label in labels), None)
