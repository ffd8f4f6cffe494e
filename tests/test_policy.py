"""The failure policy, row by row, through real HTTP: what each failure costs a run.

`policy.FAILURE_POLICY` promises, for each thing that can happen to a request, how it is
retried and the line the run ends with. `test_every_row_of_the_failure_policy_does_what_it_says`
serves each failure from a loopback server on every request, runs the real command line and
checks the promise against what the server saw, the waits the run took (`Run.sleeps`), the exit
code and the last line. `test_every_row_has_a_scenario` makes a new row come with its scenario.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import string
import time
import typing as t
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections import policy
from tap_smartcar_connections.policy import (
    BODY_ATTEMPTS,
    FAILURE_POLICY,
    FIRST_CONTACT_SECONDS,
    RETRY_BASE_SECONDS,
    RETRY_CAP_SECONDS,
    STILL_FAILING,
    Clock,
    Happened,
    Retry,
    classify,
)
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.transport import origin

from .clock import VirtualClock
from .conftest import TOKEN, run_cli, sync
from .test_hostile import Hostile, Reply, conn, failure, page
from .test_v3_hostile import (
    CONNECTIONS,
    SUBSCRIPTIONS,
    TOKEN_PATH,
    WEBHOOKS,
    Script,
    Scripted,
    Seen,
    connection,
    empty_lists,
    good_token,
    v3_list,
)

PREFIX = "tap-smartcar-connections: error: "
SERVER_ERROR = b'{"type": "SERVER", "description": "try again"}'


class TlsSocket:
    """A `Hostile` server's listening socket, speaking TLS, that can spoil chosen handshakes.

    `spoil(n)` says what the n-th connection (from 1) gets instead of a handshake: None for a
    real one, or bytes written after reading the ClientHello, before closing (b"" cuts the
    handshake short with a FIN). A failed accept is an `OSError`, which the server skips.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        spoil: t.Callable[[int], bytes | None],
    ) -> None:
        self.sock = sock
        self.context = context
        self.spoil = spoil
        self.accepted = 0

    def accept(self) -> tuple[socket.socket, t.Any]:
        connection, address = self.sock.accept()
        self.accepted += 1
        instead = self.spoil(self.accepted)
        if instead is not None:
            connection.recv(65_536)  # the ClientHello
            connection.sendall(instead)
            connection.close()
            raise OSError("spoiled on purpose")
        try:
            return self.context.wrap_socket(connection, server_side=True), address
        except OSError:
            connection.close()
            raise

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self.sock, name)


@dataclass
class Served:
    """Where a scenario's server is, and how many attempts it has seen."""

    url: str
    attempts: t.Callable[[], int] | None
    """None when nothing listens to count them (a closed port)."""
    env: dict[str, str] = field(default_factory=dict)


class Servers:
    """The loopback servers of one test, closed after it."""

    def __init__(self, certificate: tuple[Path, Path]) -> None:
        self.certificate = certificate
        self.closers: list[t.Callable[[], None]] = []

    def hostile(self, script: t.Callable[[int, str], Reply] | list[Reply]) -> Hostile:
        server = Hostile(script)
        self.closers.append(server.close)
        return server

    def scripted(self, data: Script = empty_lists, token: Script = good_token) -> Scripted:
        server = Scripted(data, token)
        self.closers.append(server.close)
        return server

    def http(self, script: t.Callable[[int, str], Reply] | list[Reply]) -> Served:
        server = self.hostile(script)
        return Served(server.url, lambda: len(server.requests))

    def https(
        self,
        script: t.Callable[[int, str], Reply] | list[Reply],
        spoil: t.Callable[[int], bytes | None] = lambda n: None,
        *,
        trusted: bool = True,
    ) -> tuple[Served, Hostile, TlsSocket]:
        server = self.hostile(script)
        cert, key = self.certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        listener = TlsSocket(server.server.socket, context, spoil)
        server.server.socket = listener  # type: ignore[assignment]
        bundle = str(cert) if trusted else ""
        env = {"REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": ""}
        url = server.url.replace("http://", "https://")
        return Served(url, lambda: listener.accepted, env), server, listener

    def close(self) -> None:
        for close in self.closers:
            close()


