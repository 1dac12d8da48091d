"""The AWS Secrets Manager store over real HTTP: labels, replays, partial crashes, errors.

moto's ThreadedMotoServer answers for AWS; a tiny local HTTP server speaks AWS's
JSON error bodies for the answers moto cannot give (denied, throttled, KMS).
The store-independent rules are in test_store_conformance.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import StoreError, TransientError
from rotator.stores import Stage, store_class
from rotator.stores.aws_sm import AwsSecretsManagerConfig, AwsSecretsManagerStore
from tests.services.moto import REGION, MotoServer, unique_secret_name

pytestmark = pytest.mark.integration


class Crash(Exception):
    """A process dying right after AWS applied a call (raised by a botocore event hook)."""


def make_store(endpoint: str, **options: Any) -> AwsSecretsManagerStore:
    config = AwsSecretsManagerConfig(region=REGION, endpoint_url=endpoint, **options)
    return AwsSecretsManagerStore.from_config("aws-prod", config, None)  # type: ignore[arg-type]


@pytest.fixture
def store(moto_endpoint: str) -> AwsSecretsManagerStore:
    return make_store(moto_endpoint)


@pytest.fixture
def aws(moto_server: MotoServer) -> Any:
    """A plain boto3 client: what an application or the AWS console would use."""
    return moto_server.client()


@pytest.fixture
def path() -> str:
    return unique_secret_name()


def token() -> str:
    return uuid.uuid4().hex


def value() -> Credential:
    return Credential(engine="postgres", username="app", password="pw-" + secrets.token_hex(12))


def labels(aws: Any, path: str) -> dict[str, list[str]]:
    """Version id -> its staging labels (unlabelled versions left out), as AWS reports them."""
    stages = aws.describe_secret(SecretId=path).get("VersionIdsToStages", {})
    return {vid: sorted(found) for vid, found in stages.items() if found}


def crash_after(store: AwsSecretsManagerStore, operation: str, count: int) -> None:
    """Make the store's process 'die' right after its `count`-th successful `operation`."""
    done = [0]

    def hook(http_response: Any, **_: Any) -> None:
        if http_response.status_code == 200:
            done[0] += 1
            if done[0] == count:
                raise Crash(f"crash after {operation} #{count}")

    store.client.meta.events.register(f"after-call.secretsmanager.{operation}", hook)


