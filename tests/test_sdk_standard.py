"""The SDK's standard tap tests, against a simulator started before collection."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

from singer_sdk.testing import get_tap_test_class

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.tap import TapSmartcarConnections

from .conftest import ROOT, TOKEN, bookmarks, sync

_SIMULATOR = SmartcarSimulator(generate_connections(150, seed=7), token=TOKEN)
_SIMULATOR.start()
atexit.register(_SIMULATOR.stop)
CONFIG = {"management_token": TOKEN, "api_url": _SIMULATOR.api_url, "page_size": 25}

# Not parse_env_config (the SDK's default): an exported TAP_SMARTCAR_CONNECTIONS_API_URL would
# send these tests to the real API, and an exported token would replace the simulator's.
TestTapSmartcarConnections = get_tap_test_class(
    TapSmartcarConnections, config=CONFIG, parse_env_config=False
)


def test_final_state_has_one_bookmark_per_mode() -> None:
    # The SDK's TapValidFinalStateTest does not inspect the state, so check it here.
    run = sync(CONFIG)

    newest = {
        mode: max(r["connectedAt"] for r in run.records if r["mode"] == mode)
        for mode in ("live", "simulated")
    }
    assert bookmarks(run.state) == {
        "mode=live": newest["live"],
        "mode=simulated": newest["simulated"],
    }
    assert all(
        "progress_markers" not in p for p in run.state["bookmarks"]["connections"]["partitions"]
    )


def test_the_standard_tests_ignore_the_tap_settings_in_the_environment() -> None:
    exported = {
        "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": "wrong",
        "TAP_SMARTCAR_CONNECTIONS_API_URL": "http://127.0.0.1:9",
        "TAP_SMARTCAR_CONNECTIONS_MAX_RETRY_SECONDS": "0",
    }
    suite = f"{__file__}::TestTapSmartcarConnections"

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", suite],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **exported},
        check=False,
    )

    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout
