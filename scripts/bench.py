"""Benchmark the tap's full sync against a minimal `requests` loop on the bundled simulator.

Starts `python -m tap_smartcar_connections.simulator` as a separate process, then times, in
alternated pairs, two child processes that both read every page (limit=100, live and simulated,
following cursors) and write one JSON line per connection to a pipe this script drains:

- baseline: a plain `requests.Session` loop writing `json.dumps(connection)` lines;
- tap: the real console script, `tap-smartcar-connections --config FILE`.

Each run is checked (exit code, records written, requests per mode from the simulator's log,
every response a 200); the script exits non-zero if any check fails. Timings are wall clock,
process start to exit, so the tap's import time counts. Peak RSS is the child's `VmHWM`.

    .venv/bin/python scripts/bench.py [--connections N] [--pairs K]
"""

from __future__ import annotations

import argparse
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
_LISTENING = re.compile(r"listening on (\S+) \((\d+) connections\)")


@dataclass
class Run:
    """One timed child process and what it wrote."""

    kind: str
    seconds: float
    exit_code: int
    records: int
    peak_rss_mb: float
    requests: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Records per second, start to exit."""
        return self.records / self.seconds if self.seconds else 0.0


class Simulator:
    """The simulator as a separate process, with its admin endpoints."""

    def __init__(self, connections: int) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tap_smartcar_connections.simulator",
                "--connections",
                str(connections),
                "--token",
                TOKEN,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            self.stop()
            msg = f"the simulator did not start (it said {line!r})"
            raise SystemExit(msg)
        self.api_url = match[1]
        self.connections = int(match[2])
        self.admin_url = self.api_url.removesuffix("/v2.0") + "/_admin"
        self.session = requests.Session()

    def clear_log(self) -> None:
        """Forget the requests logged so far."""
        self.session.delete(f"{self.admin_url}/requests", timeout=60).raise_for_status()

    def log(self) -> list[dict[str, t.Any]]:
        """Return the API requests logged since the last `clear_log`."""
        response = self.session.get(f"{self.admin_url}/requests", timeout=600)
        response.raise_for_status()
        entries: list[dict[str, t.Any]] = response.json()
        return entries

    def stop(self) -> None:
        """Stop the simulator process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_baseline(api_url: str) -> None:
    """Fetch every page with a plain `requests.Session`, one JSON line per connection."""
    session = requests.Session()
    session.auth = ("default", TOKEN)
    out = sys.stdout.buffer
    for mode in MODES:
        cursor: str | None = None
        while True:
            params: dict[str, t.Any] = {"limit": PAGE_SIZE, "mode": mode}
            if cursor:
                params["cursor"] = cursor
            response = session.get(f"{api_url}/management/connections", params=params, timeout=60)
            response.raise_for_status()
            body = response.json()
            for connection in body["connections"]:
                out.write(json.dumps(connection).encode() + b"\n")
            cursor = body["paging"]["cursor"]
            if cursor is None:
                break
    out.flush()


def _drain(fd: int, *, records_are_lines: bool) -> int:
    """Read a child's stdout to the end, counting records."""
    records = 0
    rest = b""
    while chunk := os.read(fd, 1 << 20):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        records += complete.count(b"\n") if records_are_lines else complete.count(RECORD_MARK)
    return records


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
            records = _drain(process.stdout.fileno(), records_are_lines=kind == "baseline")
            process.wait()
        finally:
            watchdog.cancel()
            peak.done.set()
        seconds = time.perf_counter() - started
        peak.join()
    process.stdout.close()
    return Run(kind, seconds, process.returncode, records, peak.peak_kb / 1024)


