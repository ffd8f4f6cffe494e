"""Shared fixtures: a loopback Smartcar simulator and ways to run the tap against it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tap_smartcar_connections.simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.tap import TapSmartcarConnections

TOKEN = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """What one tap run wrote, parsed."""

    messages: list[dict[str, t.Any]]
    error: BaseException | None = None
    stderr: str = ""
    exit_code: int = 0
    records: list[dict[str, t.Any]] = field(init=False)
    states: list[dict[str, t.Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.records = [m["record"] for m in self.messages if m["type"] == "RECORD"]
        self.states = [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def state(self) -> dict[str, t.Any]:
        """The last STATE emitted (what an orchestrator would resume from)."""
        return self.states[-1] if self.states else {}

    def pairs(self) -> list[tuple[str, str]]:
        return [(r["userId"], r["vehicleId"]) for r in self.records]


def bookmarks(state: dict[str, t.Any]) -> dict[str, str]:
    """Map each partition's mode (plus filters) to its bookmark."""
    partitions = state.get("bookmarks", {}).get("connections", {}).get("partitions", [])
    return {
        ",".join(f"{k}={v}" for k, v in sorted(p["context"].items())): p["replication_key_value"]
        for p in partitions
        if "replication_key_value" in p
    }


@pytest.fixture
def simulator() -> t.Iterator[SmartcarSimulator]:
    """A simulator with 250 generated connections, live and simulated."""
    with SmartcarSimulator(generate_connections(250, seed=1), token=TOKEN) as sim:
        yield sim


@pytest.fixture
def config(simulator: SmartcarSimulator) -> dict[str, t.Any]:
    return {"management_token": TOKEN, "api_url": simulator.api_url, "max_retry_seconds": 30}


def sync(
    config: dict[str, t.Any],
    state: dict[str, t.Any] | None = None,
    catalog: dict[str, t.Any] | None = None,
) -> Run:
    """Run the tap in this process through the SDK's `sync_all`, capturing its messages."""
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8")
    error: BaseException | None = None
    with contextlib.redirect_stdout(out):
        try:
            TapSmartcarConnections(config=config, state=state, catalog=catalog).sync_all()
        except Exception as exc:
            error = exc
        out.flush()
    return Run([json.loads(line) for line in buffer.getvalue().splitlines()], error=error)


def run_cli(
    tmp_path: Path,
    config: dict[str, t.Any],
    *args: str,
    state: dict[str, t.Any] | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    """Run the real console script with a config file (and state file), like Meltano does."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    command = [str(Path(sys.executable).with_name("tap-smartcar-connections"))]
    command += ["--config", str(config_file), *args]
    if state is not None:
        state_file = tmp_path / "state.json"
        state_file.write_text(state if isinstance(state, str) else json.dumps(state))
        command += ["--state", str(state_file)]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return Run(messages, stderr=proc.stderr, exit_code=proc.returncode)
