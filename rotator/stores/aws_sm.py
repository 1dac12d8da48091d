"""The AWS Secrets Manager store: our stages are its native staging labels.

CURRENT, PENDING and PREVIOUS are AWSCURRENT, AWSPENDING and AWSPREVIOUS; the
run id is the ClientRequestToken, so a version's id IS its token. Every method
reads the version->labels map first and only then moves labels, so each call is
safe to repeat and safe after a crash between any two of its own calls.

AWS attaches AWSCURRENT to the first version a secret ever gets, whatever
VersionStages says. A version holding both AWSCURRENT and AWSPENDING is
therefore PENDING only to rotator (its promote has not finished, or it is the
unconfirmed first value of a new secret); `read(path, CURRENT)` does not
return it. AWS only ever moves AWSCURRENT, never removes it, so adopting a
value over an unconfirmed first value moves AWSCURRENT onto the adopted one.

Exclusion between processes comes only from the engine's per-secret lease: AWS
has no compare-and-set on labels. `put_pending` checks before and after its
write and serialises writers inside one process, which catches most mistakes
but cannot stop two processes that both skip the lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field

from rotator.credential import Credential
from rotator.errors import ConfigError, StoreError, TransientError
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

#: AWS's bounds for ClientRequestToken (the run id, which becomes the version id).
TOKEN_LENGTH = range(32, 65)


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
        return {str(vid): list(labels) for vid, labels in stages.items() if labels}

    # -- writing ------------------------------------------------------------------

    def put_pending(self, path: str, credential: Credential, token: str) -> SecretVersion:
        self._check_token(path, token)
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
            holder = _holder(self._versions(path) or {}, PENDING)
            if holder is None:  # AWS ignored the put: the token's version exists, unlabelled
                raise self._spent(path, token)
            if holder != token:  # another writer moved the label since
                raise StoreError(
                    f"store {self.name!r}: concurrent write to {path!r}; another run owns PENDING"
                )
        return SecretVersion(token, credential, Stage.PENDING, token)

    def _same_token(self, path: str, token: str, labels: list[str]) -> SecretVersion:
        """A replayed put: the version this token wrote, while it is still PENDING."""
        if PENDING not in labels:
            raise self._spent(path, token)
        try:
            answer = self._get(path, VersionId=token)
        except _NotFound:  # deleted between DescribeSecret and GetSecretValue
            raise StoreError(
                f"store {self.name!r}: version {token} at {path!r} disappeared while it was "
                "read (deleted outside rotator?); check the secret and run the rotation again"
            ) from None
        return self._version(path, answer, Stage.PENDING)

    def _spent(self, path: str, token: str) -> StoreError:
        return StoreError(
            f"store {self.name!r}: token {token} at {path!r} was spent on a "
            "version that is no longer PENDING"
        )

    def _check_token(self, path: str, token: str) -> None:
        """AWS takes 32 to 64 characters; say so before a vague parameter error."""
        if len(token) not in TOKEN_LENGTH:
            raise StoreError(
                f"store {self.name!r}: run id {token!r} for {path!r} has {len(token)} "
                "characters; AWS needs 32 to 64 (a UUID, as beat and the CLI use)"
            )

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
                # AWSPREVIOUS first: AWS would move it with AWSCURRENT, a server that does not
                # would lose it to a crash between the two moves (a re-run skips the move).
                if old is not None and PREVIOUS not in versions[old]:
                    self._move(path, PREVIOUS, old, _holder(versions, PREVIOUS))
                self._move(path, CURRENT, version_id, old)
            self._unlabel(path, PENDING, version_id)

    def discard_pending(self, path: str, version_id: str) -> None:
        with self._lock(path), aws_errors(self.name, path):
            versions = self._versions(path) or {}
            if PENDING not in versions.get(version_id, []):
                return
            if CURRENT in versions[version_id]:
                raise self._pending_holds_current(path, version_id, versions)
            self._discard(path, version_id, versions[version_id])

    def _discard(self, path: str, version_id: str, labels: list[str]) -> None:
        """Drop PENDING, and a PREVIOUS AWS put on an unconfirmed first value (then PENDING)."""
        if PREVIOUS in labels:
            self._unlabel(path, PREVIOUS, version_id)
        self._unlabel(path, PENDING, version_id)

    def _pending_holds_current(self, path: str, version_id: str, versions: Versions) -> StoreError:
        """AWSCURRENT can only move: a PENDING that also holds it cannot just be dropped."""
        if not _first_value(versions, version_id):
            return StoreError(
                f"store {self.name!r}: version {version_id} at {path!r} was being promoted; "
                "finish the rotation instead of dropping it"
            )
        return StoreError(
            f"store {self.name!r}: version {version_id} is the first value of {path!r} and "
            "AWS cannot take AWSCURRENT off it; replace it with a working value using "
            "`rotator put <secret> --replace-pending`"
        )

    def put_current(
        self, path: str, credential: Credential, token: str, replace_pending: bool = False
    ) -> SecretVersion:
        """Adoption: the value becomes AWSCURRENT in one put; AWS moves AWSPREVIOUS itself."""
        self._check_token(path, token)
        values = list(credential.secret_values())
        with self._lock(path), aws_errors(self.name, path, values):
            versions = self._versions(path)
            if versions is None:
                self._create(path)
                versions = {}
            pending, unconfirmed = _holder(versions, PENDING), None
            if pending is not None and pending != token:
                if not replace_pending:
                    raise StoreError(f"store {self.name!r}: {path!r} has a PENDING version")
                if CURRENT in versions[pending]:
                    if not _first_value(versions, pending):
                        raise self._pending_holds_current(path, pending, versions)
                    unconfirmed = pending  # AWS moves AWSCURRENT off it with the put
                else:
                    self._discard(path, pending, versions[pending])
            self._put_current(path, credential, token, unconfirmed)
        return SecretVersion(token, credential, Stage.CURRENT, token)

    def _put_current(
        self, path: str, credential: Credential, token: str, unconfirmed: str | None
    ) -> None:
        """Put under AWSCURRENT, then tidy: PREVIOUS stays off an unconfirmed first value.

        Order for replays after a crash: the unconfirmed value keeps AWSPENDING until last,
        so a re-run sees it as a PENDING to discard (`_discard`) and finishes the tidy-up.
        """
        versions = self._versions(path) or {}
        if CURRENT in versions.get(token, []) and PENDING not in versions[token]:
            return  # a replayed adoption
        old = _holder(versions, CURRENT)
        # AWSPREVIOUS belongs on the old confirmed CURRENT; with none, it stays where it was.
        confirmed = old not in (None, token, unconfirmed)
        wanted = old if confirmed else _holder(versions, PREVIOUS)
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
        if unconfirmed is not None and PENDING in (self._versions(path) or {}).get(unconfirmed, []):
            self._unlabel(path, PENDING, unconfirmed)

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
        try:
            self.client.update_secret_version_stage(
                SecretId=path, VersionStage=label, MoveToVersionId=to, **options
            )
        except ClientError as exc:
            self._settled(exc, path, label, lambda labels: label in labels.get(to, []))

    def _unlabel(self, path: str, label: str, version_id: str) -> None:
        try:
            self.client.update_secret_version_stage(
                SecretId=path, VersionStage=label, RemoveFromVersionId=version_id
            )
        except ClientError as exc:
            self._settled(exc, path, label, lambda labels: label not in labels.get(version_id, []))

    def _settled(
        self, exc: ClientError, path: str, label: str, done: Callable[[Versions], bool]
    ) -> None:
        """A label move AWS called invalid: done already when botocore retried after a lost
        answer (the retry names a RemoveFromVersionId that no longer holds the label)."""
        if exc.response.get("Error", {}).get("Code") != "InvalidParameterException":
            raise exc
        if done(self._versions(path) or {}):
            return
        raise TransientError(
            f"store {self.name!r}: the labels of {path!r} changed while {label} moved; "
            "the step runs again from the labels it reads then"
        ) from None

    def _lock(self, path: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(path, threading.Lock())


class _NotFound(Exception):
    """No secret at the path, or no version holding the label."""


def _first_value(versions: Versions, version_id: str) -> bool:
    """The only labelled version: a new secret's first value, AWSCURRENT by AWS's rule."""
    return not any(labels for vid, labels in versions.items() if vid != version_id)


def _holder(versions: Versions, label: str) -> str | None:
    return next((vid for vid, labels in versions.items() if label in labels), None)
