"""URL and body templates and JSON pointers for HTTP rotators, checked when schedules.yaml loads.

Templates take `{name}` placeholders from a fixed list and nothing else: no positions, no
attribute access, no format specs or conversions, so a template can only ever insert the
values it names. Values are inserted as text: percent-encoded whole in a URL (a key id
holding `/` or `?` stays one path segment) and as plain strings in a JSON body, never
parsed again. Placeholders may not appear in a URL's scheme or host: a value from a
provider's response must never choose where a key is sent.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any
from urllib.parse import quote, urlsplit

_FORMATTER = string.Formatter()
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")
#: The most levels of nesting a body template may have (a hand-written one has two or three).
_MAX_DEPTH = 32

Origin = tuple[str, str, int]


def placeholders(template: str, allowed: Iterable[str]) -> set[str]:
    """The placeholders `template` uses; ValueError for braces that are not one of `allowed`."""
    names = sorted(allowed)
    expected = ", ".join("{" + name + "}" for name in names) or "none"
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError:
        raise ValueError(
            f"{template!r} has an unmatched brace (expected placeholders {expected}; "
            "write {{ and }} for literal braces)"
        ) from None
    found: set[str] = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in names or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"unknown placeholder {shown} in {template!r} (expected one of: {expected})"
            )
        found.add(name)
    return found


def render_text(template: str, values: Mapping[str, str]) -> str:
    """`template` with its (already checked) placeholders replaced by `values`."""
    return template.format_map(values)


def render_url(template: str, values: Mapping[str, str]) -> str:
    """`template` with each value percent-encoded whole (`/`, `?`, `#` included)."""
    return template.format_map({name: quote(value, safe="") for name, value in values.items()})


def check_url(template: str, allowed: Iterable[str]) -> str:
    """An http(s) URL template whose scheme and host hold no placeholder; ValueError if not."""
    placeholders(template, allowed)
    head = urlsplit(template)
    if "{" in head.scheme or "{" in head.netloc or "}" in head.netloc:
        raise ValueError(
            f"{template!r} has a placeholder in its scheme or host (expected placeholders "
            "only in the path or query: a value must never choose where a key is sent)"
        )
    sample = render_url(template, {name: "x" for name in allowed})
    parts = urlsplit(sample)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{template!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{template!r} carries credentials in the URL (remove them; the admin key "
            "comes from admin_secret)"
        )
    if parts.fragment:
        raise ValueError(f"{template!r} has a #fragment, which is never sent (remove it)")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{template!r} has an invalid port (expected 1 to 65535)") from None
    return template


def origin(url: str) -> Origin:
    """Scheme, host and port of a checked URL (or URL template): where a request goes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)


def show_origin(where: Origin) -> str:
    scheme, host, port = where
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def is_loopback(url: str) -> bool:
    """True for localhost and loopback addresses: plain http there never leaves the machine."""
    host = origin(url)[1]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_body(body: Any, allowed: Iterable[str], depth: int = 0) -> Any:
    """A JSON body template: mappings with text keys, lists, text, finite numbers, booleans,
    null; placeholders only in text values."""
    names = list(allowed)
    if depth > _MAX_DEPTH:
        raise ValueError(f"the body is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(body, str):
        placeholders(body, names)
    elif isinstance(body, dict):
        for key, value in body.items():
            if not isinstance(key, str):
                raise ValueError(f"body key {key!r} is not text (quote it in the YAML)")
            check_body(value, names, depth + 1)
    elif isinstance(body, list):
        for value in body:
            check_body(value, names, depth + 1)
    elif isinstance(body, datetime | date | time):
        raise ValueError(f"body value {body!r} is a date, which JSON has no type for (quote it)")
    elif isinstance(body, float) and not math.isfinite(body):
        raise ValueError(f"body value {body!r} is not a JSON number (JSON has no NaN or Infinity)")
    elif body is not None and not isinstance(body, bool | int | float):
        raise ValueError(f"body value {body!r} is not a JSON value")
    return body


def render_body(body: Any, values: Mapping[str, str]) -> Any:
    """A copy of a checked body template with placeholders in its text values filled in."""
    if isinstance(body, str):
        return render_text(body, values)
    if isinstance(body, dict):
        return {key: render_body(value, values) for key, value in body.items()}
    if isinstance(body, list):
        return [render_body(value, values) for value in body]
    return body


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """The reference tokens of an RFC 6901 JSON pointer; ValueError when it is not one."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(
            f"{pointer!r} is not a JSON pointer (expected RFC 6901 form, e.g. /key/secret)"
        )
    raw = pointer[1:].split("/")
    if any(_BAD_ESCAPE.search(token) for token in raw):
        raise ValueError(
            f"{pointer!r} has a `~` that is not ~0 (for ~) or ~1 (for /) (RFC 6901 escapes)"
        )
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in raw)


class Missing:
    """What `resolve` returns when the pointer leads nowhere (None is a JSON value)."""


MISSING = Missing()


def resolve(document: Any, pointer: str) -> Any:
    """The value `pointer` names in a parsed JSON document, or MISSING."""
    for token in pointer_tokens(pointer):
        if isinstance(document, dict):
            if token not in document:
                return MISSING
            document = document[token]
        elif isinstance(document, list):
            if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(document):
                return MISSING
            document = document[int(token)]
        else:
            return MISSING
    return document
