"""The SDK glue: what every stream of either API version does with the Singer SDK.

`SmartcarStream` requests a page (`fetch`), hands each partition to a `Walk`, writes STATE and
RECORD messages and decides when ACTIVATE_VERSION may follow. Each API version (`v2.py`,
`v3.py`) says where its pages are, how to authorise a request and how to parse a page.
"""

from __future__ import annotations

import functools
import importlib.metadata
import operator
import sys
import typing as t
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import requests
from singer_sdk import metrics
from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.singerlib import StateMessage
from singer_sdk.streams import RESTStream
from typing_extensions import override

from tap_smartcar_connections.errors import DownstreamError, SmartcarError
from tap_smartcar_connections.logs import debug_is_logged
from tap_smartcar_connections.timestamps import stamp_of
from tap_smartcar_connections.walk import Course, DryRun, Walk

if t.TYPE_CHECKING:
    import logging
    from collections.abc import Iterable, Iterator

    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context

    from tap_smartcar_connections.pages import Page
    from tap_smartcar_connections.paging import Paging
    from tap_smartcar_connections.policy import Clock
    from tap_smartcar_connections.redaction import Redactor
    from tap_smartcar_connections.requester import Endpoint, Requester
    from tap_smartcar_connections.settings import Settings

FAST_PATH_SDK_VERSIONS = ("0.54.9",)
"""singer-sdk releases for which `tests/test_performance.py` compared the fast path's output;
`pyproject.toml` pins the same."""
SDK_VERSION = importlib.metadata.version("singer-sdk")
_ENCODER = msgspec.json.Encoder()

CONNECTION_SCHEMA = th.PropertiesList(
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
        description="Vehicle powertrain as Smartcar reports it, e.g. BEV, PHEV, ICE (API v3 only).",
    ),
    th.Property(
        "updatedAt",
        th.DateTimeType,
        description="When the connection last changed, in UTC, normalised like "
        "connectedAt (API v3 only).",
    ),
).to_dict()
"""The `connections` schema of both API versions: a v2 record leaves the v3-only fields out."""


@dataclass
class Run:
    """What one run's streams share: settings, clock, secrets, requests and when it started.

    Under v3 three streams and a token endpoint take turns; they pace, retry and redact as one.
    """

    settings: Settings
    clock: Clock
    redactor: Redactor
    requester: Requester
    started: str
    """The run's start, as a bookmark: no bookmark moves past it."""
    version: int
    """The run's start in milliseconds: a full refresh's table version."""

    @classmethod
    def start(
        cls, settings: Settings, clock: Clock, redactor: Redactor, logger: logging.Logger
    ) -> Run:
        """A run starting now."""
        from tap_smartcar_connections.requester import Requester  # noqa: PLC0415

        if SDK_VERSION not in FAST_PATH_SDK_VERSIONS:
            logger.warning(
                "singer-sdk %s is not the release the tap was checked against (%s): RECORD "
                "messages are written by the SDK's slower path",
                SDK_VERSION,
                ", ".join(FAST_PATH_SDK_VERSIONS),
            )
        now = datetime.fromtimestamp(clock.wall(), UTC)
        requester = Requester(settings, clock, redactor, logger)
        return cls(settings, clock, redactor, requester, stamp_of(now), int(now.timestamp() * 1000))


class Writer(MsgSpecWriter):
    """The SDK's msgspec writer, which also remembers the last STATE it wrote.

    A failed write to stdout becomes one clear `DownstreamError`. After SIGTERM or SIGINT the
    last STATE is written once more as the run's final message: some targets (target-jsonl
    0.1.4) forget a STATE that RECORDs followed, and would resume from an older one.
    """

    last_state: StateMessage | None = None

    @override
    def write_message(self, message: t.Any) -> None:
        try:
            super().write_message(message)
        except OSError as exc:
            raise DownstreamError.wrap(exc) from exc
        if isinstance(message, StateMessage):
            self.last_state = message

    def repeat_last_state(self) -> None:
        """Write the last STATE again, if there was one (a run stopping early)."""
        if self.last_state is not None:
            self.write_message(self.last_state)


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    return not isinstance(sys.exc_info()[1], SmartcarError)


