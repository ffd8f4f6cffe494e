"""FULL_TABLE refresh: every page read, one version, ACTIVATE_VERSION only after a full read."""

from __future__ import annotations

import copy
import json
import math
import typing as t

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ApiError

from .conftest import ROOT, Run, bookmarks, sync


def full_table_catalog() -> dict[str, t.Any]:
    """The committed catalog with FULL_TABLE chosen the way Meltano writes it."""
    catalog: dict[str, t.Any] = json.loads((ROOT / "catalog.json").read_text())
    stream = catalog["streams"][0]
    stream["replication_method"] = "FULL_TABLE"
    for entry in stream["metadata"]:
        if entry["breadcrumb"] == []:
            entry["metadata"]["selected"] = True
    return catalog


def activations(run: Run) -> list[dict[str, t.Any]]:
    return [m for m in run.messages if m["type"] == "ACTIVATE_VERSION"]


def test_full_refresh_activates_one_version_after_the_last_record(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "emit_activate_version_messages": True}

    run = sync(settings, catalog=full_table_catalog())

    assert run.error is None
    types = [m["type"] for m in run.messages]
    (activate,) = activations(run)
    last_record = max(i for i, kind in enumerate(types) if kind == "RECORD")
    assert types.index("ACTIVATE_VERSION") > last_record
    versions = {m["version"] for m in run.messages if m["type"] == "RECORD"}
    assert versions == {activate["version"]}
    assert activate["stream"] == "connections"
    assert len(run.records) == 250


def test_full_refresh_reads_every_page_whatever_the_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    incremental = sync(config)
    simulator.clear_log()

    full = sync(config, state=incremental.state, catalog=full_table_catalog())

    assert len(full.records) == 250
    for mode in ("live", "simulated"):
        pages = math.ceil(len(simulator.connections(mode)) / 100)
        assert sum(r.params["mode"] == mode for r in simulator.requests) == pages
    assert activations(full) == []  # emit_activate_version_messages is off by default
    assert bookmarks(full.state) == bookmarks(incremental.state)


def test_a_failed_full_refresh_sends_no_activate_version(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {
        **config,
        "emit_activate_version_messages": True,
        "page_size": 20,
        "max_retry_seconds": 0,
    }
    simulator.faults.fail_after_page = 9  # live needs 7 pages: fails in the last mode

    run = sync(settings, catalog=full_table_catalog(), expect_error=ApiError)

    assert "500" in str(run.error)
    assert len(run.records) == len(simulator.connections("live")) + 2 * 20
    assert activations(run) == []


def test_a_later_refresh_has_a_higher_version_and_omits_removed_connections(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "emit_activate_version_messages": True}
    first = sync(settings, catalog=full_table_catalog())
    removed = [(c["userId"], c["vehicleId"]) for c in simulator.connections("live")[10:13]]
    for user, vehicle in removed:
        simulator.remove(user, vehicle)

    second = sync(settings, catalog=full_table_catalog())

    assert activations(second)[0]["version"] > activations(first)[0]["version"]
    assert len(second.records) == 247
    assert not set(removed) & set(second.pairs())


def test_switching_methods_keeps_the_incremental_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings = {**config, "emit_activate_version_messages": True}
    first = sync(settings)
    marks = bookmarks(first.state)
    simulator.add(
        {
            "userId": "new-user",
            "vehicleId": "new-vehicle",
            "connectedAt": "2026-09-01T00:00:00Z",
            "mode": "live",
        }
    )

    full = sync(settings, state=copy.deepcopy(first.state), catalog=full_table_catalog())
    assert bookmarks(full.state) == marks
    simulator.clear_log()
    incremental = sync(settings, state=full.state)

    assert ("new-user", "new-vehicle") in incremental.pairs()
    assert activations(incremental) == []
    assert all("version" not in m for m in incremental.messages if m["type"] == "RECORD")
    assert len(simulator.requests) == 2
    assert bookmarks(incremental.state)["mode=live"] == "2026-09-01T00:00:00.000000Z"
