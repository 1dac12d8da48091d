"""Durations as written in schedules.yaml: `30d`, `12h`, `90s`, `1h30m`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"^(\d+[wdhms])+$")
_EXAMPLES = "e.g. 90s, 15m, 12h, 1h30m, 30d, 2w"
#: The longest duration accepted; anything longer is surely a typo.
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """A positive timedelta from `30d`-style text; ValueError says what is expected.

    A duration is one or more `<number><unit>` parts that add up (`1h30m`),
    units w, d, h, m, s; spaces between parts are allowed.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        text = str(value).strip().replace(" ", "")
        if isinstance(value, bool) or not _WHOLE.match(text):
            hint = " needs a unit" if text.isdigit() else " is not a duration"
            raise ValueError(f"{value!r}{hint} (expected {_EXAMPLES})")
        parts = _PART.findall(text)
        if any(len(number.lstrip("0")) > 10 for number, _ in parts):
            raise ValueError(f"{value!r} is too long (expected at most {MAX_DURATION.days}d)")
        seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration (expected {_EXAMPLES})")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{value!r} is too long (expected at most {MAX_DURATION.days}d)")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest `1d2h`-style text for a timedelta."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
