"""Smartcar Management API v2.0: `GET /management/connections` with a management token."""

from __future__ import annotations

import typing as t

import msgspec
import requests
from singer_sdk.authenticators import BasicAuthenticator
from singer_sdk.helpers.types import Context
from typing_extensions import override

from tap_smartcar_connections.client import (
    ConnectionsStream,
    Page,
    _normalize_timestamps,
)
from tap_smartcar_connections.transport import BrokenBody, printable

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
_V3_ONLY = dict.fromkeys(
    ("connectionId", "permissions", "make", "model", "year", "powertrainType", "updatedAt")
)
"""The union schema's fields that API v2.0 does not have: null in every v2 record."""


def describe_response(response: requests.Response) -> str:
    """Summarise an error response from Smartcar's error JSON, never echoing the raw body.

    Args:
        response: An HTTP response with an error status.

    Returns:
        For example `401 AUTHENTICATION: Invalid token (requestId 5d2..., see https://...)`.
    """
    reason = printable(response.reason, 60) or "error"
    try:
        body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError, requests.exceptions.RequestException):
        body = None
    if not isinstance(body, dict):
        return f"{response.status_code} {reason} (the body was not Smartcar's error JSON)"
    text = f"{response.status_code} {printable(body.get('type'), 40) or reason}"
    if description := printable(body.get("description"), 300):
        text += f": {description}"
    details = []
    if request_id := printable(body.get("requestId"), 80):
        details.append(f"requestId {request_id}")
    if doc_url := printable(body.get("docURL"), 200):
        details.append(f"see {doc_url}")
    return f"{text} ({', '.join(details)})" if details else text


class V2ConnectionsStream(ConnectionsStream):
    """`connections` from API v2.0: HTTP Basic auth, `limit` and opaque `cursor` paging."""

    path = "/management/connections"
    ADVICE = ADVICE

    @property
    @override
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")

    @property
    @override
    def authenticator(self) -> BasicAuthenticator:
        return BasicAuthenticator(username="default", password=self.config["management_token"])

    @override
    def get_url_params(
        self, context: Context | None, next_page_token: str | None
    ) -> dict[str, t.Any]:
        context = context or {}
        return {
            "limit": self.config["page_size"],
            "mode": context["mode"],
            "user_id": context.get("userId"),
            "vehicle_id": context.get("vehicleId"),
            "cursor": next_page_token,
        }

    @override
    def describe_response(self, response: requests.Response) -> str:
        return describe_response(response)

    @override
    def _parse_page(self, response: requests.Response, token: str | None) -> Page:
        """Decode a page straight into typed records, and prepare its RECORD lines.

        Returns:
            The page's records and the next page's cursor (None on the last page).

        Raises:
            BrokenBody: If the body is not the documented JSON.
        """
        try:
            page = _PAGE_DECODER.decode(response.content)
            items = page.connections
            stamps = _normalize_timestamps([item.connected_at for item in items])
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            reason = printable(str(exc), 200)
            msg = (
                f"{response.status_code} with a body that is not the expected connections "
                f"JSON ({reason})"
            )
            raise BrokenBody(msg, response) from exc
        cursor = page.paging.cursor if isinstance(page.paging, _Paging) else msgspec.UNSET
        if cursor is msgspec.UNSET or cursor == "":
            # Only an explicit null proves the last page; a proxy or a bug may drop `paging`.
            msg = f"{response.status_code} with no usable paging.cursor (not even null)"
            raise BrokenBody(msg, response)
        records = [
            {
                "userId": item.user_id,
                "vehicleId": item.vehicle_id,
                "connectedAt": stamp,
                "mode": item.mode,
                **_V3_ONLY,
            }
            for item, stamp in zip(items, stamps, strict=True)
        ]
        return Page(records, cursor)
