"""One `requests.Session` per HTTP rotator, and the one place transport failures become ours.

Requests never follow redirects (a custom key header would follow one to any host), never
take credentials from ~/.netrc (they would replace the key under test, and a verify could
pass with someone else's login), and read at most MAX_BODY_BYTES of a response. Error texts
name the method, the origin and path, and what failed: never a header, a body or a key.
Proxies and REQUESTS_CA_BUNDLE from the environment still apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from rotator.errors import ConfigError, TransientError

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
        """The body as JSON; ValueError when it is not (the body is never quoted)."""
        return json.loads(self.body)


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

    def send(self, method: str, url: str, headers: dict[str, str], body: Any = None) -> Reply:
        """The provider's reply, whatever its status; TransientError when none came back."""
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
            )
            with response:
                content = _read_bounded(response)
        except requests.exceptions.SSLError:
            raise ConfigError(
                f"{where}: TLS verification failed (set target.tls.ca_cert to the CA that "
                "signed the server's certificate)"
            ) from None
        except requests.exceptions.InvalidHeader:
            raise ConfigError(
                f"{where}: a header value cannot be sent (it holds a line break or "
                "surrounding spaces; check the key and the header prefix)"
            ) from None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            raise TransientError(f"{where}: no answer ({type(exc).__name__})") from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{where}: request failed ({type(exc).__name__})") from None
        except OSError as exc:  # not from requests: e.g. a ca_cert file that cannot be read
            raise ConfigError(f"{where}: {exc}") from None
        return Reply(response.status_code, content, where)


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
