"""Benchmark the tap's syncs against a minimal `requests` loop on the bundled simulator.

Starts `python -m smartcar_simulator` as a separate process, then times, in alternated
rounds, child processes that all read every page (100 items a page, live and simulated,
following the cursors or `links.next`) and write one JSON line per item to a pipe this script
drains:

- baseline: a plain `requests.Session` loop writing `json.dumps(item)` lines (under v3 it
  fetches one access token first, and reads webhooks and subscriptions too);
- tap: the real console script, `tap-smartcar-connections --config FILE`.

`--api v2` (the default) times API v2.0, `--api v3` the simulator's v3 face, `--api both` both
in the same rounds, so that their ratios (v3 tap / v2 tap, each tap / its baseline) come from
one run on one machine. `--compare-tap SCRIPT` also times another build's console script (an
older checkout's `.venv/bin/tap-smartcar-connections`) in each round, under v2.

Each run is checked (exit code, records written, requests per mode and list from the
simulator's log, every response a 200); the script exits non-zero if any check fails. Timings
are wall clock, process start to exit, so the tap's import time counts; CPU is the child's
user + system time (`wait4`), which a busy machine disturbs less than the wall clock. Peak RSS
is the child's `VmHWM`.

    .venv/bin/python scripts/bench.py [--api v2|v3|both] [--connections N] [--pairs K]
                                      [--latency MS[,MS...]]

On loopback a page costs the simulator almost nothing, so the tap's CPU decides; a real page
takes tens to hundreds of milliseconds. `--latency 50` has the simulator wait 50 ms before
answering each request (every page, the v3 token, the webhooks and subscriptions), the same
for the tap and the baseline; each run is checked to have waited it out on every request (no
request arrived sooner than that after the one before). `--latency 0,50` runs every round at
each latency in turn (their order reversed every other round too), then prints each
latency's medians and ratios and a table of the time ratios side by side, so that both come
from one run on one machine. With a latency above 0 the default is 20,000 connections (200
pages of 100, 10 s a run at 50 ms) instead of 100,000; pass `--connections` to choose, and the
same count to compare loopback figures between runs, as the tap's start-up weighs more in a
short run.

`--scenario incremental` times a sync with nothing new: each API's tap is first run once to
the end, then K times from the STATE it emitted (one page per mode, no RECORD of a connection).

`--scenario resume` instead measures an interrupted first sync of N live connections under
Smartcar's rate-limit bucket (120 requests, refilled at 2 a minute), the refill sped up
`--time-scale` times: the tap is stopped (SIGTERM, or a permanent 500 with
`--interrupt error`) after `--interrupt-at` of the pages, then rerun twice from the same,
drained bucket: with the last STATE as emitted (resume), and with its `checkpoint` removed
(restart, what the previous release did). It reports requests, wall time (and the real time it
stands for), records, and exits non-zero unless every connection was delivered by the
interrupted run and each rerun together. With `--api both`, v2 then v3, each on a new simulator.

    .venv/bin/python scripts/bench.py --scenario resume [--api ...] [--connections N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import requests

TOKEN = "bench-token"  # noqa: S105 -- the local simulator's fake token
MODES = ("live", "simulated")
PAGE_SIZE = 100
RECORD_MARK = b'{"type":"RECORD"'
CONNECTION_MARK = b'{"type":"RECORD","stream":"connections",'
_LISTENING = re.compile(r"listening on (\S+) \((\d+) connections\)")
_V3_SETTINGS = (
    "client_id",
    "client_secret",
    "v3_token_url",
    "v3_vehicle_api_url",
    "v3_management_api_url",
)


@dataclass
class Run:
    """One timed child process and what it wrote."""

    kind: str
    seconds: float
    exit_code: int
    records: int
    peak_rss_mb: float
    requests: dict[str, int] = field(default_factory=dict)
    """Requests for connections, per mode."""
    problems: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """User + system time of the child."""
    connection_records: int | None = None
    """RECORD lines of the `connections` stream (None for a baseline, which writes items)."""
    api: str = "v2"
    other_requests: dict[str, int] = field(default_factory=dict)
    """Requests for anything else (the v3 token, webhooks, subscriptions per mode)."""

    @property
    def rate(self) -> float:
        """Records per second, start to exit."""
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_record(self) -> float:
        """CPU microseconds per record written (all of the run's CPU, start-up included)."""
        return self.cpu_seconds / self.records * 1e6 if self.records else math.nan


class Simulator:
    """The simulator as a separate process, with its admin endpoints and every URL."""

    def __init__(self, connections: int, extra: t.Sequence[str] = ()) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tap-bench-sim-")
        settings_path = Path(self._dir.name, "settings.json")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smartcar_simulator",
                "--connections",
                str(connections),
                "--token",
                TOKEN,
                "--settings-file",
                str(settings_path),
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = _LISTENING.search(line)
        deadline = time.monotonic() + 30
        while match is not None and not settings_path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # written just after the line above
        if match is None or not settings_path.exists():
            self.stop()
            msg = f"the simulator did not start (it said {line!r})"
            raise SystemExit(msg)
        self.settings: dict[str, str] = json.loads(settings_path.read_text(encoding="utf-8"))
        self.api_url = self.settings["api_url"]
        self.connections = int(match[2])
        self.admin_url = match[1] + "/_admin"
        self.session = requests.Session()

    def tap_settings(self, api: str, modes: t.Sequence[str] = MODES) -> dict[str, t.Any]:
        """The tap's settings for reading this simulator through `api` (v2 or v3)."""
        if api == "v3":
            credentials = {name: self.settings[name] for name in _V3_SETTINGS}
            return {"api_version": "v3", **credentials, "modes": list(modes)}
        return {"management_token": TOKEN, "api_url": self.api_url, "modes": list(modes)}

    def clear_log(self) -> None:
        """Forget the requests logged so far."""
        self.session.delete(f"{self.admin_url}/requests", timeout=60).raise_for_status()

    def log(self) -> list[dict[str, t.Any]]:
        """Return the API requests logged since the last `clear_log`."""
        response = self.session.get(f"{self.admin_url}/requests", timeout=600)
        response.raise_for_status()
        entries: list[dict[str, t.Any]] = response.json()
        return entries

    def set_faults(self, **faults: t.Any) -> None:
        """Replace the fault knobs (omitted ones go back to their defaults).

        The token bucket keeps its tokens as long as its capacity does not change.
        """
        response = self.session.put(f"{self.admin_url}/faults", json=faults, timeout=60)
        response.raise_for_status()

    def drain_bucket(self) -> int:
        """Take the rate-limit bucket's tokens until it answers 429; return the requests made.

        The simulator has no admin route to set the bucket, and a new simulator process would
        start with a full bucket and a new cursor key (refusing the checkpoint's cursor), so the
        bucket is emptied by requests of one connection each (v2: both faces share the bucket).
        Call `clear_log` afterwards.
        """
        made = 0
        while True:
            response = self.session.get(
                f"{self.api_url}/management/connections",
                params={"limit": "1", "mode": "live"},
                auth=("default", TOKEN),
                timeout=60,
            )
            made += 1
            if response.status_code == 429:
                return made
            response.raise_for_status()

    def stop(self) -> None:
        """Stop the simulator process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._dir.cleanup()


def run_baseline(config: dict[str, t.Any]) -> None:
    """Fetch every page with a plain `requests.Session`, one JSON line per item."""
    if config.get("api_version") == "v3":
        run_baseline_v3(config)
        return
    session = requests.Session()
    session.auth = ("default", config["management_token"])
    out = sys.stdout.buffer
    for mode in config["modes"]:
        cursor: str | None = None
        while True:
            params: dict[str, t.Any] = {"limit": PAGE_SIZE, "mode": mode}
            if cursor:
                params["cursor"] = cursor
            response = session.get(
                f"{config['api_url']}/management/connections", params=params, timeout=60
            )
            response.raise_for_status()
            body = response.json()
            for connection in body["connections"]:
                out.write(json.dumps(connection).encode() + b"\n")
            cursor = body["paging"]["cursor"]
            if cursor is None:
                break
    out.flush()


def run_baseline_v3(config: dict[str, t.Any]) -> None:
    """Fetch an access token, then every page of the three v3 lists, following `links.next`."""
    session = requests.Session()
    form = {
        "grant_type": "client_credentials",
        "client_id": config["client_id"],
        "client_secret": config["client_secret"],
    }
    response = session.post(config["v3_token_url"], data=form, timeout=60)
    response.raise_for_status()
    session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    vehicle, management = config["v3_vehicle_api_url"], config["v3_management_api_url"]
    lists: list[tuple[str, str | None]] = [(f"{vehicle}/connections", m) for m in config["modes"]]
    lists += [(f"{management}/webhooks", None)]
    lists += [(f"{management}/subscriptions", m) for m in config["modes"]]
    out = sys.stdout.buffer
    for url, mode in lists:
        params: dict[str, t.Any] = {"page[size]": PAGE_SIZE}
        if mode is not None:
            params["filter[vehicle.mode]"] = mode
        next_url: str | None = url
        while next_url is not None:
            response = session.get(next_url, params=params, timeout=60)
            response.raise_for_status()
            body = response.json()
            for item in body["data"]:
                out.write(json.dumps(item).encode() + b"\n")
            next_url, params = body["links"]["next"], {}
    out.flush()


def _drain(fd: int, *, records_are_lines: bool) -> tuple[int, int]:
    """Read a child's stdout to the end, counting records and `connections` records."""
    records = connections = 0
    rest = b""
    while chunk := os.read(fd, 1 << 20):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        if records_are_lines:
            records += complete.count(b"\n")
        else:
            records += complete.count(RECORD_MARK)
            connections += complete.count(CONNECTION_MARK)
    return records, connections


class PeakRSS(threading.Thread):
    """Poll a process's `VmHWM` (its peak RSS since exec) until it exits.

    `wait4`'s `ru_maxrss` is no good here: Linux carries the parent's RSS into a child that
    was forked (or vforked) from it, so a child would look at least as big as this script.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        """Read the peak every few milliseconds; it only grows, so the last read is close."""
        while not self.done.wait(0.005):
            try:
                text = self.status.read_text(encoding="ascii")
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))


def _reap(process: subprocess.Popen[bytes], options: int = 0) -> float | None:
    """Wait for the child with `wait4`; return its CPU seconds, or None if it still runs."""
    pid, status, usage = os.wait4(process.pid, options)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def timed_run(kind: str, command: list[str], log_path: Path, timeout: float) -> Run:
    """Run one child to exit, draining its stdout; return its timing, output and peak RSS."""
    with log_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        assert process.stdout is not None
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        peak = PeakRSS(process.pid)
        peak.start()
        try:
            records, connections = _drain(
                process.stdout.fileno(), records_are_lines="baseline" in kind
            )
            cpu = _reap(process) or 0.0
        finally:
            watchdog.cancel()
            peak.done.set()
        seconds = time.perf_counter() - started
        peak.join()
    process.stdout.close()
    run = Run(kind, seconds, process.returncode, records, peak.peak_kb / 1024, cpu_seconds=cpu)
    run.api = "v3" if "v3" in kind else "v2"
    run.connection_records = None if "baseline" in kind else connections
    return run


def _list_of(entry: dict[str, t.Any]) -> tuple[str, str]:
    """What a logged request read: ("connections", mode), ("webhooks", ""), ("token", "")..."""
    name = str(entry.get("path", "connections")).rstrip("/").rsplit("/", 1)[-1]
    params = entry["params"]
    if name in ("token", "webhooks"):
        return name, ""
    return name, str(params.get("mode") or params.get("filter[vehicle.mode]") or "live")


def check(
    run: Run,
    entries: list[dict[str, t.Any]],
    connections: int,
    stderr: str,
    *,
    incremental: bool = False,
    latency: float = 0.0,
) -> None:
    """Compare a run's output and requests with what a complete, minimal sync must give.

    A full read asks for ceil(n/100) pages (at least one) of each list and mode, and writes
    what was served. An incremental one with nothing new reads one page of connections per
    mode and writes none of them (the other lists are read whole every run). Under v3 the
    run also fetches exactly one access token and reads webhooks and subscriptions.

    Args:
        run: The run; `requests`, `other_requests` and `problems` are filled in.
        entries: The simulator's request log for the run.
        connections: How many connections the simulator holds.
        stderr: The run's stderr, quoted when it failed.
        incremental: The run started from the STATE of a complete one, with nothing new.
        latency: Seconds the simulator was told to wait before each answer (see
            `_latency_problem`).
    """
    served: dict[tuple[str, str], int] = {}
    made: dict[tuple[str, str], int] = {}
    for entry in entries:
        where = _list_of(entry)
        made[where] = made.get(where, 0) + 1
        served[where] = served.get(where, 0) + int(entry["count"])
    run.requests = {mode: n for (name, mode), n in made.items() if name == "connections"}
    run.other_requests = {
        f"{name} {mode}".strip(): n for (name, mode), n in made.items() if name != "connections"
    }
    if run.exit_code != 0:
        tail = stderr.splitlines()[-5:]
        run.problems.append(f"exit code {run.exit_code}: " + " | ".join(tail))
    served_connections = sum(n for (name, _), n in served.items() if name == "connections")
    others = sum(served.values()) - served_connections
    if incremental:
        if run.connection_records != 0:
            run.problems.append(f"{run.connection_records} connections written, expected none")
        if run.records - (run.connection_records or 0) != others:
            run.problems.append(f"{run.records} records written, expected {others}")
    else:
        if run.records != connections + others:
            run.problems.append(f"{run.records} records written, expected {connections + others}")
        if served_connections != connections:
            run.problems.append(f"{served_connections} connections served")
    if bad := [e["status"] for e in entries if e["status"] != 200]:
        run.problems.append(f"non-200 responses: {sorted(set(bad))}")
    if problem := _latency_problem(entries, latency):
        run.problems.append(problem)
    for where, expected in _expected_requests(run.api, served, incremental=incremental).items():
        if made.get(where, 0) != expected:
            text = " ".join(where).strip()
            run.problems.append(f"{made.get(where, 0)} {text} requests, expected {expected}")


def _latency_problem(entries: list[dict[str, t.Any]], latency: float) -> str | None:
    """Say so if two of a run's requests arrived less than `latency` seconds apart.

    The tap and the baseline send one request at a time, and the simulator logs a request's
    arrival before waiting `latency` to answer it, so with the latency really added no request
    can arrive sooner after the one before: this checks that both paid it on every request,
    without timing anything against a threshold.
    """
    if latency <= 0 or len(entries) < 2:
        return None
    arrivals = sorted(float(entry["time"]) for entry in entries)
    gap = min(later - earlier for earlier, later in itertools.pairwise(arrivals))
    if gap >= latency:
        return None
    return (
        f"requests {gap * 1000:.1f} ms apart, less than the {latency * 1000:g} ms latency: "
        "the simulator did not add it, or the requests overlapped"
    )


def _expected_requests(
    api: str, served: dict[tuple[str, str], int], *, incremental: bool
) -> dict[tuple[str, str], int]:
    """The requests a minimal run makes per list and mode: none for a list it must not read."""
    lists = [("connections", mode) for mode in MODES]
    if api == "v3":
        lists += [("token", ""), ("webhooks", ""), *(("subscriptions", m) for m in MODES)]
    expected = dict.fromkeys(served, 0)
    for where in lists:
        pages = max(1, math.ceil(served.get(where, 0) / PAGE_SIZE))
        one = where[0] == "token" or (incremental and where[0] == "connections")
        expected[where] = 1 if one else pages
    return expected


def _describe(run: Run, *, incremental: bool = False) -> str:
    requests_text = " + ".join(f"{run.requests.get(m, 0)} {m}" for m in MODES)
    if others := sum(run.other_requests.values()):
        requests_text += f" (+ {others} other)"
    verdict = "ok" if not run.problems else "FAILED: " + "; ".join(run.problems)
    output = (
        f"{run.records:3d} records"  # the other v3 lists, read whole every run
        if incremental
        else f"{run.rate:9,.0f} records/s"
    )
    per_record = "" if incremental else f" {run.cpu_per_record:6.1f} us/record"
    return (
        f"  {run.kind:<11} {run.seconds:7.2f} s {output} CPU {run.cpu_seconds:6.2f} s"
        f"{per_record} peak RSS {run.peak_rss_mb:6.1f} MB  requests {requests_text}  {verdict}"
    )


def _median_ratio(
    rounds: list[dict[str, Run]], top: str, bottom: str, measure: t.Callable[[Run], float]
) -> float:
    return statistics.median(measure(r[top]) / measure(r[bottom]) for r in rounds)


def summarise(
    rounds: list[dict[str, Run]],
    connections: int,
    *,
    incremental: bool = False,
    latency_ms: float = 0.0,
) -> None:
    """Print each kind's medians, then the ratios between kinds within the same rounds.

    A ratio is the median of the per-round ratios: runs of one round are minutes apart at
    most, so a machine that is busier in one round than in another disturbs it little.
    """
    kinds = list(rounds[0])
    what = "incremental syncs with nothing new" if incremental else "full syncs"
    print(
        f"\n{what}, {connections:,} connections, {_latency_label(latency_ms)} "
        f"({len(rounds)} rounds, medians):"
    )
    rate_name, per_record_name = ("records", "") if incremental else ("records/s", "CPU us/record")
    print(
        f"  {'':<11} {'wall s':>7} {rate_name:>10} {'CPU s':>7} {per_record_name:>14} "
        f"{'peak RSS MB':>12}  requests (live + simulated + other)"
    )
    for kind in kinds:
        runs = [r[kind] for r in rounds]
        last = runs[-1]
        requests_text = " + ".join(str(last.requests.get(m, 0)) for m in MODES)
        requests_text += f" + {sum(last.other_requests.values())}"
        rate = f"{last.records:10,}" if incremental else f"{statistics.median(_rates(runs)):10,.0f}"
        per_record = statistics.median(r.cpu_per_record for r in runs)
        print(
            f"  {kind:<11} {statistics.median(r.seconds for r in runs):7.2f} {rate} "
            f"{statistics.median(r.cpu_seconds for r in runs):7.2f} "
            f"{'' if incremental else f'{per_record:.1f}':>14} "
            f"{max(r.peak_rss_mb for r in runs):12.1f}  {requests_text}"
        )
    # With nothing new there are (almost) no records: compare whole runs instead.
    cpu_name = "CPU" if incremental else "CPU per record"
    if ratios := _ratios(rounds, incremental=incremental):
        print("ratios (medians of the per-round ratios):")
        for name, wall, cpu in ratios:
            print(f"  {name:<26} time {wall:5.2f}  {cpu_name} {cpu:5.2f}")


def _ratios(
    rounds: list[dict[str, Run]], *, incremental: bool = False
) -> list[tuple[str, float, float]]:
    """Each pair of kinds present: its name, time ratio and CPU (per record) ratio."""
    pairs = [(f"{api} tap", f"{api} baseline") for api in ("v2", "v3")]
    pairs += [("v3 tap", "v2 tap"), ("v3 baseline", "v2 baseline"), ("v2 tap", "v2 other")]
    if incremental:
        pairs = [("v3 tap", "v2 tap"), ("v2 tap", "v2 other")]
    cpu = _cpu if incremental else _cpu_per_record
    return [
        (
            f"{top} / {bottom}",
            _median_ratio(rounds, top, bottom, _wall),
            _median_ratio(rounds, top, bottom, cpu),
        )
        for top, bottom in pairs
        if top in rounds[0] and bottom in rounds[0]
    ]


def side_by_side(rounds: dict[float, list[dict[str, Run]]], *, incremental: bool = False) -> None:
    """Print every time ratio at each latency in one table.

    On loopback the tap's CPU shows; at a real API's latency the waiting dominates. The
    columns come from the same rounds on the same machine, so they compare fairly.
    """
    table = {
        ms: {name: wall for name, wall, _ in _ratios(at, incremental=incremental)}
        for ms, at in rounds.items()
    }
    print("\ntime ratios by latency (medians of the per-round ratios):")
    print(f"  {'':<26}" + "".join(f"{_latency_label(ms, short=True):>10}" for ms in table))
    for name in next(iter(table.values())):
        print(f"  {name:<26}" + "".join(f"{column[name]:10.2f}" for column in table.values()))


def _latency_label(latency_ms: float, *, short: bool = False) -> str:
    if latency_ms == 0:
        return "loopback"
    return f"{latency_ms:g} ms" if short else f"{latency_ms:g} ms a request"


def _rates(runs: list[Run]) -> list[float]:
    return [run.rate for run in runs]


def _wall(run: Run) -> float:
    return run.seconds


def _cpu(run: Run) -> float:
    return run.cpu_seconds


def _cpu_per_record(run: Run) -> float:
    return run.cpu_per_record


@dataclass
class Leg:
    """One tap run of the resume scenario: what it wrote and what the simulator logged."""

    name: str
    seconds: float
    exit_code: int
    records: int = 0
    """RECORD lines of `connections` (other streams' are not counted)."""
    keys: set[tuple[str, str]] = field(default_factory=set)
    last_state: dict[str, t.Any] | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    waited: float = 0.0
    """Seconds between each 429 and the request after it."""
    start_tokens: float = 0.0
    """Tokens in the bucket when the run started."""
    cpu_seconds: float = 0.0

    @property
    def requests(self) -> int:
        """Every API request the simulator logged for the run."""
        return sum(self.statuses.values())

    @property
    def pages(self) -> int:
        """Requests answered 200."""
        return self.statuses.get(200, 0)

    def real(self, refill_per_minute: float) -> float:
        """The wall time the run stands for at Smartcar's real refill rate.

        The run's own work (wall time less the waits after 429s: start-up, requests, output)
        takes as long at any refill rate; on top of it, the real bucket must refill every page
        beyond the tokens it started with. At a sped-up refill the bucket also refills during
        start-up, and Retry-After is whole seconds, so scaling the measured waits would not do.

        Args:
            refill_per_minute: The real refill rate.
        """
        refills = max(0.0, self.pages - self.start_tokens) * 60 / refill_per_minute
        return self.seconds - self.waited + refills


def run_leg(
    name: str,
    command: list[str],
    workdir: Path,
    timeout: float,
    interrupt: t.Callable[[], bool] | None = None,
) -> Leg:
    """Run the tap to exit, sending SIGTERM once `interrupt()` is true; parse what it wrote."""
    out_path, err_path = workdir / f"{name}.jsonl", workdir / f"{name}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        while (cpu := _reap(process, os.WNOHANG)) is None:
            time.sleep(0.05)
            if time.perf_counter() - started > timeout:
                process.kill()
            elif interrupt is not None and interrupt():
                process.send_signal(signal.SIGTERM)
                interrupt = None
        seconds = time.perf_counter() - started
    leg = Leg(name, seconds, process.returncode, cpu_seconds=cpu)
    with out_path.open("rb") as lines:
        for line in lines:
            if line.startswith(CONNECTION_MARK):
                record = json.loads(line)["record"]
                leg.records += 1
                leg.keys.add((record["userId"], record["vehicleId"]))
            elif line.startswith(b'{"type":"STATE"'):
                leg.last_state = json.loads(line)["value"]
    if leg.exit_code not in (0, 1, 128 + signal.SIGTERM):
        print(err_path.read_text(encoding="utf-8", errors="replace")[-2000:], file=sys.stderr)
    return leg


def log_into(leg: Leg, entries: list[dict[str, t.Any]]) -> None:
    """Fill in a leg's response statuses and its time spent waiting after 429s."""
    entries = sorted(entries, key=lambda entry: float(entry["time"]))
    for entry, following in zip(entries, [*entries[1:], None], strict=True):
        leg.statuses[entry["status"]] = leg.statuses.get(entry["status"], 0) + 1
        if entry["status"] == 429 and following is not None:
            leg.waited += float(following["time"]) - float(entry["time"])


def _partitions(state: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    partitions: list[dict[str, t.Any]] = (
        state.get("bookmarks", {}).get("connections", {}).get("partitions", [])
    )
    return partitions


def without_checkpoints(state: dict[str, t.Any]) -> dict[str, t.Any]:
    """The state as the previous release would have left it: no partition's `checkpoint`."""
    state = json.loads(json.dumps(state))
    for partition in _partitions(state):
        partition.pop("checkpoint", None)
    return state


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:6.1f} min"


def describe_leg(leg: Leg, refill_per_minute: float, extra: str = "") -> str:
    """One line: requests, wall time (and its real equivalent), records."""
    others = sum(n for status, n in leg.statuses.items() if status not in (200, 429))
    other_text = f" + {others} other" if others else ""
    return (
        f"  {leg.name:<11} exit {leg.exit_code:>3}  requests {leg.requests:4d} "
        f"({leg.pages} pages + {leg.statuses.get(429, 0)} 429s{other_text})  "
        f"wall {leg.seconds:6.1f} s (real {_minutes(leg.real(refill_per_minute))})  "
        f"CPU {leg.cpu_seconds:5.1f} s  records {leg.records:,}{extra}"
    )


def leg_summary(leg: Leg, first: Leg, expected: set[tuple[str, str]]) -> str:
    """Connections sent again after the interruption, and delivered in all."""
    twice = len(first.keys & leg.keys) + (leg.records - len(leg.keys))
    delivered = len(expected & (first.keys | leg.keys))
    return f" ({twice:,} sent again), {delivered:,}/{len(expected):,} delivered"


def check_rerun(leg: Leg, first: Leg, expected: set[tuple[str, str]]) -> list[str]:
    """What is wrong with a rerun: its exit, its responses, its STATE, connections lost."""
    problems: list[str] = []
    missing = len(expected - (first.keys | leg.keys))
    stray = len((first.keys | leg.keys) - expected)
    if leg.exit_code != 0:
        problems.append(f"{leg.name} exit {leg.exit_code}")
    if missing or stray:
        problems.append(f"{leg.name}: {missing} connections missing, {stray} unknown")
    if bad := sorted(set(leg.statuses) - {200, 429}):
        problems.append(f"{leg.name}: responses {bad}")
    if any("checkpoint" in part for part in _partitions(leg.last_state or {})):
        problems.append(f"{leg.name}: the final STATE still has a checkpoint")
    return problems


class ResumeScenario:
    """An interrupted first sync under the rate-limit bucket, then resume and restart."""

    def __init__(self, args: argparse.Namespace, workdir: Path, api: str) -> None:
        self.args, self.workdir, self.api = args, workdir, api
        self.scale: float = args.time_scale
        connections = args.connections or 30_000
        self.pages = math.ceil(connections / PAGE_SIZE)
        self.stop_at: int = min(self.pages - 1, max(1, round(self.pages * args.interrupt_at)))
        self.refill: float = args.refill_per_minute * self.scale
        # Imported here, not at the top: the baseline worker runs this file, and its timing
        # must not include the simulator module's imports.
        from smartcar_simulator import generate_connections  # noqa: PLC0415

        data = generate_connections(connections, modes=("live",))
        self.expected = {(c["userId"], c["vehicleId"]) for c in data}
        data_path = workdir / "data.json"
        data_path.write_text(json.dumps(data), encoding="utf-8")
        self.bucket = {
            "rate_limit_bucket": args.bucket,
            "rate_limit_refill_per_minute": self.refill,
        }
        print(
            f"resume scenario, API {api}: {connections:,} live connections ({self.pages} pages), "
            f"bucket {args.bucket} refilled at {args.refill_per_minute:g}/min x {self.scale:g} = "
            f"{self.refill:g}/min, interrupt by {args.interrupt} after page {self.stop_at}",
            flush=True,
        )
        self.simulator = Simulator(
            0,
            [
                *("--data", str(data_path), "--rate-limit-bucket", str(args.bucket)),
                *("--rate-limit-refill-per-minute", str(self.refill)),
            ],
        )
        config = workdir / "config.json"
        settings = {
            **self.simulator.tap_settings(api, ("live",)),
            "page_size": PAGE_SIZE,
            # Long enough for any one Retry-After, short enough that --interrupt error ends soon.
            "max_retry_seconds": max(10, math.ceil(3 * 60 / self.refill)),
        }
        config.write_text(json.dumps(settings), encoding="utf-8")
        tap_script = str(Path(sys.executable).with_name("tap-smartcar-connections"))
        self.command = [tap_script, "--config", str(config)]
        self.problems: list[str] = []

    def _read_enough(self) -> bool:
        good = sum(
            int(entry["status"] == 200 and _list_of(entry)[0] == "connections")
            for entry in self.simulator.log()
        )
        return good >= self.stop_at

    def first_run(self) -> Leg:
        """Sync from no state with a full bucket, stopped after `stop_at` pages."""
        sigterm = self.args.interrupt == "sigterm"
        if not sigterm:
            self.simulator.set_faults(**self.bucket, fail_after_page=self.stop_at)
        self.simulator.clear_log()
        print("first sync, full bucket...", flush=True)
        first = run_leg(
            "interrupted",
            self.command,
            self.workdir,
            self.args.timeout,
            self._read_enough if sigterm else None,
        )
        first.start_tokens = self.args.bucket  # a new simulator's bucket is full
        log_into(first, self.simulator.log())
        print(describe_leg(first, self.args.refill_per_minute), flush=True)
        expected_exit = 128 + signal.SIGTERM if sigterm else 1
        if first.exit_code != expected_exit:
            self.problems.append(f"interrupted run exit {first.exit_code}, not {expected_exit}")
        if not any("checkpoint" in part for part in _partitions(first.last_state or {})):
            self.problems.append("the interrupted run's last STATE has no checkpoint")
        if not sigterm:
            self.simulator.set_faults(**self.bucket)
        return first

    def rerun(self, name: str, state: dict[str, t.Any], first: Leg) -> Leg:
        """Drain the bucket, then run the tap from `state` and check the union of records."""
        state_path = self.workdir / f"{name}.state.json"
        state_path.write_text(json.dumps(state), encoding="utf-8")
        drained = self.simulator.drain_bucket()
        self.simulator.clear_log()
        print(f"{name}: bucket drained ({drained} requests), rerunning...", flush=True)
        command = [*self.command, "--state", str(state_path)]
        leg = run_leg(name, command, self.workdir, self.args.timeout)  # starts with 0 tokens
        log_into(leg, self.simulator.log())
        summary = leg_summary(leg, first, self.expected)
        print(describe_leg(leg, self.args.refill_per_minute, summary), flush=True)
        self.problems += check_rerun(leg, first, self.expected)
        return leg

    def run(self) -> tuple[Leg, Leg] | None:
        """Run all three legs; return the resume and restart legs, or None if a check failed."""
        try:
            first = self.first_run()
            state = first.last_state or {}
            resume = self.rerun("resume", state, first)
            restart = self.rerun("restart", without_checkpoints(state), first)
        finally:
            self.simulator.stop()
        if resume.pages >= restart.pages:
            self.problems.append("resuming read as many pages as restarting: no checkpoint used")
        real = self.args.refill_per_minute
        print(
            f"\nresume vs restart, API {self.api}: {resume.requests} vs {restart.requests} "
            f"requests ({resume.pages} vs {restart.pages} pages), {resume.seconds:.1f} vs "
            f"{restart.seconds:.1f} s wall at x{self.scale:g}, standing for "
            f"{resume.real(real) / 60:.1f} vs {restart.real(real) / 60:.1f} min at "
            f"{real:g} requests/min\n",
            flush=True,
        )
        if self.problems:
            print("FAILED: " + "; ".join(self.problems) + "\n", flush=True)
            return None
        return resume, restart


def run_resume_scenario(args: argparse.Namespace) -> int:
    """Interrupt a rate-limited first sync, then compare resuming with restarting, per API."""
    legs: dict[str, tuple[Leg, Leg]] = {}
    failed = False
    for api in _apis(args):
        with tempfile.TemporaryDirectory(prefix="tap-bench-resume-") as tmp:
            result = ResumeScenario(args, Path(tmp), api).run()
        if result is None:
            failed = True
        else:
            legs[api] = result
    if len(legs) == 2:
        real = args.refill_per_minute
        (v2_resume, v2_restart), (v3_resume, v3_restart) = legs["v2"], legs["v3"]
        print(
            f"v3 / v2: resume {v3_resume.requests} / {v2_resume.requests} requests, "
            f"{v3_resume.real(real) / v2_resume.real(real):.2f} real time, CPU "
            f"{v3_resume.cpu_seconds / v2_resume.cpu_seconds:.2f}; restart "
            f"{v3_restart.requests} / {v2_restart.requests} requests, "
            f"{v3_restart.real(real) / v2_restart.real(real):.2f} real time, CPU "
            f"{v3_restart.cpu_seconds / v2_restart.cpu_seconds:.2f}",
            flush=True,
        )
    return 1 if failed else 0


def _latencies(text: str) -> tuple[float, ...]:
    """Parse `--latency`: milliseconds, one value or several separated by commas."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= value < math.inf for value in values):
        msg = f"expected milliseconds such as 50 or 0,50, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if len(set(values)) < len(values):
        msg = f"a latency is given twice in {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def _apis(args: argparse.Namespace) -> tuple[str, ...]:
    return ("v2", "v3") if args.api == "both" else (args.api,)


class Rounds:
    """The sync and incremental scenarios: alternated rounds of one run of each kind."""

    def __init__(self, args: argparse.Namespace, simulator: Simulator, workdir: Path) -> None:
        self.args, self.simulator, self.workdir = args, simulator, workdir
        self.failed = False
        tap_script = str(Path(sys.executable).with_name("tap-smartcar-connections"))
        self.configs: dict[str, Path] = {}
        for api in _apis(args):
            path = workdir / f"{api}.config.json"
            settings = {**simulator.tap_settings(api), "max_retry_seconds": 10}
            path.write_text(json.dumps(settings), encoding="utf-8")
            self.configs[api] = path
        self.commands: dict[str, list[str]] = {}
        for api, config in self.configs.items():
            if args.scenario == "sync":
                worker = [sys.executable, __file__, "--baseline-worker", str(config)]
                self.commands[f"{api} baseline"] = worker
            self.commands[f"{api} tap"] = [tap_script, "--config", str(config)]
        if args.compare_tap and "v2" in self.configs:
            self.commands["v2 other"] = [args.compare_tap, "--config", str(self.configs["v2"])]

    def run_one(
        self, kind: str, command: list[str], *, incremental: bool = False, latency_ms: float = 0
    ) -> Run:
        """Run one child on a cleared log, check it and print its line."""
        self.simulator.clear_log()
        log_path = self.workdir / f"{kind.replace(' ', '-')}.stderr"
        run = timed_run(kind, command, log_path, self.args.timeout)
        stderr = log_path.read_text(encoding="utf-8", errors="replace")
        entries, connections = self.simulator.log(), self.simulator.connections
        check(run, entries, connections, stderr, incremental=incremental, latency=latency_ms / 1000)
        self.failed = self.failed or bool(run.problems)
        print(_describe(run, incremental=incremental), flush=True)
        return run

    def prepare(self) -> None:
        """Warm the simulator's v3 encodings; for `incremental`, sync once to get each STATE.

        The simulator encodes a v3 connection the first time it serves it: without a warm-up,
        the first v3 run of a benchmark would wait for that.
        """
        if self.args.scenario == "sync":
            if "v3 baseline" in self.commands:
                print("warm-up (v3 encodings)", flush=True)
                self.run_one("v3 baseline", self.commands["v3 baseline"])
            return
        print("first syncs, to the end", flush=True)
        for api in self.configs:
            leg = run_leg(f"{api}-first", self.commands[f"{api} tap"], self.workdir, 600)
            if leg.exit_code != 0 or leg.records != self.simulator.connections:
                print(f"  FAILED: the first {api} sync: exit {leg.exit_code}, {leg.records:,}")
                self.failed = True
            state = self.workdir / f"{api}.state.json"
            state.write_text(json.dumps(leg.last_state or {}), encoding="utf-8")
            print(f"  {api} tap    {leg.seconds:7.2f} s  records {leg.records:,}", flush=True)
        for kind, command in self.commands.items():
            command += ["--state", str(self.workdir / f"{kind.split()[0]}.state.json")]

    def one_round(self, index: int, latency_ms: float) -> dict[str, Run]:
        """Run each kind once at `latency_ms`, in the order reversed every other round."""
        print(f"round {index + 1}/{self.args.pairs}, {_latency_label(latency_ms)}", flush=True)
        self.simulator.set_faults(latency=latency_ms / 1000)
        incremental = self.args.scenario == "incremental"
        kinds = list(self.commands)
        order = kinds if index % 2 == 0 else kinds[::-1]
        runs = {
            kind: self.run_one(
                kind, self.commands[kind], incremental=incremental, latency_ms=latency_ms
            )
            for kind in order
        }
        return {kind: runs[kind] for kind in kinds}

    def run(self) -> int:
        """Run the rounds, then print the medians and ratios; return 1 if a check failed.

        Every round runs each latency in turn (their order, too, reversed every other round),
        so that the ratios at each latency come from the same stretch of the machine's time.
        """
        incremental = self.args.scenario == "incremental"
        self.prepare()
        latencies: tuple[float, ...] = self.args.latency
        rounds: dict[float, list[dict[str, Run]]] = {ms: [] for ms in latencies}
        for index in range(self.args.pairs):
            for latency_ms in latencies if index % 2 == 0 else latencies[::-1]:
                rounds[latency_ms].append(self.one_round(index, latency_ms))
        if self.args.pairs:
            for latency_ms, at in rounds.items():
                summarise(
                    at, self.simulator.connections, incremental=incremental, latency_ms=latency_ms
                )
            if len(latencies) > 1:
                side_by_side(rounds, incremental=incremental)
        if self.failed:
            print(
                "\nFAILED: a run wrote the wrong records, made the wrong requests or did not wait "
                "out the latency",
                flush=True,
            )
            return 1
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=("sync", "incremental", "resume"),
        default="sync",
        help="sync: tap vs baseline full sync; incremental: a sync with nothing new; "
        "resume: interrupt, then resume vs restart",
    )
    parser.add_argument(
        "--api",
        choices=("v2", "v3", "both"),
        default="v2",
        help="the API the tap and the baseline read (both: each, in the same rounds)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="simulated connections (default 100,000, or 20,000 with a --latency above 0; "
        "resume: 30,000 live)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="alternated rounds (of each kind)")
    parser.add_argument(
        "--latency",
        type=_latencies,
        default=(0.0,),
        metavar="MS[,MS...]",
        help="milliseconds the simulator waits before answering each request (default 0); "
        "a list such as 0,50 runs every latency in each round and compares them",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument(
        "--compare-tap",
        metavar="SCRIPT",
        help="another build's tap-smartcar-connections, timed in each round under v2",
    )
    resume = parser.add_argument_group("resume scenario")
    resume.add_argument(
        "--time-scale", type=float, default=60, help="the bucket refills this many times faster"
    )
    resume.add_argument("--bucket", type=int, default=120, help="rate-limit bucket capacity")
    resume.add_argument(
        "--refill-per-minute", type=float, default=2, help="real refill rate, before scaling"
    )
    resume.add_argument(
        "--interrupt-at", type=float, default=0.8, help="fraction of the pages read first"
    )
    resume.add_argument(
        "--interrupt",
        choices=("sigterm", "error"),
        default="sigterm",
        help="SIGTERM once the simulator logged the pages, or a permanent 500 after them",
    )
    parser.add_argument("--baseline-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 if any run failed a check (records, requests, latency)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.baseline_worker:
        run_baseline(json.loads(Path(args.baseline_worker).read_text(encoding="utf-8")))
        return 0
    if args.scenario == "resume":
        if any(args.latency):
            parser.error("--latency applies to the sync and incremental scenarios")
        return run_resume_scenario(args)
    # At 50 ms a request, 100,000 connections (1,000 pages) would take a minute a run.
    args.connections = args.connections or (20_000 if any(args.latency) else 100_000)
    print(f"Starting the simulator with {args.connections:,} connections...", flush=True)
    simulator = Simulator(args.connections)
    try:
        with tempfile.TemporaryDirectory(prefix="tap-bench-") as tmp:
            return Rounds(args, simulator, Path(tmp)).run()
    finally:
        simulator.stop()


if __name__ == "__main__":
    sys.exit(main())
