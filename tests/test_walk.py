"""The walk's invariants where servers misbehave: every walk ends, complete or saying why.

Each test stands for a hole found by trying hostile servers against the walk (issue 18): a
checkpoint that does not fit the list, a list that repeats itself forever, what the tap can
and cannot see of the order, and the checks that a mutation of the walk once slipped past.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.errors import ApiError
from tap_smartcar_connections.paging import MAX_EMPTY_PAGES
from tap_smartcar_connections.timestamps import normalize_timestamp
from tap_smartcar_connections.walk import key_digest

from .conftest import TOKEN, bookmarks, run_cli, sync
from .test_hostile import Hostile, Reply, conn, hostile, page  # noqa: F401  (the fixture)
from .test_v3_hostile import (  # noqa: F401  (the `scripted` fixture)
    CONNECTIONS,
    WEBHOOKS,
    Scripted,
    Seen,
    connection,
    connections_page,
    empty_lists,
    good_token,
    scripted,
    v3_list,
    v3_settings,
)

SIZE = 100


@pytest.fixture
def sim250() -> t.Iterator[SmartcarSimulator]:
    """250 live connections, served by the simulator's v3 face."""
    data = generate_connections(250, seed=7, modes=("live",))
    with SmartcarSimulator(data, token=TOKEN) as simulator:
        yield simulator


def keys(records: t.Iterable[dict[str, t.Any]]) -> set[tuple[str, str]]:
    return {(r["userId"], r["vehicleId"]) for r in records}


def stamps(sim: SmartcarSimulator) -> list[str]:
    return [normalize_timestamp(c["connectedAt"]) for c in sim.connections_v3("live")]


# A checkpoint must fit the list


@pytest.mark.parametrize(
    ("cursor", "why"),
    [
        ("4", "past the end of the list"),
        ("99", "past the end of the list"),
        (str(10**12), "no usable page number"),
        ("9" * 5000, "no usable page number"),
    ],
    ids=["page 4", "page 99", "page 10^12", "5000 digits"],
)
def test_a_checkpoint_past_the_end_of_the_list_is_stale_and_the_mode_read_from_the_top(
    sim250: SmartcarSimulator, caplog: pytest.LogCaptureFixture, cursor: str, why: str
) -> None:
    """Hand-edited or corrupt: trusting it would call the walk complete after page 1, move
    the bookmark to the newest connection and never deliver the 150 older ones."""
    served = sim250.connections_v3("live")
    at = stamps(sim250)
    checkpoint = {
        "cursor": cursor,
        "newest": at[0],
        "newest_keys": [key_digest(served[0])],
        "last": at[SIZE - 1],
        "floor": "",
        "page_size": SIZE,
        "unordered": False,
        "total": len(served),
    }
    partition = {"context": {"mode": "live"}, "api_version": "v3", "checkpoint": checkpoint}
    state = {"bookmarks": {"connections": {"partitions": [partition]}}}

    run = sync(v3_settings(sim250, modes=["live"], max_retry_seconds=0), state)

    assert keys(served[SIZE:]) <= keys(r for r in run.records if "connectionId" in r)
    warned = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warned) == 1
    assert why in warned[0]
    assert bookmarks(run.state) == {"mode=live": at[0]}


def test_a_bookmark_older_than_start_date_stops_at_start_date(sim250: SmartcarSimulator) -> None:
    """The later of the two bounds the walk, as the SDK's starting value does."""
    at = stamps(sim250)
    start_date = at[100]
    mark = {"context": {"mode": "live"}, "api_version": "v3", "replication_key": "connectedAt"}
    mark["replication_key_value"] = at[200]
    state = {"bookmarks": {"connections": {"partitions": [mark]}}}
    settings = v3_settings(sim250, modes=["live"], max_retry_seconds=0, start_date=start_date)

    run = sync(settings, state)

    sent = [r["connectedAt"] for r in run.records if "connectionId" in r]
    assert sent
    assert min(sent) >= start_date


