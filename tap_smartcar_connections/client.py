"""What every API version shares: the HTTP base stream and the `connections` walk.

`SmartcarStream` sends requests (retries, pacing, deadline, no redirects, error lines without
bodies) and writes records; `ConnectionsStream` holds the bookmark logic, all in
`ConnectionsStream.request_records` and `_read`. Each API version (`v2`, `v3`) contributes
its request building, auth and page parsing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import random
import re
import sys
import time
import typing as t
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import msgspec
import pendulum
import requests
import urllib3
from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.helpers.types import Context
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.streams import RESTStream
from singer_sdk.streams.rest import PageContext
from typing_extensions import override

from tap_smartcar_connections.transport import (
    CONNECT_TIMEOUT_SECONDS,
    BrokenBody,
    ResponseTimeout,
    Transport,
    deadline,
    network_reason,
    origin,
    printable,
    read_body,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator

    from singer_sdk import Tap

MODES = ("live", "simulated", "test")
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0
BODY_ATTEMPTS = 3
"""Tries for a page whose body is broken: a proxy may cut one, but bad data stays bad."""
PROGRESS_SECONDS = 60.0
"""A walk logs its progress at least this often."""
MAX_EMPTY_PAGES = 100
"""Empty pages in a row, each with a new cursor, after which a walk is taken to be endless."""
REREADS = 2
"""How often a walk over shifting pages is read again when the list changed under it."""

_RETRIABLE = (
    RetriableAPIError,
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_TIMESTAMP_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z"
_FAST_TIMESTAMP = re.compile(_TIMESTAMP_Z, re.ASCII)
_FAST_TIMESTAMPS = re.compile(f"{_TIMESTAMP_Z}(?:\n{_TIMESTAMP_Z})*", re.ASCII)
# What completes each length of `_TIMESTAMP_Z` to the fixed-width form (with its "Z").
_PADDING = {20: ".000000Z", **{length: "0" * (27 - length) + "Z" for length in range(22, 28)}}
_ENCODER = msgspec.json.Encoder()
FAST_PATH_SDK_VERSIONS = ("0.54.9",)
"""singer-sdk releases for which `tests/test_performance.py` compared the fast path's output."""
_SDK_VERSION = importlib.metadata.version("singer-sdk")


class SmartcarError(Exception):
    """An expected failure that ends the run with one human-readable line."""

    exit_code = 1


class DownstreamError(SmartcarError):
    """Standard output cannot be written: the target stopped reading, or the disk is full."""

    @classmethod
    def wrap(cls, exc: OSError) -> DownstreamError:
        """The error to raise for a failed write to stdout."""
        if isinstance(exc, BrokenPipeError):
            reason = "the downstream target stopped reading (broken pipe)"
        else:
            reason = f"cannot write to standard output ({exc.strerror or type(exc).__name__})"
        return cls(f"{reason}; the last STATE it received is safe to resume from")


class Writer(MsgSpecWriter):
    """The SDK's msgspec writer; a failed write to stdout becomes one clear `DownstreamError`."""

    @override
    def write_message(self, message: t.Any) -> None:
        try:
            super().write_message(message)
        except OSError as exc:
            raise DownstreamError.wrap(exc) from exc


class SmartcarAPIError(SmartcarError, FatalAPIError):
    """The Smartcar API refused a request, or kept failing past `max_retry_seconds`."""


class _Refused(SmartcarAPIError):
    """The API answered a client error (4xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _StaleCheckpoint(Exception):
    """A saved checkpoint cannot be resumed from."""


def _key(record: dict[str, t.Any]) -> str:
    """A short digest of a connection's key, kept in the state instead of the raw IDs."""
    return hashlib.sha256(f"{record['userId']}\0{record['vehicleId']}".encode()).hexdigest()[:16]


