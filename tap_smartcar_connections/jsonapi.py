"""Smartcar API v3's JSON:API documents: a list page's place in its list, and error bodies.

`read_list` is where every v3 page is parsed and checked (each stream then maps its items to
records). What Smartcar documents about these lists, and how sure that is, is in
docs/api-v3.md: where it is uncertain, a page that does not say what the tap relies on is a
broken body, named, rather than a guess.
"""

from __future__ import annotations

import typing as t
from urllib.parse import parse_qs, urljoin, urlsplit

import msgspec
import requests

from tap_smartcar_connections.errors import ApiError, BrokenBody
from tap_smartcar_connections.pages import Page
from tap_smartcar_connections.transport import origin

if t.TYPE_CHECKING:
    from collections.abc import Callable

T = t.TypeVar("T")
CREATION_ORDER = frozenset({msgspec.UNSET, None, "createdAt", "meta.createdAt"})
"""`meta.orderBy` values that mean newest first by creation, with `orderDirection: desc`
(absent means the documented default, "sorted by connection date")."""


class _Links(msgspec.Struct):
    """`links`: an explicit null `next` marks the last page; a missing one proves nothing."""

    next: str | msgspec.UnsetType | None = msgspec.UNSET


class _ListMeta(msgspec.Struct, rename="camel"):
    page_number: int | msgspec.UnsetType = msgspec.UNSET
    page_size: int | msgspec.UnsetType = msgspec.UNSET
    total_count: int | msgspec.UnsetType = msgspec.UNSET
    order_by: str | msgspec.UnsetType | None = msgspec.UNSET
    order_direction: str | msgspec.UnsetType | None = msgspec.UNSET


class ListDocument(msgspec.Struct, t.Generic[T]):
    """A JSON:API collection; unknown fields are ignored."""

    data: list[T]
    meta: _ListMeta = msgspec.field(default_factory=_ListMeta)
    links: _Links | msgspec.UnsetType = msgspec.UNSET


def read_list(
    response: requests.Response,
    decoder: msgspec.json.Decoder[ListDocument[T]],
    page_size: int,
    what: str,
) -> tuple[list[T], Page]:
    """Decode a v3 list page, and say where it lies in its list (a `Page` without records).

    `links.next` is followed as the page number it names, only on this URL: the tap builds
    the next request itself, so a link elsewhere never receives the token.

    Raises:
        BrokenBody: If the body is not the expected list, the page is not the one asked for,
            or its links and counts disagree.
        ApiError: If the API pages with another size than `page_size`.
    """
    try:
        body = decoder.decode(response.content)
    except (msgspec.DecodeError, RecursionError) as exc:
        msg = f"a body that is not the expected {what} JSON:API list ({exc})"
        raise BrokenBody(msg) from exc
    number = requested_page(response)
    meta = body.meta
    if meta.page_number not in {msgspec.UNSET, number}:
        msg = f"page {meta.page_number} when page {number} was asked for"
        raise BrokenBody(msg)
    if meta.page_size not in {msgspec.UNSET, page_size}:
        msg = (
            f"Smartcar API {what} pages hold {meta.page_size} items, not the page_size "
            f"{page_size} asked for: set page_size to {meta.page_size}"
        )
        raise ApiError(msg)
    total = meta.total_count
    if total is msgspec.UNSET or total < 0:
        # Without the list's size, a walk over shifting pages cannot be checked.
        shown = "no" if total is msgspec.UNSET else f"a negative ({total})"
        msg = f"a page with {shown} meta.totalCount"
        raise BrokenBody(msg)
    ordered = str(meta.order_direction).lower() == "desc" and meta.order_by in CREATION_ORDER
    held = (number - 1) * page_size + len(body.data)
    link = body.links.next if isinstance(body.links, _Links) else msgspec.UNSET
    if link is msgspec.UNSET and held != total:
        # JSON:API may leave `next` out on the last page; only the count can say it is.
        msg = (
            f"a page {number} with no links.next (not even null), while meta.totalCount is {total}"
        )
        raise BrokenBody(msg)
    if link is None or link is msgspec.UNSET:
        if held < total:
            msg = f"a page {number} whose links.next is null, while meta.totalCount is {total}"
            raise BrokenBody(msg)
        return body.data, Page([], None, total, ordered)
    if len(body.data) != page_size or number * page_size >= total:
        msg = (
            f"a page {number} of {len(body.data)} items with a links.next, while "
            f"meta.totalCount is {total}"
        )
        raise BrokenBody(msg)
    _check_next(response, link, number)
    return body.data, Page([], str(number + 1), total, ordered)


def requested_page(response: requests.Response) -> int:
    """The page number the request asked for (1 when it named none)."""
    query = parse_qs(urlsplit(str(response.request.url or "")).query)
    numbers = query.get("page[number]", ["1"])
    return int(numbers[0]) if numbers[0].isdecimal() else 1


def _check_next(response: requests.Response, link: str, number: int) -> None:
    """`links.next` must name the next page number on the same URL.

    Raises:
        BrokenBody: If it points elsewhere, or to another page.
    """
    here = urlsplit(str(response.request.url or ""))
    try:
        target = urlsplit(urljoin(str(response.request.url or ""), link))
    except ValueError as exc:  # an unbalanced "[" in a host, a bad port
        msg = f"a links.next that is not a URL ({exc})"
        raise BrokenBody(msg) from exc
    numbers = parse_qs(target.query).get("page[number]", [])
    if (target.scheme, target.netloc, target.path) != (here.scheme, here.netloc, here.path) or (
        numbers != [str(number + 1)]
    ):
        msg = f"a links.next to {origin(link)}{target.path}, not to page {number + 1} here"
        raise BrokenBody(msg)


def describe_response(response: requests.Response, clean: Callable[[t.Any, int], str]) -> str:
    """Summarise a v3 error: JSON:API `errors[0]`, or an OAuth `{error, error_description}`.

    Returns:
        For example `429 RATE_LIMIT (code X): Too many requests (requestId 5d2...)`.
    """
    reason = clean(response.reason, 60) or "error"
    try:
        body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError):
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        error = errors[0]
        text = f"{response.status_code} {clean(error.get('type'), 40) or reason}"
        if code := clean(error.get("code"), 40):
            text += f" (code {code})"
        if detail := clean(error.get("detail") or error.get("title"), 300):
            text += f": {detail}"
        meta = error.get("meta")
        debug = meta.get("debug") if isinstance(meta, dict) else None
        request_id = clean(debug.get("requestId"), 80) if isinstance(debug, dict) else ""
        return f"{text} (requestId {request_id})" if request_id else text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = f"{response.status_code} {clean(body['error'], 60)}"
        if description := clean(body.get("error_description"), 300):
            text += f": {description}"
        return text
    return f"{response.status_code} {reason} (the body was not Smartcar's error JSON)"
