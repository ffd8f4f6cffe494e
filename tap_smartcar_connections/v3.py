"""Smartcar API v3: `connections` (Vehicle API), `webhooks` and `subscriptions` (Management API).

All three are JSON:API lists paged by number (`jsonapi.read_list`) and share one access token
(`token.AccessToken`). Pages are numbered, so the lists shift under a walk when an item comes or
goes: the walk sends each item once and checks `meta.totalCount` (see `walk.py`).
"""

from __future__ import annotations

import functools
import typing as t
from http import HTTPStatus

import msgspec
import requests
from singer_sdk import typing as th
from typing_extensions import override

from tap_smartcar_connections.errors import BrokenBody, HttpStatus
from tap_smartcar_connections.jsonapi import ListDocument, describe_response, read_list
from tap_smartcar_connections.pages import Page, check_ids, stamps
from tap_smartcar_connections.paging import NumberedPaging, Paging
from tap_smartcar_connections.requester import Endpoint
from tap_smartcar_connections.streams import CONNECTION_SCHEMA, SmartcarStream

if t.TYPE_CHECKING:
    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context

    from tap_smartcar_connections.streams import Run
    from tap_smartcar_connections.token import AccessToken

ADVICE = {
    400: "check the filters (user_id, vehicle_id, modes) and page_size (v3 may cap it lower)",
    401: "check client_id and client_secret (Smartcar Dashboard > API Credentials): the "
    "application needs API v3 credentials",
    403: "the client credentials may not read this; check the application's permissions and "
    "API v3 access in the Smartcar Dashboard",
    404: "check v3_vehicle_api_url and v3_management_api_url",
    430: "Smartcar refused the request for billing reasons; check the application's plan and "
    "billing in the Smartcar Dashboard",
}


class _Id(msgspec.Struct):
    id: str


class _Relation(msgspec.Struct):
    data: _Id | None = None


class _Vehicle(msgspec.Struct, rename="camel"):
    mode: str
    make: str | None = None
    model: str | None = None
    year: int | None = None
    powertrain_type: str | None = None


class _Stamps(msgspec.Struct, rename="camel"):
    created_at: str
    updated_at: str | None = None


class _ConnectionAttributes(msgspec.Struct):
    vehicle: _Vehicle
    permissions: list[str] | None = None
    user: _Id | None = None


class _ConnectionRelations(msgspec.Struct):
    vehicle: _Relation
    user: _Relation | None = None


class _Connection(msgspec.Struct):
    id: str
    attributes: _ConnectionAttributes
    relationships: _ConnectionRelations
    meta: _Stamps


class _Signal(msgspec.Struct):
    group: str | None = None
    name: str | None = None
    code: str | None = None


class _WebhookAttributes(msgspec.Struct, rename="camel"):
    name: str | None = None
    callback_uri: str | None = None
    error_callback_uri: str | None = None
    is_enabled: bool | None = None
    auto_subscribe: bool | None = None
    triggers: list[_Signal] | None = None
    data: list[_Signal] | None = None


class _Webhook(msgspec.Struct):
    id: str
    attributes: _WebhookAttributes
    meta: _Stamps


class _SubscriptionAttributes(msgspec.Struct):
    vehicle: _Vehicle


class _SubscriptionRelations(msgspec.Struct):
    webhook: _Relation
    user: _Relation
    vehicle: _Relation


class _Subscription(msgspec.Struct):
    id: str
    attributes: _SubscriptionAttributes
    relationships: _SubscriptionRelations
    meta: _Stamps


_CONNECTIONS = msgspec.json.Decoder(ListDocument[_Connection])
_WEBHOOKS = msgspec.json.Decoder(ListDocument[_Webhook])
_SUBSCRIPTIONS = msgspec.json.Decoder(ListDocument[_Subscription])