class SmartcarStream(RESTStream[str]):
    """A stream read from a Smartcar API, a partition at a time, each by a `Walk`.

    Subclasses say where (`endpoint`, `path`), how to authorise (`authorize`), how to page
    (`paging`) and how to parse a page (`parse_response`).
    """

    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE
    """`parse_response` builds every record with exactly the schema's types."""
    API_VERSION: t.ClassVar[str]
    """The API version, kept in each v3 partition's state: bookmarks never mix versions."""
    BY_MODE: t.ClassVar[bool] = True
    """Whether the stream is read once per configured mode, with the user and vehicle filters."""
    _record_affixes: tuple[bytes, bytes] | None = None

    def __init__(self, tap: Tap, run: Run) -> None:
        """Create the stream for `run`; expected failures skip the SDK's generic error line.

        The SDK logs "An unhandled error occurred" before re-raising any error; for a
        `SmartcarError` the command line prints the one line that says what happened.
        """
        super().__init__(tap)
        self.run = run
        self.owner = tap
        self.logger.addFilter(_not_an_expected_failure)
        self._dry_run: DryRun | None = None
        self._complete = 0
        """Partitions read completely in this run (`Walk.records`), for ACTIVATE_VERSION."""

    @functools.cached_property
    def endpoint(self) -> Endpoint:
        """Where this stream's pages are, as the user configured it (made once per stream)."""
        raise NotImplementedError

    def paging(self) -> Paging:
        """How this stream's list pages."""
        raise NotImplementedError

    def authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """`request` with its credentials."""
        raise NotImplementedError

    @override
    def parse_response(self, response: requests.Response) -> Page:
        """Parse one page of the list: its records, the next page's token, its total and order.

        Raises:
            BrokenBody: If the body is not the documented data.
        """
        raise NotImplementedError

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]] | None:
        """One partition per mode and filter: a bookmark is only valid for what it was made for.

        One made for `user_id=A` must not cut off user B's older connections.
        """
        return self.run.settings.partitions() if self.BY_MODE else None

    @property
    @override
    def url_base(self) -> str:
        return self.endpoint.url.rstrip("/")

    @property
    @override
    def timeout(self) -> int:
        return int(self.run.settings.request_timeout)

    @property
    @override
    def http_headers(self) -> dict[str, t.Any]:
        """Ask for gzip only: `transport.read_body` decodes it with a bound on the output."""
        return {**super().http_headers, "Accept-Encoding": "gzip"}

    @property
    @override
    def emit_activate_version_messages(self) -> bool:
        """Always False, so the SDK does not send ACTIVATE_VERSION before the records.

        The SDK sends it at the start of a FULL_TABLE sync, which lets a target delete every
        old row before the new ones arrive. `get_records` sends it after the last partition.
        """
        return False

    def fetch(self, context: Context | None, token: str | None) -> Page:
        """Request and parse one page: the one place a page is requested.

        Parsing is part of the attempt, so that a broken body is retried like a dropped
        connection, as the failure policy says.
        """

        def attempt() -> Page:
            params = t.cast("dict[str, t.Any]", self.get_url_params(context, token))
            request = requests.Request(
                "GET",
                self.get_url(context),
                params={name: value for name, value in params.items() if value is not None},
                headers=self.http_headers,
            ).prepare()
            response = self.send(request)
            return self.parse_response(response)

        page = self.run.requester.call(attempt, self.endpoint)
        self._record_affixes = self._fast_record_affixes()
        return page

    def send(self, request: requests.PreparedRequest) -> requests.Response:
        """Send one authorised request (v3 overrides it: a 401 renews the access token once)."""
        return self.run.requester.send(self.authorize(request), self.endpoint, self._observe)

    def _observe(self, response: requests.Response) -> None:
        """Log the SDK's `http_request_duration` metric for a response, when it is shown.

        Metrics are logged at DEBUG (`logs.py`): unless DEBUG is logged, the point is not made.
        """
        if not debug_is_logged():
            return
        metrics.log(
            self.metrics_logger,
            metrics.Point(
                "timer",
                metric=metrics.Metric.HTTP_REQUEST_DURATION,
                value=response.elapsed.total_seconds(),
                tags={
                    metrics.Tag.STREAM: self.name,
                    metrics.Tag.ENDPOINT: self.path,
                    metrics.Tag.HTTP_STATUS_CODE: response.status_code,
                    metrics.Tag.STATUS: metrics.Status.SUCCEEDED
                    if response.status_code < 400
                    else metrics.Status.FAILED,
                },
            ),
        )

    def write_state(self) -> None:
        """Write STATE now, with the partitions' state as it is."""
        self.state_manager.is_flushed = False
        self._write_state_message()

    def course(self) -> Course:
        """What this stream's walks share."""
        settings = self.run.settings
        primary_key = operator.itemgetter(*self.primary_keys)
        return Course(
            paging=self.paging(),
            dedupe=lambda record: hash(primary_key(record)),
            stamp=self.replication_key,
            api_version=self.API_VERSION,
            page_size=settings.page_size,
            start_date=settings.start_date,
            started=self.run.started,
            setting=self.endpoint.setting,
        )

    @override
    def request_records(self, context: Context | None) -> Iterator[dict[str, t.Any]]:
        """Hand the partition to a `Walk` (see `walk.py`), counting its requests."""
        if self._dry_run is None:
            self._dry_run = DryRun(self.ABORT_AT_RECORD_COUNT)
        incremental = self.replication_method == "INCREMENTAL" and self.replication_key
        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            walk = Walk(
                self,
                self.course(),
                context,
                self.get_context_state(context) if incremental else None,
                settles=self.ABORT_AT_RECORD_COUNT is None,
                dry_run=self._dry_run,
                clock=self.run.clock,
                count=counter.increment,
            )
            self._complete += yield from walk.records()

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Yield the partition's records; after the last partition, activate the version.

        A full refresh's ACTIVATE_VERSION is sent only here, after every partition was read
        completely (`Walk.records`), so a failed, interrupted, doubtful or dry-run refresh
        never lets a target delete rows.
        """
        versioned = (
            self.replication_method == "FULL_TABLE"
            and self.run.settings.emit_activate_version_messages
        )
        if versioned:
            self._stream_version = self.run.version
        yield from super().get_records(context)
        partitions = self.partitions or []
        last = partitions[-1] if partitions else None
        if versioned and context == last and self._complete == max(1, len(partitions)):
            self._write_activate_version_message(self.run.version)

    @override
    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Do nothing: the `Walk` keeps each partition's bookmark, checkpoint and ties.

        The SDK's bookkeeping for unsorted streams cannot resume a walk (it says so in a
        WARNING on every run), compares every record and ignores its own signpost in
        partitions, so a future-dated connection would become the bookmark.
        """

    @override
    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        """No child contexts without child streams (saves a copy and two calls per record)."""
        return super().generate_child_contexts(record, context) if self.child_streams else ()

    def _fast_record_affixes(self) -> tuple[bytes, bytes] | None:
        """Return the bytes around a record's JSON in its RECORD line, if the fast path applies.

        It applies when the line would be exactly what the SDK writes: the tap's msgspec
        writer, every property selected and only the identity stream map (no map, alias,
        filter or flattening configured). `time_extracted` is when the page arrived, taken
        once per page (the SDK reads the clock per record, at write time). This mirrors SDK
        internals of the pinned release, which `tests/test_performance.py` compares.
        """
        maps = self.stream_maps
        if (
            SDK_VERSION not in FAST_PATH_SDK_VERSIONS
            or type(self.owner.message_writer) is not Writer
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
