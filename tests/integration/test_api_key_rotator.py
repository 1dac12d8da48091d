"""The api-key rotator end to end: a real HTTP provider (tests/services/keyservice.py), the real
engine and the embedded store."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rotator import tasks
from rotator.base import RotatorContext
from rotator.credential import Credential
from rotator.devservers import free_port
from rotator.errors import (
    ConfigError,
    CredentialRejected,
    OutcomeUnknown,
    RotatorError,
    TransientError,
)
from rotator.history import utcnow
from rotator.logging import redact
from rotator.passwords import PasswordPolicy
from rotator.retirement import retire_due
from rotator.runtime import Runtime
from rotator.schedule import load_plan
from rotator.stores import SecretStore, Stage
from rotators.api_key import ApiKeyRotator, ApiKeyTarget
from rotators.http_client import HttpClient
from tests.conftest import RuntimeFactory, SchedulesWriter
from tests.integration.conftest import dump_tables, leaked, value_forms
from tests.services.keyservice import KeyService, start_keyservice

pytestmark = pytest.mark.integration

ADMIN, APP = "provider-admin", "app-key"


def key_target(service: KeyService, **extra: Any) -> dict[str, Any]:
    """A target block for the test provider; `extra` keys replace or add top-level keys."""
    return {
        "create": {
            "url": f"{service.url}/keys",
            "body": {"name": "rotator-{secret_name}-{request_id}", "admin": False},
            "key_pointer": "/key/secret",
            "key_id_pointer": "/key/id",
        },
        "verify": {"url": f"{service.url}/whoami"},
        "revoke": {"url": f"{service.url}/keys/{{key_id}}"},
        "read_timeout": 5,
        **extra,
    }


def schedules_text(secrets: dict[str, dict[str, Any]], max_attempts: int = 3) -> str:
    """A schedules.yaml (JSON flow values are YAML) with one line per secret."""
    lines = [
        "version: 1",
        "stores: {local: {type: embedded}}",
        f"defaults: {{max_attempts: {max_attempts}}}",
        "secrets:",
    ]
    for name, target in secrets.items():
        entry = {"rotator": "api-key", "store": "local", "every": "30d", "target": target}
        lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}")
    return "\n".join(lines) + "\n"


@dataclass
class KeyPlan:
    service: KeyService
    runtime: Runtime
    admin_key: str

    @property
    def store(self) -> SecretStore:
        return self.runtime.stores.get("local")

    def rotator(self, name: str = APP) -> ApiKeyRotator:
        rotator = self.runtime.engine.rotator_for(self.runtime.plan.secret(name))
        assert isinstance(rotator, ApiKeyRotator)
        return rotator

    def credential(self, name: str, stage: Stage) -> Credential:
        version = self.store.read(name, stage)
        assert version is not None, f"{name} has no {stage}"
        return version.credential


KeyPlanFactory = Callable[..., KeyPlan]


@pytest.fixture
def key_plan(
    keyservice: KeyService, write_schedules: SchedulesWriter, make_runtime: RuntimeFactory
) -> KeyPlanFactory:
    """A provider-admin secret (self-managed, its key adopted) and an app-key secret it admins."""

    def make(max_attempts: int = 3, **app_extra: Any) -> KeyPlan:
        admin_target = key_target(keyservice)
        admin_target["create"]["body"] = {"name": "admin-{request_id}", "admin": True}
        app_target = key_target(keyservice, admin_secret=ADMIN, **app_extra)
        text = schedules_text({ADMIN: admin_target, APP: app_target}, max_attempts)
        runtime = make_runtime(write_schedules(text))
        seed = keyservice.issue("bootstrap", admin=True)
        runtime.engine.adopt(ADMIN, Credential(api_key=seed.secret, key_id=seed.id))
        return KeyPlan(keyservice, runtime, seed.secret)

    return make


def test_rotation_stores_a_new_working_key_and_keeps_the_old_as_previous(
    key_plan: KeyPlanFactory,
) -> None:
    plan = key_plan()
    service, engine = plan.service, plan.runtime.engine
    first = engine.run(APP)
    assert first.outcome == "succeeded", first.error
    old = plan.credential(APP, Stage.CURRENT)

    result = engine.run(APP)

    assert result.outcome == "succeeded", result.error
    new = plan.credential(APP, Stage.CURRENT)
    assert plan.credential(APP, Stage.PREVIOUS) == old
    assert plan.store.read(APP, Stage.PENDING) is None
    assert set(new) == {"api_key", "key_id"} and new["key_id"] in service.keys
    assert service.keys[new["key_id"]].secret == new["api_key"]
    assert service.works(new["api_key"]) and service.works(old["api_key"])  # until retired
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(result.run_id)]
    assert steps == [("create", "ok"), ("apply", "ok"), ("test", "ok"), ("finish", "ok")]
    creates = service.seen("POST", "/keys")
    assert all(r.authorization == f"Bearer {plan.admin_key}" for r in creates)
    names = [r.body["name"] for r in creates]
    assert len(names) == 2 and all(re.fullmatch(r"rotator-app-key-[0-9a-f]{32}", n) for n in names)
    assert names[0] != names[1]  # a fresh request id per call, to find an orphaned key
    assert service.keys[new["key_id"]].name == names[1]


def test_test_accepts_a_working_key_and_rejects_a_wrong_one(key_plan: KeyPlanFactory) -> None:
    plan = key_plan()
    rotator = plan.rotator()
    rotator.test(Credential(api_key=plan.admin_key))
    wrong = "sk_wrong_" + "x" * 20

    with pytest.raises(CredentialRejected, match=r"GET http://127\.0\.0\.1:\d+/whoami .*401"):
        rotator.test(Credential(api_key=wrong, key_id="k-nope"))


def test_retire_revokes_the_previous_key_and_succeeds_again_when_it_is_gone(
    key_plan: KeyPlanFactory,
) -> None:
    plan = key_plan()
    engine = plan.runtime.engine
    assert engine.run(APP).ok and engine.run(APP).ok
    previous, current = plan.credential(APP, Stage.PREVIOUS), plan.credential(APP, Stage.CURRENT)

    plan.rotator().retire(previous)
    plan.rotator().retire(previous)  # already gone: 404 is success

    assert not plan.service.works(previous["api_key"])
    assert plan.service.works(current["api_key"])
    with pytest.raises(CredentialRejected):
        plan.rotator().test(previous)
    deletes = plan.service.seen("DELETE")
    path = f"/keys/{previous['key_id']}"
    assert [(r.path, r.status) for r in deletes] == [(path, 204), (path, 404)]
    assert all(r.authorization == f"Bearer {plan.admin_key}" for r in deletes)


def test_retire_refuses_to_revoke_the_current_key(key_plan: KeyPlanFactory) -> None:
    plan = key_plan()
    assert plan.runtime.engine.run(APP).ok
    current = plan.credential(APP, Stage.CURRENT)

    with pytest.raises(ConfigError, match="it is the CURRENT key of secret 'app-key'"):
        plan.rotator().retire(current)
    with pytest.raises(ConfigError, match="CURRENT key of secret 'provider-admin'"):
        plan.rotator().retire(plan.credential(ADMIN, Stage.CURRENT))
    assert plan.service.works(current["api_key"]) and not plan.service.seen("DELETE")


def test_retire_with_a_refused_admin_key_says_which_secret_to_fix(
    key_plan: KeyPlanFactory,
) -> None:
    plan = key_plan()
    assert plan.runtime.engine.run(APP).ok and plan.runtime.engine.run(APP).ok
    previous = plan.credential(APP, Stage.PREVIOUS)
    plan.service.keys[plan.credential(ADMIN, Stage.CURRENT)["key_id"]].admin = False

    with pytest.raises(CredentialRejected) as raised:
        plan.rotator().retire(previous)

    assert "refused the key of secret 'provider-admin' to revoke key" in str(raised.value)
    assert "HTTP 403" in str(raised.value)
    assert plan.service.works(previous["api_key"])


def test_transient_503s_are_retried_until_the_provider_answers(key_plan: KeyPlanFactory) -> None:
    plan = key_plan(max_attempts=3)
    plan.service.fail_next("whoami", 2)

    result = plan.runtime.engine.run(APP)

    assert result.outcome == "succeeded", result.error
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(result.run_id)]
    assert steps.count(("test", "retry")) == 2
    assert plan.service.works(plan.credential(APP, Stage.CURRENT)["api_key"])

    plan.service.fail_next("revoke", 1)
    assert plan.runtime.engine.run(APP).ok
    previous = plan.credential(APP, Stage.PREVIOUS)
    with pytest.raises(TransientError, match=r"revoke key .* failed \(HTTP 503\)"):
        plan.rotator().retire(previous)
    plan.rotator().retire(previous)  # the next attempt gets through
    assert not plan.service.works(previous["api_key"])


def test_a_failed_create_leaves_no_pending_and_names_its_request(key_plan: KeyPlanFactory) -> None:
    """A create is never retried within the run: a retry could leave a second key behind."""
    plan = key_plan()
    plan.service.fail_next("create", 1)

    result = plan.runtime.engine.run(APP)

    assert result.outcome == "failed"
    assert result.error and re.search(r"create \(request [0-9a-f]{32}\) failed", result.error)
    assert len(plan.service.seen("POST", "/keys")) == 1
    assert plan.store.read(APP, Stage.PENDING) is None
    assert plan.runtime.engine.run(APP).outcome == "succeeded"


def test_a_provider_that_does_not_answer_in_time_is_transient(key_plan: KeyPlanFactory) -> None:
    plan = key_plan(read_timeout=0.3)
    plan.service.delay_seconds = 1.0

    with pytest.raises(TransientError, match=r"GET http://127\.0\.0\.1:\d+/whoami: no answer"):
        plan.rotator().test(plan.credential(ADMIN, Stage.CURRENT))


def test_a_new_key_the_provider_refuses_is_rolled_back(key_plan: KeyPlanFactory) -> None:
    plan = key_plan()
    assert plan.runtime.engine.run(APP).ok
    before = plan.store.read(APP, Stage.CURRENT)
    plan.service.broken_new_keys = True

    result = plan.runtime.engine.run(APP)

    assert result.outcome == "rolled_back"
    assert result.error and "refused the key" in result.error and "HTTP 401" in result.error
    after = plan.store.read(APP, Stage.CURRENT)
    assert before is not None and after is not None and after.version_id == before.version_id
    assert plan.store.read(APP, Stage.PENDING) is None
    assert plan.service.works(after.credential["api_key"])
    steps = [(e.step, e.status) for e in plan.runtime.history.steps(result.run_id)]
    assert steps.count(("rollback", "ok")) >= 3  # apply CURRENT, test it, ..., drop PENDING
    whoami = [r.authorization for r in plan.service.seen("GET", "/whoami")]
    assert whoami[-1] == f"Bearer {after.credential['api_key']}"  # CURRENT proven again
    deleted = plan.service.seen("DELETE")
    assert [r.status for r in deleted] == [204]  # the dropped key is revoked...
    assert deleted[0].path != f"/keys/{after.credential['key_id']}"  # ...not CURRENT
    assert len(plan.service.keys) == 2  # the admin's and CURRENT: no orphan left behind


def test_the_previous_key_is_revoked_once_its_grace_has_passed(key_plan: KeyPlanFactory) -> None:
    plan = key_plan()
    engine = plan.runtime.engine
    assert engine.run(APP).ok and engine.run(APP).ok
    previous, current = plan.credential(APP, Stage.PREVIOUS), plan.credential(APP, Stage.CURRENT)
    assert retire_due(engine, APP) == []  # the grace period (1h) has not passed

    outcomes = retire_due(engine, APP, now=utcnow() + timedelta(hours=2))

    assert [o.outcome for o in outcomes] == ["retired"]
    assert not plan.service.works(previous["api_key"])
    assert plan.service.works(current["api_key"])
    assert retire_due(engine, APP, now=utcnow() + timedelta(hours=2)) == []  # done once


def test_the_admin_secret_rotates_itself_with_its_own_key(key_plan: KeyPlanFactory) -> None:
    """Without admin_secret, create and revoke authenticate with the secret's own CURRENT."""
    plan = key_plan()

    result = plan.runtime.engine.run(ADMIN)

    assert result.outcome == "succeeded", result.error
    new = plan.credential(ADMIN, Stage.CURRENT)
    assert plan.service.keys[new["key_id"]].admin
    assert plan.service.seen("POST", "/keys")[-1].authorization == f"Bearer {plan.admin_key}"
    plan.rotator(ADMIN).retire(plan.credential(ADMIN, Stage.PREVIOUS))
    assert not plan.service.works(plan.admin_key)
    assert plan.service.seen("DELETE")[-1].authorization == f"Bearer {new['api_key']}"
    assert plan.runtime.engine.run(APP).ok  # the app's rotation now uses the new admin key