@dataclass
class _Walk:
    """One mode's read, newest first: where it stops, and what it has read so far."""

    context: Context | None
    floor: str = ""
    """Stop below this instant: the bookmark or `start_date` ("" reads to the last page)."""
    skip: frozenset[str] = frozenset()
    """Keys (`_key`) already sent at the `floor` instant."""
    sent: set[str] = field(default_factory=set)
    """Keys sent in this run, when pages shift (`ConnectionsStream.PAGES_SHIFT`)."""
    newest: str = ""
    """The newest instant read that may become the bookmark (never after the run's start)."""
    newest_keys: set[str] = field(default_factory=set)
    last: str = ""
    """The last instant read: how far back the walk has come."""
    unordered: bool = False
    totals: set[int] = field(default_factory=set)
    """Every size of the whole list the API gave during the walk (`Page.total`)."""
    total: int | None = None
    """The last of them."""
    read: set[str] = field(default_factory=set)
    """Every item read (`ConnectionsStream._identity`), when pages shift, to check `total`."""
    shrank: str = ""
    """How the list shrank between two pages without the next one starting with an item
    already read (which would prove nothing moved up past the walk)."""
    resumed: bool = False
    pages: int = 0
    records: int = 0
    top: str = ""
    began: float = field(default_factory=time.monotonic)
    logged: float = field(default_factory=time.monotonic)

    def absorb(self, head: _Walk, checkpoint: dict[str, t.Any]) -> None:
        """Take in a resumed walk's checkpoint and the new head read before continuing it."""
        self.newest, self.newest_keys = checkpoint["newest"], set(checkpoint["newest_keys"])
        if head.newest > self.newest:
            self.newest, self.newest_keys = head.newest, head.newest_keys
        elif head.newest == self.newest:
            self.newest_keys |= head.newest_keys
        self.last = checkpoint["last"]
        self.unordered = checkpoint.get("unordered", False) or head.unordered
        self.totals, self.total, self.resumed = set(head.totals), head.total, True
        self.shrank = head.shrank or printable(checkpoint.get("shrank"), 200)
        self.pages, self.records = head.pages, head.records
        self.top = head.top or checkpoint["newest"]

    def checkpoint(self, token: str, page_size: int) -> dict[str, t.Any]:
        """What a rerun needs to go on from `token` (see `ConnectionsStream.request_records`)."""
        saved = {
            "cursor": token,
            "newest": self.newest,
            "newest_keys": sorted(self.newest_keys),
            "last": self.last,
            "floor": self.floor,
            "page_size": page_size,
            "unordered": self.unordered,
        }
        if self.total is not None:
            saved["total"] = self.total
        if self.shrank:
            saved["shrank"] = self.shrank  # a resume must not forget it
        return saved

    def doubt(self, ended: str, *, strict: bool, noun: str = "connections") -> str | None:
        """Why a walk over shifting pages may have missed an item, or None.

        An item removed from a page already read pulls an unread one up onto it, where the
        walk never looks; the list's size then changes under the walk. Counts alone prove
        nothing (the removed one was read), so both the size and the distinct items are
        checked. `strict` (a full read, which may end in ACTIVATE_VERSION) takes any change of
        size as a doubt; otherwise only a shrink that `shrank` could not rule out is one, so
        that a first walk on a busy application, where connections only come, still ends.
        """
        if strict and len(self.totals) > 1:
            sizes = ", ".join(str(total) for total in sorted(self.totals))
            return f"the list's size (meta.totalCount) changed during the walk ({sizes})"
        if not strict and self.shrank:
            return (
                f"{self.shrank}, and an unread {noun[:-1]} may have moved onto a page already read"
            )
        if (
            ended == "end"
            and not self.resumed
            and len(self.totals) == 1
            and self.total != len(self.read)
        ):
            return (
                f"{len(self.read)} distinct {noun} were read but the list's size "
                f"(meta.totalCount) is {self.total}"
            )
        return None

    def estimate(self, elapsed: float) -> float | None:
        """Seconds left, from how fast the walk moves back in time, when that can be told."""
        if not (self.floor and self.top and self.floor < self.last < self.top):
            return None
        top, last, floor = (datetime.fromisoformat(v) for v in (self.top, self.last, self.floor))
        return elapsed * (last - floor).total_seconds() / (top - last).total_seconds()


def _fetch_from_checkpoint(
    fetch: Callable[..., Page],
    context: Context | None,
    token: str | None,
    at_most: str,
) -> Page:
    """Fetch a page; if it is a checkpoint's (`at_most` set), check the API still accepts it.

    Raises:
        _StaleCheckpoint: If the API refuses the token (400: expired, rotated) or the page
            starts after `at_most`, where the interrupted walk had already read.
    """
    try:
        page = fetch(context, token)
    except _Refused as exc:
        if at_most and exc.status == HTTPStatus.BAD_REQUEST:
            raise _StaleCheckpoint(f"the API refused its cursor: {exc}") from exc
        raise
    if at_most and page.records and page.records[0]["connectedAt"] > at_most:
        msg = f"its next page starts at {page.records[0]['connectedAt']}, after {at_most}"
        raise _StaleCheckpoint(msg)
    return page


def _check_paging(walk: _Walk, cursor: str, seen: set[str], empty: int) -> None:
    """Fail on a cursor already handed out, or on empty pages without end.

    Raises:
        SmartcarAPIError: Naming the mode and what went wrong.
    """
    if cursor in seen or empty >= MAX_EMPTY_PAGES:
        problem = (
            f"page {walk.pages} returned a cursor already seen (a paging loop)"
            if cursor in seen
            else f"{empty} empty pages in a row, each with a new cursor"
        )
        msg = (
            f"Smartcar API paging failed for {json.dumps(walk.context)}: {problem}. Report it "
            "to Smartcar support; the last STATE emitted is safe to resume from"
        )
        raise SmartcarAPIError(msg)


def normalize_timestamp(value: str) -> str:
    """Return `value` as a fixed-width UTC timestamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    Bookmarks are compared as strings (by the SDK too), which is only correct when every
    value has the same width and zone: `...56Z`, `...56.5Z` and `...56.789+00:00` all become
    microsecond-precision UTC. The common `Z` forms skip the full parser.

    Raises:
        ValueError: If `value` is not an ISO 8601 date-time.
    """
    if not isinstance(value, str):
        msg = f"{value!r} is not an ISO 8601 date-time"
        raise ValueError(msg)
    if _FAST_TIMESTAMP.fullmatch(value):
        _check_calendar([value])
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


def _normalize_timestamps(values: list[str]) -> list[str]:
    """`normalize_timestamp` for a whole page, checking the usual `Z` forms with one match."""
    joined = "\n".join(values)
    if values and joined.count("\n") == len(values) - 1 and _FAST_TIMESTAMPS.fullmatch(joined):
        _check_calendar(values)
        return [value[:-1] + _PADDING[len(value)] for value in values]
    return [normalize_timestamp(value) for value in values]


def _check_calendar(values: list[str]) -> None:
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


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    if not header:
        return None
    if re.fullmatch(r"[0-9]{1,9}", header.strip(), re.ASCII):
        return float(header)
    try:
        when = parsedate_to_datetime(header)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    return not isinstance(sys.exc_info()[1], SmartcarError)


def _failure_summary(exc: BaseException) -> str:
    if isinstance(exc, BrokenBody | ResponseTimeout | RetriableAPIError):
        return str(exc)
    return type(exc).__name__


