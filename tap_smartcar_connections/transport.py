"""One HTTP exchange, hardened: a whole-response deadline and a bounded, self-decoded body.

What happens on the wire, and nothing else: whether a failure is retried is the failure
policy's to decide (`policy.py`), and when a request is sent is the requester's.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import socket
import threading
import time
import typing as t
import zlib
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from typing_extensions import override

from tap_smartcar_connections.errors import BrokenBody

if t.TYPE_CHECKING:
    from collections.abc import Iterator

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest decoded body accepted; a full v2 page is about 15 KB, a v3 page about 75 KB."""
CHUNK_BYTES = 65_536
"""How much of a body is read, and inflated, at a time."""
CONNECT_TIMEOUT_SECONDS = 15.0
"""A TCP (and TLS) connection that takes longer is taken to have failed."""
WATCHDOG_TICK_SECONDS = 0.25


class ResponseTimeout(requests.exceptions.ReadTimeout):
    """The whole response took longer than `request_timeout` (a timeout, like any other)."""


class Deadlines:
    """Cut each thread's request once it is not complete within its deadline.

    requests' timeout bounds each socket operation, not the response: headers or a body
    trickling a byte at a time keep one request alive for hours. A watchdog thread (polling, so
    a request costs no thread start; it ends when no request is pending) shuts the connection's
    socket down once the deadline passes, which ends the blocked read with an error. A request
    may have no socket yet when its deadline passes (still connecting): it is cut as soon as it
    has one, and `_TrackedPool` refuses to start a new request on it.
    """

    def __init__(self) -> None:
        """No request pending, no watchdog running."""
        self._lock = threading.Lock()
        self._due: dict[int, float] = {}
        self._in_flight: dict[int, t.Any] = {}
        self._expired: set[int] = set()
        self._watchdog: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, seconds: float) -> Iterator[t.Callable[[], bool]]:
        """Cut the calling thread's request if it is not complete within `seconds`.

        Yields:
            A function telling whether the deadline cut the request.
        """
        thread = threading.get_ident()
        with self._lock:
            self._in_flight.pop(thread, None)
            self._expired.discard(thread)
            self._due[thread] = time.monotonic() + seconds
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="request-deadlines", daemon=True
                )
                self._watchdog.start()
        try:
            yield lambda: thread in self._expired
        finally:
            with self._lock:
                self._due.pop(thread, None)

    def connection_for(self, connection: t.Any) -> None:
        """Note the connection carrying the calling thread's request, so that it can be cut.

        Raises:
            urllib3.exceptions.ReadTimeoutError: If the deadline already passed.
        """
        thread = threading.get_ident()
        if thread in self._expired:  # the deadline passed while connecting (e.g. via a proxy)
            raise urllib3.exceptions.ReadTimeoutError(None, "", "the request deadline passed")  # type: ignore[arg-type]
        self._in_flight[thread] = connection

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK_SECONDS)
            now = time.monotonic()
            with self._lock:
                if not self._due:
                    self._watchdog = None
                    return
                due = [thread for thread, when in self._due.items() if when <= now]
                self._expired.update(due)
                sockets = [getattr(self._in_flight.get(thread), "sock", None) for thread in due]
            for sock in sockets:
                if sock is not None:
                    with contextlib.suppress(OSError):  # not SSLSocket's: it drops TLS state
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedPool(urllib3.HTTPConnectionPool):
    """Tells the `Deadlines` which connection carries the request, so that it can be cut."""

    deadlines: Deadlines

    @override
    def _make_request(self, conn: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        self.deadlines.connection_for(conn)
        return super()._make_request(conn, *args, **kwargs)


class _TrackedHTTPSPool(_TrackedPool, urllib3.HTTPSConnectionPool):
    """The HTTPS twin of `_TrackedPool`."""


class Transport(HTTPAdapter):
    """requests' adapter, with connection pools whose in-flight connection its deadlines cut."""

    def __init__(self, deadlines: Deadlines) -> None:
        """Mount pools that report their connections to `deadlines`."""
        attributes = {"deadlines": deadlines}
        self.pool_classes = {
            "http": type("TrackedPool", (_TrackedPool,), attributes),
            "https": type("TrackedHTTPSPool", (_TrackedHTTPSPool,), attributes),
        }
        super().__init__()

    @override
    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self.pool_classes

    @override
    def proxy_manager_for(self, proxy: str, **proxy_kwargs: t.Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers keep their own pools
            manager.pool_classes_by_scheme = self.pool_classes
        return manager


def read_body(response: requests.Response) -> bytes:
    """Read a streamed response's body, decoded, refusing more than `MAX_BODY_BYTES`.

    Decoding gzip here, `CHUNK_BYTES` at a time with a bound on each output, is what stops a
    small compressed body from inflating to gigabytes in memory. The tap asks for gzip only.

    Raises:
        BrokenBody: If the body is too large, corrupt, in an encoding the tap did not ask for,
            or shorter than its `Content-Length`.
        requests.exceptions.ReadTimeout: If a read timed out.
        requests.exceptions.ConnectionError: If the connection was reset mid-body.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in {"", "identity", "gzip", "x-gzip"}:
        response.close()
        msg = f"a body in an encoding the tap did not ask for ({encoding[:30]!r})"
        raise BrokenBody(msg)
    inflate = zlib.decompressobj(wbits=31) if encoding not in {"", "identity"} else None
    try:
        return _read_all(response, inflate)
    except BaseException:
        response.close()  # a connection left mid-body cannot be reused
        raise


def _read_all(response: requests.Response, inflate: t.Any) -> bytes:
    """The body of `response`, inflated through `inflate` if given (see `read_body`)."""
    chunks: list[bytes] = []
    size = 0
    try:
        for raw in response.raw.stream(CHUNK_BYTES, decode_content=False):
            chunk = raw if inflate is None else inflate.decompress(raw, MAX_BODY_BYTES + 1 - size)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                msg = f"a body over {MAX_BODY_BYTES:,} bytes"
                raise BrokenBody(msg)
            chunks.append(chunk)
        if inflate is not None and not inflate.eof:
            msg = "a gzip body that ends before its end marker"
            raise BrokenBody(msg)
    except zlib.error as exc:
        msg = f"a corrupt gzip body ({exc})"
        raise BrokenBody(msg) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(type(exc).__name__) from exc
    except urllib3.exceptions.ProtocolError as exc:
        if not any(isinstance(arg, http.client.IncompleteRead) for arg in exc.args):
            raise requests.exceptions.ConnectionError(exc) from exc
        msg = "a body shorter than it said (the connection closed before its end)"
        raise BrokenBody(msg) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    return b"".join(chunks)


def send(
    session: requests.Session,
    request: requests.PreparedRequest,
    deadlines: Deadlines,
    timeout: float,
    environment: dict[str, t.Any],
) -> requests.Response:
    """Send `request` and read its body whole within `timeout` seconds, following no redirect.

    The adapter is called directly: the session follows redirects (carrying the credentials to
    whatever origin a response names) and parses a redirect's `Location` even when told not to
    follow it, and a malformed one raises. `environment` holds the proxies and CA bundle the
    session would have merged in (`Session.send` alone skips `REQUESTS_CA_BUNDLE`).

    Raises:
        ResponseTimeout: If the response was not complete within `timeout`.
    """
    began = time.monotonic()
    with deadlines.watch(timeout) as expired:
        try:
            response = session.get_adapter(request.url or "").send(
                request,
                stream=True,
                timeout=(min(CONNECT_TIMEOUT_SECONDS, timeout), timeout),
                **environment,
            )
            response._content = read_body(response)
            response.elapsed = datetime.timedelta(seconds=time.monotonic() - began)
        except (requests.exceptions.RequestException, OSError, BrokenBody) as exc:
            # A connection never made is not a late response: with request_timeout up to
            # CONNECT_TIMEOUT_SECONDS both end together, and the policy must see the host
            # as unreachable (a short retry on first contact), not as slow.
            if expired() and not isinstance(exc, requests.exceptions.ConnectTimeout):
                msg = f"ReadTimeout: no complete response in request_timeout={timeout:g} s"
                raise ResponseTimeout(msg) from exc
            raise
    return response


def origin(url: str) -> str:
    """`scheme://host[:port]` of `url`, or a description if it is not a usable URL."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unusable address"
    if not parts.scheme or not parts.hostname:
        return "an unusable address"
    return f"{parts.scheme}://{parts.hostname}{port}"
