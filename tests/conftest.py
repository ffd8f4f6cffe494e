"""Shared fixtures: a loopback Smartcar simulator and ways to run the tap against it."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.policy import Clock
from tap_smartcar_connections.streams import SmartcarStream
from tap_smartcar_connections.tap import TapSmartcarConnections

from .clock import VirtualClock

TOKEN = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """What one tap run wrote, parsed."""

    messages: list[dict[str, t.Any]]
    error: BaseException | None = None
    stderr: str = ""
    exit_code: int = 0
    sleeps: list[float] = field(default_factory=list)
    """Every wait of the run (retries, pacing), in seconds, when it ran on a `VirtualClock`."""
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


def live_state(bookmark: str) -> dict[str, t.Any]:
    """A state with a bookmark for the live mode only, as 0.1.0 wrote it."""
    partition = {
        "context": {"mode": "live"},
        "replication_key": "connectedAt",
        "replication_key_value": bookmark,
    }
    return {"bookmarks": {"connections": {"partitions": [partition]}}}


def comparable(messages: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """The messages minus clock readings: `time_extracted`, versions and signposts (run start)."""
    versions = {m["version"] for m in messages if "version" in m}
    assert len(versions) <= 1
    result = []
    for message in messages:
        copy = {k: v for k, v in message.items() if k != "time_extracted"}
        if "version" in copy:
            copy["version"] = "<version>"
        if copy["type"] == "STATE":
            copy["value"] = json.loads(json.dumps(copy["value"]))
            for bookmark in copy["value"].get("bookmarks", {}).values():
                if "replication_key_signpost" in bookmark:
                    bookmark["replication_key_signpost"] = "<run start>"
        result.append(copy)
    return result


@pytest.fixture(autouse=True)
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tap a test makes in this process waits on a `VirtualClock` (see `RealTimeTap`)."""
    monkeypatch.setattr(TapSmartcarConnections, "clock_class", VirtualClock)


@pytest.fixture
def state_every(monkeypatch: pytest.MonkeyPatch) -> t.Callable[[int], None]:
    """Lower the SDK's STATE interval for in-process runs (it writes STATE every 10,000 records).

    A test's runs have a few hundred records, so without this the only STATE of a run is the
    one at its end, and a failed run emits none: mid-walk bookmarks would go unseen.
    """

    def lower(records: int) -> None:
        assert SmartcarStream.STATE_MSG_FREQUENCY == 10_000  # the SDK's, as documented
        monkeypatch.setattr(SmartcarStream, "STATE_MSG_FREQUENCY", records)

    return lower


@pytest.fixture
def simulator() -> t.Iterator[SmartcarSimulator]:
    """A simulator with 250 generated connections, live and simulated."""
    with SmartcarSimulator(generate_connections(250, seed=1), token=TOKEN) as sim:
        yield sim


@pytest.fixture
def config(simulator: SmartcarSimulator) -> dict[str, t.Any]:
    return {"management_token": TOKEN, "api_url": simulator.api_url, "max_retry_seconds": 30}


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (trusted only through REQUESTS_CA_BUNDLE)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def sync(
    config: dict[str, t.Any],
    state: dict[str, t.Any] | None = None,
    catalog: dict[str, t.Any] | None = None,
    *,
    expect_error: type[BaseException] | None = None,
    real_time: bool = False,
) -> Run:
    """Run the tap in this process through the SDK's `sync_all`, capturing its messages.

    Its waits are skipped and recorded (`VirtualClock`, `Run.sleeps`), unless `real_time`.

    The tap's exception propagates unless `expect_error` names its type: then the Run comes
    back with `.error` set and the messages written before the failure, and the test fails if
    the run succeeded. Messages are what the command line would have written: every writer
    (the SDK's and the fast RECORD path) writes straight to stdout's byte buffer, and
    `test_an_in_process_failure_emits_what_the_command_line_emits` checks the two agree.
    """
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8")
    error: BaseException | None = None
    kind = RealTimeTap if real_time else TapSmartcarConnections
    tap: TapSmartcarConnections | None = None
    with contextlib.redirect_stdout(out):
        try:
            # A copy: the SDK updates the state it loads, which would rewrite `state`'s Run.
            tap = kind(config=config, state=copy.deepcopy(state), catalog=catalog)
            tap.sync_all()
        except Exception as exc:
            if expect_error is None or not isinstance(exc, expect_error):
                raise
            error = exc
        finally:
            out.flush()
    if expect_error is not None and error is None:
        pytest.fail(f"the run succeeded; expected {expect_error.__name__}")
    messages = [json.loads(line) for line in buffer.getvalue().splitlines()]
    sleeps = getattr(tap.run.clock, "sleeps", []) if tap is not None else []
    return Run(messages, error=error, sleeps=sleeps)


class RealTimeTap(TapSmartcarConnections):
    """The tap as it runs outside the tests: its waits take their time."""

    clock_class = Clock


LAUNCHER = """\
import sys
from pathlib import Path
from tests.clock import VirtualClock
from tap_smartcar_connections.streams import SmartcarStream
from tap_smartcar_connections.tap import TapSmartcarConnections
every, sleeps = sys.argv.pop(1), sys.argv.pop(1)
if every:
    SmartcarStream.STATE_MSG_FREQUENCY = int(every)
if sleeps:
    VirtualClock.log = Path(sleeps)
    TapSmartcarConnections.clock_class = VirtualClock
from tap_smartcar_connections.cli import main
sys.argv[0] = "tap-smartcar-connections"
main()
"""


def run_cli(
    tmp_path: Path,
    config: dict[str, t.Any],
    *args: str,
    state: dict[str, t.Any] | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    state_every: int | None = None,
    real_time: bool = False,
) -> Run:
    """Run the tap's command line with a config file (and state file), like Meltano does.

    It runs the same `main` as the console script, its waits skipped and recorded
    (`VirtualClock`, `Run.sleeps`); with `real_time`, the console script itself.
    `state_every` lowers the SDK's STATE interval (every 10,000 records), so that a short run
    emits STATE mid-walk as a long one does.
    """
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    sleeps = tmp_path / "sleeps.txt"
    sleeps.unlink(missing_ok=True)
    command = [str(Path(sys.executable).with_name("tap-smartcar-connections"))]
    if state_every is not None or not real_time:
        every = "" if state_every is None else str(state_every)
        command = [sys.executable, "-c", LAUNCHER, every, "" if real_time else str(sleeps)]
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
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    waited = [float(line) for line in sleeps.read_text().split()] if sleeps.exists() else []
    return Run(messages, stderr=proc.stderr, exit_code=proc.returncode, sleeps=waited)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the end-to-end tests on one xdist worker, so each session fixture is set up once.

    A Meltano project with its plugins, or a PostgreSQL cluster, costs seconds to build; every
    other test runs on whichever worker is free (`--dist loadgroup`, as `scripts/test.sh` runs).
    """
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("e2e"))
