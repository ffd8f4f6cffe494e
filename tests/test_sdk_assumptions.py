"""The SDK behaviours the tap works around: each test fails if an SDK upgrade changes one.

When one of these fails, the SDK now does the job itself: the tap's workaround (named in the
test) may be simplified, and the README checked.
"""

from __future__ import annotations

import logging
import typing as t

import pytest
import requests
from singer_sdk.streams import RESTStream
from singer_sdk.streams.core import Stream

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections import streams
from tap_smartcar_connections.timestamps import normalize_timestamp
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import bookmarks, comparable, sync
from .test_performance import run_tap


def test_the_sdk_alone_lets_a_future_connection_become_a_partition_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workaround: V2ConnectionsStream._increment_stream_state skips values after the run's start,
    # because the SDK writes its signpost at stream level while bookmarks live in partitions.
    simulator.add(
        {"userId": "u", "vehicleId": "v", "connectedAt": "2999-01-01T00:00:00Z", "mode": "live"}
    )
    settings = {**config, "modes": ["live"]}

    ours = sync(settings)
    monkeypatch.setattr(
        V2ConnectionsStream, "_increment_stream_state", Stream._increment_stream_state
    )
    sdk = sync(settings)

    assert bookmarks(ours.state)["mode=live"] < "2999"
    assert bookmarks(sdk.state)["mode=live"] == normalize_timestamp("2999-01-01T00:00:00Z")


def test_the_sdk_request_ignores_the_environment_ca_bundle(
    certificate: tuple[object, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Workaround: the requester merges the environment's settings itself (Requester._environment).
    import ssl  # noqa: PLC0415

    from .conftest import TOKEN  # noqa: PLC0415

    cert, key = certificate
    with SmartcarSimulator([], token=TOKEN) as simulator:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)  # type: ignore[arg-type]
        server = simulator._server
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        api_url = simulator.api_url.replace("http://", "https://")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        monkeypatch.setenv("CURL_CA_BUNDLE", "")
        from tap_smartcar_connections.tap import TapSmartcarConnections  # noqa: PLC0415

        tap = TapSmartcarConnections(config={"management_token": TOKEN, "api_url": api_url})
        stream = t.cast("V2ConnectionsStream", tap.streams["connections"])
        prepared = stream.build_prepared_request(
            method="GET", url=f"{api_url}/management/connections", params={"mode": "live"}
        )

        with pytest.raises(requests.exceptions.SSLError):
            RESTStream._request(stream, prepared, None)
        assert stream.send(prepared).status_code == 200


def test_the_fast_path_steps_aside_for_an_sdk_release_it_was_not_checked_against(
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = {**config, "page_size": 50}
    fast = run_tap(settings)
    monkeypatch.setattr(streams, "SDK_VERSION", "99.0.0")
    written: list[object] = []
    original = V2ConnectionsStream._write_record_message

    def spy(self: V2ConnectionsStream, record: dict[str, t.Any]) -> None:
        written.append(self._record_affixes)
        original(self, record)

    monkeypatch.setattr(V2ConnectionsStream, "_write_record_message", spy)
    with caplog.at_level(logging.DEBUG):
        other = run_tap({**settings, "loglevel": "DEBUG"})

    assert comparable(fast) == comparable(other)
    assert len(written) == 250
    assert set(written) == {None}
    warned = [r for r in caplog.records if "singer-sdk 99.0.0" in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING"]  # never off silently
