"""Benchmark the tap's full sync against a minimal `requests` loop on the bundled simulator.

Starts `python -m smartcar_simulator` as a separate process, then times, in
alternated pairs, two child processes that both read every page (limit=100, live and simulated,
following cursors) and write one JSON line per connection to a pipe this script drains:

- baseline: a plain `requests.Session` loop writing `json.dumps(connection)` lines;
- tap: the real console script, `tap-smartcar-connections --config FILE`.

Each run is checked (exit code, records written, requests per mode from the simulator's log,
every response a 200); the script exits non-zero if any check fails. Timings are wall clock,
process start to exit, so the tap's import time counts. Peak RSS is the child's `VmHWM`.

    .venv/bin/python scripts/bench.py [--connections N] [--pairs K]

`--scenario resume` instead measures an interrupted first sync of N live connections under
Smartcar's rate-limit bucket (120 requests, refilled at 2 a minute), the refill sped up
`--time-scale` times: the tap is stopped (SIGTERM, or a permanent 500 with
`--interrupt error`) after `--interrupt-at` of the pages, then rerun twice from the same,
drained bucket: with the last STATE as emitted (resume), and with its `checkpoint` removed
(restart, what the previous release did). It reports requests, wall time (and the real time it
stands for), records, and exits non-zero unless every connection was delivered by the
interrupted run and each rerun together.

    .venv/bin/python scripts/bench.py --scenario resume [--connections N] [--time-scale S]
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

    def __init__(self, connections: int, extra: t.Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smartcar_simulator",
                "--connections",
                str(connections),
                "--token",
                TOKEN,
                *extra,
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
        bucket is emptied by requests of one connection each. Call `clear_log` afterwards.
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


@dataclass
class Leg:
    """One tap run of the resume scenario: what it wrote and what the simulator logged."""

    name: str
    seconds: float
    exit_code: int
    records: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)
    last_state: dict[str, t.Any] | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    waited: float = 0.0
    """Seconds between each 429 and the request after it."""
    start_tokens: float = 0.0
    """Tokens in the bucket when the run started."""

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
        while True:
            try:
                process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.perf_counter() - started > timeout:
                process.kill()
            elif interrupt is not None and interrupt():
                process.send_signal(signal.SIGTERM)
                interrupt = None
        seconds = time.perf_counter() - started
    leg = Leg(name, seconds, process.returncode)
    with out_path.open("rb") as lines:
        for line in lines:
            if line.startswith(RECORD_MARK):
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
        f"records {leg.records:,}{extra}"
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

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
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
            f"resume scenario: {connections:,} live connections ({self.pages} pages), bucket "
            f"{args.bucket} refilled at {args.refill_per_minute:g}/min x {self.scale:g} = "
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
            "management_token": TOKEN,
            "api_url": self.simulator.api_url,
            "modes": ["live"],
            "page_size": PAGE_SIZE,
            # Long enough for any one Retry-After, short enough that --interrupt error ends soon.
            "max_retry_seconds": max(10, math.ceil(3 * 60 / self.refill)),
        }
        config.write_text(json.dumps(settings), encoding="utf-8")
        tap_script = str(Path(sys.executable).with_name("tap-smartcar-connections"))
        self.command = [tap_script, "--config", str(config)]
        self.problems: list[str] = []

    def _read_enough(self) -> bool:
        good = sum(int(entry["status"] == 200) for entry in self.simulator.log())
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

    def run(self) -> int:
        """Run all three legs; return 1 if a check failed."""
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
            f"\nresume vs restart: {resume.requests} vs {restart.requests} requests "
            f"({resume.pages} vs {restart.pages} pages), {resume.seconds:.1f} vs "
            f"{restart.seconds:.1f} s wall at x{self.scale:g}, standing for "
            f"{resume.real(real) / 60:.1f} vs {restart.real(real) / 60:.1f} min at "
            f"{real:g} requests/min",
            flush=True,
        )
        if self.problems:
            print("\nFAILED: " + "; ".join(self.problems), flush=True)
            return 1
        return 0


def run_resume_scenario(args: argparse.Namespace) -> int:
    """Interrupt a rate-limited first sync, then compare resuming with restarting."""
    with tempfile.TemporaryDirectory(prefix="tap-bench-resume-") as tmp:
        return ResumeScenario(args, Path(tmp)).run()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 if any run wrote the wrong records or requests."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=("sync", "resume"),
        default="sync",
        help="sync: tap vs baseline full sync; resume: interrupt, then resume vs restart",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="simulated connections (default 100,000; resume: 30,000 live)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="alternated baseline/tap pairs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
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
    parser.add_argument("--baseline-worker", metavar="API_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        run_baseline(args.baseline_worker)
        return 0
    if args.scenario == "resume":
        return run_resume_scenario(args)
    args.connections = args.connections or 100_000

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