def test_first_put_creates_the_secret_and_reads_as_pending_only(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    run, new = token(), value()
    store.put_pending(path, new, run)

    # AWS gives a secret's first version AWSCURRENT whatever VersionStages says: to rotator
    # that version is PENDING only, until its promote.
    assert labels(aws, path) == {run: ["AWSCURRENT", "AWSPENDING"]}
    assert store.read(path, Stage.CURRENT) is None
    pending = store.read(path, Stage.PENDING)
    assert pending is not None and pending.credential == new and pending.version_id == run

    store.promote(path, run)

    assert labels(aws, path) == {run: ["AWSCURRENT"]}
    assert json.loads(aws.get_secret_value(SecretId=path)["SecretString"]) == dict(new)


def test_labels_after_each_call_of_a_rotation(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    adopt, run, later = token(), token(), token()
    store.put_current(path, value(), adopt)
    assert labels(aws, path) == {adopt: ["AWSCURRENT"]}

    store.put_pending(path, value(), run)
    assert labels(aws, path) == {adopt: ["AWSCURRENT"], run: ["AWSPENDING"]}

    store.promote(path, run)
    assert labels(aws, path) == {adopt: ["AWSPREVIOUS"], run: ["AWSCURRENT"]}

    store.put_pending(path, value(), later)
    store.discard_pending(path, later)
    assert labels(aws, path) == {adopt: ["AWSPREVIOUS"], run: ["AWSCURRENT"]}

    fresh = token()
    store.put_pending(path, value(), fresh)
    assert labels(aws, path)[fresh] == ["AWSPENDING"]
    assert len([v for v, found in labels(aws, path).items() if "AWSPENDING" in found]) == 1


def test_replayed_token_returns_the_stored_value_without_a_new_version(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    store.put_current(path, value(), token())
    run, first = token(), value()
    store.put_pending(path, first, run)

    again = store.put_pending(path, value(), run)  # moto would accept a second value; AWS not

    assert again.credential == first and again.version_id == run
    versions = aws.list_secret_version_ids(SecretId=path)["Versions"]
    assert len(versions) == 2


def test_a_pending_label_set_outside_rotator_is_not_moved(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    store.put_current(path, value(), token())
    theirs = token()
    aws.put_secret_value(
        SecretId=path, ClientRequestToken=theirs, SecretString="{}", VersionStages=["AWSPENDING"]
    )

    with pytest.raises(StoreError, match="already has a PENDING"):
        store.put_pending(path, value(), token())

    assert "AWSPENDING" in labels(aws, path)[theirs]


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_promote_finishes_after_a_crash_between_its_calls(
    moto_endpoint: str, aws: Any, path: str, crash_at: int
) -> None:
    """A crash after setting AWSPREVIOUS (1), moving AWSCURRENT (2) or removing AWSPENDING (3)."""
    setup = make_store(moto_endpoint)
    old, run = token(), token()
    setup.put_current(path, value(), old)
    setup.put_pending(path, value(), run)
    dying = make_store(moto_endpoint)
    crash_after(dying, "UpdateSecretVersionStage", crash_at)

    with pytest.raises(Crash):
        dying.promote(path, run)
    if crash_at == 2:
        assert labels(aws, path) == {old: ["AWSPREVIOUS"], run: ["AWSCURRENT", "AWSPENDING"]}
        assert setup.read(path, Stage.CURRENT) is None  # not CURRENT to rotator until finished

    fresh = make_store(moto_endpoint)
    fresh.promote(path, run)
    fresh.promote(path, run)

    assert labels(aws, path) == {old: ["AWSPREVIOUS"], run: ["AWSCURRENT"]}
    current = fresh.read(path, Stage.CURRENT)
    assert current is not None and current.token == run


def test_previous_survives_a_crash_on_a_server_that_does_not_move_it(
    moto_endpoint: str, aws: Any, path: str
) -> None:
    """AWSPREVIOUS is set before AWSCURRENT moves, so dying right after the move loses nothing.

    The hook plays a server that leaves AWSPREVIOUS where it was when AWSCURRENT moves, then
    the process dies; a re-run sees AWSCURRENT moved already and only removes AWSPENDING.
    """
    setup = make_store(moto_endpoint)
    first, second, run = token(), token(), token()
    setup.put_current(path, value(), first)
    setup.put_pending(path, value(), second)
    setup.promote(path, second)
    setup.put_pending(path, value(), run)
    dying = make_store(moto_endpoint)
    before: dict[str, list[str]] = {}

    def remember(params: dict[str, Any], **_: Any) -> None:
        if params.get("VersionStage") == "AWSCURRENT":
            before.update(labels(aws, path))

    def server_leaves_previous_then_crash(http_response: Any, **_: Any) -> None:
        if not before:
            return
        was = next(vid for vid, found in before.items() if "AWSPREVIOUS" in found)
        now = next(vid for vid, found in labels(aws, path).items() if "AWSPREVIOUS" in found)
        if was != now:
            aws.update_secret_version_stage(
                SecretId=path,
                VersionStage="AWSPREVIOUS",
                MoveToVersionId=was,
                RemoveFromVersionId=now,
            )
        raise Crash("crash after moving AWSCURRENT")

    events = dying.client.meta.events
    events.register("provide-client-params.secretsmanager.UpdateSecretVersionStage", remember)
    events.register(
        "after-call.secretsmanager.UpdateSecretVersionStage", server_leaves_previous_then_crash
    )

    with pytest.raises(Crash):
        dying.promote(path, run)
    make_store(moto_endpoint).promote(path, run)

    assert labels(aws, path) == {second: ["AWSPREVIOUS"], run: ["AWSCURRENT"]}


def record_label_calls(store: AwsSecretsManagerStore, aws: Any, path: str) -> list[Any]:
    """Each UpdateSecretVersionStage the store sends, with the labels just before it."""
    calls: list[Any] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append((dict(params), labels(aws, path)))

    store.client.meta.events.register(
        "provide-client-params.secretsmanager.UpdateSecretVersionStage", record
    )
    return calls


def test_adopting_over_a_new_secrets_first_value_moves_current_onto_the_adopted_value(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    """AWS can move AWSCURRENT but never remove it from its only holder: adoption moves it."""
    first, adopt, given = token(), token(), value()
    store.put_pending(path, value(), first)  # the first value: AWSCURRENT + AWSPENDING
    calls = record_label_calls(store, aws, path)

    store.put_current(path, given, adopt, replace_pending=True)
    store.put_current(path, given, adopt, replace_pending=True)  # a replay changes nothing

    found = labels(aws, path)
    assert found[adopt] == ["AWSCURRENT"]
    assert "AWSPENDING" not in found.get(first, [])
    current = store.read(path, Stage.CURRENT)
    assert current is not None and current.token == adopt and current.credential == given
    assert store.read(path, Stage.PENDING) is None
    for params, seen in calls:
        only_current = [vid for vid, stages in seen.items() if "AWSCURRENT" in stages]
        removed_from = params.get("RemoveFromVersionId")
        assert not (
            [removed_from] == only_current
            and params["VersionStage"] == "AWSCURRENT"
            and "MoveToVersionId" not in params
        ), f"AWSCURRENT removed from its only holder: {params}"


def test_discarding_a_new_secrets_first_value_says_to_replace_it(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    first = token()
    store.put_pending(path, value(), first)
    calls = record_label_calls(store, aws, path)

    with pytest.raises(StoreError, match=r"first value.*rotator put .*--replace-pending"):
        store.discard_pending(path, first)

    assert calls == []
    assert labels(aws, path) == {first: ["AWSCURRENT", "AWSPENDING"]}


def test_adoption_over_a_pending_with_replace(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    old, pending, adopt = token(), token(), token()
    store.put_current(path, value(), old)
    store.put_pending(path, value(), pending)
    given = value()

    version = store.put_current(path, given, adopt, replace_pending=True)
    store.put_current(path, given, adopt, replace_pending=True)  # a replay changes nothing

    assert version.version_id == adopt
    assert labels(aws, path) == {old: ["AWSPREVIOUS"], adopt: ["AWSCURRENT"]}


def test_new_secrets_use_the_configured_kms_key(moto_endpoint: str, aws: Any, path: str) -> None:
    store = make_store(moto_endpoint, kms_key_id="alias/rotator-test")
    store.put_pending(path, value(), token())

    assert aws.describe_secret(SecretId=path)["KmsKeyId"] == "alias/rotator-test"


def test_a_secret_scheduled_for_deletion_says_how_to_restore_it(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    store.put_current(path, value(), token())
    aws.delete_secret(SecretId=path, RecoveryWindowInDays=7)
    new = value()

    with pytest.raises(StoreError, match=r"scheduled for deletion.*restore-secret") as caught:
        store.put_pending(path, new, token())

    assert "aws-prod" in str(caught.value) and path in str(caught.value)
    assert new.password is not None and new.password not in str(caught.value)


def test_a_value_that_is_not_a_json_object_is_a_store_error(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    aws.create_secret(Name=path, SecretString="hunter2-not-json")

    with pytest.raises(StoreError, match="not a JSON object") as caught:
        store.read(path, Stage.CURRENT)

    assert "hunter2" not in str(caught.value)


def test_check_passes_on_a_working_endpoint(store: AwsSecretsManagerStore) -> None:
    store.check()


def test_config_takes_no_credentials_and_needs_a_region() -> None:
    cls = store_class("aws-secrets-manager")
    assert cls is AwsSecretsManagerStore
    with pytest.raises(ValidationError, match="aws_secret_access_key"):
        cls.Config.model_validate(
            {"type": "aws-secrets-manager", "region": "eu-west-1", "aws_secret_access_key": "x"}
        )
    with pytest.raises(ValidationError, match="region"):
        cls.Config.model_validate({"type": "aws-secrets-manager"})


def test_unreachable_endpoint_is_transient_and_building_needs_no_network() -> None:
    store = make_store(f"http://127.0.0.1:{free_port()}")  # nothing listens: no error yet
    new = value()

    with pytest.raises(TransientError, match="store 'aws-prod' unreachable") as caught:
        store.put_pending(unique_secret_name(), new, token())
    with pytest.raises(TransientError, match="store 'aws-prod'"):
        store.check()

    assert new.password is not None and new.password not in str(caught.value)


# -- lost answers, replays and vanished versions ---------------------------------------


@pytest.fixture
def lossy_proxy(moto_endpoint: str) -> Iterator[Callable[[str, str], str]]:
    """A proxy to moto that applies the first matching call but loses its answer.

    botocore's standard retry mode then sends the same request again, as it would after a
    dropped connection to AWS.
    """
    servers: list[ThreadingHTTPServer] = []
    target = urlparse(moto_endpoint)

    def start(operation: str, body_has: str) -> str:
        dropped: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                upstream = http.client.HTTPConnection(str(target.hostname), target.port)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request("POST", self.path, body, headers)
                answer = upstream.getresponse()
                data = answer.read()
                called = self.headers.get("X-Amz-Target", "").split(".")[-1]
                if called == operation and body_has.encode() in body and not dropped:
                    dropped.append(called)
                    self.close_connection = True
                    return  # applied upstream; the client never hears back
                self.send_response(answer.status)
                for key, header in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, header)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_promote_survives_a_lost_answer_to_the_current_move(
    store: AwsSecretsManagerStore, aws: Any, path: str, lossy_proxy: Callable[[str, str], str]
) -> None:
    """The retried move names a RemoveFromVersionId that lost AWSCURRENT: already done."""
    old, run = token(), token()
    store.put_current(path, value(), old)
    store.put_pending(path, value(), run)
    endpoint = lossy_proxy("UpdateSecretVersionStage", '"VersionStage": "AWSCURRENT"')

    make_store(endpoint).promote(path, run)

    assert labels(aws, path) == {old: ["AWSPREVIOUS"], run: ["AWSCURRENT"]}
    current = store.read(path, Stage.CURRENT)
    assert current is not None and current.token == run


def test_discard_survives_a_lost_answer_to_removing_pending(
    store: AwsSecretsManagerStore, aws: Any, path: str, lossy_proxy: Callable[[str, str], str]
) -> None:
    old, run = token(), token()
    store.put_current(path, value(), old)
    store.put_pending(path, value(), run)
    endpoint = lossy_proxy("UpdateSecretVersionStage", '"VersionStage": "AWSPENDING"')

    make_store(endpoint).discard_pending(path, run)

    assert labels(aws, path) == {old: ["AWSCURRENT"]}
    assert store.read(path, Stage.PENDING) is None


def test_a_label_move_that_really_failed_is_retried_by_the_engine(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    """InvalidParameterException with the move not done: transient, the step re-reads."""
    old, run = token(), token()
    store.put_current(path, value(), old)
    store.put_pending(path, value(), run)

    def someone_moves_current(params: dict[str, Any], **_: Any) -> None:
        """Between the store's read and its move of AWSCURRENT, another writer puts a value."""
        if params.get("VersionStage") == "AWSCURRENT":
            aws.put_secret_value(SecretId=path, ClientRequestToken=token(), SecretString="{}")

    store.client.meta.events.register(
        "provide-client-params.secretsmanager.UpdateSecretVersionStage", someone_moves_current
    )

    with pytest.raises(TransientError, match=r"store 'aws-prod'.*labels of .* changed"):
        store.promote(path, run)


def test_a_replay_whose_version_vanished_mid_read_is_a_store_error(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    """Deleted between DescribeSecret and GetSecretValue: a named error, not a traceback."""
    run, new = token(), value()
    store.put_current(path, value(), token())
    store.put_pending(path, new, run)

    def delete_it(**_: Any) -> None:
        aws.delete_secret(SecretId=path, ForceDeleteWithoutRecovery=True)

    store.client.meta.events.register("after-call.secretsmanager.DescribeSecret", delete_it)

    with pytest.raises(StoreError, match=r"store 'aws-prod'.*disappeared") as caught:
        store.put_pending(path, new, run)

    assert path in str(caught.value) and caught.value.__cause__ is None


def test_a_replay_of_a_discarded_version_with_the_same_value_is_spent(
    store: AwsSecretsManagerStore, aws: Any, path: str
) -> None:
    """AWS ignores a put repeating a token and its value; the version stays unlabelled.

    moto lists unlabelled versions in VersionIdsToStages with no labels; AWS leaves them out,
    which the hook reproduces on the store's client.
    """

    def answer_like_aws(parsed: dict[str, Any], **_: Any) -> None:
        stages = parsed.get("VersionIdsToStages", {})
        parsed["VersionIdsToStages"] = {vid: found for vid, found in stages.items() if found}

    store.client.meta.events.register("after-call.secretsmanager.DescribeSecret", answer_like_aws)
    run, new = token(), value()
    store.put_current(path, value(), token())
    store.put_pending(path, new, run)
    store.discard_pending(path, run)

    with pytest.raises(StoreError, match="was spent"):
        store.put_pending(path, new, run)

    assert store.read(path, Stage.PENDING) is None


@pytest.mark.parametrize("run", ["celery-task-7", "x" * 65])
def test_a_run_id_aws_cannot_take_is_refused_before_any_call(
    store: AwsSecretsManagerStore, path: str, run: str
) -> None:
    with pytest.raises(StoreError, match=r"store 'aws-prod'.*AWS needs 32 to 64"):
        store.put_pending(path, value(), run)
    with pytest.raises(StoreError, match="32 to 64"):
        store.put_current(path, value(), run)

    assert store.read(path, Stage.CURRENT) is None


# -- AWS answers moto cannot give ---------------------------------------------------------


class _ErrorHandler(BaseHTTPRequestHandler):
    """Answers DescribeSecret like AWS and every other call with the configured error."""

    answer: tuple[int, str, str] = (400, "AccessDeniedException", "denied")
    calls: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        operation = self.headers.get("X-Amz-Target", "").split(".")[-1]
        self.calls.append(operation)
        if operation == "DescribeSecret":
            self._send(200, {"Name": "x", "VersionIdsToStages": {}})
            return
        status, code, message = self.answer
        # Some AWS messages echo what was sent: the store must cut values out of them.
        self._send(status, {"__type": code, "Message": message.replace("{body}", body)})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def error_server() -> Iterator[Callable[[int, str, str], tuple[str, list[str]]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, code: str, message: str) -> tuple[str, list[str]]:
        calls: list[str] = []
        handler = type(
            "Handler", (_ErrorHandler,), {"answer": (status, code, message), "calls": calls}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", calls

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "error", "expected"),
    [
        (400, "AccessDeniedException", StoreError, "denied.*secretsmanager:PutSecretValue"),
        (400, "ThrottlingException", TransientError, "failed for now"),
        (429, "TooManyRequestsException", TransientError, "failed for now"),
        (500, "InternalServiceError", TransientError, "failed for now"),
        (400, "DecryptionFailure", StoreError, "KMS key.*kms:Decrypt"),
        (400, "KMSDisabledException", StoreError, "KMS key"),
        (400, "UnrecognizedClientException", StoreError, "refused the credentials"),
        (400, "InvalidRequestException", StoreError, "restore-secret"),
    ],
)
def test_aws_error_answers_map_to_rotator_errors(
    error_server: Callable[[int, str, str], tuple[str, list[str]]],
    status: int,
    code: str,
    error: type[Exception],
    expected: str,
) -> None:
    endpoint, calls = error_server(status, code, "request was {body}")
    store = make_store(endpoint)
    new, path = value(), unique_secret_name()

    with pytest.raises(error, match=expected) as caught:
        store.put_pending(path, new, token())

    text = str(caught.value)
    assert "store 'aws-prod'" in text and path in text
    assert new.password is not None and new.password not in text
    assert caught.value.__cause__ is None
    if error is TransientError:  # botocore's standard mode retried before giving up
        assert calls.count("PutSecretValue") == 3


def test_check_names_the_store_when_access_is_denied(
    error_server: Callable[[int, str, str], tuple[str, list[str]]],
) -> None:
    endpoint, _ = error_server(400, "AccessDeniedException", "no")

    with pytest.raises(StoreError, match=r"store 'aws-prod'.*secretsmanager:ListSecrets"):
        make_store(endpoint).check()


def test_no_value_in_any_log_line_even_with_debug_logging(
    store: AwsSecretsManagerStore, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root at DEBUG, as `celery worker -l debug` would set it
    values = [value() for _ in range(3)]
    with capture_logs() as logs:
        store.put_current(path, values[0], token())
        store.put_pending(path, values[1], run := token())
        store.read(path, Stage.PENDING)
        store.promote(path, run)
        with pytest.raises(StoreError):
            store.put_pending(path, values[2], run)

    text = caplog.text + "".join(repr(entry) for entry in logs)
    for credential in values:
        assert credential.password is not None and credential.password not in text
    assert logging.getLogger("botocore.endpoint").getEffectiveLevel() >= logging.WARNING
