"""The API v3 face: the OAuth token endpoint, v3 connections, webhooks and subscriptions.

Routes: `POST /oauth2/token`, `GET /vehicle/v3/connections`, `GET /management/v3/webhooks` and
`GET /management/v3/subscriptions`. Client-credentials tokens (Bearer auth), JSON:API
documents with offset paging by page number over the data as it is at each request, JSON:API
error bodies, and where the injected faults (`Faults`, shared with the v2 face: one counter,
one chaos sequence, one rate-limit bucket) shape an answer. The token endpoint answers errors
the OAuth way (`{error, error_description}`), except 429s and 5xx, which are JSON:API like
every other v3 error.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .data import (
    V3_MODES,
    Connection,
    ConnectionStore,
    instant,
    subscription_record,
    webhook_record,
)
from .faults import Faults, FaultState
from .v2 import Reply, error_reply

TOKEN_PATH = "/oauth2/token"  # noqa: S105 -- a path, not a secret
V3_VEHICLE_PREFIX = "/vehicle/v3"
V3_MANAGEMENT_PREFIX = "/management/v3"
V3_CONNECTIONS_PATH = f"{V3_VEHICLE_PREFIX}/connections"
V3_WEBHOOKS_PATH = f"{V3_MANAGEMENT_PREFIX}/webhooks"
V3_SUBSCRIPTIONS_PATH = f"{V3_MANAGEMENT_PREFIX}/subscriptions"
JSONAPI = "application/vnd.api+json"
MAX_BODY = 64 * 1024
"""Largest request body the API routes read."""

_DOCS = "https://smartcar.com/docs/errors/api-errors/"
_ERRORS: dict[int, tuple[str, str, str, str, str]] = {
    # status: (type, code, title, detail, docs page)
    400: (
        "VALIDATION",
        "PARAMETER",
        "Invalid parameter",
        "The request is well formed but a parameter is invalid.",
        "validation-errors#parameter",
    ),
    401: (
        "AUTHENTICATION",
        "INVALID_TOKEN",
        "Authentication failed",
        "The Authorization header is missing, malformed or holds an invalid access token.",
        "authentication-errors",
    ),
    403: (
        "PERMISSION",
        "INSUFFICIENT_PERMISSIONS",
        "Permission denied",
        "Your application is not permitted to use this endpoint.",
        "permission-errors",
    ),
    404: (
        "RESOURCE_NOT_FOUND",
        "PATH",
        "Resource not found",
        "The requested path does not exist.",
        "resource-not-found-errors#path",
    ),
    409: (
        "VEHICLE_STATE",
        "UNKNOWN",
        "Vehicle state",
        "The vehicle is in a state that does not allow this request.",
        "vehicle-state-errors",
    ),
    429: (
        "RATE_LIMIT",
        "SMARTCAR_API",
        "Rate limit exceeded",
        "Your application has exceeded its rate limit. Retry after the Retry-After header.",
        "rate-limit-errors#smartcar-api",
    ),
    430: (
        "BILLING",
        "INVALID_PLAN",
        "Billing",
        "This feature is not included in your current plan.",
        "billing-errors#invalid-plan",
    ),
    500: (
        "SERVER",
        "INTERNAL",
        "Server error",
        "An internal Smartcar error occurred.",
        "server-errors#internal",
    ),
    501: (
        "COMPATIBILITY",
        "PLATFORM",
        "Not supported",
        "This request is not supported.",
        "compatibility-errors",
    ),
    502: (
        "UPSTREAM",
        "UNKNOWN_ISSUE",
        "Upstream error",
        "Smartcar received an unexpected error from an upstream source.",
        "upstream-errors#unknown-issue",
    ),
}
_OAUTH_ERRORS = {400: "invalid_request", 401: "invalid_client", 403: "unauthorized_client"}


class _Invalid(Exception):
    """A request parameter is invalid: answered 400 VALIDATION with this detail."""


def jsonapi_error(
    status: int,
    detail: str | None = None,
    *,
    html: bool = False,
    retry_after: str | None = None,
    fault: str | None = None,
) -> Reply:
    """Return a JSON:API error document (or a proxy's HTML page).

    Args:
        status: HTTP status.
        detail: The error's detail; the status's default when None.
        html: Send a proxy's HTML page instead.
        retry_after: The `Retry-After` header, if any.
        fault: The injected fault behind the error, for the log.

    Returns:
        What to send: `{"errors": [{status, type, code, title, detail, ...}]}`, `status` a
        string.
    """
    if html:
        return error_reply(status, html=True, retry_after=retry_after, fault=fault)
    kind, code, title, default, docs = _ERRORS.get(status, _ERRORS[400 if status < 500 else 500])
    retry = status == 429 or status >= 500
    error = {
        "status": str(status),
        "type": kind,
        "code": code,
        "title": title,
        "detail": detail or default,
        "resolution": "RETRY_LATER" if retry else "CHECK_REQUEST",
        "suggestedUserMessage": "Something went wrong. Please try again later."
        if retry
        else "The request could not be completed.",
        "links": {"about": _DOCS + docs},
        "meta": {"debug": {"requestId": str(uuid.uuid4())}},
    }
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    body = json.dumps({"errors": [error]}).encode()
    return Reply(status, body, headers, JSONAPI, fault=fault)


def token_error(
    status: int,
    description: str | None = None,
    *,
    error: str | None = None,
    html: bool = False,
    retry_after: str | None = None,
    fault: str | None = None,
) -> Reply:
    """Return a token endpoint error: OAuth style for a 4xx, JSON:API for a 429 or 5xx.

    Args:
        status: HTTP status.
        description: The `error_description` (or JSON:API detail).
        error: The OAuth `error` code; derived from the status when None.
        html: Send a proxy's HTML page instead.
        retry_after: The `Retry-After` header, if any.
        fault: The injected fault behind the error, for the log.

    Returns:
        What to send.
    """
    if status == 429 or status >= 500 or html:
        return jsonapi_error(status, description, html=html, retry_after=retry_after, fault=fault)
    payload = {
        "error": error or _OAUTH_ERRORS.get(status, "invalid_request"),
        "error_description": description or "The token request was refused.",
    }
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return Reply(status, json.dumps(payload).encode(), headers, fault=fault)


def parse_token_body(body: bytes, content_type: str | None) -> dict[str, str] | None:
    """Decode a token request's body: form-encoded, or a JSON object.

    Args:
        body: The request body.
        content_type: Its Content-Type header.

    Returns:
        The fields as strings, or None when the body is neither.
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if media == "application/json" or (not media and text.lstrip().startswith("{")):
            data = json.loads(text or "null")
            if not isinstance(data, dict):
                return None
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
    except ValueError:
        return None


def redact(fields: Mapping[str, str]) -> dict[str, str]:
    """Return token request fields for the log, the client secret replaced by `***`."""
    return {k: "***" if k == "client_secret" else v for k, v in fields.items()}


def _integer(params: Mapping[str, str], name: str, default: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    limits = f"from 1 to {high}" if high is not None else "of at least 1"
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1 or (high and int(raw) > high):
        raise _Invalid(f"{name} must be an integer {limits}, got {raw!r}.")
    return int(raw)


def _mode(params: Mapping[str, str]) -> str:
    mode = params.get("filter[vehicle.mode]", "live")
    if mode not in V3_MODES:
        raise _Invalid(f"filter[vehicle.mode] must be one of {', '.join(V3_MODES)}, got {mode!r}.")
    return mode


def _boolean(params: Mapping[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise _Invalid(f"{name} must be true or false, got {raw!r}.")
    return raw.lower() == "true"


def _check_known(params: Mapping[str, str], known: Iterable[str]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise _Invalid(f"Unknown query parameter {unknown[0]!r}.")


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _newest_first(records: list[dict[str, Any]]) -> None:
    records.sort(key=lambda r: (instant(r["createdAt"]), r["id"]), reverse=True)


def _refusal(
    fields: dict[str, str] | None, client_id: str, client_secret: str, *, html: bool
) -> Reply | None:
    """Return the OAuth error a token request's fields earn, or None when they are good."""
    if fields is None:
        return token_error(400, "The body must be form-encoded or a JSON object.", html=html)
    grant = fields.get("grant_type")
    if not grant:
        return token_error(400, "grant_type is missing.", html=html)
    if grant != "client_credentials":
        return token_error(
            400,
            f"grant_type {grant!r} is not supported; use client_credentials.",
            error="unsupported_grant_type",
            html=html,
        )
    given_id, given_secret = fields.get("client_id"), fields.get("client_secret")
    if not given_id or not given_secret:
        return token_error(401, "client_id and client_secret are required.", html=html)
    good_id = hmac.compare_digest(given_id.encode(), client_id.encode())
    if not (hmac.compare_digest(given_secret.encode(), client_secret.encode()) and good_id):
        return token_error(401, "The client credentials are invalid.", html=html)
    return None


class V3Api:
    """Answers token and v3 requests, sharing the store and fault state with the v2 face.

    Not thread-safe: the simulator serialises requests with its lock.
    """

    def __init__(
        self,
        store: ConnectionStore,
        state: FaultState,
        webhooks: Iterable[Mapping[str, Any]],
        subscriptions: Iterable[Mapping[str, Any]],
    ) -> None:
        """Serve `store` and the given webhooks and subscriptions; no token is issued yet.

        Args:
            store: The connections (the v2 face's; test-mode ones are invisible here).
            state: Fault counters and rate-limit bucket, shared with the v2 face.
            webhooks: Webhooks, flat or API-shaped (see `webhook_record`).
            subscriptions: Subscriptions, flat or API-shaped (see `subscription_record`).
        """
        self.store = store
        self.state = state
        self.tokens_issued = 0
        self.issued: list[str] = []
        """Every access token issued, oldest first (revoked or expired ones too)."""
        self._tokens: dict[str, float] = {}
        self.webhooks = [webhook_record(w) for w in webhooks]
        self.subscriptions = [subscription_record(s) for s in subscriptions]
        _newest_first(self.webhooks)
        _newest_first(self.subscriptions)
        self._cache: dict[Connection, bytes] = {}
        self._cache_root = ""

    def revoke_tokens(self) -> None:
        """Forget every issued token: each is refused from now on."""
        self._tokens.clear()

    def expire_tokens(self) -> None:
        """Make every issued token expired now."""
        now = time.monotonic()
        self._tokens = dict.fromkeys(self._tokens, now)

    def add_webhook(self, data: Mapping[str, Any]) -> None:
        """Add a webhook (replacing one with the same id)."""
        record = webhook_record(data)
        self.webhooks = [w for w in self.webhooks if w["id"] != record["id"]] + [record]
        _newest_first(self.webhooks)

    def remove_webhook(self, webhook_id: str) -> bool:
        """Remove a webhook, returning whether it existed (its subscriptions stay)."""
        before = len(self.webhooks)
        self.webhooks = [w for w in self.webhooks if w["id"] != webhook_id]
        return len(self.webhooks) < before

    def add_subscription(self, data: Mapping[str, Any]) -> None:
        """Add a subscription (replacing one with the same id)."""
        record = subscription_record(data)
        kept = [s for s in self.subscriptions if s["id"] != record["id"]]
        self.subscriptions = [*kept, record]
        _newest_first(self.subscriptions)

    def remove_subscription(self, subscription_id: str) -> bool:
        """Remove a subscription, returning whether it existed."""
        before = len(self.subscriptions)
        self.subscriptions = [s for s in self.subscriptions if s["id"] != subscription_id]
        return len(self.subscriptions) < before

    def token(
        self,
        method: str,
        fields: dict[str, str] | None,
        *,
        client_id: str,
        client_secret: str,
        lifetime: int,
        faults: Faults,
    ) -> Reply:
        """Count and answer one token request.

        Args:
            method: HTTP method.
            fields: The decoded body (see `parse_token_body`); None when it did not parse.
            client_id: The client id to accept.
            client_secret: The client secret to accept.
            lifetime: Seconds a new token is valid.
            faults: The fault knobs.

        Returns:
            What to send.
        """
        self.state.count()
        html = faults.html_errors
        if method != "POST":
            return token_error(405, f"Use POST, not {method}.", html=html)
        if faults.token_status is not None:
            return token_error(faults.token_status, html=html, fault="token_status")
        chaos = self.state.chaos.pick(faults)
        if chaos == "reset":
            return Reply(0, fault="reset")
        failure = self.state.failure(faults, chaos)
        if failure is not None:
            status, retry_after, fault = failure
            return token_error(status, html=html, retry_after=retry_after, fault=fault)
        refusal = _refusal(fields, client_id, client_secret, html=html)
        if refusal is not None:
            return refusal
        access_token = f"sim-at-{secrets.token_hex(16)}"
        now = time.monotonic()
        if len(self._tokens) > 1000:
            self._tokens = {t: end for t, end in self._tokens.items() if end > now}
        self._tokens[access_token] = now + lifetime
        self.tokens_issued += 1
        self.issued.append(access_token)
        payload = {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime}
        reply = Reply(200, json.dumps(payload).encode())
        if self.state.truncates(faults, chaos):
            reply.body = reply.body[: len(reply.body) // 2]
            reply.fault = "truncated"
        return reply

    def _unauthorized(self, header: str | None) -> str | None:
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "The Authorization header must be 'Bearer <access token>'."
        expiry = self._tokens.get(credentials.strip())
        if expiry is None:
            return "The access token is not valid."
        if expiry <= time.monotonic():
            return "The access token has expired."
        return None

    def answer(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        authorization: str | None,
        *,
        root: str,
        faults: Faults,
    ) -> Reply:
        """Count and answer one v3 data request.

        Args:
            method: HTTP method.
            path: URL path (under `/vehicle/v3` or `/management/v3`).
            params: The URL-decoded query.
            authorization: The Authorization header.
            root: The server's root URL (`http://127.0.0.1:PORT`), for links.
            faults: The fault knobs.

        Returns:
            What to send.
        """
        self.state.count()
        html = faults.html_errors
        routes: dict[str, Callable[[dict[str, str], str, Faults], Reply]] = {
            V3_CONNECTIONS_PATH: self._connections,
            V3_WEBHOOKS_PATH: self._webhooks,
            V3_SUBSCRIPTIONS_PATH: self._subscriptions,
        }
        route = routes.get(path.rstrip("/"))
        if method != "GET" or route is None:
            return jsonapi_error(404, f"No route for {method} {path}.", html=html)
        problem = self._unauthorized(authorization)
        if problem is not None:
            return jsonapi_error(401, problem, html=html)
        chaos = self.state.chaos.pick(faults)
        if chaos == "reset":
            return Reply(0, fault="reset")
        failure = self.state.failure(faults, chaos)
        if failure is not None:
            status, retry_after, fault = failure
            return jsonapi_error(status, html=html, retry_after=retry_after, fault=fault)
        try:
            reply = route(params, root, faults)
        except _Invalid as exc:
            return jsonapi_error(400, str(exc), html=html)
        if self.state.truncates(faults, chaos):
            reply.body = reply.body[: len(reply.body) // 2]
            reply.fault = "truncated"
        else:
            self.state.pages_ok += 1
        return reply

    def _document(
        self,
        url: str,
        rows: list[bytes],
        filters: list[tuple[str, str]],
        paging: tuple[int, int, int],
        *,
        faults: Faults,
        order: str | None = "desc",
    ) -> Reply:
        number, size, total = paging
        meta: dict[str, Any] = {"pageNumber": number, "pageSize": size}
        meta["totalCount"] = total + faults.v3_total_offset
        if order is not None:
            meta |= {"orderBy": "createdAt", "orderDirection": order}
        parts = [b'{"data":[', b",".join(rows), b'],"meta":', _encode(meta)]
        if not faults.v3_omit_links:
            last = max(1, math.ceil(total / size))

            def link(k: int) -> str:
                query = [*filters, ("page[number]", str(k)), ("page[size]", str(size))]
                return f"{url}?{urlencode(query, safe='[]')}"

            has_next = number < last
            links = {
                "self": link(number),
                "first": link(1),
                "prev": link(number - 1) if number > 1 else None,
                "next": (faults.v3_next_elsewhere or link(number + 1)) if has_next else None,
                "last": link(last),
            }
            parts += [b',"links":', _encode(links)]
        parts.append(b"}")
        return Reply(200, b"".join(parts), content_type=JSONAPI, count=len(rows))

    def _connection_json(self, connection: Connection, root: str) -> bytes:
        cached = self._cache.get(connection)
        if cached is not None:
            return cached
        flat = connection.v3_dict()
        vehicle = {k: flat[k] for k in ("make", "model", "year", "mode", "powertrainType")}
        encoded = _encode(
            {
                "id": flat["connectionId"],
                "type": "connection",
                "attributes": {"permissions": flat["permissions"], "vehicle": vehicle},
                "relationships": {
                    "vehicle": {
                        "data": {"id": connection.vehicle_id, "type": "vehicle"},
                        "links": {
                            "related": f"{root}{V3_VEHICLE_PREFIX}/vehicles/"
                            + connection.vehicle_id
                        },
                    },
                    "user": {"data": {"id": connection.user_id, "type": "user"}},
                },
                "meta": {"createdAt": connection.connected_at, "updatedAt": flat["updatedAt"]},
                "links": {"self": f"{root}{V3_CONNECTIONS_PATH}/{flat['connectionId']}"},
            }
        )
        self._cache[connection] = encoded
        return encoded

    def _connections(self, params: dict[str, str], root: str, faults: Faults) -> Reply:
        known = ("filter[vehicle.mode]", "filter[userId]", "filter[vehicleId]")
        _check_known(params, (*known, "page[number]", "page[size]"))
        mode = _mode(params)
        size = _integer(params, "page[size]", 10, 100)
        number = _integer(params, "page[number]", 1, None)
        if faults.v3_order not in ("desc", "asc", "unstated"):
            raise _Invalid(f"the simulator's v3_order {faults.v3_order!r} is unknown.")
        user_id, vehicle_id = params.get("filter[userId]", ""), params.get("filter[vehicleId]", "")
        page, total = self.store.window(
            mode,
            (number - 1) * size,
            size,
            user_id,
            vehicle_id,
            newest_first=faults.v3_order != "asc",
        )
        if root != self._cache_root or len(self._cache) > 2 * len(self.store) + 1000:
            self._cache, self._cache_root = {}, root
        rows = [self._connection_json(c, root) for c in page]
        filters = [(k, params[k]) for k in known if k in params]
        order = None if faults.v3_order == "unstated" else faults.v3_order
        url = root + V3_CONNECTIONS_PATH
        return self._document(url, rows, filters, (number, size, total), faults=faults, order=order)

    def _webhooks(self, params: dict[str, str], root: str, faults: Faults) -> Reply:
        known = (
            "filter[name]",
            "filter[callbackUri]",
            "filter[isEnabled]",
            "filter[autoSubscribe]",
        )
        _check_known(params, (*known, "page[number]", "page[size]"))
        size = _integer(params, "page[size]", 50, 100)
        number = _integer(params, "page[number]", 1, None)
        name = params.get("filter[name]", "").lower()
        callback = params.get("filter[callbackUri]", "").lower()
        enabled = _boolean(params, "filter[isEnabled]")
        auto = _boolean(params, "filter[autoSubscribe]")
        matches = [
            w
            for w in self.webhooks
            if name in w["name"].lower()
            and callback in w["callbackUri"].lower()
            and enabled in (None, w["isEnabled"])
            and auto in (None, w["autoSubscribe"])
        ]
        attributes = ("name", "callbackUri", "isEnabled", "triggers", "data")
        rows = [
            _encode(
                {
                    "id": w["id"],
                    "type": "webhook",
                    "attributes": {
                        **{k: w[k] for k in attributes},
                        "errorCallbackUri": w["errorCallbackUri"],
                        "autoSubscribe": w["autoSubscribe"],
                    },
                    "meta": {"createdAt": w["createdAt"]},
                    "links": {"self": f"{root}{V3_WEBHOOKS_PATH}/{w['id']}"},
                }
            )
            for w in matches[(number - 1) * size : number * size]
        ]
        filters = [(k, params[k]) for k in known if k in params]
        paging = (number, size, len(matches))
        return self._document(root + V3_WEBHOOKS_PATH, rows, filters, paging, faults=faults)

    def _subscriptions(self, params: dict[str, str], root: str, faults: Faults) -> Reply:
        known = ("filter[vehicle.mode]", "filter[userId]", "filter[webhookId]", "filter[vehicleId]")
        _check_known(params, (*known, "page[number]", "page[size]"))
        mode = _mode(params)
        size = _integer(params, "page[size]", 25, 100)
        number = _integer(params, "page[number]", 1, None)
        wanted = {
            field: params[f"filter[{field}]"]
            for field in ("userId", "webhookId", "vehicleId")
            if f"filter[{field}]" in params
        }
        matches = [
            s
            for s in self.subscriptions
            if s["mode"] == mode and all(s[k] == v for k, v in wanted.items())
        ]
        vehicle_keys = ("make", "model", "year", "mode", "powertrainType")
        rows = [
            _encode(
                {
                    "id": s["id"],
                    "type": "subscription",
                    "attributes": {"vehicle": {k: s[k] for k in vehicle_keys}},
                    "meta": {"createdAt": s["createdAt"], "updatedAt": s["updatedAt"]},
                    "relationships": {
                        "webhook": {"data": {"id": s["webhookId"], "type": "webhook"}},
                        "user": {"data": {"id": s["userId"], "type": "user"}},
                        "vehicle": {"data": {"id": s["vehicleId"], "type": "vehicle"}},
                    },
                }
            )
            for s in matches[(number - 1) * size : number * size]
        ]
        filters = [(k, params[k]) for k in known if k in params]
        paging = (number, size, len(matches))
        return self._document(root + V3_SUBSCRIPTIONS_PATH, rows, filters, paging, faults=faults)