@pytest.fixture
def servers(certificate: tuple[Path, Path]) -> t.Iterator[Servers]:
    started = Servers(certificate)
    yield started
    started.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# How each scenario is served


def dropped(servers: Servers) -> Served:
    return servers.http([Reply(status=0)])


def tls_cut(servers: Servers) -> Served:
    served, _, _ = servers.https([], spoil=lambda n: b"")
    return served


def not_tls(servers: Servers) -> Served:
    served, _, _ = servers.https([], spoil=lambda n: b"HTTP/1.1 400 Bad Request\r\n\r\n")
    return served


def untrusted(servers: Servers) -> Served:
    served, _, _ = servers.https([page([])], trusted=False)
    return served


def stalled(servers: Servers) -> Served:
    return servers.http([Reply(body=[b"", b"{}"], pause=3)])  # headers, then nothing for 3 s


def status(code: int, body: bytes = SERVER_ERROR, **headers: str) -> t.Callable[[Servers], Served]:
    def serve(servers: Servers) -> Served:
        return servers.http([Reply(status=code, body=body, headers=headers)])

    return serve


def body(data: bytes, **headers: str) -> t.Callable[[Servers], Served]:
    def serve(servers: Servers) -> Served:
        return servers.http([Reply(body=data, headers=headers)])

    return serve


def refused(servers: Servers) -> Served:
    return Served(f"http://127.0.0.1:{closed_port()}/v2.0", None)


def unresolved(servers: Servers) -> Served:
    began = time.monotonic()
    with contextlib.suppress(OSError):
        socket.getaddrinfo("smartcar-test.invalid", 443)
    if time.monotonic() - began > 2:
        pytest.skip("this machine's resolver takes seconds to say a name does not exist")
    return Served("https://smartcar-test.invalid/v2.0", None)


def gone_after_answering(servers: Servers) -> Served:
    """The first page is served, then nothing listens any more (a deploy, a crash)."""

    def script(index: int, path: str) -> Reply:
        server.server.shutdown()
        server.server.socket.close()
        first = page([conn(2, "2026-01-02T00:00:00Z")], cursor="c2")
        return Reply(body=first.body, headers={"Connection": "close"})

    server = servers.hostile(script)
    return Served(server.url, None)  # the later attempts reach no server to count them


