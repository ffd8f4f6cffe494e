"""What every HTTP exchange with Smartcar must survive, whatever the API version.

A whole-response deadline, a bounded and self-decoded body, no redirects, the environment's TLS
settings (applied by the stream), one-line reasons for network failures, and redaction of every
secret from every log line.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import socket
import ssl
import threading
import time
import traceback
import typing as t
import zlib
from urllib.parse import quote, quote_plus, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from singer_sdk.exceptions import RetriableAPIError
from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Iterator

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest decoded body accepted; a full page is about 15 KB."""
CONNECT_TIMEOUT_SECONDS = 30.0


def printable(value: t.Any, limit: int) -> str:
    """One line of at most `limit` printable characters from a server's field, or ''.

    Error fields are the server's text: anything but a string is ignored, control characters
    (a forged second log line) become spaces and length is capped.
    """
    if not isinstance(value, str):
        return ""
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BrokenBody(RetriableAPIError):
    """A response whose body is unusable: cut off, too large, or not the documented JSON."""


class ResponseTimeout(requests.exceptions.ReadTimeout):
    """The whole response took longer than `request_timeout` (retriable, like any timeout)."""


_SECRETS: set[str] = set()
_AUTH_VALUE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "<redacted>"


MIN_SECRET_LENGTH = 8
"""A bare secret shorter than this is not searched for: redacting "t" would garble every line.

Its `default:` and base64 forms are still redacted, and so is any `Basic`/`Bearer` value.
"""


def register_secret(secret: str) -> None:
    """Have `redact` remove `secret`, its URL-encoded forms and those of a Basic auth header.

    The client secret goes out in a form body: a server or proxy quoting the request back
    shows it URL-encoded.
    """
    if secret.strip():
        basic = f"default:{secret}"
        _SECRETS.update({basic, base64.b64encode(basic.encode()).decode()})
        if len(secret) >= MIN_SECRET_LENGTH:
            _SECRETS.update({secret, quote(secret), quote(secret, safe=""), quote_plus(secret)})


def redact(text: str) -> str:
    """Remove every registered secret and any `Basic …`/`Bearer …` credential from `text`.

    A proxy or server that echoes the request's headers would otherwise put the token into an
    error line or a log message. Registered secrets go first: the `Bearer …` pattern stops at
    punctuation a token may hold, and would leave its tail for them to miss.
    """
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)