def mode_partitions(config: t.Mapping[str, t.Any]) -> list[dict[str, t.Any]]:
    """One partition per configured mode, with the `user_id` and `vehicle_id` filters.

    The filter keys are named like the record fields they restrict, so the SDK finds them
    already present in every record (it adds a partition's keys to records that lack them).
    """
    filters = {
        field: config[setting]
        for field, setting in (("userId", "user_id"), ("vehicleId", "vehicle_id"))
        if config.get(setting)
    }
    return [{"mode": mode, **filters} for mode in dict.fromkeys(config["modes"])]


@dataclass
class _Run:
    """What a run's streams share: under v3 three streams and a token endpoint take turns."""

    answered: set[str] = field(default_factory=set)
    """Origins that answered in this run: before one has, a connection failure to it is fatal."""
    last_request_at: float = 0.0
    """When the run's last request was sent, for `max_requests_per_minute`."""


_RUNS: weakref.WeakKeyDictionary[t.Any, _Run] = weakref.WeakKeyDictionary()
"""Each tap's `_Run`."""


@dataclass
class Page:
    """One page of a list, parsed."""

    records: list[dict[str, t.Any]]
    next: str | None
    """The next page's token (a cursor, or a page number), None after the last page."""
    total: int | None = None
    """How many items the API says the whole list has, if it says."""
    ordered: bool = True
    """Whether the API says the list is newest first."""


