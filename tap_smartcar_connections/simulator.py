"""A local simulator of Smartcar's Management API `GET /v2.0/management/connections`.

It serves generated or given connections over real HTTP on 127.0.0.1 the way Smartcar does:
Basic auth, `limit`/`cursor`/`user_id`/`vehicle_id`/`mode` parameters, newest-first keyset
paging with opaque cursors, Smartcar error bodies, and fault injection (`Faults`) for rate
limits, server errors, broken bodies, dropped connections and buggy cursors.

In tests::

    with SmartcarSimulator(generate_connections(250)) as sim:
        requests.get(f"{sim.api_url}/management/connections", auth=("default", sim.token))

As a process: `python -m tap_smartcar_connections.simulator --connections 1000 --url-file F`.
A separate process can then change it over HTTP (no auth, never under `/v2.0`):
`POST /_admin/connections` (a JSON list to add), `DELETE /_admin/connections?user_id=&vehicle_id=`,
`GET /_admin/requests` (the request log), `DELETE /_admin/requests` (clear it),
`GET /_admin/faults` and `PUT /_admin/faults` (a JSON object of `Faults` fields; omitted ones
are reset to their defaults).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import contextlib
import functools
import hashlib
import hmac
import json
import math
import random
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from json.encoder import encode_basestring_ascii
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MODES = ("live", "simulated", "test")
CONNECTIONS_PATH = "/v2.0/management/connections"
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

SortKey = tuple[int, str, str]
"""(microseconds since the epoch, userId, vehicleId): the order connections are served in."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TWO_YEARS_US = 730 * 24 * 3600 * 1_000_000
_PRECISIONS = (0, 1, 3)
# Base64 of these bytes is "+/+/", so every cursor needs URL-encoding, as real ones do.
_CURSOR_MAGIC = b"\xfb\xff\xbf"
_CHAOS = ("429", "500", "502", "503", "truncated", "reset")
_DOCS = "https://smartcar.com/docs/errors/api-errors/"
_ERRORS: dict[int, tuple[str, str | None, str, str, str | None]] = {
    # status: (type, code, docs page, description, resolution type)
    400: (
        "VALIDATION",
        "PARAMETER",
        "validation-errors#parameter",
        "The request is well formed but a parameter is invalid.",
        None,
    ),
    401: (
        "AUTHENTICATION",
        None,
        "authentication-errors",
        "The Authorization header is missing, malformed or holds invalid credentials.",
        None,
    ),
    403: (
        "PERMISSION",
        None,
        "permission-errors",
        "Your application is not permitted to use this endpoint.",
        None,
    ),
    404: (
        "RESOURCE_NOT_FOUND",
        "PATH",
        "resource-not-found-errors#path",
        "The requested path does not exist.",
        None,
    ),
    429: (
        "RATE_LIMIT",
        "SMARTCAR_API",
        "rate-limit-errors#smartcar-api",
        "Your application has exceeded its rate limit. Retry after the Retry-After header.",
        "RETRY_LATER",
    ),
    430: (
        "BILLING",
        "INVALID_PLAN",
        "billing-errors#invalid-plan",
        "This feature is not included in your current plan.",
        "CONTACT_SUPPORT",
    ),
    500: (
        "SERVER",
        "INTERNAL",
        "server-errors#internal",
        "An internal Smartcar error occurred.",
        "RETRY_LATER",
    ),
    502: (
        "UPSTREAM",
        "UNKNOWN_ISSUE",
        "upstream-errors#unknown-issue",
        "Smartcar received an unexpected error from an upstream source.",
        "RETRY_LATER",
    ),
}


