"""The `connections` stream under API v3, end to end through real HTTP against the simulator.

Auth (one client-credentials token, renewed on expiry or revocation), filters and paging on
the wire, incremental reads and their early stop, pages that shift under a walk, resuming an
interrupted walk, switching between API versions, JSON:API errors, and secrets in logs.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import re
import socket
import threading
import typing as t
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from smartcar_simulator import (
    TOKEN_PATH,
    V3_CONNECTIONS_PATH,
    RequestLog,
    SmartcarSimulator,
    generate_connections,
)
from tap_smartcar_connections.errors import ApiError, ConfigError
from tap_smartcar_connections.policy import FIRST_CONTACT_SECONDS
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.timestamps import normalize_timestamp

from .conftest import TOKEN, Run, bookmarks, run_cli, sync

SECRET = "v3-secret/+=&% 9f8e7d6c5b4a"
"""A client secret whose URL-encoded forms differ from it."""
PAGE = 10
VERSION_WARNING = "was made under API"


@pytest.fixture
def sim() -> t.Iterator[SmartcarSimulator]:
    """250 generated connections, live and simulated, served by both faces."""
    with SmartcarSimulator(
        generate_connections(250, seed=1), token=TOKEN, client_secret=SECRET
    ) as simulator:
        yield simulator


def v3(sim: SmartcarSimulator, **extra: t.Any) -> dict[str, t.Any]:
    """Settings for a v3 run against `sim`: pages of `PAGE`, no retry budget unless given."""
    return {
        "api_version": "v3",
        "client_id": sim.client_id,
        "client_secret": SECRET,
        "v3_token_url": sim.v3_token_url,
        "v3_vehicle_api_url": sim.v3_vehicle_api_url,
        "v3_management_api_url": sim.v3_management_api_url,
        "page_size": PAGE,
        "max_retry_seconds": 0,
        **extra,
    }


def v2(sim: SmartcarSimulator, **extra: t.Any) -> dict[str, t.Any]:
    """Settings for a v2 run against the same simulator's v2 face."""
    return {
        "management_token": TOKEN,
        "api_url": sim.api_url,
        "page_size": PAGE,
        "max_retry_seconds": 0,
        **extra,
    }


def only_connections(config: dict[str, t.Any], *, full_table: bool = False) -> dict[str, t.Any]:
    """The v3 catalog as discovered, with only `connections` selected (optionally FULL_TABLE)."""
    catalog: dict[str, t.Any] = TapSmartcarConnections(config=config).catalog_dict
    for stream in catalog["streams"]:
        chosen = stream["tap_stream_id"] == "connections"
        if chosen and full_table:
            stream["replication_method"] = "FULL_TABLE"
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = chosen
    return catalog


def run(
    config: dict[str, t.Any],
    state: dict[str, t.Any] | None = None,
    *,
    full_table: bool = False,
    expect_error: type[BaseException] | None = None,
) -> Run:
    """Sync `connections` alone, in process."""
    catalog = only_connections(config, full_table=full_table)
    return sync(config, state, catalog, expect_error=expect_error)


def reads(sim: SmartcarSimulator, mode: str | None = None) -> list[RequestLog]:
    """The connections requests answered, for one mode or all."""
    return [
        r
        for r in sim.requests
        if r.path == V3_CONNECTIONS_PATH
        and (mode is None or r.params.get("filter[vehicle.mode]") == mode)
    ]


def token_requests(sim: SmartcarSimulator) -> list[RequestLog]:
    return [r for r in sim.requests if r.path == TOKEN_PATH]


def expected(sim: SmartcarSimulator, mode: str) -> list[dict[str, t.Any]]:
    """What the tap should emit for a mode: the served records, timestamps normalised."""
    return [
        {
            **c,
            "connectedAt": normalize_timestamp(c["connectedAt"]),
            "updatedAt": normalize_timestamp(c["updatedAt"]),
        }
        for c in sim.connections_v3(mode)
    ]


