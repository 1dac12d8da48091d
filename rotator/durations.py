"""Durations as written in schedules.yaml: `30d`, `12h`, `90s`, `1h30m`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"^(\d+[wdhms])+$")


def parse_duration(value: Any) -> timedelta:
    """A timedelta from `30d`-style text; ValueError says what is expected."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().replace(" ", "")
    if isinstance(value, bool) or not _WHOLE.match(text):
        raise ValueError(f"{value!r} is not a duration (expected e.g. 90s, 15m, 12h, 30d, 2w)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return timedelta(seconds=seconds)


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