def connect_timeout(servers: Servers) -> Served:
    """A listener whose accept queue is full: a new connection is never completed."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(listener.getsockname())  # takes the only place
    servers.closers += [filler.close, listener.close]
    return Served(f"http://127.0.0.1:{listener.getsockname()[1]}/v2.0", None)


PAGE = json.dumps({"connections": [], "paging": {"cursor": None}}).encode()
CORRUPT_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 40
_deflate = zlib.compressobj(wbits=-15)
RAW_DEFLATE = _deflate.compress(PAGE) + _deflate.flush()
CHUNKED = {"Transfer-Encoding": "chunked", "Connection": "close"}


@dataclass(frozen=True)
class Scenario:
    """One failure served on every request, and the row of the policy it must meet."""

    name: str
    happened: Happened
    """The row it meets."""
    retry: Retry
    """How the run must retry it: what issue 17 asks of the row (not read from the table, so
    that a changed row fails here), or of a host that has answered before."""
    serve: t.Callable[[Servers], Served]
    said: tuple[str, ...]
    """What the last line says about what happened."""
    budget: int = 45
    """max_retry_seconds."""
    settings: dict[str, t.Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario(
        "dropped", Happened.DROPPED, Retry.BUDGET, dropped, ("the connection was closed or reset",)
    ),
    Scenario(
        "tls cut", Happened.TLS_CUT, Retry.BUDGET, tls_cut, ("the TLS handshake was cut short",)
    ),
    Scenario(
        "timeout",
        Happened.TIMEOUT,
        Retry.BUDGET,
        stalled,
        ("request_timeout",),
        budget=12,  # room for a fourth attempt after three timeouts (about 1 s each)
        settings={"request_timeout": 1},
    ),
    Scenario("408", Happened.BUSY, Retry.BUDGET, status(408), ("408",)),
    Scenario("425", Happened.BUSY, Retry.BUDGET, status(425), ("425",)),
    Scenario("429", Happened.BUSY, Retry.BUDGET, status(429), ("429",)),
    Scenario("503", Happened.BUSY, Retry.BUDGET, status(503), ("503",)),
    Scenario(
        "refused on first contact",
        Happened.UNREACHABLE,
        Retry.FIRST_CONTACT,
        refused,
        ("cannot reach api_url", "the connection was refused"),
        budget=600,
    ),
    Scenario(
        "no such host",
        Happened.UNREACHABLE,
        Retry.FIRST_CONTACT,
        unresolved,
        ("the host name does not resolve",),
        budget=600,
    ),
    Scenario(
        "connect timeout",
        Happened.UNREACHABLE,
        Retry.FIRST_CONTACT,
        connect_timeout,
        ("connecting timed out",),
        budget=2,  # one attempt: connecting takes request_timeout
        settings={"request_timeout": 1},
    ),
    Scenario(
        "refused after the host answered",
        Happened.UNREACHABLE,
        Retry.BUDGET,
        gone_after_answering,
        ("the connection was refused",),
        budget=600,
    ),
    Scenario(
        "invalid json",
        Happened.BAD_DATA,
        Retry.FEW,
        body(b"{not json"),
        ("not the expected connections",),
    ),
    Scenario(
        "incomplete json",
        Happened.BAD_DATA,
        Retry.FEW,
        body(b'{"connections": ['),
        ("not the expected connections",),
    ),
    Scenario(
        "corrupt gzip",
        Happened.BAD_DATA,
        Retry.FEW,
        body(CORRUPT_GZIP, **{"Content-Encoding": "gzip"}),
        ("a corrupt gzip body",),
    ),
    Scenario(
        "raw deflate",
        Happened.BAD_DATA,
        Retry.FEW,
        body(RAW_DEFLATE, **{"Content-Encoding": "deflate"}),
        ("a body in an encoding the tap did not ask for ('deflate')",),
    ),
    Scenario(
        "short body",
        Happened.BAD_DATA,
        Retry.FEW,
        body(PAGE, **{"Content-Length": str(len(PAGE) + 100), "Connection": "close"}),
        ("a body shorter than it said",),
    ),
    Scenario(
        "short chunk",
        Happened.BAD_DATA,
        Retry.FEW,
        body(b"%x\r\n" % len(PAGE) + PAGE[:10], **CHUNKED),
        ("a body shorter than it said",),
    ),
    Scenario(
        "page check",
        Happened.BAD_DATA,
        Retry.FEW,
        body(b'{"connections": [], "paging": {}}'),
        ("a page with no usable paging.cursor",),
    ),
    Scenario("not tls", Happened.TLS_FAILED, Retry.FEW, not_tls, ("the TLS handshake failed",)),
    Scenario(
        "certificate",
        Happened.CERTIFICATE,
        Retry.NEVER,
        untrusted,
        ("its TLS certificate was not accepted", "REQUESTS_CA_BUNDLE"),
    ),
    Scenario(
        "redirect",
        Happened.REDIRECT,
        Retry.NEVER,
        status(302, b"{}", Location="http://127.0.0.1:9/v2.0/management/connections"),
        ("302", "a redirect to http://127.0.0.1:9", "Check api_url"),
    ),
    Scenario(
        "404",
        Happened.REFUSED,
        Retry.NEVER,
        status(404, b'{"type": "NOT_FOUND", "description": "no such route"}'),
        ("404 NOT_FOUND: no such route", "To fix: check api_url"),
    ),
]


def line_pattern(template: str, **known: str) -> str:
    """A regex for `template` formatted: `known` fields as given, any other as some text."""
    pattern = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name is not None:
            pattern += re.escape(known[name]) if name in known else ".+"
    return pattern


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_row_of_the_failure_policy_does_what_it_says(
    tmp_path: Path, servers: Servers, scenario: Scenario
) -> None:
    served = scenario.serve(servers)
    config = {
        "management_token": TOKEN,
        "api_url": served.url,
        "modes": ["live"],
        "max_retry_seconds": scenario.budget,
        **scenario.settings,
    }

    run = run_cli(tmp_path, config, env=served.env)

    line = failure(run).removeprefix(PREFIX)
    attempts = len(run.sleeps) + 1  # a wait before each retry, and no other wait
    if served.attempts is not None:
        assert served.attempts() == attempts
    assert all(waited >= RETRY_BASE_SECONDS for waited in run.sleeps)
    assert sum(run.sleeps) <= scenario.budget
    retry = scenario.retry
    template = STILL_FAILING if retry is Retry.BUDGET else FAILURE_POLICY[scenario.happened].line
    known = {
        "attempts": str(attempts),
        "budget": str(scenario.budget),
        "setting": "api_url",
        "url": served.url,
        "origin": origin(served.url),
    }
    assert re.fullmatch(line_pattern(template, **known), line), line
    for words in scenario.said:
        assert words in line
    assert "ChunkedEncodingError" not in run.stderr
    if retry is Retry.BUDGET:  # the first three waits (1 + 2 + 4 s at most) leave room
        assert attempts > BODY_ATTEMPTS
        # The budget was spent: the longest wait the next try could have drawn did not fit.
        ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempts - 1))
        assert sum(run.sleeps) + ceiling > scenario.budget
    if retry is Retry.BUDGET and scenario.budget > 3 * RETRY_CAP_SECONDS:
        assert sum(run.sleeps) > FIRST_CONTACT_SECONDS
    if retry is Retry.FEW:
        assert attempts == BODY_ATTEMPTS
    if retry is Retry.FIRST_CONTACT:
        assert sum(run.sleeps) <= FIRST_CONTACT_SECONDS
        assert attempts >= 3 or scenario.budget < FIRST_CONTACT_SECONDS
    if retry is Retry.NEVER:
        assert attempts == 1


DIRECTLY = {Happened.BAD_URL: "test_a_url_that_cannot_be_requested_is_never_retried"}
"""Rows no scenario can reach through the command line, and the test that covers each."""


def test_every_row_has_a_scenario() -> None:
    covered = {scenario.happened for scenario in SCENARIOS} | set(DIRECTLY)
    assert covered == set(Happened)
    assert set(FAILURE_POLICY) == set(Happened)
    for name in DIRECTLY.values():
        assert callable(globals()[name])


def test_a_url_that_cannot_be_requested_is_never_retried() -> None:
    """`Happened.BAD_URL`, called directly: settings validation refuses such a URL first.

    `settings.check_url` names a URL setting without a usable scheme and host before any
    request, so no run reaches this row; the policy still has to classify what requests
    raises for one, should a URL it was given slip through.
    """
    exc = requests.exceptions.InvalidURL("Invalid URL 'https://[::1': no host supplied")

    found = classify(exc, lambda text, limit: str(text)[:limit], Clock())

    assert found.happened is Happened.BAD_URL
    assert FAILURE_POLICY[Happened.BAD_URL].retry is Retry.NEVER


# One transient failure, once: retried, and the run delivers everything


@pytest.mark.parametrize(
    ("once", "warned"),
    [
        (Reply(status=0), "the connection was closed or reset"),
        (Reply(status=408, body=b"<html>try again</html>"), "408 Request Timeout"),
        (Reply(status=425, body=b"<html>try again</html>"), "425 Too Early"),
    ],
    ids=["dropped", "408", "425"],
)
def test_a_one_off_failure_of_the_first_request_to_the_v2_api_is_retried(
    tmp_path: Path, servers: Servers, once: Reply, warned: str
) -> None:
    """A load balancer recycling a connection, or answering 408 or 425 once: one wait."""
    server = servers.hostile([once, page([conn(1, "2026-01-01T00:00:00Z")])])
    config = {"management_token": TOKEN, "api_url": server.url, "modes": ["live"]}

    run = run_cli(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    assert run.pairs() == [("user-1", "vehicle-1")]
    assert len(server.requests) == 2
    assert run.sleeps == [RETRY_BASE_SECONDS]
    (warning,) = [line for line in run.stderr.splitlines() if "retrying in" in line]
    assert warned in warning


def drop_first(script: Script) -> Script:
    """`script`, but its first request's connection is closed without an answer."""
    return lambda index, request: Reply(status=0) if index == 0 else script(index, request)


