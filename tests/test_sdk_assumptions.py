"""What the tap assumes of the SDK: each test fails if an SDK release changes one.

Two kinds. The SDK behaviours the tap works around: when one of these fails, the SDK now does
the job itself, the tap's workaround (named in the test) may be simplified and the docs
checked. And each private SDK name the tap relies on (overrides `_handle_termination`,
`_increment_stream_state`, `_write_record_message`; calls `_write_state_message`,
`_write_activate_version_message`; sets `_stream_version`): when one of these fails, the
tap's use of it must be rewritten before the pin moves.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import typing as t

import pytest
import requests
from singer_sdk.streams import RESTStream
from singer_sdk.streams.core import Stream

from smartcar_simulator import SmartcarSimulator
from tap_smartcar_connections import streams
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.timestamps import normalize_timestamp
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import bookmarks, comparable, sync
from .test_performance import run_tap


def test_the_sdk_alone_lets_a_future_connection_become_a_partition_bookmark(
    simulator: SmartcarSimulator, config: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workaround: SmartcarStream._increment_stream_state does nothing (the Walk keeps bookmarks),
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


# The private SDK names the tap relies on


def test_the_sdk_installs_handle_termination_for_sigterm_and_sigint(
    config: dict[str, t.Any],
) -> None:
    # Relied on by TapSmartcarConnections._handle_termination (a run stops with 143 or 130).
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        tap = TapSmartcarConnections(config=config)
        installed = {signal.getsignal(signum) for signum in before}
        assert installed == {tap._handle_termination}
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_the_sdk_writes_each_record_through_write_record_message(
    simulator: SmartcarSimulator, config: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relied on by the fast path, SmartcarStream._write_record_message.
    seen: list[dict[str, t.Any]] = []
    monkeypatch.setattr(Stream, "_write_record_message", lambda self, record: seen.append(record))
    monkeypatch.setattr(V2ConnectionsStream, "_write_record_message", Stream._write_record_message)

    run = sync({**config, "modes": ["live"]})

    assert len(seen) == len(simulator.connections("live"))
    assert run.records == []  # nothing else wrote them


def test_write_state_message_writes_the_state_once_it_is_not_flushed(
    config: dict[str, t.Any],
) -> None:
    # Relied on by SmartcarStream.write_state (each checkpoint, each finished partition).
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8")
    tap = TapSmartcarConnections(config=config)
    stream = t.cast("V2ConnectionsStream", tap.streams["connections"])
    with contextlib.redirect_stdout(out):
        stream.get_context_state({"mode": "live"})["checkpoint"] = {"cursor": "x"}
        stream.state_manager.is_flushed = False
        stream._write_state_message()
        stream._write_state_message()  # flushed: nothing more
        out.flush()
    (line,) = buffer.getvalue().splitlines()
    message = json.loads(line)
    assert message["type"] == "STATE"
    (partition,) = message["value"]["bookmarks"]["connections"]["partitions"]
    assert partition == {"context": {"mode": "live"}, "checkpoint": {"cursor": "x"}}


def test_write_activate_version_message_writes_the_version_given_per_stream_alias(
    config: dict[str, t.Any],
) -> None:
    # Relied on by SmartcarStream.get_records (ACTIVATE_VERSION after a complete read).
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8")
    aliased = {**config, "stream_maps": {"connections": {"__alias__": "vehicle_connections"}}}
    tap = TapSmartcarConnections(config=aliased)
    stream = t.cast("V2ConnectionsStream", tap.streams["connections"])
    with contextlib.redirect_stdout(out):
        stream._write_activate_version_message(1234)
        out.flush()
    assert [json.loads(line) for line in buffer.getvalue().splitlines()] == [
        {"type": "ACTIVATE_VERSION", "stream": "vehicle_connections", "version": 1234}
    ]


def test_the_sdk_writes_stream_version_into_each_record(
    config: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relied on by SmartcarStream.get_records, which sets _stream_version for a full refresh.
    monkeypatch.setattr(streams, "SDK_VERSION", "99.0.0")  # the SDK's own RECORD path
    settings = {**config, "modes": ["live"], "emit_activate_version_messages": True}
    catalog = TapSmartcarConnections(config=settings).catalog_dict
    catalog["streams"][0]["replication_method"] = "FULL_TABLE"

    run = sync(settings, catalog=catalog)

    (activate,) = [m for m in run.messages if m["type"] == "ACTIVATE_VERSION"]
    versions = {m.get("version") for m in run.messages if m["type"] == "RECORD"}
    assert versions == {activate["version"]}
