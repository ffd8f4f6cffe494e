"""The simulator's API v3 face: tokens, JSON:API lists and errors, paging, faults, over HTTP."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from smartcar_simulator import Faults, SmartcarSimulator, generate_connections, instant

ERROR_KEYS = {
    "status",
    "type",
    "code",
    "title",
    "detail",
    "resolution",
    "suggestedUserMessage",
    "links",
    "meta",
}
DATA = generate_connections(120, seed=11, modes=("live", "simulated", "test"))
LIVE = [c for c in DATA if c["mode"] == "live"]


@pytest.fixture
def sim() -> t.Iterator[SmartcarSimulator]:
    with SmartcarSimulator(DATA, token="v2-token") as simulator:
        yield simulator


def token_request(sim: SmartcarSimulator, **overrides: str | None) -> requests.Response:
    fields = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        **overrides,
    }
    body = {k: v for k, v in fields.items() if v is not None}
    return requests.post(sim.v3_token_url, data=body, timeout=10)


def access_token(sim: SmartcarSimulator) -> str:
    response = token_request(sim)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def v3_get(
    sim: SmartcarSimulator,
    what: str = "connections",
    token: str | None = None,
    /,
    **params: t.Any,
) -> requests.Response:
    base = sim.v3_vehicle_api_url if what == "connections" else sim.v3_management_api_url
    headers = bearer(token or access_token(sim))
    return requests.get(f"{base}/{what}", params=params, headers=headers, timeout=10)


def assert_jsonapi_error(response: requests.Response, status: int, kind: str) -> dict[str, t.Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] in ("application/vnd.api+json", "application/json")
    errors = response.json()["errors"]
    assert len(errors) == 1
    error: dict[str, t.Any] = errors[0]
    assert set(error) == ERROR_KEYS
    assert error["status"] == str(status)
    assert error["type"] == kind
    assert error["links"]["about"].startswith("https://smartcar.com/docs/errors/")
    assert len(error["meta"]["debug"]["requestId"]) == 36
    return error


def walk(
    sim: SmartcarSimulator, token: str, what: str = "connections", /, **params: t.Any
) -> tuple[list[dict[str, t.Any]], list[dict[str, t.Any]]]:
    """Follow links.next from the first page to null: (items, bodies)."""
    base = sim.v3_vehicle_api_url if what == "connections" else sim.v3_management_api_url
    url: str | None = f"{base}/{what}"
    items: list[dict[str, t.Any]] = []
    bodies: list[dict[str, t.Any]] = []
    with requests.Session() as session:
        session.headers.update(bearer(token))
        first = True
        while url is not None and len(bodies) < 1000:
            response = session.get(url, params=params if first else None, timeout=10)
            first = False
            assert response.status_code == 200, response.text
            body = response.json()
            bodies.append(body)
            items += body["data"]
            url = body["links"]["next"]
    return items, bodies


def flat(item: dict[str, t.Any]) -> dict[str, t.Any]:
    """A served connection object as the flat record `connections_v3` returns."""
    vehicle = item["attributes"]["vehicle"]
    return {
        "userId": item["relationships"]["user"]["data"]["id"],
        "vehicleId": item["relationships"]["vehicle"]["data"]["id"],
        "connectedAt": item["meta"]["createdAt"],
        "mode": vehicle["mode"],
        "connectionId": item["id"],
        "permissions": item["attributes"]["permissions"],
        **{k: vehicle[k] for k in ("make", "model", "year", "powertrainType")},
        "updatedAt": item["meta"]["updatedAt"],
    }


# --- URLs and tokens -------------------------------------------------------------------------


def test_urls_share_the_v2_port(sim: SmartcarSimulator) -> None:
    root = sim.api_url.removesuffix("/v2.0")

    assert sim.v3_token_url == f"{root}/oauth2/token"
    assert sim.v3_vehicle_api_url == f"{root}/vehicle/v3"
    assert sim.v3_management_api_url == f"{root}/management/v3"
    with pytest.raises(RuntimeError, match="not started"):
        _ = SmartcarSimulator().v3_token_url


def test_a_token_is_issued_for_good_client_credentials(sim: SmartcarSimulator) -> None:
    sim.token_lifetime = 1234
    response = token_request(sim)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1234
    assert body["access_token"].startswith("sim-at-")
    assert len(body["access_token"]) == len("sim-at-") + 32
    assert sim.tokens_issued == 1
    assert access_token(sim) != body["access_token"]
    assert sim.tokens_issued == 2
    assert v3_get(sim, "connections", body["access_token"]).status_code == 200


def test_a_json_token_body_works_too(sim: SmartcarSimulator) -> None:
    fields = {"grant_type": "client_credentials", "client_id": sim.client_id}
    response = requests.post(
        sim.v3_token_url, json={**fields, "client_secret": sim.client_secret}, timeout=10
    )

    assert response.status_code == 200, response.text
    assert v3_get(sim, "connections", response.json()["access_token"]).status_code == 200


def test_token_requests_are_logged_without_the_secret(sim: SmartcarSimulator) -> None:
    access_token(sim)
    token_request(sim, client_secret="wrong-secret")

    assert [(r.path, r.status) for r in sim.requests] == [
        ("/oauth2/token", 200),
        ("/oauth2/token", 401),
    ]
    assert sim.requests[0].params == {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": "***",
    }
    assert sim.client_secret not in repr(sim.requests)
    assert "wrong-secret" not in repr(sim.requests)


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_secret": "nope"},
        {"client_id": "client_other"},
        {"client_secret": None},
        {"client_id": None},
        {"client_id": "", "client_secret": ""},
    ],
)
def test_bad_client_credentials_are_invalid_client(
    sim: SmartcarSimulator, overrides: dict[str, str | None]
) -> None:
    response = token_request(sim, **overrides)

    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_client"
    assert sim.tokens_issued == 0


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"grant_type": None}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
    ],
)
def test_bad_grants_are_400(
    sim: SmartcarSimulator, overrides: dict[str, str | None], error: str
) -> None:
    response = token_request(sim, **overrides)

    assert (response.status_code, response.json()["error"]) == (400, error)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"not a form", "application/x-www-form-urlencoded"), (b"[1, 2]", "application/json")],
)
def test_an_unparsable_token_body_is_invalid_request(
    sim: SmartcarSimulator, data: bytes, content_type: str
) -> None:
    response = requests.post(
        sim.v3_token_url, data=data, headers={"Content-Type": content_type}, timeout=10
    )

    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_an_oversized_token_body_is_refused(sim: SmartcarSimulator) -> None:
    response = requests.post(sim.v3_token_url, data=b"a=" + b"x" * 70_000, timeout=10)

    assert response.status_code == 413
    assert sim.tokens_issued == 0


def test_tokens_expire(sim: SmartcarSimulator) -> None:
    sim.token_lifetime = 1
    token = access_token(sim)
    assert v3_get(sim, "connections", token).status_code == 200

    time.sleep(1.05)
    error = assert_jsonapi_error(v3_get(sim, "connections", token), 401, "AUTHENTICATION")
    assert "expired" in error["detail"]


def test_expire_tokens_needs_no_sleep(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    sim.expire_tokens()

    assert (
        "expired"
        in assert_jsonapi_error(v3_get(sim, "connections", token), 401, "AUTHENTICATION")["detail"]
    )
    assert v3_get(sim).status_code == 200  # a new token is good


def test_revoked_tokens_get_a_401_mid_walk(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    first = v3_get(sim, "connections", token, **{"page[size]": 5})
    assert first.status_code == 200
    sim.revoke_tokens()

    second = requests.get(first.json()["links"]["next"], headers=bearer(token), timeout=10)

    assert_jsonapi_error(second, 401, "AUTHENTICATION")
    assert v3_get(sim).status_code == 200


def test_bearer_and_basic_do_not_cross(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    v2_url = f"{sim.api_url}/management/connections"

    basic_on_v3 = requests.get(
        f"{sim.v3_vehicle_api_url}/connections", auth=("default", "v2-token"), timeout=10
    )
    bearer_on_v2 = requests.get(v2_url, headers=bearer(token), timeout=10)
    none_on_v3 = requests.get(f"{sim.v3_management_api_url}/webhooks", timeout=10)
    unknown = v3_get(sim, "connections", "sim-at-" + "0" * 32)

    assert_jsonapi_error(basic_on_v3, 401, "AUTHENTICATION")
    assert bearer_on_v2.status_code == 401
    assert bearer_on_v2.json()["type"] == "AUTHENTICATION"  # the v2 body, not JSON:API
    assert_jsonapi_error(none_on_v3, 401, "AUTHENTICATION")
    assert_jsonapi_error(unknown, 401, "AUTHENTICATION")
    assert requests.get(v2_url, auth=("default", "v2-token"), timeout=10).status_code == 200


def test_unknown_v3_paths_are_404_path(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    response = requests.get(f"{sim.v3_vehicle_api_url}/vehicles", headers=bearer(token), timeout=10)
    posted = requests.post(
        f"{sim.v3_vehicle_api_url}/connections", headers=bearer(token), timeout=10
    )

    assert assert_jsonapi_error(response, 404, "RESOURCE_NOT_FOUND")["code"] == "PATH"
    assert_jsonapi_error(posted, 404, "RESOURCE_NOT_FOUND")


# --- connections -----------------------------------------------------------------------------


def test_a_connections_page_has_the_documented_shape(sim: SmartcarSimulator) -> None:
    response = v3_get(sim)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    body = response.json()
    assert set(body) == {"data", "meta", "links"}
    assert body["meta"] == {
        "pageNumber": 1,
        "pageSize": 10,
        "totalCount": len(LIVE),
        "orderBy": "createdAt",
        "orderDirection": "desc",
    }
    assert set(body["links"]) == {"self", "first", "prev", "next", "last"}
    assert body["links"]["prev"] is None
    item = body["data"][0]
    assert set(item) == {"id", "type", "attributes", "relationships", "meta", "links"}
    assert item["type"] == "connection"
    assert set(item["attributes"]) == {"permissions", "vehicle"}
    assert set(item["attributes"]["vehicle"]) == {"make", "model", "year", "mode", "powertrainType"}
    assert isinstance(item["attributes"]["vehicle"]["year"], int)
    assert item["relationships"]["vehicle"]["data"]["type"] == "vehicle"
    assert "related" in item["relationships"]["vehicle"]["links"]
    assert item["relationships"]["user"]["data"]["type"] == "user"
    assert item["links"]["self"].endswith(item["id"])
    assert item["meta"]["createdAt"] == LIVE[0]["connectedAt"]
    assert instant(item["meta"]["updatedAt"]) >= instant(item["meta"]["createdAt"])
    assert [flat(i) for i in body["data"]] == sim.connections_v3("live")[:10]


def test_v3_fields_are_deterministic_and_can_be_given() -> None:
    given = {
        "userId": "u1",
        "vehicleId": "v1",
        "connectedAt": "2025-05-05T05:05:05Z",
        "connectionId": "11111111-2222-4333-8444-555555555555",
        "permissions": ["read_odometer"],
        "make": "Lucid",
        "model": "Air",
        "year": 2024,
        "powertrainType": "BEV",
        "updatedAt": "2025-06-06T06:06:06Z",
    }
    derived = {"userId": "u2", "vehicleId": "v2", "connectedAt": "2025-05-05T05:05:05.123456Z"}
    with (
        SmartcarSimulator([given, derived]) as one,
        SmartcarSimulator([derived, given]) as two,
    ):
        served = [flat(i) for i in v3_get(one).json()["data"]]
        assert served == one.connections_v3() == two.connections_v3()
    by_user = {record["userId"]: record for record in served}
    assert by_user["u1"] == {**given, "mode": "live"}
    assert by_user["u2"]["connectedAt"] == "2025-05-05T05:05:05.123456Z"
    assert instant(by_user["u2"]["updatedAt"]) >= instant(by_user["u2"]["connectedAt"])
    assert by_user["u2"]["permissions"][0] == "read_vehicle_info"
    with pytest.raises(ValueError, match="year"):
        SmartcarSimulator([{**given, "year": "2024"}])


@pytest.mark.parametrize("mode", ["live", "simulated"])
def test_a_walk_follows_next_to_null_and_reads_each_connection_once(
    sim: SmartcarSimulator, mode: str
) -> None:
    items, bodies = walk(sim, access_token(sim), **{"filter[vehicle.mode]": mode, "page[size]": 7})
    expected = sim.connections_v3(mode)

    assert [flat(i) for i in items] == expected
    assert {i["attributes"]["vehicle"]["mode"] for i in items} == {mode}
    assert len(bodies) == math.ceil(len(expected) / 7)
    assert [b["meta"]["pageNumber"] for b in bodies] == list(range(1, len(bodies) + 1))
    assert {b["meta"]["totalCount"] for b in bodies} == {len(expected)}
    last = bodies[-1]["links"]
    assert last["next"] is None
    assert last["self"] == last["last"]
    query = parse_qs(urlsplit(bodies[1]["links"]["prev"]).query)
    assert query == {"filter[vehicle.mode]": [mode], "page[number]": ["1"], "page[size]": ["7"]}


def test_test_mode_connections_are_invisible_and_test_is_refused(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    test_ids = {c["vehicleId"] for c in DATA if c["mode"] == "test"}
    assert test_ids
    served = {
        i["relationships"]["vehicle"]["data"]["id"]
        for mode in ("live", "simulated")
        for i in walk(sim, token, **{"filter[vehicle.mode]": mode, "page[size]": 100})[0]
    }

    refused = v3_get(sim, "connections", token, **{"filter[vehicle.mode]": "test"})

    assert served.isdisjoint(test_ids)
    assert len(served) == len(DATA) - len(test_ids)
    assert assert_jsonapi_error(refused, 400, "VALIDATION")["code"] == "PARAMETER"
    with pytest.raises(ValueError, match="test"):
        sim.connections_v3("test")


def test_user_and_vehicle_filters(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    target = LIVE[5]
    by_user = v3_get(sim, "connections", token, **{"filter[userId]": target["userId"]}).json()
    by_vehicle = v3_get(
        sim, "connections", token, **{"filter[vehicleId]": target["vehicleId"]}
    ).json()
    nobody = v3_get(sim, "connections", token, **{"filter[userId]": "nobody"}).json()

    expected = [c for c in sim.connections_v3() if c["userId"] == target["userId"]]
    assert [flat(i) for i in by_user["data"]] == expected
    assert by_user["meta"]["totalCount"] == len(expected)
    assert [flat(i)["vehicleId"] for i in by_vehicle["data"]] == [target["vehicleId"]]
    assert parse_qs(urlsplit(by_vehicle["links"]["self"]).query)["filter[vehicleId]"] == [
        target["vehicleId"]
    ]
    assert nobody["data"] == []
    assert nobody["meta"]["totalCount"] == 0
    assert nobody["links"]["next"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"page[size]": "0"},
        {"page[size]": "101"},
        {"page[size]": "ten"},
        {"page[size]": "1.5"},
        {"page[number]": "0"},
        {"page[number]": "x"},
        {"filter[vehicle.mode]": "LIVE"},
        {"limit": "10"},
        {"page[cursor]": "abc"},
    ],
)
def test_invalid_parameters_are_400_validation(
    sim: SmartcarSimulator, params: dict[str, str]
) -> None:
    error = assert_jsonapi_error(v3_get(sim, **params), 400, "VALIDATION")

    assert error["code"] == "PARAMETER"
    assert next(iter(params)) in error["detail"]


@pytest.mark.parametrize("size", [1, 100])
def test_page_size_limits_are_accepted(sim: SmartcarSimulator, size: int) -> None:
    body = v3_get(sim, **{"page[size]": size}).json()

    assert len(body["data"]) == min(size, len(LIVE))
    assert body["meta"]["pageSize"] == size


def test_a_page_beyond_the_end_is_empty(sim: SmartcarSimulator) -> None:
    body = v3_get(sim, **{"page[number]": 99}).json()

    assert body["data"] == []
    assert body["links"]["next"] is None
    assert body["meta"]["pageNumber"] == 99


def test_paging_is_by_offset_so_a_removal_mid_walk_shifts_later_pages(
    sim: SmartcarSimulator,
) -> None:
    before = sim.connections_v3()
    victim = before[3]  # on page 1 of pages of 5

    def remove_on_page_3(path: str, params: dict[str, str]) -> None:
        if path.endswith("/vehicle/v3/connections") and params.get("page[number]") == "3":
            assert sim.remove(victim["userId"], victim["vehicleId"])

    sim.before_request.append(remove_on_page_3)
    items, bodies = walk(sim, access_token(sim), **{"page[size]": 5})

    served = [flat(i) for i in items]
    assert served[:10] == before[:10]
    assert served[10:] == before[11:]  # before[10] slid onto page 2, already read: missed
    assert before[10] not in served
    assert [b["meta"]["totalCount"] for b in bodies[:2]] == [len(before)] * 2
    assert {b["meta"]["totalCount"] for b in bodies[2:]} == {len(before) - 1}


def test_an_addition_mid_walk_is_seen_twice(sim: SmartcarSimulator) -> None:
    before = sim.connections_v3()
    new = {"userId": "new-user", "vehicleId": "new-vehicle", "connectedAt": "2030-01-01T00:00:00Z"}

    def add_on_page_2(path: str, params: dict[str, str]) -> None:
        if params.get("page[number]") == "2" and len(sim) == len(DATA):
            sim.add(new)

    sim.before_request.append(add_on_page_2)
    items, _ = walk(sim, access_token(sim), **{"page[size]": 10})

    served = [flat(i) for i in items]
    assert served[:11] == [*before[:10], before[9]]  # the last of page 1 pushed onto page 2
    assert "new-user" not in {record["userId"] for record in served}


@pytest.mark.parametrize(
    ("order", "direction"), [("desc", "desc"), ("asc", "asc"), ("unstated", None)]
)
def test_order_knob(sim: SmartcarSimulator, order: str, direction: str | None) -> None:
    sim.faults.v3_order = order
    items, bodies = walk(sim, access_token(sim), **{"page[size]": 25})

    times = [instant(i["meta"]["createdAt"]) for i in items]
    assert times == sorted(times, reverse=order != "asc")
    assert [flat(i) for i in items] == sim.connections_v3()
    for body in bodies:
        assert body["meta"].get("orderDirection") == direction
        assert ("orderBy" in body["meta"]) == (direction is not None)


def test_hostile_document_knobs(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    sim.faults.v3_total_offset = 3
    sim.faults.v3_next_elsewhere = "http://elsewhere.invalid/vehicle/v3/connections?page[number]=2"
    shifted = v3_get(sim, "connections", token).json()
    sim.faults.v3_omit_links = True
    bare = v3_get(sim, "connections", token).json()

    assert shifted["meta"]["totalCount"] == len(LIVE) + 3
    assert shifted["links"]["next"] == sim.faults.v3_next_elsewhere
    assert shifted["links"]["self"].startswith(sim.v3_vehicle_api_url)
    assert set(bare) == {"data", "meta"}
    assert len(bare["data"]) == 10


# --- webhooks and subscriptions --------------------------------------------------------------


def test_default_webhooks_and_subscriptions_are_small_but_there(sim: SmartcarSimulator) -> None:
    webhooks = sim.webhooks()
    subscriptions = sim.subscriptions("live") + sim.subscriptions("simulated")

    assert len(webhooks) == 3
    assert 1 <= len(subscriptions) <= 6
    pairs = {(c["userId"], c["vehicleId"]) for c in DATA if c["mode"] != "test"}
    assert {(s["userId"], s["vehicleId"]) for s in subscriptions} <= pairs
    assert {s["webhookId"] for s in subscriptions} <= {w["id"] for w in webhooks}
    with SmartcarSimulator(DATA) as again:
        assert again.webhooks() == webhooks
        assert again.subscriptions("live") == sim.subscriptions("live")


def test_webhooks_have_the_documented_shape(sim: SmartcarSimulator) -> None:
    response = v3_get(sim, "webhooks")

    assert response.status_code == 200
    body = response.json()
    assert body["meta"]["pageSize"] == 50
    assert body["meta"]["totalCount"] == 3
    assert body["links"]["next"] is None
    item = body["data"][0]
    assert set(item) == {"id", "type", "attributes", "meta", "links"}
    assert item["type"] == "webhook"
    assert set(item["attributes"]) == {
        "name",
        "callbackUri",
        "isEnabled",
        "triggers",
        "data",
        "errorCallbackUri",
        "autoSubscribe",
    }
    assert all(set(s) == {"group", "name", "code"} for s in item["attributes"]["triggers"])
    records = [
        {"id": i["id"], **i["attributes"], "createdAt": i["meta"]["createdAt"]}
        for i in body["data"]
    ]
    assert records == sim.webhooks()


def webhook(i: int, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "id": f"00000000-0000-4000-8000-{i:012d}",
        "name": f"Hook {i}",
        "callbackUri": f"https://Example.com/cb/{i}",
        "createdAt": f"2025-01-{i:02d}T00:00:00Z",
        **extra,
    }


def test_webhook_paging_filters_and_api_shaped_input() -> None:
    hooks = [webhook(i, isEnabled=i % 2 == 0) for i in range(1, 8)]
    api_shaped = {
        "id": "api-shaped",
        "type": "webhook",
        "attributes": {
            "name": "Given as JSON:API",
            "callbackUri": "https://other.example.org/x",
            "isEnabled": True,
            "triggers": [],
            "data": [{"group": "Odometer", "name": "Distance", "code": "TRAVELED_DISTANCE"}],
            "errorCallbackUri": None,
            "autoSubscribe": True,
        },
        "meta": {"createdAt": "2025-02-01T00:00:00Z"},
    }
    with SmartcarSimulator([], webhooks=[*hooks, api_shaped], subscriptions=[]) as sim:
        token = access_token(sim)
        items, bodies = walk(sim, token, "webhooks", **{"page[size]": 3})
        by_uri = v3_get(sim, "webhooks", token, **{"filter[callbackUri]": "EXAMPLE.COM/CB"})
        enabled = v3_get(sim, "webhooks", token, **{"filter[isEnabled]": "true"}).json()
        bad = v3_get(sim, "webhooks", token, **{"filter[isEnabled]": "yes"})
        too_big = v3_get(sim, "webhooks", token, **{"page[size]": 101})
        sim.add_webhook(webhook(9))
        assert sim.remove_webhook("api-shaped")
        after = [w["id"] for w in sim.webhooks()]

    assert [i["id"] for i in items] == ["api-shaped", *(h["id"] for h in reversed(hooks))]
    assert len(bodies) == 3
    assert items[0]["attributes"] == api_shaped["attributes"]
    assert by_uri.json()["meta"]["totalCount"] == 7
    assert {i["attributes"]["isEnabled"] for i in enabled["data"]} == {True}
    assert enabled["meta"]["totalCount"] == 4
    assert_jsonapi_error(bad, 400, "VALIDATION")
    assert_jsonapi_error(too_big, 400, "VALIDATION")
    assert after == [webhook(9)["id"], *(h["id"] for h in reversed(hooks))]


def test_subscriptions_shape_paging_and_filters() -> None:
    data = generate_connections(60, seed=3)
    hooks = [webhook(1), webhook(2)]
    with SmartcarSimulator(data, webhooks=hooks) as sim:
        sim.add_subscription(
            {
                "id": "sub-sim",
                "webhookId": hooks[0]["id"],
                "userId": "u",
                "vehicleId": "v",
                "mode": "simulated",
                "createdAt": "2025-03-03T00:00:00Z",
            }
        )
        token = access_token(sim)
        live, bodies = walk(sim, token, "subscriptions", **{"page[size]": 1})
        default = v3_get(sim, "subscriptions", token).json()
        simulated = v3_get(sim, "subscriptions", token, **{"filter[vehicle.mode]": "simulated"})
        first_hook = v3_get(sim, "subscriptions", token, **{"filter[webhookId]": hooks[0]["id"]})
        test = v3_get(sim, "subscriptions", token, **{"filter[vehicle.mode]": "test"})
        expected_live = sim.subscriptions("live")
        expected_simulated = sim.subscriptions("simulated")
        assert sim.remove_subscription("sub-sim")
        assert not sim.remove_subscription("sub-sim")

    assert len(expected_live) + len(expected_simulated) == 5
    assert default["meta"]["pageSize"] == 25
    assert default["data"] == [*(b["data"][0] for b in bodies)]
    assert len(bodies) == len(expected_live)
    item = live[0]
    assert set(item) == {"id", "type", "attributes", "meta", "relationships"}
    assert item["type"] == "subscription"
    assert {k: v["data"]["type"] for k, v in item["relationships"].items()} == {
        "webhook": "webhook",
        "user": "user",
        "vehicle": "vehicle",
    }
    records = [
        {
            "id": i["id"],
            "webhookId": i["relationships"]["webhook"]["data"]["id"],
            "userId": i["relationships"]["user"]["data"]["id"],
            "vehicleId": i["relationships"]["vehicle"]["data"]["id"],
            **i["attributes"]["vehicle"],
            **i["meta"],
        }
        for i in live
    ]
    assert [{k: r[k] for k in sorted(r)} for r in records] == [
        {k: r[k] for k in sorted(r)} for r in expected_live
    ]
    connections = {(c["userId"], c["vehicleId"]): c for c in sim.connections_v3("live")}
    for record in expected_live:
        connection = connections[record["userId"], record["vehicleId"]]
        assert record["make"] == connection["make"]
        assert record["year"] == connection["year"]
    assert [i["id"] for i in simulated.json()["data"]] == [s["id"] for s in expected_simulated]
    assert "sub-sim" in {s["id"] for s in expected_simulated}
    assert {i["relationships"]["webhook"]["data"]["id"] for i in first_hook.json()["data"]} == {
        hooks[0]["id"]
    }
    assert_jsonapi_error(test, 400, "VALIDATION")


# --- errors and faults -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, "PERMISSION"),
        (429, "RATE_LIMIT"),
        (430, "BILLING"),
        (500, "SERVER"),
        (502, "UPSTREAM"),
    ],
)
@pytest.mark.parametrize("what", ["connections", "webhooks", "subscriptions"])
def test_force_status_gives_jsonapi_errors(
    sim: SmartcarSimulator, status: int, kind: str, what: str
) -> None:
    token = access_token(sim)
    sim.faults.force_status = status

    assert_jsonapi_error(v3_get(sim, what, token), status, kind)
    assert sim.requests[-1].fault == "force_status"


def test_the_rate_limit_bucket_is_shared_by_v2_v3_and_the_token_endpoint(
    sim: SmartcarSimulator,
) -> None:
    sim.faults.rate_limit_bucket = 3
    token = access_token(sim)  # 1
    v2 = requests.get(
        f"{sim.api_url}/management/connections", auth=("default", "v2-token"), timeout=10
    )  # 2
    v3 = v3_get(sim, "webhooks", token)  # 3
    limited = v3_get(sim, "connections", token)
    limited_token = token_request(sim)

    assert (v2.status_code, v3.status_code) == (200, 200)
    error = assert_jsonapi_error(limited, 429, "RATE_LIMIT")
    assert error["status"] == "429"
    assert limited.headers["Retry-After"] == "30"
    assert_jsonapi_error(limited_token, 429, "RATE_LIMIT")
    assert limited_token.headers["Retry-After"] == "30"
    assert [r.fault for r in sim.requests[-2:]] == ["rate_limit_bucket"] * 2


def test_every_k_th_faults_count_v2_and_v3_requests_together(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    sim.clear_log()
    sim.faults.error_every = 3
    sim.faults.error_status = 502
    first = v3_get(sim, "connections", token)
    second = requests.get(
        f"{sim.api_url}/management/connections", auth=("default", "v2-token"), timeout=10
    )
    third = v3_get(sim, "connections", token)

    assert (first.status_code, second.status_code) == (200, 200)
    assert_jsonapi_error(third, 502, "UPSTREAM")
    assert sim.requests[-1].fault == "error_every"


def test_truncation_and_html_errors_on_v3(sim: SmartcarSimulator) -> None:
    token = access_token(sim)
    sim.clear_log()
    sim.faults.truncate_every = 1
    cut = v3_get(sim, "connections", token)
    sim.faults.truncate_every = 0
    sim.faults.html_errors = True
    sim.faults.force_status = 502
    html = v3_get(sim, "connections", token)

    assert cut.status_code == 200
    with pytest.raises(ValueError, match=r".*"):
        json.loads(cut.content)
    assert sim.requests[0].fault == "truncated"
    assert html.status_code == 502
    assert html.headers["Content-Type"] == "text/html"
    assert "<html>" in html.text


@pytest.mark.parametrize(
    ("status", "error"), [(400, "invalid_request"), (401, "invalid_client"), (403, None)]
)
def test_token_status_answers_the_token_endpoint_only(
    sim: SmartcarSimulator, status: int, error: str | None
) -> None:
    token = access_token(sim)
    sim.faults.token_status = status

    refused = token_request(sim)

    assert refused.status_code == status
    if error is not None:
        assert refused.json()["error"] == error
    assert sim.requests[-1].fault == "token_status"
    assert v3_get(sim, "connections", token).status_code == 200


@pytest.mark.parametrize("status", [429, 503])
def test_token_status_429_and_5xx_are_jsonapi(sim: SmartcarSimulator, status: int) -> None:
    sim.faults.token_status = status

    kind = "RATE_LIMIT" if status == 429 else "SERVER"
    assert_jsonapi_error(token_request(sim), status, kind)
    assert sim.tokens_issued == 0


def test_faults_set_over_admin_include_the_v3_knobs(sim: SmartcarSimulator) -> None:
    root = sim.api_url.removesuffix("/v2.0")
    token = access_token(sim)
    knobs = {"v3_order": "asc", "v3_total_offset": -1, "token_status": 401}
    put = requests.put(f"{root}/_admin/faults", json=knobs, timeout=10)
    body = v3_get(sim, "connections", token).json()
    revoked = requests.delete(f"{root}/_admin/tokens", timeout=10)
    logged = requests.get(f"{root}/_admin/requests", timeout=10).json()

    assert put.json() == {**vars(Faults()), **knobs}
    assert body["meta"]["orderDirection"] == "asc"
    assert body["meta"]["totalCount"] == len(LIVE) - 1
    assert revoked.json() == {"revoked": True}
    assert_jsonapi_error(v3_get(sim, "connections", token), 401, "AUTHENTICATION")
    assert [entry["path"] for entry in logged] == ["/oauth2/token", "/vehicle/v3/connections"]


# --- command line ----------------------------------------------------------------------------


def test_command_line_writes_a_settings_file(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.json"
    command = [sys.executable, "-m", "smartcar_simulator", "--connections", "30", "--seed", "2"]
    command += ["--client-id", "client_cli", "--client-secret", "cli-secret"]
    command += ["--token-lifetime", "90", "--settings-file", str(settings_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not settings_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        settings = json.loads(settings_file.read_text())
        root = settings["api_url"].removesuffix("/v2.0")
        form = {
            "grant_type": "client_credentials",
            "client_id": settings["client_id"],
            "client_secret": settings["client_secret"],
        }
        issued = requests.post(settings["v3_token_url"], data=form, timeout=10).json()
        page = requests.get(
            f"{settings['v3_vehicle_api_url']}/connections",
            params={"page[size]": "100"},
            headers=bearer(issued["access_token"]),
            timeout=10,
        ).json()
        hooks = requests.get(
            f"{settings['v3_management_api_url']}/webhooks",
            headers=bearer(issued["access_token"]),
            timeout=10,
        )
        v2 = requests.get(
            f"{settings['api_url']}/management/connections",
            auth=("default", settings["management_token"]),
            timeout=10,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)

    assert proc.returncode == 0, stderr
    assert set(settings) == {
        "api_url",
        "management_token",
        "v3_token_url",
        "v3_vehicle_api_url",
        "v3_management_api_url",
        "client_id",
        "client_secret",
    }
    assert settings["api_url"].startswith("http://127.0.0.1:")
    assert settings["v3_token_url"] == f"{root}/oauth2/token"
    assert (settings["client_id"], settings["client_secret"]) == ("client_cli", "cli-secret")
    assert settings["management_token"] == "sim-token"
    assert issued["expires_in"] == 90
    live = [c for c in generate_connections(30, seed=2) if c["mode"] == "live"]
    assert [i["meta"]["createdAt"] for i in page["data"]] == [c["connectedAt"] for c in live]
    assert hooks.status_code == 200
    assert v2.status_code == 200
    assert not (tmp_path / "settings.json.tmp").exists()