def check(run: Run, entries: list[dict[str, t.Any]], connections: int, stderr: str) -> None:
    """Compare a run's output and requests with what a complete, minimal sync must give.

    Args:
        run: The run; `requests` and `problems` are filled in.
        entries: The simulator's request log for the run.
        connections: How many connections the simulator holds.
        stderr: The run's stderr, quoted when it failed.
    """
    served: dict[str, int] = {}
    for entry in entries:
        mode = entry["params"].get("mode", "live")
        run.requests[mode] = run.requests.get(mode, 0) + 1
        served[mode] = served.get(mode, 0) + int(entry["count"])
    if run.exit_code != 0:
        tail = stderr.splitlines()[-5:]
        run.problems.append(f"exit code {run.exit_code}: " + " | ".join(tail))
    if run.records != connections:
        run.problems.append(f"{run.records} records written, expected {connections}")
    if sum(served.values()) != connections:
        run.problems.append(f"{sum(served.values())} connections served")
    if bad := [e["status"] for e in entries if e["status"] != 200]:
        run.problems.append(f"non-200 responses: {sorted(set(bad))}")
    for mode in MODES:
        expected = max(1, math.ceil(served.get(mode, 0) / PAGE_SIZE))
        if run.requests.get(mode, 0) != expected:
            run.problems.append(f"{run.requests.get(mode, 0)} {mode} requests, expected {expected}")


def _describe(run: Run) -> str:
    requests_text = " + ".join(f"{run.requests.get(m, 0)} {m}" for m in MODES)
    verdict = "ok" if not run.problems else "FAILED: " + "; ".join(run.problems)
    return (
        f"  {run.kind:<8} {run.seconds:7.2f} s {run.rate:9,.0f} records/s "
        f"peak RSS {run.peak_rss_mb:6.1f} MB  requests {requests_text}  {verdict}"
    )


def summarise(pairs: list[tuple[Run, Run]], connections: int) -> None:
    """Print the medians, the tap/baseline ratio and the peak RSS."""
    baselines = [b for b, _ in pairs]
    taps = [tap for _, tap in pairs]
    ratio = statistics.median(tap.seconds / b.seconds for b, tap in pairs)
    requests_text = ", ".join(f"{taps[-1].requests.get(m, 0)} {m}" for m in MODES)
    print(f"\nconnections:         {connections:,} ({len(pairs)} pairs, medians)")
    print(f"baseline records/s:  {statistics.median(r.rate for r in baselines):,.0f}")
    print(f"tap records/s:       {statistics.median(r.rate for r in taps):,.0f}")
    print(f"ratio tap/baseline:  {ratio:.2f} (time)")
    print(f"tap peak RSS:        {max(r.peak_rss_mb for r in taps):.1f} MB")
    print(f"baseline peak RSS:   {max(r.peak_rss_mb for r in baselines):.1f} MB")
    print(f"tap requests:        {requests_text}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 if any run wrote the wrong records or requests."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000, help="simulated connections")
    parser.add_argument("--pairs", type=int, default=3, help="alternated baseline/tap pairs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--baseline-worker", metavar="API_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        run_baseline(args.baseline_worker)
        return 0

    tap_script = str(Path(sys.executable).with_name("tap-smartcar-connections"))
    print(f"Starting the simulator with {args.connections:,} connections...", flush=True)
    simulator = Simulator(args.connections)
    failed = False
    pairs: list[tuple[Run, Run]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tap-bench-") as tmp:
            config = Path(tmp, "config.json")
            settings = {
                "management_token": TOKEN,
                "api_url": simulator.api_url,
                "modes": list(MODES),
                "max_retry_seconds": 10,
            }
            config.write_text(json.dumps(settings), encoding="utf-8")
            commands = {
                "baseline": [sys.executable, __file__, "--baseline-worker", simulator.api_url],
                "tap": [tap_script, "--config", str(config)],
            }
            for index in range(args.pairs):
                order = ("baseline", "tap") if index % 2 == 0 else ("tap", "baseline")
                results: dict[str, Run] = {}
                print(f"pair {index + 1}/{args.pairs}", flush=True)
                for kind in order:
                    simulator.clear_log()
                    log_path = Path(tmp, f"{kind}.stderr")
                    run = timed_run(kind, commands[kind], log_path, args.timeout)
                    stderr = log_path.read_text(encoding="utf-8", errors="replace")
                    check(run, simulator.log(), simulator.connections, stderr)
                    failed = failed or bool(run.problems)
                    results[kind] = run
                    print(_describe(run), flush=True)
                pairs.append((results["baseline"], results["tap"]))
    finally:
        simulator.stop()
    summarise(pairs, simulator.connections)
    if failed:
        print("\nFAILED: a run wrote the wrong records or made the wrong requests", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
