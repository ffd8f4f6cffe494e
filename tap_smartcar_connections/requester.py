"""The requester: sends every request of a run, paced, and applies the failure policy to it.

One `Requester` serves a run's streams and the v3 token endpoint alike, so that
`max_requests_per_minute` paces the run as a whole and a host counts as reached once it has
answered any of them.
"""

from __future__ import annotations

import math
import typing as t
from dataclasses import dataclass, field
from http import HTTPStatus

import requests

from tap_smartcar_connections.errors import ApiError, HttpStatus, Refused
from tap_smartcar_connections.policy import (
    BODY_ATTEMPTS,
    FAILURE_POLICY,
    FAILURES,
    FIRST_CONTACT_SECONDS,
    RETRY_BASE_SECONDS,
    STILL_FAILING,
    Clock,
    Failure,
    Happened,
    Retry,
    backoff,
    classify,
)
from tap_smartcar_connections.transport import Deadlines, Transport, origin, send

if t.TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping

    from tap_smartcar_connections.redaction import Redactor
    from tap_smartcar_connections.settings import Settings

T = t.TypeVar("T")
Describe = t.Callable[[requests.Response, t.Callable[[t.Any, int], str]], str]
"""Summarise an error response in one line, cleaning every piece of server text it shows."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, as the user configured it: every line about a failure names it."""

    setting: str
    """The setting holding `url`, e.g. `v3_vehicle_api_url`."""
    url: str
    describe: Describe
    advice: Mapping[int, str] = field(default_factory=dict)
    """What to do about a refused request (4xx), by status."""
    refused: str = "Smartcar API error {summary}. To fix: {advice}"
    """The line a refused request ends the run with."""
    default_advice: str = "see Smartcar's documentation for this error"


@dataclass
class _Tries:
    """One request's attempts so far."""

    began: float
    attempts: int = 0
    bad: int = 0
    """Attempts in a row that met a `Retry.FEW` failure (bad data, a failed TLS handshake)."""


class Requester:
    """Every request of one run: pacing, deadline, environment, retries by `FAILURE_POLICY`."""

    def __init__(
        self, settings: Settings, clock: Clock, redactor: Redactor, logger: logging.Logger
    ) -> None:
        """A requester with its own connection pools and deadlines, and no host reached yet."""
        self.settings = settings
        self.clock = clock
        self.redactor = redactor
        self.logger = logger
        self.session = requests.Session()
        self.deadlines = Deadlines()
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, Transport(self.deadlines))
        self._answered: set[str] = set()
        self._environments: dict[str, dict[str, t.Any]] = {}
        self._last_sent = -math.inf

    def call(self, attempt: Callable[[], T], endpoint: Endpoint) -> T:
        """Run `attempt` (one request and what is made of its answer) until it succeeds.

        Whatever an attempt raises that the policy knows (`FAILURES`) is classified and
        retried, or ends the run, as `FAILURE_POLICY` says; a bug propagates as it is.

        Raises:
            ApiError: Once the policy says the run stops (`Refused` for a refused request).
        """
        tries = _Tries(self.clock.monotonic())
        while True:
            try:
                return attempt()
            except FAILURES as exc:
                failure = classify(exc, self.redactor.clean, self.clock)
                tries.attempts += 1
                few = FAILURE_POLICY[failure.happened].retry is Retry.FEW
                tries.bad = tries.bad + 1 if few else 0
                wait = self._wait(failure, endpoint, tries, exc)
            self.logger.warning(
                "Smartcar API: %s; retrying in %.1f s (attempt %d)%s",
                failure.summary,
                wait,
                tries.attempts,
                ": the rate limit's bucket makes the tap wait that long" if failure.limited else "",
            )
            self.clock.sleep(wait)

    def _wait(
        self, failure: Failure, endpoint: Endpoint, tries: _Tries, exc: BaseException
    ) -> float:
        """How long to wait before the next attempt, as the failure's row says.

        Raises:
            ApiError: If the row says stop, or its tries or time are spent.
        """
        rule = FAILURE_POLICY[failure.happened]
        budget, ran_out = self.settings.max_retry_seconds, STILL_FAILING
        first_contact = (
            rule.retry is Retry.FIRST_CONTACT and origin(endpoint.url) not in self._answered
        )
        if first_contact:
            budget, ran_out = min(budget, FIRST_CONTACT_SECONDS), rule.line
        if rule.retry is Retry.NEVER or (rule.retry is Retry.FEW and tries.bad >= BODY_ATTEMPTS):
            ran_out = rule.line
        else:
            wait = max(RETRY_BASE_SECONDS, backoff(tries.attempts), failure.retry_after or 0.0)
            left = budget - (self.clock.monotonic() - tries.began)
            if first_contact:  # the last try at the window's end, whatever the jitter
                wait = max(RETRY_BASE_SECONDS, min(wait, left))
            if wait <= left:
                return wait
        status = getattr(exc, "status", 0)
        line = ran_out.format(
            attempts=tries.attempts,
            bad=tries.bad,
            budget=self.settings.max_retry_seconds,
            summary=failure.summary,
            setting=endpoint.setting,
            url=self.redactor.clean(endpoint.url, 200),
            origin=self.redactor.clean(origin(endpoint.url), 200),
            refused=endpoint.refused.format(
                summary=failure.summary,
                advice=endpoint.advice.get(status, endpoint.default_advice),
            ),
        )
        if failure.happened is Happened.REFUSED:
            raise Refused(line, status, endpoint.setting) from exc
        raise ApiError(line) from exc

    def send(
        self,
        request: requests.PreparedRequest,
        endpoint: Endpoint,
        observe: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """One attempt: wait for the pace, send `request`, read its answer, check its status.

        Args:
            request: The request, with its credentials.
            endpoint: Where it goes (for error lines).
            observe: Called with every complete response, whatever its status (for metrics).

        Raises:
            HttpStatus: For any answer but a 2xx, summarised without its body.
        """
        url = request.url or ""
        self._pace()
        response = send(
            self.session,
            request,
            self.deadlines,
            self.settings.request_timeout,
            self._environment(url),
        )
        self._answered.add(origin(url))
        if observe is not None:
            observe(response)
        status = response.status_code
        if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
            return response
        if status < HTTPStatus.BAD_REQUEST:
            location = response.headers.get("Location")
            where = f", a redirect to {origin(location)}" if location else ""
            summary = f"{status} {response.reason}{where}"
            raise HttpStatus(response, self.redactor.clean(summary, 300))
        raise HttpStatus(response, endpoint.describe(response, self.redactor.clean))

    def _pace(self) -> None:
        """Wait until `max_requests_per_minute` allows the run's next request, whatever sends it."""
        per_minute = self.settings.max_requests_per_minute
        if per_minute:
            gap = 60.0 / per_minute - (self.clock.monotonic() - self._last_sent)
            if gap > 0:
                self.clock.sleep(gap)
        self._last_sent = self.clock.monotonic()

    def _environment(self, url: str) -> dict[str, t.Any]:
        """The proxies and TLS settings of the environment for `url`'s origin, read once.

        Per origin, because `NO_PROXY` may tell the token endpoint and the APIs apart.
        """
        where = origin(url)
        if where not in self._environments:
            merged = self.session.merge_environment_settings(url, {}, None, None, None)
            self._environments[where] = {key: merged[key] for key in ("proxies", "verify", "cert")}
        return self._environments[where]
