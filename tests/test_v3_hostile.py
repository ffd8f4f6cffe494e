"""API v3 through real HTTP: the webhooks and subscriptions streams, and hostile v3 answers.

The streams run against the simulator (`smartcar_simulator`); what it cannot send (a missing
`meta.totalCount`, a page of the wrong number, a token endpoint answering nonsense) comes from
a scripted loopback server, `Scripted`. Every run goes through the real console script, so
exit codes and the last line are what a user sees.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest

from smartcar_simulator import SmartcarSimulator, generate_connections, generate_webhooks
from tap_smartcar_connections.policy import BODY_ATTEMPTS
from tap_smartcar_connections.redaction import MIN_RUN
from tap_smartcar_connections.timestamps import normalize_timestamp

from .conftest import Run, bookmarks, run_cli
from .test_hostile import Reply, failure, send

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))
TOKEN_PATH = "/oauth2/token"
CONNECTIONS = "/vehicle/v3/connections"
WEBHOOKS = "/management/v3/webhooks"
SUBSCRIPTIONS = "/management/v3/subscriptions"


# The simulator


def v3_settings(sim: SmartcarSimulator, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "api_version": "v3",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "v3_token_url": sim.v3_token_url,
        "v3_vehicle_api_url": sim.v3_vehicle_api_url,
        "v3_management_api_url": sim.v3_management_api_url,
        "max_retry_seconds": 30,
        **extra,
    }


@pytest.fixture
def sim() -> t.Iterator[SmartcarSimulator]:
    """60 connections (live and simulated), 7 webhooks, 2 subscriptions per webhook."""
    data = generate_connections(60, seed=5)
    with SmartcarSimulator(data, webhooks=generate_webhooks(7, seed=3)) as simulator:
        yield simulator


def stream_records(run: Run, stream: str) -> list[dict[str, t.Any]]:
    return [m["record"] for m in run.messages if m["type"] == "RECORD" and m["stream"] == stream]


def connections_of(run: Run) -> list[dict[str, t.Any]]:
    return stream_records(run, "connections")


def pairs(run: Run) -> list[tuple[str, str]]:
    return [(r["userId"], r["vehicleId"]) for r in connections_of(run)]


def expected_webhooks(sim: SmartcarSimulator) -> list[dict[str, t.Any]]:
    return [{**w, "createdAt": normalize_timestamp(w["createdAt"])} for w in sim.webhooks()]


def expected_subscriptions(sim: SmartcarSimulator, mode: str) -> list[dict[str, t.Any]]:
    return [
        {
            **s,
            "createdAt": normalize_timestamp(s["createdAt"]),
            "updatedAt": normalize_timestamp(s["updatedAt"]),
        }
        for s in sim.subscriptions(mode)
    ]


def requested(sim: SmartcarSimulator, path: str) -> list[dict[str, str]]:
    return [r.params for r in sim.requests if r.path == path]


def activations(run: Run, stream: str) -> list[int]:
    """Indexes in `run.messages` of the stream's ACTIVATE_VERSION messages."""
    return [
        i
        for i, m in enumerate(run.messages)
        if m["type"] == "ACTIVATE_VERSION" and m["stream"] == stream
    ]


def last_record_index(run: Run, stream: str) -> int:
    return max(
        i for i, m in enumerate(run.messages) if m["type"] == "RECORD" and m["stream"] == stream
    )


def discover(tmp_path: Path, config: dict[str, t.Any]) -> dict[str, t.Any]:
    path = tmp_path / "discover.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [CLI, "--config", str(path), "--discover"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    catalog: dict[str, t.Any] = json.loads(proc.stdout)
    return catalog


# The webhooks and subscriptions streams


