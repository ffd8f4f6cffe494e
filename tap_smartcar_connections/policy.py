"""The failure policy: what a failed request met, and whether the run waits, tries again or stops.

Every failure is classified by what happened, whichever request it hit (a data page, the v3
token endpoint, the first request of a run or the thousandth), into one row of
`FAILURE_POLICY`. The requester (`requester.py`) applies the row. Two answers change course
elsewhere, because they say something about a credential or a checkpoint rather than the
request: a 401 under API v3 renews the access token once (`v3.V3Stream.send`), and a 400 on a
resumed walk's first page makes its checkpoint stale (`walk.Walk._fetch`).
"""

from __future__ import annotations

import enum
import random
import re
import socket
import ssl
import time
import typing as t
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import MappingProxyType

import requests
import urllib3

from tap_smartcar_connections.errors import BrokenBody, HttpStatus
from tap_smartcar_connections.transport import ResponseTimeout

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

RETRY_BASE_SECONDS = 1.0
"""The shortest wait before a retry, whatever `Retry-After` says."""
RETRY_CAP_SECONDS = 60.0
"""The longest backoff (a longer `Retry-After` is still honoured)."""
BODY_ATTEMPTS = 3
"""Tries for a request whose answer is bad data: a proxy may cut one, but bad data stays bad."""
FIRST_CONTACT_SECONDS = 20.0
"""How long a host that never answered in this run is tried before the run says it is
unreachable: long enough to ride out a blip of about 10 s, short enough for `--test`."""


class Happened(enum.Enum):
    """What a failed request met: the rows of the failure policy."""

    DROPPED = "the connection was closed or reset after it was made"
    TLS_CUT = "the TLS handshake was cut short (EOF or reset)"
    TIMEOUT = "no complete response within request_timeout"
    BUSY = "408, 425, 429 or a 5xx"
    UNREACHABLE = "no connection could be made: refused, no such host, connect timeout"
    BAD_DATA = (
        "an answer that is not the documented data: invalid or incomplete JSON, a corrupt or "
        "unrequested Content-Encoding, a body shorter than it said, a page failing its checks"
    )
    TLS_FAILED = "a TLS handshake that failed otherwise (protocol version, cipher)"
    CERTIFICATE = "a TLS certificate that is not accepted"
    REDIRECT = "a 3xx or 1xx: no data, and the tap follows no redirect"
    REFUSED = "any other 4xx"
    BAD_URL = "a URL that cannot be requested"


class Retry(enum.Enum):
    """How a row is retried."""

    BUDGET = "again, after backoff and Retry-After, until max_retry_seconds is spent"
    FEW = f"at most {BODY_ATTEMPTS} times in a row (and within max_retry_seconds)"
    FIRST_CONTACT = (
        f"before its host answered in this run, for at most {FIRST_CONTACT_SECONDS:g} s; "
        "after, like BUDGET"
    )
    NEVER = "not at all: the run stops at once"


@dataclass(frozen=True)
class Rule:
    """One row: how the failure is retried, and the run's last line if it stops there."""

    retry: Retry
    line: str


STILL_FAILING = (
    "Smartcar API still failing after {attempts} attempts over max_retry_seconds={budget:g}: "
    "{summary}. Rerun later, or raise max_retry_seconds; the last STATE emitted is safe to "
    "resume from"
)
TLS_LINE = (
    "TLS with {origin} failed: {summary}. If a proxy inspects TLS, set REQUESTS_CA_BUNDLE to "
    "its CA bundle; otherwise check {setting}"
)

FAILURE_POLICY: Mapping[Happened, Rule] = MappingProxyType(
    {
        Happened.DROPPED: Rule(Retry.BUDGET, STILL_FAILING),
        Happened.TLS_CUT: Rule(Retry.BUDGET, STILL_FAILING),
        Happened.TIMEOUT: Rule(Retry.BUDGET, STILL_FAILING),
        Happened.BUSY: Rule(Retry.BUDGET, STILL_FAILING),
        Happened.UNREACHABLE: Rule(
            Retry.FIRST_CONTACT,
            "cannot reach {setting} {url}: {summary}. Check {setting} and the network (and "
            "HTTPS_PROXY/NO_PROXY if a proxy is needed)",
        ),
        Happened.BAD_DATA: Rule(
            Retry.FEW,
            "Smartcar API sent {summary} {bad} times in a row; this is not transient. "
            "Report it to Smartcar support with the time of the run; the last STATE emitted "
            "is safe to resume from",
        ),
        Happened.TLS_FAILED: Rule(Retry.FEW, TLS_LINE),
        Happened.CERTIFICATE: Rule(Retry.NEVER, TLS_LINE),
        Happened.REDIRECT: Rule(
            Retry.NEVER,
            "Smartcar API answered {summary}, not data; the tap follows no redirect (it would "
            "carry the credentials elsewhere). Check {setting} (now {origin})",
        ),
        Happened.REFUSED: Rule(Retry.NEVER, "{refused}"),
        Happened.BAD_URL: Rule(Retry.NEVER, "{setting} {url} cannot be requested: check its host"),
    }
)
"""The whole policy: each row's retry, and the line the run ends with when it stops there.

Besides these: a wait is never shorter than `RETRY_BASE_SECONDS` nor than the attempt's
backoff (1, 2, 4 ... `RETRY_CAP_SECONDS` s, with jitter), and never shorter than `Retry-After`;
a wait that would end past the budget stops the run at once, with `STILL_FAILING` (or the row's
own line, for FEW and FIRST_CONTACT rows that ran out first). On first contact the last wait is
shortened to end with the window instead, so that the host is tried at its end: an outage a
little shorter than `FIRST_CONTACT_SECONDS` is ridden out whatever the jitter.
"""