def one_of_each(index: int, request: Seen) -> Reply:
    if request.path == CONNECTIONS:
        return v3_list([connection(1)], request)
    return empty_lists(index, request)


@pytest.mark.parametrize("dropped_on", [TOKEN_PATH, CONNECTIONS, SUBSCRIPTIONS])
def test_one_dropped_first_request_to_a_v3_origin_is_retried(
    tmp_path: Path, servers: Servers, dropped_on: str
) -> None:
    """The token endpoint, the Vehicle API and the Management API each on their own origin.

    The first subscriptions request is the Management API's first, after every connection
    was read from the Vehicle API.
    """

    def route(path: str, script: Script) -> Script:
        return drop_first(script) if path == dropped_on else script

    token_host = servers.scripted(token=route(TOKEN_PATH, good_token))
    vehicle = servers.scripted(route(CONNECTIONS, one_of_each))
    management = servers.scripted(route(SUBSCRIPTIONS, one_of_each))
    config = token_host.settings(
        v3_vehicle_api_url=vehicle.root + "/vehicle/v3",
        v3_management_api_url=management.root + "/management/v3",
    )

    run = run_cli(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    assert [(r["userId"], r["vehicleId"]) for r in run.records if "connectionId" in r] == [
        ("user-1", "vehicle-1")
    ]
    tries = {path: 2 if path == dropped_on else 1 for path in (TOKEN_PATH, CONNECTIONS)}
    assert [s.path for s in token_host.tokens] == [TOKEN_PATH] * tries[TOKEN_PATH]
    assert [s.path for s in vehicle.data] == [CONNECTIONS] * tries[CONNECTIONS]
    subscriptions = [SUBSCRIPTIONS] * (2 if dropped_on == SUBSCRIPTIONS else 1)
    assert [s.path for s in management.data] == [*subscriptions, WEBHOOKS]
    assert run.sleeps == [RETRY_BASE_SECONDS]


def test_a_tls_handshake_cut_short_mid_run_is_retried_and_nothing_is_lost(
    tmp_path: Path, servers: Servers
) -> None:
    """Over HTTPS, a new connection per page; the 3rd handshake is cut after the ClientHello."""
    stamps = ["2026-01-04T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"]
    pages = [page([conn(4 - i, at)], cursor=f"c{i + 2}") for i, at in enumerate(stamps)]
    pages.append(page([conn(0, "2026-01-01T00:00:00Z")]))
    script = [Reply(body=p.body, headers={"Connection": "close"}) for p in pages]
    served, server, listener = servers.https(script, spoil=lambda n: b"" if n == 3 else None)
    config = {"management_token": TOKEN, "api_url": served.url, "modes": ["live"]}

    run = run_cli(tmp_path, config, env=served.env)

    assert run.exit_code == 0, run.stderr
    assert [r["vehicleId"] for r in run.records] == [f"vehicle-{n}" for n in (4, 3, 2, 0)]
    assert listener.accepted == 5
    assert len(server.requests) == 4
    assert run.sleeps == [RETRY_BASE_SECONDS]
    (warning,) = [line for line in run.stderr.splitlines() if "retrying in" in line]
    assert "the TLS handshake was cut short" in warning


# First contact: a short bounded retry


class UnluckyJitter:
    """The backoff jitter a 10 s outage costs most: short waits while the host is down (the
    low end of each backoff up to 8 s), then the longest wait once it would be back."""

    def uniform(self, low: float, high: float) -> float:
        return low if high <= 8 else high


def test_a_nightly_run_rides_out_a_10_second_outage_on_first_contact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API's port is closed until 10 virtual seconds of the run's waits have passed."""
    port = closed_port()
    simulator = SmartcarSimulator(generate_connections(30, seed=4), token=TOKEN, port=port)

    class TenSecondOutage(VirtualClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if self.skipped >= 10:
                simulator.start()

    monkeypatch.setattr(TapSmartcarConnections, "clock_class", TenSecondOutage)
    monkeypatch.setattr(policy, "random", UnluckyJitter())
    config = {"management_token": TOKEN, "api_url": f"http://127.0.0.1:{port}/v2.0"}
    try:
        run = sync({**config, "modes": ["live"]})
    finally:
        simulator.stop()

    everyone = {(c["userId"], c["vehicleId"]) for c in simulator.connections("live")}
    assert set(run.pairs()) == everyone
    assert len(run.sleeps) >= 4
    assert 10 <= sum(run.sleeps) <= FIRST_CONTACT_SECONDS
    assert len(simulator.requests) == 1