class V3Stream(SmartcarStream):
    """What every v3 stream shares: the access token, JSON:API errors and page numbers."""

    API_VERSION = "v3"
    URL_SETTING: t.ClassVar[str]
    """The setting holding this stream's base URL."""
    IDENTITY: t.ClassVar[str] = "id"
    """The field that tells items apart (their own id), for dedupe and counts."""

    def __init__(self, tap: Tap, run: Run, token: AccessToken) -> None:
        """Create the stream, sharing `token` with the run's other v3 streams."""
        super().__init__(tap, run)
        self.token = token

    @functools.cached_property
    @override
    def endpoint(self) -> Endpoint:
        url = getattr(self.run.settings, self.URL_SETTING)
        return Endpoint(self.URL_SETTING, url, describe_response, ADVICE)

    @override
    def paging(self) -> Paging:
        return NumberedPaging(self.IDENTITY)

    @property
    @override
    def http_headers(self) -> dict[str, t.Any]:
        return {**super().http_headers, "Accept": "application/vnd.api+json, application/json"}

    @override
    def authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """`Authorization: Bearer` with the run's access token (fetched when needed)."""
        request.headers["Authorization"] = f"Bearer {self.token.get()}"
        return request

    @override
    def send(self, request: requests.PreparedRequest) -> requests.Response:
        """Send with the access token; on a 401, fetch a new token once and send again.

        A token can be revoked, or expire early, while the run still holds it. A second 401
        is the policy's: a refused request, which ends the run.
        """
        try:
            return super().send(request)
        except HttpStatus as exc:
            if exc.status != HTTPStatus.UNAUTHORIZED:
                raise
            self.logger.info("The access token was refused (401): fetching a new one")
            self.token.discard(request.headers["Authorization"].removeprefix("Bearer "))
        try:
            return super().send(request)
        except HttpStatus as exc:
            if exc.status == HTTPStatus.UNAUTHORIZED:
                raise HttpStatus(
                    exc.response, f"{exc} (a new access token was refused too)"
                ) from exc
            raise

    @override
    def get_url_params(
        self, context: Context | None, next_page_token: str | None
    ) -> dict[str, t.Any]:
        """The partition's filters (a missing one is not sent), page size and number."""
        context = context or {}
        return {
            "filter[vehicle.mode]": context.get("mode"),
            "filter[userId]": context.get("userId"),
            "filter[vehicleId]": context.get("vehicleId"),
            "page[size]": self.run.settings.page_size,
            "page[number]": int(next_page_token or 1),
        }


class V3ConnectionsStream(V3Stream):
    """`connections` from API v3: `GET /connections` with page numbers and vehicle details.

    The early stop at the bookmark is only taken when the page says the list is newest first
    by creation (`meta.orderDirection` `desc`, `meta.orderBy` the creation date or absent).
    """

    name = "connections"
    path = "/connections"
    primary_keys = ("userId", "vehicleId")
    replication_key = "connectedAt"
    is_sorted = False
    schema = CONNECTION_SCHEMA
    URL_SETTING = "v3_vehicle_api_url"
    IDENTITY = "connectionId"

    @override
    def parse_response(self, response: requests.Response) -> Page:
        items, page = read_list(response, _CONNECTIONS, self.run.settings.page_size, self.name)
        created = stamps([item.meta.created_at for item in items])
        updated = stamps([item.meta.updated_at for item in items])
        for item in items:
            user = item.relationships.user
            if (user is None or user.data is None) and item.attributes.user is None:
                msg = (
                    f"a connection {item.id} without a user id (relationships.user.data.id or "
                    "attributes.user.id)"
                )
                raise BrokenBody(msg)
            if item.relationships.vehicle.data is None:
                msg = f"a connection {item.id} without relationships.vehicle.data.id"
                raise BrokenBody(msg)
        page.records = [
            _connection(item, stamp, changed)
            for item, stamp, changed in zip(items, created, updated, strict=True)
        ]
        check_ids([record["connectionId"] for record in page.records], "connection id")
        check_ids([record["userId"] for record in page.records], "userId")
        check_ids([record["vehicleId"] for record in page.records], "vehicleId")
        return page


def _connection(item: _Connection, stamp: str, changed: str | None) -> dict[str, t.Any]:
    """A connection's record (its user and vehicle checked present by the caller)."""
    relations, attributes, vehicle = item.relationships, item.attributes, item.attributes.vehicle
    user = relations.user.data if relations.user is not None else None
    vehicle_id = relations.vehicle.data
    return {
        "userId": user.id if user is not None else t.cast("_Id", attributes.user).id,
        "vehicleId": t.cast("_Id", vehicle_id).id,
        "connectedAt": stamp,
        "mode": vehicle.mode,
        "connectionId": item.id,
        "permissions": attributes.permissions,
        "make": vehicle.make,
        "model": vehicle.model,
        "year": vehicle.year,
        "powertrainType": vehicle.powertrain_type,
        "updatedAt": changed,
    }


_SIGNAL = th.ObjectType(
    th.Property("group", th.StringType, description="Signal group, e.g. Odometer."),
    th.Property("name", th.StringType, description="Signal name."),
    th.Property("code", th.StringType, description="Signal code, e.g. odometer-traveleddistance."),
)