BUSY_STATUSES = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_EARLY, 429})


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    happened: Happened
    summary: str
    """What happened, in a few words (redacted and cut)."""
    retry_after: float | None = None
    """What the response's `Retry-After` asks, in seconds, if it says."""
    limited: bool = False
    """A 429: the rate limit's bucket, not a fault, makes the run wait."""


FAILURES = (
    HttpStatus,
    BrokenBody,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
)
"""What an attempt may raise that `classify` knows; anything else is a bug, and propagates."""


class Clock:
    """Time as the policy sees it; tests replace it to skip the waits."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for budgets and pacing."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch, for an HTTP-date `Retry-After`."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        time.sleep(seconds)


def classify(exc: BaseException, clean: Callable[[t.Any, int], str], clock: Clock) -> Failure:
    """Say what `exc` (one of `FAILURES`) means: its row, and a few words about it.

    `clean` redacts and cuts the server's text (`Redactor.clean`).
    """
    if isinstance(exc, HttpStatus):
        status = exc.status
        if status in BUSY_STATUSES or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            wait = retry_after(exc.response, clock)
            return Failure(Happened.BUSY, str(exc), wait, limited=status == 429)
        if status < HTTPStatus.BAD_REQUEST:  # 1xx, 3xx: a 2xx is data, never a failure
            return Failure(Happened.REDIRECT, str(exc))
        return Failure(Happened.REFUSED, str(exc))
    if isinstance(exc, BrokenBody):
        return Failure(Happened.BAD_DATA, clean(str(exc), 300))
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema
        | urllib3.exceptions.LocationParseError,
    ):
        return Failure(Happened.BAD_URL, "")
    happened, summary = _network(exc, clean)
    return Failure(happened, summary)


_NETWORK: tuple[tuple[tuple[type[BaseException], ...], Happened, str], ...] = (
    (
        (urllib3.exceptions.NameResolutionError, socket.gaierror),
        Happened.UNREACHABLE,
        "the host name does not resolve",
    ),
    ((ConnectionRefusedError,), Happened.UNREACHABLE, "the connection was refused"),
    (
        (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError),
        Happened.UNREACHABLE,
        "connecting timed out",
    ),
    (
        (requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError),
        Happened.TIMEOUT,
        "ReadTimeout: no response within request_timeout",
    ),
)
"""Failures below HTTP, by what they wrap, first match first (TLS is told apart before)."""


def _network(exc: BaseException, clean: Callable[[t.Any, int], str]) -> tuple[Happened, str]:
    """The row and words for a failure below HTTP: connecting, TLS, reading."""
    if isinstance(exc, ResponseTimeout):
        return Happened.TIMEOUT, str(exc)
    causes = list(_causes(exc))
    cert = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if cert is not None:
        shown = clean(cert.verify_message, 100)
        return Happened.CERTIFICATE, f"its TLS certificate was not accepted ({shown})"
    tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    if tls is not None or isinstance(exc, requests.exceptions.SSLError):
        if any(
            isinstance(c, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError)
            for c in causes
        ):
            return Happened.TLS_CUT, "the TLS handshake was cut short"
        reason = clean(getattr(tls, "reason", None) or "", 60) or "SSLError"
        return Happened.TLS_FAILED, f"the TLS handshake failed ({reason})"
    for kinds, happened, words in _NETWORK:
        if any(isinstance(cause, kinds) for cause in causes):
            return happened, words
    return Happened.DROPPED, f"the connection was closed or reset ({type(exc).__name__})"


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


def retry_after(response: requests.Response, clock: Clock) -> float | None:
    """The wait a response's `Retry-After` asks for (seconds or an HTTP date), if readable."""
    header = response.headers.get("Retry-After", "").strip()
    if re.fullmatch(r"[0-9]{1,9}", header, re.ASCII):
        return float(header)
    try:
        when = parsedate_to_datetime(header)
        return max(0.0, when.timestamp() - clock.wall())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def backoff(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...) absent `Retry-After`: 1, 2, 4 ... 60 s.

    Jittered over the upper half, so that many taps failing together do not retry together.
    """
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 16))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311