def keys(records: t.Iterable[dict[str, t.Any]]) -> set[tuple[str, str]]:
    return {(r["userId"], r["vehicleId"]) for r in records}


def newest(sim: SmartcarSimulator, mode: str) -> str:
    return max(normalize_timestamp(c["connectedAt"]) for c in sim.connections_v3(mode))


def partition(state: dict[str, t.Any], mode: str) -> dict[str, t.Any]:
    partitions = state["bookmarks"]["connections"]["partitions"]
    (found,) = [p for p in partitions if p["context"].get("mode") == mode]
    return t.cast("dict[str, t.Any]", found)


def added(k: int, prefix: str = "new", mode: str = "live") -> list[dict[str, str]]:
    """`k` connections newer than any generated one (and before the run starts)."""
    return [
        {
            "userId": f"{prefix}-u{i}",
            "vehicleId": f"{prefix}-v{i}",
            "connectedAt": f"2026-0{1 + i // 60}-15T00:{i % 60:02d}:00Z",
            "mode": mode,
        }
        for i in range(k)
    ]


def activations(result: Run) -> list[dict[str, t.Any]]:
    return [m for m in result.messages if m["type"] == "ACTIVATE_VERSION"]


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def on_page(
    sim: SmartcarSimulator, number: int, action: t.Callable[[], object], *, times: int | None = 1
) -> None:
    """Run `action` before a connections request for page `number` is answered (`times` at most)."""
    done = [0]

    def hook(path: str, params: dict[str, str]) -> None:
        if path != V3_CONNECTIONS_PATH or params.get("page[number]") != str(number):
            return
        if times is None or done[0] < times:
            done[0] += 1
            action()

    sim.before_request.append(hook)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- Auth: one token, renewed when it stops working ------------------------------------------


def test_one_token_serves_every_page_mode_and_stream(sim: SmartcarSimulator) -> None:
    """A whole run (every stream, both modes, many pages) fetches one token, the documented way."""
    result = sync(v3(sim))

    assert sim.tokens_issued == 1
    (fetch,) = token_requests(sim)
    assert sim.requests[0] == fetch
    assert fetch.params == {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": "***",
    }
    assert fetch.status == 200
    assert len(reads(sim)) > 2 * 10
    assert all(r.status == 200 for r in sim.requests)
    assert {r.path for r in sim.requests} >= {
        "/management/v3/webhooks",
        "/management/v3/subscriptions",
    }
    connections = [
        m["record"]
        for m in result.messages
        if m["type"] == "RECORD" and m["stream"] == "connections"
    ]
    assert connections == expected(sim, "live") + expected(sim, "simulated")


@pytest.mark.parametrize("change", ["expire_tokens", "revoke_tokens"])
def test_a_token_that_stops_working_mid_walk_is_replaced_once(
    sim: SmartcarSimulator, change: str
) -> None:
    """An expired or revoked token costs one 401, then a new token, and the walk goes on."""
    on_page(sim, 3, getattr(sim, change))

    result = run(v3(sim, modes=["live"]))

    assert sim.tokens_issued == 2
    assert [r.status for r in reads(sim)].count(401) == 1
    shape = [(r.path, r.status, r.params.get("page[number]")) for r in sim.requests[:6]]
    assert shape == [
        (TOKEN_PATH, 200, None),
        (V3_CONNECTIONS_PATH, 200, "1"),
        (V3_CONNECTIONS_PATH, 200, "2"),
        (V3_CONNECTIONS_PATH, 401, "3"),
        (TOKEN_PATH, 200, None),
        (V3_CONNECTIONS_PATH, 200, "3"),
    ]
    assert result.records == expected(sim, "live")


