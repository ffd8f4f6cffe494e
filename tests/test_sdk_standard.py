"""The SDK's standard tap tests, against a simulator started before collection."""

from __future__ import annotations

import atexit

from singer_sdk.testing import get_tap_test_class

from tap_smartcar_connections.simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.tap import TapSmartcarConnections

from .conftest import TOKEN, bookmarks, sync

_SIMULATOR = SmartcarSimulator(generate_connections(150, seed=7), token=TOKEN)
_SIMULATOR.start()
atexit.register(_SIMULATOR.stop)
CONFIG = {"management_token": TOKEN, "api_url": _SIMULATOR.api_url, "page_size": 25}

TestTapSmartcarConnections = get_tap_test_class(TapSmartcarConnections, config=CONFIG)


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
