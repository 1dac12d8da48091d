"""structlog set-up and the redaction processor.

Every log line passes `redact`: values of keys named like a password, token
or API key become `[REDACTED]`, and any value the engine registered as secret
is cut out of every string, wherever it appears.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?$|pwd|token|api_?key|secret|private_?key|credential|verifier",
    re.IGNORECASE,
)
#: Keys that hold a secret's *name*, not its value.
_NAME_KEYS = frozenset({"secret", "secrets", "admin_secret", "secret_name", "kind"})

_known_lock = threading.Lock()
_known_values: dict[str, int] = {}


@contextmanager
def secret_values(values: Iterable[str]) -> Iterator[None]:
    """Treat `values` as secret in every log line while the block runs."""
    registered = [v for v in values if v]
    with _known_lock:
        for value in registered:
            _known_values[value] = _known_values.get(value, 0) + 1
    try:
        yield
    finally:
        with _known_lock:
            for value in registered:
                left = _known_values.get(value, 0) - 1
                if left <= 0:
                    _known_values.pop(value, None)
                else:
                    _known_values[value] = left


def _written_forms(value: str) -> list[str]:
    """`value` as is, and as `repr()` or JSON escape it inside a message; longest first."""
    forms = {
        value,
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered (and every `extra`) secret value cut out, escaped or not."""
    with _known_lock:
        values = list(_known_values)
    for value in [*values, *extra]:
        for form in _written_forms(value) if value else ():
            if form in text:
                text = text.replace(form, REDACTED)
    return text


def _clean(key: str, value: Any) -> Any:
    if key not in _NAME_KEYS and _SENSITIVE_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean("", v) for v in value]
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: no secret value leaves through a log line."""
    for key in list(event_dict):
        event_dict[key] = _clean(key, event_dict[key])
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """JSON lines when not on a terminal (or asked), coloured console lines otherwise."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (text and newline together): processes sharing stderr never
        # interleave two lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
