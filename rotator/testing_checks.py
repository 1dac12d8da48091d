"""The conformance kit's detectors: leaked values in texts, a value's strength, captured logs.

They look for what a careless plugin does (a value, or part of one, in a message or a log
line; a long value with little randomness in it), not for what a malicious one could hide.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import quote, quote_plus

from structlog.testing import capture_logs

from rotator.logging import redact

#: A run of this many characters of a value, found in a text, counts as a leak (a prefix
#: printed "for debugging" gives most of a value away).
LEAK_WINDOW = 12

_CLASSES = (
    (str.islower, 26),
    (str.isupper, 26),
    (str.isdigit, 10),
    (lambda char: not char.isalnum(), 32),
)


def _forms(value: str) -> set[str]:
    """The ways a value may be written into a text: as is, escaped, quoted, percent-encoded."""
    return {
        value,
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        value.replace("'", "''"),
        quote(value, safe=""),
        quote_plus(value, safe=""),
    }


def leaked(texts: Iterable[str | None], values: Iterable[str]) -> list[str]:
    """Descriptions (never the values) of `values` found in `texts`, whole or any
    `LEAK_WINDOW` characters of them, as is or escaped."""
    blob = "\n".join(text for text in texts if text)
    windows = {blob[i : i + LEAK_WINDOW] for i in range(len(blob) - LEAK_WINDOW + 1)}
    found = []
    for value in sorted(values):
        for form in _forms(value):
            if form in blob:
                found.append(f"a {len(value)}-character value starting {value[:2]!r}")
                break
            parts = (form[i : i + LEAK_WINDOW] for i in range(len(form) - LEAK_WINDOW + 1))
            if any(part in windows for part in parts):
                found.append(f"{LEAK_WINDOW}+ characters of a {len(value)}-character value")
                break
    return found


def error_texts(exc: BaseException) -> list[str]:
    """Everything a log line with `exc_info` would show of an exception, its chain included."""
    return [str(exc), repr(exc), *traceback.format_exception(exc)]


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line written meanwhile: structlog events as deployed (through `redact`), and
    records of every stdlib logger at DEBUG, exceptions included. Complete when the block ends.
    """
    lines: list[str] = []
    root = logging.getLogger()
    handler = _ListHandler(lines)
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with capture_logs(processors=[redact]) as events:
            yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    lines.extend(repr(event) for event in events)


def _aligned(samples: Sequence[str], from_end: bool) -> list[str]:
    width = min(len(sample) for sample in samples)
    return [sample[len(sample) - width :] if from_end else sample[:width] for sample in samples]


def estimated_bits(samples: Sequence[str]) -> float:
    """A rough upper bound of the entropy of one field, from independent samples of it.

    Only positions where the samples differ count (aligned at the start or at the end,
    whichever finds more), so a constant padding adds nothing; each counts log2 of the
    alphabet that the characters seen there span (lower 26, upper 26, digits 10, others 32).
    With 8 samples a random position looks constant once in 16**7 (hex) or more.
    """
    if len(set(samples)) < 2:
        return 0.0
    best = 0.0
    for from_end in (False, True):
        aligned = _aligned(samples, from_end)
        varying = [i for i in range(len(aligned[0])) if len({s[i] for s in aligned}) > 1]
        seen = "".join(sample[i] for sample in aligned for i in varying)
        alphabet = sum(size for member, size in _CLASSES if any(member(c) for c in seen))
        best = max(best, len(varying) * math.log2(max(alphabet, 2)))
    return best
