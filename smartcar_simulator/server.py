"""The simulator as a server: `SmartcarSimulator`, its HTTP handler, admin routes and log.

One server serves every face on one port: v2 under `/v2.0`, the OAuth token endpoint at
`/oauth2/token`, API v3 under `/vehicle/v3` and `/management/v3`, admin under `/_admin`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .data import (
    MODES,
    V3_MODES,
    Connection,
    ConnectionStore,
    generate_subscriptions,
    generate_webhooks,
)
from .faults import Faults, FaultState
from .v2 import ManagementApi, Reply
from .v3 import (
    MAX_BODY,
    TOKEN_PATH,
    V3_MANAGEMENT_PREFIX,
    V3_VEHICLE_PREFIX,
    V3Api,
    parse_token_body,
    redact,
    token_error,
)


@dataclass(frozen=True)
class RequestLog:
    """One request to an API face or the token endpoint (admin requests are not logged)."""

    time: float
    """`time.monotonic()` when the request arrived."""
    path: str
    params: dict[str, str]
    """The URL-decoded query; for the token endpoint the body's fields, the client secret
    replaced by `***`."""
    status: int
    """The status sent, or 0 when the connection was reset without a response."""
    count: int = 0
    """Connections in the page sent."""
    fault: str | None = None
    """The injected fault that shaped the answer, if any (e.g. "truncated", "force_status")."""
    client_port: int = 0
    """The client's TCP port: requests sent over one kept-alive connection share it."""


