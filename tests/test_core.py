"""Core extraction through real HTTP against the simulator: paging, bookmarks, filters."""

from __future__ import annotations

import math
import re
import typing as t

import jsonschema
import pytest

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ApiError
from tap_smartcar_connections.timestamps import normalize_timestamp, normalize_timestamps
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import Run, bookmarks, sync

NORMALISED = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


def keys(connections: t.Iterable[dict[str, str]]) -> set[tuple[str, str]]:
    return {(c["userId"], c["vehicleId"]) for c in connections}


def newest(simulator: SmartcarSimulator, mode: str) -> str:
    return max(normalize_timestamp(c["connectedAt"]) for c in simulator.connections(mode))


def requests_for(simulator: SmartcarSimulator, mode: str) -> list[t.Any]:
    return [r for r in simulator.requests if r.params.get("mode") == mode]


def keys_in_order(connections: t.Iterable[dict[str, str]]) -> list[tuple[str, str]]:
    return [(c["userId"], c["vehicleId"]) for c in connections]


def conn(user: str, vehicle: str, at: str, mode: str = "live") -> dict[str, str]:
    return {"userId": user, "vehicleId": vehicle, "connectedAt": at, "mode": mode}


def test_full_sync_emits_every_connection_once_in_the_fewest_requests(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync(config)

    assert run.error is None
    expected = keys(simulator.connections("live")) | keys(simulator.connections("simulated"))
    assert len(run.records) == len(expected) == len(set(run.pairs()))
    assert set(run.pairs()) == expected
    assert all(r["mode"] in {"live", "simulated"} for r in run.records)
    for mode in ("live", "simulated"):
        sent = requests_for(simulator, mode)
        assert len(sent) == max(1, math.ceil(len(simulator.connections(mode)) / 100))
        assert all(r.params["limit"] == "100" for r in sent)
    assert len(simulator.requests) == len(requests_for(simulator, "live")) + len(
        requests_for(simulator, "simulated")
    )


def test_every_page_of_every_mode_goes_over_one_kept_alive_connection(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync({**config, "page_size": 20})

    assert run.error is None
    assert len(simulator.requests) >= 12
    assert len({r.client_port for r in simulator.requests}) == 1


def test_records_are_normalised_and_match_the_schema(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync(config)

    schema = next(m for m in run.messages if m["type"] == "SCHEMA")
    assert schema["key_properties"] == ["userId", "vehicleId"]
    assert schema["bookmark_properties"] == ["connectedAt"]
    # The schema is both versions'; a v2 record leaves out the v3-only fields (null to a target).
    v2_fields = {"userId", "vehicleId", "connectedAt", "mode"}
    assert v2_fields < set(schema["schema"]["properties"])
    assert all(set(r) == v2_fields for r in run.records)
    assert all(re.match(NORMALISED, r["connectedAt"]) for r in run.records)


def test_each_page_carries_the_previous_cursor_url_encoded(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync({**config, "page_size": 7, "modes": ["live"]})

    assert run.error is None
    sent = requests_for(simulator, "live")
    assert len(sent) == math.ceil(len(simulator.connections("live")) / 7)
    assert "cursor" not in sent[0].params
    cursors = [r.params["cursor"] for r in sent[1:]]
    assert len(set(cursors)) == len(cursors)
    # The simulator's cursors hold "+ / = :"; a raw "+" would arrive as a space and get a 400.
    assert all(set("+/=:") <= set(c) for c in cursors)
    assert all(r.status == 200 for r in sent)
    assert set(run.pairs()) == keys(simulator.connections("live"))


def test_each_mode_keeps_its_own_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync(config)

    assert bookmarks(run.state) == {
        "mode=live": newest(simulator, "live"),
        "mode=simulated": newest(simulator, "simulated"),
    }


def test_incremental_run_reads_only_new_connections(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    first = sync(config)
    sim_mark = newest(simulator, "simulated")
    added = [
        conn(f"new-user-{i}", f"new-vehicle-{i}", f"2026-06-0{i + 1}T12:00:00Z") for i in range(3)
    ]
    simulator.add(*added)
    simulator.clear_log()

    second = sync(config, state=first.state)

    assert second.pairs() == [(c["userId"], c["vehicleId"]) for c in reversed(added)]
    assert len(requests_for(simulator, "live")) == 1
    assert len(requests_for(simulator, "simulated")) == 1
    assert bookmarks(second.state)["mode=live"] == "2026-06-03T12:00:00.000000Z"
    assert bookmarks(second.state)["mode=simulated"] == sim_mark


def test_incremental_request_count_is_ceil_of_new_plus_one_over_page_size(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "modes": ["live"], "page_size": 10}
    first = sync(settings)
    simulator.add(*[conn(f"u{i}", f"v{i}", f"2026-07-01T00:00:{i:02d}Z") for i in range(25)])
    simulator.clear_log()

    second = sync(settings, state=first.state)

    assert len(simulator.requests) == math.ceil((25 + 1) / 10)
    assert {f"u{i}" for i in range(25)} <= {r["userId"] for r in second.records}


def test_start_date_skips_older_connections_and_stops_paging(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    live = simulator.connections("live")
    start = normalize_timestamp(live[len(live) // 3]["connectedAt"])
    wanted = [c for c in live if normalize_timestamp(c["connectedAt"]) >= start]

    run = sync({**config, "modes": ["live"], "page_size": 10, "start_date": start})

    assert set(run.pairs()) == keys(wanted)
    assert len(simulator.requests) == math.ceil((len(wanted) + 1) / 10)
    assert all(r["connectedAt"] >= start for r in run.records)


def test_filters_reach_the_api_and_restrict_records(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    target = simulator.connections("live")[5]

    run = sync({**config, "user_id": target["userId"], "vehicle_id": target["vehicleId"]})

    assert run.error is None
    assert run.pairs() == [(target["userId"], target["vehicleId"])]
    assert all(r.params["user_id"] == target["userId"] for r in simulator.requests)
    assert all(r.params["vehicle_id"] == target["vehicleId"] for r in simulator.requests)
    assert {r.params["mode"] for r in simulator.requests} == {"live", "simulated"}


def test_changing_a_filter_never_skips_what_the_new_filter_matches(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    live = simulator.connections("live")
    newest_user = live[0]["userId"]
    first = sync({**config, "modes": ["live"], "user_id": newest_user})
    assert first.pairs() and {u for u, _ in first.pairs()} == {newest_user}

    unfiltered = sync({**config, "modes": ["live"]}, state=first.state)

    assert set(unfiltered.pairs()) == keys(live)


def test_adding_a_mode_reads_all_of_it(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    first = sync({**config, "modes": ["live"]})

    second = sync({**config, "modes": ["live", "simulated"]}, state=first.state)

    simulated = [r for r in second.records if r["mode"] == "simulated"]
    assert keys(simulated) == keys(simulator.connections("simulated"))


def test_a_late_connection_at_the_bookmark_instant_is_not_lost(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "modes": ["live"]}
    first = sync(settings)
    mark = bookmarks(first.state)["mode=live"]
    # Same instant, written in another precision, arriving after the first run.
    late = conn("late-user", "late-vehicle", mark.replace(".000000Z", "Z").replace("000Z", "Z"))
    simulator.add(late)

    second = sync(settings, state=first.state)

    assert ("late-user", "late-vehicle") in second.pairs()
    assert bookmarks(second.state)["mode=live"] == mark


def test_mixed_precision_timestamps_compare_as_instants() -> None:
    data = [
        conn("a", "1", "2026-03-01T10:00:00Z"),
        conn("b", "2", "2026-03-01T10:00:00.5Z"),
        conn("c", "3", "2026-03-01T09:59:59.789Z"),
        conn("d", "4", "2026-03-01T09:00:00+00:00"),
        conn("e", "5", "2026-03-01T10:00:00.250+00:00"),
    ]
    with SmartcarSimulator(data, token="t") as sim:
        settings = {"management_token": "t", "api_url": sim.api_url, "modes": ["live"]}
        first = sync(settings)
        second = sync(settings, state=first.state)

    assert sorted(r["connectedAt"] for r in first.records) == [
        "2026-03-01T09:00:00.000000Z",
        "2026-03-01T09:59:59.789000Z",
        "2026-03-01T10:00:00.000000Z",
        "2026-03-01T10:00:00.250000Z",
        "2026-03-01T10:00:00.500000Z",
    ]
    assert bookmarks(first.state) == {"mode=live": "2026-03-01T10:00:00.500000Z"}
    assert second.pairs() == []  # ("b", "2"), at the bookmark instant, was already sent


def test_normalize_timestamp_forms() -> None:
    expected = "2026-03-01T10:00:00.500000Z"
    for value in (
        "2026-03-01T10:00:00.5Z",
        "2026-03-01T10:00:00.500Z",
        "2026-03-01T10:00:00.500000Z",
        "2026-03-01T10:00:00.5+00:00",
        "2026-03-01T12:00:00.5+02:00",
    ):
        assert normalize_timestamp(value) == expected
    assert normalize_timestamp("2026-03-01") == "2026-03-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "value", ["2026-02-30T10:00:00Z", "2026-03-01T25:00:00.5Z", "2026-03-01T10:61:00.123456Z"]
)
def test_well_formed_but_impossible_timestamps_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO 8601 date-time"):
        normalize_timestamp(value)
    with pytest.raises(ValueError, match="is not an ISO 8601 date-time"):
        normalize_timestamps(["2026-03-01T10:00:00Z", value])


def test_a_mode_smartcar_adds_later_still_matches_the_schema() -> None:
    record = {"userId": "a", "vehicleId": "1", "connectedAt": "2026-03-01T10:00:00.000000Z"}

    jsonschema.validate({**record, "mode": "sandbox"}, V2ConnectionsStream.schema)


def partition(state: dict[str, t.Any], mode: str) -> dict[str, t.Any]:
    """The state entry of `mode`'s partition ({} if there is none)."""
    partitions = state.get("bookmarks", {}).get("connections", {}).get("partitions", [])
    return next((p for p in partitions if p["context"] == {"mode": mode}), {})


def states_before_last_record(run: Run) -> int:
    """How many STATE messages were written after a record and before the run's last record.

    The SDK writes STATE every `STATE_MSG_FREQUENCY` records, but only when it changed.
    """
    types = [m["type"] for m in run.messages]
    first, last = types.index("RECORD"), len(types) - 1 - types[::-1].index("RECORD")
    return types[first:last].count("STATE")


def served(simulator: SmartcarSimulator) -> int:
    return sum(r.count for r in simulator.requests if r.status == 200)


def test_a_mode_failing_mid_walk_emits_no_bookmark_for_it(
    simulator: SmartcarSimulator, config: dict[str, t.Any], state_every: t.Callable[[int], None]
) -> None:
    state_every(5)
    settings = {**config, "page_size": 10, "max_retry_seconds": 0}
    simulator.faults.fail_after_page = 3

    failed = sync(settings, expect_error=ApiError)

    assert "500" in str(failed.error)
    assert failed.pairs() == [
        pair
        for pair, _ in zip(keys_in_order(simulator.connections("live")), range(30), strict=False)
    ]
    assert served(simulator) == 30
    assert states_before_last_record(failed) >= 1  # STATE really was written mid-walk
    assert bookmarks(failed.state) == {}
    live = partition(failed.state, "live")
    assert "checkpoint" in live  # the last STATE is from the walk, not the start
    assert "replication_key_value" not in live
    simulator.faults.fail_after_page = None
    rerun = sync(settings, state=failed.state)

    everything = keys(simulator.connections("live")) | keys(simulator.connections("simulated"))
    assert sorted(rerun.pairs()) == sorted(everything - set(failed.pairs()))  # resumed, not redone


def test_a_mode_failing_mid_walk_keeps_its_old_bookmark_and_a_rerun_loses_nothing(
    simulator: SmartcarSimulator, config: dict[str, t.Any], state_every: t.Callable[[int], None]
) -> None:
    settings = {**config, "page_size": 10, "max_retry_seconds": 0}
    first = sync(settings)
    marks = bookmarks(first.state)
    added = [conn(f"u{i}", f"v{i}", f"2026-07-01T00:{i:02d}:00Z") for i in range(40)]
    simulator.add(*added)
    simulator.clear_log()
    state_every(5)
    simulator.faults.fail_after_page = 2

    failed = sync(settings, state=first.state, expect_error=ApiError)

    assert set(failed.pairs()) == keys(added[20:])  # the two newest pages
    assert states_before_last_record(failed) >= 1
    assert bookmarks(failed.state) == marks
    assert "checkpoint" in partition(failed.state, "live")
    simulator.faults.fail_after_page = None
    simulator.clear_log()
    rerun = sync(settings, state=failed.state)

    assert set(rerun.pairs()) == keys(added[:20])  # resumed where the failed run stopped
    assert bookmarks(rerun.state)["mode=live"] == "2026-07-01T00:39:00.000000Z"


def test_a_failure_in_a_later_mode_keeps_the_finished_modes_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any], state_every: t.Callable[[int], None]
) -> None:
    state_every(5)
    settings = {**config, "page_size": 10, "max_retry_seconds": 0}
    live_pages = math.ceil(len(simulator.connections("live")) / 10)
    simulator.faults.fail_after_page = live_pages + 2

    failed = sync(settings, expect_error=ApiError)

    simulated = [r for r in failed.records if r["mode"] == "simulated"]
    assert len(simulated) == 20
    assert bookmarks(failed.state) == {"mode=live": newest(simulator, "live")}
    assert "checkpoint" in partition(failed.state, "simulated")
    simulator.faults.fail_after_page = None
    simulator.clear_log()
    rerun = sync(settings, state=failed.state)

    sent = {(r["userId"], r["vehicleId"]) for r in simulated}
    assert set(rerun.pairs()) == keys(simulator.connections("simulated")) - sent
    assert len(requests_for(simulator, "live")) == 1


def test_a_bookmark_never_moves_backwards(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "modes": ["live"]}
    first = sync(settings)
    mark = bookmarks(first.state)["mode=live"]
    for c in simulator.connections("live"):
        if normalize_timestamp(c["connectedAt"]) == mark:
            simulator.remove(c["userId"], c["vehicleId"])

    second = sync(settings, state=first.state)

    assert second.records == []
    assert bookmarks(second.state) == {"mode=live": mark}


def test_a_mode_listed_twice_is_read_once(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync({**config, "modes": ["live", "live"]})

    assert len(run.records) == len(set(run.pairs())) == len(simulator.connections("live"))
    assert len(simulator.requests) == math.ceil(len(simulator.connections("live")) / 100)