def install_log_redaction() -> None:
    """Redact every log record this process creates, whatever logger or handler it goes to.

    A record factory sees each record once, before any handler or formatter (Meltano's
    structured one included). A traceback is folded into the message, redacted, because
    formatters render `exc_info` from the live exception.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def factory(*args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        folded = bool(record.exc_info and record.exc_info[1] is not None)
        if folded:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()  # type: ignore[misc]
            record.exc_info = None
        clean = redact(message)
        if folded or clean != message:
            record.msg, record.args = clean, ()
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_IN_FLIGHT: dict[int, t.Any] = {}
"""The urllib3 connection each thread is using for its current request."""


class _TrackedPool(urllib3.HTTPConnectionPool):
    """Records which connection carries the request, so `deadline` can cut it."""

    @override
    def _make_request(self, conn: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        thread = threading.get_ident()
        if thread in _EXPIRED:  # the deadline passed while connecting (e.g. through a proxy)
            raise urllib3.exceptions.ReadTimeoutError(self, "", "the request deadline passed")
        _IN_FLIGHT[thread] = conn
        return super()._make_request(conn, *args, **kwargs)


class _TrackedHTTPSPool(_TrackedPool, urllib3.HTTPSConnectionPool):
    """The HTTPS twin of `_TrackedPool`."""


_TRACKED_POOLS = {"http": _TrackedPool, "https": _TrackedHTTPSPool}


class Transport(HTTPAdapter):
    """requests' adapter, with connection pools whose in-flight connection can be cut."""

    @override
    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    @override
    def proxy_manager_for(self, proxy: str, **proxy_kwargs: t.Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers keep their own pools
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


_DEADLINES: dict[int, float] = {}
"""When each thread's current request must be complete (`time.monotonic()`)."""
_EXPIRED: set[int] = set()
_WATCHDOG_TICK = 0.25
_watchdog_lock = threading.Lock()
_watchdog: threading.Thread | None = None


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[t.Callable[[], bool]]:
    """Cut the calling thread's request if it is not complete within `seconds`.

    requests' timeout bounds each socket operation, not the response: headers or a body
    trickling a byte at a time keep one request alive for hours. A watchdog thread (one per
    process, polling, so a request costs no thread start) shuts the connection's socket down
    once the deadline passes, which ends the blocked read with an error.

    Yields:
        A function telling whether the deadline cut the request.
    """
    global _watchdog  # noqa: PLW0603
    with _watchdog_lock:
        if _watchdog is None:
            _watchdog = threading.Thread(target=_watch, name="request-deadlines", daemon=True)
            _watchdog.start()
    thread = threading.get_ident()
    _IN_FLIGHT.pop(thread, None)
    _EXPIRED.discard(thread)
    _DEADLINES[thread] = time.monotonic() + seconds
    try:
        yield lambda: thread in _EXPIRED
    finally:
        _DEADLINES.pop(thread, None)


def _watch() -> None:
    """Shut down the socket of every request past its deadline, on every tick until it ends.

    A request may have no socket yet when its deadline passes (still connecting): it is cut as
    soon as it has one, and `_TrackedPool` refuses to start a new request on it.
    """
    while True:
        time.sleep(_WATCHDOG_TICK)
        now = time.monotonic()
        for thread, when in list(_DEADLINES.items()):
            if when > now or _DEADLINES.get(thread) != when:
                continue  # not yet, or that request ended and another began
            _EXPIRED.add(thread)
            sock = getattr(_IN_FLIGHT.get(thread), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # not SSLSocket's: it drops TLS state
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def read_body(response: requests.Response) -> bytes:
    """Read a streamed response's body, decoded, refusing more than `MAX_BODY_BYTES`.

    Decoding gzip ourselves with a bounded output is what stops a small compressed body from
    inflating to gigabytes in memory.

    Raises:
        BrokenBody: If the body is too large or in an encoding the tap did not ask for.
        requests.exceptions.ChunkedEncodingError: If the body was cut off.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in {"", "identity", "gzip", "x-gzip", "deflate"}:
        response.close()
        msg = f"{response.status_code} with a body in an unrequested encoding ({encoding[:30]!r})"
        raise BrokenBody(msg, response)
    inflate = zlib.decompressobj(wbits=47) if encoding not in {"", "identity"} else None
    chunks: list[bytes] = []
    size = 0
    try:
        for raw in response.raw.stream(65536, decode_content=False):
            chunk = raw if inflate is None else inflate.decompress(raw, MAX_BODY_BYTES + 1 - size)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                response.close()
                msg = f"{response.status_code} with a body over {MAX_BODY_BYTES:,} bytes"
                raise BrokenBody(msg, response)
            chunks.append(chunk)
        if inflate is not None and not inflate.eof:
            raise zlib.error("the compressed body ended early")
    except urllib3.exceptions.ReadTimeoutError as exc:
        response.close()
        raise requests.exceptions.ReadTimeout(type(exc).__name__) from exc
    except (urllib3.exceptions.HTTPError, OSError, zlib.error) as exc:
        response.close()
        msg = f"the response body was cut off or corrupt ({type(exc).__name__})"
        raise requests.exceptions.ChunkedEncodingError(msg) from exc
    return b"".join(chunks)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps (causes, contexts, urllib3 reasons, exception args)."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = (current.__cause__, current.__context__, getattr(current, "reason", None))
        pending += [e for e in (*wrapped, *current.args) if isinstance(e, BaseException)]


def network_reason(exc: BaseException) -> str:
    """Say in a few words why a connection failed (never the URL: it holds the query)."""
    causes = list(_causes(exc))
    reasons: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (
            (urllib3.exceptions.NameResolutionError, socket.gaierror),
            "the host name does not resolve",
        ),
        (ssl.SSLCertVerificationError, "its TLS certificate was not accepted"),
        (ssl.SSLError, "the TLS handshake failed"),
        (ConnectionRefusedError, "the connection was refused"),
        # urllib3's NewConnectionError is a ConnectTimeoutError: only the last resort.
        (urllib3.exceptions.ConnectTimeoutError, "connecting timed out"),
    ]
    for kind, reason in reasons:
        found = next((cause for cause in causes if isinstance(cause, kind)), None)
        if isinstance(found, ssl.SSLCertVerificationError):
            return f"{reason} ({printable(found.verify_message, 100)})"
        if found is not None:
            return reason
    return f"the connection failed ({type(exc).__name__})"


def origin(url: str) -> str:
    """`scheme://host[:port]` of `url`, or a description if it is not a usable URL."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unusable address"
    if not parts.scheme or not parts.hostname:
        return "an unusable address"
    return printable(f"{parts.scheme}://{parts.hostname}{port}", 200)
