"""The `connections` stream: Smartcar's vehicle connections, newest first."""

from __future__ import annotations

import functools
import logging
import random
import re
import sys
import time
import typing as t
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import msgspec
import pendulum
import requests
from singer_sdk import typing as th
from singer_sdk.authenticators import BasicAuthenticator
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.helpers.types import Context
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.streams import RESTStream
from singer_sdk.streams.rest import PageContext
from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from singer_sdk import Tap

MODES = ("live", "simulated", "test")
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0

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
_ADVICE = {
    400: "check the filters (user_id, vehicle_id, modes) and page_size",
    401: "check management_token: it must be the application's Management API token "
    "(Smartcar Dashboard > Configuration)",
    403: "the management token may not read this application's connections; check the token "
    "and the application's permissions in the Smartcar Dashboard",
    404: "check api_url (default https://management.smartcar.com/v2.0)",
    430: "Smartcar refused the request for billing reasons; check the application's plan and "
    "billing in the Smartcar Dashboard",
}


class SmartcarError(Exception):
    """An expected failure that ends the run with one human-readable line."""

    exit_code = 1


class SmartcarAPIError(SmartcarError, FatalAPIError):
    """The Smartcar API refused a request, or kept failing past `max_retry_seconds`."""


class _UnexpectedBody(RetriableAPIError):
    """A 200 response whose body is not the documented JSON (e.g. cut off by a proxy)."""


class _Connection(msgspec.Struct, rename="camel"):
    """A connection as the API returns it; decoding fails if a field is missing or not a string."""

    user_id: str
    vehicle_id: str
    connected_at: str
    mode: str


class _Paging(msgspec.Struct):
    """`paging`; a null or missing `cursor` means the last page."""

    cursor: str | None = None


class _Page(msgspec.Struct):
    """A page of `GET /management/connections`; unknown fields are ignored."""

    connections: list[_Connection]
    paging: _Paging | None = None


_PAGE_DECODER = msgspec.json.Decoder(_Page)


def normalize_timestamp(value: str) -> str:
    """Return `value` as a fixed-width UTC timestamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    Bookmarks are compared as strings (by the SDK too), which is only correct when every
    value has the same width and zone: `...56Z`, `...56.5Z` and `...56.789+00:00` all become
    microsecond-precision UTC. The common `Z` forms skip the full parser.

    Raises:
        ValueError: If `value` is not an ISO 8601 date-time.
    """
    if _FAST_TIMESTAMP.fullmatch(value):
        _check_calendar([value])
        return value[:-1] + _PADDING[len(value)]
    try:
        parsed = pendulum.parse(value, exact=True)
    except (ValueError, TypeError, pendulum.parsing.exceptions.ParserError) as exc:
        msg = f"{value!r} is not an ISO 8601 date-time"
        raise ValueError(msg) from exc
    if isinstance(parsed, pendulum.Date) and not isinstance(parsed, pendulum.DateTime):
        parsed = pendulum.datetime(parsed.year, parsed.month, parsed.day)
    if not isinstance(parsed, pendulum.DateTime):
        msg = f"{value!r} is not an ISO 8601 date-time"
        raise ValueError(msg)
    return parsed.in_timezone("UTC").format("YYYY-MM-DD[T]HH:mm:ss.SSSSSS[Z]")


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


