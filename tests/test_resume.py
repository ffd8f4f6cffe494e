"""Long syncs: an interrupted walk resumes where it stopped, each connection is sent once.

Through real HTTP against the simulator: interrupt a mode at page p (a permanent 5xx, a
SIGTERM), rerun with the last STATE the tap emitted, and count requests and connections.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections import walk
from tap_smartcar_connections.errors import ApiError
from tap_smartcar_connections.timestamps import normalize_timestamp

from .conftest import TOKEN, Run, bookmarks, live_state, run_cli, sync

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))
PAGE = 10


@pytest.fixture
def big() -> t.Iterator[SmartcarSimulator]:
    """A simulator with 200 live connections: 20 pages of 10."""
    data = [c for c in generate_connections(400, seed=3) if c["mode"] == "live"][:200]
    with SmartcarSimulator(data, token=TOKEN) as sim:
        yield sim


def settings(sim: SmartcarSimulator, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "management_token": TOKEN,
        "api_url": sim.api_url,
        "modes": ["live"],
        "page_size": PAGE,
        "max_retry_seconds": 0,
        **extra,
    }


def pairs_of(connections: t.Iterable[dict[str, str]]) -> set[tuple[str, str]]:
    return {(c["userId"], c["vehicleId"]) for c in connections}


def live(state: dict[str, t.Any]) -> dict[str, t.Any]:
    (partition,) = state["bookmarks"]["connections"]["partitions"]
    return t.cast("dict[str, t.Any]", partition)


def newest(sim: SmartcarSimulator) -> str:
    return max(normalize_timestamp(c["connectedAt"]) for c in sim.connections("live"))


def added(k: int, prefix: str = "new") -> list[dict[str, str]]:
    return [
        {
            "userId": f"{prefix}-u{i}",
            "vehicleId": f"{prefix}-v{i}",
            "connectedAt": f"2026-11-0{1 + i // 60}T00:{i % 60:02d}:00Z",
            "mode": "live",
        }
        for i in range(k)
    ]


@pytest.mark.parametrize(("p", "k"), [(3, 0), (7, 5), (12, 25)])
def test_a_walk_interrupted_at_page_p_resumes_there_and_loses_nothing(
    big: SmartcarSimulator, p: int, k: int
) -> None:
    # A first sync, then 200 more connections: the second walk has P pages down to the bookmark.
    first = sync(settings(big))
    more = added(200, "b")
    big.add(*more)
    pages = math.ceil((200 + 1) / PAGE)
    big.clear_log()
    big.faults.fail_after_page = p

    failed = sync(settings(big), state=first.state, expect_error=ApiError)

    assert len(failed.records) == p * PAGE
    checkpoint = live(failed.state)["checkpoint"]
    assert live(failed.state)["replication_key_value"] == live(first.state)["replication_key_value"]
    assert checkpoint["newest"] == max(normalize_timestamp(c["connectedAt"]) for c in more)
    later = added(k, "c")
    big.add(*later)
    big.faults.fail_after_page = None
    big.clear_log()

    rerun = sync(settings(big), state=failed.state)

    delivered = set(failed.pairs()) | set(rerun.pairs())
    assert pairs_of(more) | pairs_of(later) <= delivered
    assert pairs_of(later) <= set(rerun.pairs())
    assert len(rerun.records) == len(set(rerun.pairs()))
    assert not set(rerun.pairs()) & set(failed.pairs())  # resumed, nothing sent twice
    requests = len(big.requests)
    assert requests <= (pages - p) + 2 + math.ceil(k / 100)
    assert requests <= (pages - p) + 1 + math.ceil((k + 1) / PAGE)
    assert bookmarks(rerun.state) == {"mode=live": newest(big)}
    assert "checkpoint" not in live(rerun.state)


def test_without_the_checkpoint_the_rerun_starts_over(big: SmartcarSimulator) -> None:
    # The contrast that makes the resume test meaningful: same interruption, old-style state.
    first = sync(settings(big))
    big.add(*added(200, "b"))
    big.clear_log()
    big.faults.fail_after_page = 12
    failed = sync(settings(big), state=first.state, expect_error=ApiError)
    state = json.loads(json.dumps(failed.state))
    del live(state)["checkpoint"]
    big.faults.fail_after_page = None
    big.clear_log()

    rerun = sync(settings(big), state=state)

    assert len(big.requests) == math.ceil((200 + 1) / PAGE)
    assert len(rerun.records) == 200


def test_a_sigterm_mid_walk_resumes_from_the_last_page_written(
    tmp_path: Path, big: SmartcarSimulator
) -> None:
    big.faults.latency = 0.15
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(settings(big, max_retry_seconds=10)))
    tap = subprocess.Popen([CLI, "--config", str(config_file)], stdout=subprocess.PIPE)
    while sum(r.status == 200 for r in big.requests) < 6:
        time.sleep(0.02)
    tap.send_signal(signal.SIGTERM)
    out, _ = tap.communicate(timeout=30)
    assert tap.returncode == 128 + signal.SIGTERM
    stopped = Run([json.loads(line) for line in out.decode().splitlines()])
    assert "checkpoint" in live(stopped.state)
    big.faults.latency = 0.0
    big.clear_log()

    rerun = run_cli(tmp_path, settings(big), state=stopped.state)

    assert rerun.exit_code == 0, rerun.stderr
    assert set(stopped.pairs()) | set(rerun.pairs()) == pairs_of(big.connections("live"))
    covered = len(pairs_of(stopped.records[: -(len(stopped.records) % PAGE) or None]))
    assert len(big.requests) <= math.ceil((200 - covered) / PAGE) + 2
    assert bookmarks(rerun.state) == {"mode=live": newest(big)}


def interrupted(big: SmartcarSimulator) -> Run:
    """A first walk of the 200 connections that fails at page 5."""
    big.faults.fail_after_page = 5
    failed = sync(settings(big), expect_error=ApiError)
    big.faults.fail_after_page = None
    big.clear_log()
    return failed


def test_a_cursor_the_api_no_longer_accepts_restarts_the_mode(
    big: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    failed = interrupted(big)
    big.rotate_cursor_secret()

    with caplog.at_level(logging.WARNING):
        rerun = sync(settings(big), state=failed.state)

    warned = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(warned) == 1
    assert "refused its page token" in warned[0]
    assert "from the top" in warned[0]
    assert set(rerun.pairs()) == pairs_of(big.connections("live"))
    statuses = [r.status for r in big.requests]
    assert statuses.count(400) == 1
    assert bookmarks(rerun.state) == {"mode=live": newest(big)}


def test_a_checkpoint_whose_next_page_is_too_new_is_not_trusted(
    big: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    failed = interrupted(big)
    state = json.loads(json.dumps(failed.state))
    live(state)["checkpoint"]["last"] = "2000-01-01T00:00:00.000000Z"

    with caplog.at_level(logging.WARNING):
        rerun = sync(settings(big), state=state)

    assert any("starts at" in r.getMessage() for r in caplog.records)
    assert set(rerun.pairs()) == pairs_of(big.connections("live"))


@pytest.mark.parametrize(
    "change",
    [{"page_size": 20}, {"user_id": "someone"}, {"modes": ["simulated"]}],
    ids=["page_size", "filter", "mode"],
)
def test_a_checkpoint_made_under_other_settings_is_never_used(
    big: SmartcarSimulator, change: dict[str, t.Any]
) -> None:
    failed = interrupted(big)
    cursor = live(failed.state)["checkpoint"]["cursor"]

    sync(settings(big, **change), state=failed.state)

    assert all(r.params.get("cursor") != cursor for r in big.requests)
    assert big.requests[0].params.get("cursor") is None


def test_two_runs_with_no_change_emit_nothing_the_second_time(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    first = sync(config)
    simulator.clear_log()

    second = sync(config, state=first.state)

    assert second.records == []
    assert len(simulator.requests) == 2
    assert bookmarks(second.state) == bookmarks(first.state)


def test_a_late_connection_at_the_bookmark_instant_is_emitted_once(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    settings_ = {**config, "modes": ["live"]}
    first = sync(settings_)
    mark = bookmarks(first.state)["mode=live"]
    late = {"userId": "late", "vehicleId": "tie", "connectedAt": mark, "mode": "live"}
    simulator.add(late)

    second = sync(settings_, state=first.state)
    third = sync(settings_, state=second.state)

    assert second.pairs() == [("late", "tie")]
    assert third.records == []
    assert len(live(third.state)["keys_at_bookmark"]) >= 2


def test_a_state_from_the_previous_release_still_loads(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    first = sync({**config, "modes": ["live"]})
    old = live_state(bookmarks(first.state)["mode=live"])

    run = sync({**config, "modes": ["live"]}, state=old)

    at_mark = [
        c
        for c in simulator.connections("live")
        if normalize_timestamp(c["connectedAt"]) == bookmarks(first.state)["mode=live"]
    ]
    assert run.pairs() == [(c["userId"], c["vehicleId"]) for c in at_mark]  # ties, as before
    assert bookmarks(run.state) == bookmarks(first.state)


def test_progress_is_logged_per_mode_with_pace_and_estimate(
    big: SmartcarSimulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = sync(settings(big))
    big.add(*added(100, "b"))
    monkeypatch.setattr(walk, "PROGRESS_SECONDS", 0.0)

    with caplog.at_level(logging.INFO):
        sync(settings(big), state=first.state)

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Connections {")]
    assert len(lines) == 10 + 1  # one per page here, and one when the mode finishes
    assert all('{"mode": "live"}' in line and "requests/min" in line for line in lines)
    assert "stops at " + bookmarks(first.state)["mode=live"] in lines[0]
    assert "min left" in lines[0]
    assert lines[-1].startswith('Connections {"mode": "live"} finished: 11 pages, 100 connections')


def test_a_healthy_run_has_no_unsorted_stream_warning(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = run_cli(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    assert "assumed to be unsorted" not in run.stderr
    assert "WARNING" not in run.stderr


def test_a_resume_after_a_shrunken_list_still_reads_below_the_checkpoint(
    tmp_path: Path,
) -> None:
    # The head's crossing page is also the last one (a connection was removed in between):
    # what the interrupted walk had not reached is still read from the checkpoint's cursor.
    data = [
        {
            "userId": f"u{i}",
            "vehicleId": f"v{i}",
            "connectedAt": f"2024-01-{i:02d}T00:00:00Z",
            "mode": "live",
        }
        for i in range(10, 6, -1)
    ]
    with SmartcarSimulator(data, token=TOKEN) as sim:
        config = {**settings(sim), "page_size": 3}
        sim.faults.fail_after_page = 1
        failed = run_cli(tmp_path, config)
        assert failed.exit_code == 1
        assert failed.pairs() == [("u10", "v10"), ("u9", "v9"), ("u8", "v8")]
        sim.faults.fail_after_page = None
        assert sim.remove("u9", "v9")

        rerun = run_cli(tmp_path, config, state=failed.state)

    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.pairs() == [("u7", "v7")]


def test_a_stale_checkpoint_with_a_bookmark_reads_from_the_top_only_down_to_it(
    big: SmartcarSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    first = sync(settings(big))
    more = added(30, "b")
    big.add(*more)
    big.clear_log()
    big.faults.fail_after_page = 1
    failed = sync(settings(big), state=first.state, expect_error=ApiError)
    big.faults.fail_after_page = None
    big.rotate_cursor_secret()
    big.clear_log()

    with caplog.at_level(logging.WARNING):
        rerun = sync(settings(big), state=failed.state)

    assert set(failed.pairs()) | set(rerun.pairs()) == pairs_of(more)
    assert not any("not newest first" in r.getMessage() for r in caplog.records)
    # the head page, the refused cursor, then the top down to the old bookmark: 4 pages
    assert len(big.requests) == 1 + 1 + math.ceil((30 + 1) / PAGE)
    assert bookmarks(rerun.state) == {"mode=live": newest(big)}
