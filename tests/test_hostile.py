"""Hostile servers, data and input: no single bad response may cost a connection or hang a run.

Most tests use a scripted loopback server (`Hostile`) that answers each request with the next
reply a test gives it, byte for byte; the rest use the simulator's fault injection. Every run
goes through the real console script, so exit codes and the last line are what a user sees.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import typing as t
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ApiError
from tap_smartcar_connections.paging import MAX_EMPTY_PAGES
from tap_smartcar_connections.policy import BODY_ATTEMPTS, FIRST_CONTACT_SECONDS
from tap_smartcar_connections.redaction import Redactor
from tap_smartcar_connections.timestamps import normalize_timestamp
from tap_smartcar_connections.transport import MAX_BODY_BYTES

from .conftest import TOKEN, Run, bookmarks, live_state, run_cli, sync

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))
NO_PAGING = object()
"""`page(cursor=NO_PAGING)` leaves `paging` out of the body."""


@dataclass
class Reply:
    """One scripted answer: status, headers and body (a list of chunks is sent with pauses)."""

    status: int = 200
    body: bytes | list[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    pause: float = 0.0


def page(connections: list[dict[str, t.Any]], cursor: t.Any = None) -> Reply:
    payload: dict[str, t.Any] = {"connections": connections}
    if cursor is not NO_PAGING:
        payload["paging"] = {"cursor": cursor}
    return Reply(body=json.dumps(payload).encode())


def conn(n: int, at: str, mode: str = "live") -> dict[str, str]:
    return {"userId": f"user-{n}", "vehicleId": f"vehicle-{n}", "connectedAt": at, "mode": mode}


def send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    """Write `reply` in its chunks, pausing after each; a client that hung up ends it."""
    try:
        handler.send_response(reply.status)
        chunks = reply.body if isinstance(reply.body, list) else [reply.body]
        headers = {"Content-Length": str(sum(map(len, chunks))), **reply.headers}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        for chunk in chunks:
            handler.wfile.write(chunk)
            handler.wfile.flush()
            time.sleep(reply.pause)
    except OSError:
        handler.close_connection = True


class Hostile:
    """A loopback HTTP server answering request i with `script(i, path)` (or the i-th reply)."""

    def __init__(self, script: t.Callable[[int, str], Reply] | list[Reply]) -> None:
        self.script = script
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:
                index = len(hostile.requests)
                hostile.requests.append((time.monotonic(), self.path, dict(self.headers)))
                reply = hostile.reply(index, self.path)
                if reply.status == 0:
                    self.close_connection = True
                    return
                send(self, reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2.0"

    def reply(self, index: int, path: str) -> Reply:
        if callable(self.script):
            return self.script(index, path)
        return self.script[min(index, len(self.script) - 1)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> t.Iterator[t.Callable[..., Hostile]]:
    servers: list[Hostile] = []

    def start(script: t.Callable[[int, str], Reply] | list[Reply]) -> Hostile:
        servers.append(Hostile(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def settings(server: Hostile, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "management_token": TOKEN,
        "api_url": server.url,
        "modes": ["live"],
        "max_retry_seconds": 20,
        **extra,
    }


def failure(run: Run, *, debug: bool = False) -> str:
    """The one `error:` line a failed run ends with (and no traceback, unless at DEBUG)."""
    assert run.exit_code != 0, run.stderr
    assert debug or "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("tap-smartcar-connections: error: "), run.stderr
    assert sum("error:" in line for line in run.stderr.splitlines()) == 1, run.stderr
    return last


def ago(**delta: float) -> str:
    return normalize_timestamp((datetime.now(UTC) - timedelta(**delta)).isoformat())


def live_bookmark(run: Run) -> str | None:
    return bookmarks(run.state).get("mode=live")


# Silent data loss


def test_a_future_connection_is_emitted_with_a_warning_but_never_becomes_the_bookmark(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    future = {"userId": "u-f", "vehicleId": "v-future", "connectedAt": "2999-01-01T00:00:00Z"}
    simulator.add({**future, "mode": "live"})
    started = normalize_timestamp(datetime.now(UTC).isoformat())

    first = run_cli(tmp_path, {**config, "modes": ["live"]})

    assert first.exit_code == 0, first.stderr
    assert ("u-f", "v-future") in first.pairs()
    mark = live_bookmark(first)
    assert mark is not None
    assert mark <= normalize_timestamp(datetime.now(UTC).isoformat())
    assert mark < "2999"
    warned = [line for line in first.stderr.splitlines() if "v-future" in line]
    assert len(warned) == 1
    assert "2999-01-01" in warned[0]
    assert "after this run started" in warned[0]
    assert started <= mark or mark == max(
        normalize_timestamp(c["connectedAt"])
        for c in simulator.connections("live")
        if c["vehicleId"] != "v-future"
    )

    simulator.add({"userId": "u-new", "vehicleId": "v-new", "connectedAt": ago(seconds=1)})
    second = run_cli(tmp_path, {**config, "modes": ["live"]}, state=first.state)

    assert second.exit_code == 0, second.stderr
    assert ("u-new", "v-new") in second.pairs()


def test_a_bookmark_in_the_future_is_not_trusted_the_mode_is_read_again(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    state = live_state("2999-01-01T00:00:00.000000Z")

    run = run_cli(tmp_path, {**config, "modes": ["live"]}, state=state)

    assert run.exit_code == 0, run.stderr
    everything = {(c["userId"], c["vehicleId"]) for c in simulator.connections("live")}
    assert set(run.pairs()) == everything
    assert "after this run started" in run.stderr
    assert (live_bookmark(run) or "") < "2999"


def test_out_of_order_pages_lose_no_connection(tmp_path: Path, hostile: t.Any) -> None:
    mark = "2026-01-06T00:00:00.000000Z"
    server = hostile(
        [
            page(
                [
                    conn(10, "2026-01-10T00:00:00Z"),
                    conn(9, "2026-01-09T00:00:00Z"),
                    conn(5, "2026-01-05T00:00:00Z"),  # older than the bookmark...
                    conn(8, "2026-01-08T00:00:00Z"),  # ...and then newer again
                ],
                cursor="c2",
            ),
            page([conn(7, "2026-01-07T00:00:00Z"), conn(4, "2026-01-04T00:00:00Z")], cursor="c3"),
            page([conn(3, "2026-01-03T00:00:00Z")]),
        ]
    )
    state = live_state(mark)

    run = run_cli(tmp_path, settings(server), state=state)

    assert run.exit_code == 0, run.stderr
    assert [r["vehicleId"] for r in run.records] == [
        "vehicle-10",
        "vehicle-9",
        "vehicle-8",
        "vehicle-7",
    ]
    assert len(server.requests) == 3  # read to the last page once the order broke
    assert live_bookmark(run) == "2026-01-10T00:00:00.000000Z"
    assert sum("not newest first" in line for line in run.stderr.splitlines()) == 1


def test_a_resume_whose_new_head_is_out_of_order_still_reads_below_the_checkpoint(
    tmp_path: Path, hostile: t.Any
) -> None:
    def script(index: int, path: str) -> Reply:
        if index == 0:
            return page([conn(10, "2026-01-10T00:00:00Z"), conn(9, "2026-01-09T00:00:00Z")], "c2")
        if index == 1:
            return Reply(status=500, body=b"{}")
        if "cursor=c2" in path:
            return page([conn(8, "2026-01-08T00:00:00Z"), conn(7, "2026-01-07T00:00:00Z")], "c3")
        if "cursor=c3" in path:
            return page([conn(6, "2026-01-06T00:00:00Z")])
        return page([conn(11, "2026-01-11T00:00:00Z"), conn(12, "2026-01-12T00:00:00Z")])

    server = hostile(script)
    failed = run_cli(tmp_path, settings(server, max_retry_seconds=0, page_size=2))
    assert failed.exit_code == 1

    rerun = run_cli(tmp_path, settings(server, page_size=2), state=failed.state)

    assert rerun.exit_code == 0, rerun.stderr
    assert {r["vehicleId"] for r in rerun.records} == {f"vehicle-{n}" for n in (12, 11, 8, 7, 6)}
    assert live_bookmark(rerun) == "2026-01-12T00:00:00.000000Z"


def test_in_order_pages_still_stop_at_the_bookmark(tmp_path: Path, hostile: t.Any) -> None:
    server = hostile(
        [
            page([conn(9, "2026-01-09T00:00:00Z"), conn(5, "2026-01-05T00:00:00Z")], cursor="c2"),
            page([conn(3, "2026-01-03T00:00:00Z")]),
        ]
    )
    state = live_state("2026-01-06T00:00:00.000000Z")

    run = run_cli(tmp_path, settings(server), state=state)

    assert run.exit_code == 0, run.stderr
    assert [r["vehicleId"] for r in run.records] == ["vehicle-9"]
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "broken_page",
    [
        page([conn(2, "2026-01-02T00:00:00Z")], cursor=NO_PAGING),
        Reply(body=b'{"connections": [], "paging": null}'),
        Reply(body=b'{"connections": [], "paging": {}}'),
        page([conn(2, "2026-01-02T00:00:00Z")], cursor=""),
    ],
    ids=["no paging", "paging null", "no cursor", "empty cursor"],
)
def test_a_page_without_an_explicit_null_cursor_never_ends_a_full_refresh(
    tmp_path: Path, hostile: t.Any, broken_page: Reply
) -> None:
    server = hostile([page([conn(1, "2026-01-03T00:00:00Z")], cursor="c2"), broken_page])
    catalog = full_table_catalog(tmp_path, server)

    run = run_cli(
        tmp_path,
        settings(server, emit_activate_version_messages=True),
        "--catalog",
        str(catalog),
    )

    line = failure(run)
    assert "paging.cursor" in line
    assert f"{BODY_ATTEMPTS} times" in line
    assert not [m for m in run.messages if m["type"] == "ACTIVATE_VERSION"]
    assert [p for _, p, _ in server.requests].count(server.requests[0][1]) == 1  # no restart
    assert len(server.requests) == 1 + BODY_ATTEMPTS


def full_table_catalog(tmp_path: Path, server: Hostile) -> Path:
    discovered = subprocess.run(
        [CLI, "--config", str(write_config(tmp_path, settings(server))), "--discover"],
        capture_output=True,
        text=True,
        check=True,
    )
    catalog = json.loads(discovered.stdout)
    catalog["streams"][0]["replication_method"] = "FULL_TABLE"
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def write_config(tmp_path: Path, config: dict[str, t.Any]) -> Path:
    path = tmp_path / "discover-config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "location",
    [
        "OTHER",
        "http://127.0.0.1:9/v2.0/management/connections",
        "ftp://x/y",
        "file:///etc/passwd",
        "http://[::1",
        "/v2.0/management/connections?cursor=x",
    ],
    ids=["other server", "other port", "ftp", "file", "malformed", "same origin loop"],
)
def test_redirects_are_never_followed(tmp_path: Path, hostile: t.Any, location: str) -> None:
    elsewhere = hostile([page([conn(1, "2026-01-01T00:00:00Z")])])
    if location == "OTHER":
        location = elsewhere.url + "/management/connections"
    server = hostile(
        [Reply(status=302, headers={"Location": location}, body=b'{"connections": []}')]
    )

    run = run_cli(tmp_path, settings(server))

    line = failure(run)
    assert "302" in line
    assert "follows no redirect" in line
    assert run.records == []
    assert elsewhere.requests == []
    assert len(server.requests) == 1


# Hangs and unbounded cost


def test_a_trickling_body_times_out_as_a_whole(tmp_path: Path, hostile: t.Any) -> None:
    body = json.dumps({"connections": [], "paging": {"cursor": None}}).encode()
    server = hostile([Reply(body=[bytes([b]) for b in body], pause=0.2)])

    began = time.monotonic()
    run = run_cli(tmp_path, settings(server, request_timeout=1, max_retry_seconds=3))
    elapsed = time.monotonic() - began

    line = failure(run)
    assert "request_timeout=1" in line
    assert elapsed < 15  # the body alone takes len(body) * 0.2 s = about 10 s per request
    assert len(server.requests) >= 2


@pytest.mark.parametrize("retry_after", ["0", "Thu, 01 Jan 1970 00:00:00 GMT", "²", "-5"])
def test_a_retry_never_comes_sooner_than_one_second_and_still_backs_off(
    tmp_path: Path, hostile: t.Any, retry_after: str
) -> None:
    limited = Reply(status=429, headers={"Retry-After": retry_after}, body=b"{}")
    server = hostile([limited, limited, limited, page([conn(1, "2026-01-01T00:00:00Z")])])

    run = run_cli(tmp_path, settings(server))

    assert run.exit_code == 0, run.stderr
    assert len(run.records) == 1
    assert len(server.requests) == 4
    assert len(run.sleeps) == 3
    assert min(run.sleeps) >= 1.0
    assert 2.0 <= run.sleeps[2] <= 4.0  # attempt 3's backoff


def test_endless_empty_pages_end_the_run(tmp_path: Path, hostile: t.Any) -> None:
    server = hostile(lambda i, path: page([], cursor=f"cursor-{i}"))

    run = run_cli(tmp_path, settings(server))

    line = failure(run)
    assert f"{MAX_EMPTY_PAGES} pages in a row with nothing new (empty" in line
    assert len(server.requests) == MAX_EMPTY_PAGES


def test_a_compressed_body_is_capped_when_decoded(tmp_path: Path, hostile: t.Any) -> None:
    bomb = gzip.compress(b'{"connections": [' + b" " * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 200_000
    server = hostile([Reply(body=bomb, headers={"Content-Encoding": "gzip"})])

    run = run_cli(tmp_path, settings(server))

    line = failure(run)
    assert "body over" in line
    assert len(server.requests) == BODY_ATTEMPTS


def test_a_compressed_body_is_inflated_a_bounded_chunk_at_a_time(hostile: t.Any) -> None:
    """Peak memory stays near the decoded-body cap, not the size the bomb inflates to.

    Each 64 KB read of this bomb inflates to about 64 MB; the error line alone would be the
    same if a read were inflated whole before the cap was checked.
    """
    deflate = zlib.compressobj(9, wbits=31)
    blank = b" " * (1 << 20)
    parts = [deflate.compress(b'{"connections": [')]
    parts += [deflate.compress(blank) for _ in range(256)] + [deflate.flush()]
    bomb = b"".join(parts)
    assert len(bomb) < 300_000
    headers = {"Content-Encoding": "gzip", "Connection": "close"}  # no wait for a next request
    server = hostile([Reply(body=bomb, headers=headers)])

    tracemalloc.start()
    try:
        run = sync(settings(server), expect_error=ApiError)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert f"a body over {MAX_BODY_BYTES:,} bytes" in str(run.error)
    assert len(server.requests) == BODY_ATTEMPTS
    assert peak < 4 * MAX_BODY_BYTES  # about 9 MB; inflating a read whole takes 150 MB


def test_a_gzip_page_is_read(tmp_path: Path, hostile: t.Any) -> None:
    body = page([conn(1, "2026-01-01T00:00:00Z")]).body
    assert isinstance(body, bytes)
    server = hostile([Reply(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})])

    run = run_cli(tmp_path, settings(server))

    assert run.exit_code == 0, run.stderr
    assert run.pairs() == [("user-1", "vehicle-1")]
    assert server.requests[0][2]["Accept-Encoding"] == "gzip"


NOT_JSON = "not the expected connections JSON"
NOT_A_DATE = "a date that is not ISO 8601"


@pytest.mark.parametrize(
    ("connection", "reason"),
    [
        ({"userId": "u", "vehicleId": "v", "connectedAt": "2026-01-01T00:00:00Z"}, NOT_JSON),
        (
            {
                "userId": "u",
                "vehicleId": "v",
                "connectedAt": "2026-02-30T00:00:00Z",
                "mode": "live",
            },
            NOT_A_DATE,
        ),
        (
            {"userId": 7, "vehicleId": "v", "connectedAt": "2026-01-01T00:00:00Z", "mode": "live"},
            NOT_JSON,
        ),
        (
            {
                "userId": "u",
                "vehicleId": "v",
                "connectedAt": "0001-01-01T00:00:00+02:00",
                "mode": "live",
            },
            NOT_A_DATE,
        ),
        (
            {
                "userId": "u",
                "vehicleId": "v",
                "connectedAt": "9999-12-31T23:59:59-02:00",
                "mode": "live",
            },
            NOT_A_DATE,
        ),
    ],
    ids=["missing mode", "impossible date", "number for a string", "before year 1", "after 9999"],
)
def test_bad_data_is_retried_a_few_times_then_fails_with_the_reason(
    tmp_path: Path, hostile: t.Any, connection: dict[str, t.Any], reason: str
) -> None:
    server = hostile([Reply(body=json.dumps({"connections": [connection]}).encode())])

    began = time.monotonic()
    run = run_cli(tmp_path, settings(server, max_retry_seconds=600))

    line = failure(run)
    assert reason in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert len(server.requests) == BODY_ATTEMPTS
    assert time.monotonic() - began < 20


@pytest.mark.parametrize("field", ["userId", "vehicleId"])
def test_an_id_holding_a_nul_is_a_broken_body_naming_the_field(
    tmp_path: Path, hostile: t.Any, field: str
) -> None:
    bad = {**conn(1, "2026-01-01T00:00:00Z"), field: "id\x00with a nul"}
    server = hostile([page([conn(2, "2026-01-02T00:00:00Z"), bad])])

    run = run_cli(tmp_path, settings(server))

    line = failure(run)
    assert f"a page whose {field} holds a control character" in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert len(server.requests) == BODY_ATTEMPTS
    assert run.records == []


def test_a_deeply_nested_body_is_an_error_not_a_crash(tmp_path: Path, hostile: t.Any) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    server = hostile([Reply(status=500, body=nested), Reply(body=nested)])

    run = run_cli(tmp_path, settings(server))

    failure(run)


# One clear line instead of a traceback


@pytest.mark.parametrize(
    ("api_url", "expected"),
    [
        ("management.smartcar.com/v2.0", "must be an https:// URL with a host"),
        ("https:///v2.0", "must be an https:// URL with a host"),
        ("https://management.smartcar.com:99999/v2.0", "not a valid URL"),
        ("https://management.smartcar.com:abc/v2.0", "not a valid URL"),
        ("ftp://management.smartcar.com/v2.0", "must be an https:// URL with a host"),
        ("https://management.smartcar .com/v2.0", "spaces"),
        ("https://management.smartcar.com/v2.0?x=1", "query or fragment"),
        ("https://management.smartcar.com/v2.0#top", "query or fragment"),
        ("https://user:pw@management.smartcar.com/v2.0", "credentials"),
        ("http://management.smartcar.com/v2.0", "cleartext"),
        ("https://a..b/v2.0", "invalid host name"),
        ("https://" + "a" * 70 + ".com/v2.0", "invalid host name"),
        ("https://exa%mple.com/v2.0", "invalid host name"),
    ],
)
def test_a_bad_api_url_is_a_config_error_before_any_request(
    tmp_path: Path, api_url: str, expected: str
) -> None:
    run = run_cli(tmp_path, {"management_token": TOKEN, "api_url": api_url})

    line = failure(run)
    assert "Invalid configuration: setting 'api_url'" in line
    assert expected in line
    assert run.messages == []


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_a_config_error(tmp_path: Path, token: str) -> None:
    run = run_cli(tmp_path, {"management_token": token, "api_url": "http://127.0.0.1:9/v2.0"})

    line = failure(run)
    assert "setting 'management_token' is empty" in line


@pytest.mark.parametrize(
    ("start_date", "expected"),
    [
        ("0001-01-01T00:00:00+02:00", "must be an ISO 8601 date-time"),
        ("9999-12-31T23:59:59-02:00", "must be an ISO 8601 date-time"),
        ("2999-01-01T00:00:00Z", "is in the future"),
    ],
)
def test_an_unusable_start_date_is_a_config_error(
    tmp_path: Path, config: dict[str, t.Any], start_date: str, expected: str
) -> None:
    run = run_cli(tmp_path, {**config, "start_date": start_date})

    line = failure(run)
    assert f"setting 'start_date' {expected}" in line


def test_a_start_date_in_another_iso_form_works_with_a_bookmark(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    first = run_cli(tmp_path, {**config, "start_date": "2020-121"})
    assert first.exit_code == 0, first.stderr

    second = run_cli(tmp_path, {**config, "start_date": "2020-121"}, state=first.state)

    assert second.exit_code == 0, second.stderr
    assert bookmarks(second.state) == bookmarks(first.state)


@pytest.mark.parametrize(
    "state",
    [
        {"bookmarks": []},
        {"bookmarks": {"connections": []}},
        {"bookmarks": {"connections": {"partitions": {}}}},
        {"bookmarks": {"connections": {"partitions": ["live"]}}},
        {"bookmarks": {"connections": {"partitions": [{"context": "live"}]}}},
        {"bookmarks": {"other_stream": 5}},
        {
            "bookmarks": {
                "connections": {
                    "partitions": [
                        {
                            "context": {"mode": "live"},
                            "replication_key_value": "0001-01-01T00:00:00+02:00",
                        }
                    ]
                }
            }
        },
    ],
    ids=["bookmarks", "stream", "partitions", "partition", "context", "other", "overflow"],
)
def test_a_state_of_the_wrong_shape_is_refused_with_one_line(
    tmp_path: Path, config: dict[str, t.Any], state: dict[str, t.Any]
) -> None:
    run = run_cli(tmp_path, config, state=state)

    line = failure(run)
    assert "cannot use state file" in line
    assert run.messages == []


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"bookmarks": {"webhooks": {"partitions": 7}}}, "the webhooks 'partitions' is not a list"),
        (
            {"bookmarks": {"subscriptions": {"partitions": "x"}}},
            "the subscriptions 'partitions' is not a list",
        ),
    ],
    ids=["webhooks", "subscriptions"],
)
def test_a_bad_entry_of_a_stream_the_run_does_not_read_is_named(
    tmp_path: Path, config: dict[str, t.Any], state: dict[str, t.Any], expected: str
) -> None:
    """Under API v2 neither stream is read, but the state is the orchestrator's whole state."""
    run = run_cli(tmp_path, config, state=state)

    line = failure(run)
    assert f"cannot use state file {tmp_path / 'state.json'}: {expected}" in line
    assert run.messages == []


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_state_file_means_no_state(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any], content: str
) -> None:
    run = run_cli(tmp_path, {**config, "modes": ["live"]}, state=content)

    assert run.exit_code == 0, run.stderr
    assert len(run.records) == len(simulator.connections("live"))


