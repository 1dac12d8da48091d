"""One `requests.Session` per HTTP rotator, and the one place transport failures become ours.

Requests never follow redirects (a custom key header would follow one to any host), never
take credentials from ~/.netrc (they would replace the key under test, and a verify could
pass with someone else's login), and read at most MAX_BODY_BYTES of a response. Error texts
name the method, the origin and path, and what failed: never a header, a body or a key,
and never keep the exception they replace (whose text can quote a header) as a cause.
REQUESTS_CA_BUNDLE and HTTPS_PROXY from the environment still apply to https; plain http
(allowed to loopback, or with allow_insecure_http) never goes through a proxy.

A request that may have reached the provider is not repeatable in general: a create that
timed out may have made a key. `send(..., repeatable=False)` reports such a failure as
OutcomeUnknown, and only a failure to connect at all as TransientError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import requests
import urllib3
from requests.auth import AuthBase

from rotator.errors import ConfigError, OutcomeUnknown, RotatorError, TransientError

#: The largest response body read (a key and its id fit in a few hundred bytes).
MAX_BODY_BYTES = 1024 * 1024


class _NoNetrc(AuthBase):
    """A session auth that adds nothing: its presence stops requests reading ~/.netrc."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


@dataclass(frozen=True)
class Reply:
    """A response's status and (bounded) body; `where` names the request for messages."""

    status: int
    body: bytes
    where: str

    def json(self) -> Any:
        """The body as JSON; ValueError saying why when it is not (never quoting the body)."""
        try:
            return json.loads(self.body)
        except RecursionError:
            problem = "its JSON is nested too deeply to read"
        except ValueError:  # JSONDecodeError keeps the whole body: it must not stay reachable
            problem = "it is not JSON"
        raise ValueError(problem)


def describe(method: str, url: str) -> str:
    """`METHOD scheme://host:port/path`: the query (which may hold a request id) left out."""
    parts = urlsplit(url)
    return f"{method} {parts.scheme}://{parts.netloc}{parts.path}"


class HttpClient:
    """Sends one request at a time over a session kept for the rotator's lifetime."""

    def __init__(self, connect_timeout: float, read_timeout: float, tls: bool | str) -> None:
        self.timeouts = (connect_timeout, read_timeout)
        self.tls = tls
        self.session = requests.Session()
        self.session.auth = _NoNetrc()

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any = None,
        repeatable: bool = True,
    ) -> Reply:
        """The provider's reply, whatever its status. When none came back: TransientError if
        the request certainly never reached the provider, or if repeating it is harmless
        (`repeatable`); otherwise OutcomeUnknown, as it may have taken effect."""
        where = describe(method, url)
        try:
            response = self.session.request(
                method,
                url,
                headers=headers,
                json=body,
                timeout=self.timeouts,
                verify=self.tls,
                allow_redirects=False,
                stream=True,
                proxies=_proxies(url),
            )
            with response:
                content = _read_bounded(response)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            failure = _failure(exc, where, repeatable)
        except OSError as exc:  # not from requests: e.g. a ca_cert file that cannot be read
            failure = ConfigError(f"{where}: {exc}")
        else:
            return Reply(response.status_code, content, where)
        # Raised here, outside the except clauses, so that the original exception (whose
        # text can quote a header, key included) is not kept as this one's __context__.
        raise failure


def _proxies(url: str) -> dict[str, str] | None:
    """Plain http never goes through a proxy from the environment (HTTP_PROXY, ALL_PROXY):
    the proxy would read the key. https may (HTTPS_PROXY): it only tunnels TLS."""
    if urlsplit(url).scheme.lower() != "http":
        return None
    # None unsets a proxy the environment would add (requests' documented way; the stubs
    # only allow text). A fresh dict each time: requests fills it in.
    return cast("dict[str, str]", {"http": None, "all": None})


def _failure(exc: Exception, where: str, repeatable: bool) -> RotatorError:
    """Our error for a transport failure; its text names only the exception's class."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        return ConfigError(
            f"{where}: TLS verification failed (set target.tls.ca_cert to the CA that "
            "signed the server's certificate)"
        )
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return ConfigError(
            f"{where}: a header value cannot be sent (it holds a line break or "
            "surrounding spaces; check the key and the header prefix)"
        )
    if isinstance(exc, requests.exceptions.InvalidJSONError):
        return ConfigError(
            f"{where}: the body cannot be sent as JSON (check the body in the target block)"
        )
    if isinstance(exc, _UNSENDABLE):
        return ConfigError(f"{where}: the URL cannot be requested ({name})")
    if _never_sent(exc):
        return TransientError(f"{where}: could not connect ({name})")
    if repeatable:
        return TransientError(f"{where}: no answer ({name})")
    return OutcomeUnknown(f"{where}: no answer ({name}); the request may have taken effect")


_UNSENDABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


def _never_sent(exc: Exception) -> bool:
    """True when no byte of the request can have reached the server: the connection (or
    the proxy's tunnel) was never made: refused, a name that does not resolve, a timeout
    while connecting."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        cause = exc.args[0]
        return isinstance(cause, urllib3.exceptions.MaxRetryError) and isinstance(
            cause.reason, urllib3.exceptions.NewConnectionError
        )
    return False


def _read_bounded(response: requests.Response) -> bytes:
    """At most MAX_BODY_BYTES of the body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY_BYTES:
            break
    return b"".join(chunks)[:MAX_BODY_BYTES]
