"""Unattended runs: retries, rate limits, API errors, signals, paging loops, bad state, secrets."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from email.utils import formatdate
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ApiError

from .conftest import LAUNCHER, TOKEN, Run, bookmarks, comparable, run_cli, sync

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))


def everything(simulator: SmartcarSimulator, *modes: str) -> set[tuple[str, str]]:
    return {(c["userId"], c["vehicleId"]) for m in modes for c in simulator.connections(m)}


def warnings(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "retrying in" in line]


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "error:" in line]


def test_429_waits_exactly_retry_after_and_warns_once_per_wait(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.rate_limit_every = 3
    simulator.faults.retry_after = "7"  # clearly above the 1 s floor and the first backoffs

    run = run_cli(tmp_path, {**config, "modes": ["live"], "page_size": 25})

    assert run.exit_code == 0, run.stderr
    assert set(run.pairs()) == everything(simulator, "live")
    limited = [r for r in simulator.requests if r.status == 429]
    assert limited
    assert run.sleeps == [7.0] * len(limited)
    lines = warnings(run)
    assert len(lines) == len(limited)
    assert all("429 RATE_LIMIT" in line and "requestId" in line for line in lines)
    assert all("retrying in 7.0 s" in line for line in lines)
    assert all("the rate limit's bucket makes the tap wait" in line for line in lines)
    assert '"statusCode"' not in run.stderr


def test_a_retry_after_is_waited_in_real_time(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    # End to end on the real clock: the wait the policy asks for really passes.
    simulator.faults.rate_limit_every = 2
    simulator.faults.retry_after = "2"

    run = run_cli(tmp_path, {**config, "modes": ["live"]}, real_time=True)

    assert run.exit_code == 0, run.stderr
    log = simulator.requests
    assert log[1].status == 429
    assert 2.0 <= log[2].time - log[1].time < 3.5


def test_retry_after_as_an_http_date_is_honoured(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.rate_limit_every = 2
    simulator.faults.retry_after = formatdate(time.time() + 30, usegmt=True)

    run = sync({**config, "modes": ["live"], "page_size": 100})

    assert run.error is None
    assert simulator.requests[1].status == 429
    (waited,) = run.sleeps
    assert 28.0 <= waited <= 30.0  # the date has whole seconds


def test_server_errors_truncated_bodies_and_resets_are_retried(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.error_every = 4
    simulator.faults.truncate_every = 5

    run = run_cli(tmp_path, {**config, "page_size": 25})

    assert run.exit_code == 0, run.stderr
    assert set(run.pairs()) == everything(simulator, "live", "simulated")
    failed = [r for r in simulator.requests if r.status != 200 or r.fault == "truncated"]
    assert len(warnings(run)) == len(failed) > 0
    assert any("500" in line for line in warnings(run))
    assert any("not the expected connections JSON" in line for line in warnings(run))


def test_chaos_still_delivers_every_connection_with_the_right_bookmarks(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.chaos_rate = 0.2
    simulator.faults.chaos_seed = 11
    simulator.faults.retry_after = "0"

    run = sync({**config, "page_size": 20, "max_retry_seconds": 120})

    assert run.error is None
    assert set(run.pairs()) == everything(simulator, "live", "simulated")
    assert sum(r.fault is not None for r in simulator.requests) >= 3
    clean = sync(config)
    assert bookmarks(run.state) == bookmarks(clean.state)


def test_a_request_failing_past_max_retry_seconds_fails_the_run_clearly(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.fail_after_page = 2
    simulator.faults.fail_status = 503

    run = run_cli(tmp_path, {**config, "page_size": 10, "max_retry_seconds": 2}, state_every=5)

    assert run.exit_code == 1
    (line,) = error_lines(run)
    assert "still failing" in line and "503" in line and "max_retry_seconds=2" in line
    assert "Traceback" not in run.stderr
    assert (
        run.pairs() == [(c["userId"], c["vehicleId"]) for c in simulator.connections("live")][:20]
    )
    assert [m["type"] for m in run.messages].index("STATE") < len(run.messages) - 1
    assert bookmarks(run.state) == {}  # the last STATE emitted, written mid-walk


def test_an_in_process_failure_emits_what_the_command_line_emits(
    tmp_path: Path,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    state_every: t.Callable[[int], None],
) -> None:
    # The failure-path tests read `sync`'s captured stdout as what a run really wrote.
    settings = {**config, "page_size": 10, "max_retry_seconds": 0}
    first = sync(settings)
    simulator.add(
        *[
            {
                "userId": f"u{i}",
                "vehicleId": f"v{i}",
                "connectedAt": f"2026-08-01T00:{i:02d}:00Z",
                "mode": "live",
            }
            for i in range(35)
        ]
    )
    simulator.faults.fail_after_page = 3
    simulator.clear_log()
    state_every(5)

    in_process = sync(settings, state=first.state, expect_error=ApiError)
    simulator.clear_log()
    cli = run_cli(tmp_path, settings, state=first.state, state_every=5)

    assert cli.exit_code == 1
    (line,) = error_lines(cli)
    assert "still failing after 1 attempts" in line
    assert "still failing after 1 attempts" in str(in_process.error)
    assert len(cli.records) == 30
    assert sum(m["type"] == "STATE" for m in cli.messages) >= 2
    assert comparable(cli.messages) == comparable(in_process.messages)
    assert bookmarks(cli.state) == bookmarks(first.state)


def test_a_retry_after_beyond_the_budget_fails_at_once(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.rate_limit_every = 1
    simulator.faults.retry_after = "120"
    started = time.monotonic()

    run = sync({**config, "max_retry_seconds": 10}, expect_error=ApiError)

    assert time.monotonic() - started < 5
    assert "429 RATE_LIMIT" in str(run.error)
    assert run.records == []
    assert run.states == []


def test_timeouts_are_retried(simulator: SmartcarSimulator, config: dict[str, t.Any]) -> None:
    simulator.faults.latency = 1.5

    run = sync({**config, "request_timeout": 1, "max_retry_seconds": 3}, expect_error=ApiError)

    assert "after 2 attempts" in str(run.error)
    assert run.records == []
    assert run.states == []
    assert "ReadTimeout" in str(run.error)
    assert len(run.sleeps) == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, ["401 AUTHENTICATION", "requestId", "see https://", "check management_token"]),
        (430, ["430 BILLING", "requestId", "billing"]),
        (403, ["403 PERMISSION", "permissions"]),
        (400, ["400 VALIDATION", "page_size"]),
    ],
)
def test_client_errors_fail_fast_with_one_human_line(
    tmp_path: Path,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    status: int,
    expected: list[str],
) -> None:
    simulator.faults.force_status = status
    given = json.loads(live_bookmark("2025-01-01T00:00:00.000000Z"))

    run = run_cli(tmp_path, config, state=given)

    assert run.exit_code == 1
    assert run.records == []
    assert run.state == given
    (line,) = error_lines(run)
    assert all(part in line for part in expected), line
    assert "Traceback" not in run.stderr
    assert "ERROR" not in run.stderr  # the SDK's generic "unhandled error" line is not shown
    assert len(simulator.requests) == 1


def test_a_wrong_token_is_a_401_without_retries(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = run_cli(tmp_path, {**config, "management_token": "wrong"})

    assert run.exit_code == 1
    assert "401 AUTHENTICATION" in error_lines(run)[0]
    assert [r.status for r in simulator.requests] == [401]


def test_an_html_error_body_is_summarised_without_the_body(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.force_status = 403
    simulator.faults.html_errors = True

    run = run_cli(tmp_path, config)

    assert run.exit_code == 1
    (line,) = error_lines(run)
    assert "403 Forbidden (the body was not Smartcar's error JSON)" in line
    assert "<html" not in run.stderr.lower()


@pytest.mark.parametrize("fault", ["repeat_cursor", "cursor_cycle"])
def test_a_paging_loop_ends_the_run(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any], fault: str
) -> None:
    if fault == "repeat_cursor":
        simulator.faults.repeat_cursor = True
    else:
        simulator.faults.cursor_cycle = 3

    run = run_cli(tmp_path, {**config, "page_size": 10}, timeout=60, state_every=3)

    assert run.exit_code == 1
    (line,) = error_lines(run)
    assert "paging loop" in line
    assert len(simulator.requests) <= 6
    assert len(run.records) == sum(r.count for r in simulator.requests)
    assert run.states  # written mid-walk: the last one is what a rerun resumes from
    assert bookmarks(run.state) == {}


def test_max_requests_per_minute_paces_requests(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    run = sync({**config, "modes": ["live"], "page_size": 40, "max_requests_per_minute": 240})

    assert run.error is None
    requests = len(simulator.requests)
    assert requests >= 3
    # 0.25 s apart: each wait is what is left of the gap after the last request's own time.
    assert len(run.sleeps) == requests - 1
    assert all(0.2 < waited <= 0.25 for waited in run.sleeps)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_non_zero_with_resumable_state(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any], signum: int
) -> None:
    simulator.faults.latency = 0.05
    settings = {**config, "page_size": 5}
    (tmp_path / "config.json").write_text(json.dumps(settings))
    live = len(simulator.connections("live"))
    proc = subprocess.Popen(  # the CLI's `main`, with STATE every 5 records (see run_cli)
        [sys.executable, "-c", LAUNCHER, "5", "", "--config", str(tmp_path / "config.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if sum('"RECORD"' in x for x in lines) >= live + 15:  # live done, simulated begun
            break
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    lines += out.splitlines()

    assert time.monotonic() - started < 5
    assert proc.returncode == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    first = Run([json.loads(x) for x in lines])
    assert live + 15 <= len(first.records) < 250
    newest_live = max(r["connectedAt"] for r in first.records if r["mode"] == "live")
    assert bookmarks(first.state) == {"mode=live": newest_live}  # none for simulated yet
    simulator.faults.latency = 0
    simulator.clear_log()
    rerun = sync(settings, state=first.state)
    assert set(first.pairs()) | set(rerun.pairs()) == everything(simulator, "live", "simulated")
    assert [r.params["mode"] for r in simulator.requests].count("live") == 1


def live_bookmark(value: str) -> str:
    """A state file whose live bookmark is `value`."""
    partition = {"context": {"mode": "live"}, "replication_key": "connectedAt"}
    partitions = [{**partition, "replication_key_value": value}]
    return json.dumps({"bookmarks": {"connections": {"partitions": partitions}}})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "it is not valid JSON"),
        ('{"bookmarks": {}, "seen": NaN}', "it is not valid JSON"),
        (
            live_bookmark("last tuesday"),
            'bookmark for {"mode": "live"} is "last tuesday", not a timestamp',
        ),
        ("[1, 2]", "not a JSON object"),
        (
            '{"bookmarks": {"connections": {"progress_markers": 5}}}',
            "the connections 'progress_markers' is not a JSON object",
        ),
        (
            live_bookmark("2026-02-30T00:00:00.000000Z"),
            'bookmark for {"mode": "live"} is "2026-02-30T00:00:00.000000Z", not a timestamp',
        ),
    ],
)
def test_a_bad_state_file_is_named_and_nothing_is_requested(
    tmp_path: Path,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    content: str,
    expected: str,
) -> None:
    run = run_cli(tmp_path, config, state=content)

    assert run.exit_code == 1
    (line,) = error_lines(run)
    assert f"state file {tmp_path / 'state.json'}" in line
    assert expected in line
    assert "Traceback" not in run.stderr
    assert run.messages == []
    assert simulator.requests == []


def test_the_token_never_appears_in_any_output_at_debug(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    secrets = [
        TOKEN,
        base64.b64encode(f"default:{TOKEN}".encode()).decode(),
        f"default:{TOKEN}",
    ]
    debug = {"LOGLEVEL": "DEBUG", "TAP_SMARTCAR_CONNECTIONS_LOGLEVEL": "DEBUG"}
    simulator.faults.rate_limit_every = 4
    simulator.faults.retry_after = "0"
    simulator.faults.error_every = 5
    simulator.faults.truncate_every = 7
    outputs = []

    ok = run_cli(tmp_path, {**config, "page_size": 100}, env=debug)
    assert ok.exit_code == 0, ok.stderr
    assert "urllib3" in ok.stderr or "connectionpool" in ok.stderr  # DEBUG really is on
    outputs.append(json.dumps(ok.messages) + ok.stderr)
    simulator.faults.force_status = 401
    outputs.append(run_cli(tmp_path, config, env=debug).stderr)
    simulator.faults.force_status = None
    simulator.faults.fail_after_page = 0
    outputs.append(run_cli(tmp_path, {**config, "max_retry_seconds": 0}, env=debug).stderr)
    outputs.append(run_cli(tmp_path, {**config, "page_size": 0}, env=debug).stderr)
    simulator.faults.fail_after_page = None
    for args in (["--about"], ["--about", "--format", "json"], ["--discover"], ["--test"]):
        (tmp_path / "config.json").write_text(json.dumps(config))
        proc = subprocess.run(
            [CLI, "--config", str(tmp_path / "config.json"), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **debug},
            check=False,
        )
        outputs.append(proc.stdout + proc.stderr)

    for output in outputs:
        for secret in secrets:
            assert secret not in output


def test_the_connection_test_says_pass_or_fail(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    passed = run_cli(tmp_path, config, "--test")
    failed = run_cli(tmp_path, {**config, "management_token": "wrong"}, "--test")

    assert passed.exit_code == 0
    assert "connection test passed" in passed.stderr
    assert failed.exit_code == 1
    assert "401 AUTHENTICATION" in error_lines(failed)[0]
    assert "connection test passed" not in failed.stderr