def test_webhooks_and_subscriptions_are_discovered_under_v3_only(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    v3 = discover(tmp_path, v3_settings(sim))
    v2 = discover(tmp_path, {"management_token": "sk-test-0123456789", "api_url": sim.api_url})

    methods = {s["tap_stream_id"]: s["replication_method"] for s in v3["streams"]}
    assert methods == {
        "connections": "INCREMENTAL",
        "webhooks": "FULL_TABLE",
        "subscriptions": "FULL_TABLE",
    }
    assert [s["tap_stream_id"] for s in v2["streams"]] == ["connections"]
    for stream in v3["streams"]:
        if stream["tap_stream_id"] != "connections":
            assert stream["key_properties"] == ["id"]
    assert sim.requests == []


def test_webhooks_and_subscriptions_are_what_the_api_serves_page_by_page(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    run = run_cli(tmp_path, v3_settings(sim, page_size=2))

    assert run.exit_code == 0, run.stderr
    webhooks = expected_webhooks(sim)
    assert len(webhooks) == 7
    assert stream_records(run, "webhooks") == webhooks
    for record in webhooks:
        assert record["triggers"]
        assert all(set(s) == {"group", "name", "code"} for s in record["triggers"] + record["data"])
    subscriptions = stream_records(run, "subscriptions")
    assert subscriptions == expected_subscriptions(sim, "live") + expected_subscriptions(
        sim, "simulated"
    )
    assert {s["mode"] for s in subscriptions} == {"live", "simulated"}
    for record in webhooks + subscriptions:
        for name in ("createdAt", "updatedAt"):
            if name in record:
                assert len(record[name]) == 27 and record[name].endswith("Z")
    assert [p["page[number]"] for p in requested(sim, WEBHOOKS)] == ["1", "2", "3", "4"]
    assert {p["page[size]"] for p in requested(sim, WEBHOOKS)} == {"2"}
    for mode in ("live", "simulated"):
        pages = [p for p in requested(sim, SUBSCRIPTIONS) if p["filter[vehicle.mode]"] == mode]
        wanted = math.ceil(len(sim.subscriptions(mode)) / 2)
        assert [p["page[number]"] for p in pages] == [str(n) for n in range(1, wanted + 1)]
        assert all(set(p) == {"filter[vehicle.mode]", "page[number]", "page[size]"} for p in pages)
    assert sim.tokens_issued == 1
    for stream in ("webhooks", "subscriptions"):
        assert "replication_key_value" not in json.dumps(run.state["bookmarks"].get(stream, {}))


def test_subscriptions_are_filtered_by_the_configured_user_and_vehicle(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    chosen = sim.subscriptions("simulated")[0]
    config = v3_settings(
        sim, modes=["simulated"], user_id=chosen["userId"], vehicle_id=chosen["vehicleId"]
    )

    run = run_cli(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    assert stream_records(run, "subscriptions") == [
        s
        for s in expected_subscriptions(sim, "simulated")
        if (s["userId"], s["vehicleId"]) == (chosen["userId"], chosen["vehicleId"])
    ]
    assert requested(sim, SUBSCRIPTIONS) == [
        {
            "filter[vehicle.mode]": "simulated",
            "filter[userId]": chosen["userId"],
            "filter[vehicleId]": chosen["vehicleId"],
            "page[size]": "100",
            "page[number]": "1",
        }
    ]


def test_activate_version_follows_each_streams_records_after_a_complete_read(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    run = run_cli(tmp_path, v3_settings(sim, page_size=3, emit_activate_version_messages=True))

    assert run.exit_code == 0, run.stderr
    for stream in ("webhooks", "subscriptions"):
        (index,) = activations(run, stream)
        assert index > last_record_index(run, stream)
        assert (
            run.messages[index]["version"]
            == run.messages[last_record_index(run, stream)]["version"]
        )
    assert activations(run, "connections") == []


def test_without_the_setting_no_activate_version_is_sent(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    run = run_cli(tmp_path, v3_settings(sim, page_size=3))

    assert run.exit_code == 0, run.stderr
    assert not [m for m in run.messages if m["type"] == "ACTIVATE_VERSION"]


def remove_on_page(sim: SmartcarSimulator, path: str, number: str, times: int) -> list[str]:
    """Have the simulator drop the newest webhook when `path`'s page `number` is asked for."""
    removed: list[str] = []

    def hook(requested_path: str, params: dict[str, str]) -> None:
        if requested_path == path and params.get("page[number]") == number and len(removed) < times:
            newest = sim.webhooks()[0]["id"]
            sim.remove_webhook(newest)
            removed.append(newest)

    sim.before_request.append(hook)
    return removed


def test_a_webhook_removed_mid_read_makes_a_reread_and_nothing_is_sent_twice(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    before = expected_webhooks(sim)
    removed = remove_on_page(sim, WEBHOOKS, "2", times=1)

    run = run_cli(tmp_path, v3_settings(sim, page_size=2, emit_activate_version_messages=True))

    assert run.exit_code == 0, run.stderr
    assert len(removed) == 1
    ids = [r["id"] for r in stream_records(run, "webhooks")]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(w["id"] for w in before)  # the one pulled up onto page 1 too
    assert "reading it again (1 of 2)" in run.stderr
    pages = [p["page[number]"] for p in requested(sim, WEBHOOKS)]
    assert pages.count("1") == 2
    (index,) = activations(run, "webhooks")
    assert index > last_record_index(run, "webhooks")


def test_a_list_that_changes_on_every_read_sends_no_activate_version(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    before = expected_webhooks(sim)
    removed = remove_on_page(sim, WEBHOOKS, "2", times=3)

    run = run_cli(tmp_path, v3_settings(sim, page_size=2, emit_activate_version_messages=True))

    assert run.exit_code == 0, run.stderr
    assert len(removed) == 3
    ids = [r["id"] for r in stream_records(run, "webhooks")]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {w["id"] for w in before}
    assert activations(run, "webhooks") == []
    assert activations(run, "subscriptions") != []
    assert "on every one of 3 reads: no ACTIVATE_VERSION is sent" in run.stderr


# Hostile v3 answers from the simulator


def stop_when(sim: SmartcarSimulator, path: str, number: str, fault: t.Callable[[], None]) -> None:
    """Turn a fault on once `path`'s page `number` is requested."""

    def hook(requested_path: str, params: dict[str, str]) -> None:
        if requested_path == path and params.get("page[number]") == number:
            fault()

    sim.before_request.append(hook)


def test_missing_links_are_retried_then_fail_with_a_resumable_state(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    config = v3_settings(sim, page_size=5, modes=["live"])

    def omit() -> None:
        sim.faults.v3_omit_links = True

    stop_when(sim, CONNECTIONS, "3", omit)

    run = run_cli(tmp_path, config)

    line = failure(run)
    assert "no links.next (not even null)" in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert [p["page[number]"] for p in requested(sim, CONNECTIONS)] == ["1", "2", "3", "3", "3"]
    (partition,) = run.state["bookmarks"]["connections"]["partitions"]
    assert partition["checkpoint"]["cursor"] == "3"
    assert "replication_key_value" not in partition
    assert len(connections_of(run)) == 10

    sim.before_request.clear()
    sim.faults.v3_omit_links = False
    again = run_cli(tmp_path, config, state=run.state)

    assert again.exit_code == 0, again.stderr
    everything = {c["connectionId"] for c in sim.connections_v3("live")}
    assert {r["connectionId"] for r in connections_of(run) + connections_of(again)} == everything
    assert bookmarks(again.state)["mode=live"] == max(
        normalize_timestamp(c["connectedAt"]) for c in sim.connections_v3("live")
    )


@pytest.mark.parametrize("path", [CONNECTIONS, WEBHOOKS, SUBSCRIPTIONS])
def test_a_next_link_to_another_host_is_never_followed(
    tmp_path: Path, sim: SmartcarSimulator, scripted: t.Callable[..., Scripted], path: str
) -> None:
    elsewhere = scripted()
    size = 2

    def move() -> None:
        sim.faults.v3_next_elsewhere = f"{elsewhere.root}{path}?page[number]=2&page[size]={size}"

    stop_when(sim, path, "1", move)

    run = run_cli(tmp_path, v3_settings(sim, page_size=size, modes=["live"]))

    line = failure(run)
    assert f"a links.next to {elsewhere.root}{path}, not to page 2 here" in line
    assert elsewhere.seen == []
    assert [p["page[number]"] for p in requested(sim, path)] == ["1"] * BODY_ATTEMPTS
    assert "sim-at-" not in run.stderr


@pytest.mark.parametrize("offset", [1, 30])
def test_a_total_count_above_what_the_last_page_holds_fails_loudly(
    tmp_path: Path, sim: SmartcarSimulator, offset: int
) -> None:
    sim.faults.v3_total_offset = offset

    run = run_cli(tmp_path, v3_settings(sim, page_size=100, modes=["live"]))

    line = failure(run)
    assert "a page 1 whose links.next is null, while meta.totalCount is" in line
    assert run.records == []


def test_a_total_count_below_what_was_read_is_never_a_complete_read(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    sim.faults.v3_total_offset = -1
    live = len(sim.connections_v3("live"))
    config = v3_settings(sim, page_size=100, modes=["live"], emit_activate_version_messages=True)

    run = run_cli(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    assert len({r["connectionId"] for r in connections_of(run)}) == live
    assert len(connections_of(run)) == live
    assert f"{live} distinct connections were read but the list's size" in run.stderr
    assert "the bookmark stays where it was" in run.stderr
    assert bookmarks(run.state) == {}
    assert activations(run, "webhooks") == []
    assert activations(run, "subscriptions") == []


@pytest.mark.parametrize(
    "faults",
    [
        {"truncate_every": 3},
        {"error_every": 2, "html_errors": True, "retry_after": None},
        {"chaos_rate": 0.3, "chaos_seed": 3},
    ],
    ids=["truncated", "html errors", "chaos"],
)
def test_transient_faults_on_every_v3_route_cost_nothing(
    tmp_path: Path, sim: SmartcarSimulator, faults: dict[str, t.Any]
) -> None:
    for name, value in faults.items():
        setattr(sim.faults, name, value)

    run = run_cli(tmp_path, v3_settings(sim, page_size=10, max_retry_seconds=60))

    assert run.exit_code == 0, run.stderr
    assert stream_records(run, "webhooks") == expected_webhooks(sim)
    assert stream_records(run, "subscriptions") == expected_subscriptions(
        sim, "live"
    ) + expected_subscriptions(sim, "simulated")
    wanted = {c["connectionId"] for m in ("live", "simulated") for c in sim.connections_v3(m)}
    connections = stream_records(run, "connections")
    assert {r["connectionId"] for r in connections} == wanted
    assert len(connections) == len(wanted)
    assert any(r.status != 200 or r.fault for r in sim.requests)
    assert "retrying in" in run.stderr
    if faults.get("html_errors"):
        assert "the body was not Smartcar's error JSON" in run.stderr
        assert "<html" not in run.stderr.lower()


def test_a_future_dated_v3_connection_is_emitted_with_a_warning_but_not_bookmarked(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    sim.add({"userId": "u-f", "vehicleId": "v-future", "connectedAt": "2999-01-01T00:00:00Z"})

    run = run_cli(tmp_path, v3_settings(sim, modes=["live"]))

    assert run.exit_code == 0, run.stderr
    assert ("u-f", "v-future") in pairs(run)
    warned = [line for line in run.stderr.splitlines() if "v-future" in line]
    assert len(warned) == 1
    assert "after this run started" in warned[0]
    mark = bookmarks(run.state)["mode=live"]
    assert mark == max(
        normalize_timestamp(c["connectedAt"])
        for c in sim.connections_v3("live")
        if c["vehicleId"] != "v-future"
    )
    (partition,) = run.state["bookmarks"]["connections"]["partitions"]
    assert partition["api_version"] == "v3"


def test_a_token_that_lives_one_second_is_renewed_and_never_used_past_its_end(
    tmp_path: Path,
) -> None:
    with SmartcarSimulator(generate_connections(6, seed=2), token_lifetime=1) as simulator:
        # Every third request is refused with a 2 s Retry-After: the token ends during each wait.
        simulator.faults.rate_limit_every, simulator.faults.retry_after = 3, "2"

        run = run_cli(tmp_path, v3_settings(simulator, modes=["live"]))

        assert run.exit_code == 0, run.stderr
        log = [(r.path, r.status) for r in simulator.requests]
        assert log == [
            (TOKEN_PATH, 200),
            (CONNECTIONS, 200),
            (SUBSCRIPTIONS, 429),
            (TOKEN_PATH, 200),
            (SUBSCRIPTIONS, 200),
            (WEBHOOKS, 429),
            (TOKEN_PATH, 200),
            (WEBHOOKS, 200),
        ]
        assert simulator.tokens_issued == 3
        assert run.stderr.count("Fetched a Smartcar API v3 access token (valid 1 s)") == 3
        assert stream_records(run, "webhooks") == expected_webhooks(simulator)
        assert len(connections_of(run)) == len(simulator.connections_v3("live"))


# A scripted v3 server


@dataclass
class Seen:
    """One request a `Scripted` server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    arrived: float = field(default_factory=time.monotonic)


Script = t.Callable[[int, Seen], Reply]


def good_token(index: int, request: Seen) -> Reply:
    payload = {"access_token": f"tok-{secrets.token_hex(12)}", "token_type": "Bearer"}
    return Reply(body=json.dumps({**payload, "expires_in": 3600}).encode())


def v3_list(
    items: list[dict[str, t.Any]],
    request: Seen,
    *,
    total: int | None = None,
    last: bool = True,
    meta: dict[str, t.Any] | None = None,
    links: dict[str, t.Any] | None = None,
) -> Reply:
    """A JSON:API list answering `request`; `last` makes `links.next` null."""
    number = int(request.query.get("page[number]", ["1"])[0])
    size = int(request.query.get("page[size]", ["10"])[0])
    given_meta: dict[str, t.Any] = {
        "pageNumber": number,
        "pageSize": size,
        "totalCount": len(items) if total is None else total,
        "orderBy": "createdAt",
        "orderDirection": "desc",
    }
    if meta is not None:
        given_meta = {k: v for k, v in {**given_meta, **meta}.items() if v is not ...}
    next_link = None if last else f"{request.path}?page[number]={number + 1}&page[size]={size}"
    body = {"data": items, "meta": given_meta, "links": links or {"next": next_link}}
    return Reply(
        body=json.dumps(body).encode(), headers={"Content-Type": "application/vnd.api+json"}
    )


def connection(n: int, **changes: t.Any) -> dict[str, t.Any]:
    """A v3 connection; `changes` replaces top-level keys (`None` removes one) or `year`."""
    item: dict[str, t.Any] = {
        "id": f"conn-{n}",
        "type": "connection",
        "attributes": {
            "permissions": ["read_vehicle_info"],
            "vehicle": {
                "make": "Tesla",
                "model": "Model 3",
                "year": changes.pop("year", 2020),
                "mode": "live",
                "powertrainType": "BEV",
            },
        },
        "relationships": {
            "vehicle": {"data": {"id": f"vehicle-{n}", "type": "vehicle"}},
            "user": {"data": {"id": f"user-{n}", "type": "user"}},
        },
        "meta": {"createdAt": f"2026-01-{n:02d}T00:00:00Z", "updatedAt": None},
    }
    for key, value in changes.items():
        if value is None:
            item.pop(key, None)
        else:
            item[key] = value
    return item


def empty_lists(index: int, request: Seen) -> Reply:
    return v3_list([], request)


class Scripted:
    """A loopback server: the token endpoint answers with `token`, anything else with `data`.

    Each script gets the index of the request among those it answers, and the request.
    """

    def __init__(self, data: Script = empty_lists, token: Script = good_token) -> None:
        self.seen: list[Seen] = []
        self.tokens: list[Seen] = []
        self.data: list[Seen] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                url = urlsplit(self.path)
                request = Seen(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    dict(self.headers),
                    self.rfile.read(length) if length else b"",
                )
                scripted.seen.append(request)
                kind = scripted.tokens if url.path == TOKEN_PATH else scripted.data
                kind.append(request)
                script = token if url.path == TOKEN_PATH else data
                reply = script(len(kind) - 1, request)
                if reply.status == 0:
                    self.close_connection = True
                    return
                send(self, reply)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"

    def settings(self, **extra: t.Any) -> dict[str, t.Any]:
        return {
            "api_version": "v3",
            "client_id": "client_scripted",
            "client_secret": "scripted-client-secret",
            "v3_token_url": self.root + TOKEN_PATH,
            "v3_vehicle_api_url": self.root + "/vehicle/v3",
            "v3_management_api_url": self.root + "/management/v3",
            "modes": ["live"],
            "max_retry_seconds": 20,
            **extra,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> t.Iterator[t.Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(data: Script = empty_lists, token: Script = good_token) -> Scripted:
        servers.append(Scripted(data, token))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def connections_page(*items: dict[str, t.Any], **kwargs: t.Any) -> Script:
    """Every connections request gets the same page of `items`."""

    def script(index: int, request: Seen) -> Reply:
        if request.path == CONNECTIONS:
            return v3_list(list(items), request, **kwargs)
        return empty_lists(index, request)

    return script


def connection_requests(server: Scripted) -> list[Seen]:
    return [s for s in server.data if s.path == CONNECTIONS]


# Hostile lists


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"meta": {"totalCount": ...}}, "a page with no meta.totalCount"),
        ({"meta": {"totalCount": -1}}, "a page with a negative (-1) meta.totalCount"),
        ({"meta": {"pageNumber": 2}}, "sent page 2 when page 1 was asked for"),
        ({"links": {"self": "x"}, "total": 5}, "a page 1 with no links.next (not even null)"),
        ({"total": 5}, "a page 1 whose links.next is null, while meta.totalCount is 5"),
    ],
    ids=["no total", "negative total", "wrong page", "no next", "total above"],
)
def test_a_list_that_contradicts_itself_fails_after_a_few_tries(
    tmp_path: Path, scripted: t.Callable[..., Scripted], kwargs: dict[str, t.Any], expected: str
) -> None:
    server = scripted(connections_page(connection(1), connection(2), **kwargs))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert expected in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert len(connection_requests(server)) == BODY_ATTEMPTS
    assert run.records == []


def test_a_last_page_without_links_next_is_accepted_when_the_count_says_it_is_last(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """JSON:API may leave `next` out on the last page: 2 of 2 read, the walk is complete."""
    server = scripted(connections_page(connection(1), connection(2), links={"self": "x"}))

    run = run_cli(tmp_path, server.settings())

    assert run.exit_code == 0, run.stderr.splitlines()[-1]
    assert len(connection_requests(server)) == 1
    assert len([r for r in run.records if "connectionId" in r]) == 2


def test_smaller_pages_than_page_size_ask_for_the_setting_at_once(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    server = scripted(connections_page(connection(1), meta={"pageSize": 10}))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "pages hold 10 items, not the page_size 100 asked for: set page_size to 10" in line
    assert len(connection_requests(server)) == 1


def test_a_connection_without_a_user_id_fails_naming_it(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    orphan = connection(2, relationships={"vehicle": {"data": {"id": "vehicle-2"}}})
    server = scripted(connections_page(connection(3), orphan))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "connection conn-2 without a user id" in line
    assert len(connection_requests(server)) == BODY_ATTEMPTS
    assert run.records == []


def test_the_user_id_falls_back_to_the_attributes(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    fallback = connection(2, relationships={"vehicle": {"data": {"id": "vehicle-2"}}})
    fallback["attributes"]["user"] = {"id": "user-from-attributes"}
    both = connection(1)
    both["attributes"]["user"] = {"id": "ignored"}
    server = scripted(connections_page(fallback, both))

    run = run_cli(tmp_path, server.settings())

    assert run.exit_code == 0, run.stderr
    assert pairs(run) == [("user-from-attributes", "vehicle-2"), ("user-1", "vehicle-1")]


@pytest.mark.parametrize("year", ["2020", True, 2020.5])
def test_a_year_that_is_not_an_integer_is_a_broken_body(
    tmp_path: Path, scripted: t.Callable[..., Scripted], year: t.Any
) -> None:
    server = scripted(connections_page(connection(1, year=year)))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "not the expected connections JSON:API list" in line
    assert "attributes.vehicle.year" in line
    assert len(connection_requests(server)) == BODY_ATTEMPTS


@pytest.mark.parametrize(
    "meta",
    [
        {"createdAt": "2024-02-30T00:00:00Z", "updatedAt": None},
        {"createdAt": "2026-01-01T00:00:00Z", "updatedAt": "yesterday"},
        {"createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-13-01T00:00:00Z"},
    ],
    ids=["impossible createdAt", "updatedAt not a date", "impossible updatedAt"],
)
def test_a_date_that_is_not_iso_8601_is_a_broken_body(
    tmp_path: Path, scripted: t.Callable[..., Scripted], meta: dict[str, t.Any]
) -> None:
    server = scripted(connections_page(connection(2), connection(1, meta=meta)))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "with a date that is not ISO 8601" in line
    assert len(connection_requests(server)) == BODY_ATTEMPTS


def test_dates_are_normalised_with_or_without_an_updated_at(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    changed = {"createdAt": "2026-01-01T01:00:00+01:00", "updatedAt": "2026-01-03T00:00:00.5Z"}
    server = scripted(connections_page(connection(2), connection(1, meta=changed)))

    run = run_cli(tmp_path, server.settings())

    assert run.exit_code == 0, run.stderr.splitlines()[-1]
    stamps = [(r["connectedAt"], r["updatedAt"]) for r in run.records if "connectionId" in r]
    assert stamps == [
        ("2026-01-02T00:00:00.000000Z", None),
        ("2026-01-01T00:00:00.000000Z", "2026-01-03T00:00:00.500000Z"),
    ]


@pytest.mark.parametrize("route", ["token", "data"])
def test_a_redirect_is_refused_and_never_followed(
    tmp_path: Path, scripted: t.Callable[..., Scripted], route: str
) -> None:
    elsewhere = scripted()
    moved = Reply(status=307, headers={"Location": elsewhere.root + TOKEN_PATH}, body=b"{}")
    if route == "token":
        server = scripted(token=lambda i, r: moved)
    else:
        server = scripted(data=lambda i, r: moved)

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "307" in line
    assert "follows no redirect" in line
    assert f"a redirect to {elsewhere.root}" in line
    setting = "v3_token_url" if route == "token" else "v3_vehicle_api_url"
    assert f"Check {setting} (now {server.root})" in line
    assert elsewhere.seen == []
    assert len(server.seen) == (1 if route == "token" else 2)
    assert not any("Authorization" in s.headers for s in server.tokens)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            {"token_type": "mac"},
            "token_type 'mac' and expires_in 3600, not a token of type 'Bearer' with a lifetime",
        ),
        ({"expires_in": 0}, "expires_in 0, not a token of type 'Bearer' with a lifetime"),
        ({"expires_in": -60}, "expires_in -60, not a token of type 'Bearer' with a lifetime"),
        (
            {"access_token": "tok-abcdef123456\r\nX-Injected: yes"},
            "with an access_token that is not a token",
        ),
        ({"access_token": "tok-abcdef 123456"}, "with an access_token that is not a token"),
        ({"access_token": ""}, "with an access_token that is not a token"),
        ({"expires_in": "3600"}, "not the expected token JSON"),
    ],
    ids=["not bearer", "no lifetime", "negative lifetime", "newline", "space", "empty", "string"],
)
def test_a_token_that_cannot_be_used_fails_without_being_echoed(
    tmp_path: Path, scripted: t.Callable[..., Scripted], token: dict[str, t.Any], expected: str
) -> None:
    payload = {"access_token": "tok-abcdef123456", "token_type": "Bearer", "expires_in": 3600}
    payload |= token
    body = json.dumps(payload).encode()
    server = scripted(token=lambda i, r: Reply(body=body))

    run = run_cli(tmp_path, server.settings(), env={"LOGLEVEL": "DEBUG"})

    line = failure(run, debug=True)
    assert expected in line
    assert len(server.tokens) == BODY_ATTEMPTS
    assert server.data == []
    for part in ("abcdef123456", "abcdef 123456", "X-Injected"):
        assert part not in run.stderr
    assert run.records == []


def test_a_token_lifetime_given_as_a_float_is_used(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """`expires_in: 3600.0` is a lifetime too; only a missing or non-number one fails."""
    payload = {"access_token": "tok-abcdef123456", "token_type": "Bearer", "expires_in": 3600.0}
    body = json.dumps(payload).encode()
    server = scripted(token=lambda i, r: Reply(body=body))

    run = run_cli(tmp_path, server.settings())

    assert run.exit_code == 0, run.stderr.splitlines()[-1]
    assert len(server.tokens) == 1
    assert all(s.headers["Authorization"] == "Bearer tok-abcdef123456" for s in server.data)


def test_a_token_endpoint_answering_html_is_retried_then_fails(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    page = Reply(body=b"<html><body>Sign in</body></html>", headers={"Content-Type": "text/html"})
    server = scripted(token=lambda i, r: page)

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "a token endpoint answer that is not the expected token JSON" in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert len(server.tokens) == BODY_ATTEMPTS
    assert "Sign in" not in run.stderr


@pytest.mark.parametrize("route", ["token", "data"])
def test_a_trickling_v3_body_times_out_as_a_whole(
    tmp_path: Path, scripted: t.Callable[..., Scripted], route: str
) -> None:
    good = good_token(0, Seen("POST", TOKEN_PATH, {}, {}, b"")).body
    assert isinstance(good, bytes)

    def trickle(index: int, request: Seen) -> Reply:
        body = good if route == "token" else empty_lists(index, request).body
        assert isinstance(body, bytes)
        return Reply(body=[bytes([b]) for b in body], pause=0.2)

    server = scripted(token=trickle) if route == "token" else scripted(data=trickle)

    began = time.monotonic()
    run = run_cli(tmp_path, server.settings(request_timeout=1, max_retry_seconds=3))
    elapsed = time.monotonic() - began

    line = failure(run)
    assert "request_timeout=1" in line
    assert elapsed < 20
    assert len(server.tokens if route == "token" else server.data) >= 2


def test_a_secret_echoed_by_the_token_endpoint_is_redacted_everywhere(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    secret = "s3cr3t/with+plus=and&amp;more"

    def echo(index: int, request: Seen) -> Reply:
        described = f"bad secret {secret} in {request.body.decode()}"
        body = {"error": "invalid_client", "error_description": described}
        return Reply(status=401, body=json.dumps(body).encode())

    server = scripted(token=echo)

    run = run_cli(tmp_path, server.settings(client_secret=secret), env={"LOGLEVEL": "DEBUG"})

    line = failure(run, debug=True)
    assert "401 invalid_client" in line
    assert quote_plus(secret) in server.tokens[0].body.decode()
    for form in (secret, quote_plus(secret)):
        assert form not in run.stderr
        assert all(form not in json.dumps(m) for m in run.messages)
    assert "<redacted>" in line


def test_an_access_token_echoed_by_a_data_endpoint_is_redacted_everywhere(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    issued: list[str] = []

    def token(index: int, request: Seen) -> Reply:
        issued.append(f"tok-{secrets.token_hex(12)}")
        body = {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 3600}
        return Reply(body=json.dumps(body).encode())

    def echo(index: int, request: Seen) -> Reply:
        value = request.headers["Authorization"].removeprefix("Bearer ")
        error = {
            "status": "401" if index else "500",
            "type": "AUTHENTICATION" if index else "SERVER",
            "detail": f"token {value} refused; headers {json.dumps(request.headers)}",
            "meta": {"debug": {"requestId": value}},
        }
        return Reply(status=401 if index else 500, body=json.dumps({"errors": [error]}).encode())

    server = scripted(data=echo, token=token)

    run = run_cli(tmp_path, server.settings(), env={"LOGLEVEL": "DEBUG"})

    line = failure(run, debug=True)
    assert "a new access token was refused too" in line
    assert len(issued) == 2
    assert len(server.data) == 3
    for value in issued:
        assert value not in run.stderr
        assert all(value not in json.dumps(m) for m in run.messages)
    assert "token <redacted> refused" in line


def test_a_dropped_first_request_of_a_later_stream_is_retried(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    def script(index: int, request: Seen) -> Reply:
        if request.path == WEBHOOKS and len([s for s in server.data if s.path == WEBHOOKS]) == 1:
            return Reply(status=0)  # the connection is closed without an answer
        if request.path == CONNECTIONS:
            return v3_list([connection(1)], request)
        return empty_lists(index, request)

    server = scripted(script)

    run = run_cli(tmp_path, server.settings())

    assert run.exit_code == 0, run.stderr
    assert [s.path for s in server.data] == [CONNECTIONS, SUBSCRIPTIONS, WEBHOOKS, WEBHOOKS]
    assert sum("retrying in" in line for line in run.stderr.splitlines()) == 1
    assert pairs(run) == [("user-1", "vehicle-1")]


def test_an_unreachable_management_api_is_reported_at_once(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    server = scripted(connections_page(connection(1)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/management/v3"

    run = run_cli(tmp_path, server.settings(v3_management_api_url=closed, max_retry_seconds=600))

    line = failure(run)
    assert f"cannot reach v3_management_api_url {closed}" in line
    assert pairs(run) == [("user-1", "vehicle-1")]


def test_max_requests_per_minute_paces_every_request_of_the_run(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    server = scripted(connections_page(connection(1)))

    run = run_cli(tmp_path, server.settings(max_requests_per_minute=60))

    assert run.exit_code == 0, run.stderr
    assert [s.path for s in server.seen] == [TOKEN_PATH, CONNECTIONS, SUBSCRIPTIONS, WEBHOOKS]
    assert len(run.sleeps) == 3  # before each request but the run's first, whatever sends it
    assert all(0.9 < waited <= 1.0 for waited in run.sleeps)


def test_an_echoed_bearer_header_with_a_punctuated_token_is_fully_redacted(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """A token with punctuation, echoed as 'Bearer <token>', leaves no tail behind."""
    tail = secrets.token_hex(12)
    value = f"tok!{tail}"

    def token(index: int, request: Seen) -> Reply:
        body = {"access_token": value, "token_type": "Bearer", "expires_in": 3600}
        return Reply(body=json.dumps(body).encode())

    def echo(index: int, request: Seen) -> Reply:
        error = {
            "status": "401",
            "type": "AUTHENTICATION",
            "detail": f"refused Authorization: {request.headers['Authorization']}",
        }
        return Reply(status=401, body=json.dumps({"errors": [error]}).encode())

    server = scripted(data=echo, token=token)

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    assert "a new access token was refused too" in line
    assert tail not in run.stderr, line


def test_the_vehicle_api_uses_the_proxy_the_environment_gives_it(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """NO_PROXY exempts the token host only: the vehicle API must still go through the proxy.

    The scripted server plays the token endpoint (reached directly, as `localhost`) and the
    proxy (it answers absolute-URI requests as its own). The vehicle API's own port is closed,
    so only a request sent through the proxy can succeed.
    """

    def script(index: int, request: Seen) -> Reply:
        if request.path == CONNECTIONS:
            return v3_list([connection(1)], request)
        return empty_lists(index, request)

    server = scripted(script)
    port = server.root.rsplit(":", 1)[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings = server.settings(
        v3_token_url=f"http://localhost:{port}/oauth2/token",
        v3_vehicle_api_url=f"{closed}/vehicle/v3",
        v3_management_api_url=f"{closed}/management/v3",
    )
    env = {
        "HTTP_PROXY": server.root,
        "http_proxy": server.root,
        "NO_PROXY": "localhost",
        "no_proxy": "localhost",
    }

    run = run_cli(tmp_path, settings, env=env)

    assert run.exit_code == 0, run.stderr.splitlines()[-1]
    assert [(r["userId"], r["vehicleId"]) for r in run.records if "userId" in r][:1] == [
        ("user-1", "vehicle-1")
    ]


def secret_runs(secret: str) -> set[str]:
    """Every `MIN_RUN`-character piece of `secret`, as sent and as a form body quotes it."""
    return {
        form[i : i + MIN_RUN]
        for form in (secret, quote_plus(secret))
        for i in range(len(form) - MIN_RUN + 1)
    }


def quoting(text: str, secret: str, where: str) -> str:
    """Server text quoting `text`, which holds `secret` (URL-encoded in a form body).

    "cut by the server": `text` up to 20 characters into the secret. "across the tap's cut":
    the secret starts `MIN_RUN - 1` characters before the 300th, so that cutting before
    redacting would leave fewer characters of it than a run: only redacting first hides them.
    """
    at = text.index(quote_plus(secret))
    if where == "cut by the server":
        return f"refused: {text[: at + 20]}"
    return "." * (300 - MIN_RUN - at) + text + " refused"  # [:299] holds MIN_RUN - 1 of it


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
@pytest.mark.parametrize("where", ["across the tap's cut", "cut by the server"])
@pytest.mark.parametrize("secret_of", ["client secret", "access token"])
def test_a_secret_quoted_in_an_error_leaves_no_run_of_itself_in_any_output(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],
    level: str,
    where: str,
    secret_of: str,
) -> None:
    """A 401 from the token endpoint quoting the form body, or a 403 quoting the access token."""
    client_secret = f"cs-{secrets.token_hex(16)}"
    access_token = f"tok-{secrets.token_hex(16)}"

    def token(index: int, request: Seen) -> Reply:
        if secret_of == "client secret":
            described = quoting(request.body.decode(), client_secret, where)
            error = {"error": "invalid_client", "error_description": described}
            return Reply(status=401, body=json.dumps(error).encode())
        body = {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600}
        return Reply(body=json.dumps(body).encode())

    def data(index: int, request: Seen) -> Reply:
        error = {
            "status": "403",
            "type": "PERMISSION",
            "detail": quoting(access_token, access_token, where),
        }
        return Reply(status=403, body=json.dumps({"errors": [error]}).encode())

    server = scripted(data, token)
    secret = client_secret if secret_of == "client secret" else access_token

    run = run_cli(tmp_path, server.settings(client_secret=client_secret), env={"LOGLEVEL": level})

    line = failure(run, debug=True)
    assert ("401 invalid_client" if secret_of == "client secret" else "403 PERMISSION") in line
    output = run.stderr + json.dumps(run.messages)
    assert not [piece for piece in secret_runs(secret) if piece in output]
    assert secret[: MIN_RUN - 1] not in output
    assert "<redact" in line


def test_an_access_token_is_renewed_before_it_expires_with_a_margin(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """A 1000 s token is renewed once 900 s have passed (a tenth of its life), not before.

    Two 429s on the first connections page make the run wait 899 s (the token is still
    used), then 2 s more (past the margin: a new token, though the old one has 99 s left).
    """
    issued: list[str] = []

    def token(index: int, request: Seen) -> Reply:
        issued.append(f"tok-{index}-{secrets.token_hex(8)}")
        body = {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 1000}
        return Reply(body=json.dumps(body).encode())

    def data(index: int, request: Seen) -> Reply:
        if index < 2:
            wait = ("899", "2")[index]
            return Reply(status=429, body=b"{}", headers={"Retry-After": wait})
        return connections_page(connection(1))(index, request)

    server = scripted(data, token)

    run = run_cli(tmp_path, server.settings(max_retry_seconds=3600))

    assert run.exit_code == 0, run.stderr
    assert run.sleeps == [899.0, 2.0]
    assert len(issued) == 2
    used = [s.headers["Authorization"].removeprefix("Bearer ") for s in server.data]
    assert used == [issued[0], issued[0], issued[1], issued[1], issued[1]]
    assert [s.path for s in server.seen] == [
        TOKEN_PATH,
        CONNECTIONS,
        CONNECTIONS,
        TOKEN_PATH,
        CONNECTIONS,
        SUBSCRIPTIONS,
        WEBHOOKS,
    ]


def test_a_checkpoint_page_number_of_5000_digits_is_not_used_and_the_mode_is_read_again(
    tmp_path: Path, scripted: t.Callable[..., Scripted]
) -> None:
    """Too long for a page number (and for Python's int() by default): a WARNING, no crash."""
    server = scripted(connections_page(connection(2), connection(1)))
    checkpoint = {
        "cursor": "7" * 5000,
        "newest": "2026-01-02T00:00:00.000000Z",
        "newest_keys": [],
        "last": "2026-01-02T00:00:00.000000Z",
        "floor": "",
        "page_size": 100,
        "unordered": False,
        "total": 2,
    }
    partition = {"context": {"mode": "live"}, "api_version": "v3", "checkpoint": checkpoint}
    state = {"bookmarks": {"connections": {"partitions": [partition]}}}

    run = run_cli(tmp_path, server.settings(), state=state)

    assert run.exit_code == 0, run.stderr
    (warning,) = [line for line in run.stderr.splitlines() if "checkpoint" in line]
    assert "WARNING" in warning
    assert "cannot be used (it has no usable page number and list size)" in warning
    assert "from the top again, bookmark unchanged" in warning
    assert "7777777777" not in run.stderr
    assert sorted(pairs(run)) == [("user-1", "vehicle-1"), ("user-2", "vehicle-2")]
    assert bookmarks(run.state)["mode=live"] == "2026-01-02T00:00:00.000000Z"
    pages = {number for s in connection_requests(server) for number in s.query["page[number]"]}
    assert pages == {"1"}  # the new head, then from the top: never the checkpoint's number


@pytest.mark.parametrize("field", ["userId", "vehicleId", "connectionId"])
def test_a_v3_id_holding_a_nul_is_a_broken_body_naming_the_field(
    tmp_path: Path, scripted: t.Callable[..., Scripted], field: str
) -> None:
    bad = connection(1)
    if field == "userId":
        bad["relationships"]["user"]["data"]["id"] = "user\x001"
    elif field == "vehicleId":
        bad["relationships"]["vehicle"]["data"]["id"] = "vehicle\x001"
    else:
        bad["id"] = "conn\x001"
    server = scripted(connections_page(connection(2), bad))

    run = run_cli(tmp_path, server.settings())

    line = failure(run)
    name = "connection id" if field == "connectionId" else field
    assert f"a page whose {name} holds a control character" in line
    assert f"{BODY_ATTEMPTS} times in a row" in line
    assert len(connection_requests(server)) == BODY_ATTEMPTS
    assert run.records == []
