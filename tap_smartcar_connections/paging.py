"""How a list pages, where a resumed walk goes on over it, and the guard that ends any walk.

Cursors (API v2) hold their place as the list changes; page numbers (API v3) shift with every
item added or removed. The walk (`walk.py`) asks its `Paging` where a resumed walk goes on and
what tells items apart, and keeps a `PagingGuard` for each read.
"""

from __future__ import annotations

import typing as t
from abc import ABC, abstractmethod
from dataclasses import dataclass

from tap_smartcar_connections.errors import ApiError

if t.TYPE_CHECKING:
    from tap_smartcar_connections.pages import Page

MAX_EMPTY_PAGES = 100
"""Pages in a row with nothing new (empty, or only items already read), each with a new token,
after which a walk is taken to be endless."""
MAX_PAGE_DIGITS = 9
"""A page number longer than this in a checkpoint cannot be right (10^9 pages of 100)."""


class StaleCheckpoint(Exception):
    """A saved checkpoint cannot be resumed from; the message says why."""


@dataclass(frozen=True)
class Saved:
    """What a resumed walk knows of where it was, once it has read the new top of the list."""

    token: str
    """The checkpoint's next page token."""
    total: int | None
    """The list's size when the checkpoint was saved."""
    arrived: int
    """Items read above the checkpoint since (the new top)."""
    total_now: int | None
    """The list's size now."""


class Paging(ABC):
    """How a list pages: where a resumed walk goes on, and what tells items apart.

    Not the SDK's `BaseAPIPaginator`: a paginator there sees the raw response after the records
    were yielded, while the walk needs the parsed page (its token, total and order) to decide
    where to stop, and each body is parsed once, under the retries.
    """

    shifts: t.ClassVar[bool]
    """Whether items move between pages as the list changes (page numbers do, cursors don't)."""

    @abstractmethod
    def resume(self, saved: Saved, page_size: int) -> str:
        """The token to go on from, now that the walk has read the new top of the list.

        Raises:
            StaleCheckpoint: If the checkpoint does not fit the list.
        """

    @abstractmethod
    def check_resumed(self, page: Page, last: str, stamp: str) -> str:
        """Check the first page of a resumed walk.

        Returns:
            The instant above which items were read before the interruption (the walk skips
            them), or "".

        Raises:
            StaleCheckpoint: If the page shows the checkpoint no longer fits.
        """

    def identity(self, record: t.Mapping[str, t.Any]) -> int:
        """What tells items apart, as a hash (for dedupe and counts where pages shift)."""
        raise NotImplementedError


class CursorPaging(Paging):
    """Opaque cursors (API v2): a page's place does not move as the list changes."""

    shifts = False

    def resume(self, saved: Saved, page_size: int) -> str:
        """The checkpoint's own cursor: it holds its place."""
        return saved.token

    def check_resumed(self, page: Page, last: str, stamp: str) -> str:
        """The page must not start after where the interrupted walk had come.

        Raises:
            StaleCheckpoint: If it does: the cursor no longer points where it did.
        """
        if page.records and page.records[0][stamp] > last:
            msg = f"its next page starts at {page.records[0][stamp]}, after {last}"
            raise StaleCheckpoint(msg)
        return ""


class NumberedPaging(Paging):
    """Page numbers (API v3): an item added or removed shifts every item after it."""

    shifts = True

    def __init__(self, identity_field: str) -> None:
        """Items are told apart by `identity_field` (their own id)."""
        self.identity_field = identity_field

    def identity(self, record: t.Mapping[str, t.Any]) -> int:
        """The hash of the item's own id: 1 user may connect 1 vehicle twice, and both count."""
        return hash(record[self.identity_field])

    def resume(self, saved: Saved, page_size: int) -> str:
        """The page where the interrupted walk's next item is now, or before it.

        Since the checkpoint, `saved.arrived` items came in above it; if the list grew by less
        than that, some were removed, perhaps above it: start that many earlier, and skip what
        is newer than where the walk had come (`check_resumed`).

        Raises:
            StaleCheckpoint: If the checkpoint has no usable page number or list size, or its
                page lies past the end of the list.
        """
        number, then, now = saved.token, saved.total, saved.total_now
        if not (number.isdecimal() and len(number) <= MAX_PAGE_DIGITS and isinstance(then, int)):
            msg = "it has no usable page number and list size"
            raise StaleCheckpoint(msg)
        now = then if now is None else now
        removed = max(0, then + saved.arrived - now)
        position = max(0, (int(number) - 1) * page_size + saved.arrived - removed)
        if position >= now:
            msg = f"its next page lies past the end of the list (item {position + 1} of {now})"
            raise StaleCheckpoint(msg)
        return str(position // page_size + 1)

    def check_resumed(self, page: Page, last: str, stamp: str) -> str:
        """Items newer than `last` were read before; the walk skips them."""
        return last


class PagingGuard:
    """Ends a walk that would never end: a token handed out twice, or pages without news."""

    def __init__(self, where: str) -> None:
        """Nothing seen yet, in the partition `where` names."""
        self.where = where
        self.tokens: set[str] = set()
        self.idle = 0

    def check(self, token: str, fresh: int, page: int) -> None:
        """Note the next `token`, after a page with `fresh` items not read before in the pass.

        Raises:
            ApiError: Naming what went wrong with the paging.
        """
        self.idle = 0 if fresh else self.idle + 1
        if token in self.tokens:
            problem = f"page {page} returned a page token already seen (a paging loop)"
        elif self.idle >= MAX_EMPTY_PAGES:
            problem = (
                f"{self.idle} pages in a row with nothing new (empty, or only items already "
                "read), each with a new page token"
            )
        else:
            self.tokens.add(token)
            return
        msg = (
            f"Smartcar API paging failed for {self.where}: {problem}. Report it to Smartcar "
            "support; the last STATE emitted is safe to resume from"
        )
        raise ApiError(msg)