@dataclass(frozen=True, slots=True)
class Connection:
    """One vehicle connection, with `connected_at` exactly as it is served."""

    user_id: str
    vehicle_id: str
    connected_at: str
    mode: str = "live"

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> Connection:
        """Build a connection from an API-shaped mapping (`userId`, `vehicleId`, ...).

        Args:
            data: A mapping with `userId`, `vehicleId`, `connectedAt` and optionally `mode`.

        Returns:
            The connection.

        Raises:
            ValueError: A key is missing, the mode is unknown or the timestamp is not ISO 8601.
        """
        try:
            connection = cls(
                str(data["userId"]),
                str(data["vehicleId"]),
                str(data["connectedAt"]),
                str(data.get("mode", "live")),
            )
        except KeyError as exc:
            raise ValueError(f"connection is missing {exc}: {dict(data)!r}") from None
        if connection.mode not in MODES:
            raise ValueError(f"unknown mode {connection.mode!r}")
        return connection

    @property
    def sort_key(self) -> SortKey:
        """The key connections are ordered by (newest first means descending).

        Raises:
            ValueError: `connected_at` is not an ISO 8601 timestamp.
        """
        return (instant(self.connected_at), self.user_id, self.vehicle_id)

    def to_json(self) -> bytes:
        """Return the connection as the API serves it, encoded."""
        fields = (self.user_id, self.vehicle_id, self.connected_at, self.mode)
        user, vehicle, at, mode = map(encode_basestring_ascii, fields)
        return (
            f'{{"userId":{user},"vehicleId":{vehicle},"connectedAt":{at},"mode":{mode}}}'.encode()
        )

    def to_dict(self) -> dict[str, str]:
        """Return the connection as the API serves it."""
        return {
            "userId": self.user_id,
            "vehicleId": self.vehicle_id,
            "connectedAt": self.connected_at,
            "mode": self.mode,
        }


@dataclass
class Faults:
    """Fault-injection knobs, all off by default; change them at any time.

    Every-k-th counts and `fail_after_page` count from the start or the last `clear_log()`.
    """

    latency: float = 0.0
    """Seconds added to every request."""
    rate_limit_every: int = 0
    """Every k-th request is answered 429 with `retry_after`."""
    retry_after: str | None = "1"
    """`Retry-After` sent with 429s (seconds or an HTTP date); None sends no header."""
    error_every: int = 0
    """Every k-th request is answered with `error_status`."""
    error_status: int = 500
    truncate_every: int = 0
    """Every k-th request, if it is a 200, gets half its JSON body (with a matching length)."""
    fail_after_page: int | None = None
    """After this many good pages, every request is answered with `fail_status`."""
    fail_status: int = 500
    html_errors: bool = False
    """Error bodies are a proxy's HTML page instead of Smartcar JSON."""
    chaos_rate: float = 0.0
    """Probability per request of a random 429/500/502/503, truncated body or reset."""
    chaos_seed: int = 0
    cursor_cycle: int | None = None
    """Pages after page k (k >= 2) hand back the cursor that led to the page before them, so
    paging loops A -> B -> A."""
    repeat_cursor: bool = False
    """Each page's cursor is the one the request sent."""
    force_status: int | None = None
    """Every request is answered with this status and a Smartcar error body."""
    rate_limit_bucket: int | None = None
    """A token bucket of this capacity: each request takes a token, an empty bucket gives 429
    with Retry-After = seconds until the next token."""
    rate_limit_refill_per_minute: float = 2.0


@dataclass(frozen=True)
class RequestLog:
    """One request to the API (admin requests are not logged)."""

    time: float
    """`time.monotonic()` when the request arrived."""
    path: str
    params: dict[str, str]
    """The URL-decoded query."""
    status: int
    """The status sent, or 0 when the connection was reset without a response."""
    count: int = 0
    """Connections in the page sent."""
    fault: str | None = None
    """The injected fault that shaped the answer, if any (e.g. "truncated", "force_status")."""
    client_port: int = 0
    """The client's TCP port: requests sent over one kept-alive connection share it."""


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    count: int = 0
    fault: str | None = None


def instant(timestamp: str) -> int:
    """Return an ISO 8601 timestamp as microseconds since the epoch (naive means UTC).

    Args:
        timestamp: E.g. `2024-05-01T10:11:12.5Z` or `2024-05-01T10:11:12+00:00`.

    Returns:
        Microseconds since 1970-01-01T00:00:00Z.
    """
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


