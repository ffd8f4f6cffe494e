"""Timestamps in the one fixed-width UTC form that bookmarks, records and settings share.

Bookmarks are compared as strings (by the SDK too), which is only correct when every value has
the same width and zone: `...56Z`, `...56.5Z` and `...56.789+00:00` all become
`YYYY-MM-DDTHH:MM:SS.ffffffZ`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pendulum

_TIMESTAMP_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z"
_FAST_TIMESTAMP = re.compile(_TIMESTAMP_Z, re.ASCII)
_FAST_TIMESTAMPS = re.compile(f"{_TIMESTAMP_Z}(?:\n{_TIMESTAMP_Z})*", re.ASCII)
# What completes each length of `_TIMESTAMP_Z` to the fixed-width form (with its "Z").
_PADDING = {20: ".000000Z", **{length: "0" * (27 - length) + "Z" for length in range(22, 28)}}


def normalize_timestamp(value: str) -> str:
    """Return `value` as a fixed-width UTC timestamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    The common `Z` forms skip the full parser.

    Raises:
        ValueError: If `value` is not an ISO 8601 date-time within years 1-9999 UTC.
    """
    if not isinstance(value, str):
        msg = f"{value!r} is not an ISO 8601 date-time"
        raise ValueError(msg)
    if _FAST_TIMESTAMP.fullmatch(value):
        check_calendar([value])
        return value[:-1] + _PADDING[len(value)]
    try:
        parsed = pendulum.parse(value, exact=True)
        if isinstance(parsed, pendulum.Date) and not isinstance(parsed, pendulum.DateTime):
            parsed = pendulum.datetime(parsed.year, parsed.month, parsed.day)
        if not isinstance(parsed, pendulum.DateTime):
            raise TypeError(type(parsed).__name__)
        return parsed.in_timezone("UTC").format("YYYY-MM-DD[T]HH:mm:ss.SSSSSS[Z]")
    except (ValueError, TypeError, OverflowError, pendulum.parsing.exceptions.ParserError) as exc:
        # OverflowError: a valid local time outside year 1-9999 in UTC (0001-01-01T00:00+02:00).
        msg = f"{value!r} is not an ISO 8601 date-time within years 1-9999 UTC"
        raise ValueError(msg) from exc


def normalize_timestamps(values: list[str]) -> list[str]:
    """`normalize_timestamp` for a whole page, checking the usual `Z` forms with one match.

    Raises:
        ValueError: If one of them is not an ISO 8601 date-time.
    """
    joined = "\n".join(values)
    if values and joined.count("\n") == len(values) - 1 and _FAST_TIMESTAMPS.fullmatch(joined):
        check_calendar(values)
        return [value[:-1] + _PADDING[len(value)] for value in values]
    return [normalize_timestamp(value) for value in values]


def check_calendar(values: list[str]) -> None:
    """Refuse well-formed but impossible instants (`2024-02-30`, `25:00`), which the regex lets by.

    Raises:
        ValueError: If a value is not a real date and time.
    """
    for value in values:
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            msg = f"{value!r} is not an ISO 8601 date-time ({exc})"
            raise ValueError(msg) from exc


def stamp_of(moment: datetime) -> str:
    """`moment` (aware) in the fixed-width form."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