def test_a_resume_after_many_removals_is_not_taken_for_an_endless_list(
    sim250: SmartcarSimulator,
) -> None:
    """Interrupted at page 150 of 250 (one a page); the 120 oldest disconnected since: the
    resume starts 120 pages earlier and skips what it had read, page after page, which is
    progress, not a list repeating itself."""
    config = v3_settings(sim250, modes=["live"], max_retry_seconds=0, page_size=1)
    sim250.faults.fail_after_page = 150
    failed = sync(config, expect_error=ApiError)
    served = sim250.connections_v3("live")
    for gone in served[-120:]:
        sim250.remove(gone["userId"], gone["vehicleId"])
    sim250.faults.fail_after_page = None

    rerun = sync(config, failed.state)

    assert rerun.error is None
    still = {(c["userId"], c["vehicleId"]) for c in sim250.connections_v3("live")}
    read = [r for r in [*failed.records, *rerun.records] if "connectionId" in r]
    assert still <= keys(read)
    assert bookmarks(rerun.state) == {"mode=live": stamps(sim250)[0]}


# Every walk ends


def repeating(path: str, total: int) -> t.Callable[[int, Seen], Reply]:
    """The same full page for every page number of `path`, with consistent meta and links."""
    items = [connection(n % 28 + 1, id=f"conn-{n}") for n in range(SIZE)]

    def script(index: int, request: Seen) -> Reply:
        if request.path == path:
            return v3_list(items, request, total=total, last=False)
        return empty_lists(index, request)

    return script


@pytest.mark.parametrize("path", [CONNECTIONS, WEBHOOKS], ids=["connections", "webhooks"])
def test_a_list_serving_the_same_items_on_every_page_ends_the_run(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
    path: str,
) -> None:
    """totalCount 10^9, every page the same 100 items: without the guard, days of requests."""
    server = scripted(repeating(path, 10**9))

    run = run_cli(tmp_path, server.settings(page_size=SIZE))

    assert run.exit_code == 1
    (line,) = [x for x in run.stderr.splitlines() if "error:" in x]
    assert "paging failed" in line
    assert f"{MAX_EMPTY_PAGES} pages in a row with nothing new" in line
    assert "Traceback" not in run.stderr
    assert len([s for s in server.data if s.path == path]) == MAX_EMPTY_PAGES + 1
    sent = [
        m["record"]["id" if path == WEBHOOKS else "connectionId"]
        for m in run.messages
        if m["type"] == "RECORD"
    ]
    # The first page, once: its 100 webhooks, or its connections' 28 keys (the newest of each).
    assert len(sent) == len(set(sent)) == (SIZE if path == WEBHOOKS else 28)


def test_two_connections_under_one_key_send_the_newest_and_count_as_two(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
) -> None:
    """The same user connected the same vehicle twice: a target upserts on (userId, vehicleId),
    so only the newer connection is sent (the older, sent after it, would replace it), while
    meta.totalCount still counts both, so a full read is complete and trusted."""
    newer = connection(2, id="conn-newer")
    older = connection(1, id="conn-older")
    older["relationships"] = newer["relationships"]
    server = scripted(connections_page(newer, older))

    run = run_cli(
        tmp_path,
        server.settings(emit_activate_version_messages=True),
        "--catalog",
        str(full_table_file(tmp_path, server.settings())),
    )

    assert run.exit_code == 0, run.stderr
    sent = [
        m["record"]["connectionId"]
        for m in run.messages
        if m["type"] == "RECORD" and m["stream"] == "connections"
    ]
    assert sent == ["conn-newer"]
    assert "reading it again" not in run.stderr and "reading this mode again" not in run.stderr
    assert any(
        m["type"] == "ACTIVATE_VERSION" and m["stream"] == "connections" for m in run.messages
    )


def full_table_file(tmp_path: Path, settings: dict[str, t.Any]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(full_table(settings)))
    return path


# What the tap can and cannot see of the order


