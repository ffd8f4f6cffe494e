"""The fast record path: same Singer output as the SDK's own path, and memory flat in N.

Speed itself is measured by `scripts/bench.py`, never asserted here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import re
import subprocess
import sys
import time
import tracemalloc
import typing as t
from datetime import datetime

import jsonschema
import pytest
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.io_base import SingerWriter
from singer_sdk.singerlib import RecordMessage
from singer_sdk.singerlib.encoding import SimpleSingerWriter
from singer_sdk.streams.core import Stream

from smartcar_simulator import SmartcarSimulator, generate_connections
from tap_smartcar_connections.streams import SmartcarStream
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.timestamps import normalize_timestamp, normalize_timestamps

from .conftest import ROOT, TOKEN, comparable

SMALL, BIG = 2_000, 20_000


def run_tap(
    settings: dict[str, t.Any],
    catalog: dict[str, t.Any] | None = None,
    *,
    reference: bool = False,
) -> list[dict[str, t.Any]]:
    """Sync in-process and return the parsed messages, validating each line as JSON."""
    writer = SimpleSingerWriter() if reference else None
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8")
    with contextlib.redirect_stdout(out):
        TapSmartcarConnections(config=settings, catalog=catalog, message_writer=writer).sync_all()
        out.flush()
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def assert_valid_singer(messages: list[dict[str, t.Any]]) -> None:
    schemas: dict[str, dict[str, t.Any]] = {}
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    for message in messages:
        match message["type"]:
            case "SCHEMA":
                assert set(message) >= {"stream", "schema", "key_properties"}
                schemas[message["stream"]] = message["schema"]
            case "RECORD":
                schema = schemas[message["stream"]]
                jsonschema.validate(message["record"], schema, format_checker=checker)
                assert datetime.fromisoformat(message["time_extracted"]).utcoffset() is not None
            case "STATE":
                assert isinstance(message["value"], dict)
            case "ACTIVATE_VERSION":
                assert isinstance(message["version"], int)
            case other:
                pytest.fail(f"unexpected message type {other}")


def full_table_catalog() -> dict[str, t.Any]:
    catalog: dict[str, t.Any] = json.loads((ROOT / "catalog.json").read_text())
    catalog["streams"][0]["replication_method"] = "FULL_TABLE"
    return catalog


def deselected_mode_catalog() -> dict[str, t.Any]:
    catalog: dict[str, t.Any] = json.loads((ROOT / "catalog.json").read_text())
    for entry in catalog["streams"][0]["metadata"]:
        if entry["breadcrumb"] == ["properties", "mode"]:
            entry["metadata"]["selected"] = False
    return catalog


VARIANTS: dict[str, tuple[dict[str, t.Any], t.Callable[[], dict[str, t.Any] | None]]] = {
    "incremental": ({}, lambda: None),
    "full-table-versioned": ({"emit_activate_version_messages": True}, full_table_catalog),
    "stream-map": ({"stream_maps": {"connections": {"userId": "md5(userId)"}}}, lambda: None),
    "deselected-field": ({}, deselected_mode_catalog),
    "alias": ({"stream_maps": {"connections": {"__alias__": "vehicle_connections"}}}, lambda: None),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_matches_the_sdk_reference_path(
    variant: str,
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra, catalog = VARIANTS[variant]
    settings = {**config, "page_size": 30, **extra}

    fast = run_tap(settings, catalog())
    simulator.clear_log()
    monkeypatch.setattr(SmartcarStream, "TYPE_CONFORMANCE_LEVEL", TypeConformanceLevel.RECURSIVE)
    reference = run_tap(settings, catalog(), reference=True)

    assert_valid_singer(fast)
    assert_valid_singer(reference)
    assert comparable(fast) == comparable(reference)
    assert sum(m["type"] == "RECORD" for m in fast) == 250
    if variant == "full-table-versioned":
        assert all("version" in m for m in fast if m["type"] in {"RECORD", "ACTIVATE_VERSION"})


def test_state_written_mid_page_follows_the_records_it_covers(
    simulator: SmartcarSimulator,
    config: dict[str, t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SmartcarStream, "STATE_MSG_FREQUENCY", 7)
    settings = {**config, "page_size": 30}

    fast = run_tap(settings)
    simulator.clear_log()
    monkeypatch.setattr(SmartcarStream, "TYPE_CONFORMANCE_LEVEL", TypeConformanceLevel.RECURSIVE)
    reference = run_tap(settings, reference=True)

    types = [m["type"] for m in fast]
    first_state = types.index("STATE")
    assert "RECORD" in types[:first_state]
    assert "RECORD" in types[first_state:]
    assert comparable(fast) == comparable(reference)


def test_record_lines_are_the_bytes_the_msgspec_writer_would_write(
    config: dict[str, t.Any],
) -> None:
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(buffer, encoding="utf-8")) as out:
        TapSmartcarConnections(config={**config, "modes": ["live"]}).sync_all()
        out.flush()
    lines = [line for line in buffer.getvalue().splitlines() if b'"type":"RECORD"' in line]

    assert lines
    for line in lines:
        message = json.loads(line)
        stamp = datetime.fromisoformat(message["time_extracted"])
        expected = MsgSpecWriter().format_message(
            RecordMessage(stream="connections", record=message["record"], time_extracted=stamp)
        )
        assert line + b"\n" == bytes(expected)


def test_page_timestamps_normalise_like_one_at_a_time() -> None:
    page = [c["connectedAt"] for c in generate_connections(300, seed=5)]
    mixed = [*page[:3], "2026-03-01T12:00:00.5+02:00", "2026-03-01"]

    assert normalize_timestamps(page) == [normalize_timestamp(v) for v in page]
    assert normalize_timestamps(mixed) == [normalize_timestamp(v) for v in mixed]
    assert normalize_timestamps([]) == []
    with pytest.raises(ValueError, match="ISO 8601"):
        normalize_timestamps([f"{page[0]}\n{page[1]}", page[2]])


@pytest.mark.parametrize(
    ("extra", "sdk_path"),
    [({}, False), ({"stream_maps": {"connections": {"userId": "md5(userId)"}}}, True)],
    ids=["plain", "stream-map"],
)
def test_the_fast_path_is_taken_unless_a_stream_map_needs_the_sdk(
    config: dict[str, t.Any],
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, t.Any],
    sdk_path: bool,
) -> None:
    calls = 0
    original = Stream._generate_record_messages

    def counting(self: Stream, record: dict[str, t.Any]) -> t.Any:
        nonlocal calls
        calls += 1
        return original(self, record)

    monkeypatch.setattr(Stream, "_generate_record_messages", counting)

    messages = run_tap({**config, **extra})

    records = sum(m["type"] == "RECORD" for m in messages)
    assert records == 250
    assert calls == (records if sdk_path else 0)


class _CountingSink(io.RawIOBase):
    """A stdout that keeps nothing: counts RECORD lines and bytes."""

    MARK = b'{"type":"RECORD"'

    def __init__(self) -> None:
        self.records = 0
        self._carry = b""

    def writable(self) -> bool:
        return True

    def write(self, data: t.Any) -> int:
        chunk = self._carry + bytes(data)
        self.records += chunk.count(self.MARK)
        self._carry = chunk[-(len(self.MARK) - 1) :]
        return len(data)


def measure_peaks(api_url: str) -> None:
    """Print, as JSON, each mode's records and Python's peak bytes while syncing it.

    Runs in its own process (see the test below), so that neither pytest's log capture nor
    the simulator's memory is counted.
    """
    logging.disable(logging.WARNING)
    results: dict[str, tuple[int, int]] = {}
    for mode in ("live", "live", "simulated"):  # the first run warms imports and caches
        sink = _CountingSink()
        out = io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8")
        settings = {"management_token": TOKEN, "api_url": api_url, "modes": [mode]}
        tap = TapSmartcarConnections(config=settings)
        with contextlib.redirect_stdout(out):
            tracemalloc.start()
            tap.sync_all()
            out.flush()
            results[mode] = (sink.records, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    """A simulator process with SMALL live and BIG simulated connections."""
    tmp = tmp_path_factory.mktemp("sizes")
    data = generate_connections(SMALL, seed=3, modes=("live",))
    data += generate_connections(BIG, seed=4, modes=("simulated",))
    (tmp / "data.json").write_text(json.dumps(data))
    url_file = tmp / "url"
    command = [sys.executable, "-m", "smartcar_simulator", "--token", TOKEN]
    command += ["--data", str(tmp / "data.json"), "--url-file", str(url_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if url_file.exists() or process.poll() is not None:
                break
            time.sleep(0.05)
        yield url_file.read_text().strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_memory_does_not_grow_with_the_number_of_connections(two_sizes: str) -> None:
    code = (
        "import sys; from tests.test_performance import measure_peaks; measure_peaks(sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, two_sizes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (small_records, small_peak), (big_records, big_peak) = json.loads(proc.stdout).values()

    assert (small_records, big_records) == (SMALL, BIG)
    # Holding on to the 18,000 extra records, or to their lines, would add several MB. What
    # does grow is small: the cursors kept for loop detection (about 250 bytes a page) and
    # urllib's 128-entry URL cache.
    assert big_peak - small_peak < 1_000_000, (small_peak, big_peak)


def load_bench() -> t.Any:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def log_entries(mode: str, counts: list[int], status: int = 200) -> list[dict[str, t.Any]]:
    return [{"params": {"mode": mode}, "count": n, "status": status} for n in counts]


def test_the_bench_accepts_a_complete_minimal_sync() -> None:
    bench = load_bench()
    run = bench.Run("tap", 1.0, 0, 250, 50.0)

    entries = log_entries("live", [100, 25]) + log_entries("simulated", [100, 25])
    bench.check(run, entries, 250, "")

    assert run.problems == []
    assert run.requests == {"live": 2, "simulated": 2}


@pytest.mark.parametrize(
    ("records", "entries", "problem"),
    [
        (249, log_entries("live", [100, 25]) + log_entries("simulated", [100, 25]), "records"),
        (250, log_entries("live", [100, 25, 0]) + log_entries("simulated", [100, 25]), "requests"),
        (250, log_entries("live", [100, 25]) + log_entries("simulated", [100]), "served"),
        (250, log_entries("live", [125]) + log_entries("simulated", [125], 429), "non-200"),
    ],
    ids=["missing-record", "extra-request", "short-read", "error-status"],
)
def test_the_bench_fails_a_wrong_sync(
    records: int, entries: list[dict[str, t.Any]], problem: str
) -> None:
    bench = load_bench()
    run = bench.Run("tap", 1.0, 0, records, 50.0)

    bench.check(run, entries, 250, "")

    assert any(problem in text for text in run.problems), run.problems


def v3_log_entries(
    connections: dict[str, list[int]], *, tokens: int = 1, webhooks: int = 3
) -> list[dict[str, t.Any]]:
    entries = [{"path": "/oauth2/token", "params": {}, "count": 0, "status": 200}] * tokens
    entries += [{"path": "/management/v3/webhooks", "params": {}, "count": webhooks, "status": 200}]
    for mode, counts in connections.items():
        params = {"filter[vehicle.mode]": mode}
        entries += [
            {"path": "/vehicle/v3/connections", "params": params, "count": n, "status": 200}
            for n in counts
        ]
        entries.append(
            {"path": "/management/v3/subscriptions", "params": params, "count": 3, "status": 200}
        )
    return entries


def test_the_bench_accepts_a_complete_minimal_v3_sync() -> None:
    bench = load_bench()
    run = bench.Run("v3 tap", 1.0, 0, 259, 50.0, api="v3", connection_records=250)

    bench.check(run, v3_log_entries({"live": [100, 25], "simulated": [100, 25]}), 250, "")

    assert run.problems == []
    assert run.requests == {"live": 2, "simulated": 2}
    assert run.other_requests == {
        "token": 1,
        "webhooks": 1,
        "subscriptions live": 1,
        "subscriptions simulated": 1,
    }


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (v3_log_entries({"live": [100, 25], "simulated": [100, 25]}, tokens=2), "2 token"),
        (v3_log_entries({"live": [100, 25], "simulated": [100, 25]}, tokens=0), "0 token"),
        (v3_log_entries({"live": [125], "simulated": [125]}, webhooks=0), "records"),
        (v3_log_entries({"live": [100, 25]}), "0 connections simulated"),
    ],
    ids=["two-tokens", "no-token", "other-lists-not-written", "mode-not-read"],
)
def test_the_bench_fails_a_wrong_v3_sync(entries: list[dict[str, t.Any]], problem: str) -> None:
    bench = load_bench()
    run = bench.Run("v3 tap", 1.0, 0, 259, 50.0, api="v3", connection_records=250)

    bench.check(run, entries, 250, "")

    assert any(problem in text for text in run.problems), run.problems


@pytest.mark.parametrize(
    ("written", "entries", "problem"),
    [
        (0, log_entries("live", [100]) + log_entries("simulated", [100]), None),
        (1, log_entries("live", [100]) + log_entries("simulated", [100]), "1 connections"),
        (0, log_entries("live", [100, 25]) + log_entries("simulated", [100]), "2 connections live"),
    ],
    ids=["nothing-new", "a-record-sent-again", "read-past-the-bookmark"],
)
def test_the_bench_checks_an_incremental_sync_with_nothing_new(
    written: int, entries: list[dict[str, t.Any]], problem: str | None
) -> None:
    bench = load_bench()
    run = bench.Run("v2 tap", 1.0, 0, written, 50.0, connection_records=written)

    bench.check(run, entries, 250, "", incremental=True)

    if problem is None:
        assert run.problems == []
    else:
        assert any(problem in text for text in run.problems), run.problems


@pytest.mark.parametrize(
    ("arrivals", "problem"),
    [([0.0, 0.05, 0.1], None), ([0.0, 0.05, 0.07], "20.0 ms apart")],
    ids=["latency-paid", "latency-not-paid"],
)
def test_the_bench_checks_that_each_request_waited_the_latency(
    arrivals: list[float], problem: str | None
) -> None:
    bench = load_bench()
    run = bench.Run("v2 tap", 1.0, 0, 150, 50.0, connection_records=150)
    entries = log_entries("live", [100, 50]) + log_entries("simulated", [0])
    for entry, arrived in zip(entries, arrivals, strict=True):
        entry["time"] = arrived

    bench.check(run, entries, 150, "", latency=0.05)

    if problem is None:
        assert run.problems == []
    else:
        assert any(problem in text for text in run.problems), run.problems


@pytest.mark.parametrize(
    ("text", "latencies"),
    [("0", (0.0,)), ("50", (50.0,)), ("0,50", (0.0, 50.0)), ("2.5,0", (2.5, 0.0))],
)
def test_the_bench_reads_one_latency_or_a_list(text: str, latencies: tuple[float, ...]) -> None:
    assert load_bench()._latencies(text) == latencies


@pytest.mark.parametrize("text", ["", "fifty", "-5", "0,,50", "inf", "nan", "50,50"])
def test_the_bench_refuses_a_wrong_latency(text: str) -> None:
    bench = load_bench()

    with pytest.raises(argparse.ArgumentTypeError):
        bench._latencies(text)


_RUN_LINE = re.compile(
    r"  (v[23] (?:tap|baseline)) +([\d.]+) s .* requests (\d+) live \+ (\d+) simulated"
    r"(?: \(\+ (\d+) other\))?  (.*)"
)


def test_the_bench_compares_tap_and_baseline_at_each_latency_of_one_run() -> None:
    options = ["--api", "both", "--latency", "0,5", "--connections", "300", "--pairs", "1"]
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    blocks = proc.stdout.split("\nround ")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [block.split("\n", 1)[0] for block in blocks[1:]] == [
        "1/1, loopback",
        "1/1, 5 ms a request",
    ]
    # Each run at 5 ms: its own check (that no request came sooner than 5 ms after the one
    # before) passed, and it took at least its requests' latencies.
    timed = [_RUN_LINE.fullmatch(line) for line in blocks[2].splitlines()[1:5]]
    assert all(match is not None for match in timed), blocks[2]
    for match in t.cast("list[re.Match[str]]", timed):
        requests_made = sum(int(n or 0) for n in match.group(3, 4, 5))
        assert match[6] == "ok"
        assert float(match[2]) >= requests_made * 0.005
    assert "full syncs, 300 connections, loopback (1 rounds, medians):" in proc.stdout
    assert "full syncs, 300 connections, 5 ms a request (1 rounds, medians):" in proc.stdout
    table = proc.stdout.split("time ratios by latency (medians of the per-round ratios):\n")[1]
    header, *rows = table.splitlines()
    assert header.split() == ["loopback", "5", "ms"]
    assert [row[:28].strip() for row in rows] == [
        "v2 tap / v2 baseline",
        "v3 tap / v3 baseline",
        "v3 tap / v2 tap",
        "v3 baseline / v2 baseline",
    ]
    assert all(len(row[28:].split()) == 2 for row in rows)


def test_the_bench_adds_latency_to_the_sync_scenarios_only() -> None:
    with pytest.raises(SystemExit) as exited:
        load_bench().main(["--scenario", "resume", "--latency", "50"])

    assert exited.value.code == 2


def test_another_message_writer_gets_its_own_record_lines(config: dict[str, t.Any]) -> None:
    # The fast path writes msgspec's bytes itself; with any other writer it must step aside.
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(buffer, encoding="utf-8")) as out:
        settings = {**config, "modes": ["live"]}
        tap = TapSmartcarConnections(config=settings, message_writer=SingerWriter())
        tap.sync_all()
        out.flush()
    lines = [line for line in buffer.getvalue().decode().splitlines() if '"RECORD"' in line]

    assert len(lines) == 121
    for line in lines:
        message = json.loads(line)
        stamp = datetime.fromisoformat(message["time_extracted"])
        expected = SingerWriter().format_message(
            RecordMessage(stream="connections", record=message["record"], time_extracted=stamp)
        )
        assert line == expected


def test_a_writer_subclass_receives_every_record(config: dict[str, t.Any]) -> None:
    written: list[t.Any] = []

    class Recording(MsgSpecWriter):
        def write_message(self, message: t.Any) -> None:
            written.append(message)

    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(buffer, encoding="utf-8")) as out:
        TapSmartcarConnections(config=config, message_writer=Recording()).sync_all()
        out.flush()

    assert buffer.getvalue() == b""
    assert sum(isinstance(m, RecordMessage) for m in written) == 250
