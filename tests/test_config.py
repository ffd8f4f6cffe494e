"""Configuration errors: one line naming the setting, non-zero exit, no request, no secret."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ConfigError
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import TOKEN, run_cli


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    ("change", "setting", "reason"),
    [
        ({"management_token": None}, "management_token", "is required"),
        ({"page_size": 500}, "page_size", "must be at most 100"),
        ({"page_size": 0}, "page_size", "must be at least 1"),
        ({"start_date": "yesterday"}, "start_date", "ISO 8601"),
        ({"modes": ["live", "production"]}, "modes", "must be one of live, simulated, test"),
        ({"modes": []}, "modes", "at least one"),
        ({"request_timeout": "slow"}, "request_timeout", "must be of type integer"),
        ({"batch_config": {"encoding": {"format": "jsonl"}}}, "batch_config", "not supported"),
    ],
)
def test_a_bad_setting_fails_before_any_request(
    tmp_path: Path,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    change: dict[str, t.Any],
    setting: str,
    reason: str,
) -> None:
    bad = {k: v for k, v in {**config, **change}.items() if v is not None}

    run = run_cli(tmp_path, bad)

    assert run.exit_code == 1
    (line,) = error_lines(run.stderr)
    assert f"'{setting}'" in line
    assert reason in line
    assert "Traceback" not in run.stderr
    assert run.messages == []
    assert simulator.requests == []


def test_a_token_of_the_wrong_type_is_never_echoed(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    bad = {**config, "management_token": 987654321987}

    run = run_cli(tmp_path, bad, env={"LOGLEVEL": "DEBUG"})

    assert run.exit_code == 1
    (line,) = error_lines(run.stderr)
    assert "'management_token' must be of type string" in line
    assert "987654321987" not in run.stderr


def test_config_errors_raise_config_error_in_python(config: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigError, match="'page_size' must be at most 100"):
        TapSmartcarConnections(config={**config, "page_size": 101})


def test_valid_config_with_defaults(config: dict[str, t.Any]) -> None:
    tap = TapSmartcarConnections(config={"management_token": TOKEN})

    stream = tap.streams["connections"]
    assert isinstance(stream, V2ConnectionsStream)
    assert stream.url_base == "https://management.smartcar.com/v2.0"
    assert stream.partitions == [{"mode": "live"}, {"mode": "simulated"}]
