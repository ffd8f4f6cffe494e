"""Pseudonymising `userId` with stream maps, and the SDK's structured (JSON) logs."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import typing as t
from pathlib import Path

import pytest
from singer_sdk.metrics import METRICS_LOGGER_NAME

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections.logs import demote_sdk_chatter

from .conftest import TOKEN, Run, run_cli, sync

MD5_MAP = {"connections": {"userId": "md5(userId)"}}
SALT = "per-warehouse-salt-3b9d"
SALTED_MAP = {"connections": {"userId": "sha256(config['salt'] + userId)"}}
STRUCTURED_LOGGING = """\
version: 1
disable_existing_loggers: false
formatters:
  structured:
    (): singer_sdk.logging.StructuredFormatter
handlers:
  console:
    class: logging.StreamHandler
    formatter: structured
    stream: ext://sys.stderr
root:
  level: INFO
  handlers: [console]
"""
SECRETS = [TOKEN, f"default:{TOKEN}", base64.b64encode(f"default:{TOKEN}".encode()).decode()]


def md5(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()  # noqa: S324


def salted_sha256(value: str) -> str:
    return hashlib.sha256((SALT + value).encode()).hexdigest()


def keys(records: list[dict[str, t.Any]]) -> list[tuple[str, str]]:
    return [(r["userId"], r["vehicleId"]) for r in records]


@pytest.mark.parametrize(
    ("maps", "extra", "pseudonym"),
    [
        (MD5_MAP, {}, md5),
        (SALTED_MAP, {"stream_map_config": {"salt": SALT}}, salted_sha256),
    ],
    ids=["md5", "salted-sha256"],
)
def test_stream_maps_pseudonymise_user_id_and_keep_the_keys(
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    maps: dict[str, t.Any],
    extra: dict[str, t.Any],
    pseudonym: t.Callable[[str], str],
) -> None:
    served = simulator.connections()

    run = sync({**config, "stream_maps": maps, **extra})

    assert run.error is None
    (schema,) = [m for m in run.messages if m["type"] == "SCHEMA"]
    assert schema["key_properties"] == ["userId", "vehicleId"]
    assert "string" in schema["schema"]["properties"]["userId"]["type"]
    assert sorted(keys(run.records)) == sorted(
        (pseudonym(c["userId"]), c["vehicleId"]) for c in served
    )
    assert len(set(keys(run.records))) == len(served)
    assert len({r["userId"] for r in run.records}) == len({c["userId"] for c in served})
    output = json.dumps(run.messages)
    assert not any(c["userId"] in output for c in served)


def test_a_user_id_filter_is_pseudonymised_in_records_too(
    simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    user = next(c["userId"] for c in simulator.connections("live"))

    run = sync({**config, "modes": ["live"], "user_id": user, "stream_maps": MD5_MAP})

    assert run.error is None
    assert run.records
    assert {r["userId"] for r in run.records} == {md5(user)}
    assert user not in json.dumps([m for m in run.messages if m["type"] == "RECORD"])


def parse_log(stderr: str) -> tuple[list[dict[str, t.Any]], list[str]]:
    """Split stderr into structured log records and any other lines."""
    records, others = [], []
    for line in stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            others.append(line)
    return records, others


def run_structured(tmp_path: Path, config: dict[str, t.Any], level: str = "INFO") -> Run:
    """Run the CLI with the SDK's structured (JSON) logging configured, as Meltano does."""
    log_config = tmp_path / "logging.yaml"
    log_config.write_text(STRUCTURED_LOGGING.replace("level: INFO", f"level: {level}"))
    return run_cli(tmp_path, config, env={"SINGER_SDK_LOG_CONFIG": str(log_config)})


def test_structured_logging_emits_one_json_object_per_line_without_secrets(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.rate_limit_every = 2
    simulator.faults.retry_after = "0"

    run = run_structured(tmp_path, config)

    assert run.exit_code == 0, run.stderr
    records, others = parse_log(run.stderr)
    assert others == []
    assert all({"level", "logger_name", "message", "ts"} <= r.keys() for r in records)
    retries = [r for r in records if "retrying in" in r["message"]]
    assert retries
    assert all(r["level"] == "warning" for r in retries)
    assert not [r for r in records if "metric_info" in r]  # at DEBUG: see the next test
    assert not any(secret in run.stderr for secret in SECRETS)


def test_the_sdks_metrics_and_notes_are_logged_at_debug_only(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    """At INFO a person sees what is read, progress and warnings; the metrics wait at DEBUG."""
    info = run_structured(tmp_path, config)
    debug = run_structured(tmp_path, config, level="DEBUG")

    assert (info.exit_code, debug.exit_code) == (0, 0), info.stderr + debug.stderr
    at_info, _ = parse_log(info.stderr)
    at_debug, _ = parse_log(debug.stderr)
    shown = [r["message"] for r in at_info]
    assert any("Starting incremental sync of 'connections'" in m for m in shown)
    assert any(re.match(r'Connections \{"mode": "live"\} finished: ', m) for m in shown)
    assert not [m for m in shown if "METRIC" in m or "env var" in m]
    metrics = [r for r in at_debug if "metric_info" in r]
    assert {r["metric_info"]["metric"] for r in metrics} >= {"http_request_count", "record_count"}
    assert {r["level"] for r in metrics} == {"debug"}
    notes = [r for r in at_debug if r["message"] == "Skipping parse of env var settings..."]
    assert notes
    assert {r["level"] for r in notes} == {"debug"}


def test_a_failed_run_under_structured_logging_names_the_error_without_secrets(
    tmp_path: Path, simulator: SmartcarSimulator, config: dict[str, t.Any]
) -> None:
    simulator.faults.force_status = 401

    run = run_structured(tmp_path, config)

    assert run.exit_code == 1
    records, others = parse_log(run.stderr)
    assert others == []
    errors = [r for r in records if r["level"] == "error"]
    assert [r["message"].split(": error: ")[0] for r in errors] == ["tap-smartcar-connections"]
    assert "401 AUTHENTICATION" in errors[0]["message"]
    assert "Traceback" not in run.stderr
    assert not any(secret in run.stderr for secret in SECRETS)


def test_only_the_sdks_chatter_is_demoted(caplog: pytest.LogCaptureFixture) -> None:
    """The tap's own INFO records stay at INFO, whatever their message is (even not a string)."""
    logger = logging.getLogger("tap-demote-test")
    demote_sdk_chatter("tap-demote-test")
    demote_sdk_chatter("tap-demote-test")  # idempotent: one filter each

    with caplog.at_level(logging.INFO):
        logger.info("Skipping parse of env var settings...")
        logger.info({"a": "dict as the message"})
        logger.info("Connections finished")
        logging.getLogger(METRICS_LOGGER_NAME).info("METRIC: %s", "point")
    at_info = [(r.levelname, r.msg) for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        logger.info("Skipping parse of env var settings...")
        logging.getLogger(METRICS_LOGGER_NAME).info("METRIC: %s", "point")
    at_debug = [(r.levelname, r.msg) for r in caplog.records]

    assert at_info == [("INFO", {"a": "dict as the message"}), ("INFO", "Connections finished")]
    assert at_debug == [
        ("DEBUG", "Skipping parse of env var settings..."),
        ("DEBUG", "METRIC: %s"),
    ]
    assert len(logger.filters) == 1
