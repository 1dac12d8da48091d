"""API keys at a generic HTTP provider, declared in the `target:` block.

`generate` asks the provider for a new key (`create`, authenticated with the admin
secret's key) and reads the key and its id from the JSON reply by RFC 6901 pointers;
`apply` has nothing to do (the key works once created); `test` makes the `verify`
request with the key itself (and, given `verify.key_id_pointer`, checks that the reply
names the stored key id); `retire` deletes a key by its id (`revoke`), and a key that is
already gone counts as revoked.

The provider makes the key, so unlike a password the new value exists at the target
before the engine stores it as PENDING: a crash (or a store failure) between the two
leaves a key at the provider that nothing uses or revokes. A create that may have taken
effect (no answer after it was sent; 408, 429, 5xx) is therefore `OutcomeUnknown`, which
neither the step nor the task retries: the next scheduled or manual run tries again. Only
a create that never reached the provider (it could not connect) is a `TransientError`.
Put `{secret_name}` and `{request_id}` into the create body (e.g. as the key's name) so
such keys can be found and deleted by hand; every error this rotator raises after a
create names its request id.

Status codes: 2xx is success; 401/403 is a refused key (`CredentialRejected`); a redirect
is never followed (a key header would follow it to any host) and is a `ConfigError`;
408, 429, 5xx and no answer at all are `TransientError` (for create, see above). No
message carries a key, a header or a response body (providers echo keys in error bodies):
only method, origin, path, status and request id.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import BaseModel

from rotator.base import RotatorContext, SecretRotator
from rotator.credential import Credential
from rotator.errors import (
    ConfigError,
    CredentialRejected,
    OutcomeUnknown,
    RotatorError,
    TransientError,
)
from rotators.http_client import HttpClient, Reply
from rotators.http_key_target import HEADER_SAFE, KEY_PLACEHOLDERS, ApiKeyTarget
from rotators.http_templates import (
    MISSING,
    origin,
    placeholders,
    render_body,
    render_url,
    resolve,
    show_origin,
)

__all__ = ["ApiKeyRotator", "ApiKeyTarget"]


class ApiKeyRotator(SecretRotator):
    """Creates, proves and revokes API keys through a provider's HTTP API."""

    kind: ClassVar[str] = "api-key"
    Target: ClassVar[type[BaseModel]] = ApiKeyTarget

    target: ApiKeyTarget

    def __init__(self, target: BaseModel, context: RotatorContext) -> None:
        super().__init__(target, context)
        assert isinstance(target, ApiKeyTarget)
        tls: bool | str = target.tls.ca_cert or target.tls.verify
        self.http = HttpClient(target.connect_timeout, target.read_timeout, tls)

    def __repr__(self) -> str:
        return f"ApiKeyRotator(secret={self.context.secret_name!r})"

    @classmethod
    def admin_problem(cls, target: BaseModel, admin_target: BaseModel) -> str | None:
        """The admin key goes only where it already goes: its own secret's verify URL (and,
        for an admin that manages itself, its create and revoke URLs)."""
        assert isinstance(target, ApiKeyTarget)
        if not isinstance(admin_target, ApiKeyTarget):
            return (
                "the admin secret is not an api-key secret, so its credential would be sent "
                "to an HTTP API it does not belong to (expected an api-key secret holding "
                "the provider's admin key)"
            )
        home = {origin(admin_target.verify.url)}
        if admin_target.admin_secret is None:
            home.update(origin(url) for _, url in admin_target.urls())
        for label, url in target.urls():
            if label != "verify.url" and origin(url) not in home:
                homes = ", ".join(sorted(show_origin(o) for o in home))
                return (
                    f"{label} is at {show_origin(origin(url))}, but the admin secret's key "
                    f"is used at {homes}; it would be sent to another server (expected an "
                    "admin secret for the same scheme, host and port)"
                )
        return None

    # -- the contract ---------------------------------------------------------------

    def generate(self, current: Credential | None) -> Credential:
        """A new key from the provider (never repeated here: a repeat could make a second)."""
        create = self.target.create
        request_id = uuid.uuid4().hex
        values = {"secret_name": self.context.secret_name, "request_id": request_id}
        admin = self.context.lookup_secret(self._admin_name())
        lost = f"request {request_id} may have left an unused key at the provider"
        try:
            reply = self.http.send(
                create.method,
                render_url(create.url, values),
                self._admin_headers(admin),
                render_body(create.body, values),
                repeatable=False,
            )
        except OutcomeUnknown as exc:
            failure: RotatorError | None = OutcomeUnknown(f"{exc}; {lost}")
        except RotatorError as exc:  # it never reached the provider: no key was made
            failure = type(exc)(f"{exc} (create request {request_id} made no key)")
        else:
            failure = self._create_status(reply, request_id, lost)
        if failure is not None:
            raise failure  # outside the except clauses: no exception kept as its context
        new = self._read_key(reply, lost)
        self._refuse_a_key_in_use(
            new, current, admin, f"{reply.where}: create (request {request_id})"
        )
        return new

    def _refuse_a_key_in_use(
        self, new: Credential, current: Credential | None, admin: Credential, where: str
    ) -> None:
        """A provider that answers a create with a key it issued before (idempotent creation
        by name, or a bug) rotates nothing, and retiring PREVIOUS would revoke CURRENT."""
        held = [(self.context.secret_name, current, "api_key")]
        if self.target.admin_secret is not None:
            held.append((self.target.admin_secret, admin, self.target.admin_field))
        for name, credential, field in held:
            if credential is not None and _same_key(new, credential, field):
                raise ConfigError(
                    f"{where} answered with the CURRENT key of secret {name!r}"
                    f"{self._id_text(new)}, not a new one; refusing to use it (the create "
                    "request must make a new key every time)"
                )

    def _create_status(self, reply: Reply, request_id: str, lost: str) -> RotatorError | None:
        """None for a 2xx; else the error, OutcomeUnknown when the key may exist anyway."""
        if 200 <= reply.status < 300:
            return None
        if reply.status in (408, 429) or reply.status >= 500:
            return OutcomeUnknown(
                f"{reply.where}: create (request {request_id}) failed (HTTP {reply.status}); {lost}"
            )
        return self._admin_error(reply, f"create (request {request_id})")

    def _read_key(self, reply: Reply, lost: str) -> Credential:
        """The new key and its id, from where the pointers say in a create reply."""
        create = self.target.create
        document = self._document(reply, "the create reply", f"; {lost}")
        key = resolve(document, create.key_pointer)
        key_id = resolve(document, create.key_id_pointer)
        if not isinstance(key, str) or not HEADER_SAFE.fullmatch(key):
            raise ConfigError(
                f"{reply.where}: no usable key at {create.key_pointer} in the reply (expected "
                f"printable ASCII text; check target.create.key_pointer); {lost}"
            )
        if key_id is MISSING or not _usable_id(key_id):
            raise ConfigError(
                f"{reply.where}: no key id at {create.key_id_pointer} in the reply (expected "
                f"text or a number; check target.create.key_id_pointer); {lost}"
            )
        if key in str(key_id):
            raise ConfigError(
                f"{reply.where}: the key id at {create.key_id_pointer} holds the key itself, "
                f"which must never be shown as an id (check target.create.key_id_pointer); "
                f"{lost}"
            )
        return Credential(api_key=key, key_id=str(key_id))

    @staticmethod
    def _document(reply: Reply, what: str, tail: str = "") -> Any:
        """The reply's JSON; ConfigError naming the request (never quoting the body)."""
        try:
            return reply.json()
        except ValueError as exc:
            problem = str(exc)
        raise ConfigError(
            f"{reply.where} answered {reply.status}, but {what} is unusable: {problem}{tail}"
        )

    def complete(self, credential: Credential) -> Credential:
        """An adopted value needs `api_key`, and `key_id` (text or a number) when the target
        block revokes or verifies keys by id."""
        key = credential.get("api_key")
        if not isinstance(key, str) or not HEADER_SAFE.fullmatch(key):
            raise ConfigError(
                f"an {self.kind} value needs an `api_key` field of printable ASCII text without "
                'spaces (expected e.g. {"api_key": "...", "key_id": "..."})'
            )
        key_id = credential.get("key_id")
        if key_id is None and self._needs_key_id():
            raise ConfigError(
                f"an {self.kind} value for {self.context.secret_name!r} needs a `key_id` field "
                "(the target block revokes or verifies keys by id; expected e.g. "
                '{"api_key": "...", "key_id": "..."})'
            )
        if key_id is not None and not _usable_id(key_id):
            raise ConfigError(f"an {self.kind} value's `key_id` must be text or a whole number")
        if key_id is not None and key in str(key_id):
            raise ConfigError(f"an {self.kind} value's `key_id` must not hold its `api_key`")
        return credential if key_id is None else credential.replace(key_id=str(key_id))

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        """Nothing to do: the provider accepts a key from the moment it creates it."""

    def test(self, credential: Credential) -> None:
        """The verify request, made with the key itself; with `verify.key_id_pointer`, the
        reply must name the credential's own key_id (a wrong one would revoke another key)."""
        reply = self._verify(credential)
        if 200 <= reply.status < 300:
            self._check_reported_id(reply, credential, CredentialRejected)
            return
        if reply.status in (401, 403):
            raise CredentialRejected(
                f"{reply.where} refused the key{self._id_text(credential)} (HTTP {reply.status})"
            )
        raise self._other_status(reply, "verify")

    def retire(self, previous: Credential) -> None:
        """Delete the key at the provider; one that is already gone (404, 410) is revoked."""
        revoke = self.target.revoke
        if revoke is None:
            return  # the provider expires keys itself: nothing to do
        self._refuse_revoking_a_key_in_use(previous)
        values = self._key_values(previous, "revoke.url", revoke.url)
        self._refuse_revoking_another_key(previous)
        url = render_url(revoke.url, values)
        body = render_body(revoke.body, values)
        reply = self.http.send(revoke.method, url, self._admin_headers(), body)
        if 200 <= reply.status < 300 or reply.status in (404, 410):
            return
        raise self._admin_error(reply, f"revoke key {values['key_id']!r}")

    # -- helpers ----------------------------------------------------------------------

    def _admin_name(self) -> str:
        """The secret whose key authorises create and revoke: the admin, else this one."""
        return self.target.admin_secret or self.context.secret_name

    def _admin_headers(self, admin: Credential | None = None) -> dict[str, str]:
        """The header carrying the admin key (`admin`: the admin secret's CURRENT, if read)."""
        name = self._admin_name()
        field = self.target.admin_field
        admin = self.context.lookup_secret(name) if admin is None else admin
        value = admin.get(field)
        if not isinstance(value, str) or not HEADER_SAFE.fullmatch(value):
            raise ConfigError(
                f"secret {name!r} has no usable {field!r} field to authenticate with (expected "
                "printable ASCII text; set target.admin_field to the field holding the key)"
            )
        return {self.target.admin_header: self.target.admin_prefix + value}

    def _admin_error(self, reply: Reply, action: str) -> RotatorError:
        if reply.status in (401, 403):
            return CredentialRejected(
                f"{reply.where} refused the key of secret {self._admin_name()!r} to {action} "
                f"(HTTP {reply.status}); check that key and its permissions at the provider"
            )
        return self._other_status(reply, action)

    @staticmethod
    def _other_status(reply: Reply, action: str) -> RotatorError:
        if 300 <= reply.status < 400:
            return ConfigError(
                f"{reply.where} answered {action} with a redirect (HTTP {reply.status}), which "
                "is never followed; set the URL to where it redirects"
            )
        if reply.status in (408, 429) or reply.status >= 500 or action == "verify":
            return TransientError(f"{reply.where}: {action} failed (HTTP {reply.status})")
        return ConfigError(
            f"{reply.where} refused the {action} request (HTTP {reply.status}); check the "
            "method, URL and body in the target block"
        )

    def _key_values(self, credential: Credential, label: str, template: str) -> dict[str, str]:
        """The placeholder values for a request about `credential`'s key."""
        key_id = credential.get("key_id")
        if key_id is None:
            if "key_id" in placeholders(template, KEY_PLACEHOLDERS):
                raise ConfigError(
                    f"a key of secret {self.context.secret_name!r} has no key_id, which "
                    f"target.{label} needs; adopt it again with its key_id"
                )
        elif not _usable_id(key_id):
            raise ConfigError(f"a key of secret {self.context.secret_name!r} has a bad key_id")
        return {"secret_name": self.context.secret_name, "key_id": str(key_id or "")}

    def _verify(self, credential: Credential) -> Reply:
        """The verify request made with `credential`'s key, whatever the reply's status."""
        verify = self.target.verify
        key = credential.get("api_key")
        if not isinstance(key, str) or not HEADER_SAFE.fullmatch(key):
            raise CredentialRejected(
                f"secret {self.context.secret_name!r} holds no usable api_key to verify"
            )
        url = render_url(verify.url, self._key_values(credential, "verify.url", verify.url))
        return self.http.send(verify.method, url, {verify.header: verify.prefix + key})

    def _check_reported_id(
        self, reply: Reply, credential: Credential, error: type[RotatorError]
    ) -> None:
        """With verify.key_id_pointer: `error` unless the 2xx reply names the stored key_id."""
        pointer = self.target.verify.key_id_pointer
        if pointer is None:
            return
        reported = resolve(self._document(reply, "the verify reply"), pointer)
        if reported is MISSING or not _usable_id(reported):
            raise ConfigError(
                f"{reply.where}: no key id at {pointer} in the reply (expected text or a "
                "number; check target.verify.key_id_pointer)"
            )
        key_id = credential.get("key_id")
        if key_id is None:
            raise ConfigError(
                f"a key of secret {self.context.secret_name!r} has no key_id, which "
                "target.verify.key_id_pointer checks; adopt it again with its key_id"
            )
        if str(reported) != str(key_id):
            raise error(
                f"{reply.where}: the provider names another id than{self._id_text(credential)} "
                f"for this key at {pointer}: its stored key_id is wrong (revoking by it would "
                "delete another key; fix the key_id, e.g. adopt the value again)"
            )

    def _refuse_revoking_another_key(self, previous: Credential) -> None:
        """With verify.key_id_pointer: a key that still works must be the one its id names.
        A refused key is revoked by its id as usual (it may start working later)."""
        if self.target.verify.key_id_pointer is None:
            return
        reply = self._verify(previous)
        if 200 <= reply.status < 300:
            self._check_reported_id(reply, previous, ConfigError)
        elif reply.status not in (401, 403):
            raise self._other_status(reply, "verify before revoke")

    def _needs_key_id(self) -> bool:
        """Whether a request about a key needs its id: to revoke, verify or check it."""
        verify = self.target.verify
        return (
            self.target.revoke is not None
            or verify.key_id_pointer is not None
            or "key_id" in placeholders(verify.url, KEY_PLACEHOLDERS)
        )

    def _refuse_revoking_a_key_in_use(self, previous: Credential) -> None:
        """Never revoke the key CURRENT or the admin holds (a stale PREVIOUS may equal it)."""
        names = dict.fromkeys((self.context.secret_name, self._admin_name()))
        for name in names:
            try:
                in_use = self.context.lookup_secret(name)
            except CredentialRejected:
                continue  # no CURRENT value: nothing to protect
            ids = (in_use.get("key_id"), previous.get("key_id"))
            same_id = None not in ids and str(ids[0]) == str(ids[1])
            if same_id or in_use.get("api_key") == previous.get("api_key"):
                raise ConfigError(
                    f"refusing to revoke key{self._id_text(previous)}: it is the CURRENT key of "
                    f"secret {name!r}"
                )

    @staticmethod
    def _id_text(credential: Credential) -> str:
        key_id = credential.get("key_id")
        return f" {str(key_id)!r}" if key_id is not None else ""


def _same_key(new: Credential, held: Credential, field: str) -> bool:
    """Whether `new` is the key `held` keeps in `field` (by value, or by id)."""
    if held.get(field) == new["api_key"]:
        return True
    return held.get("key_id") is not None and str(held.get("key_id")) == new["key_id"]


def _usable_id(value: object) -> bool:
    """A key id is text or a whole number, at most 512 characters, without control characters."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    text = str(value)
    return 0 < len(text) <= 512 and text.isprintable() and text not in (".", "..")
