"""`python -m smartcar_simulator`: serve the simulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .data import generate_connections
from .faults import Faults
from .server import SmartcarSimulator


def _read_data(path: Path) -> list[dict[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("connections")
    if not isinstance(data, list):
        raise SystemExit(f"{path}: expected a JSON list of connections")
    return data


def _write_atomically(path: Path, text: str) -> None:
    # Write then rename, so a script polling the file never reads half of it.
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m smartcar_simulator",
        description="Serve a simulated Smartcar API (Management API v2.0, API v3) on 127.0.0.1.",
    )
    parser.add_argument("--connections", type=int, default=250, help="connections to generate")
    parser.add_argument("--data", type=Path, help="JSON list of connections to serve instead")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and chaos")
    parser.add_argument("--token", default="sim-token", help="management token to accept")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--url-file", type=Path, help="write the API URL here once listening")
    parser.add_argument(
        "--settings-file",
        type=Path,
        help="write a JSON object of every URL and credential here once listening",
    )
    parser.add_argument(
        "--client-id", default="client_sim0000000000000000", help="v3 client id to accept"
    )
    parser.add_argument(
        "--client-secret", default="sim-client-secret", help="v3 client secret to accept"
    )
    parser.add_argument(
        "--token-lifetime", type=int, default=3600, help="seconds a v3 access token is valid"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--rate-limit-bucket", type=int, help="token bucket capacity")
    parser.add_argument(
        "--rate-limit-refill-per-minute", type=float, default=2.0, help="token refill rate"
    )
    parser.add_argument("--chaos-rate", type=float, default=0.0, help="random fault probability")
    args = parser.parse_args(argv)

    data = (
        _read_data(args.data)
        if args.data
        else generate_connections(args.connections, seed=args.seed)
    )
    faults = Faults(
        latency=args.latency,
        rate_limit_bucket=args.rate_limit_bucket,
        rate_limit_refill_per_minute=args.rate_limit_refill_per_minute,
        chaos_rate=args.chaos_rate,
        chaos_seed=args.seed,
    )
    simulator = SmartcarSimulator(
        data,
        token=args.token,
        faults=faults,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = simulator.start()
    root = url.removesuffix("/v2.0")
    try:
        # Both faces, as paths under one origin: the settings file has every full URL.
        print(
            f"Smartcar simulator listening on {root} ({len(simulator)} connections):"
            f" API v2 at {url.removeprefix(root)},"
            f" API v3 at {simulator.v3_vehicle_api_url.removeprefix(root)}"
            f" and {simulator.v3_management_api_url.removeprefix(root)}"
            f" (token at {simulator.v3_token_url.removeprefix(root)})",
            flush=True,
        )
        if args.url_file:
            _write_atomically(args.url_file, url + "\n")
        if args.settings_file:
            settings = {
                "api_url": url,
                "management_token": simulator.token,
                "v3_token_url": simulator.v3_token_url,
                "v3_vehicle_api_url": simulator.v3_vehicle_api_url,
                "v3_management_api_url": simulator.v3_management_api_url,
                "client_id": simulator.client_id,
                "client_secret": simulator.client_secret,
            }
            _write_atomically(args.settings_file, json.dumps(settings, indent=2) + "\n")
        while not stop.wait(1.0):
            pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
