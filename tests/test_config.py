"""Configuration errors: one line naming the setting, non-zero exit, no request, no secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.errors import ConfigError
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import TOKEN, run_cli

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))


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
        ({"request_timeout": 10**20}, "request_timeout", "must be at most 3600"),
        ({"request_timeout": 2**31}, "request_timeout", "must be at most 3600"),
        ({"max_retry_seconds": 10**400}, "max_retry_seconds", "must be at most 86400"),
        ({"max_requests_per_minute": 10**400}, "max_requests_per_minute", "must be at most 6000"),
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


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "it is not valid JSON (UTF-8)"),
        ('{"max_retry_seconds": Infinity}', "it is not valid JSON (UTF-8)"),
        (None, "No such file or directory"),
    ],
    ids=["not json", "infinity", "missing"],
)
def test_a_config_file_that_cannot_be_read_is_named(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)

    proc = subprocess.run(
        [CLI, "--config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )

    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line == f"tap-smartcar-connections: error: cannot use config file {path}: {reason}"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("STREAM_MAPS", "{bad", "is not valid JSON"),
        ("STREAM_MAPS", "[1]", "must be a JSON object"),
        ("EMIT_ACTIVATE_VERSION_MESSAGES", "maybe", "must be true or false"),
    ],
)
def test_a_bad_value_in_an_environment_variable_is_named(
    tmp_path: Path, simulator: SmartcarSimulator, variable: str, value: str, reason: str
) -> None:
    env = {
        "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": TOKEN,
        "TAP_SMARTCAR_CONNECTIONS_API_URL": simulator.api_url,
        f"TAP_SMARTCAR_CONNECTIONS_{variable}": value,
    }

    proc = subprocess.run(
        [CLI, "--config", "ENV"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert f"TAP_SMARTCAR_CONNECTIONS_{variable} {reason}" in line
    assert "Traceback" not in proc.stderr
    assert simulator.requests == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "it is not valid JSON (UTF-8)"),
        ("[1]", "it is not a JSON object"),
        ('{"streams": 5}', "it is not a Singer catalog (TypeError)"),
        ('{"streams": [5]}', "it is not a Singer catalog (TypeError)"),
        (None, "No such file or directory"),
    ],
    ids=["not json", "not an object", "streams not a list", "a stream not an object", "missing"],
)
def test_a_catalog_file_that_cannot_be_read_is_named(
    tmp_path: Path,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    content: str | None,
    reason: str,
) -> None:
    config_file, catalog = tmp_path / "config.json", tmp_path / "catalog.json"
    config_file.write_text(json.dumps(config))
    if content is not None:
        catalog.write_text(content)

    proc = subprocess.run(
        [CLI, "--config", str(config_file), "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line == f"tap-smartcar-connections: error: cannot use catalog file {catalog}: {reason}"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert simulator.requests == []