def test_no_key_reaches_logs_results_history_or_error_texts(key_plan: KeyPlanFactory) -> None:
    """A provider that echoes the keys it was sent in its error bodies changes nothing."""
    plan = key_plan(max_attempts=2)
    service, engine = plan.service, plan.runtime.engine
    service.echo_keys = True
    errors: list[str] = []
    with capture_logs(processors=[redact]) as events:
        results = [engine.run(APP), engine.run(APP)]
        service.fail_next("whoami", 2)
        results.append(engine.run(APP))  # failed after retries, PENDING kept
        service.fail_next("create", 1)
        results.append(engine.run(ADMIN))  # failed create
        service.broken_new_keys = True
        results.append(engine.run(ADMIN))  # rolled back
        service.broken_new_keys = False
        previous = plan.credential(APP, Stage.PREVIOUS)
        for attempt in (
            lambda: plan.rotator().test(Credential(api_key=previous["api_key"] + "x")),
            lambda: plan.rotator().retire(plan.credential(APP, Stage.CURRENT)),
        ):
            with pytest.raises(RotatorError) as raised:
                attempt()
            errors.append(f"{raised.value!r} {raised.value}")
    outcomes = [r.outcome for r in results]
    assert outcomes == ["succeeded", "succeeded", "failed", "failed", "rolled_back"]
    values = [*service.all_secrets(), plan.admin_key, previous["api_key"] + "x"]
    assert len(values) >= 6

    texts = [repr(events), *errors, repr(plan.rotator())]
    texts += [json.dumps(r.as_dict()) for r in results]
    blobs = [
        form for _, _, value in dump_tables(plan.runtime.database) for form in value_forms(value)
    ]
    assert leaked(texts, values) == []
    assert leaked(blobs, values) == []
    assert all("you_sent" not in e for e in errors) and all("Bearer" not in e for e in errors)