def test_an_inversion_past_the_page_that_reaches_the_bookmark_is_recovered_by_a_full_refresh(
    tmp_path: Path,
    hostile: t.Callable[..., Hostile],  # noqa: F811
) -> None:
    """Pages in ascending order, each newest first: the tap cannot see the inversion.

    The incremental walk checks the order of everything it reads, and page 1 is in order
    down to the bookmark: it stops there, and connections 11 and 12, on page 2, are not read
    by it (nor by any later incremental run). The weekly full refresh reads every page.
    """
    pages = [
        page(
            [
                conn(10, "2026-01-10T00:00:00Z"),
                conn(9, "2026-01-09T00:00:00Z"),
                conn(5, "2026-01-05T00:00:00Z"),
            ],
            "c2",
        ),
        page([conn(12, "2026-01-12T00:00:00Z"), conn(11, "2026-01-11T00:00:00Z")]),
    ]
    server = hostile(lambda i, path: pages[1 if "cursor=c2" in path else 0])
    settings = {"management_token": TOKEN, "api_url": server.url, "modes": ["live"]}
    mark = {"context": {"mode": "live"}, "replication_key": "connectedAt"}
    mark["replication_key_value"] = "2026-01-06T00:00:00.000000Z"
    state = {"bookmarks": {"connections": {"partitions": [mark]}}}

    incremental = run_cli(tmp_path, settings, state=state)
    requests = len(server.requests)
    full = sync(settings, catalog=full_table(settings))

    assert incremental.exit_code == 0, incremental.stderr
    assert [r["vehicleId"] for r in incremental.records] == ["vehicle-10", "vehicle-9"]
    assert requests == 1
    assert "not newest first" not in incremental.stderr
    assert {"vehicle-12", "vehicle-11"} <= {r["vehicleId"] for r in full.records}


def full_table(settings: dict[str, t.Any]) -> dict[str, t.Any]:
    from tap_smartcar_connections.tap import TapSmartcarConnections  # noqa: PLC0415

    catalog: dict[str, t.Any] = TapSmartcarConnections(config=settings).catalog_dict
    for stream in catalog["streams"]:
        stream["replication_method"] = "FULL_TABLE"
    return catalog


@pytest.mark.parametrize(
    ("order_by", "trusted"),
    [("createdAt", True), (..., True), ("updatedAt", False)],
    ids=["by creation", "unstated (the documented default)", "by update time"],
)
def test_only_newest_first_by_creation_is_trusted_for_the_early_stop(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
    order_by: t.Any,
    trusted: bool,
) -> None:
    """`orderDirection: desc` by creation date (said, or left out as Smartcar's default) stops
    at the bookmark; by update time it says nothing about creation order: read to the end."""

    def script(index: int, request: Seen) -> Reply:
        if request.path != CONNECTIONS:
            return empty_lists(index, request)
        number = int(request.query["page[number]"][0])
        items = [connection(9), connection(5)] if number == 1 else [connection(8), connection(7)]
        return v3_list(items, request, total=4, last=number == 2, meta={"orderBy": order_by})

    server = scripted(script)
    mark = {"context": {"mode": "live"}, "api_version": "v3", "replication_key": "connectedAt"}
    mark["replication_key_value"] = "2026-01-06T00:00:00.000000Z"
    state = {"bookmarks": {"connections": {"partitions": [mark]}}}

    run = run_cli(tmp_path, server.settings(page_size=2), state=state)

    assert run.exit_code == 0, run.stderr
    pages = len([s for s in server.data if s.path == CONNECTIONS])
    emitted = [r["vehicleId"] for r in run.records if "connectionId" in r]
    warned = "are not newest first (the API does not say so" in run.stderr
    if trusted:
        assert (pages, emitted, warned) == (1, ["vehicle-9"], False)
    else:
        assert (pages, sorted(emitted), warned) == (
            2,
            ["vehicle-7", "vehicle-8", "vehicle-9"],
            True,
        )