def describe_response(response: requests.Response) -> str:
    """Summarise an error response from Smartcar's error JSON, never echoing the raw body.

    Args:
        response: An HTTP response with an error status.

    Returns:
        For example `401 AUTHENTICATION: Invalid token (requestId 5d2..., see https://...)`.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        reason = response.reason or "error"
        return f"{response.status_code} {reason} (the body was not Smartcar's error JSON)"
    text = f"{response.status_code} {body.get('type') or response.reason}"
    if body.get("description"):
        text += f": {body['description']}"
    details = [f"requestId {body['requestId']}"] if body.get("requestId") else []
    if body.get("docURL"):
        details.append(f"see {body['docURL']}")
    return f"{text} ({', '.join(details)})" if details else text


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    if not header:
        return None
    if header.strip().isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    return not isinstance(sys.exc_info()[1], SmartcarError)


def _failure_summary(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(exc, _UnexpectedBody):
        return str(exc)
    if response is not None:
        return describe_response(response)
    return type(exc).__name__


class ConnectionsStream(RESTStream[str]):
    """Every vehicle connection of the application, one partition per mode.

    The API sorts newest first and has no "since" filter, so an incremental read walks pages
    until it reaches a connection older than the partition's bookmark and stops there.
    """

    name = "connections"
    path = "/management/connections"
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
            description="Vehicle mode: live, simulated, or test (deprecated by Smartcar). Not "
            "an enum, so that a mode Smartcar adds later still loads.",
        ),
    ).to_dict()

    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE
    """`_parse_page` builds every record with exactly the schema's types (four strings)."""

    _last_request_at = 0.0
    _record_affixes: tuple[bytes, bytes] | None = None
    _progress_context: Context | None = None
    _progress_value: t.Any = None

    def __init__(self, tap: Tap) -> None:
        """Create the stream; expected failures skip the SDK's generic error line.

        The SDK logs "An unhandled error occurred" before re-raising any error; for a
        `SmartcarError` the command line prints the one line that says what happened.
        """
        super().__init__(tap)
        self.logger.addFilter(_not_an_expected_failure)

    @property
    @override
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")

    @property
    @override
    def authenticator(self) -> BasicAuthenticator:
        return BasicAuthenticator(username="default", password=self.config["management_token"])

    @property
    @override
    def timeout(self) -> int:
        return int(self.config["request_timeout"])

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]]:
        """One partition per configured mode, keyed by the filters too.

        A bookmark is only valid for the filter it was made under: one made for `user_id=A`
        must not cut off user B's older connections. The filter keys are named like the
        record fields they restrict, so the SDK finds them already present in every record.
        """
        filters = {
            field: self.config[setting]
            for field, setting in (("userId", "user_id"), ("vehicleId", "vehicle_id"))
            if self.config.get(setting)
        }
        return [{"mode": mode, **filters} for mode in dict.fromkeys(self.config["modes"])]

    @property
    @override
    def emit_activate_version_messages(self) -> bool:
        """Always False, so the SDK does not send ACTIVATE_VERSION before the records.

        The SDK sends it at the start of a FULL_TABLE sync, which lets a target delete every
        old row before the new ones arrive. `get_records` sends it after the last partition.
        """
        return False

    @override
    def get_replication_key_signpost(self, context: Context | None = None) -> str:
        """The tap's start time, in the same fixed-width form as every bookmark."""
        started = pendulum.from_timestamp(self._tap.initialized_at / 1000)
        return normalize_timestamp(started.to_iso8601_string())

    @override
    def get_url_params(
        self, context: Context | None, next_page_token: str | None
    ) -> dict[str, t.Any]:
        context = context or {}
        return {
            "limit": self.config["page_size"],
            "mode": context["mode"],
            "user_id": context.get("userId"),
            "vehicle_id": context.get("vehicleId"),
            "cursor": next_page_token,
        }

    @override
    def request_decorator(self, func: Callable[..., t.Any]) -> Callable[..., t.Any]:
        """Retry transient failures, honouring `Retry-After`, for up to `max_retry_seconds`.

        Replaces the SDK's backoff, which ignores `Retry-After`, gives up after about 33
        seconds (Smartcar's bucket refills at 2 requests a minute) and logs whole response
        bodies on every try. Also paces requests to `max_requests_per_minute`.
        """

        @functools.wraps(func)
        def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            budget = float(self.config["max_retry_seconds"])
            deadline = time.monotonic() + budget
            attempt = 0
            while True:
                self._pace()
                try:
                    return func(*args, **kwargs)
                except _RETRIABLE as exc:
                    attempt += 1
                    wait = _retry_after(exc)
                    if wait is None:
                        ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                        wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311
                    summary = _failure_summary(exc)
                    if time.monotonic() + wait > deadline:
                        msg = (
                            f"Smartcar API still failing after {attempt} attempts over "
                            f"max_retry_seconds={budget:g}: {summary}. Rerun later, or raise "
                            "max_retry_seconds; the last STATE emitted is safe to resume from"
                        )
                        raise SmartcarAPIError(msg) from exc
                    self.logger.warning(
                        "Smartcar API %s; retrying in %.1f s (attempt %d)", summary, wait, attempt
                    )
                    time.sleep(wait)

        return call

    def _pace(self) -> None:
        per_minute = self.config.get("max_requests_per_minute")
        if per_minute:
            gap = 60.0 / per_minute - (time.monotonic() - self._last_request_at)
            if gap > 0:
                time.sleep(gap)
        self._last_request_at = time.monotonic()

    @override
    def validate_response(self, response: requests.Response) -> None:
        """Classify a response without putting its body into any message.

        The SDK's messages include the whole body and URL; Smartcar's error JSON is
        summarised instead, with what to do about it.
        """
        status = response.status_code
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            raise RetriableAPIError(describe_response(response), response)
        if status >= HTTPStatus.BAD_REQUEST:
            advice = _ADVICE.get(status, "see Smartcar's documentation for this error")
            msg = f"Smartcar API error {describe_response(response)}. To fix: {advice}"
            raise SmartcarAPIError(msg)

    def _fetch_page(
        self, context: Context | None, cursor: str | None
    ) -> tuple[list[dict[str, str]], str | None]:
        request = self.get_http_request(
            page=PageContext(stream_context=context, next_page_token=cursor)
        )
        prepared = self.build_prepared_request(
            method=request.method,
            url=request.url,
            params=request.encode_params(),
            headers=request.headers,
        )
        response = self._request(prepared, context)
        return self._parse_page(response)

    def _parse_page(self, response: requests.Response) -> tuple[list[dict[str, str]], str | None]:
        """Decode a page straight into typed records, and prepare its RECORD lines.

        Returns:
            The page's records and the next page's cursor (None on the last page).

        Raises:
            _UnexpectedBody: If the body is not the documented JSON.
        """
        try:
            page = _PAGE_DECODER.decode(response.content)
            items = page.connections
            stamps = _normalize_timestamps([item.connected_at for item in items])
        except (msgspec.DecodeError, ValueError) as exc:
            msg = f"200 with a body that is not the expected connections JSON ({exc})"
            raise _UnexpectedBody(msg, response) from exc
        records = [
            {
                "userId": item.user_id,
                "vehicleId": item.vehicle_id,
                "connectedAt": stamp,
                "mode": item.mode,
            }
            for item, stamp in zip(items, stamps, strict=True)
        ]
        self._record_affixes = self._fast_record_affixes()
        return records, page.paging.cursor if page.paging else None

    def _fast_record_affixes(self) -> tuple[bytes, bytes] | None:
        """Return the bytes around a record's JSON in its RECORD line, if the fast path applies.

        It applies when the line would be exactly what the SDK writes: the msgspec writer,
        every property selected and only the identity stream map (no map, alias, filter or
        flattening configured). `time_extracted` is when the page arrived, taken once per page
        (the SDK reads the clock per record, at write time). This mirrors SDK internals of the
        pinned release; `tests/test_performance.py` compares the two paths' output.
        """
        maps = self.stream_maps
        if (
            type(self._tap.message_writer) is not MsgSpecWriter
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
        sys.stdout.buffer.write(affixes[0] + _ENCODER.encode(record) + affixes[1])
        self.state_manager.is_flushed = False

    @override
    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Skip records not newer than the partition's newest so far, the SDK's own rule.

        With `is_sorted = False` and `check_sorted` (the default) the SDK keeps the highest
        value; it finds the partition's state and compares for every record, and on
        newest-first pages nearly every call changes nothing. Each partition is its own
        context object, so a new partition starts afresh.
        """
        value = latest_record.get(self.replication_key or "")
        mark = self._progress_value
        if context is self._progress_context and None not in (mark, value) and value <= mark:
            return
        super()._increment_stream_state(latest_record, context=context)
        self._progress_context = context
        self._progress_value = value if self.replication_method == "INCREMENTAL" else None

    @override
    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        """No child contexts without child streams (saves a copy and two calls per record)."""
        return super().generate_child_contexts(record, context) if self.child_streams else ()

    @override
    def request_records(self, context: Context | None) -> Iterator[dict[str, str]]:
        """Read the partition's pages, newest first, stopping at its bookmark.

        Overridden rather than using an SDK paginator because the stop condition depends on
        the partition's bookmark, which paginators cannot see, and each body is parsed once
        for both its records and its cursor. Records at exactly the bookmark are emitted again
        (targets dedupe on the key), so a connection that shares that instant is never lost.

        Raises:
            SmartcarAPIError: If the API hands out a cursor it already gave (a paging loop).
        """
        since = self._since(context)
        fetch = self.request_decorator(self._fetch_page)
        cursor: str | None = None
        seen: set[str] = set()
        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            while True:
                records, cursor = fetch(context, cursor)
                counter.increment()
                for record in records:
                    if since is not None and record["connectedAt"] < since:
                        return
                    yield record
                if cursor is None:
                    return
                if cursor in seen:
                    msg = (
                        f"Smartcar API paging loop: page {len(seen) + 1} returned a cursor "
                        "already seen. Report it to Smartcar support; the last STATE emitted "
                        "is safe to resume from"
                    )
                    raise SmartcarAPIError(msg)
                seen.add(cursor)

    def _since(self, context: Context | None) -> str | None:
        if self.replication_method != "INCREMENTAL":
            return None
        start = self.get_starting_replication_key_value(context)
        return normalize_timestamp(start) if start else None

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Yield the partition's records; after the last partition, activate the version.

        A full refresh's ACTIVATE_VERSION is sent only here, after every partition was read
        to the end, so a failed or interrupted refresh never lets a target delete rows.
        """
        if self._full_refresh_versioned:
            self._stream_version = self._tap.initialized_at
        yield from super().get_records(context)
        if self._full_refresh_versioned and context == self.partitions[-1]:
            self._write_activate_version_message(self._tap.initialized_at)

    @property
    def _full_refresh_versioned(self) -> bool:
        return self.replication_method == "FULL_TABLE" and bool(
            self.config.get("emit_activate_version_messages")
        )