# -- validation -------------------------------------------------------------------------


def load_problems(write_schedules: SchedulesWriter, text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_plan(write_schedules(text))
    return raised.value.problems


def test_target_mistakes_are_reported_with_file_line_and_key(
    write_schedules: SchedulesWriter, tmp_path: Path
) -> None:
    text = """\
    version: 1
    stores: {local: {type: embedded}}
    secrets:
      bad-key:
        rotator: api-key
        store: local
        every: 30d
        target:
          create:
            method: post
            url: "https://api.example.com/keys?owner={owner}"
            body: {name: "k-{request_id!r}"}
            key_pointer: "key/secret"
            key_id_pointer: "/key/~2id"
          verify:
            url: "https://{key_id}.example.com/whoami"
            header: "X Api Key"
          revoke:
            url: "https://api.example.com/keys/current"
          connect_timeout: 0
          tls: {verify: false, ca_cert: /etc/ca.pem}
      plain:
        rotator: api-key
        store: local
        every: 30d
        target:
          create: {url: "http://api.example.com/keys", key_pointer: /k, key_id_pointer: /i}
          verify: {url: "https://user:pw@api.example.com/whoami"}
    """
    problems = load_problems(write_schedules, text)
    path = tmp_path / "schedules.yaml"
    expected = [
        (11, "bad-key.target.create.url", "unknown placeholder {owner}"),
        (12, "bad-key.target.create.body", "unknown placeholder {request_id!r}"),
        (13, "bad-key.target.create.key_pointer", "is not a JSON pointer"),
        (14, "bad-key.target.create.key_id_pointer", "RFC 6901 escapes"),
        (16, "bad-key.target.verify.url", "placeholder in its scheme or host"),
        (17, "bad-key.target.verify.header", "is not an HTTP header name"),
        (19, "bad-key.target.revoke.url", "expected {key_id} in the URL"),
        (20, "bad-key.target.connect_timeout", "greater than 0"),
        (21, "bad-key.target.tls", "ca_cert is set but verify is false"),
        (28, "plain.target.verify.url", "carries credentials in the URL"),
    ]
    for line, key, words in expected:
        prefix = f"{path}:{line}: secrets.{key}: "
        assert any(p.startswith(prefix) and words in p for p in problems), (prefix, problems)
    assert not any("create.method" in p for p in problems)  # `post` is read as POST
    assert len(problems) == len(expected)


def test_plain_http_to_another_host_is_refused_unless_allowed(
    write_schedules: SchedulesWriter, keyservice: KeyService
) -> None:
    remote = key_target(keyservice)
    remote["create"]["url"] = "http://keys.example.com/keys"
    problems = load_problems(write_schedules, schedules_text({"remote": remote}))
    assert len(problems) == 1
    assert re.search(r":\d+: secrets\.remote\.target: create\.url .* plain http", problems[0])

    allowed = {**remote, "allow_insecure_http": True}
    assert load_plan(write_schedules(schedules_text({"remote": allowed}))).secret("remote")


def test_an_admin_key_is_never_sent_to_another_server(
    write_schedules: SchedulesWriter, keyservice: KeyService
) -> None:
    admin = key_target(keyservice)
    elsewhere = key_target(keyservice, admin_secret="admin")
    elsewhere["create"]["url"] = "https://other.example.com/keys"
    problems = load_problems(write_schedules, schedules_text({"admin": admin, "app": elsewhere}))
    assert len(problems) == 1
    assert re.search(
        r":\d+: secrets\.app\.target\.admin_secret: create\.url is at "
        r"https://other\.example\.com:443, but the admin secret's key is used at "
        r"http://127\.0\.0\.1:\d+; it would be sent to another server",
        problems[0],
    ), problems

    same = key_target(keyservice, admin_secret="admin")
    assert load_plan(write_schedules(schedules_text({"admin": admin, "app": same})))


def test_an_admin_of_another_kind_is_refused(
    write_schedules: SchedulesWriter, keyservice: KeyService
) -> None:
    text = schedules_text({"app": key_target(keyservice, admin_secret="db")})
    text += (
        '  "db": {"rotator": "postgres-password", "store": "local", "every": "30d", '
        '"target": {"host": "127.0.0.1", "username": "admin"}}\n'
    )
    problems = load_problems(write_schedules, text)
    assert len(problems) == 1 and "is not an api-key secret" in problems[0]
    assert "secrets.app.target.admin_secret" in problems[0]


def test_adopting_a_value_without_an_api_key_is_refused(key_plan: KeyPlanFactory) -> None:
    plan = key_plan()
    with pytest.raises(ConfigError, match="needs an `api_key` field"):
        plan.runtime.engine.adopt(APP, Credential(password="not-a-key"))
    adopted = plan.runtime.engine.adopt(APP, Credential(api_key="sk_abcdefgh", key_id=42))
    assert adopted.outcome == "adopted"
    assert plan.credential(APP, Stage.CURRENT)["key_id"] == "42"


# -- transport ----------------------------------------------------------------------------


def bare_rotator(service: KeyService, admin: Credential, **extra: Any) -> ApiKeyRotator:
    """A rotator outside any engine; its admin lookup always answers `admin`."""
    target = ApiKeyTarget.model_validate(key_target(service, admin_secret=ADMIN, **extra))
    return ApiKeyRotator(target, RotatorContext(APP, PasswordPolicy(), lambda name: admin))


def test_https_certificates_are_checked_by_default(tls_keyservice: KeyService) -> None:
    service = tls_keyservice
    assert service.tls is not None and service.url.startswith("https://")
    admin = service.issue("admin", admin=True)
    credential = Credential(api_key=admin.secret, key_id=admin.id)

    with pytest.raises(ConfigError, match=r"TLS verification failed \(set target\.tls\.ca_cert"):
        bare_rotator(service, credential).test(credential)
    assert service.requests == []  # refused before a key was sent

    trusting = bare_rotator(service, credential, tls={"ca_cert": str(service.tls[0])})
    trusting.test(credential)
    new = trusting.generate(None)
    trusting.test(new)
    trusting.retire(new)
    assert not service.works(new["api_key"])


def test_a_redirect_is_not_followed(keyservice: KeyService) -> None:
    """A key header would follow a redirect to any host: the rotator stops at the 3xx."""
    admin = keyservice.issue("admin", admin=True)
    credential = Credential(api_key=admin.secret, key_id=admin.id)
    rotator = bare_rotator(keyservice, credential, verify={"url": f"{keyservice.url}/moved"})

    with pytest.raises(ConfigError, match=r"/moved answered verify with a redirect \(HTTP 302\)"):
        rotator.test(credential)
    assert [r.path for r in keyservice.requests] == ["/moved"]


def test_netrc_credentials_never_replace_the_key_under_test(
    keyservice: KeyService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elses\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    admin = keyservice.issue("admin", admin=True)
    rotator = bare_rotator(keyservice, Credential(api_key=admin.secret))

    with pytest.raises(CredentialRejected):
        rotator.test(Credential(api_key="sk_not_a_key"))
    rotator.test(Credential(api_key=admin.secret))
    sent = [r.authorization for r in keyservice.requests]
    assert sent == ["Bearer sk_not_a_key", f"Bearer {admin.secret}"]


def test_a_reply_without_the_key_names_the_pointer_and_the_request(keyservice: KeyService) -> None:
    admin = keyservice.issue("admin", admin=True)
    create = {**key_target(keyservice)["create"], "key_pointer": "/key/token"}
    rotator = bare_rotator(keyservice, Credential(api_key=admin.secret), create=create)

    with pytest.raises(ConfigError) as raised:
        rotator.generate(None)

    text = str(raised.value)
    assert "no usable key at /key/token in the reply" in text
    assert re.search(r"request [0-9a-f]{32} may have left an unused key at the provider", text)
    assert not any(key.secret in text for key in keyservice.keys.values())


# -- a create whose effect is unknown, and replies that must not be trusted ---------------


def created_by_rotator(service: KeyService, secret: str) -> list[str]:
    """The ids of the keys at the provider that a create for `secret` made."""
    return [k.id for k in service.keys.values() if k.name.startswith(f"rotator-{secret}-")]


def test_a_create_that_timed_out_is_not_retried_by_the_task(key_plan: KeyPlanFactory) -> None:
    """The provider may have made the key: OutcomeUnknown, so no retry makes a second one."""
    plan = key_plan(read_timeout=0.3)
    plan.service.delay_seconds = 1.0  # the key is made, but the answer comes too late

    outcome = tasks._rotate_once(plan.runtime, "a" * 32, APP, "manual", None)

    assert outcome["outcome"] == "failed"
    error = outcome["error"]
    assert error.startswith("OutcomeUnknown: POST http://127.0.0.1:")
    assert re.search(r"request [0-9a-f]{32} may have left an unused key at the provider", error)
    plan.service.delay_seconds = 0.0
    time.sleep(1.0)  # the slow handler finishes making the key
    assert len(created_by_rotator(plan.service, APP)) == 1
    assert plan.store.read(APP, Stage.PENDING) is None


@pytest.mark.parametrize("how", ["503", "hang-up"])
def test_a_create_that_may_have_made_a_key_is_outcome_unknown(
    key_plan: KeyPlanFactory, how: str
) -> None:
    plan = key_plan()
    if how == "503":
        plan.service.fail_next("create", 1)
    else:
        plan.service.drop_next("create", 1)  # the key is made, then the connection closes

    with pytest.raises(OutcomeUnknown) as raised:
        plan.rotator().generate(None)

    assert re.search(r"request [0-9a-f]{32} may have left an unused key", str(raised.value))
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    assert len(created_by_rotator(plan.service, APP)) == (0 if how == "503" else 1)
    result = plan.runtime.engine.run(APP)  # the next run makes one new key, and only one
    assert result.ok, result.error


def test_a_create_that_cannot_connect_made_no_key_and_is_transient(keyservice: KeyService) -> None:
    admin = keyservice.issue("admin", admin=True)
    closed = f"http://127.0.0.1:{free_port()}/keys"
    create = {**key_target(keyservice)["create"], "url": closed}
    rotator = bare_rotator(keyservice, Credential(api_key=admin.secret), create=create)

    with pytest.raises(TransientError) as raised:
        rotator.generate(None)

    assert re.search(
        r"could not connect .*create request [0-9a-f]{32} made no key", str(raised.value)
    )


def test_verify_key_id_pointer_refuses_a_key_stored_with_another_keys_id(
    key_plan: KeyPlanFactory, keyservice: KeyService
) -> None:
    """Retiring by a wrong key_id would delete another key: the reply's id is checked."""
    plan = key_plan(verify={"url": f"{keyservice.url}/whoami", "key_id_pointer": "/id"})
    service, engine = plan.service, plan.runtime.engine
    mine, other_team = service.issue("app-key-old"), service.issue("other-team-prod-key")
    engine.adopt(APP, Credential(api_key=mine.secret, key_id=other_team.id))
    adopted = plan.credential(APP, Stage.CURRENT)

    with pytest.raises(CredentialRejected, match=r"/whoami: the provider names another id than"):
        plan.rotator().test(adopted)
    plan.rotator().test(Credential(api_key=mine.secret, key_id=mine.id))
    assert engine.run(APP).ok
    with pytest.raises(ConfigError, match="its stored key_id is wrong"):
        plan.rotator().retire(plan.credential(APP, Stage.PREVIOUS))
    assert other_team.id in service.keys and not service.seen("DELETE")

    service.keys[mine.id].works = False  # a key that no longer works is revoked by its id
    plan.rotator().retire(Credential(api_key=mine.secret, key_id=mine.id))
    assert mine.id not in service.keys and other_team.id in service.keys


def test_adopting_a_value_without_the_key_id_that_revoke_needs_is_refused(
    key_plan: KeyPlanFactory,
) -> None:
    plan = key_plan()
    with pytest.raises(ConfigError, match="needs a `key_id` field"):
        plan.runtime.engine.adopt(APP, Credential(api_key="sk_abcdefgh"))
    with pytest.raises(ConfigError, match="must not hold its `api_key`"):
        plan.runtime.engine.adopt(APP, Credential(api_key="sk_abcdefgh", key_id="id-sk_abcdefgh"))
    assert plan.store.read(APP, Stage.CURRENT) is None


@pytest.mark.parametrize("whose", [APP, ADMIN])
def test_a_create_that_answers_with_a_current_key_is_refused(
    key_plan: KeyPlanFactory, whose: str
) -> None:
    """A provider that hands back a key it issued before rotates nothing; retiring PREVIOUS
    would then revoke the key in use."""
    plan = key_plan()
    assert plan.runtime.engine.run(APP).ok
    held = plan.credential(whose, Stage.CURRENT)
    plan.service.create_reply = lambda key: {
        "key": {"id": held["key_id"], "secret": held["api_key"]}
    }

    result = plan.runtime.engine.run(APP)

    assert result.outcome == "failed"
    assert result.error and result.error.startswith("ConfigError: POST http://127.0.0.1:")
    assert re.search(r"create \(request [0-9a-f]{32}\) answered with the CURRENT key", result.error)
    assert f"of secret {whose!r}" in result.error
    assert plan.store.read(APP, Stage.PENDING) is None
    assert plan.service.works(held["api_key"])


def test_a_key_id_that_holds_the_key_is_refused(keyservice: KeyService) -> None:
    admin = keyservice.issue("admin", admin=True)
    rotator = bare_rotator(keyservice, Credential(api_key=admin.secret))
    keyservice.create_reply = lambda key: {"key": {"id": f"id:{key.secret}", "secret": key.secret}}

    with pytest.raises(ConfigError) as raised:
        rotator.generate(None)

    assert "the key id at /key/id holds the key itself" in str(raised.value)
    assert re.search(r"request [0-9a-f]{32} may have left", str(raised.value))
    assert not any(key.secret in str(raised.value) for key in keyservice.keys.values())


def test_a_reply_nested_too_deeply_is_a_config_error_naming_the_request(
    keyservice: KeyService,
) -> None:
    admin = keyservice.issue("admin", admin=True)
    rotator = bare_rotator(keyservice, Credential(api_key=admin.secret))
    keyservice.create_reply = lambda key: b"[" * 200_000

    with pytest.raises(ConfigError) as raised:
        rotator.generate(None)

    assert "nested too deeply to read" in str(raised.value)
    assert re.search(r"request [0-9a-f]{32} may have left", str(raised.value))


def test_plain_http_never_goes_through_a_proxy_from_the_environment(
    keyservice: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = start_keyservice()  # records whatever reaches it
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        admin = keyservice.issue("admin", admin=True)
        credential = Credential(api_key=admin.secret, key_id=admin.id)

        bare_rotator(keyservice, credential).test(credential)

        assert proxy.requests == []
        assert [r.path for r in keyservice.requests] == ["/whoami"]
    finally:
        proxy.stop()


def test_errors_from_the_transport_keep_no_exception_that_quotes_a_header(
    keyservice: KeyService,
) -> None:
    client = HttpClient(5, 5, True)
    secret = "sk_" + "s" * 24

    with pytest.raises(ConfigError) as raised:
        client.send("GET", f"{keyservice.url}/whoami", {"Authorization": f" Bearer {secret}"})

    assert "a header value cannot be sent" in str(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    with pytest.raises(ConfigError, match="the body cannot be sent as JSON") as raised:
        client.send("POST", f"{keyservice.url}/keys", {}, {"n": math.nan})
    assert raised.value.__context__ is None
    assert keyservice.requests == []


@pytest.mark.parametrize(
    ("where", "block", "words"),
    [
        ("create", {"key_id_pointer": "/key/secret"}, "key_pointer and key_id_pointer both"),
        ("create", {"body": {"n": ".nan"}}, "JSON has no NaN or Infinity"),
        ("create", {"body": {"n": "-.inf"}}, "JSON has no NaN or Infinity"),
        ("verify", {"prefix": " Bearer "}, "starts with a space"),
        ("verify", {"prefix": "  "}, "starts with a space"),
        ("verify", {"method": "HEAD", "key_id_pointer": "/id"}, "whose reply has no body"),
        ("top", {"admin_prefix": " "}, "starts with a space"),
    ],
)
def test_more_target_mistakes_are_refused_at_load(
    write_schedules: SchedulesWriter,
    keyservice: KeyService,
    where: str,
    block: dict[str, Any],
    words: str,
) -> None:
    target = key_target(keyservice)
    if where == "top":
        target.update(block)
    else:
        target[where] = {**target[where], **block}
    text = schedules_text({"x": target}).replace('".nan"', ".nan").replace('"-.inf"', "-.inf")

    problems = load_problems(write_schedules, text)

    assert len(problems) == 1 and words in problems[0], problems