class SmartcarStream(RESTStream[str]):
    """A stream read from a Smartcar API: one request at a time, each one hardened.

    Subclasses say where (`url_base`, `path`, `URL_SETTINGS`), how to authenticate, how to
    describe an error body (`describe_response`, `ADVICE`) and how to parse a page
    (`_parse_page`).
    """

    URL_SETTINGS: t.ClassVar[tuple[str, ...]] = ("api_url",)
    """Settings holding the URLs this stream requests, first the main one: error lines name them."""
    ADVICE: t.ClassVar[dict[int, str]] = {}
    """What to do about a refused request (4xx), by status."""
    _record_affixes: tuple[bytes, bytes] | None = None
    _environments: dict[str, dict[str, t.Any]] | None = None
    """The environment's proxies and TLS settings, per origin (`NO_PROXY` may tell them apart)."""
    _emitted = 0
    """Records emitted in a connection test (`ABORT_AT_RECORD_COUNT`)."""
    _complete_walks = 0
    """Partitions read to a page with an explicit null cursor, for ACTIVATE_VERSION."""

    def __init__(self, tap: Tap) -> None:
        """Create the stream; expected failures skip the SDK's generic error line.

        The SDK logs "An unhandled error occurred" before re-raising any error; for a
        `SmartcarError` the command line prints the one line that says what happened.
        """
        super().__init__(tap)
        self.logger.addFilter(_not_an_expected_failure)
        for prefix in ("http://", "https://"):
            self.requests_session.mount(prefix, Transport())
        started = datetime.fromtimestamp(self._tap.initialized_at / 1000, UTC)
        self.started = normalize_timestamp(started.isoformat())
        """The run's start: no bookmark moves past it."""

    @property
    @override
    def timeout(self) -> int:
        return int(self.config["request_timeout"])

    @property
    @override
    def emit_activate_version_messages(self) -> bool:
        """Always False, so the SDK does not send ACTIVATE_VERSION before the records.

        The SDK sends it at the start of a FULL_TABLE sync, which lets a target delete every
        old row before the new ones arrive. `get_records` sends it after the last partition.
        """
        return False

    @property
    @override
    def http_headers(self) -> dict[str, t.Any]:
        """Ask for gzip only: `read_body` decodes it with a bound on the output."""
        return {**super().http_headers, "Accept-Encoding": "gzip"}

    @override
    def request_decorator(self, func: Callable[..., t.Any]) -> Callable[..., t.Any]:
        """Retry transient failures, honouring `Retry-After`, for up to `max_retry_seconds`.

        Replaces the SDK's backoff, which ignores `Retry-After`, gives up after about 33
        seconds (Smartcar's bucket refills at 2 requests a minute) and logs whole response
        bodies on every try. Each try is paced to `max_requests_per_minute` (see `_send`).
        """

        @functools.wraps(func)
        def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            budget = float(self.config["max_retry_seconds"])
            give_up_at = time.monotonic() + budget
            attempt = broken = 0
            while True:
                try:
                    return func(*args, **kwargs)
                except (
                    requests.exceptions.InvalidURL,
                    urllib3.exceptions.LocationParseError,
                ) as exc:
                    setting = self._setting_for(exc)
                    msg = f"{setting} {self.config[setting]} cannot be requested: check its host"
                    raise SmartcarAPIError(msg) from exc
                except _RETRIABLE as exc:
                    attempt += 1
                    broken += isinstance(exc, BrokenBody)
                    self._give_up_at_once(exc, broken)
                    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                    backoff = random.uniform(ceiling / 2, ceiling)  # noqa: S311
                    wait = max(RETRY_BASE_SECONDS, backoff, _retry_after(exc) or 0.0)
                    summary = _failure_summary(exc)
                    if time.monotonic() + wait > give_up_at:
                        msg = (
                            f"Smartcar API still failing after {attempt} attempts over "
                            f"max_retry_seconds={budget:g}: {summary}. Rerun later, or raise "
                            "max_retry_seconds; the last STATE emitted is safe to resume from"
                        )
                        raise SmartcarAPIError(msg) from exc
                    limited = getattr(getattr(exc, "response", None), "status_code", 0) == 429
                    self.logger.warning(
                        "Smartcar API %s; retrying in %.1f s (attempt %d)%s",
                        summary,
                        wait,
                        attempt,
                        ": the rate limit's bucket makes the tap wait that long" if limited else "",
                    )
                    time.sleep(wait)

        return call

    def _give_up_at_once(self, exc: BaseException, broken: int) -> None:
        """Fail without retrying where waiting cannot help.

        A certificate is not accepted on a second try; an unreachable `api_url` on the very
        first request is a wrong setting more often than an outage (a connection test must not
        wait `max_retry_seconds` to say so); bad data stays bad.

        Raises:
            SmartcarAPIError: For a TLS failure, a first request that could not connect, or
                a page body broken `BODY_ATTEMPTS` times in a row.
        """
        setting = self._setting_for(exc)
        url = self.config[setting]
        if isinstance(exc, requests.exceptions.SSLError):
            msg = (
                f"TLS with {origin(url)} failed: {network_reason(exc)}. If a proxy inspects "
                f"TLS, set REQUESTS_CA_BUNDLE to its CA bundle; otherwise check {setting}"
            )
            raise SmartcarAPIError(msg) from exc
        request_url = str(getattr(getattr(exc, "request", None), "url", None) or url)
        if origin(request_url) not in self._run.answered and isinstance(
            exc, requests.exceptions.ConnectionError
        ):
            msg = (
                f"cannot reach {setting} {url}: {network_reason(exc)}. Check {setting} and "
                "the network (and HTTPS_PROXY/NO_PROXY if a proxy is needed)"
            )
            raise SmartcarAPIError(msg) from exc
        if broken >= BODY_ATTEMPTS:
            msg = (
                f"Smartcar API sent a {exc} {broken} times in a row; this is not transient. "
                "Report it to Smartcar support with the time of the run; the last STATE "
                "emitted is safe to resume from"
            )
            raise SmartcarAPIError(msg) from exc

    def _setting_for(self, exc: BaseException) -> str:
        """The URL setting behind the request that failed (the main one when unknown)."""
        url = str(getattr(getattr(exc, "request", None), "url", None) or "")
        for setting in self.URL_SETTINGS:
            if url.startswith(str(self.config[setting]).rstrip("/")):
                return setting
        return self.URL_SETTINGS[0]

    def describe_response(self, response: requests.Response) -> str:
        """Summarise an error response in one line, never echoing the raw body."""
        raise NotImplementedError

    def _parse_page(self, response: requests.Response, token: str | None) -> Page:
        """Parse one page of the list (`token` is what requested it).

        Raises:
            BrokenBody: If the body is not the documented JSON.
        """
        raise NotImplementedError

    @property
    def _run(self) -> _Run:
        return _RUNS.setdefault(self._tap, _Run())

    def _pace(self) -> None:
        """Wait until `max_requests_per_minute` allows the run's next request, whatever sends it."""
        run = self._run
        per_minute = self.config.get("max_requests_per_minute")
        if per_minute:
            gap = 60.0 / per_minute - (time.monotonic() - run.last_request_at)
            if gap > 0:
                time.sleep(gap)
        run.last_request_at = time.monotonic()

    @override
    def _request(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """Send one request: whole-response deadline, bounded body, environment TLS, no redirects.

        The SDK's `Session.send` bounds each socket read rather than the response, reads any
        body whole (a small gzip body can inflate to gigabytes), skips the environment's CA
        bundle (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`: a TLS-inspecting proxy then fails) and
        follows redirects, carrying the request to whatever origin a response names. The
        adapter is called directly: the session parses a redirect's `Location` even when not
        following it, and a malformed one raises.

        Raises:
            ResponseTimeout: If the response was not complete within `request_timeout`.
        """
        response = self._send(self.authenticator(prepared_request))
        self._write_request_duration_log(
            endpoint=self.path, response=response, context=context, extra_tags=None
        )
        self.validate_response(response)
        return response

    def _send(self, request: requests.PreparedRequest) -> requests.Response:
        """Send `request` as `_request` describes, and read its body.

        Raises:
            ResponseTimeout: If the response was not complete within `request_timeout`.
        """
        environments = self._environments = self._environments or {}
        where = origin(request.url or "")
        if where not in environments:
            settings = self.requests_session.merge_environment_settings(
                request.url, {}, None, None, None
            )
            environments[where] = {key: settings[key] for key in ("proxies", "verify", "cert")}
        self._pace()
        with deadline(self.timeout) as expired:
            try:
                response = self.requests_session.get_adapter(request.url or "").send(
                    request,
                    stream=True,
                    timeout=(min(CONNECT_TIMEOUT_SECONDS, self.timeout), self.timeout),
                    **environments[where],
                )
                self._run.answered.add(origin(request.url or ""))
                response._content = read_body(response)
            except (requests.exceptions.RequestException, OSError) as exc:
                if expired():
                    msg = f"ReadTimeout: no complete response in request_timeout={self.timeout} s"
                    raise ResponseTimeout(msg) from exc
                raise
        return response

    @override
    def validate_response(self, response: requests.Response) -> None:
        """Classify a response without putting its body into any message.

        The SDK's messages include the whole body and URL; Smartcar's error JSON is
        summarised instead, with what to do about it. Only a 2xx is data: a redirect is
        refused, since following it would send the token to wherever it points.
        """
        status = response.status_code
        if status < HTTPStatus.OK or HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
            location = response.headers.get("Location")
            where = f", a redirect to {origin(location)}" if location else ""
            msg = (
                f"Smartcar API answered {status} {printable(response.reason, 60)}{where}, not "
                "data; the tap follows no redirect (it would carry the token elsewhere). Check "
                f"{self.URL_SETTINGS[0]} (now {origin(str(self.config[self.URL_SETTINGS[0]]))})"
            )
            raise SmartcarAPIError(msg)
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            raise RetriableAPIError(self.describe_response(response), response)
        if status >= HTTPStatus.BAD_REQUEST:
            advice = self.ADVICE.get(status, "see Smartcar's documentation for this error")
            msg = f"Smartcar API error {self.describe_response(response)}. To fix: {advice}"
            raise _Refused(msg, status)

    def _fetch_page(self, context: Context | None, token: str | None) -> Page:
        """Request and parse one page (not retried: see `request_decorator`)."""
        request = self.get_http_request(
            page=PageContext(stream_context=context, next_page_token=token)
        )
        prepared = self.build_prepared_request(
            method=request.method,
            url=request.url,
            params=request.encode_params(),
            headers=request.headers,
        )
        page = self._parse_page(self._request(prepared, context), token)
        self._record_affixes = self._fast_record_affixes()
        return page

    def _fast_record_affixes(self) -> tuple[bytes, bytes] | None:
        """Return the bytes around a record's JSON in its RECORD line, if the fast path applies.

        It applies when the line would be exactly what the SDK writes: the msgspec writer,
        every property selected and only the identity stream map (no map, alias, filter or
        flattening configured). `time_extracted` is when the page arrived, taken once per page
        (the SDK reads the clock per record, at write time). This mirrors SDK internals of the
        pinned release; `tests/test_performance.py` compares the two paths' output.
        """
        maps = self.stream_maps
        if _SDK_VERSION not in FAST_PATH_SDK_VERSIONS:
            self.logger.debug(
                "singer-sdk %s: RECORD lines written by the SDK (the fast path was checked "
                "against %s)",
                _SDK_VERSION,
                ", ".join(FAST_PATH_SDK_VERSIONS),
            )
            return None
        if (
            type(self._tap.message_writer) is not Writer
            or len(maps) != 1
            or type(maps[0]) is not SameRecordTransform
            or maps[0].flattening_enabled
            or not all(self.mask["properties", name] for name in self.schema["properties"])
        ):
            return None
        head = _ENCODER.encode({"type": "RECORD", "stream": maps[0].stream_alias})
        version = self._stream_version
        tail: dict[str, t.Any] = {} if version is None else {"version": version}
        tail["time_extracted"] = datetime.now(UTC)
        return head[:-1] + b',"record":', b"," + _ENCODER.encode(tail)[1:] + b"\n"

    @override
    def _write_record_message(self, record: dict[str, t.Any]) -> None:
        """Write the RECORD line with one encode and one buffered write, when it is safe.

        Per record, the SDK builds a message object, reads the clock, runs type conformance,
        deselection and the stream map (all no-ops for these records, see
        `_fast_record_affixes`) and flushes stdout: most of a plain tap's CPU. The lines stay
        in stdout's buffer until the SDK writes its next message (which flushes), so a STATE
        still follows the records it covers.
        """
        affixes = self._record_affixes
        if affixes is None:
            super()._write_record_message(record)
            return
        try:
            sys.stdout.buffer.write(affixes[0] + _ENCODER.encode(record) + affixes[1])
        except OSError as exc:
            raise DownstreamError.wrap(exc) from exc
        self.state_manager.is_flushed = False

    @override
    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        """No child contexts without child streams (saves a copy and two calls per record)."""
        return super().generate_child_contexts(record, context) if self.child_streams else ()

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Yield the partition's records; after the last partition, activate the version.

        A full refresh's ACTIVATE_VERSION is sent only here, after every partition was read
        to a page whose `paging.cursor` was an explicit null, so a failed, interrupted or
        dry-run refresh never lets a target delete rows.
        """
        if self._full_refresh_versioned:
            self._stream_version = self._tap.initialized_at
        yield from super().get_records(context)
        partitions = self.partitions or []
        if (
            self._full_refresh_versioned
            and context == (partitions[-1] if partitions else None)
            and self.ABORT_AT_RECORD_COUNT is None
            and self._complete_walks == max(1, len(partitions))
        ):
            self._write_activate_version_message(self._tap.initialized_at)

    @override
    def _finalize_state(self, state: dict[str, t.Any] | None = None) -> None:
        """Write STATE as soon as a partition is done.

        The SDK writes STATE only after the last partition, so a failure in a later mode would
        throw away the bookmarks of the modes already read to the end.
        """
        super()._finalize_state(state)
        self._write_state_message()

    @property
    def _full_refresh_versioned(self) -> bool:
        return self.replication_method == "FULL_TABLE" and bool(
            self.config.get("emit_activate_version_messages")
        )


class ConnectionsStream(SmartcarStream):
    """Every vehicle connection of the application, one partition per mode.

    The API sorts newest first and has no "since" filter, so an incremental read walks pages
    until it reaches a connection older than the partition's bookmark and stops there. The
    schema is the union of both API versions: under v2 the v3-only fields are absent (null).
    """

    name = "connections"
    primary_keys = ("userId", "vehicleId")
    replication_key = "connectedAt"
    is_sorted = False
    schema = th.PropertiesList(
        th.Property(
            "userId",
            th.StringType,
            required=True,
            description="ID of the Smartcar user who authorized the connection (UUID v4).",
        ),
        th.Property(
            "vehicleId",
            th.StringType,
            required=True,
            description="ID of the connected vehicle (UUID v4). A vehicle shared by several "
            "users has one connection per user.",
        ),
        th.Property(
            "connectedAt",
            th.DateTimeType,
            required=True,
            description="When the connection was created, in UTC, normalised to "
            "YYYY-MM-DDTHH:MM:SS.ffffffZ.",
        ),
        th.Property(
            "mode",
            th.StringType,
            required=True,
            description="Vehicle mode: live, simulated, or test (deprecated by Smartcar, v2 "
            "only). Not an enum, so that a mode Smartcar adds later still loads.",
        ),
        th.Property(
            "connectionId",
            th.StringType,
            description="ID of the connection itself (API v3 only; null under v2).",
        ),
        th.Property(
            "permissions",
            th.ArrayType(th.StringType),
            description="Permissions the user granted, e.g. read_odometer (API v3 only).",
        ),
        th.Property("make", th.StringType, description="Vehicle make (API v3 only)."),
        th.Property("model", th.StringType, description="Vehicle model (API v3 only)."),
        th.Property("year", th.IntegerType, description="Vehicle model year (API v3 only)."),
        th.Property(
            "powertrainType",
            th.StringType,
            description="Vehicle powertrain as Smartcar reports it, e.g. BEV, PHEV, ICE (API "
            "v3 only).",
        ),
        th.Property(
            "updatedAt",
            th.DateTimeType,
            description="When the connection last changed, in UTC, normalised like "
            "connectedAt (API v3 only).",
        ),
    ).to_dict()

    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE
    """`_parse_page` builds every record with exactly the schema's types."""
    API_VERSION: t.ClassVar[str] = "v2"
    """The API version, kept in each v3 partition's state: bookmarks never mix versions."""
    PAGES_SHIFT: t.ClassVar[bool] = False
    """Whether pages are numbered, not keyed: a connection added or removed mid-walk shifts
    the rest, so the walk sends each connection once, checks `Page.total`, and resumes by
    position (`_resume_token`)."""

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]]:
        """One partition per configured mode, keyed by the filters too.

        A bookmark is only valid for the filter it was made under: one made for `user_id=A`
        must not cut off user B's older connections.
        """
        return mode_partitions(self.config)

    @override
    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Do nothing: `request_records` keeps each mode's bookmark, checkpoint and ties.

        The SDK's bookkeeping for unsorted streams cannot resume a walk (it says so in a
        WARNING on every run), compares every record and ignores its own signpost in
        partitions, so a future-dated connection would become the bookmark.
        """

    @override
    def request_records(self, context: Context | None) -> Iterator[dict[str, t.Any]]:
        """Read the partition newest first down to its bookmark, resuming an interrupted walk.

        Overridden rather than using an SDK paginator because the stop depends on the
        partition's state, which paginators cannot see, and each body is parsed once for both
        its records and its next page. The bookmark logic, all here and in `_read`:

        - the walk stops at the first connection older than the bookmark (or `start_date`);
          connections at the bookmark instant are emitted unless the state lists them as sent
          (`keys_at_bookmark`), so a late tie is never lost and nothing is sent twice;
        - after each page, the partition's `checkpoint` (next page, newest instant and its
          keys, last instant read, the bookmark read down to) is written; a rerun first reads
          the new head down to that newest instant, then goes on from the next page;
        - the bookmark moves, to the newest instant read but never past the run's start, only
          when the walk is complete;
        - the stop is only trusted in newest-first order: once a connection is newer than one
          before it, or the API does not say the list is newest first, the walk reads to the
          last page;
        - where pages shift (`PAGES_SHIFT`), a connection is sent once per run, and a walk
          under which the list changed (`_Walk.doubt`) is read again, at most `REREADS` times;
          if it still cannot be trusted, neither the bookmark nor ACTIVATE_VERSION follows.
        """
        state = self._walk_state(context)
        floor, skip = self._floor(context, state)
        checkpoint = self._checkpoint(context, state, floor)
        sent: set[str] = set()
        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            for attempt in range(REREADS + 1):
                walk = _Walk(context, floor, skip, sent)
                ended = None
                if checkpoint is not None:
                    ended = yield from self._resume(walk, checkpoint, state, counter)
                    checkpoint = None
                if ended is None:
                    ended = yield from self._read(walk, None, state, counter)
                if ended == "cut":
                    return
                doubt = walk.doubt(ended, strict=state is None)
                if doubt is None or attempt == REREADS:
                    break
                self.logger.warning(
                    "Connections %s: %s, so a connection may have been skipped: reading this "
                    "mode again (%d of %d)",
                    json.dumps(context),
                    doubt,
                    attempt + 1,
                    REREADS,
                )
        if doubt is None:
            self._complete_walks += ended == "end"
            if state is not None:
                self._settle(state, walk)
        else:
            self.logger.warning(
                "Connections %s: %s on every one of %d reads: %s. The next run reads it again",
                json.dumps(context),
                doubt,
                REREADS + 1,
                "the bookmark stays where it was"
                if state is not None
                else "no ACTIVATE_VERSION is sent, so the target deletes nothing",
            )
            if state is not None:
                state.pop("checkpoint", None)
                self.state_manager.is_flushed = False
        self._log_progress(walk, done=True)

    def _resume(
        self,
        walk: _Walk,
        checkpoint: dict[str, t.Any],
        state: dict[str, t.Any] | None,
        counter: t.Any,
    ) -> Generator[dict[str, t.Any], None, str | None]:
        """Read the new head down to the checkpoint's newest instant, then go on from its page.

        Returns:
            How the walk ended, or None if the checkpoint was stale and the mode must be read
            from the top.
        """
        head = _Walk(
            walk.context, checkpoint["newest"], frozenset(checkpoint["newest_keys"]), walk.sent
        )
        ended = yield from self._read(head, None, None, counter)
        walk.absorb(head, checkpoint)
        if ended == "cut":
            return ended
        # Whatever the head did (even reach the last page, out of order or on a shrunken
        # list), what lies below the checkpoint's newest instant is only read from its page.
        try:
            if self.PAGES_SHIFT and walk.unordered:
                msg = "the list is not newest first, so a page number does not say where it was"
                raise _StaleCheckpoint(msg)
            token = self._resume_token(checkpoint, head)
            return (yield from self._read(walk, token, state, counter, checkpoint["last"]))
        except _StaleCheckpoint as exc:
            self.logger.warning(
                "The checkpoint for %s cannot be used (%s): reading this mode from the top "
                "again, bookmark unchanged",
                json.dumps(walk.context),
                exc,
            )
            walk.last, walk.unordered = "", head.unordered  # the top is read afresh
            walk.resumed = False
            return None

    def _identity(self, record: dict[str, t.Any], key: str) -> str:
        """What tells list items apart, for the check against the list's size: the key here."""
        return key

    def _resume_token(self, checkpoint: dict[str, t.Any], head: _Walk) -> str:
        """The page to go on from: the checkpoint's own (a cursor does not shift).

        Raises:
            _StaleCheckpoint: If the checkpoint cannot say where to go on.
        """
        return str(checkpoint["cursor"])

    def _read(  # noqa: PLR0912, PLR0915
        self,
        walk: _Walk,
        token: str | None,
        state: dict[str, t.Any] | None,
        counter: t.Any,
        at_most: str = "",
    ) -> Generator[dict[str, t.Any], None, str]:
        """Read pages from `token` down to `walk.floor`, checkpointing into `state` after each.

        Args:
            walk: The walk to read and update.
            token: Where to start; None for the first page.
            state: The partition's state to checkpoint into, or None.
            counter: The request counter.
            at_most: Resuming: the last instant read before. With a cursor the first page
                must not start after it; where pages shift, what is newer is skipped as read.

        Returns:
            "floor" (reached the bookmark), "end" (the last page) or "cut" (a dry run's record
            limit).

        Raises:
            _StaleCheckpoint: If `at_most` is set and the first page is refused or too new.
            SmartcarAPIError: If the API hands out a page token it already gave (a paging
                loop) or empty pages without end.
        """
        fetch = self.request_decorator(self._fetch_page)
        limit = self.ABORT_AT_RECORD_COUNT  # set in a dry run (`--test`)
        started, floor, skip, shift = self.started, walk.floor, walk.skip, self.PAGES_SHIFT
        above, at_most = (at_most, "") if shift else ("", at_most)
        seen: set[str] = set()
        empty = 0
        while True:
            if limit is not None and self._emitted >= limit:
                return "cut"  # stop a dry run without the SDK's abort, an error on a good test
            page = _fetch_from_checkpoint(fetch, walk.context, token, at_most)
            records, token, at_most = page.records, page.next, ""
            counter.increment()
            walk.pages += 1
            if page.total is not None:
                if walk.total is not None and page.total < walk.total and not walk.shrank:
                    first = page.records[0] if page.records else None
                    moved_down = first is not None and (
                        (above and first["connectedAt"] > above)
                        or self._identity(first, _key(first)) in walk.read
                    )
                    if not moved_down:
                        walk.shrank = (
                            f"meta.totalCount fell from {walk.total} to {page.total} before "
                            f"page {walk.pages}"
                        )
                walk.totals.add(page.total)
                walk.total = page.total
            if not page.ordered and not walk.unordered:
                walk.unordered = True
                self._warn_unordered(walk.context, walk.pages, "", "")
            if limit is not None:
                records = records[: limit - self._emitted]
                self._emitted += len(records)
            reached = False
            previous, newest, keys = walk.last, walk.newest, walk.newest_keys
            for record in records:
                stamp = record["connectedAt"]
                if above:
                    if stamp > above:
                        continue  # read before the interruption, shifted down since
                    above = ""
                if stamp > previous and previous and not walk.unordered:
                    walk.unordered = True
                    self._warn_unordered(walk.context, walk.pages, stamp, previous)
                previous = stamp
                key = _key(record) if shift or (stamp == floor and skip) else ""
                if shift:
                    walk.read.add(self._identity(record, key))
                if stamp < floor:
                    reached = True
                    continue
                if stamp == floor and skip and key in skip:
                    continue
                if stamp > started:
                    self._warn_future(record)
                elif stamp >= newest:
                    if stamp > newest:
                        newest, keys = stamp, set()
                    keys.add(key or _key(record))
                if shift:
                    if key in walk.sent:
                        continue
                    walk.sent.add(key)
                walk.records += 1
                yield record
            walk.last, walk.newest, walk.newest_keys = previous, newest, keys
            walk.top = walk.top or (records[0]["connectedAt"] if records else "")
            if limit is not None and self._emitted >= limit:
                return "cut"
            if token is None:
                return "end"
            if reached and not walk.unordered:
                return "floor"
            empty = 0 if records else empty + 1
            _check_paging(walk, token, seen, empty)
            seen.add(token)
            if state is not None and walk.newest and not (shift and walk.unordered):
                state["checkpoint"] = walk.checkpoint(token, self.config["page_size"])
                self.state_manager.is_flushed = False
                self._write_state_message()
            self._log_progress(walk)

    def _warn_future(self, record: dict[str, str]) -> None:
        self.logger.warning(
            "The connection of vehicle %s is dated %s, after this run started (%s): emitted, "
            "but not used as the bookmark. Check the clock, or report it to Smartcar",
            record["vehicleId"],
            record["connectedAt"],
            self.started,
        )

    def _warn_unordered(self, context: Context | None, page: int, stamp: str, before: str) -> None:
        why = (
            f"page {page} has {stamp} after {before}"
            if stamp
            else "the API does not say so (meta.orderDirection is not desc)"
        )
        self.logger.warning(
            "Smartcar API pages for %s are not newest first (%s): reading this mode to its "
            "last page instead of stopping at the bookmark",
            json.dumps(context),
            why,
        )

    def _walk_state(self, context: Context | None) -> dict[str, t.Any] | None:
        """The partition's state, where an incremental walk keeps its bookmark and checkpoint.

        None for a full refresh, and in a dry run, whose one record is no bookmark.
        """
        if self.replication_method != "INCREMENTAL" or self.ABORT_AT_RECORD_COUNT is not None:
            return None
        return self.get_context_state(context)

    def _floor(
        self, context: Context | None, state: dict[str, t.Any] | None
    ) -> tuple[str, frozenset[str]]:
        """Where the walk stops (the bookmark or `start_date`, "" for none) and the keys sent there.

        A bookmark after the run's start can only come from bad data (or an older release that
        let a future-dated connection set it); trusting it would skip every real connection,
        so it is dropped and the mode read again from `start_date`.
        """
        if self.replication_method != "INCREMENTAL":
            return "", frozenset()
        start_date = self.config.get("start_date")
        made_under = (state or {}).get("api_version", "v2")
        if state is not None and made_under != self.API_VERSION:
            fresh = not (state.get("replication_key_value") or state.get("checkpoint"))
            if not fresh:
                self.logger.warning(
                    "The bookmark for %s was made under API %s, not %s: reading this mode "
                    "afresh (once) from %s",
                    json.dumps(context),
                    printable(made_under, 10),
                    self.API_VERSION,
                    start_date or "the beginning",
                )
            for key in ("replication_key_value", "keys_at_bookmark", "checkpoint"):
                state.pop(key, None)
            if self.API_VERSION == "v2":
                state.pop("api_version", None)
            else:
                state["api_version"] = self.API_VERSION
            if not fresh:
                return (normalize_timestamp(start_date) if start_date else ""), frozenset()
        start = self.get_starting_replication_key_value(context)
        floor = normalize_timestamp(start) if start else ""
        if floor > self.started:
            self.logger.warning(
                "The bookmark for %s is %s, after this run started (%s), so it cannot be "
                "right: reading this mode again from %s",
                json.dumps(context),
                floor,
                self.started,
                start_date or "the beginning",
            )
            if state is not None:
                for key in ("replication_key_value", "keys_at_bookmark", "checkpoint"):
                    state.pop(key, None)
            return (normalize_timestamp(start_date) if start_date else ""), frozenset()
        keys = (state or {}).get("keys_at_bookmark")
        mark = (state or {}).get("replication_key_value")
        if not isinstance(keys, list) or not mark or normalize_timestamp(mark) != floor:
            return floor, frozenset()
        return floor, frozenset(key for key in keys if isinstance(key, str))

    def _checkpoint(
        self, context: Context | None, state: dict[str, t.Any] | None, floor: str
    ) -> dict[str, t.Any] | None:
        """The partition's checkpoint, if it was made for this bookmark and `page_size`."""
        saved = (state or {}).get("checkpoint")
        if state is None or saved is None:
            return None
        try:
            usable = (
                isinstance(saved, dict)
                and isinstance(saved.get("cursor"), str)
                and bool(saved["cursor"])
                and saved.get("floor") == floor
                and saved.get("page_size") == self.config["page_size"]
                and isinstance(saved.get("newest_keys"), list)
                and all(isinstance(key, str) for key in saved["newest_keys"])
                and isinstance(saved.get("unordered", False), bool)
                and normalize_timestamp(saved["last"]) <= self.started
                and normalize_timestamp(saved["newest"]) == saved["newest"] <= self.started
            )
        except (KeyError, TypeError, ValueError):
            usable = False
        if not usable:
            self.logger.warning(
                "Ignoring the checkpoint for %s: it was made for another bookmark or "
                "page_size, or is malformed. Reading this mode from the top, bookmark unchanged",
                json.dumps(context),
            )
            state.pop("checkpoint", None)
            return None
        return t.cast("dict[str, t.Any]", saved)

    def _settle(self, state: dict[str, t.Any], walk: _Walk) -> None:
        """After a complete walk: move the bookmark and keep the keys sent at its instant."""
        state.pop("checkpoint", None)
        if walk.newest > walk.floor:
            state["replication_key"] = self.replication_key
            state["replication_key_value"] = walk.newest
            state["keys_at_bookmark"] = sorted(walk.newest_keys)
        elif walk.newest and walk.newest == walk.floor:
            state["keys_at_bookmark"] = sorted(walk.skip | walk.newest_keys)
        self.state_manager.is_flushed = False

    def _log_progress(self, walk: _Walk, *, done: bool = False) -> None:
        """One INFO line about the walk, at most every `PROGRESS_SECONDS` (and at its end)."""
        now = time.monotonic()
        if not done and now - walk.logged < PROGRESS_SECONDS:
            return
        walk.logged = now
        elapsed = max(now - walk.began, 1e-3)
        estimate = walk.estimate(elapsed)
        self.logger.info(
            "Connections %s %s: %d pages, %d connections, read back to %s (stops at %s), "
            "%.1f requests/min%s",
            json.dumps(walk.context),
            "finished" if done else "in progress",
            walk.pages,
            walk.records,
            walk.last or "-",
            walk.floor or "the beginning",
            walk.pages / elapsed * 60,
            f", about {estimate / 60:.0f} min left" if estimate is not None and not done else "",
        )
