"""The Smartcar simulator behaves like the Management API, faults included, over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from smartcar_simulator import (
    Connection,
    Faults,
    SmartcarSimulator,
    generate_connections,
    instant,
)
from smartcar_simulator import server as server_module

TOKEN = "sim-test-token"
ERROR_KEYS = {"type", "code", "description", "docURL", "statusCode", "requestId", "resolution"}
TIE = "2026-02-01T08:00:00"
# One user connecting many vehicles at once: the same instant written five ways.
TIED = [
    {"userId": f"tie-user-{i % 3}", "vehicleId": f"tie-vehicle-{i:02d}", "connectedAt": at}
    for i, at in enumerate(
        [f"{TIE}Z", f"{TIE}.0Z", f"{TIE}.000Z", f"{TIE}+00:00", f"{TIE}.000000Z"] * 3
    )
]


def conn(user: str, vehicle: str, at: str, mode: str = "live") -> dict[str, str]:
    return {"userId": user, "vehicleId": vehicle, "connectedAt": at, "mode": mode}


@pytest.fixture
def sim() -> t.Iterator[SmartcarSimulator]:
    with SmartcarSimulator(generate_connections(120, seed=7) + TIED, token=TOKEN) as simulator:
        yield simulator


def get(
    sim: SmartcarSimulator,
    session: requests.Session | None = None,
    token: str = TOKEN,
    **params: str | int,
) -> requests.Response:
    return (session or requests).get(
        f"{sim.api_url}/management/connections",
        params=params,
        auth=("default", token),
        timeout=10,
    )


def page_through(
    sim: SmartcarSimulator, limit: int, cursor: str | None = None, **params: str
) -> tuple[list[dict[str, str]], list[str | None]]:
    """Follow cursors from `cursor` (or the first page) to the end."""
    rows: list[dict[str, str]] = []
    cursors: list[str | None] = []
    with requests.Session() as session:
        for _ in range(1000):
            extra = {"cursor": cursor} if cursor else {}
            response = get(sim, session, TOKEN, limit=limit, **params, **extra)
            assert response.status_code == 200, response.text
            body = response.json()
            rows += body["connections"]
            cursor = body["paging"]["cursor"]
            cursors.append(cursor)
            if cursor is None:
                return rows, cursors
    raise AssertionError("paging never ended")


def keys(rows: t.Iterable[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["userId"], r["vehicleId"]) for r in rows]


def assert_smartcar_error(response: requests.Response, status: int, kind: str) -> dict[str, t.Any]:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, t.Any] = response.json()
    assert set(body) == ERROR_KEYS
    assert body["type"] == kind
    assert body["statusCode"] == status
    assert body["docURL"].startswith("https://smartcar.com/docs/errors/api-errors/")
    assert uuid.UUID(body["requestId"])
    assert set(body["resolution"]) == {"type"}
    return body


# --- data ------------------------------------------------------------------------------------


def test_generated_connections_are_reproducible_and_realistic() -> None:
    data = generate_connections(2000, seed=3)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    assert data == generate_connections(2000, seed=3)
    assert data != generate_connections(2000, seed=4)
    assert all(set(c) == {"userId", "vehicleId", "connectedAt", "mode"} for c in data)
    assert all(uuid.UUID(c["userId"]).version == 4 for c in data)
    assert all(str(uuid.UUID(c["vehicleId"])) == c["vehicleId"] for c in data)
    assert len({c["vehicleId"] for c in data}) == 2000
    assert {c["mode"] for c in data} == {"live", "simulated"}
    fractions = [re.fullmatch(r"[\dT:-]{19}(?:\.(\d+))?Z", c["connectedAt"]) for c in data]
    assert {len(m[1] or "") for m in fractions if m} == {0, 1, 3}
    assert all(fractions)
    assert SmartcarSimulator(data).connections() == data
    micros = [instant(c["connectedAt"]) for c in data]
    assert micros == sorted(micros, reverse=True)
    assert max(micros) < instant(start.isoformat())
    span = timedelta(microseconds=max(micros) - min(micros))
    assert timedelta(days=500) < span < timedelta(days=900)
    ties = [
        (a, b)
        for a, b in itertools.pairwise(data)
        if instant(a["connectedAt"]) == instant(b["connectedAt"])
    ]
    assert len(ties) == 2000 // 7
    assert all(a["userId"] == b["userId"] and a["mode"] == b["mode"] for a, b in ties)


def test_generation_options() -> None:
    start = datetime(2024, 6, 1)
    data = generate_connections(300, seed=1, modes=("test",), start=start, tie_every=0)

    assert {c["mode"] for c in data} == {"test"}
    assert max(instant(c["connectedAt"]) for c in data) < instant("2024-06-01T00:00:00Z")
    assert len({instant(c["connectedAt"]) for c in data}) == 300
    with pytest.raises(ValueError, match="modes"):
        generate_connections(1, modes=("bogus",))


def test_connection_parsing() -> None:
    connection = Connection.from_mapping(conn("u", "v", "2026-01-01T00:00:00.5Z", "simulated"))

    assert connection.to_dict() == conn("u", "v", "2026-01-01T00:00:00.5Z", "simulated")
    assert connection.sort_key == (instant("2026-01-01T00:00:00.500000+00:00"), "u", "v")
    assert (
        Connection.from_mapping({"userId": "u", "vehicleId": "v", "connectedAt": "x"}).mode
        == "live"
    )
    with pytest.raises(ValueError, match="mode"):
        Connection.from_mapping(conn("u", "v", "2026-01-01T00:00:00Z", "fake"))
    with pytest.raises(ValueError, match="missing"):
        Connection.from_mapping({"userId": "u"})
    with pytest.raises(ValueError, match="yesterday"):
        SmartcarSimulator([conn("u", "v", "yesterday")])


def test_duplicates_keep_the_last_and_connections_lists_newest_first() -> None:
    data = [
        conn("u1", "v1", "2026-01-01T00:00:00Z"),
        conn("u2", "v2", "2026-01-02T00:00:00Z", "simulated"),
        conn("u1", "v1", "2026-01-03T00:00:00Z", "test"),
    ]
    simulator = SmartcarSimulator(data)

    assert len(simulator) == 2
    assert simulator.connections() == [data[2], data[1]]
    assert simulator.connections("live") == []
    assert simulator.connections("test") == [data[2]]
    with pytest.raises(ValueError, match="mode"):
        simulator.connections("nope")


# --- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer " + TOKEN,
        "Basic " + base64.b64encode(f"default:{TOKEN}x".encode()).decode(),
        "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode(),
        "Basic not-base64!",
    ],
)
def test_bad_credentials_get_a_401_smartcar_error(
    sim: SmartcarSimulator, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(f"{sim.api_url}/management/connections", headers=headers, timeout=10)

    body = assert_smartcar_error(response, 401, "AUTHENTICATION")
    assert body["resolution"] == {"type": None}
    assert sim.requests[-1].status == 401


def test_good_credentials_get_a_page_in_the_documented_shape(sim: SmartcarSimulator) -> None:
    response = get(sim)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"connections", "paging"}
    assert len(body["connections"]) == 10
    assert all(
        set(c) == {"userId", "vehicleId", "connectedAt", "mode"} for c in body["connections"]
    )
    assert isinstance(body["paging"]["cursor"], str)


def test_unknown_paths_get_a_404(sim: SmartcarSimulator) -> None:
    response = requests.get(
        f"{sim.api_url}/management/vehicles", auth=("default", TOKEN), timeout=10
    )

    body = assert_smartcar_error(response, 404, "RESOURCE_NOT_FOUND")
    assert body["code"] == "PATH"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "", "1.5", "+5", "٣"])
def test_invalid_limits_get_a_400(sim: SmartcarSimulator, limit: str) -> None:
    body = assert_smartcar_error(get(sim, limit=limit), 400, "VALIDATION")

    assert "limit" in body["description"]


@pytest.mark.parametrize("limit", [1, 55, 100])
def test_valid_limits(sim: SmartcarSimulator, limit: int) -> None:
    assert len(get(sim, limit=limit).json()["connections"]) == min(
        limit, len(sim.connections("live"))
    )


def test_without_a_mode_only_live_connections_are_served(sim: SmartcarSimulator) -> None:
    rows, _ = page_through(sim, 100)

    assert keys(rows) == keys(sim.connections("live"))
    assert 0 < len(sim.connections("simulated")) < len(sim.connections())
    assert get(sim, mode="live").json() == get(sim).json()


def test_modes_filter_and_unknown_modes_get_a_400(sim: SmartcarSimulator) -> None:
    simulated, _ = page_through(sim, 100, mode="simulated")

    assert keys(simulated) == keys(sim.connections("simulated"))
    assert {r["mode"] for r in simulated} == {"simulated"}
    assert get(sim, mode="test").json() == {"connections": [], "paging": {"cursor": None}}
    assert_smartcar_error(get(sim, mode="LIVE"), 400, "VALIDATION")


def test_user_and_vehicle_filters(sim: SmartcarSimulator) -> None:
    by_user, _ = page_through(sim, 2, user_id="tie-user-1")
    target = sim.connections("live")[40]
    by_vehicle, _ = page_through(sim, 10, vehicle_id=target["vehicleId"])
    both, _ = page_through(sim, 10, user_id=target["userId"], vehicle_id=target["vehicleId"])
    mismatch, _ = page_through(sim, 10, user_id="tie-user-1", vehicle_id=target["vehicleId"])

    assert keys(by_user) == [k for k in keys(sim.connections("live")) if k[0] == "tie-user-1"]
    assert len(by_user) == 5
    assert by_vehicle == both == [target]
    assert mismatch == []


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10, 16, 100])
def test_paging_is_newest_first_without_gaps_or_duplicates(
    sim: SmartcarSimulator, limit: int
) -> None:
    rows, cursors = page_through(sim, limit)

    live = sim.connections("live")
    assert rows == live
    assert len(cursors) == -(-len(live) // limit)
    order = [(instant(r["connectedAt"]), r["userId"], r["vehicleId"]) for r in rows]
    assert order == sorted(order, reverse=True)
    tied = [r for r in rows if instant(r["connectedAt"]) == instant(TIE + "Z")]
    assert len(tied) == len(TIED)


def test_the_last_page_has_a_null_cursor_even_when_full() -> None:
    data = [conn(f"u{i}", f"v{i}", f"2026-01-01T00:00:0{i}Z") for i in range(4)]
    with SmartcarSimulator(data, token=TOKEN) as simulator:
        first = get(simulator, limit=2).json()
        second = get(simulator, limit=2, cursor=first["paging"]["cursor"]).json()
        everything = get(simulator, limit=4).json()

    assert keys(first["connections"]) == [("u3", "v3"), ("u2", "v2")]
    assert keys(second["connections"]) == [("u1", "v1"), ("u0", "v0")]
    assert second["paging"]["cursor"] is None
    assert everything["paging"]["cursor"] is None


def test_ordering_is_by_instant_not_by_string() -> None:
    data = [
        conn("a", "1", "2026-03-01T10:00:00Z"),
        conn("b", "2", "2026-03-01T10:00:00.5Z"),
        conn("c", "3", "2026-03-01T09:59:59.789Z"),
        conn("d", "4", "2026-03-01T11:00:00+01:00"),
        conn("e", "5", "2026-03-01T10:00:00.250+00:00"),
    ]
    with SmartcarSimulator(data, token=TOKEN) as simulator:
        served = get(simulator).json()["connections"]

    assert [r["userId"] for r in served] == ["b", "e", "d", "a", "c"]
    assert served[2]["connectedAt"] == "2026-03-01T11:00:00+01:00"


def test_cursors_need_url_encoding(sim: SmartcarSimulator) -> None:
    cursor = get(sim, limit=5).json()["paging"]["cursor"]
    assert set("+/=:") <= set(cursor)

    raw = requests.get(
        f"{sim.api_url}/management/connections?limit=5&cursor={cursor}",
        auth=("default", TOKEN),
        timeout=10,
    )

    body = assert_smartcar_error(raw, 400, "VALIDATION")
    assert body["description"] == "invalid cursor"
    assert sim.requests[-1].params["cursor"] == cursor.replace("+", " ")
    assert get(sim, limit=5, cursor=cursor).status_code == 200


def test_cursors_the_server_did_not_issue_for_this_query_are_rejected(
    sim: SmartcarSimulator,
) -> None:
    cursor = get(sim, limit=5).json()["paging"]["cursor"]
    body, _, mac = cursor.rpartition(":")
    with SmartcarSimulator(generate_connections(120, seed=7), token=TOKEN) as other:
        foreign = get(other, limit=5).json()["paging"]["cursor"]

    for bad in (body, cursor[1:], body + ":" + mac[::-1], foreign, "garbage", "+/=:"):
        assert_smartcar_error(get(sim, limit=5, cursor=bad), 400, "VALIDATION")
    assert_smartcar_error(get(sim, limit=5, cursor=cursor, mode="simulated"), 400, "VALIDATION")
    assert_smartcar_error(get(sim, limit=5, cursor=cursor, user_id="x"), 400, "VALIDATION")
    assert get(sim, limit=99, cursor=cursor, mode="live").status_code == 200
    assert get(sim, limit=5, cursor="").json() == get(sim, limit=5).json()


def test_connections_added_or_removed_between_pages_do_not_break_paging(
    sim: SmartcarSimulator,
) -> None:
    live = sim.connections("live")
    first = get(sim, limit=10).json()
    newer = conn("late", "newer", "2027-01-01T00:00:00Z")
    older = conn("late", "older", "2000-01-01T00:00:00Z")
    sim.add(newer, older)
    sim.remove(live[9]["userId"], live[9]["vehicleId"])  # the row the cursor points at
    sim.remove(live[15]["userId"], live[15]["vehicleId"])

    rest, _ = page_through(sim, 10, cursor=first["paging"]["cursor"])

    assert keys(rest) == keys(live[10:15] + live[16:] + [older])
    assert sim.connections("live")[0] == newer
    assert sim.remove("nobody", "nothing") is False


def test_adding_an_existing_connection_replaces_it(sim: SmartcarSimulator) -> None:
    target = sim.connections("live")[-1]
    moved = {**target, "connectedAt": "2030-01-01T00:00:00Z", "mode": "simulated"}

    sim.add(moved)

    assert target not in sim.connections("live")
    assert sim.connections("simulated")[0] == moved
    assert get(sim, mode="simulated", limit=1).json()["connections"] == [moved]


def test_requests_are_logged_decoded(sim: SmartcarSimulator) -> None:
    get(sim, limit=3, user_id="tie-user-0")
    get(sim, token="wrong")

    first, second = sim.requests
    assert first.path == "/v2.0/management/connections"
    assert first.params == {"limit": "3", "user_id": "tie-user-0"}
    assert (first.status, first.count, first.fault) == (200, 3, None)
    assert (second.status, second.count) == (401, 0)
    assert first.time <= second.time <= time.monotonic()
    sim.clear_log()
    assert sim.requests == []


def test_keep_alive_serves_many_requests_on_one_connection(sim: SmartcarSimulator) -> None:
    host, port = sim.api_url.split("//")[1].split("/")[0].split(":")
    client = http.client.HTTPConnection(host, int(port), timeout=10)
    auth = "Basic " + base64.b64encode(f"default:{TOKEN}".encode()).decode()
    sockets = []
    try:
        for path in (
            "/v2.0/management/connections?limit=2",
            "/nope",
            "/v2.0/management/connections",
        ):
            client.request("GET", path, headers={"Authorization": auth})
            response = client.getresponse()
            assert int(response.headers["Content-Length"]) == len(response.read())
            assert not response.will_close
            sockets.append(client.sock)
        assert sockets[0] is not None
        assert sockets == [sockets[0]] * 3
    finally:
        client.close()


def test_stop_closes_the_port_and_open_connections() -> None:
    simulator = SmartcarSimulator([], token=TOKEN)
    with pytest.raises(RuntimeError):
        _ = simulator.api_url
    simulator.start()
    url = simulator.api_url
    assert simulator.start() == url
    with requests.Session() as session:
        assert get(simulator, session).json() == {"connections": [], "paging": {"cursor": None}}

        simulator.stop()
        simulator.stop()

        with pytest.raises(requests.ConnectionError):
            session.get(f"{url}/management/connections", auth=("default", TOKEN), timeout=5)


# --- faults ----------------------------------------------------------------------------------


def test_latency(sim: SmartcarSimulator) -> None:
    sim.faults.latency = 0.2
    started = time.monotonic()

    assert get(sim).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_latency_delays_every_kind_of_request(sim: SmartcarSimulator) -> None:
    # The benchmark's --latency must cost the tap and a bare loop the same per request: the
    # v3 token request and the webhooks and subscriptions lists are delayed like a page.
    root = sim.api_url.removesuffix("/v2.0")
    set_faults = requests.put(f"{root}/_admin/faults", json={"latency": 0.2}, timeout=10)
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    durations: dict[str, float] = {}
    with requests.Session() as session:
        started = time.monotonic()
        token = session.post(sim.v3_token_url, data=form, timeout=10)
        durations["token"] = time.monotonic() - started
        session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        for name, url in [
            ("connections", f"{sim.v3_vehicle_api_url}/connections"),
            ("webhooks", f"{sim.v3_management_api_url}/webhooks"),
            ("subscriptions", f"{sim.v3_management_api_url}/subscriptions"),
            ("v2 page", f"{sim.api_url}/management/connections"),
        ]:
            started = time.monotonic()
            auth = ("default", TOKEN) if name == "v2 page" else None
            response = session.get(url, auth=auth, timeout=10)
            durations[name] = time.monotonic() - started
            assert response.status_code == 200, (name, response.text)

    assert set_faults.json()["latency"] == 0.2
    assert token.status_code == 200
    assert all(seconds >= 0.2 for seconds in durations.values()), durations


def test_concurrent_requests_wait_out_their_latency_in_parallel(
    sim: SmartcarSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request's latency sleep first waits for the other's: were the sleep serialised
    # (under the simulator's lock, say), the second request could not reach its own and the
    # barrier would break after 10 s instead of a timing threshold deciding.
    both_waiting = threading.Barrier(2, timeout=10)

    def sleep(seconds: float) -> None:
        both_waiting.wait()
        time.sleep(seconds)

    monkeypatch.setattr(
        server_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
    )
    sim.faults.latency = 0.2
    results: dict[int, tuple[int, float]] = {}

    def fetch(index: int) -> None:
        started = time.monotonic()
        response = get(sim, limit=index + 1)
        results[index] = (response.status_code, time.monotonic() - started)

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert not both_waiting.broken
    assert sorted(results) == [0, 1]
    assert all(status == 200 and seconds >= 0.2 for status, seconds in results.values()), results


def test_rate_limit_every(sim: SmartcarSimulator) -> None:
    sim.faults.rate_limit_every = 3

    responses = [get(sim) for _ in range(7)]

    assert [r.status_code for r in responses] == [200, 200, 429, 200, 200, 429, 200]
    body = assert_smartcar_error(responses[2], 429, "RATE_LIMIT")
    assert body["resolution"] == {"type": "RETRY_LATER"}
    assert responses[2].headers["Retry-After"] == "1"
    assert [r.fault for r in sim.requests].count("rate_limit_every") == 2


@pytest.mark.parametrize("retry_after", ["Wed, 21 Oct 2026 07:28:00 GMT", "120", None])
def test_rate_limit_retry_after_header(sim: SmartcarSimulator, retry_after: str | None) -> None:
    sim.faults.rate_limit_every = 1
    sim.faults.retry_after = retry_after

    response = get(sim)

    assert response.status_code == 429
    assert response.headers.get("Retry-After") == retry_after


def test_error_every(sim: SmartcarSimulator) -> None:
    sim.faults.error_every = 2

    responses = [get(sim) for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 500, 200, 500]
    assert_smartcar_error(responses[1], 500, "SERVER")
    assert sim.requests[1].fault == "error_every"
    sim.faults.error_status = 502
    assert_smartcar_error([get(sim) for _ in range(2)][1], 502, "UPSTREAM")


def test_truncate_every(sim: SmartcarSimulator) -> None:
    sim.faults.truncate_every = 2

    good, broken = get(sim, limit=50), get(sim, limit=50)

    assert good.status_code == broken.status_code == 200
    assert int(broken.headers["Content-Length"]) == len(broken.content) == len(good.content) // 2
    assert good.content.startswith(broken.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)
    assert sim.requests[-1].fault == "truncated"


def test_fail_after_page(sim: SmartcarSimulator) -> None:
    sim.faults.fail_after_page = 2
    sim.faults.fail_status = 503

    statuses = [get(sim, limit=5).status_code for _ in range(5)]

    assert statuses == [200, 200, 503, 503, 503]
    assert sim.requests[-1].fault == "fail_after_page"
    sim.faults.fail_after_page = None
    assert get(sim).status_code == 200
    sim.faults.fail_after_page = 1
    sim.clear_log()
    assert [get(sim).status_code for _ in range(2)] == [200, 503]


def test_html_errors(sim: SmartcarSimulator) -> None:
    sim.faults.html_errors = True
    sim.faults.force_status = 502

    response = get(sim)

    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert response.text.startswith("<html><head><title>502 Bad Gateway</title>")
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert get(sim, token="wrong").status_code == 401


@pytest.mark.parametrize(
    ("status", "kind"),
    [(430, "BILLING"), (403, "PERMISSION"), (401, "AUTHENTICATION"), (400, "VALIDATION")],
)
def test_force_status(sim: SmartcarSimulator, status: int, kind: str) -> None:
    sim.faults.force_status = status

    assert_smartcar_error(get(sim), status, kind)
    assert_smartcar_error(get(sim), status, kind)


def test_force_status_430_is_a_billing_error(sim: SmartcarSimulator) -> None:
    sim.faults.force_status = 430

    body = assert_smartcar_error(get(sim), 430, "BILLING")

    assert body["resolution"] == {"type": "CONTACT_SUPPORT"}
    sim.faults.force_status = None
    assert get(sim).status_code == 200


def test_repeat_cursor(sim: SmartcarSimulator) -> None:
    sim.faults.repeat_cursor = True
    first = get(sim, limit=5).json()["paging"]["cursor"]

    second = get(sim, limit=5, cursor=first).json()

    assert second["paging"]["cursor"] == first


def test_cursor_cycle(sim: SmartcarSimulator) -> None:
    sim.faults.cursor_cycle = 2
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(6):
        body = get(sim, None, TOKEN, limit=5, **({"cursor": cursor} if cursor else {})).json()
        cursor = body["paging"]["cursor"]
        assert cursor is not None
        seen.append(cursor)

    a, b = seen[0], seen[1]
    assert a != b
    assert seen == [a, b, a, b, a, b]


def test_chaos_is_random_but_reproducible() -> None:
    def run() -> list[tuple[int, str | None]]:
        faults = Faults(chaos_rate=0.5, chaos_seed=11)
        with SmartcarSimulator(generate_connections(50), token=TOKEN, faults=faults) as simulator:
            for _ in range(80):
                with contextlib.suppress(requests.ConnectionError):
                    get(simulator)
            return [(r.status, r.fault) for r in simulator.requests]

    outcomes = run()

    assert outcomes == run()
    statuses = {status for status, _ in outcomes}
    assert {0, 200, 429, 500, 502, 503} <= statuses
    assert (200, "truncated") in outcomes
    assert 20 < sum(fault is None for _, fault in outcomes) < 60


def test_a_reset_connection_is_a_connection_error(sim: SmartcarSimulator) -> None:
    sim.faults.chaos_rate = 1.0
    for seed in range(100):
        sim.faults.chaos_seed = seed
        sim.clear_log()
        try:
            get(sim)
        except requests.ConnectionError:
            assert sim.requests[-1].status == 0
            assert sim.requests[-1].fault == "reset"
            break
    else:
        pytest.fail("chaos never reset a connection")


def test_token_bucket(sim: SmartcarSimulator) -> None:
    sim.faults.rate_limit_bucket = 2

    statuses = [get(sim).status_code for _ in range(3)]
    limited = get(sim)

    assert statuses == [200, 200, 429]
    assert_smartcar_error(limited, 429, "RATE_LIMIT")
    assert limited.headers["Retry-After"] == "30"
    assert sim.requests[-1].fault == "rate_limit_bucket"


def test_token_bucket_refills(sim: SmartcarSimulator) -> None:
    sim.faults.rate_limit_bucket = 1
    sim.faults.rate_limit_refill_per_minute = 600.0

    assert [get(sim).status_code for _ in range(2)] == [200, 429]
    time.sleep(0.15)
    assert get(sim).status_code == 200
    sim.faults.rate_limit_bucket = None
    assert [get(sim).status_code for _ in range(3)] == [200, 200, 200]


# --- admin and command line ------------------------------------------------------------------


def admin(sim: SmartcarSimulator, method: str, path: str, **kwargs: t.Any) -> requests.Response:
    root = sim.api_url.removesuffix("/v2.0")
    return requests.request(method, f"{root}/_admin/{path}", timeout=10, **kwargs)


def test_admin_routes(sim: SmartcarSimulator) -> None:
    new = conn("admin-user", "admin-vehicle", "2030-01-01T00:00:00Z")
    target = sim.connections("live")[3]

    assert admin(sim, "POST", "connections", json=[new]).json() == {"added": 1}
    assert get(sim, limit=1).json()["connections"] == [new]
    removed = admin(
        sim,
        "DELETE",
        "connections",
        params={"user_id": target["userId"], "vehicle_id": target["vehicleId"]},
    )
    assert removed.json() == {"removed": True}
    assert target not in sim.connections("live")
    assert admin(sim, "GET", "connections", params={"mode": "live"}).json() == sim.connections(
        "live"
    )

    assert admin(sim, "PUT", "faults", json={"force_status": 430}).json()["force_status"] == 430
    assert get(sim).status_code == 430
    assert admin(sim, "GET", "faults").json() == {**vars(Faults()), "force_status": 430}
    assert admin(sim, "PUT", "faults", json={}).json() == vars(Faults())
    assert get(sim).status_code == 200

    logged = admin(sim, "GET", "requests").json()
    assert [entry["status"] for entry in logged] == [200, 430, 200]
    assert set(logged[0]) == {"time", "path", "params", "status", "count", "fault", "client_port"}
    assert admin(sim, "DELETE", "requests").status_code == 200
    assert sim.requests == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "connections", {"data": b"not json"}, 400),
        ("POST", "connections", {"json": [{"userId": "only"}]}, 400),
        ("POST", "connections", {"json": "text"}, 400),
        ("DELETE", "connections", {}, 400),
        ("PUT", "faults", {"json": {"no_such_knob": 1}}, 400),
        ("PUT", "faults", {"json": [1]}, 400),
        ("GET", "nothing", {}, 404),
    ],
)
def test_admin_rejects_bad_requests(
    sim: SmartcarSimulator, method: str, path: str, kwargs: dict[str, t.Any], status: int
) -> None:
    response = admin(sim, method, path, **kwargs)

    assert response.status_code == status
    assert "error" in response.json()
    assert sim.requests == []


def wait_for(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    command = [sys.executable, "-m", "smartcar_simulator", "--connections", "40"]
    command += ["--seed", "5", "--token", "cli-token", "--url-file", str(url_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_for(url_file)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2\.0", url)
        root = url.removesuffix("/v2.0")
        with requests.Session() as api:
            api.auth = ("default", "cli-token")
            endpoint = f"{url}/management/connections"
            simulated = api.get(endpoint, params={"mode": "simulated", "limit": "100"}, timeout=10)
            new = conn("x", "y", "2031-01-01T00:00:00Z")
            added = requests.post(f"{root}/_admin/connections", json=[new], timeout=10)
            newest = api.get(endpoint, params={"limit": "1"}, timeout=10)
            logged = requests.get(f"{root}/_admin/requests", timeout=10).json()

        expected = [c for c in generate_connections(40, seed=5) if c["mode"] == "simulated"]
        assert simulated.json()["connections"] == expected
        assert added.json() == {"added": 1}
        assert newest.json()["connections"] == [new]
        assert [entry["status"] for entry in logged] == [200, 200]
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)

    assert proc.returncode == 0, stderr
    assert stdout == (
        f"Smartcar simulator listening on {root} (40 connections): API v2 at /v2.0,"
        " API v3 at /vehicle/v3 and /management/v3 (token at /oauth2/token)\n"
    )


def test_command_line_serves_a_data_file_with_faults(tmp_path: Path) -> None:
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps([conn("u", "v", "2026-01-01T00:00:00+00:00")]))
    command = [sys.executable, "-m", "smartcar_simulator", "--data", str(data_file)]
    command += ["--rate-limit-bucket", "1", "--latency", "0.01", "--chaos-rate", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.fullmatch(r"Smartcar simulator listening on (\S+) \(1 connections\): .*\n", line)
        assert url, line
        auth = ("default", "sim-token")
        first = requests.get(f"{url[1]}/v2.0/management/connections", auth=auth, timeout=10)
        second = requests.get(f"{url[1]}/v2.0/management/connections", auth=auth, timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)

    assert first.json()["connections"] == [conn("u", "v", "2026-01-01T00:00:00+00:00")]
    assert (second.status_code, second.headers["Retry-After"]) == (429, "30")
    assert proc.returncode == 0
