"""Durations as written in schedules.yaml: `<number><unit>` parts that add up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from rotator.durations import MAX_DURATION, Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        (" 45s ", timedelta(seconds=45)),
        ("3650d", MAX_DURATION),
    ],
)
def test_parses(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30x", "'30x' is not a duration (expected e.g. 90s"),
        ("-1d", "'-1d' is not a duration"),
        ("0s", "'0s' is not a positive duration"),
        ("0d0h", "'0d0h' is not a positive duration"),
        ("30", "'30' needs a unit"),
        (30, "30 needs a unit"),
        (1.5, "1.5 is not a duration"),
        ("1.5h", "'1.5h' is not a duration"),
        ("30D", "'30D' is not a duration"),
        ("d", "'d' is not a duration"),
        ("", "'' is not a duration"),
        ("h1", "'h1' is not a duration"),
        ("1 day", "'1 day' is not a duration"),
        (True, "True is not a duration"),
        (None, "None is not a duration"),
        ("3651d", "'3651d' is too long (expected at most 3650d)"),
        ("99999999999w", "is too long"),
        ("1" * 5000 + "s", "is too long"),
    ],
)
def test_rejects_with_what_is_expected(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


def test_a_timedelta_passes_through() -> None:
    assert parse_duration(timedelta(minutes=5)) == timedelta(minutes=5)
    with pytest.raises(ValueError, match="not a positive duration"):
        parse_duration(timedelta(0))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=30), "30d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(weeks=2), "14d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(0), "0s"),
    ],
)
def test_formats_shortest_text(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize("text", ["45s", "15m", "1h30m", "30d", "1d2h3m4s"])
def test_format_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


class _Model(BaseModel):
    every: Duration


def test_the_pydantic_type_validates_and_serialises_as_text() -> None:
    model = _Model.model_validate({"every": "1h30m"})
    assert model.every == timedelta(minutes=90)
    assert model.model_dump(mode="json") == {"every": "1h30m"}