def test_a_new_token_refused_too_ends_the_run_naming_the_credentials(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """A 401 on the retry with a fresh token is not retried again: one line, non-zero exit."""
    sim.before_request.append(
        lambda path, _: sim.revoke_tokens() if path == V3_CONNECTIONS_PATH else None
    )

    result = run_cli(tmp_path, v3(sim, modes=["live"]))

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    assert "401 AUTHENTICATION" in line
    assert "a new access token was refused too" in line
    assert "client_id" in line
    assert "client_secret" in line
    assert sim.tokens_issued == 2
    assert [r.status for r in reads(sim)] == [401, 401]
    assert result.records == []


def test_bad_client_credentials_end_with_one_line_and_no_secret(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """A wrong client_secret: one line naming both settings, nothing secret anywhere."""
    wrong = "wrong-secret-0123456789abcdef"

    result = run_cli(tmp_path, v3(sim, client_secret=wrong), env={"LOGLEVEL": "DEBUG"})

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    assert "token endpoint refused the client credentials" in line
    assert "401 invalid_client" in line
    assert "client_id" in line
    assert "client_secret" in line
    output = result.stderr + json.dumps(result.messages)
    for secret in (wrong, quote(wrong), SECRET, quote_plus(SECRET)):
        assert secret not in output
    assert sim.tokens_issued == 0
    assert [r.path for r in sim.requests] == [TOKEN_PATH]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_token_endpoint_is_retried(sim: SmartcarSimulator, status: int) -> None:
    """429 and 5xx from the token endpoint are transient: retried, then the run goes on."""
    sim.faults.token_status = status
    calls = [0]

    def recover(path: str, _: dict[str, str]) -> None:
        calls[0] += path == TOKEN_PATH
        if calls[0] == 2:
            sim.faults.token_status = None

    sim.before_request.append(recover)

    result = run(v3(sim, modes=["live"], max_retry_seconds=30))

    assert [r.status for r in token_requests(sim)] == [status, 200]
    assert sim.tokens_issued == 1
    assert result.records == expected(sim, "live")


def test_an_unreachable_token_endpoint_names_v3_token_url(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """No answer on first contact is a setting to check, said at once (no retry budget used)."""
    url = f"http://127.0.0.1:{free_port()}/oauth2/token"

    result = run_cli(tmp_path, v3(sim, v3_token_url=url, max_retry_seconds=600))

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    assert "cannot reach v3_token_url" in line
    assert sim.requests == []


def test_an_unreachable_vehicle_api_is_named_soon_though_the_token_endpoint_answered(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """The token endpoint answering says nothing about v3_vehicle_api_url's host.

    That host gets the short first-contact retry (a blip passes), not max_retry_seconds (here
    ten minutes), and the line names the setting.
    """
    url = f"http://127.0.0.1:{free_port()}/vehicle/v3"

    result = run_cli(tmp_path, v3(sim, v3_vehicle_api_url=url, max_retry_seconds=600), timeout=60)

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    assert "cannot reach v3_vehicle_api_url" in line
    assert result.sleeps
    assert sum(result.sleeps) <= FIRST_CONTACT_SECONDS
    assert [r.path for r in sim.requests] == [TOKEN_PATH]


# --- Filters, paging and records on the wire -------------------------------------------------


def test_each_mode_is_walked_by_page_number_until_links_next_is_null(
    sim: SmartcarSimulator,
) -> None:
    """filter[vehicle.mode] per mode, page[size], page[number] 1..n, n = ceil(count/size)."""
    result = run(v3(sim))

    for mode in ("live", "simulated"):
        sent = reads(sim, mode)
        pages = math.ceil(len(sim.connections_v3(mode)) / PAGE)
        assert pages > 2
        assert [r.params for r in sent] == [
            {"filter[vehicle.mode]": mode, "page[size]": str(PAGE), "page[number]": str(n)}
            for n in range(1, pages + 1)
        ]
        assert [r for r in result.records if r["mode"] == mode] == expected(sim, mode)
    assert len(reads(sim)) == len(sim.requests) - 1


def test_records_carry_every_v3_field_normalised(sim: SmartcarSimulator) -> None:
    """Each record is the served connection: ids, permissions, vehicle details, UTC stamps."""
    result = run(v3(sim, modes=["simulated"]))

    assert result.records == expected(sim, "simulated")
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
    for record in result.records:
        assert set(record) == {
            "userId",
            "vehicleId",
            "connectedAt",
            "mode",
            "connectionId",
            "permissions",
            "make",
            "model",
            "year",
            "powertrainType",
            "updatedAt",
        }
        assert record["mode"] == "simulated"
        assert isinstance(record["year"], int)
        assert isinstance(record["permissions"], list)
        assert all(isinstance(p, str) for p in record["permissions"])
        for field in ("connectedAt", "updatedAt"):
            assert re.fullmatch(stamp, record[field])
    # The served stamps mix precisions: normalising really had work to do.
    served = {c["connectedAt"] for c in sim.connections_v3("simulated")}
    assert served - {r["connectedAt"] for r in result.records}


def test_user_and_vehicle_filters_reach_the_api(sim: SmartcarSimulator) -> None:
    """user_id and vehicle_id become filter[userId] and filter[vehicleId] on every request."""
    target = sim.connections_v3("live")[5]
    config = v3(sim, modes=["live"], user_id=target["userId"], vehicle_id=target["vehicleId"])

    result = run(config)

    (sent,) = reads(sim)
    assert sent.params == {
        "filter[vehicle.mode]": "live",
        "filter[userId]": target["userId"],
        "filter[vehicleId]": target["vehicleId"],
        "page[size]": str(PAGE),
        "page[number]": "1",
    }
    assert keys(result.records) == {(target["userId"], target["vehicleId"])}
    context = partition(result.state, "live")["context"]
    assert context == {"mode": "live", "userId": target["userId"], "vehicleId": target["vehicleId"]}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"modes": ["live", "test"]}, "cannot include test under api_version v3"),
        ({"client_id": None}, "'client_id' is required for api_version v3"),
        ({"client_secret": None}, "'client_secret' is required for api_version v3"),
    ],
)
def test_v3_config_errors_name_the_setting(
    sim: SmartcarSimulator, change: dict[str, t.Any], named: str
) -> None:
    """Under v3 the test mode and missing client credentials are refused before any request."""
    config = {k: v for k, v in {**v3(sim), **change}.items() if v is not None}

    failed = sync(config, expect_error=ConfigError)

    assert named in str(failed.error)
    assert SECRET not in str(failed.error)
    assert sim.requests == []