@functools.cache
def _date(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


def _format_instant(micros: int, digits: int) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    day, second = divmod(seconds, 86400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    text = f"{_date(day)}T{hour:02d}:{minute:02d}:{second:02d}"
    if not digits:
        return f"{text}Z"
    return f"{text}.{fraction:06d}"[: len(text) + 1 + digits] + "Z"


def _uuid4(rng: random.Random) -> str:
    value = rng.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def generate_connections(
    n: int,
    *,
    seed: int = 0,
    modes: Sequence[str] = ("live", "simulated"),
    start: datetime | None = None,
    tie_every: int = 7,
) -> list[dict[str, str]]:
    """Generate reproducible connections over the two years before `start`, in served order.

    Timestamps mix whole seconds, tenths and milliseconds. Every `tie_every`-th connection is
    the previous user connecting another vehicle at the same instant (written in a possibly
    different precision), in the same mode.

    Args:
        n: How many connections.
        seed: Seed for the random generator.
        modes: Modes to draw from.
        start: The instant all connections precede (naive means UTC); 2026-01-01 by default.
        tie_every: Period of timestamp ties; 0 for none.

    Returns:
        API-shaped connections (`userId`, `vehicleId`, `connectedAt`, `mode`).

    Raises:
        ValueError: An unknown mode was given.
    """
    if not modes or set(modes) - set(MODES):
        raise ValueError(f"modes must be drawn from {MODES}, got {modes!r}")
    rng = random.Random(seed)  # noqa: S311 -- reproducible data, not secrets
    end = start or DEFAULT_START
    at = instant(end.isoformat())
    max_gap = 2 * max(1, _TWO_YEARS_US // max(n, 1))
    user, mode, group = "", modes[0], 0
    result: list[dict[str, str]] = []
    for i in range(n):
        if tie_every > 0 and result and i % tie_every == tie_every - 1:
            digits = rng.choice([d for d in _PRECISIONS if at % 10 ** (6 - d) == 0])
        else:
            digits = _PRECISIONS[int(rng.random() * len(_PRECISIONS))]
            at -= 1 + int(rng.random() * max_gap)
            at -= at % 10 ** (6 - digits)
            user = _uuid4(rng)
            mode = modes[int(rng.random() * len(modes))]
            group = len(result)
        vehicle = _uuid4(rng)
        # Within a tie the API orders by vehicleId, descending: insert where it would be served.
        position = len(result)
        while position > group and result[position - 1]["vehicleId"] < vehicle:
            position -= 1
        result.insert(
            position,
            {
                "userId": user,
                "vehicleId": vehicle,
                "connectedAt": _format_instant(at, digits),
                "mode": mode,
            },
        )
    return result


def _every(k: int, n: int) -> bool:
    return k > 0 and n % k == 0


class SmartcarSimulator:
    """An in-process Smartcar Management API server on 127.0.0.1.

    Connections are kept per mode in ascending `SortKey` order next to their pre-encoded JSON,
    so an unfiltered page costs a bisect plus `limit` rows whatever the data size.
    """

    def __init__(
        self,
        connections: Iterable[Mapping[str, str]] | None = None,
        *,
        token: str = "sim-token",  # noqa: S107 -- the simulator's own fake token
        faults: Faults | None = None,
        port: int = 0,
    ) -> None:
        """Load the data; nothing listens until `start()`.

        Args:
            connections: API-shaped connections; a later duplicate (userId, vehicleId) wins.
            token: The management token that Basic auth must carry.
            faults: Fault knobs (all off by default).
            port: Port to bind; 0 picks a free one.
        """
        self.token = token
        self.faults = faults or Faults()
        self.requests: list[RequestLog] = []
        self._port = port
        self._lock = threading.Lock()
        self._keys: dict[str, list[SortKey]] = {}
        self._rows: dict[str, list[bytes]] = {}
        self._index: dict[tuple[str, str], tuple[str, SortKey]] = {}
        self._secret = secrets.token_bytes(16)
        self._seq = 0
        self._pages_ok = 0
        self._chaos: random.Random | None = None
        self._chaos_seed = 0
        self._bucket_capacity: int | None = None
        self._tokens = 0.0
        self._bucket_time = 0.0
        self._origins: dict[str, str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url = ""
        self._load(connections or ())

    def _load(self, connections: Iterable[Mapping[str, str]]) -> None:
        latest: dict[tuple[str, str], Connection] = {}
        for data in connections:
            connection = Connection.from_mapping(data)
            latest[connection.user_id, connection.vehicle_id] = connection
        entries: dict[str, list[tuple[SortKey, bytes]]] = {mode: [] for mode in MODES}
        for pair, connection in latest.items():
            key = connection.sort_key
            entries[connection.mode].append((key, connection.to_json()))
            self._index[pair] = (connection.mode, key)
        for mode, rows in entries.items():
            rows.reverse()  # data usually comes newest first: make sorting nearly free
            rows.sort()
            self._keys[mode] = [key for key, _ in rows]
            self._rows[mode] = [row for _, row in rows]

    def start(self) -> str:
        """Listen on 127.0.0.1 in a daemon thread.

        Returns:
            The API base URL, e.g. `http://127.0.0.1:PORT/v2.0`.
        """
        if self._server is None:
            server = _Server(("127.0.0.1", self._port), self)
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="smartcar-simulator",
                daemon=True,
            )
            self._server = server
            self._url = f"http://127.0.0.1:{server.server_address[1]}/v2.0"
            self._thread.start()
        return self._url

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SmartcarSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def api_url(self) -> str:
        """The API base URL (`.../v2.0`) while started.

        Raises:
            RuntimeError: The simulator is not started.
        """
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    def add(self, *connections: Mapping[str, str]) -> None:
        """Add connections (replacing any with the same userId and vehicleId).

        Args:
            connections: API-shaped connections.
        """
        parsed = [Connection.from_mapping(data) for data in connections]
        with self._lock:
            for connection in parsed:
                pair = (connection.user_id, connection.vehicle_id)
                self._discard(pair)
                key = connection.sort_key
                keys = self._keys[connection.mode]
                at = bisect.bisect_left(keys, key)
                keys.insert(at, key)
                self._rows[connection.mode].insert(at, connection.to_json())
                self._index[pair] = (connection.mode, key)

    def remove(self, user_id: str, vehicle_id: str) -> bool:
        """Remove a connection (a disconnected vehicle).

        Args:
            user_id: Its userId.
            vehicle_id: Its vehicleId.

        Returns:
            Whether it existed.
        """
        with self._lock:
            return self._discard((user_id, vehicle_id))

    def _discard(self, pair: tuple[str, str]) -> bool:
        found = self._index.pop(pair, None)
        if found is None:
            return False
        mode, key = found
        at = bisect.bisect_left(self._keys[mode], key)
        del self._keys[mode][at]
        del self._rows[mode][at]
        return True

    def connections(self, mode: str | None = None) -> list[dict[str, str]]:
        """Return the current data as served, newest first.

        Args:
            mode: Only this mode; None for every mode.

        Returns:
            API-shaped connections.

        Raises:
            ValueError: The mode is unknown.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            if mode is None:
                merged = sorted(
                    (
                        pair
                        for m in MODES
                        for pair in zip(self._keys[m], self._rows[m], strict=True)
                    ),
                    reverse=True,
                )
                rows = [row for _, row in merged]
            else:
                rows = self._rows[mode][::-1]
        result: list[dict[str, str]] = json.loads(b"[" + b",".join(rows) + b"]")
        return result

    def rotate_cursor_secret(self) -> None:
        """Sign cursors with a new key: every cursor handed out before is refused with a 400."""
        with self._lock:
            self._secret = secrets.token_bytes(16)

    def clear_log(self) -> None:
        """Forget logged requests and restart the fault counters."""
        with self._lock:
            self.requests.clear()
            self._seq = 0
            self._pages_ok = 0
            self._chaos = None

    def handle_api(
        self,
        method: str,
        path: str,
        query: str,
        authorization: str | None,
        client_port: int = 0,
    ) -> _Reply:
        """Answer one API request and log it (called by the HTTP handler).

        Args:
            method: HTTP method.
            path: URL path.
            query: Raw query string.
            authorization: The Authorization header.
            client_port: The client's TCP port, for the log.

        Returns:
            What to send.
        """
        arrived = time.monotonic()
        params = dict(parse_qsl(query, keep_blank_values=True))
        if self.faults.latency > 0:
            time.sleep(self.faults.latency)
        with self._lock:
            self._seq += 1
            reply = self._answer(method, path, params, authorization)
            self.requests.append(
                RequestLog(
                    arrived, path, params, reply.status, reply.count, reply.fault, client_port
                )
            )
        return reply

    def _answer(
        self, method: str, path: str, params: dict[str, str], authorization: str | None
    ) -> _Reply:
        if method != "GET" or path.rstrip("/") != CONNECTIONS_PATH:
            return self._error(404, f"No route for {method} {path}.")
        if not self._authorized(authorization):
            return self._error(401)
        chaos = self._chaos_pick()
        if chaos == "reset":
            return _Reply(0, fault="reset")
        failure = self._failure(chaos)
        if failure is not None:
            status, retry_after, fault = failure
            return self._error(status, retry_after=retry_after, fault=fault)
        reply = self._page(params)
        if reply.status == 200 and (
            chaos == "truncated" or _every(self.faults.truncate_every, self._seq)
        ):
            reply.body = reply.body[: len(reply.body) // 2]
            reply.fault = "truncated"
        elif reply.status == 200:
            self._pages_ok += 1
        return reply

    def _failure(self, chaos: str | None) -> tuple[int, str | None, str] | None:
        """Pick the injected error status, Retry-After and fault name for this request."""
        faults, n = self.faults, self._seq
        if faults.force_status is not None:
            return faults.force_status, None, "force_status"
        if chaos is not None and chaos.isdigit():
            return int(chaos), faults.retry_after if chaos == "429" else None, "chaos"
        if faults.fail_after_page is not None and self._pages_ok >= faults.fail_after_page:
            return faults.fail_status, None, "fail_after_page"
        if _every(faults.rate_limit_every, n):
            return 429, faults.retry_after, "rate_limit_every"
        if _every(faults.error_every, n):
            return faults.error_status, None, "error_every"
        wait = self._take_token()
        return None if wait is None else (429, str(max(1, math.ceil(wait))), "rate_limit_bucket")

    def _authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except binascii.Error:
            return False
        return hmac.compare_digest(decoded, f"default:{self.token}".encode())

    def _chaos_pick(self) -> str | None:
        rate = self.faults.chaos_rate
        if rate <= 0:
            return None
        if self._chaos is None or self._chaos_seed != self.faults.chaos_seed:
            self._chaos_seed = self.faults.chaos_seed
            self._chaos = random.Random(self._chaos_seed)  # noqa: S311 -- reproducible faults
        if self._chaos.random() >= rate:
            return None
        return self._chaos.choice(_CHAOS)

    def _take_token(self) -> float | None:
        """Take a token from the bucket, or return the seconds until one is available."""
        capacity = self.faults.rate_limit_bucket
        now = time.monotonic()
        if capacity != self._bucket_capacity:
            self._bucket_capacity, self._tokens, self._bucket_time = capacity, capacity or 0, now
        if capacity is None:
            return None
        per_second = self.faults.rate_limit_refill_per_minute / 60
        self._tokens = min(capacity, self._tokens + (now - self._bucket_time) * per_second)
        self._bucket_time = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / per_second if per_second > 0 else 3600.0

    def _page(self, params: dict[str, str]) -> _Reply:
        raw_limit = params.get("limit", "10")
        if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 100):
            return self._error(400, "limit must be an integer from 1 to 100.")
        limit = int(raw_limit)
        mode = params.get("mode", "live")
        if mode not in MODES:
            return self._error(400, f"mode must be one of {', '.join(MODES)}.")
        user_id, vehicle_id = params.get("user_id", ""), params.get("vehicle_id", "")
        scope = (mode, user_id, vehicle_id)
        received = params.get("cursor", "")
        page, after = 1, None
        if received:
            decoded = self._decode_cursor(received)
            if decoded is None or decoded[2] != scope:
                return self._error(400, "invalid cursor")
            page, after, _ = decoded
        keys, rows = self._keys[mode], self._rows[mode]
        end = len(keys) if after is None else bisect.bisect_left(keys, after)
        if user_id or vehicle_id:

            def matches(key: SortKey) -> bool:
                return (not user_id or key[1] == user_id) and (
                    not vehicle_id or key[2] == vehicle_id
                )

            hits = (i for i in range(end - 1, -1, -1) if matches(keys[i]))
            picked = [i for _, i in zip(range(limit), hits, strict=False)]
            more = next(hits, None) is not None
        else:
            picked = list(range(end - 1, max(0, end - limit) - 1, -1))
            more = end - limit > 0
        cursor = self._encode_cursor(page + 1, keys[picked[-1]], scope) if more else None
        if received and self.faults.repeat_cursor:
            cursor = received
        elif received and self.faults.cursor_cycle is not None and page > self.faults.cursor_cycle:
            cursor = self._origins.get(received, received)
        elif cursor is not None and received and self.faults.cursor_cycle is not None:
            self._origins[cursor] = received
        body = b"".join(
            (
                b'{"connections":[',
                b",".join(rows[i] for i in picked),
                b'],"paging":{"cursor":',
                json.dumps(cursor).encode(),
                b"}}",
            )
        )
        return _Reply(200, body, count=len(picked))

    def _encode_cursor(self, page: int, key: SortKey, scope: tuple[str, str, str]) -> str:
        payload = json.dumps([page, *key, *scope], separators=(",", ":")).encode()
        body = base64.b64encode(_CURSOR_MAGIC + payload)
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return f"{body.decode()}:{base64.b64encode(mac).decode()}"

    def _decode_cursor(self, cursor: str) -> tuple[int, SortKey, tuple[str, str, str]] | None:
        body, _, mac = cursor.encode("utf-8", "replace").rpartition(b":")
        expected = base64.b64encode(hmac.new(self._secret, body, hashlib.sha256).digest()[:16])
        if not hmac.compare_digest(mac, expected):
            return None
        page, micros, user, vehicle, *scope = json.loads(base64.b64decode(body)[3:])
        return page, (micros, user, vehicle), (scope[0], scope[1], scope[2])

    def _error(
        self,
        status: int,
        description: str | None = None,
        *,
        retry_after: str | None = None,
        fault: str | None = None,
    ) -> _Reply:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        if self.faults.html_errors:
            title = f"{status} {_phrase(status)}".strip()
            html = (
                f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1>"
                "</center><hr><center>nginx</center></body></html>\n"
            )
            return _Reply(status, html.encode(), headers, "text/html", fault=fault)
        fallback = _ERRORS[400 if status < 500 else 500]
        kind, code, page, default, resolution = _ERRORS.get(status, fallback)
        error = {
            "type": kind,
            "code": code,
            "description": description or default,
            "docURL": _DOCS + page,
            "statusCode": status,
            "requestId": str(uuid.uuid4()),
            "resolution": {"type": resolution},
        }
        return _Reply(status, json.dumps(error).encode(), headers, fault=fault)

    def handle_admin(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        """Answer one admin request (called by the HTTP handler).

        Args:
            method: HTTP method.
            path: URL path under `/_admin`.
            query: Raw query string.
            body: Request body.

        Returns:
            What to send.
        """
        params = dict(parse_qsl(query, keep_blank_values=True))
        payload: Any
        try:
            match method, path.rstrip("/"):
                case "GET", "/_admin/connections":
                    payload = self.connections(params.get("mode") or None)
                case "POST", "/_admin/connections":
                    items = json.loads(body)
                    items = [items] if isinstance(items, dict) else items
                    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                        raise ValueError("expected a JSON list of connection objects")
                    self.add(*items)
                    payload = {"added": len(items)}
                case "DELETE", "/_admin/connections":
                    payload = {"removed": self.remove(params["user_id"], params["vehicle_id"])}
                case "GET", "/_admin/requests":
                    with self._lock:
                        payload = [asdict(entry) for entry in self.requests]
                case "DELETE", "/_admin/requests":
                    self.clear_log()
                    payload = {"cleared": True}
                case "GET", "/_admin/faults":
                    payload = asdict(self.faults)
                case "PUT", "/_admin/faults":
                    settings = json.loads(body or b"{}")
                    if not isinstance(settings, dict):
                        raise ValueError("expected a JSON object of Faults fields")
                    self.faults = Faults(**settings)
                    payload = asdict(self.faults)
                case _:
                    return _json_reply(404, {"error": f"no admin route {method} {path}"})
        except (ValueError, KeyError, TypeError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(200, payload)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _json_reply(status: int, payload: Any) -> _Reply:
    return _Reply(status, json.dumps(payload).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and the demo own the terminal."""

    def do_GET(self) -> None:
        """Serve any method: routing is by path."""
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        simulator = self.server.simulator
        if url.path == "/_admin" or url.path.startswith("/_admin/"):
            reply = simulator.handle_admin(self.command, url.path, url.query, body)
        else:
            authorization = self.headers.get("Authorization")
            reply = simulator.handle_api(
                self.command, url.path, url.query, authorization, self.client_address[1]
            )
        if reply.fault == "reset":
            # A zero linger makes close() send RST, like a proxy dropping the connection.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: SmartcarSimulator) -> None:
        self.simulator = simulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._open_lock:
            if open_:
                self._open.add(connection)
            else:
                self._open.discard(connection)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def _read_data(path: Path) -> list[dict[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("connections")
    if not isinstance(data, list):
        raise SystemExit(f"{path}: expected a JSON list of connections")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tap_smartcar_connections.simulator",
        description="Serve a simulated Smartcar Management API on 127.0.0.1.",
    )
    parser.add_argument("--connections", type=int, default=250, help="connections to generate")
    parser.add_argument("--data", type=Path, help="JSON list of connections to serve instead")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and chaos")
    parser.add_argument("--token", default="sim-token", help="management token to accept")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--url-file", type=Path, help="write the API URL here once listening")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--rate-limit-bucket", type=int, help="token bucket capacity")
    parser.add_argument(
        "--rate-limit-refill-per-minute", type=float, default=2.0, help="token refill rate"
    )
    parser.add_argument("--chaos-rate", type=float, default=0.0, help="random fault probability")
    args = parser.parse_args(argv)

    data = (
        _read_data(args.data)
        if args.data
        else generate_connections(args.connections, seed=args.seed)
    )
    faults = Faults(
        latency=args.latency,
        rate_limit_bucket=args.rate_limit_bucket,
        rate_limit_refill_per_minute=args.rate_limit_refill_per_minute,
        chaos_rate=args.chaos_rate,
        chaos_seed=args.seed,
    )
    simulator = SmartcarSimulator(data, token=args.token, faults=faults, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = simulator.start()
    try:
        print(f"Smartcar simulator listening on {url} ({len(simulator)} connections)", flush=True)
        if args.url_file:
            # Write then rename, so a script polling the file never reads half a URL.
            partial = args.url_file.with_name(args.url_file.name + ".tmp")
            partial.write_text(url + "\n", encoding="utf-8")
            partial.replace(args.url_file)
        while not stop.wait(1.0):
            pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
