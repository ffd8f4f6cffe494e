"""Regressions found by an outside review of API v3: each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

from smartcar_simulator import SmartcarSimulator, generate_connections, generate_webhooks
from tap_smartcar_connections.errors import ApiError

from .conftest import TOKEN, run_cli
from .test_v3 import PAGE, SECRET, expected, keys, on_page, partition, run, v3
from .test_v3_hostile import (
    scripted,  # noqa: F401 -- the fixture
    v3_settings,
)


def live_data(n: int = 200) -> list[dict[str, str]]:
    return [c for c in generate_connections(2 * n, seed=3) if c["mode"] == "live"][:n]


def test_a_shift_before_an_interruption_is_not_forgotten_by_the_resume() -> None:
    """Run 1 reads page 1, a connection on page 1 is removed, pages 2-3 are read, then it fails.

    The removal pulled the connection that was 11th onto page 1, where run 1 never looks; the
    checkpoint must carry that shrink, or the resume sees no change and the 11th is lost.
    """
    with SmartcarSimulator(live_data(), token=TOKEN, client_secret=SECRET) as big:
        config = v3(big, modes=["live"])
        served = big.connections_v3("live")
        eleventh = (served[PAGE]["userId"], served[PAGE]["vehicleId"])
        on_page(big, 2, lambda: big.remove(served[0]["userId"], served[0]["vehicleId"]))
        big.faults.fail_after_page = 3
        failed = run(config, expect_error=ApiError)
        assert "checkpoint" in partition(failed.state, "live")
        big.faults.fail_after_page = None

        rerun = run(config, failed.state)

        got = keys(failed.records) | keys(rerun.records)
        assert eleventh in got, "the 11th connection was never sent, yet the bookmark moved"
        assert got == keys(expected(big, "live")) | {(served[0]["userId"], served[0]["vehicleId"])}


def test_a_good_v3_connection_test_logs_no_error_and_no_skipped_warning(tmp_path: Path) -> None:
    """`--test` under v3 against a healthy API: like v2, no ERROR and no 'skipped' WARNING."""
    data = generate_connections(60, seed=5)
    with SmartcarSimulator(data, webhooks=generate_webhooks(7, seed=3)) as sim:
        result = run_cli(tmp_path, v3_settings(sim), "--test")

    assert result.exit_code == 0, result.stderr
    assert "connection test passed" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "METRIC" not in line]
    assert [line for line in lines if "| ERROR" in line] == []
    assert [line for line in lines if "may have been skipped" in line] == []


def test_a_first_walk_on_a_list_that_only_grows_still_sets_a_bookmark() -> None:
    """New connections arrive during every read (a busy app, a long rate-limited first sync).

    An addition only pushes unread items down (one is read twice, deduplicated): nothing can
    be missed, and every read doubted would leave no bookmark: the first walk would never end.
    """
    with SmartcarSimulator(live_data(), token=TOKEN, client_secret=SECRET) as big:
        config = v3(big, modes=["live"])
        counter = iter(range(1000))

        def arrive() -> None:
            i = next(counter)
            big.add(
                {
                    "userId": f"busy-u{i}",
                    "vehicleId": f"busy-v{i}",
                    "connectedAt": f"2026-01-15T00:{i:02d}:00Z",
                    "mode": "live",
                }
            )

        on_page(big, 3, arrive, times=None)

        first = run(config)

        assert {(r["userId"], r["vehicleId"]) for r in first.records} >= keys(live_data())
        assert "replication_key_value" in partition(first.state, "live"), partition(
            first.state, "live"
        )