def test_management_token_is_required_under_v2_only(sim: SmartcarSimulator) -> None:
    """v3 needs no management_token; v2 without one still says it is required."""
    assert "management_token" not in v3(sim)
    assert run(v3(sim, modes=["live"])).records == expected(sim, "live")

    config = {k: v for k, v in v2(sim).items() if k != "management_token"}
    failed = sync(config, expect_error=ConfigError)

    assert "'management_token' is required for api_version v2" in str(failed.error)


# --- Incremental: bookmarks and the early stop -----------------------------------------------


def test_a_second_run_reads_only_the_first_page_and_the_new_connections(
    sim: SmartcarSimulator,
) -> None:
    """Newest first (orderDirection desc): the walk stops at the bookmark on page 1."""
    first = run(v3(sim))
    fresh = added(3)
    sim.add(*fresh)
    sim.clear_log()

    second = run(v3(sim), first.state)

    assert [r.params["page[number]"] for r in reads(sim, "live")] == ["1"]
    assert [r.params["page[number]"] for r in reads(sim, "simulated")] == ["1"]
    assert sorted(second.pairs()) == sorted(keys(fresh))
    assert bookmarks(second.state) == {
        "mode=live": newest(sim, "live"),
        "mode=simulated": bookmarks(first.state)["mode=simulated"],
    }
    assert partition(second.state, "live")["api_version"] == "v3"


