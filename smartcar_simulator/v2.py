"""The Management API v2.0 face: `GET /v2.0/management/connections`.

Routing, Basic auth, parameter checks, newest-first keyset paging with opaque cursors, Smartcar
error bodies, and where the injected faults (`Faults`) shape an answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

from .data import MODES, ConnectionStore, CursorCodec
from .faults import Faults, FaultState

CONNECTIONS_PATH = "/v2.0/management/connections"

DOCS = "https://smartcar.com/docs/errors/api-errors/"
ERRORS: dict[int, tuple[str, str | None, str, str, str | None]] = {
    # status: (type, code, docs page, description, resolution type)
    400: (
        "VALIDATION",
        "PARAMETER",
        "validation-errors#parameter",
        "The request is well formed but a parameter is invalid.",
        None,
    ),
    401: (
        "AUTHENTICATION",
        None,
        "authentication-errors",
        "The Authorization header is missing, malformed or holds invalid credentials.",
        None,
    ),
    403: (
        "PERMISSION",
        None,
        "permission-errors",
        "Your application is not permitted to use this endpoint.",
        None,
    ),
    404: (
        "RESOURCE_NOT_FOUND",
        "PATH",
        "resource-not-found-errors#path",
        "The requested path does not exist.",
        None,
    ),
    429: (
        "RATE_LIMIT",
        "SMARTCAR_API",
        "rate-limit-errors#smartcar-api",
        "Your application has exceeded its rate limit. Retry after the Retry-After header.",
        "RETRY_LATER",
    ),
    430: (
        "BILLING",
        "INVALID_PLAN",
        "billing-errors#invalid-plan",
        "This feature is not included in your current plan.",
        "CONTACT_SUPPORT",
    ),
    500: (
        "SERVER",
        "INTERNAL",
        "server-errors#internal",
        "An internal Smartcar error occurred.",
        "RETRY_LATER",
    ),
    502: (
        "UPSTREAM",
        "UNKNOWN_ISSUE",
        "upstream-errors#unknown-issue",
        "Smartcar received an unexpected error from an upstream source.",
        "RETRY_LATER",
    ),
}


@dataclass
class Reply:
    """What the HTTP handler sends; status 0 with fault "reset" means reset the connection."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    count: int = 0
    fault: str | None = None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_reply(
    status: int,
    description: str | None = None,
    *,
    html: bool = False,
    retry_after: str | None = None,
    fault: str | None = None,
) -> Reply:
    """Return a Smartcar error body (or a proxy's HTML page).

    Args:
        status: HTTP status.
        description: The error's description; the status's default when None.
        html: Send a proxy's HTML page instead of Smartcar JSON.
        retry_after: The `Retry-After` header, if any.
        fault: The injected fault behind the error, for the log.

    Returns:
        What to send.
    """
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    if html:
        title = f"{status} {_phrase(status)}".strip()
        page = (
            f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1>"
            "</center><hr><center>nginx</center></body></html>\n"
        )
        return Reply(status, page.encode(), headers, "text/html", fault=fault)
    fallback = ERRORS[400 if status < 500 else 500]
    kind, code, docs, default, resolution = ERRORS.get(status, fallback)
    error = {
        "type": kind,
        "code": code,
        "description": description or default,
        "docURL": DOCS + docs,
        "statusCode": status,
        "requestId": str(uuid.uuid4()),
        "resolution": {"type": resolution},
    }
    return Reply(status, json.dumps(error).encode(), headers, fault=fault)


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header is Basic auth of `default:<token>`."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except binascii.Error:
        return False
    return hmac.compare_digest(decoded, f"default:{token}".encode())


class ManagementApi:
    """Answers API requests from a store, with the per-request state faults depend on.

    Not thread-safe: the simulator serialises requests with its lock.
    """

    def __init__(self, store: ConnectionStore, state: FaultState | None = None) -> None:
        """Serve `store`; nothing is counted yet.

        Args:
            store: The connections to serve.
            state: Fault counters and rate-limit bucket, shared with other faces; new if None.
        """
        self.store = store
        self.cursors = CursorCodec()
        self.state = state or FaultState()
        self._origins: dict[str, str] = {}

    def reset_counters(self) -> None:
        """Restart the request and page counters and the chaos sequence."""
        self.state.reset()

    def answer(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        authorization: str | None,
        *,
        token: str,
        faults: Faults,
    ) -> Reply:
        """Count and answer one API request.

        Args:
            method: HTTP method.
            path: URL path.
            params: The URL-decoded query.
            authorization: The Authorization header.
            token: The management token that Basic auth must carry.
            faults: The fault knobs.

        Returns:
            What to send.
        """
        self.state.count()
        if method != "GET" or path.rstrip("/") != CONNECTIONS_PATH:
            return error_reply(404, f"No route for {method} {path}.", html=faults.html_errors)
        if not authorized(authorization, token):
            return error_reply(401, html=faults.html_errors)
        chaos = self.state.chaos.pick(faults)
        if chaos == "reset":
            return Reply(0, fault="reset")
        failure = self.state.failure(faults, chaos)
        if failure is not None:
            status, retry_after, fault = failure
            return error_reply(
                status, html=faults.html_errors, retry_after=retry_after, fault=fault
            )
        reply = self._page(params, faults)
        if reply.status == 200 and self.state.truncates(faults, chaos):
            reply.body = reply.body[: len(reply.body) // 2]
            reply.fault = "truncated"
        elif reply.status == 200:
            self.state.pages_ok += 1
        return reply

    def _page(self, params: dict[str, str], faults: Faults) -> Reply:
        raw_limit = params.get("limit", "10")
        if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 100):
            return error_reply(
                400, "limit must be an integer from 1 to 100.", html=faults.html_errors
            )
        limit = int(raw_limit)
        mode = params.get("mode", "live")
        if mode not in MODES:
            return error_reply(
                400, f"mode must be one of {', '.join(MODES)}.", html=faults.html_errors
            )
        user_id, vehicle_id = params.get("user_id", ""), params.get("vehicle_id", "")
        scope = (mode, user_id, vehicle_id)
        received = params.get("cursor", "")
        page, after = 1, None
        if received:
            decoded = self.cursors.decode(received)
            if decoded is None or decoded[2] != scope:
                return error_reply(400, "invalid cursor", html=faults.html_errors)
            page, after, _ = decoded
        rows, last = self.store.select(mode, after, limit, user_id, vehicle_id)
        cursor = None if last is None else self.cursors.encode(page + 1, last, scope)
        if received and faults.repeat_cursor:
            cursor = received
        elif received and faults.cursor_cycle is not None and page > faults.cursor_cycle:
            cursor = self._origins.get(received, received)
        elif cursor is not None and received and faults.cursor_cycle is not None:
            self._origins[cursor] = received
        body = b"".join(
            (
                b'{"connections":[',
                b",".join(rows),
                b'],"paging":{"cursor":',
                json.dumps(cursor).encode(),
                b"}}",
            )
        )
        return Reply(200, body, count=len(rows))
