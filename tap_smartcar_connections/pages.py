"""A parsed page, and the checks every page parser applies to what a server sends."""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass

from tap_smartcar_connections.errors import BrokenBody
from tap_smartcar_connections.timestamps import normalize_timestamp, normalize_timestamps

if t.TYPE_CHECKING:
    from collections.abc import Iterator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Page:
    """One page of a list, parsed: what `parse_response` returns, iterable over its records."""

    records: list[dict[str, t.Any]]
    next: str | None
    """The next page's token (a cursor, or a page number), None after the last page."""
    total: int | None = None
    """How many items the API says the whole list has, if it says."""
    ordered: bool = True
    """Whether the API says the list is newest first (where it says anything)."""

    def __iter__(self) -> Iterator[dict[str, t.Any]]:
        """The page's records, as the SDK's `parse_response` yields them."""
        return iter(self.records)


def check_ids(values: list[str | None], field: str) -> None:
    """Refuse IDs holding a control character, one search for the whole page.

    A NUL or newline in an ID is no ID: PostgreSQL, for one, refuses the row.

    Raises:
        BrokenBody: Naming the field.
    """
    if _CONTROL.search("".join(value for value in values if value)):
        msg = f"a page whose {field} holds a control character"
        raise BrokenBody(msg)


@t.overload
def stamps(values: list[str]) -> list[str]: ...
@t.overload
def stamps(values: list[str | None]) -> list[str | None]: ...
def stamps(values: list[t.Any]) -> list[t.Any]:
    """A page's timestamps in the bookmarks' form, a page at a time; None stays None.

    Raises:
        BrokenBody: If one is not an ISO 8601 date-time.
    """
    try:
        if None not in values:
            return normalize_timestamps(values)
        return [None if value is None else normalize_timestamp(value) for value in values]
    except ValueError as exc:
        msg = f"a page with a date that is not ISO 8601 ({exc})"
        raise BrokenBody(msg) from exc
