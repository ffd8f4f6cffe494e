"""The simulator as a server: `SmartcarSimulator`, its HTTP handler, admin routes and log."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .data import MODES, Connection, ConnectionStore
from .faults import Faults
from .v2 import ManagementApi, Reply


@dataclass(frozen=True)
class RequestLog:
    """One request to the API (admin requests are not logged)."""

    time: float
    """`time.monotonic()` when the request arrived."""
    path: str
    params: dict[str, str]
    """The URL-decoded query."""
    status: int
    """The status sent, or 0 when the connection was reset without a response."""
    count: int = 0
    """Connections in the page sent."""
    fault: str | None = None
    """The injected fault that shaped the answer, if any (e.g. "truncated", "force_status")."""
    client_port: int = 0
    """The client's TCP port: requests sent over one kept-alive connection share it."""


class SmartcarSimulator:
    """An in-process Smartcar Management API server on 127.0.0.1.

    Connections are kept per mode in ascending `SortKey` order next to their pre-encoded JSON,
    so an unfiltered page costs a bisect plus `limit` rows whatever the data size.
    """

    def __init__(
        self,
        connections: Iterable[Mapping[str, str]] | None = None,
        *,
        token: str = "sim-token",  # noqa: S107 -- the simulator's own fake token
        faults: Faults | None = None,
        port: int = 0,
    ) -> None:
        """Load the data; nothing listens until `start()`.

        Args:
            connections: API-shaped connections; a later duplicate (userId, vehicleId) wins.
            token: The management token that Basic auth must carry.
            faults: Fault knobs (all off by default).
            port: Port to bind; 0 picks a free one.
        """
        self.token = token
        self.faults = faults or Faults()
        self.requests: list[RequestLog] = []
        self._port = port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url = ""
        self._store = ConnectionStore(connections or ())
        self._api = ManagementApi(self._store)

    def start(self) -> str:
        """Listen on 127.0.0.1 in a daemon thread.

        Returns:
            The API base URL, e.g. `http://127.0.0.1:PORT/v2.0`.
        """
        if self._server is None:
            server = _Server(("127.0.0.1", self._port), self)
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="smartcar-simulator",
                daemon=True,
            )
            self._server = server
            self._url = f"http://127.0.0.1:{server.server_address[1]}/v2.0"
            self._thread.start()
        return self._url

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SmartcarSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def api_url(self) -> str:
        """The API base URL (`.../v2.0`) while started.

        Raises:
            RuntimeError: The simulator is not started.
        """
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    def add(self, *connections: Mapping[str, str]) -> None:
        """Add connections (replacing any with the same userId and vehicleId).

        Args:
            connections: API-shaped connections.
        """
        parsed = [Connection.from_mapping(data) for data in connections]
        with self._lock:
            self._store.add(parsed)

    def remove(self, user_id: str, vehicle_id: str) -> bool:
        """Remove a connection (a disconnected vehicle).

        Args:
            user_id: Its userId.
            vehicle_id: Its vehicleId.

        Returns:
            Whether it existed.
        """
        with self._lock:
            return self._store.discard((user_id, vehicle_id))

    def connections(self, mode: str | None = None) -> list[dict[str, str]]:
        """Return the current data as served, newest first.

        Args:
            mode: Only this mode; None for every mode.

        Returns:
            API-shaped connections.

        Raises:
            ValueError: The mode is unknown.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            rows = self._store.rows(mode)
        result: list[dict[str, str]] = json.loads(b"[" + b",".join(rows) + b"]")
        return result

    def rotate_cursor_secret(self) -> None:
        """Sign cursors with a new key: every cursor handed out before is refused with a 400."""
        with self._lock:
            self._api.cursors.rotate()

    def clear_log(self) -> None:
        """Forget logged requests and restart the fault counters."""
        with self._lock:
            self.requests.clear()
            self._api.reset_counters()

    def handle_api(
        self,
        method: str,
        path: str,
        query: str,
        authorization: str | None,
        client_port: int = 0,
    ) -> Reply:
        """Answer one API request and log it (called by the HTTP handler).

        Args:
            method: HTTP method.
            path: URL path.
            query: Raw query string.
            authorization: The Authorization header.
            client_port: The client's TCP port, for the log.

        Returns:
            What to send.
        """
        arrived = time.monotonic()
        params = dict(parse_qsl(query, keep_blank_values=True))
        if self.faults.latency > 0:
            time.sleep(self.faults.latency)
        with self._lock:
            reply = self._api.answer(
                method, path, params, authorization, token=self.token, faults=self.faults
            )
            self.requests.append(
                RequestLog(
                    arrived, path, params, reply.status, reply.count, reply.fault, client_port
                )
            )
        return reply

    def handle_admin(self, method: str, path: str, query: str, body: bytes) -> Reply:
        """Answer one admin request (called by the HTTP handler).

        Args:
            method: HTTP method.
            path: URL path under `/_admin`.
            query: Raw query string.
            body: Request body.

        Returns:
            What to send.
        """
        params = dict(parse_qsl(query, keep_blank_values=True))
        payload: Any
        try:
            match method, path.rstrip("/"):
                case "GET", "/_admin/connections":
                    payload = self.connections(params.get("mode") or None)
                case "POST", "/_admin/connections":
                    items = json.loads(body)
                    items = [items] if isinstance(items, dict) else items
                    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                        raise ValueError("expected a JSON list of connection objects")
                    self.add(*items)
                    payload = {"added": len(items)}
                case "DELETE", "/_admin/connections":
                    payload = {"removed": self.remove(params["user_id"], params["vehicle_id"])}
                case "GET", "/_admin/requests":
                    with self._lock:
                        payload = [asdict(entry) for entry in self.requests]
                case "DELETE", "/_admin/requests":
                    self.clear_log()
                    payload = {"cleared": True}
                case "GET", "/_admin/faults":
                    payload = asdict(self.faults)
                case "PUT", "/_admin/faults":
                    settings = json.loads(body or b"{}")
                    if not isinstance(settings, dict):
                        raise ValueError("expected a JSON object of Faults fields")
                    self.faults = Faults(**settings)
                    payload = asdict(self.faults)
                case _:
                    return _json_reply(404, {"error": f"no admin route {method} {path}"})
        except (ValueError, KeyError, TypeError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(200, payload)


def _json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and the demo own the terminal."""

    def do_GET(self) -> None:
        """Serve any method: routing is by path."""
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        simulator = self.server.simulator
        if url.path == "/_admin" or url.path.startswith("/_admin/"):
            reply = simulator.handle_admin(self.command, url.path, url.query, body)
        else:
            authorization = self.headers.get("Authorization")
            reply = simulator.handle_api(
                self.command, url.path, url.query, authorization, self.client_address[1]
            )
        if reply.fault == "reset":
            # A zero linger makes close() send RST, like a proxy dropping the connection.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: SmartcarSimulator) -> None:
        self.simulator = simulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._open_lock:
            if open_:
                self._open.add(connection)
            else:
                self._open.discard(connection)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