class WebhooksStream(V3Stream):
    """The application's webhooks (`GET /webhooks`), read whole every run (FULL_TABLE)."""

    name = "webhooks"
    path = "/webhooks"
    primary_keys = ("id",)
    replication_key = None
    BY_MODE = False
    URL_SETTING = "v3_management_api_url"
    schema = th.PropertiesList(
        th.Property("id", th.StringType, required=True, description="ID of the webhook."),
        th.Property("name", th.StringType, description="Name given to the webhook."),
        th.Property("callbackUri", th.StringType, description="Where Smartcar sends events."),
        th.Property(
            "errorCallbackUri", th.StringType, description="Where Smartcar sends errors, if set."
        ),
        th.Property("isEnabled", th.BooleanType, description="Whether the webhook is enabled."),
        th.Property(
            "autoSubscribe",
            th.BooleanType,
            description="Whether newly connected vehicles are subscribed automatically.",
        ),
        th.Property("triggers", th.ArrayType(_SIGNAL), description="Signals that trigger it."),
        th.Property("data", th.ArrayType(_SIGNAL), description="Signals each event carries."),
        th.Property(
            "createdAt",
            th.DateTimeType,
            description="When the webhook was created, in UTC, normalised like connectedAt.",
        ),
    ).to_dict()

    @override
    def parse_response(self, response: requests.Response) -> Page:
        items, page = read_list(response, _WEBHOOKS, self.run.settings.page_size, self.name)
        created = stamps([item.meta.created_at for item in items])
        check_ids([item.id for item in items], "webhook id")
        page.records = [
            {
                "id": item.id,
                "name": item.attributes.name,
                "callbackUri": item.attributes.callback_uri,
                "errorCallbackUri": item.attributes.error_callback_uri,
                "isEnabled": item.attributes.is_enabled,
                "autoSubscribe": item.attributes.auto_subscribe,
                "triggers": _signals(item.attributes.triggers),
                "data": _signals(item.attributes.data),
                "createdAt": stamp,
            }
            for item, stamp in zip(items, created, strict=True)
        ]
        return page


class SubscriptionsStream(V3Stream):
    """Which vehicles each webhook is subscribed to (`GET /subscriptions`), read whole per mode."""

    name = "subscriptions"
    path = "/subscriptions"
    primary_keys = ("id",)
    replication_key = None
    URL_SETTING = "v3_management_api_url"
    schema = th.PropertiesList(
        th.Property("id", th.StringType, required=True, description="ID of the subscription."),
        th.Property("webhookId", th.StringType, description="ID of the subscribed webhook."),
        th.Property("userId", th.StringType, description="ID of the vehicle's Smartcar user."),
        th.Property("vehicleId", th.StringType, description="ID of the subscribed vehicle."),
        th.Property("mode", th.StringType, description="Vehicle mode: live or simulated."),
        th.Property("make", th.StringType, description="Vehicle make."),
        th.Property("model", th.StringType, description="Vehicle model."),
        th.Property("year", th.IntegerType, description="Vehicle model year."),
        th.Property("powertrainType", th.StringType, description="Vehicle powertrain, e.g. BEV."),
        th.Property(
            "createdAt",
            th.DateTimeType,
            description="When the subscription was created, in UTC, normalised like connectedAt.",
        ),
        th.Property(
            "updatedAt",
            th.DateTimeType,
            description="When the subscription last changed, in UTC, normalised like connectedAt.",
        ),
    ).to_dict()

    @override
    def parse_response(self, response: requests.Response) -> Page:
        items, page = read_list(response, _SUBSCRIPTIONS, self.run.settings.page_size, self.name)
        created = stamps([item.meta.created_at for item in items])
        updated = stamps([item.meta.updated_at for item in items])
        page.records = [
            {
                "id": item.id,
                "webhookId": _related(item.relationships.webhook),
                "userId": _related(item.relationships.user),
                "vehicleId": _related(item.relationships.vehicle),
                "mode": item.attributes.vehicle.mode,
                "make": item.attributes.vehicle.make,
                "model": item.attributes.vehicle.model,
                "year": item.attributes.vehicle.year,
                "powertrainType": item.attributes.vehicle.powertrain_type,
                "createdAt": stamp,
                "updatedAt": changed,
            }
            for item, stamp, changed in zip(items, created, updated, strict=True)
        ]
        for field in ("id", "webhookId", "userId", "vehicleId"):
            check_ids([record[field] for record in page.records], field)
        return page


def _signals(signals: list[_Signal] | None) -> list[dict[str, str | None]] | None:
    if signals is None:
        return None
    return [{"group": s.group, "name": s.name, "code": s.code} for s in signals]


def _related(relation: _Relation) -> str | None:
    return relation.data.id if relation.data is not None else None