def test_a_non_integer_setting_from_the_environment_is_a_config_error(
    tmp_path: Path, config: dict[str, t.Any]
) -> None:
    env = {
        "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": TOKEN,
        "TAP_SMARTCAR_CONNECTIONS_API_URL": config["api_url"],
        "TAP_SMARTCAR_CONNECTIONS_PAGE_SIZE": "ten",
    }
    proc = subprocess.run(
        [CLI, "--config=ENV"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    line = failure(Run([], stderr=proc.stderr, exit_code=proc.returncode))
    assert "TAP_SMARTCAR_CONNECTIONS_PAGE_SIZE must be an integer" in line


@pytest.mark.parametrize("sink", ["head", "/dev/full"])
def test_a_downstream_that_stops_reading_ends_the_run_with_one_line(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any], sink: str
) -> None:
    config_file = write_config(tmp_path, config)
    if sink == "head":
        tap = subprocess.Popen(
            [CLI, "--config", str(config_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert tap.stdout is not None
        tap.stdout.readline()
        tap.stdout.close()  # what `| head -1` does
        _, stderr = tap.communicate(timeout=60)
        code = tap.returncode
    else:
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        with open("/dev/full", "wb") as full:
            proc = subprocess.run(
                [CLI, "--config", str(config_file)],
                stdout=full,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
        stderr, code = proc.stderr, proc.returncode

    line = failure(Run([], stderr=stderr.decode(), exit_code=code))
    assert "downstream target stopped reading" in line or "cannot write to standard output" in line
    assert "Exception ignored" not in stderr.decode()


# Secrets and transport


def test_a_server_that_echoes_the_credentials_leaks_nothing(tmp_path: Path, hostile: t.Any) -> None:
    basic = base64.b64encode(f"default:{TOKEN}".encode()).decode()

    def echo(index: int, path: str) -> Reply:
        headers = json.dumps(server.requests[-1][2])
        body = {
            "type": "AUTHENTICATION",
            "description": f"Bad token {TOKEN} in {headers}",
            "requestId": f"default:{TOKEN}",
            "docURL": f"https://x/?auth=Basic {basic}",
        }
        status = 500 if index == 0 else 401
        return Reply(status=status, body=json.dumps(body).encode())

    server = hostile(echo)

    run = run_cli(tmp_path, settings(server), env={"LOGLEVEL": "DEBUG"})

    failure(run, debug=True)
    assert "401" in run.stderr
    for secret in (TOKEN, basic, f"default:{TOKEN}", f"Basic {basic}"):
        assert secret not in run.stderr
    assert "<redacted>" in run.stderr


def test_the_base64_credentials_alone_are_redacted(tmp_path: Path, hostile: t.Any) -> None:
    """Echoed without the `Basic ` before it, the Authorization value is still a secret."""
    basic = base64.b64encode(f"default:{TOKEN}".encode()).decode()
    body = {"type": "AUTHENTICATION", "description": f"no application for {basic}"}
    server = hostile([Reply(status=401, body=json.dumps(body).encode())])

    run = run_cli(tmp_path, settings(server), env={"LOGLEVEL": "DEBUG"})

    line = failure(run, debug=True)
    assert "no application for <redacted>" in line
    assert basic not in run.stderr
    assert basic[:20] not in run.stderr


@pytest.mark.parametrize("args", [(), ("--test",)], ids=["sync", "connection test"])
def test_the_first_request_failing_to_connect_is_reported_at_once(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v2.0"  # closed once unbound
    run = run_cli(
        tmp_path, {"management_token": TOKEN, "api_url": api_url, "max_retry_seconds": 600}, *args
    )

    line = failure(run)
    assert "connection test passed" not in run.stderr
    assert f"cannot reach api_url {api_url}" in line
    assert "refused" in line
    assert len(run.sleeps) >= 3  # a blip is ridden out...
    assert sum(run.sleeps) <= FIRST_CONTACT_SECONDS  # ...but not for max_retry_seconds


@pytest.mark.e2e
def test_the_connection_test_against_a_closed_port_answers_well_within_40_seconds(
    tmp_path: Path,
) -> None:
    """On the real clock, through the console script: what `meltano config test` waits for."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v2.0"  # closed once unbound
    config = {"management_token": TOKEN, "api_url": api_url}  # max_retry_seconds 600

    began = time.monotonic()
    run = run_cli(tmp_path, config, "--test", real_time=True)
    elapsed = time.monotonic() - began

    line = failure(run)
    assert f"cannot reach api_url {api_url}" in line
    assert elapsed < FIRST_CONTACT_SECONDS + 10


def test_a_connection_failure_after_the_first_answer_is_retried(
    tmp_path: Path, hostile: t.Any
) -> None:
    dropped = Reply(status=0)  # the server closes the connection without an answer
    server = hostile(
        [
            page([conn(2, "2026-01-02T00:00:00Z")], cursor="c2"),
            dropped,
            page([conn(1, "2026-01-01T00:00:00Z")]),
        ]
    )

    run = run_cli(tmp_path, settings(server))

    assert run.exit_code == 0, run.stderr
    assert run.pairs() == [("user-2", "vehicle-2"), ("user-1", "vehicle-1")]
    assert len(server.requests) == 3
    assert sum("retrying in" in line for line in run.stderr.splitlines()) == 1


def test_the_environment_ca_bundle_is_honoured_and_a_bad_certificate_fails_at_once(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    import ssl  # noqa: PLC0415

    cert, key = certificate
    with SmartcarSimulator([], token=TOKEN) as simulator:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = simulator._server
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        api_url = simulator.api_url.replace("http://", "https://")
        config = {"management_token": TOKEN, "api_url": api_url, "max_retry_seconds": 600}

        refused = run_cli(tmp_path, config, env={"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""})
        line = failure(refused)
        assert "TLS with https://127.0.0.1" in line
        assert "REQUESTS_CA_BUNDLE" in line
        assert refused.sleeps == []  # at once: no retry

        for variable, other in (
            ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
            ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"),
        ):
            trusted = run_cli(tmp_path, config, env={variable: str(cert), other: ""})
            assert trusted.exit_code == 0, trusted.stderr


# Also


def test_a_finished_mode_keeps_its_new_bookmark_when_a_later_mode_fails(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    live = len(simulator.connections("live"))
    simulator.faults.fail_after_page = (live + 99) // 100 + 1  # simulated's second page fails

    run = run_cli(tmp_path, {**config, "max_retry_seconds": 2})

    failure(run)
    newest_live = max(normalize_timestamp(c["connectedAt"]) for c in simulator.connections("live"))
    assert bookmarks(run.state) == {"mode=live": newest_live}


def test_a_passing_connection_test_prints_no_error_and_no_failure(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = run_cli(tmp_path, config, "--test")

    assert run.exit_code == 0, run.stderr
    assert "connection test passed" in run.stderr.splitlines()[-1]
    assert "ERROR" not in run.stderr
    assert '"failed"' not in run.stderr
    assert len(run.records) == 1
    assert len(simulator.requests) == 1


def test_help_says_what_the_tap_does_and_how_to_use_it() -> None:
    proc = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True)

    for words in ("Smartcar", "--about", "--discover", "--test", "--state", "README"):
        assert words in proc.stdout


def test_a_tap_used_as_a_library_redacts_its_log_records_too(
    hostile: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    echo = json.dumps({"type": "SERVER", "description": f"echo {TOKEN}"}).encode()
    server = hostile([Reply(status=500, body=echo), page([conn(1, "2026-01-01T00:00:00Z")])])

    with caplog.at_level(logging.WARNING):
        run = sync(settings(server))

    assert run.pairs() == [("user-1", "vehicle-1")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("echo <redacted>" in m for m in messages)
    assert not any(TOKEN in m for m in messages)


def test_a_short_token_does_not_garble_the_logs() -> None:
    redactor = Redactor(["t"])

    assert redactor.redact("the checkpoint for the mode") == "the checkpoint for the mode"
    assert redactor.redact("Authorization: Basic ZGVmYXVsdDp0") == "Authorization: Basic <redacted>"
    assert redactor.redact("sent default:t") == "sent <redacted>"


def test_bad_data_between_server_errors_is_not_bad_data_three_times_in_a_row(
    tmp_path: Path, hostile: t.Any
) -> None:
    """A broken body, a 503, a broken body...: never three bad answers in a row, so the run
    spends its budget like any transient failure, and its line says so truly."""
    broken = Reply(body=b'{"connections": [')
    busy = Reply(status=503, body=b"{}")
    server = hostile(lambda index, path: broken if index % 2 == 0 else busy)

    run = run_cli(tmp_path, settings(server, max_retry_seconds=60))

    line = failure(run)
    assert "still failing after" in line
    assert "in a row" not in line
    assert len(server.requests) > 2 * BODY_ATTEMPTS
