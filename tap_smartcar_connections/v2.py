"""Smartcar Management API v2.0: `GET /management/connections` with a management token."""

from __future__ import annotations

import base64
import functools
import typing as t

import msgspec
import requests
from typing_extensions import override

from tap_smartcar_connections.errors import BrokenBody
from tap_smartcar_connections.pages import Page, check_ids, stamps
from tap_smartcar_connections.paging import CursorPaging, Paging
from tap_smartcar_connections.requester import Endpoint
from tap_smartcar_connections.streams import CONNECTION_SCHEMA, SmartcarStream

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from singer_sdk.helpers.types import Context

ADVICE = {
    400: "check the filters (user_id, vehicle_id, modes) and page_size",
    401: "check management_token: it must be the application's Management API token "
    "(Smartcar Dashboard > Configuration)",
    403: "the management token may not read this application's connections; check the token "
    "and the application's permissions in the Smartcar Dashboard",
    404: "check api_url (default https://management.smartcar.com/v2.0)",
    430: "Smartcar refused the request for billing reasons; check the application's plan and "
    "billing in the Smartcar Dashboard",
}


class _Connection(msgspec.Struct, rename="camel"):
    """A connection as the API returns it; decoding fails if a field is missing or not a string."""

    user_id: str
    vehicle_id: str
    connected_at: str
    mode: str


class _Paging(msgspec.Struct):
    """`paging`: an explicit null `cursor` marks the last page; a missing one proves nothing."""

    cursor: str | msgspec.UnsetType | None = msgspec.UNSET


class _Page(msgspec.Struct):
    """A page of `GET /management/connections`; unknown fields are ignored."""

    connections: list[_Connection]
    paging: _Paging | msgspec.UnsetType | None = msgspec.UNSET


_PAGE_DECODER = msgspec.json.Decoder(_Page)


def describe_response(response: requests.Response, clean: Callable[[t.Any, int], str]) -> str:
    """Summarise an error response from Smartcar's error JSON, never echoing the raw body.

    Returns:
        For example `401 AUTHENTICATION: Invalid token (requestId 5d2..., see https://...)`.
    """
    reason = clean(response.reason, 60) or "error"
    try:
        body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return f"{response.status_code} {reason} (the body was not Smartcar's error JSON)"
    text = f"{response.status_code} {clean(body.get('type'), 40) or reason}"
    if description := clean(body.get("description"), 300):
        text += f": {description}"
    details = []
    if request_id := clean(body.get("requestId"), 80):
        details.append(f"requestId {request_id}")
    if doc_url := clean(body.get("docURL"), 200):
        details.append(f"see {doc_url}")
    return f"{text} ({', '.join(details)})" if details else text


class V2ConnectionsStream(SmartcarStream):
    """`connections` from API v2.0: HTTP Basic auth, `limit` and opaque `cursor` paging.

    The schema is the union of both API versions; a v2 record leaves the v3-only fields out
    (null to a target), so it costs nothing to build or write them.
    """

    name = "connections"
    path = "/management/connections"
    primary_keys = ("userId", "vehicleId")
    replication_key = "connectedAt"
    is_sorted = False
    schema = CONNECTION_SCHEMA
    API_VERSION = "v2"

    @functools.cached_property
    @override
    def endpoint(self) -> Endpoint:
        return Endpoint("api_url", self.run.settings.api_url, describe_response, ADVICE)

    @override
    def paging(self) -> Paging:
        return CursorPaging()

    @override
    def authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """HTTP Basic `default:<management token>`, as Smartcar documents."""
        basic = f"default:{self.run.settings.management_token}".encode()
        request.headers["Authorization"] = f"Basic {base64.b64encode(basic).decode()}"
        return request

    @override
    def get_url_params(
        self, context: Context | None, next_page_token: str | None
    ) -> dict[str, t.Any]:
        context = context or {}
        return {
            "limit": self.run.settings.page_size,
            "mode": context["mode"],
            "user_id": context.get("userId"),
            "vehicle_id": context.get("vehicleId"),
            "cursor": next_page_token,
        }

    @override
    def parse_response(self, response: requests.Response) -> Page:
        """Decode a page straight into typed records.

        Raises:
            BrokenBody: If the body is not the documented JSON, or has no explicit cursor.
        """
        try:
            page = _PAGE_DECODER.decode(response.content)
        except (msgspec.DecodeError, RecursionError) as exc:
            msg = f"a body that is not the expected connections JSON ({exc})"
            raise BrokenBody(msg) from exc
        items = page.connections
        connected = stamps([item.connected_at for item in items])
        cursor = page.paging.cursor if isinstance(page.paging, _Paging) else msgspec.UNSET
        if cursor is msgspec.UNSET or cursor == "":
            # Only an explicit null proves the last page; a proxy or a bug may drop `paging`.
            msg = "a page with no usable paging.cursor (not even null)"
            raise BrokenBody(msg)
        check_ids([item.user_id for item in items], "userId")
        check_ids([item.vehicle_id for item in items], "vehicleId")
        records = [
            {
                "userId": item.user_id,
                "vehicleId": item.vehicle_id,
                "connectedAt": stamp,
                "mode": item.mode,
            }
            for item, stamp in zip(items, connected, strict=True)
        ]
        return Page(records, cursor)
