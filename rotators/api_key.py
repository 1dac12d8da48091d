"""API keys at a generic HTTP provider, declared in the `target:` block.

`generate` asks the provider for a new key (`create`, authenticated with the admin
secret's key) and reads the key and its id from the JSON reply by RFC 6901 pointers;
`apply` has nothing to do (the key works once created); `test` makes the `verify`
request with the key itself; `retire` deletes a key by its id (`revoke`), and a key that
is already gone counts as revoked.

The provider makes the key, so unlike a password the new value exists at the target
before the engine stores it as PENDING: a crash (or a store failure) between the two
leaves a key at the provider that nothing uses or revokes. A failed create is therefore
not retried within the run. Put `{secret_name}` and `{request_id}` into the create body
(e.g. as the key's name) so such keys can be found and deleted by hand; every error after
a create names its request id.

Status codes: 2xx is success; 401/403 is a refused key (`CredentialRejected`); a redirect
is never followed (a key header would follow it to any host) and is a `ConfigError`;
408, 429, 5xx and no answer at all are `TransientError`. No message carries a key, a
header or a response body (providers echo keys in error bodies): only method, origin,
path, status and request id.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from pydantic import BaseModel

from rotator.base import RotatorContext, SecretRotator
from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, RotatorError, TransientError
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
        """A new key from the provider (not retried here: a retry could make a second)."""
        create = self.target.create
        request_id = uuid.uuid4().hex
        values = {"secret_name": self.context.secret_name, "request_id": request_id}
        headers = self._admin_headers()
        lost = f"request {request_id} may have left an unused key at the provider"
        try:
            reply = self.http.send(
                create.method,
                render_url(create.url, values),
                headers,
                render_body(create.body, values),
            )
        except TransientError as exc:
            raise TransientError(f"{exc}; {lost}") from None
        if not 200 <= reply.status < 300:
            raise self._admin_error(reply, f"create (request {request_id})")
        return self._read_key(reply, lost)

    def _read_key(self, reply: Reply, lost: str) -> Credential:
        """The new key and its id, from where the pointers say in a create reply."""
        create = self.target.create
        try:
            document = reply.json()
        except ValueError:
            raise ConfigError(
                f"{reply.where} answered {reply.status} without a JSON body; {lost}"
            ) from None
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
        return Credential(api_key=key, key_id=str(key_id))

    def complete(self, credential: Credential) -> Credential:
        """An adopted value needs `api_key`; `key_id` (needed to revoke it) may be a number."""
        key = credential.get("api_key")
        if not isinstance(key, str) or not HEADER_SAFE.fullmatch(key):
            raise ConfigError(
                f"an {self.kind} value needs an `api_key` field of printable ASCII text without "
                'spaces (expected e.g. {"api_key": "...", "key_id": "..."})'
            )
        key_id = credential.get("key_id")
        if key_id is not None and not _usable_id(key_id):
            raise ConfigError(f"an {self.kind} value's `key_id` must be text or a whole number")
        return credential if key_id is None else credential.replace(key_id=str(key_id))

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        """Nothing to do: the provider accepts a key from the moment it creates it."""

    def test(self, credential: Credential) -> None:
        """The verify request, made with the key itself."""
        verify = self.target.verify
        key = credential.get("api_key")
        if not isinstance(key, str) or not HEADER_SAFE.fullmatch(key):
            raise CredentialRejected(
                f"secret {self.context.secret_name!r} holds no usable api_key to verify"
            )
        url = render_url(verify.url, self._key_values(credential, "verify.url", verify.url))
        reply = self.http.send(verify.method, url, {verify.header: verify.prefix + key})
        if 200 <= reply.status < 300:
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

    def _admin_headers(self) -> dict[str, str]:
        name = self._admin_name()
        field = self.target.admin_field
        value = self.context.lookup_secret(name).get(field)
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


def _usable_id(value: object) -> bool:
    """A key id is text or a whole number, at most 512 characters, without control characters."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    text = str(value)
    return 0 < len(text) <= 512 and text.isprintable() and text not in (".", "..")