@pytest.mark.parametrize("order", ["asc", "unstated"])
def test_without_newest_first_every_page_is_read_and_nothing_old_sent_again(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture, order: str
) -> None:
    """Oldest first, or no order said: no early stop, a WARNING, still only the new emitted."""
    sim.faults.v3_order = order
    config = v3(sim, modes=["live"])
    pages = math.ceil((len(sim.connections_v3("live")) + 3) / PAGE)

    with caplog.at_level(logging.WARNING):
        first = run(config)
        fresh = added(3)
        sim.add(*fresh)
        sim.clear_log()
        second = run(config, first.state)

    said = warnings(caplog, "does not say so: meta.orderDirection is not desc")
    assert len(said) == 2  # once per run
    assert "not newest first" in said[0]
    assert len(reads(sim, "live")) == pages
    assert sorted(second.pairs()) == sorted(keys(fresh))
    assert bookmarks(second.state) == {"mode=live": newest(sim, "live")}


# --- Pages that shift under a walk -----------------------------------------------------------


def test_a_removal_behind_a_full_refresh_is_noticed_and_read_again(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """One connection gone from page 1 while page 3 is asked for: re-read, then ACTIVATE."""
    gone = sim.connections_v3("live")[0]
    on_page(sim, 3, lambda: sim.remove(gone["userId"], gone["vehicleId"]))
    config = v3(sim, modes=["live"], emit_activate_version_messages=True)

    with caplog.at_level(logging.WARNING):
        result = run(config, full_table=True)

    assert len(warnings(caplog, "reading this mode again (1 of 2)")) == 1
    assert "meta.totalCount" in warnings(caplog, "reading this mode again")[0]
    assert keys(expected(sim, "live")) <= keys(result.records)
    assert len(result.records) == len(keys(result.records))  # nothing sent twice
    assert len(activations(result)) == 1
    pages = [str(n) for n in range(1, math.ceil(len(sim.connections_v3("live")) / PAGE) + 1)]
    assert [r.params["page[number]"] for r in reads(sim)] == pages + pages


def test_a_list_that_keeps_changing_gets_no_activate_version(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A removal on every read: three reads, then a WARNING and no ACTIVATE_VERSION."""

    def remove_newest() -> None:
        top = sim.connections_v3("live")[0]
        sim.remove(top["userId"], top["vehicleId"])

    on_page(sim, 3, remove_newest, times=None)
    config = v3(sim, modes=["live"], emit_activate_version_messages=True)

    with caplog.at_level(logging.WARNING):
        result = run(config, full_table=True)

    (why,) = warnings(caplog, "on every one of 3 reads")
    assert "meta.totalCount" in why
    assert "no ACTIVATE_VERSION is sent" in why
    assert activations(result) == []
    assert keys(expected(sim, "live")) <= keys(result.records)
    assert len(result.records) == len(keys(result.records))
    assert [r.params["page[number]"] for r in reads(sim)].count("1") == 3


def test_an_addition_mid_walk_loses_nothing_and_sends_nothing_twice(
    sim: SmartcarSimulator,
) -> None:
    """A new connection shifts every page down by one: one is read twice but sent once.

    Only a shrink can move an unread connection past the walk, so the bookmark moves (a first
    walk on a busy application must end); the new one, above it, comes with the next run.
    """
    before = newest(sim, "live")
    (fresh,) = added(1)
    on_page(sim, 3, lambda: sim.add(fresh))

    result = run(v3(sim, modes=["live"]))

    assert len(result.records) == len(keys(result.records))
    assert keys(result.records) == keys(expected(sim, "live")) - {
        (fresh["userId"], fresh["vehicleId"])
    }
    assert bookmarks(result.state) == {"mode=live": before}
    following = run(v3(sim, modes=["live"]), result.state)
    assert keys(following.records) == {(fresh["userId"], fresh["vehicleId"])}
    assert bookmarks(following.state) == {"mode=live": newest(sim, "live")}


@pytest.mark.parametrize(("times", "moves"), [(1, True), (None, False)])
def test_an_incremental_walk_moves_its_bookmark_only_after_a_consistent_read(
    sim: SmartcarSimulator, times: int | None, moves: bool
) -> None:
    """A removal mid-walk: the bookmark follows a consistent re-read, never an inconsistent one."""
    first = run(v3(sim, modes=["live"]))
    sim.add(*added(30))

    def remove_oldest() -> None:
        bottom = sim.connections_v3("live")[-1]
        sim.remove(bottom["userId"], bottom["vehicleId"])

    on_page(sim, 3, remove_oldest, times=times)

    second = run(v3(sim, modes=["live"]), first.state)

    assert keys(added(30)) <= keys(second.records)
    assert len(second.records) == len(keys(second.records))
    live = partition(second.state, "live")
    assert "checkpoint" not in live
    if moves:
        assert live["replication_key_value"] == newest(sim, "live")
    else:
        assert (
            live["replication_key_value"] == partition(first.state, "live")["replication_key_value"]
        )


# --- Resuming an interrupted walk ------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 7, 25])
def test_an_interrupted_first_walk_resumes_near_its_checkpoint(k: int) -> None:
    """Fail at page 5 of 20, add k: the rerun reads the head, then goes on near page 5."""
    data = [c for c in generate_connections(400, seed=3) if c["mode"] == "live"][:200]
    with SmartcarSimulator(data, token=TOKEN, client_secret=SECRET) as big:
        config = v3(big, modes=["live"])
        big.faults.fail_after_page = 5
        failed = run(config, expect_error=ApiError)
        assert len(failed.records) == 5 * PAGE
        checkpoint = partition(failed.state, "live")["checkpoint"]
        assert checkpoint["cursor"] == "6"
        assert "replication_key_value" not in partition(failed.state, "live")
        later = added(k)
        big.add(*later)
        big.faults.fail_after_page = None
        big.clear_log()

        rerun = run(config, failed.state)

        everything = keys(expected(big, "live"))
        assert keys(failed.records) | keys(rerun.records) == everything
        assert keys(later) <= keys(rerun.records)
        assert len(rerun.records) == len(keys(rerun.records))
        full = math.ceil((200 + k) / PAGE)
        assert len(reads(big)) <= (20 - 5) + 2 + math.ceil((k + 1) / PAGE)
        assert len(reads(big)) < full
        assert bookmarks(rerun.state) == {"mode=live": newest(big, "live")}
        assert "checkpoint" not in partition(rerun.state, "live")


@pytest.mark.parametrize("where", ["read", "unread"])
def test_a_resume_after_removals_loses_nothing_still_present(where: str) -> None:
    """15 connections disconnected between the runs, from pages read or not: none lost."""
    data = [c for c in generate_connections(400, seed=3) if c["mode"] == "live"][:200]
    with SmartcarSimulator(data, token=TOKEN, client_secret=SECRET) as big:
        config = v3(big, modes=["live"])
        big.faults.fail_after_page = 5
        failed = run(config, expect_error=ApiError)
        served = big.connections_v3("live")
        for c in served[10:25] if where == "read" else served[100:115]:
            big.remove(c["userId"], c["vehicleId"])
        later = added(4)
        big.add(*later)
        big.faults.fail_after_page = None
        big.clear_log()

        rerun = run(config, failed.state)

        unread = keys(expected(big, "live")) - keys(failed.records)
        assert unread <= keys(rerun.records)
        assert len(rerun.records) == len(keys(rerun.records))
        assert len(reads(big)) <= (20 - 5) + 2 + 2
        assert bookmarks(rerun.state) == {"mode=live": newest(big, "live")}


# --- Switching API versions ------------------------------------------------------------------


def test_switching_versions_reads_each_mode_afresh_once(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """v2 -> v3 -> v2: each switch re-reads every mode with one WARNING per mode."""
    old = sync(v2(sim))
    assert all("api_version" not in p for p in old.state["bookmarks"]["connections"]["partitions"])
    sim.clear_log()

    with caplog.at_level(logging.WARNING):
        switched = run(v3(sim), old.state)
    said = warnings(caplog, VERSION_WARNING)
    assert len(said) == 2
    assert all("API v2, not v3" in w and "from the beginning" in w for w in said)
    for mode in ("live", "simulated"):
        assert len(reads(sim, mode)) == math.ceil(len(sim.connections_v3(mode)) / PAGE)
        assert [r for r in switched.records if r["mode"] == mode] == expected(sim, mode)
        assert partition(switched.state, mode)["api_version"] == "v3"
        assert partition(switched.state, mode)["replication_key_value"] == newest(sim, mode)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = run(v3(sim), switched.state)
    assert warnings(caplog, VERSION_WARNING) == []
    assert again.records == []

    caplog.clear()
    sim.clear_log()
    with caplog.at_level(logging.WARNING):
        back = sync(v2(sim), switched.state)
    said = warnings(caplog, VERSION_WARNING)
    assert len(said) == 2
    assert all("API v3, not v2" in w for w in said)
    assert len(back.records) == len(sim.connections("live")) + len(sim.connections("simulated"))
    assert all("api_version" not in p for p in back.state["bookmarks"]["connections"]["partitions"])


def test_a_v2_state_under_v2_is_untouched(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """v2 after v2: no version warning, no api_version key, one page per mode, nothing resent."""
    first = sync(v2(sim))
    sim.clear_log()

    with caplog.at_level(logging.WARNING):
        second = sync(v2(sim), first.state)

    assert warnings(caplog, VERSION_WARNING) == []
    assert second.records == []
    assert second.state == first.state
    assert len(sim.requests) == 2
    assert "api_version" not in json.dumps(second.state)


def test_a_start_date_bounds_the_fresh_read_after_a_switch(
    sim: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The re-read after a switch starts from start_date, which the WARNING names."""
    old = sync(v2(sim, modes=["live"]))
    start = sorted(c["connectedAt"] for c in expected(sim, "live"))[-25]

    with caplog.at_level(logging.WARNING):
        switched = run(v3(sim, modes=["live"], start_date=start), old.state)

    (said,) = warnings(caplog, VERSION_WARNING)
    assert start in said
    assert keys(switched.records) == {
        (c["userId"], c["vehicleId"]) for c in expected(sim, "live") if c["connectedAt"] >= start
    }


# --- JSON:API errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "code", "advice"),
    [
        (400, "VALIDATION", "PARAMETER", "page_size"),
        (403, "PERMISSION", "INSUFFICIENT_PERMISSIONS", "permissions"),
        (404, "RESOURCE_NOT_FOUND", "PATH", "v3_vehicle_api_url"),
    ],
)
def test_a_refused_request_ends_with_the_json_api_summary(
    tmp_path: Path, sim: SmartcarSimulator, status: int, kind: str, code: str, advice: str
) -> None:
    """4xx from /connections: one line with status, type, code, detail, requestId and advice."""

    def refuse(path: str, _: dict[str, str]) -> None:
        if path == V3_CONNECTIONS_PATH:
            sim.faults.force_status = status

    sim.before_request.append(refuse)

    result = run_cli(tmp_path, v3(sim, max_retry_seconds=30))

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    pattern = (
        rf"Smartcar API error {status} {kind} \(code {code}\): [^(]+ "
        r"\(requestId [0-9a-f-]{36}\)\. To fix: .+"
    )
    assert re.search(pattern, line), line
    assert advice in line.split("To fix:")[1]
    assert "suggestedUserMessage" not in result.stderr
    assert [r.status for r in reads(sim)] == [status]


@pytest.mark.parametrize(
    ("faults", "summary"),
    [
        ({"rate_limit_every": 3, "retry_after": "0"}, "429 RATE_LIMIT (code SMARTCAR_API)"),
        ({"error_every": 3, "error_status": 500}, "500 SERVER (code INTERNAL)"),
        ({"error_every": 3, "html_errors": True}, "not Smartcar's error JSON"),
    ],
)
def test_transient_errors_are_retried_with_a_summary_not_the_body(
    sim: SmartcarSimulator,
    caplog: pytest.LogCaptureFixture,
    faults: dict[str, t.Any],
    summary: str,
) -> None:
    """429 (Retry-After) and 5xx are retried; each WARNING summarises, never quotes the body."""
    for name, value in faults.items():
        setattr(sim.faults, name, value)

    with caplog.at_level(logging.WARNING):
        result = run(v3(sim, modes=["live"], max_retry_seconds=60))

    retried = warnings(caplog, "retrying in")
    assert retried
    assert all(summary in w for w in retried)
    assert not any("Something went wrong" in w or "<html" in w for w in retried)
    assert result.records == expected(sim, "live")
    assert any(r.status != 200 for r in sim.requests)


# --- Secrets never in any output -------------------------------------------------------------

DEBUG_LOGGING = """\
version: 1
disable_existing_loggers: false
formatters:
  plain:
    format: "%(levelname)s %(name)s %(message)s"
handlers:
  console:
    class: logging.StreamHandler
    formatter: plain
    stream: ext://sys.stderr
root:
  level: DEBUG
  handlers: [console]
"""


def test_no_secret_or_access_token_reaches_any_output_at_debug(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """At DEBUG, through retries, a revoked token and a refresh: no secret, no token printed."""
    log_config = tmp_path / "logging.yaml"
    log_config.write_text(DEBUG_LOGGING)
    on_page(sim, 2, sim.revoke_tokens)
    sim.faults.error_every = 5
    sim.faults.retry_after = "0"

    result = run_cli(
        tmp_path,
        v3(sim, max_retry_seconds=60),
        env={"SINGER_SDK_LOG_CONFIG": str(log_config), "LOGLEVEL": "DEBUG"},
    )

    assert result.exit_code == 0, result.stderr
    assert "DEBUG urllib3" in result.stderr  # the level really was DEBUG
    tokens = sim.issued_tokens
    assert len(tokens) >= 2
    output = result.stderr + json.dumps(result.messages)
    for secret in [SECRET, quote(SECRET), quote_plus(SECRET), quote(SECRET, safe=""), *tokens]:
        assert secret not in output


class _EchoingTokenEndpoint(http.server.BaseHTTPRequestHandler):
    """A token endpoint (or proxy) that refuses every request, quoting its body back."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        payload = json.dumps({"error": "invalid_request", "error_description": f"got {body}"})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, format: str, *args: t.Any) -> None:
        """Stay quiet."""


def test_a_token_endpoint_echoing_the_form_body_leaks_no_secret(
    tmp_path: Path, sim: SmartcarSimulator
) -> None:
    """The secret goes out form-encoded: an error quoting the body must not show it either."""
    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingTokenEndpoint)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{echo.server_address[1]}/oauth2/token"
        result = run_cli(tmp_path, v3(sim, v3_token_url=url), env={"LOGLEVEL": "DEBUG"})
    finally:
        echo.shutdown()
        echo.server_close()

    assert result.exit_code != 0
    (line,) = error_lines(result.stderr)
    assert "400 invalid_request: got grant_type=client_credentials" in line  # it was echoed
    assert "client_secret=<redacted>" in line
    for secret in (SECRET, quote(SECRET), quote_plus(SECRET), quote(SECRET, safe="")):
        assert secret not in result.stderr