class SmartcarSimulator:
    """An in-process Smartcar API server on 127.0.0.1: Management API v2.0 and API v3.

    Connections are kept per mode in ascending `SortKey` order next to their pre-encoded JSON,
    so an unfiltered page costs a bisect plus `limit` rows whatever the data size. Both faces
    serve the same connections (v3 hides test-mode ones) and share the fault counters and the
    rate-limit bucket.
    """

    def __init__(
        self,
        connections: Iterable[Mapping[str, Any]] | None = None,
        *,
        token: str = "sim-token",  # noqa: S107 -- the simulator's own fake token
        faults: Faults | None = None,
        port: int = 0,
        client_id: str = "client_sim0000000000000000",
        client_secret: str = "sim-client-secret",  # noqa: S107 -- a fake secret
        token_lifetime: int = 3600,
        webhooks: Iterable[Mapping[str, Any]] | None = None,
        subscriptions: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """Load the data; nothing listens until `start()`.

        Args:
            connections: API-shaped connections (v2 fields, optionally v3 ones such as
                `connectionId` or `make`); a later duplicate (userId, vehicleId) wins.
            token: The management token that v2 Basic auth must carry.
            faults: Fault knobs (all off by default).
            port: Port to bind; 0 picks a free one.
            client_id: The v3 client id the token endpoint accepts.
            client_secret: The v3 client secret the token endpoint accepts.
            token_lifetime: Seconds a v3 access token is valid (`expires_in`).
            webhooks: Webhooks, flat or API-shaped (see `webhook_record`); None for 3
                generated ones.
            subscriptions: Subscriptions, flat or API-shaped (see `subscription_record`); None
                for 2 generated per webhook, drawn from the live and simulated connections.
        """
        self.token = token
        self.faults = faults or Faults()
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.requests: list[RequestLog] = []
        self.before_request: list[Callable[[str, dict[str, str]], None]] = []
        """Called with the path and decoded params before any API or token request is
        answered, outside the lock: a hook may call `add()` or `remove()`."""
        self._port = port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url = ""
        self._root = ""
        self._store = ConnectionStore(connections or ())
        state = FaultState()
        self._api = ManagementApi(self._store, state)
        hooks = generate_webhooks(3) if webhooks is None else list(webhooks)
        if subscriptions is None:
            live = [c for mode in V3_MODES for c in self._store.items(mode, newest_first=False)]
            subscriptions = generate_subscriptions(hooks, live)
        self._v3 = V3Api(self._store, state, hooks, subscriptions)

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
            self._root = f"http://127.0.0.1:{server.server_address[1]}"
            self._url = f"{self._root}/v2.0"
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

    def _started_root(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._root

    @property
    def v3_token_url(self) -> str:
        """The OAuth token endpoint (`.../oauth2/token`) while started.

        Raises:
            RuntimeError: The simulator is not started.
        """
        return self._started_root() + TOKEN_PATH

    @property
    def v3_vehicle_api_url(self) -> str:
        """The v3 Vehicle API base URL (`.../vehicle/v3`) while started.

        Raises:
            RuntimeError: The simulator is not started.
        """
        return self._started_root() + V3_VEHICLE_PREFIX

    @property
    def v3_management_api_url(self) -> str:
        """The v3 Management API base URL (`.../management/v3`) while started.

        Raises:
            RuntimeError: The simulator is not started.
        """
        return self._started_root() + V3_MANAGEMENT_PREFIX

    @property
    def tokens_issued(self) -> int:
        """How many v3 access tokens the token endpoint has issued."""
        with self._lock:
            return self._v3.tokens_issued

    @property
    def issued_tokens(self) -> list[str]:
        """Every v3 access token issued so far, oldest first (revoked or expired ones too)."""
        with self._lock:
            return list(self._v3.issued)

    def revoke_tokens(self) -> None:
        """Make every access token issued so far invalid (a 401 on its next use)."""
        with self._lock:
            self._v3.revoke_tokens()

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired now (a 401 on its next use)."""
        with self._lock:
            self._v3.expire_tokens()

    def add(self, *connections: Mapping[str, Any]) -> None:
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

    def connections_v3(self, mode: str = "live") -> list[dict[str, Any]]:
        """Return what v3 serves for a mode, as flat records in the API's order.

        Args:
            mode: "live" or "simulated".

        Returns:
            `{userId, vehicleId, connectedAt, mode, connectionId, permissions, make, model,
            year, powertrainType, updatedAt}` per connection, `connectedAt` being the served
            `meta.createdAt`; oldest first when `faults.v3_order` is "asc", else newest first.

        Raises:
            ValueError: The mode is not a v3 mode.
        """
        if mode not in V3_MODES:
            raise ValueError(f"unknown v3 mode {mode!r}")
        with self._lock:
            items = self._store.items(mode, newest_first=self.faults.v3_order != "asc")
        return [item.v3_dict() for item in items]

    def webhooks(self) -> list[dict[str, Any]]:
        """Return the webhooks as flat records, newest first (the API's order)."""
        with self._lock:
            return json.loads(json.dumps(self._v3.webhooks))  # type: ignore[no-any-return]

    def subscriptions(self, mode: str = "live") -> list[dict[str, Any]]:
        """Return a mode's subscriptions as flat records, newest first (the API's order).

        Raises:
            ValueError: The mode is not a v3 mode.
        """
        if mode not in V3_MODES:
            raise ValueError(f"unknown v3 mode {mode!r}")
        with self._lock:
            return [dict(s) for s in self._v3.subscriptions if s["mode"] == mode]

    def add_webhook(self, webhook: Mapping[str, Any]) -> None:
        """Add a webhook, flat or API-shaped (replacing one with the same id)."""
        with self._lock:
            self._v3.add_webhook(webhook)

    def remove_webhook(self, webhook_id: str) -> bool:
        """Remove a webhook, returning whether it existed."""
        with self._lock:
            return self._v3.remove_webhook(webhook_id)

    def add_subscription(self, subscription: Mapping[str, Any]) -> None:
        """Add a subscription, flat or API-shaped (replacing one with the same id)."""
        with self._lock:
            self._v3.add_subscription(subscription)

    def remove_subscription(self, subscription_id: str) -> bool:
        """Remove a subscription, returning whether it existed."""
        with self._lock:
            return self._v3.remove_subscription(subscription_id)

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
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Reply:
        """Answer one API or token request and log it (called by the HTTP handler).

        Args:
            method: HTTP method.
            path: URL path.
            query: Raw query string.
            authorization: The Authorization header.
            client_port: The client's TCP port, for the log.
            body: The request body.
            content_type: Its Content-Type header.

        Returns:
            What to send.
        """
        arrived = time.monotonic()
        fields: dict[str, str] | None = None
        if path == TOKEN_PATH:
            fields = parse_token_body(body, content_type)
            params = redact(fields or {})
        else:
            params = dict(parse_qsl(query, keep_blank_values=True))
        for hook in list(self.before_request):
            hook(path, dict(params))
        if self.faults.latency > 0:
            time.sleep(self.faults.latency)
        with self._lock:
            faults = self.faults
            if path == TOKEN_PATH:
                reply = self._v3.token(
                    method,
                    fields,
                    client_id=self.client_id,
                    client_secret=self.client_secret,
                    lifetime=self.token_lifetime,
                    faults=faults,
                )
            elif path.startswith((V3_VEHICLE_PREFIX + "/", V3_MANAGEMENT_PREFIX + "/")):
                reply = self._v3.answer(
                    method, path, params, authorization, root=self._root, faults=faults
                )
            else:
                reply = self._api.answer(
                    method, path, params, authorization, token=self.token, faults=faults
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
                case "DELETE", "/_admin/tokens":
                    self.revoke_tokens()
                    payload = {"revoked": True}
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
        simulator = self.server.simulator
        admin = url.path == "/_admin" or url.path.startswith("/_admin/")
        if not admin and length > MAX_BODY:
            # Unread, the body would be taken for the next request: answer and hang up.
            self.close_connection = True
            reply = token_error(413, f"The body is larger than {MAX_BODY} bytes.")
        elif admin:
            body = self.rfile.read(length) if length > 0 else b""
            reply = simulator.handle_admin(self.command, url.path, url.query, body)
        else:
            body = self.rfile.read(length) if length > 0 else b""
            reply = simulator.handle_api(
                self.command,
                url.path,
                url.query,
                self.headers.get("Authorization"),
                self.client_address[1],
                body=body,
                content_type=self.headers.get("Content-Type"),
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