def test_a_token_refused_on_a_resumed_page_is_not_taken_for_a_stale_checkpoint(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
) -> None:
    """The resumed page answers 401, and the new token is refused with a 400: that names the
    credentials, and the checkpoint is not blamed (nor the mode read again from the top)."""

    def token(index: int, request: Seen) -> Reply:
        if index == 0:
            return good_token(index, request)
        body = {"error": "invalid_request", "error_description": "bad client"}
        return Reply(status=400, body=json.dumps(body).encode())

    def data(index: int, request: Seen) -> Reply:
        if request.path != CONNECTIONS:
            return empty_lists(index, request)
        if request.query["page[number]"] == ["1"]:
            return v3_list([connection(9), connection(8)], request, total=4, last=False)
        error = {"status": "401", "type": "AUTHENTICATION", "detail": "expired"}
        return Reply(status=401, body=json.dumps({"errors": [error]}).encode())

    server = scripted(data, token)
    checkpoint = {
        "cursor": "2",
        "newest": "2026-01-09T00:00:00.000000Z",
        "newest_keys": [key_digest({"userId": "user-9", "vehicleId": "vehicle-9"})],
        "last": "2026-01-08T00:00:00.000000Z",
        "floor": "",
        "page_size": 2,
        "unordered": False,
        "total": 4,
    }
    partition = {"context": {"mode": "live"}, "api_version": "v3", "checkpoint": checkpoint}
    state = {"bookmarks": {"connections": {"partitions": [partition]}}}

    run = run_cli(tmp_path, server.settings(page_size=2), state=state)

    assert run.exit_code == 1
    assert "token endpoint refused the client credentials" in run.stderr
    assert "cannot be used" not in run.stderr
    assert len(server.tokens) == 2


def test_a_next_link_that_is_no_url_is_bad_data(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
) -> None:
    bad = {"next": "http://[bad/vehicle/v3/connections?page[number]=2"}
    server = scripted(connections_page(connection(2), connection(1), total=5, links=bad))

    run = run_cli(tmp_path, server.settings(page_size=2))

    assert run.exit_code == 1
    assert "Traceback" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if "error:" in x]
    assert "a links.next that is not a URL" in line
    assert len([s for s in server.data if s.path == CONNECTIONS]) == 3


# Shifting pages


def test_a_list_that_shrank_but_moved_down_is_trusted_without_a_reread(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
) -> None:
    """totalCount fell between pages, but page 2 starts with an item page 1 had: nothing moved
    up past the walk (two removed below, one arrived on top), so no reread is due."""
    before = [connection(n) for n in range(20, 0, -1)]
    after = [connection(21), *[c for c in before if c["id"] not in {"conn-3", "conn-1"}]]

    def script(index: int, request: Seen) -> Reply:
        if request.path != CONNECTIONS:
            return empty_lists(index, request)
        number = int(request.query["page[number]"][0])
        served = before if index == 0 else after
        items = served[(number - 1) * 10 : number * 10]
        return v3_list(items, request, total=len(served), last=number * 10 >= len(served))

    server = scripted(script)
    first_run: dict[str, t.Any] = {"bookmarks": {"connections": {"partitions": []}}}

    run = run_cli(tmp_path, server.settings(page_size=10), state=first_run)

    assert run.exit_code == 0, run.stderr
    assert len([s for s in server.data if s.path == CONNECTIONS]) == 2
    assert "reading this mode again" not in run.stderr
    sent = [r["connectionId"] for r in run.records if "connectionId" in r]
    assert len(sent) == len(set(sent))
    assert set(sent) == {c["id"] for c in before if c["id"] not in {"conn-3", "conn-1"}}
    assert bookmarks(run.state) == {"mode=live": "2026-01-20T00:00:00.000000Z"}


# A dry run never completes a read


def test_a_connection_test_sends_no_activate_version(
    tmp_path: Path,
    scripted: t.Callable[..., Scripted],  # noqa: F811
) -> None:
    """`--test` reads one record per stream, or an empty list whole: neither is a full refresh."""
    server = scripted(empty_lists)

    run = run_cli(tmp_path, server.settings(emit_activate_version_messages=True), "--test")

    assert run.exit_code == 0, run.stderr
    assert {m["stream"] for m in run.messages if m["type"] == "SCHEMA"} >= {"webhooks"}
    assert not [m for m in run.messages if m["type"] == "ACTIVATE_VERSION"]
    assert json.dumps(run.messages).count("ACTIVATE_VERSION") == 0
